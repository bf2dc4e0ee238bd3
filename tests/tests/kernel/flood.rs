//! A flood of denials from many sources (a scan): past each CPU's per-flow budget
//! (`FLOOD_BUDGET` denials a second) the datapath drops a source the policy allows nothing right
//! after its identity lookup, with no per-flow state, and reports it per (source segment, CPU);
//! the counts stay exact, and what the policy allows still passes.
use std::time::{Duration, Instant};

use integration_tests::{
    Agent, Lan, Netns, Servers, TempDir, WEB_POLICY, frame, send_frames, send_frames_counted, sh, tcp_ok, unique, veth,
    wait_for,
};
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
    // Every datagram is in an event's count. A per-segment aggregate also counts whatever else
    // of the world its CPU denied by default meanwhile (the namespaces' own IPv6 link-local
    // chatter, e.g. a multicast listener report), under the scan packet's port, its sample:
    // never more than drop_default counted, and a handful at most.
    assert!(
        total >= u64::from(SOURCES) && total <= dropped,
        "the events' counts ({total}) do not add up to the {SOURCES} datagrams sent ({dropped} denied by default)"
    );
    assert!(dropped - u64::from(SOURCES) <= 10, "{dropped} denied by default for {SOURCES} datagrams sent");
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

/// The XDP packets the veth `iface` (in `ns`) received in NAPI, summed over its receive queues
/// (`ethtool -S`: `rx_queue_N_xdp_packets`, one per run of the attached program).
fn xdp_packets(ns: &Netns, iface: &str) -> u64 {
    let out = ns.exec(&["ethtool", "-S", iface]);
    assert!(out.status.success(), "ethtool -S {iface}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_packets"))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}

/// Threaded NAPI on `iface` (in `ns`), its kthreads (`napi/IFACE-ID`, the name cut at 15
/// bytes) pinned to the last CPU; returns their pids.
fn threaded_napi(ns: &Netns, iface: &str) -> Vec<String> {
    // `ip netns exec` mounts the namespace's own /sys (`nsenter --net` keeps the host's).
    sh(&["ip", "netns", "exec", &ns.name, "sh", "-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")]);
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let comm: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm || c.starts_with(&comm)) {
            sh(&["taskset", "-pc", &cpu.to_string(), &name]);
            pids.push(name);
        }
    }
    assert!(!pids.is_empty(), "no NAPI thread {comm}* for {iface}");
    pids
}

/// Issue 18 saw a receive queue "stop for good" under a scan with threaded NAPI: a veth whose
/// peer sends as fast as it can, GRO and threaded NAPI on the receiving end (its kthread on
/// another CPU), the agent's XDP program there with a default-deny policy. It was the sender:
/// Debian's trafgen exits on the first EAGAIN of its TX ring's send (its socket's send buffer
/// full of frames still waiting in the veth's ring for the NAPI thread), after ~250 frames
/// whatever the XDP program (docs/performance.md). This is the same receiving configuration
/// with a sender that waits instead: every scan frame is judged, and afterwards the queue still
/// receives (an allowed connection, and another scan).
#[test]
fn a_scan_into_a_threaded_napi_veth_never_stops_its_receive_queue() {
    const SOURCES: u32 = 65_536;
    const AGAIN: u32 = 1_000;
    let (tx, rx) = (Netns::new("zft"), Netns::new("zfr"));
    let (tx_if, rx_if) = (unique("fa"), unique("fb"));
    veth(&tx, &tx_if, &rx, &rx_if);
    tx.ip(&["addr", "add", "10.20.1.2/16", "dev", &tx_if]);
    rx.ip(&["addr", "add", "10.20.2.10/16", "dev", &rx_if]);
    let gro = rx.exec(&["ethtool", "-K", &rx_if, "gro", "on"]);
    assert!(gro.status.success(), "GRO on {rx_if}: {}", String::from_utf8_lossy(&gro.stderr));
    let dir = TempDir::new();
    // frontend (10.20.1.0/24) -> payments:443 only; world (the scan's sources) is allowed nothing.
    let policy = dir.file("p.yaml", WEB_POLICY);
    let agent = Agent::start(&rx, &[&rx_if], Some(&policy));
    let napi = threaded_napi(&rx, &rx_if);
    let _srv = Servers::start(&rx, &[443], &[]);
    let payments = "10.20.2.10".parse().unwrap();
    assert!(tcp_ok(&tx, payments, 443), "frontend cannot reach payments before the scan");

    let (rx_mac, tx_mac) = (mac(&rx, &rx_if), mac(&tx, &tx_if));
    let scan = |from: u32, n: u32| -> Vec<Vec<u8>> {
        (from..from + n)
            .map(|i| {
                let src = [198, 18, (i >> 8) as u8, i as u8];
                frame::udp4_frame(rx_mac, tx_mac, src, [10, 20, 2, 10], 9, b"scan")
            })
            .collect()
    };
    let (dropped0, runs0) = (agent.counter("drop_default"), xdp_packets(&rx, &rx_if));
    // Every source of 198.18.0.0/16 once, back to back from one socket: the veth's ring fills
    // whenever the NAPI thread lags, and a refused frame is sent again.
    let t = Instant::now();
    let refused = send_frames_counted(&tx, &tx_if, scan(0, SOURCES));
    let secs = t.elapsed().as_secs_f64();
    // Every frame the veth took is judged: none is left in a stopped queue.
    let judged = wait_for(Duration::from_secs(60), || agent.counter("drop_default") - dropped0 >= u64::from(SOURCES));
    let (dropped, runs) = (agent.counter("drop_default") - dropped0, xdp_packets(&rx, &rx_if) - runs0);
    eprintln!(
        "{SOURCES} scan frames in {secs:.2} s ({refused} refused by the full ring and sent again), \
         NAPI threads {napi:?}: drop_default +{dropped}, XDP runs +{runs}, all judged after {judged:?}"
    );
    assert!(judged.is_some(), "only {dropped} of {SOURCES} scan frames were judged: the receive queue stopped");
    assert!(runs >= u64::from(SOURCES), "the XDP program ran {runs} times for {SOURCES} frames");
    // The queue still receives: an allowed connection, then another scan, all judged.
    assert!(tcp_ok(&tx, payments, 443), "frontend cannot reach payments after the scan");
    let (dropped1, runs1) = (agent.counter("drop_default"), xdp_packets(&rx, &rx_if));
    send_frames(&tx, &tx_if, scan(0, AGAIN));
    let again = wait_for(Duration::from_secs(60), || agent.counter("drop_default") - dropped1 >= u64::from(AGAIN));
    assert!(again.is_some(), "a second scan after the first was not judged: the receive queue stopped");
    assert!(xdp_packets(&rx, &rx_if) - runs1 >= u64::from(AGAIN), "the XDP program stopped running");
    assert_eq!(agent.counter("events_lost"), 0);
}
