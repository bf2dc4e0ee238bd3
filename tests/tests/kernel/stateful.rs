//! Connection tracking against the real kernel: replies pass without a reverse rule,
//! unsolicited reverse traffic is judged by policy, and a push that stops allowing a flow cuts
//! its established connection within one second.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Servers, TempDir, tcp_ok, udp_ok};

const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"rules:
  - name: frontend-calls-payments
    from: [frontend]
    to: [payments]
    ports: ["443/tcp", "8080/tcp", "53/udp"]
    action: allow
"#
);

fn lan() -> Lan {
    Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")])
}

#[test]
fn replies_pass_and_unsolicited_reverse_traffic_is_judged() {
    let lan = lan();
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", POLICY);
    // Enforce on both hosts: each judges what it sends (egress) and receives (ingress).
    let a_pay = Agent::start(&payments.ns, &[&payments.iface], Some(&policy));
    let a_front = Agent::start(&frontend.ns, &[&frontend.iface], Some(&policy));
    let _srv_pay = Servers::start(&payments.ns, &[443], &[53]);
    let _srv_front = Servers::start(&frontend.ns, &[9000], &[9053]);

    for dst in [payments.v4, payments.v6] {
        // The reply direction (payments -> frontend) has no rule, yet replies arrive.
        assert!(tcp_ok(&frontend.ns, dst, 443), "TCP reply to {dst} lost");
        assert!(udp_ok(&frontend.ns, dst, 53), "UDP reply from {dst} lost");
    }
    for dst in [frontend.v4, frontend.v6] {
        // Unsolicited traffic in the reverse direction is judged by policy: denied.
        assert!(!tcp_ok(&payments.ns, dst, 9000), "payments reached frontend:9000/tcp ({dst})");
        assert!(!udp_ok(&payments.ns, dst, 9053), "payments reached frontend:9053/udp ({dst})");
    }
    // Replies were passed by conntrack, and the reverse attempts dropped by default deny
    // (at payments' egress before they left).
    assert!(a_pay.counter("pass_tracked") > 0);
    assert!(a_front.counter("pass_tracked") > 0);
    assert!(a_pay.counter("drop_default") >= 4, "payments' egress did not drop the reverse attempts");
}

/// The protocol property of revocation: no echo on the revoked connection later than this
/// after the push was acknowledged. It is the foundation issue's bound, kept as it is; a busy
/// machine can still delay the client's own bookkeeping, so a miss is measured once more.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

#[test]
fn revocation_cuts_an_established_connection_within_one_second() {
    // One retry of the whole scenario: the bound is the protocol's, the client thread that
    // observes it runs on a shared machine.
    if let Err(first) = revocation_scenario() {
        eprintln!("first attempt: {first}; measuring once more");
        revocation_scenario().unwrap_or_else(|again| panic!("{again} (first attempt: {first})"));
    }
}

/// An established connection to 8080, then a push that stops allowing 8080: the echoes stop
/// within [`REVOKED_WITHIN`] of the push's acknowledgement (the timing, returned as `Err`),
/// and the datapath counts the revoked packets (asserted).
fn revocation_scenario() -> Result<(), String> {
    let lan = lan();
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", POLICY);
    let revoked = dir.file("revoked.yaml", &POLICY.replace(r#""8080/tcp", "#, ""));
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&policy));
    let _srv = Servers::start(&payments.ns, &[443, 8080], &[]);

    // A client that sends a line every 20 ms on an established connection and reports the
    // time of every echo it gets back, until told to stop.
    let (tx, rx) = mpsc::channel::<Instant>();
    let stop = Arc::new(AtomicBool::new(false));
    let dst = SocketAddr::new(payments.v4, 8080);
    let client = {
        let (ns_path, stop) = (frontend.ns.path(), stop.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).unwrap();
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect to 8080");
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap(); // greeting
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(b"x\n").is_err() {
                    break;
                }
                line.clear();
                if r.read_line(&mut line).is_ok_and(|n| n > 0) && tx.send(Instant::now()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Let the connection run, then revoke.
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("no echo on the established connection");
    std::thread::sleep(Duration::from_millis(300));
    let pushed = Instant::now();
    agent.push(&revoked);
    let acked = Instant::now();
    // Watch the connection well past the bound: echoes after it would be seen.
    std::thread::sleep(REVOKED_WITHIN * 2);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let echoes: Vec<Instant> = std::iter::once(first).chain(rx.try_iter()).collect();
    let before = echoes.iter().filter(|t| **t < pushed).count();
    let last = *echoes.last().unwrap();
    eprintln!(
        "{before} echoes before the push, push acknowledged after {:?}, last echo {:?} after the acknowledgement",
        acked - pushed,
        last.saturating_duration_since(acked)
    );
    assert!(agent.counter("drop_revoked") > 0, "no packet was counted as revoked");
    // What the new policy still allows keeps working.
    assert!(tcp_ok(&frontend.ns, payments.v4, 443));
    assert!(!tcp_ok(&frontend.ns, payments.v4, 8080));
    if before < 5 {
        return Err(format!("the connection was not flowing before the push ({before} echoes)"));
    }
    if last >= acked + REVOKED_WITHIN {
        return Err(format!("echoes still arrived {:?} after the push was acknowledged", last - acked));
    }
    Ok(())
}
