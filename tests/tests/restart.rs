//! Crash, restart, no gap, no hole: twenty SIGKILLs and restarts of the daemon while a denied
//! client sends continuously (nothing may reach the server) and an allowed client keeps an
//! established TCP stream going (it must not stall).
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Servers, TempDir};

const POLICY: &str = integration_tests::WEB_POLICY;

#[test]
fn twenty_restarts_leave_no_gap_and_no_hole() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
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
    // The allowed client: one established connection, a line every 20 ms, every echo timed.
    let echoes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stream = {
        let (stop, path, dst, echoes) = (stop.clone(), front.ns.path(), SocketAddr::new(pay.v4, 443), echoes.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap(); // greeting
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(b"x\n").is_err() {
                    break;
                }
                line.clear();
                if r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    echoes.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for _ in 0..20 {
        agent = agent.crash_and_restart(&pay.ns, &[&pay.iface]);
    }
    let restarts = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    stream.join().unwrap();

    let e = echoes.lock().unwrap();
    let gap = e.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "20 restarts in {:.1} s; denied client sent {sent}, server got {}; {} echoes, longest gap {gap:?}",
        restarts.as_secs_f64(),
        servers.udp_count(5000),
        e.len()
    );
    assert!(sent > 500, "the denied client sent only {sent}");
    assert_eq!(servers.udp_count(5000), 0, "denied datagrams reached the server during the restarts");
    assert!(e.len() as f64 > restarts.as_secs_f64() / 0.05, "the stream did not flow through the restarts");
    assert!(gap < Duration::from_millis(500), "the established stream stalled for {gap:?}");
    // The last agent adopted everything and still takes pushes.
    let status: serde_json::Value = serde_json::from_slice(&agent.cli(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(status["interfaces"][0]["ingress"], "adopted");
    assert!(agent.push(&dir.file("p2.yaml", &POLICY.replace("443/tcp", "443/tcp\", \"8443/tcp"))).starts_with("revision 2"));
}
