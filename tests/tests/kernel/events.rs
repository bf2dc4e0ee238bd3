//! The kernel event stream, read back through `ztagent events -o json`: every kind of event
//! from real traffic with the right segments, ports, reasons and names; a flood of one denied
//! flow as a handful of events whose counts add up; a tiny ring buffer's losses counted; a slow
//! client holding nobody up.
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir, bin, ping_ok, tcp_ok};
use serde_json::Value;

const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"  batch: { cidrs: [10.20.3.0/24] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8080/tcp", "53/udp"], action: allow }
  - { name: pings, from: [batch], to: [payments], ports: ["icmp"], action: allow }
  - { name: no-admin, from: ["*"], to: [payments], ports: ["8081/tcp"], action: deny }
rateLimits:
  - name: batch-pings
    from: batch
    packets: { rate: 1, per: second, burst: 2 }
"#
);

/// `ztagent events -o json ARGS`: the recent events.
/// Runs Debian's python3 (with scapy) in a namespace.
fn python(ns: &Netns, script: &str) {
    let out = ns.exec(&["/usr/bin/python3", "-c", script]);
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The first event with these field values, or a panic listing what there was.
/// How long the tests wait for the agent to report what the kernel did: a bound on "never",
/// not a speed figure (the waits below poll and stop as soon as the reports are there; the
/// sweep reports an aggregate a second or two after its last packet, later on a busy machine).
const REPORTED: Duration = Duration::from_secs(20);

/// Polls `f` every 100 ms until it holds or [`REPORTED`] passed; returns whether it held.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + REPORTED;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn matches(e: &Value, want: &[(&str, Value)]) -> bool {
    want.iter().all(|(k, v)| e[*k] == *v)
}

fn find<'a>(evs: &'a [Value], want: &[(&str, Value)]) -> &'a Value {
    evs.iter().find(|e| matches(e, want)).unwrap_or_else(|| {
        panic!("no event with {want:?} among:\n{}", evs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
    })
}

