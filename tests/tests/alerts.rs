//! Deviation alerts against real traffic: after the baseline's learning period, an nmap scan
//! from one host raises one `scan` alert (not thousands), an identity reaching a service it
//! never reached raises `new-peer`, a known service on a new port `new-port`; steady traffic
//! raises none.
use std::time::{Duration, Instant};

use integration_tests::{Agent, Lan, Servers, TempDir, tcp_ok, udp_ok};
use serde_json::Value;

const POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
  batch: { cidrs: [10.20.3.0/24] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "8443/tcp"], action: allow }
  - { name: batch-dns, from: [batch], to: [payments], ports: ["53/udp"], action: allow }
alerts: { learnSeconds: 3, scanDestinations: 20, scanSeconds: 10, intervalSeconds: 60 }
"#;

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
    let out = attacker.ns.exec(&["nmap", "-n", "-Pn", "-sS", "-p", "1-1000", "-T4", "--max-retries", "1", "--min-rate", "3000", &pay.v4.to_string()]);
    assert!(out.status.success(), "nmap failed: {}", String::from_utf8_lossy(&out.stderr));
    // A known service on a new port, and a new peer.
    assert!(tcp_ok(&front.ns, pay.v4, 8443));
    assert!(udp_ok(&batch.ns, pay.v4, 53));
    let a = wait_for(&agent, 3);
    let kinds: Vec<(&str, &str)> = a.iter().map(|e| (e["reason"].as_str().unwrap(), e["src_segment"].as_str().unwrap())).collect();
    let scans: Vec<_> = a.iter().filter(|e| e["reason"] == "scan").collect();
    assert_eq!(scans.len(), 1, "one scan, one alert: {kinds:?}");
    assert_eq!((&scans[0]["src"], &scans[0]["src_segment"], &scans[0]["severity"]), (&"10.20.9.2".into(), &"world 10.20.9.0/24".into(), &"high".into()));
    assert!(a.iter().any(|e| e["reason"] == "new-port" && e["src_segment"] == "frontend" && e["dport"] == 8443), "{kinds:?}");
    assert!(a.iter().any(|e| e["reason"] == "new-peer" && e["src_segment"] == "batch" && e["dst_segment"] == "payments"), "{kinds:?}");
    assert_eq!(a.len(), 3, "nothing else: {kinds:?}");
    // The steady traffic still raises nothing.
    assert!(tcp_ok(&front.ns, pay.v4, 443));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(anomalies(&agent).len(), 3, "{:?}", anomalies(&agent));
}
