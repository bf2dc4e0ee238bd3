//! The inventory against real traffic: four hosts talk for a while; `ztagent inventory` lists
//! exactly the (identity, service, protocol, port) that were seen, with exact flow and packet
//! counts, callers in no segment grouped by prefix; it survives a restart of the agent. The
//! policy `ztagent policy suggest` makes of it validates, and pushed enforced it allows every
//! observed flow and denies one the old policy allowed but nobody used (probed for real).
use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use integration_tests::{Agent, Lan, Servers, TempDir, bin, get_metrics, tcp_ok, udp_ok};
use serde_json::Value;

const POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
  batch: { cidrs: [10.20.3.0/24] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8443/tcp", "9443/tcp"], action: allow }
  - { name: batch-dns, from: [batch], to: [payments], ports: ["53/udp"], action: allow }
"#;

fn inventory(agent: &Agent) -> Vec<Value> {
    let out = agent.cli(&["inventory", "-o", "json"]);
    assert!(out.status.success(), "inventory: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["entries"].as_array().unwrap().clone()
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
    let agent = Agent::start_with(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)), &["--metrics-addr", "127.0.0.1:9470"]);
    let _srv = Servers::start(&pay.ns, &[443, 8443, 9443], &[53, 9999]);

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
    let mut inv = inventory(&agent);
    for _ in 0..100 {
        if inv.iter().any(|e| e["port"] == 9999 && e["denied_packets"] == 25) && inv.iter().filter(|e| e["proto"] == "udp" && e["port"] == 53).count() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        inv = inventory(&agent);
    }
    let web = entry(&inv, "frontend", "tcp", 443);
    assert_eq!((&web["allowed_flows"], &web["denied_packets"]), (&3.into(), &0.into()), "{web}");
    assert_eq!(entry(&inv, "frontend", "tcp", 8443)["allowed_flows"], 1);
    assert_eq!(entry(&inv, "batch", "udp", 53)["allowed_flows"], 2);
    let scan = entry(&inv, "world 10.20.9.0/24", "udp", 9999);
    assert_eq!((&scan["denied_packets"], &scan["allowed_flows"]), (&25.into(), &0.into()), "{scan}");
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
    let after = inventory(&agent);
    assert_eq!(entry(&after, "frontend", "tcp", 443)["allowed_flows"], 3);
    assert_eq!(entry(&after, "world 10.20.9.0/24", "udp", 9999)["denied_packets"], 25);

    // The least policy that allows what was seen: valid, and enforced it allows exactly that.
    let out = agent.cli(&["policy", "suggest"]);
    assert!(out.status.success(), "suggest: {}", String::from_utf8_lossy(&out.stderr));
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(suggested.contains("# learned from 3 flows") || suggested.contains("# learned from 4 flows"), "{suggested}");
    assert!(suggested.contains("allowed nothing in the window: none"), "{suggested}");
    let file = dir.file("suggested.yaml", &suggested);
    let check = std::process::Command::new(bin("ztagent")).args(["policy", "validate"]).arg(&file).output().unwrap();
    assert!(check.status.success(), "the suggestion does not validate:\n{}\n{suggested}", String::from_utf8_lossy(&check.stderr));
    agent.push(&file);
    assert!(tcp_ok(&front.ns, pay.v4, 443) && tcp_ok(&front.ns, pay.v4, 8443), "an observed flow is denied:\n{suggested}");
    assert!(udp_ok(&batch.ns, pay.v4, 53), "the observed UDP flow is denied:\n{suggested}");
    assert!(!tcp_ok(&front.ns, pay.v4, 9443), "a port nobody used is still allowed:\n{suggested}");
    assert!(!udp_ok(&attacker.ns, pay.v4, 9999), "what was only ever denied is allowed:\n{suggested}");
}