#[test]
fn every_kind_of_event_comes_with_its_reason_and_names() {
    let lan = Lan::four_hosts();
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let _srv = Servers::start(&pay.ns, &[443, 8080, 8081], &[53]);

    assert!(tcp_ok(&front.ns, pay.v4, 443));
    assert!(!tcp_ok(&front.ns, pay.v4, 8081));
    assert!(!tcp_ok(&attacker.ns, pay.v6, 443));
    for _ in 0..6 {
        ping_ok(&batch.ns, pay.v4);
    }
    // Later fragments without their first; a malformed IPv4 header (IHL 3).
    python(
        &front.ns,
        &format!(
            "from scapy.all import *\nsend(fragment(IP(dst='{}', id=77)/UDP(dport=53)/Raw(b'x'*2500), fragsize=1000)[1:], verbose=0)",
            pay.v4
        ),
    );
    // A raw Ethernet frame (broadcast, so the bridge floods it to payments): IPv4 with IHL 3.
    python(
        &attacker.ns,
        &format!(
            "import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{}', 0))\n\
         s.send(b'\\xff' * 6 + b'\\x02\\x00\\x00\\x00\\x00\\x09' + b'\\x08\\x00' + b'\\x43' + b'\\x00' * 59)",
            attacker.iface
        ),
    );
    // An established connection that a push then revokes.
    let mut conn = front.ns.run({
        let dst = SocketAddr::new(pay.v4, 8080);
        move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)).expect("connect 8080")
    });
    agent.push(&dir.file("revoked.yaml", &POLICY.replace(r#""8080/tcp", "#, "")));
    let _ = conn.write_all(b"after the push\n");

    let s = |x: &str| Value::String(x.into());
    // Every kind below reported (each is then checked in detail).
    let kinds = [
        vec![("verdict", s("allowed")), ("dport", 443.into())],
        vec![("verdict", s("denied")), ("dport", 8081.into())],
        vec![("verdict", s("denied")), ("src", s("fd20:9::2"))],
        vec![("verdict", s("rate-limited"))],
        vec![("reason", s("fragment"))],
        vec![("reason", s("malformed"))],
        vec![("reason", s("revoked"))],
    ];
    let mut evs = Vec::new();
    eventually(|| {
        evs = agent.events(&[]);
        kinds.iter().all(|want| evs.iter().any(|e| matches(e, want)))
    });
    let allowed = find(&evs, &[("verdict", s("allowed")), ("dport", 443.into())]);
    assert_eq!((allowed["reason"].clone(), allowed["rule"].clone()), (s("rule"), s("web")));
    assert_eq!((allowed["src_segment"].clone(), allowed["dst_segment"].clone()), (s("frontend"), s("payments")));
    assert_eq!(
        (allowed["src"].clone(), allowed["proto"].clone(), allowed["direction"].clone()),
        (s("10.20.1.2"), s("tcp"), s("ingress"))
    );
    assert_eq!(allowed["iface"], s(&pay.iface));
    let by_rule = find(&evs, &[("verdict", s("denied")), ("dport", 8081.into())]);
    assert_eq!((by_rule["reason"].clone(), by_rule["rule"].clone()), (s("rule"), s("no-admin")));
    let by_default = find(&evs, &[("verdict", s("denied")), ("src", s("fd20:9::2"))]);
    assert_eq!(
        (by_default["reason"].clone(), by_default["src_segment"].clone(), by_default["rule"].clone()),
        (s("default"), s("world"), Value::Null)
    );
    let limited = find(&evs, &[("verdict", s("rate-limited"))]);
    assert_eq!(
        (limited["rate_limit"].clone(), limited["src_segment"].clone(), limited["proto"].clone()),
        (s("batch-pings"), s("batch"), s("icmp"))
    );
    let fragment = find(&evs, &[("reason", s("fragment"))]);
    assert_eq!((fragment["verdict"].clone(), fragment["src_segment"].clone()), (s("denied"), s("frontend")));
    let malformed = find(&evs, &[("reason", s("malformed"))]);
    assert_eq!(malformed["verdict"], s("denied"));
    // Revoked on whichever packet of the flow came first under the new policy (either way).
    let revoked = find(&evs, &[("reason", s("revoked"))]);
    assert!(revoked["dport"] == 8080 || revoked["sport"] == 8080, "{revoked}");
    assert_eq!(revoked["revision"], 2);
    // Filters.
    assert!(agent.events(&["--verdict", "allowed"]).iter().all(|e| e["verdict"] == "allowed"));
    assert!(agent.events(&["--from", "world"]).iter().all(|e| e["src_segment"] == "world"));
    assert!(agent.events(&["--port", "8081"]).iter().all(|e| e["dport"] == 8081));
    assert!(!agent.events(&["--port", "8081"]).is_empty());
}

/// Sends `n` UDP datagrams from `ns` to `dst:port` as fast as Python can.
fn flood(ns: &Netns, dst: IpAddr, port: u16, n: usize, distinct_ports: bool) {
    let port_expr = if distinct_ports { format!("{port} + i % 20000") } else { port.to_string() };
    python(
        ns,
        &format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range({n}): s.sendto(b'x', ('{dst}', {port_expr}))"
        ),
    );
}

#[test]
fn a_flood_of_one_denied_flow_is_a_handful_of_events_that_add_up() {
    let lan = Lan::four_hosts();
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[3]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let before = agent.counter("drop_default");
    let sent = 100_000;
    let t = Instant::now();
    flood(&attacker.ns, pay.v4, 9999, sent, false);
    let secs = t.elapsed().as_secs_f64();
    // The sweep reports the last interval once the aggregate has been idle for a second.
    let mut evs = Vec::new();
    let mut total = 0;
    eventually(|| {
        evs = agent.events(&["--port", "9999"]);
        total = evs.iter().map(|e| e["count"].as_u64().unwrap()).sum::<u64>();
        total >= sent as u64
    });
    let dropped = agent.counter("drop_default") - before;
    eprintln!(
        "{sent} datagrams in {secs:.1} s: {} events, counts {:?}",
        evs.len(),
        evs.iter().map(|e| &e["count"]).collect::<Vec<_>>()
    );
    assert_eq!(agent.counter("events_lost"), 0);
    // Every datagram reached the datapath and was denied (the default-deny counter also counts
    // other hosts' chatter, such as IGMP reports: at least), and the events of this one flow
    // account for each of them.
    assert!(dropped >= sent as u64, "only {dropped} of {sent} datagrams were denied");
    assert_eq!(total, sent as u64, "the events' counts do not add up to the datagrams sent");
    assert!(evs.len() <= 2 + secs.ceil() as usize * 2, "{} events for one flow", evs.len());
}

#[test]
fn a_tiny_ring_buffer_loses_events_and_counts_them() {
    let lan = Lan::four_hosts();
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[3]);
    let dir = TempDir::new();
    let p = dir.file("p.yaml", POLICY);
    let agent = Agent::start_with(&pay.ns, &[&pay.iface], Some(&p), &["--events-ring-bytes", "4096"]);
    // 20,000 distinct denied flows: each first denial is an event, far more than 4 KiB hold.
    // The agent is frozen meanwhile, so that its reader cannot keep up however fast it is.
    agent.freeze(true);
    flood(&attacker.ns, pay.v4, 20000, 40_000, true);
    agent.freeze(false);
    let mut evs = 0;
    eventually(|| {
        evs = agent.events(&["--from", "world"]).len() as u64;
        evs > 0
    });
    let lost = agent.counter("events_lost");
    eprintln!("tiny ring: {evs} events delivered, {lost} lost");
    assert!(lost > 0, "no event was lost through a 4 KiB ring buffer");
    assert!(evs > 0, "no event got through at all");
}

