//! Atomic policy pushes under traffic. Two policies, A and B, number their segments so that a
//! packet judged with A's identities but B's pairs would be admitted to port 5003, which
//! neither policy allows. While a client streams datagrams to 5001 (allowed by A), 5002
//! (allowed by B) and 5003, the test alternates pushes of A and B: 5003 must never be reached,
//! and both 5001 and 5002 must be, so the alternation really happened under traffic.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use integration_tests::{Agent, Lan, Servers, TempDir};

// A: client = segment 1, server = segment 2.
const A: &str = r#"
version: 1
segments:
  client: { cidrs: [10.20.1.0/24] }
  server: { cidrs: [10.20.2.10/32] }
rules:
  - { name: a-5001, from: [client], to: [server], ports: ["5001/udp"], action: allow }
"#;

// B: decoy = segment 1, server = 2, client = 3; decoy may reach 5003. Read with A's
// identities (client = 1), B's pairs would let the client reach 5003.
const B: &str = r#"
version: 1
segments:
  decoy: { cidrs: [10.20.7.0/24] }
  server: { cidrs: [10.20.2.10/32] }
  client: { cidrs: [10.20.1.0/24] }
rules:
  - { name: b-decoy, from: [decoy], to: [server], ports: ["5003/udp"], action: allow }
  - { name: b-5002, from: [client], to: [server], ports: ["5002/udp"], action: allow }
"#;

#[test]
fn pushes_under_traffic_never_judge_a_packet_by_a_mix_of_policies() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")]);
    let (server, client) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let (a, b) = (dir.file("a.yaml", A), dir.file("b.yaml", B));
    let agent = Agent::start(&server.ns, &[&server.iface], Some(&a));
    let servers = Servers::start(&server.ns, &[], &[5001, 5002, 5003]);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, path, dst, sent) = (stop.clone(), client.ns.path(), server.v4, sent.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            while !stop.load(Ordering::Relaxed) {
                for port in [5001, 5002, 5003] {
                    let _ = s.send_to(b"x", SocketAddr::new(dst, port));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // At least 40 pushes, and as many more as it takes (at most 1,000) for 3,000 datagrams to
    // cross them: a sender slowed by a busy machine makes the test longer, never failed.
    let mut pushes = 0;
    while pushes < 40 || (sent.load(Ordering::Relaxed) <= 3_000 && pushes < 1_000) {
        agent.push(if pushes % 2 == 0 { &b } else { &a });
        std::thread::sleep(Duration::from_millis(25));
        pushes += 1;
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{pushes} pushes under {sent} datagrams");
    std::thread::sleep(Duration::from_millis(200));
    let (p1, p2, p3) = (servers.udp_count(5001), servers.udp_count(5002), servers.udp_count(5003));
    assert!(sent > 3_000, "only {sent} datagrams sent");
    assert_eq!(p3, 0, "{p3} datagrams reached 5003: judged by a mix of two policies");
    assert!(p1 > 0 && p2 > 0, "the alternation did not show under traffic (5001: {p1}, 5002: {p2})");
    // Every 5003 datagram was judged and denied by policy, none dropped for lack of one.
    assert_eq!(agent.counter("drop_no_policy"), 0);
    assert!(agent.counter("drop_default") >= sent / 3 - 10);
}
