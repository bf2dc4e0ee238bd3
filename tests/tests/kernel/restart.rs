//! Crash, restart, no gap, no hole: twenty SIGKILLs and restarts of the daemon while a denied
//! client sends continuously (nothing may reach the server) and an allowed client keeps an
//! established TCP stream going: the datapath must never drop one of its packets (its
//! segments' denial counters stay 0), every line written is echoed in order, and the
//! connection is never reset. Times are printed, not judged (only a generous stall bound
//! catches a stream that stopped).
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir, get_metrics};

const POLICY: &str = integration_tests::WEB_POLICY;
/// The agents' metrics port (inside the server's namespace): the per-segment counters.
const METRICS_PORT: u16 = 9465;
/// A liveness bound, not a speed figure: a stream whose echo takes longer than this has
/// stopped (a dropped packet is caught exactly by the counters; its retransmission takes
/// well under a second).
const STALL: Duration = Duration::from_secs(10);

/// `ztagent_segment_packets_total{segment, outcome}` from the agent's metrics (pinned per-CPU
/// counters, so they add up across the restarts).
fn segment_packets(ns: &Netns, segment: &str, outcome: &str) -> u64 {
    let raw = get_metrics(ns, METRICS_PORT).expect("scrape the metrics endpoint");
    let key = format!("ztagent_segment_packets_total{{segment=\"{segment}\",outcome=\"{outcome}\"}} ");
    raw.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the metrics:\n{raw}"))
}

#[test]
fn twenty_restarts_leave_no_gap_and_no_hole() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let args = ["--metrics-addr", metrics.as_str()];
    let mut agent = Agent::start_with(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)), &args);
    let servers = Servers::start(&pay.ns, &[443], &[5000]);
    let stop = Arc::new(AtomicBool::new(false));

    // The denied client: a datagram every millisecond to a port the server listens on.
    let flood = {
        let (stop, path, dst) = (stop.clone(), attacker.ns.path(), SocketAddr::new(pay.v4, 5000));
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = s.send_to(b"x", dst);
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    };
    // The allowed client: one established connection, a numbered line every 20 ms, each
    // echo awaited and timed; returns the first failure (reset, stall, wrong echo), if any.
    let echoes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stream = {
        let (stop, path, dst, echoes) = (stop.clone(), front.ns.path(), SocketAddr::new(pay.v4, 443), echoes.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
            let mut s =
                TcpStream::connect_timeout(&dst, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(STALL)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| format!("greeting: {e}"))?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.write_all(format!("{n}\n").as_bytes()).map_err(|e| format!("write of line {n}: {e}"))?;
                line.clear();
                match r.read_line(&mut line) {
                    Ok(_) if line == format!("{n}\n") => echoes.lock().unwrap().push(Instant::now()),
                    Ok(0) => return Err(format!("the server closed the connection at line {n}")),
                    Ok(_) => return Err(format!("line {n} echoed as {line:?}")),
                    Err(e) => return Err(format!("no echo of line {n} within {STALL:?} ({e})")),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let echoed_before = echoes.lock().unwrap().len();
    for _ in 0..20 {
        agent = agent.crash_and_restart_with(&pay.ns, &[&pay.iface], &args);
    }
    let restarts = started.elapsed();
    let echoed_during = echoes.lock().unwrap().len() - echoed_before;
    // The stream goes on after the last restart: its next echoes prove it survived them.
    let target = echoes.lock().unwrap().len() + 5;
    let deadline = Instant::now() + STALL;
    while echoes.lock().unwrap().len() < target && Instant::now() < deadline && !stream.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let stream = stream.join().unwrap();

    let e = echoes.lock().unwrap();
    let gap = e.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    // The stream's packets are frontend's (ingress) and payments' (the replies, at egress):
    // any drop of them by the datapath, e.g. a reply judged as a new flow after a restart lost
    // its conntrack entry, counts as `denied` for one of the two segments.
    let denied: Vec<(String, u64)> = ["frontend", "payments"]
        .into_iter()
        .flat_map(|seg| ["denied", "rate_limited"].map(|o| (seg, o)))
        .map(|(seg, o)| (format!("{seg} {o}"), segment_packets(&pay.ns, seg, o)))
        .collect();
    let passed = segment_packets(&pay.ns, "frontend", "passed");
    eprintln!(
        "20 restarts in {:.1} s; denied client sent {sent}, server got {}; {} echoes ({echoed_during} during the restarts), \
         longest gap {gap:?}; frontend passed {passed}, denied/rate-limited {denied:?}",
        restarts.as_secs_f64(),
        servers.udp_count(5000),
        e.len()
    );
    assert!(sent > 500, "the denied client sent only {sent}");
    assert_eq!(servers.udp_count(5000), 0, "denied datagrams reached the server during the restarts");
    assert_eq!(stream, Ok(()), "the established stream broke");
    assert!(echoed_during > 0, "no line was echoed while the agents were being restarted");
    assert!(e.len() >= target, "the stream did not go on after the restarts");
    assert!(denied.iter().all(|(_, n)| *n == 0), "the datapath dropped packets of the established stream: {denied:?}");
    assert!(
        passed >= e.len() as u64,
        "frontend's passed packets ({passed}) do not cover the stream's {} lines",
        e.len()
    );
    // The last agent adopted everything and still takes pushes.
    let status: serde_json::Value = serde_json::from_slice(&agent.cli(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status["interfaces"][&pay.iface]["ingress"], "adopted", "{status}");
    assert!(
        agent.push(&dir.file("p2.yaml", &POLICY.replace("443/tcp", "443/tcp\", \"8443/tcp"))).starts_with("revision 2")
    );
}