#[test]
fn a_slow_client_holds_nobody_up() {
    let lan = Lan::four_hosts();
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[3]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    // A client that asks for the live stream and never reads it.
    let mut slow = UnixStream::connect(&agent.socket).unwrap();
    slow.write_all(b"{\"op\":\"events\",\"follow\":true}\n").unwrap();
    // A client that reads everything.
    let mut fast = Command::new(bin("ztagent"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["events", "-f", "-o", "json", "--from", "world"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = fast.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let rss = || -> u64 {
        let pid = agent.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let rss_before = rss();
    for round in 0..3 {
        flood(&attacker.ns, pay.v4, 30000 + round * 1000, 20_000, true);
    }
    // Each flow's first denial is an event until the CPU's per-flow budget is spent (1,024 a
    // second), then the flood's are aggregated per segment: at least the budget's worth.
    eventually(|| lines.load(std::sync::atomic::Ordering::Relaxed) >= 1_000);
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss();
    let _ = fast.kill();
    let _ = fast.wait();
    reader.join().unwrap();
    let got = lines.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("fast client: {got} events; agent RSS {rss_before} kB -> {rss_after} kB");
    // The fast client got the stream, however stuck the slow one is, and the agent's memory
    // stayed bounded.
    assert!(got >= 1_000, "the fast client got only {got} events");
    assert!(rss_after < rss_before + 64 * 1024, "the agent grew from {rss_before} kB to {rss_after} kB");
    drop(slow);
}

/// Issue 23, defect 3: a follower whose agent stops must say so and exit non-zero, not end
/// with status 0 and nothing on stderr as if the stream were complete.
#[test]
fn a_follower_says_the_stream_ended_when_the_agent_stops() {
    let lan = Lan::four_hosts();
    let pay = &lan.hosts[0];
    let dir = TempDir::new();
    let mut agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let mut follower = Command::new(bin("ztagent"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["events", "-f"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(follower.try_wait(), Ok(None)), "the follower ended while the agent ran");
    agent.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && matches!(follower.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(follower.try_wait(), Ok(None)) {
        let _ = follower.kill();
        panic!("the follower did not end within 10 s of the agent's death");
    }
    let out = follower.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the follower exited {} when its stream ended; stderr: {stderr}", out.status);
    assert!(stderr.contains("event stream ended"), "the follower did not say why it ended: {stderr}");
}

/// `ztagent events ARGS` as it ends: (success, stdout, stderr).
fn events_cli(agent: &Agent, args: &[&str]) -> (bool, String, String) {
    let out = agent.cli(&[&["events"], args].concat());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Issue 23, defect 4: the agent's own events (a grant given, a grant ended) have a shape of
/// their own, read as `jq` reads them: no packet fields at all (they said `"src":"0.0.0.0"`,
/// `"sport":0`, `"iface":""`), and the grant's port spec in `ports`, not in `proto`.
#[test]
fn grant_events_carry_no_packet_and_their_ports_apart() {
    let lan = Lan::four_hosts();
    let pay = &lan.hosts[0];
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let out = agent.cli(&[
        "grant",
        "--from",
        "10.30.9.7",
        "--to",
        "payments",
        "--port",
        "9000/tcp",
        "--for",
        "10m",
        "--reason",
        "ticket 7",
    ]);
    assert!(out.status.success(), "grant failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = agent.cli(&["grants", "--revoke", "1"]);
    assert!(out.status.success(), "revoke failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut evs = Vec::new();
    assert!(eventually(|| {
        evs = agent.events(&["--verdict", "granted", "--verdict", "grant-ended"]);
        evs.len() == 2
    }));
    for e in &evs {
        for absent in ["src", "dst", "sport", "dport", "proto", "iface", "direction", "len", "icmp_id"] {
            assert!(e.get(absent).is_none(), "a grant event has `{absent}`: {e}");
        }
        assert_eq!(e["ports"], serde_json::json!(["9000/tcp"]), "{e}");
        assert_eq!((e["src_segment"].as_str(), e["dst_segment"].as_str()), (Some("10.30.9.7/32"), Some("payments")));
        assert_eq!(
            (e["rule"].as_str(), e["note"].as_str(), e["count"].as_u64()),
            (Some("grant-1"), Some("ticket 7"), Some(0))
        );
    }
    assert_eq!((evs[0]["reason"].as_str(), evs[1]["reason"].as_str()), (Some("grant"), Some("revoked")));
    // The text form says what it is about, without a packet.
    let (ok, text, _) = events_cli(&agent, &["--verdict", "granted"]);
    assert!(ok && text.contains("10.30.9.7/32 -> payments 9000/tcp") && !text.contains("0.0.0.0"), "{text}");
}

/// `events` filters as hubble users expect them: OR within a repeated flag, AND across
/// flags, `--not` negating the next filter, `--ip` as source or destination; an unknown
/// segment is an error with a suggestion; ICMP without ports; `--last`, `--since`, `--until`.
#[test]
fn event_filters_combine_negate_and_bound_time() {
    let lan = Lan::four_hosts();
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&pay.ns, &[443, 8081], &[]);
    assert!(tcp_ok(&front.ns, pay.v4, 443));
    assert!(!tcp_ok(&front.ns, pay.v4, 8081));
    assert!(!tcp_ok(&attacker.ns, pay.v4, 443));
    assert!(ping_ok(&batch.ns, pay.v4));
    let s = |x: &str| Value::String(x.into());
    let mut all = Vec::new();
    assert!(eventually(|| {
        all = agent.events(&[]);
        [
            vec![("verdict", s("allowed")), ("dport", 443.into())],
            vec![("verdict", s("denied")), ("dport", 8081.into())],
            vec![("verdict", s("denied")), ("src_segment", s("world"))],
            vec![("verdict", s("allowed")), ("proto", s("icmp"))],
        ]
        .iter()
        .all(|want| all.iter().any(|e| matches(e, want)))
    }));
    let segments = |evs: &[Value]| {
        let mut v: Vec<String> = evs.iter().map(|e| e["src_segment"].as_str().unwrap_or("?").to_string()).collect();
        v.sort();
        v.dedup();
        v
    };
    // OR within a flag.
    let either = agent.events(&["--from", "frontend", "--from", "batch"]);
    assert_eq!(segments(&either), ["batch", "frontend"], "{either:?}");
    // AND across flags.
    let both = agent.events(&["--from", "frontend", "--port", "8081"]);
    assert!(!both.is_empty() && both.iter().all(|e| e["src_segment"] == "frontend" && e["dport"] == 8081), "{both:?}");
    // --not negates the filter after it, and only that one.
    let not = agent.events(&["--not", "--from", "frontend", "--verdict", "denied"]);
    assert_eq!(segments(&not), ["world"], "{not:?}");
    let not_two = agent.events(&["--not", "--from", "frontend", "--not", "--from", "world"]);
    assert_eq!(segments(&not_two), ["batch"], "{not_two:?}");
    // --ip: as the source or the destination.
    let ip = front.v4.to_string();
    let by_ip = agent.events(&["--ip", &ip]);
    assert!(!by_ip.is_empty() && by_ip.iter().all(|e| e["src"] == s(&ip) || e["dst"] == s(&ip)), "{by_ip:?}");
    assert!(agent.events(&["--ip", "10.20.7.7"]).is_empty());
    // ICMP: the echo's identifier, not ports.
    let ping = find(&all, &[("verdict", s("allowed")), ("proto", s("icmp"))]);
    assert!(ping.get("sport").is_none() && ping.get("dport").is_none() && ping["icmp_id"].is_u64(), "{ping}");
    // An unknown segment: an error with the closest name, not an empty stream.
    let (ok, _, err) = events_cli(&agent, &["--from", "fronted"]);
    assert!(!ok && err.contains("did you mean `frontend`"), "{err}");
    let (ok, _, err) = events_cli(&agent, &["--not", "--to", "paymnts"]);
    assert!(!ok && err.contains("did you mean `payments`"), "{err}");
    // --last N: the newest N of those matching.
    let last = agent.events(&["--last", "2"]);
    let newest = agent.events(&[]);
    assert_eq!(last.len(), 2);
    assert!(newest.ends_with(&last) || newest.len() > all.len(), "{last:?} are not the newest of {newest:?}");
    // --since / --until: durations and RFC 3339 times, with any offset.
    assert_eq!(agent.events(&["--since", "1h"]).len(), agent.events(&[]).len());
    assert!(agent.events(&["--until", "1h"]).is_empty());
    let first = all[0]["time"].as_str().unwrap().to_string();
    let until_first = agent.events(&["--until", &first]);
    assert!(!until_first.is_empty() && until_first.iter().all(|e| e["time"].as_str().unwrap() <= first.as_str()));
    let since_first = agent.events(&["--since", &first]);
    assert!(since_first.iter().any(|e| e["time"] == all[0]["time"]));
    assert!(agent.events(&["--since", "2500-01-01T01:00:00+01:00"]).is_empty());
}

/// Issue 23: ICMP events show the message's type and code (`"icmp": {"type": 8, "code": 0}`,
/// `icmp echo-request` in text), ICMPv6 by its own numbers, and no ports; an echo's identifier
/// apart.
#[test]
fn icmp_events_show_type_and_code() {
    let lan = Lan::four_hosts();
    let (pay, front, batch) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    assert!(ping_ok(&batch.ns, pay.v4), "batch may ping payments");
    assert!(!ping_ok(&front.ns, pay.v6), "frontend may not ping payments");
    let s = |x: &str| Value::String(x.into());
    let allowed = [("verdict", s("allowed")), ("proto", s("icmp")), ("src", s(&batch.v4.to_string()))];
    let denied = [("verdict", s("denied")), ("proto", s("icmp")), ("src", s(&front.v6.to_string()))];
    let mut all = Vec::new();
    assert!(eventually(|| {
        all = agent.events(&[]);
        all.iter().any(|e| matches(e, &allowed)) && all.iter().any(|e| matches(e, &denied))
    }));
    let ping = find(&all, &allowed);
    assert_eq!(ping["icmp"], serde_json::json!({"type": 8, "code": 0}), "{ping}");
    assert!(ping.get("sport").is_none() && ping.get("dport").is_none() && ping["icmp_id"].is_u64(), "{ping}");
    let ping6 = find(&all, &denied);
    assert_eq!(ping6["icmp"], serde_json::json!({"type": 128, "code": 0}), "{ping6}");
    assert!(ping6.get("sport").is_none() && ping6.get("dport").is_none(), "{ping6}");
    // Text: the message by name, ICMPv6's too.
    let (ok, text, err) = events_cli(&agent, &[]);
    assert!(ok, "{err}");
    let line = |src: IpAddr| text.lines().find(|l| l.contains(&src.to_string())).unwrap_or_default().to_string();
    assert!(line(batch.v4).contains(" icmp echo-request "), "{text}");
    assert!(line(front.v6).contains(" icmp echo-request "), "{text}");
}

/// `events -f --reconnect`: when the agent restarts, the follower says so on stderr and goes
/// on with the new agent's events instead of ending.
#[test]
fn a_reconnecting_follower_outlives_an_agent_restart() {
    let lan = Lan::four_hosts();
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&pay.ns, &[443], &[]);
    let out = dir.0.join("follower.out");
    let err = dir.0.join("follower.err");
    // The restarted agent gets a socket of its own: the follower's path is a link to the
    // agent's socket of the moment.
    let socket = dir.0.join("agent.sock");
    std::os::unix::fs::symlink(&agent.socket, &socket).unwrap();
    let mut follower = Command::new(bin("ztagent"))
        .arg("--socket")
        .arg(&socket)
        .args(["events", "-f", "--reconnect", "-o", "json", "--port", "443"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    assert!(tcp_ok(&front.ns, pay.v4, 443));
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(eventually(|| lines(&out).lines().count() >= 1), "no event before the restart");
    let agent = agent.stop_and_restart(&pay.ns, &[&pay.iface]);
    std::fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(&agent.socket, &socket).unwrap();
    // The follower is still there, says it reconnected, and gets the new agent's events.
    assert!(eventually(|| lines(&err).contains("reconnected")), "stderr: {}", lines(&err));
    assert!(matches!(follower.try_wait(), Ok(None)), "the follower ended: {}", lines(&err));
    let before = lines(&out).lines().count();
    assert!(tcp_ok(&front.ns, pay.v4, 443));
    let grew = eventually(|| lines(&out).lines().count() > before);
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(grew, "no event after the restart; stderr: {}", lines(&err));
    assert!(lines(&err).contains("event stream ended"), "{}", lines(&err));
    drop(agent);
}
