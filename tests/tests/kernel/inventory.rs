//! The inventory against real traffic: four hosts talk for a while; `ztagent inventory` lists
//! exactly the (identity, service, protocol, port) that were seen, with exact flow, packet and
//! byte counts (the allowed flows' packets and bytes in both directions, checked against the
//! datagrams sent and against nftables counters in the client's namespace), callers in no
//! segment grouped by prefix; it survives a restart of the agent without counting anything
//! twice. The
//! policy `ztagent policy suggest` makes of it validates, and pushed enforced it allows every
//! observed flow and denies one the old policy allowed but nobody used (probed for real).
use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir, bin, get_metrics, tcp_ok, udp_ok};
use serde_json::Value;

const POLICY: &str = integration_tests::four_host_policy!(
    r#"rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8443/tcp", "9443/tcp"], action: allow }
  - { name: batch-dns, from: [batch], to: [payments], ports: ["53/udp"], action: allow }
"#
);

fn inventory(agent: &Agent) -> Vec<Value> {
    let out = agent.cli(&["inventory", "-o", "json"]);
    assert!(out.status.success(), "inventory: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["entries"].as_array().unwrap().clone()
}

/// Counts frontend's packets and bytes (IP lengths, both directions) to and from payments on
/// TCP 443 and 8443, with nftables in its own namespace: what the test compares the inventory
/// with. (The namespace, and the table with it, go when the test ends.)
fn count_in(ns: &Netns, payments: &str) {
    let nft = |args: &[&str]| {
        let out = ns.exec(&[&["nft"], args].concat());
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    nft(&["add", "table", "inet", "ztc"]);
    nft(&["add", "chain", "inet", "ztc", "out", "{ type filter hook output priority 0; }"]);
    nft(&["add", "chain", "inet", "ztc", "in", "{ type filter hook input priority 0; }"]);
    for port in ["443", "8443"] {
        let name = format!("p{port}");
        nft(&["add", "counter", "inet", "ztc", &name]);
        nft(&[
            "add", "rule", "inet", "ztc", "out", "ip", "daddr", payments, "tcp", "dport", port, "counter", "name",
            &name,
        ]);
        nft(&[
            "add", "rule", "inet", "ztc", "in", "ip", "saddr", payments, "tcp", "sport", port, "counter", "name", &name,
        ]);
    }
}

/// (packets, frame bytes) nftables counted for `port`: IP lengths plus the 14-byte Ethernet
/// header the datapath's frame lengths include.
fn counted(ns: &Netns, port: u16) -> (u64, u64) {
    let out = ns.exec(&["nft", "-j", "list", "counter", "inet", "ztc", &format!("p{port}")]);
    assert!(out.status.success(), "nft list counter: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = v["nftables"].as_array().unwrap().iter().find_map(|o| o.get("counter")).unwrap();
    let (packets, bytes) = (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap());
    (packets, bytes + 14 * packets)
}

fn traffic(e: &Value) -> (u64, u64) {
    (e["packets"].as_u64().unwrap(), e["bytes"].as_u64().unwrap())
}

fn entry<'a>(inv: &'a [Value], src: &str, proto: &str, port: u64) -> &'a Value {
    inv.iter()
        .find(|e| e["src"] == src && e["dst"] == "payments" && e["proto"] == proto && e["port"] == port)
        .unwrap_or_else(|| panic!("no entry {src} -> payments {proto}/{port} in {inv:#?}"))
}

#[test]
fn the_inventory_lists_exactly_what_was_seen() {
    let lan = Lan::four_hosts();
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let dir = TempDir::new();
    let agent = Agent::start_with(
        &pay.ns,
        &[&pay.iface],
        Some(&dir.file("p.yaml", POLICY)),
        &["--metrics-addr", "127.0.0.1:9470"],
    );
    let _srv = Servers::start(&pay.ns, &[443, 8443, 9443], &[53, 9999]);

    count_in(&front.ns, &pay.v4.to_string());
    for _ in 0..3 {
        assert!(tcp_ok(&front.ns, pay.v4, 443));
    }
    assert!(tcp_ok(&front.ns, pay.v4, 8443));
    // Two UDP flows from batch (two source ports), allowed.
    let dst = SocketAddr::new(pay.v4, 53);
    batch.ns.run(move || {
        for _ in 0..2 {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"q", dst).unwrap();
        }
    });
    // 25 datagrams from the attacker (in no segment) to a port nothing allows.
    let dst = SocketAddr::new(pay.v4, 9999);
    attacker.ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..25 {
            s.send_to(b"x", dst).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });

    // Denied packets are reported by the sweep once their aggregate has been idle a second.
    // TCP's last packets (the closing handshake) may come a little after the connection is
    // done: first until nftables' counts stay the same for a second (up to 10 s), then until
    // the inventory's agree (up to 10 s), then compared.
    let mut last = (counted(&front.ns, 443), counted(&front.ns, 8443));
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let now = (counted(&front.ns, 443), counted(&front.ns, 8443));
        if now == last {
            break;
        }
        last = now;
    }
    let settled = |inv: &[Value]| {
        let tcp = |port| inv.iter().find(|e| e["proto"] == "tcp" && e["port"] == port).map(traffic);
        inv.iter().any(|e| e["port"] == 9999 && e["denied_packets"] == 25)
            && inv.iter().any(|e| e["proto"] == "udp" && e["port"] == 53 && e["packets"] == 4)
            && tcp(443) == Some(counted(&front.ns, 443))
            && tcp(8443) == Some(counted(&front.ns, 8443))
    };
    let mut inv = inventory(&agent);
    for _ in 0..100 {
        if settled(&inv) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        inv = inventory(&agent);
    }
    let web = entry(&inv, "frontend", "tcp", 443);
    assert_eq!((&web["allowed_flows"], &web["denied_packets"]), (&3.into(), &0.into()), "{web}");
    // Times in RFC 3339 with an offset, as events print them (issue 23), and in order.
    let time = |f: &str| {
        let t = web[f].as_str().unwrap_or_else(|| panic!("{f} is not a string: {web}"));
        assert!(t.ends_with('Z'), "{f} {t} has no offset");
        ztagent::clock::parse_rfc3339(t).unwrap_or_else(|| panic!("{f} {t} is not RFC 3339"))
    };
    assert!(time("first_seen") <= time("last_seen"), "{web}");
    assert_eq!(entry(&inv, "frontend", "tcp", 8443)["allowed_flows"], 1);
    // Packets and bytes of the allowed flows, both directions, exactly: TCP as nftables
    // counted it at the client (at least a handshake, a greeting and a close per connection),
    // UDP as sent: two datagrams of one byte and their echoes, 43-byte frames.
    let (packets, bytes) = counted(&front.ns, 443);
    assert!(packets >= 3 * 7, "nftables counted only {packets} packets of three connections");
    assert_eq!(traffic(web), (packets, bytes), "frontend -> payments tcp/443: {web}");
    assert_eq!(traffic(entry(&inv, "frontend", "tcp", 8443)), counted(&front.ns, 8443));
    let dns = entry(&inv, "batch", "udp", 53);
    assert_eq!((&dns["allowed_flows"], traffic(dns)), (&2.into(), (4, 4 * 43)), "{dns}");
    let scan = entry(&inv, "world 10.20.9.0/24", "udp", 9999);
    assert_eq!((&scan["denied_packets"], &scan["allowed_flows"]), (&25.into(), &0.into()), "{scan}");
    assert_eq!(traffic(scan), (0, 0), "{scan}");
    // Nothing else from these hosts to payments (the hosts' own chatter, e.g. IGMP, is not a
    // service of payments).
    let to_payments: Vec<_> = inv.iter().filter(|e| e["dst"] == "payments").collect();
    assert_eq!(to_payments.len(), 4, "{to_payments:#?}");
    let text = agent.cli(&["inventory"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("world 10.20.9.0/24"));
    // The metrics count the same entries.
    let metrics = get_metrics(&pay.ns, 9470).expect("GET /metrics");
    let line = format!("ztagent_inventory_entries {}\n", inventory(&agent).len());
    assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");

    // Kept across a restart (a stop saves it; a crash loses at most the last 10 s).
    let agent = agent.stop_and_restart(&pay.ns, &[&pay.iface]);
    // Nothing counted twice: the restarted agent knows what it read of each flow before.
    let after = inventory(&agent);
    assert_eq!(entry(&after, "frontend", "tcp", 443)["allowed_flows"], 3);
    assert_eq!(traffic(entry(&after, "frontend", "tcp", 443)), counted(&front.ns, 443));
    assert_eq!(traffic(entry(&after, "batch", "udp", 53)), (4, 4 * 43));
    assert_eq!(entry(&after, "world 10.20.9.0/24", "udp", 9999)["denied_packets"], 25);

    // The least policy that allows what was seen: valid, and enforced it allows exactly that.
    let out = agent.cli(&["policy", "suggest"]);
    assert!(out.status.success(), "suggest: {}", String::from_utf8_lossy(&out.stderr));
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        suggested.contains("# learned from 3 flows") || suggested.contains("# learned from 4 flows"),
        "{suggested}"
    );
    assert!(suggested.contains("allowed nothing in the window: none"), "{suggested}");
    let file = dir.file("suggested.yaml", &suggested);
    let check = std::process::Command::new(bin("ztagent")).args(["policy", "validate"]).arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "the suggestion does not validate:\n{}\n{suggested}",
        String::from_utf8_lossy(&check.stderr)
    );
    agent.push(&file);
    assert!(
        tcp_ok(&front.ns, pay.v4, 443) && tcp_ok(&front.ns, pay.v4, 8443),
        "an observed flow is denied:\n{suggested}"
    );
    assert!(udp_ok(&batch.ns, pay.v4, 53), "the observed UDP flow is denied:\n{suggested}");
    assert!(!tcp_ok(&front.ns, pay.v4, 9443), "a port nobody used is still allowed:\n{suggested}");
    assert!(!udp_ok(&attacker.ns, pay.v4, 9999), "what was only ever denied is allowed:\n{suggested}");
}
