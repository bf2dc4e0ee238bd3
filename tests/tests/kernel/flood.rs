//! A flood of denials from many sources (a scan): past each CPU's per-flow budget
//! (`FLOOD_BUDGET` denials a second) the datapath drops a source the policy allows nothing right
//! after its identity lookup, with no per-flow state, and reports it per (source segment, CPU);
//! the counts stay exact, and what the policy allows still passes.
use std::time::{Duration, Instant};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir, WEB_POLICY, frame, send_frames, tcp_ok};
use serde_json::Value;

/// The MAC address of `iface` in `ns`.
fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", iface])).unwrap();
    let text = v[0]["address"].as_str().unwrap().to_string();
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Entries of the pinned map `name` from `ztagent status -o json`.
fn map_entries(agent: &Agent, name: &str) -> u64 {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["maps"][name]["entries"].as_u64().unwrap_or_else(|| panic!("no map {name} in {v}"))
}

#[test]
fn a_scan_from_many_sources_is_dropped_with_no_per_flow_state_and_counted_exactly() {
    const SOURCES: u32 = 30_000;
    let lan = Lan::four_hosts();
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[3]);
    let dir = TempDir::new();
    // frontend -> payments:443 only; world (the scan's sources) is allowed nothing.
    // Room for every event of the test in the agent's history (each source's first packets
    // are reported one by one until the budget is spent, a second at a time).
    let policy = dir.file("p.yaml", WEB_POLICY);
    let agent = Agent::start_with(&pay.ns, &[&pay.iface], Some(&policy), &["--events-history", "100000"]);
    let _srv = Servers::start(&pay.ns, &[443], &[]);
    assert!(tcp_ok(&front.ns, pay.v4, 443), "frontend cannot reach payments before the scan");
    let (pay_mac, attacker_mac) = (mac(&pay.ns, &pay.iface), mac(&attacker.ns, &attacker.iface));
    let dst = match pay.v4 {
        std::net::IpAddr::V4(a) => a.octets(),
        other => panic!("payments has no IPv4 address: {other}"),
    };
    let before = agent.counter("drop_default");
    // One datagram from each of 30,000 sources in 198.18.0.0/16, in paced batches (the veths
    // and the bridge between them must not drop any: every one is to be accounted for).
    let t = Instant::now();
    for batch in (0..SOURCES).collect::<Vec<_>>().chunks(100) {
        let frames = batch
            .iter()
            .map(|&i| frame::udp4_frame(pay_mac, attacker_mac, [198, 18, (i >> 8) as u8, i as u8], dst, 9, b"scan"))
            .collect();
        send_frames(&attacker.ns, &attacker.iface, frames);
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    // What the policy allows passes during the flood's aftermath.
    assert!(tcp_ok(&front.ns, pay.v4, 443), "frontend cannot reach payments after the scan");
    // The sweep reports each aggregate's last interval once it has been idle for a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut evs = Vec::new();
    let mut total = 0;
    while Instant::now() < deadline {
        evs = agent.events(&["--port", "9"]);
        total = evs.iter().map(|e| e["count"].as_u64().unwrap()).sum::<u64>();
        if total >= u64::from(SOURCES) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let dropped = agent.counter("drop_default") - before;
    let (per_segment, per_flow): (Vec<&Value>, Vec<&Value>) = evs.iter().partition(|e| e["aggregate"] == "segment");
    let cached = map_entries(&agent, "ZT_DENIED");
    eprintln!(
        "{SOURCES} sources in {secs:.2} s: {} per-flow events, {} per-segment events (counts {:?}), {cached} denial-cache entries, drop_default +{dropped}",
        per_flow.len(),
        per_segment.len(),
        per_segment.iter().map(|e| &e["count"]).collect::<Vec<_>>()
    );
    assert_eq!(agent.counter("events_lost"), 0);
    assert!(dropped >= u64::from(SOURCES), "only {dropped} of {SOURCES} datagrams were denied");
    assert_eq!(total, u64::from(SOURCES), "the events' counts do not add up to the datagrams sent");
    assert!(!per_segment.is_empty(), "no flood aggregate: every source was handled per flow");
    for e in &per_segment {
        assert_eq!(
            (&e["src_segment"], &e["verdict"], &e["reason"]),
            (&"world".into(), &"denied".into(), &"default".into())
        );
    }
    // Per-flow handling stopped at the budget (1,024 denials a second per CPU): no more flows
    // than that were cached or reported one by one, far fewer than the sources.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let budget = 1024 * cpus * (secs.ceil() as u64 + 2);
    assert!(
        (per_flow.len() as u64) < budget.min(u64::from(SOURCES)),
        "{} per-flow events, budget {budget}",
        per_flow.len()
    );
    assert!(cached < budget.min(u64::from(SOURCES)), "{cached} denial-cache entries, budget {budget}");
}
