//! IP fragments must not bypass policy: a fragmented datagram from an allowed segment arrives
//! whole; from a denied segment no fragment passes, and later fragments without an allowed
//! first fragment are dropped. Fragments are crafted with scapy (installed by the bootstrap).
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir};

const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"rules:
  - name: frontend-dns
    from: [frontend]
    to: [payments]
    ports: ["53/udp"]
    action: allow
"#
);

/// Sends one UDP datagram of `size` bytes to `dst:port` as fragments of at most ~1000 bytes;
/// with `skip_first`, only the later fragments are sent.
fn send_fragmented(ns: &Netns, dst: IpAddr, port: u16, size: usize, skip_first: bool) {
    let first = if skip_first { 1 } else { 0 };
    // A fresh IP ID for the later-fragments-only case: the ID of an allowed datagram stays
    // admitted for its later fragments for a while, as it should.
    let id = if skip_first { 4343 } else { 4242 };
    let script = if dst.is_ipv4() {
        format!(
            "from scapy.all import *\n\
             frags = fragment(IP(dst='{dst}', id={id})/UDP(sport=40000, dport={port})/Raw(b'x'*{size}), fragsize=1000)\n\
             assert len(frags) >= 3\n\
             send(frags[{first}:], verbose=0)\n"
        )
    } else {
        format!(
            "from scapy.all import *\n\
             pkt = IPv6(dst='{dst}')/IPv6ExtHdrFragment(id={id})/UDP(sport=40000, dport={port})/Raw(b'x'*{size})\n\
             frags = fragment6(pkt, 1000)\n\
             assert len(frags) >= 3\n\
             send(frags[{first}:], verbose=0)\n"
        )
    };
    // Debian's interpreter, which has the bootstrap's python3-scapy (not a pyenv one).
    let out = ns.exec(&["/usr/bin/python3", "-c", &script]);
    assert!(out.status.success(), "scapy failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `f` until it holds; gives up after a generous 10 s (a delivery, not a speed figure:
/// it returns as soon as the datagram is there).
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn fragments_follow_their_first_fragment() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (payments, frontend, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", POLICY)));
    let servers = Servers::start(&payments.ns, &[], &[53]);

    // From the allowed segment, the datagram is reassembled and delivered, both families.
    send_fragmented(&frontend.ns, payments.v4, 53, 2800, false);
    assert!(wait_for(|| servers.udp_count(53) == 1), "fragmented IPv4 datagram from frontend not delivered");
    send_fragmented(&frontend.ns, payments.v6, 53, 2800, false);
    assert!(wait_for(|| servers.udp_count(53) == 2), "fragmented IPv6 datagram from frontend not delivered");
    assert!(agent.counter("pass_fragment") >= 4, "later fragments were not passed as fragments");

    // From a denied address nothing gets through: the first fragment is denied by policy and
    // every later fragment is dropped for lack of it.
    let dropped_before = agent.counter("drop_fragment");
    send_fragmented(&attacker.ns, payments.v4, 53, 2800, false);
    send_fragmented(&attacker.ns, payments.v6, 53, 2800, false);
    // Later fragments alone, even from the allowed segment, are dropped.
    send_fragmented(&frontend.ns, payments.v4, 53, 2800, true);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(servers.udp_count(53), 2, "a datagram from a denied source or without its first fragment arrived");
    let dropped = agent.counter("drop_fragment") - dropped_before;
    assert!(dropped >= 6, "only {dropped} later fragments were dropped");
}
