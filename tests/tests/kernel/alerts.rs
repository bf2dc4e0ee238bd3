//! Deviation alerts against real traffic: after the baseline's learning period, an nmap scan
//! from one host raises one `scan` alert (not thousands), an identity reaching a service it
//! never reached raises `new-peer`, a known service on a new port `new-port`; steady traffic
//! raises none. Rates: steady traffic raises no rate alert, a burst far beyond the baseline
//! exactly one `packet-rate` alert; after a restart the baseline is still there (a new peer
//! alerts at once, a burst is judged against the rates learned before).
use std::time::{Duration, Instant};

use integration_tests::{Agent, Lan, Servers, TempDir, tcp_ok, udp_ok};
use serde_json::Value;

const POLICY: &str = integration_tests::four_host_policy!(
    r#"rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8443/tcp"], action: allow }
  - { name: batch-dns, from: [batch], to: [payments], ports: ["53/udp"], action: allow }
alerts: { learnSeconds: 3, scanDestinations: 20, scanSeconds: 10, intervalSeconds: 60 }
"#
);

fn anomalies(agent: &Agent) -> Vec<Value> {
    agent.events(&["--verdict", "anomaly"])
}

/// The anomalies once `want` of them are there (polled, up to 15 s: they are published every
/// second).
fn wait_for(agent: &Agent, want: usize) -> Vec<Value> {
    let mut a = anomalies(agent);
    for _ in 0..150 {
        if a.len() >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        a = anomalies(agent);
    }
    a
}

#[test]
fn deviations_raise_one_alert_each_and_steady_traffic_none() {
    let lan = Lan::four_hosts();
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let dir = TempDir::new();
    let started = Instant::now();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&pay.ns, &[443, 8443], &[53]);

    // Learning: frontend's steady traffic.
    while started.elapsed() < Duration::from_secs(4) {
        assert!(tcp_ok(&front.ns, pay.v4, 443));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Past it, the same traffic raises nothing.
    for _ in 0..5 {
        assert!(tcp_ok(&front.ns, pay.v4, 443));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(anomalies(&agent).is_empty(), "steady traffic raised alerts: {:?}", anomalies(&agent));

    // A scan of 1,000 ports from the attacker: one alert.
    let out = attacker.ns.exec(&[
        "nmap",
        "-n",
        "-Pn",
        "-sS",
        "-p",
        "1-1000",
        "-T4",
        "--max-retries",
        "1",
        "--min-rate",
        "3000",
        &pay.v4.to_string(),
    ]);
    assert!(out.status.success(), "nmap failed: {}", String::from_utf8_lossy(&out.stderr));
    // A known service on a new port, and a new peer.
    assert!(tcp_ok(&front.ns, pay.v4, 8443));
    assert!(udp_ok(&batch.ns, pay.v4, 53));
    let a = wait_for(&agent, 3);
    let kinds: Vec<(&str, &str)> =
        a.iter().map(|e| (e["reason"].as_str().unwrap(), e["src_segment"].as_str().unwrap())).collect();
    let scans: Vec<_> = a.iter().filter(|e| e["reason"] == "scan").collect();
    assert_eq!(scans.len(), 1, "one scan, one alert: {kinds:?}");
    assert_eq!(
        (&scans[0]["src"], &scans[0]["src_segment"], &scans[0]["severity"]),
        (&"10.20.9.2".into(), &"world 10.20.9.0/24".into(), &"high".into())
    );
    assert!(
        a.iter().any(|e| e["reason"] == "new-port" && e["src_segment"] == "frontend" && e["dport"] == 8443),
        "{kinds:?}"
    );
    assert!(
        a.iter().any(|e| e["reason"] == "new-peer" && e["src_segment"] == "batch" && e["dst_segment"] == "payments"),
        "{kinds:?}"
    );
    assert_eq!(a.len(), 3, "nothing else: {kinds:?}");
    // The steady traffic still raises nothing.
    assert!(tcp_ok(&front.ns, pay.v4, 443));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(anomalies(&agent).len(), 3, "{:?}", anomalies(&agent));
}

const RATES: &str = integration_tests::four_host_policy!(
    r#"rules:
  - { name: stream, from: [frontend], to: [payments], ports: ["7/udp"], action: allow }
  - { name: batch-dns, from: [batch], to: [payments], ports: ["53/udp"], action: allow }
alerts: { learnSeconds: 10, rateFactor: 10, rateHistorySeconds: 6, rateWindowSeconds: 2, intervalSeconds: 60 }
"#
);

/// `n` datagrams from one socket of `ns` to `dst:port`, `pause` apart (echoes not awaited).
fn udp_stream(ns: &integration_tests::Netns, dst: std::net::IpAddr, port: u16, n: u32, pause: Duration) {
    ns.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..n {
            s.send_to(b"0123456789", (dst, port)).unwrap();
            std::thread::sleep(pause);
        }
    });
}

#[test]
fn rates_beyond_the_baseline_raise_one_alert_and_the_baseline_survives_a_restart() {
    let lan = Lan::four_hosts();
    let (pay, front, batch) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", RATES)));
    let _srv = Servers::start(&pay.ns, &[], &[7, 53]);

    // Steady: ~20 datagrams a second (and their echoes) for 14 s, one flow: the baseline.
    udp_stream(&front.ns, pay.v4, 7, 280, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(3));
    assert!(anomalies(&agent).is_empty(), "steady traffic raised alerts: {:?}", anomalies(&agent));

    // A burst far beyond it (3,000 datagrams as fast as they go, ~50x): one alert, however many
    // windows it lasts.
    udp_stream(&front.ns, pay.v4, 7, 3000, Duration::ZERO);
    let a = wait_for(&agent, 1);
    // Then steady again: nothing more (a second anomalous window is held back, counted).
    udp_stream(&front.ns, pay.v4, 7, 60, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(3));
    let a2 = anomalies(&agent);
    let kinds: Vec<(&str, &str)> =
        a2.iter().map(|e| (e["reason"].as_str().unwrap(), e["src_segment"].as_str().unwrap())).collect();
    assert_eq!(kinds, [("packet-rate", "frontend")], "first: {a:?}");
    assert_eq!(a2[0]["severity"], "medium");
    assert!(a2[0]["note"].as_str().unwrap().contains("its baseline"), "{}", a2[0]);

    // Restarted: the baseline is kept, not learned again. Within what would be a new learning
    // period, batch reaching payments for the first time is a new peer, and frontend's burst is
    // judged at once against the rates it had.
    let agent = agent.stop_and_restart(&pay.ns, &[&pay.iface]);
    assert!(udp_ok(&batch.ns, pay.v4, 53));
    udp_stream(&front.ns, pay.v4, 7, 3000, Duration::ZERO);
    let a = wait_for(&agent, 2);
    let kinds: Vec<(&str, &str)> =
        a.iter().map(|e| (e["reason"].as_str().unwrap(), e["src_segment"].as_str().unwrap())).collect();
    assert!(kinds.contains(&("new-peer", "batch")), "{a:#?}");
    assert!(kinds.contains(&("packet-rate", "frontend")), "{a:#?}");
    assert_eq!(a.len(), 2, "nothing else: {kinds:?}");
}
