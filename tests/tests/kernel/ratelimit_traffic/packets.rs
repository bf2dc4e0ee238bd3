//! A `packets` bucket under a 5x overload from two CPUs: its rate and burst, and an unlimited
//! identity untouched meanwhile.
use super::*;

const PACKETS_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  batch: { cidrs: [10.20.3.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: udp-in, from: [frontend, batch], to: [payments], ports: ["5301/udp", "5302/udp"], action: allow }
rateLimits:
  - name: frontend-packets
    from: frontend
    to: [payments]
    packets: { rate: 2000, per: second, burst: 400 }
    scope: segment
"#;

#[test]
fn packets_rate_and_burst_are_accurate_under_5x_overload_from_two_cpus() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const RATE: f64 = 2000.0;
    const BURST: f64 = 400.0;
    const SECS: f64 = 5.0;
    let lan = lan();
    add_second_address(&lan);
    let (pay, front, batch) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", PACKETS_POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let sinks = Servers::start(&pay.ns, &[], &[5301, 5302]);
    let (sink_f, sink_b) = (Sink(&sinks, 5301), Sink(&sinks, 5302));
    // Neighbours resolved, paths open (a few tokens of the frontend's bucket).
    assert!(udp_ok(&front.ns, pay.v4, 5301), "frontend cannot reach payments:5301/udp");
    assert!(udp_ok(&batch.ns, pay.v4, 5302), "batch cannot reach payments:5302/udp");
    assert!(udp_ok_from(&front.ns, FRONT2, pay.v4, 5301), "{FRONT2} cannot reach payments:5301/udp");
    std::thread::sleep(Duration::from_millis(500)); // idle: the bucket refills (400 in 0.2 s)

    // --- 1. sustained rate: 2 x 5000/s from two CPUs and two addresses, batch 1000/s ---
    let (f_sent, f_errors, f_recv, b_sent, b_recv, window, admitted_rate, drops, dropped, passed, rcvbuf_errors, fast) =
        retry(|| {
            let (f0, b0) = (sink_f.count(), sink_b.count());
            let (drops0, errs0) = (agent.counter("drop_rate_limit"), udp_rcvbuf_errors(&pay.ns));
            let stats0 = limit(&agent, "frontend-packets");
            let start_at = mono() + 0.5;
            let per_sender = (RATE * 2.5 * SECS) as u64; // 5000/s each: together 5x the limit
            let mut senders = Senders::new();
            for (cpu, bind) in [(0, front.v4.to_string()), (1, FRONT2.to_string())] {
                let phase = json!({"bind": bind, "port": 5301, "socks": 4, "count": per_sender, "rate": RATE * 2.5});
                senders.spawn(
                    &front.ns,
                    Some(cpu),
                    UDP_SENDER,
                    &json!({"dst": pay.v4.to_string(), "start_at": start_at, "phases": [phase]}),
                );
            }
            let phase = json!({"bind": batch.v4.to_string(), "port": 5302, "socks": 1, "count": (1000.0 * SECS) as u64, "rate": 1000});
            senders.spawn(
                &batch.ns,
                None,
                UDP_SENDER,
                &json!({"dst": pay.v4.to_string(), "start_at": start_at, "phases": [phase]}),
            );
            let reports = senders.join(Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(300)); // the tail: the servers drain their sockets
            let (f_recv, b_recv) = (sink_f.count() - f0, sink_b.count() - b0);
            let drops = agent.counter("drop_rate_limit") - drops0;
            let rcvbuf_errors = udp_rcvbuf_errors(&pay.ns) - errs0;
            let stats1 = limit(&agent, "frontend-packets");
            let passed = u64_of(&stats1, "packets_passed") - u64_of(&stats0, "packets_passed");
            let dropped = u64_of(&stats1, "packets_dropped") - u64_of(&stats0, "packets_dropped");

            let (fr, br) = (&reports[..2], &reports[2][0]);
            let f_sent: u64 = fr.iter().map(|r| u64_of(&r[0], "sent")).sum();
            let f_errors: u64 = fr.iter().map(|r| u64_of(&r[0], "errors")).sum();
            let first = fr.iter().map(|r| f64_of(&r[0], "t_first")).fold(f64::MAX, f64::min);
            let last = fr.iter().map(|r| f64_of(&r[0], "t_last")).fold(f64::MIN, f64::max);
            let window = last - first;
            let offered = f_sent as f64 / window;
            let admitted_rate = (f_recv as f64 - BURST) / window;
            let b_sent = u64_of(br, "sent");
            eprintln!(
                "packets: frontend sent {f_sent} ({f_errors} send errors) in {window:.3} s from 2 CPUs = {offered:.0}/s offered \
             ({:.2}x the limit); payments received {f_recv}; admitted rate (received - burst) / window = {admitted_rate:.1}/s \
             (limit {RATE}/s, {:+.2}%); over a nominal 5 s: {:.1}/s; expected burst + rate * window = {:.0}",
                offered / RATE,
                (admitted_rate / RATE - 1.0) * 100.0,
                (f_recv as f64 - BURST) / SECS,
                BURST + RATE * window,
            );
            eprintln!(
                "packets: datapath passed {passed}, dropped {dropped}, drop_rate_limit +{drops}, payments UDP RcvbufErrors +{rcvbuf_errors}; \
             batch sent {b_sent} ({} errors), received {b_recv}",
                u64_of(br, "errors")
            );
            // Whether the senders were fast enough for the exact judgment (speed, not correctness).
            let fast = offered >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(&window);
            let why =
                format!("the senders offered {offered:.0}/s over {window:.3} s, not >= 4.5x {RATE}/s over ~{SECS} s");
            (
                (
                    f_sent,
                    f_errors,
                    f_recv,
                    b_sent,
                    b_recv,
                    window,
                    admitted_rate,
                    drops,
                    dropped,
                    passed,
                    rcvbuf_errors,
                    fast,
                ),
                fast.then_some(()).ok_or(why),
            )
        });
    assert_eq!(f_errors, 0, "frontend send errors");
    assert_eq!(rcvbuf_errors, 0, "payments' sockets lost datagrams: the counts would not measure the limit");
    assert_eq!(b_recv, b_sent, "batch (no limit) lost datagrams while frontend was limited");
    assert!(b_sent >= (1000.0 * SECS) as u64 - 5, "batch sent only {b_sent}");
    assert!(drops > 0 && dropped > 0, "no datagram was dropped by the rate limit");
    // What the limit admitted is what arrived, and what it did not is what it dropped.
    assert_eq!(f_recv, passed, "received {f_recv} but the limit passed {passed}");
    assert_eq!(f_sent, passed + dropped, "sent {f_sent} != passed {passed} + dropped {dropped}");
    if fast {
        assert!(
            within_10pct(admitted_rate, RATE),
            "admitted {admitted_rate:.1}/s under overload; the limit is {RATE}/s (±10%)"
        );
    } else {
        // Slow senders let tokens go unused: only the bounds that hold at any speed.
        assert_within_bounds(f_recv, f_sent, BURST, RATE, window, "frontend");
    }

    // --- 2. burst: after idle, 1000 back-to-back datagrams from one process ---
    let (sent, got, drops, rcvbuf_errors, elapsed, burst, fast) = retry(|| {
        std::thread::sleep(Duration::from_millis(600)); // idle: full bucket again
        let f0 = sink_f.count();
        let (drops0, errs0) = (agent.counter("drop_rate_limit"), udp_rcvbuf_errors(&pay.ns));
        let mut senders = Senders::new();
        let phase = json!({"bind": front.v4.to_string(), "port": 5301, "socks": 1, "count": 1000, "rate": 0});
        senders.spawn(
            &front.ns,
            Some(0),
            UDP_SENDER,
            &json!({"dst": pay.v4.to_string(), "start_at": 0.0, "phases": [phase]}),
        );
        let r = senders.join(Duration::from_secs(10))[0][0].clone();
        std::thread::sleep(Duration::from_millis(300));
        let got = sink_f.count() - f0;
        let drops = agent.counter("drop_rate_limit") - drops0;
        let rcvbuf_errors = udp_rcvbuf_errors(&pay.ns) - errs0;
        let elapsed = f64_of(&r, "t_last") - f64_of(&r, "t_first");
        // Tokens that refilled while the datagrams were being sent.
        let refill = RATE * elapsed;
        let burst = got as f64 - refill;
        eprintln!(
            "burst: sent {} back to back in {:.2} ms (refill allowance {refill:.1}), received {got}, dropped {drops}: \
             measured burst {burst:.1} (configured {BURST}, {:+.2}%); payments UDP RcvbufErrors +{rcvbuf_errors}",
            u64_of(&r, "sent"),
            elapsed * 1e3,
            (burst / BURST - 1.0) * 100.0
        );
        let fast = elapsed < 0.1;
        let sent = u64_of(&r, "sent");
        (
            (sent, got, drops, rcvbuf_errors, elapsed, burst, fast),
            fast.then_some(()).ok_or(format!("1000 datagrams took {elapsed:.3} s to send, not back to back")),
        )
    });
    assert_eq!(sent, 1000);
    assert_eq!(rcvbuf_errors, 0, "payments' socket lost datagrams: the count would not measure the limit");
    assert!(drops > 0, "nothing dropped after the burst");
    assert_eq!(drops + got, 1000, "received {got} + dropped {drops} != 1000 sent");
    if fast {
        assert!(within_10pct(burst, BURST), "the burst admitted {burst:.1}; configured {BURST} (±10%)");
    } else {
        assert_within_bounds(got, sent, BURST, RATE, elapsed, "the burst");
    }
}
