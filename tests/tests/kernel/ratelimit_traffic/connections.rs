//! A `connections` bucket against new TCP connections.
use super::*;

const CONNECTIONS_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: tls, from: [frontend], to: [payments], ports: ["8443/tcp"], action: allow }
rateLimits:
  - name: frontend-connections
    from: frontend
    to: [payments]
    ports: ["tcp"]
    connections: { rate: 20, per: second, burst: 10 }
"#;

#[test]
fn new_tcp_connections_are_limited_to_burst_plus_rate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const RATE: f64 = 20.0;
    const BURST: f64 = 10.0;
    const SECS: f64 = 5.0;
    let lan = lan();
    add_second_address(&lan);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", CONNECTIONS_POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let _servers = Servers::start(&pay.ns, &[8443], &[]);
    assert!(tcp_ok(&front.ns, pay.v4, 8443), "frontend cannot connect to payments:8443");
    std::thread::sleep(Duration::from_millis(1000)); // idle: 10 tokens refill in 0.5 s

    let (attempts, ok, timedout, failed, drops, conn_dropped, window, expected, fast) = retry(|| {
        let drops0 = agent.counter("drop_rate_limit");
        let stats0 = limit(&agent, "frontend-connections");
        let start_at = mono() + 0.5;
        let mut senders = Senders::new();
        // 2 x 50/s = 5x the limit, from two CPUs and the segment's two addresses.
        for (cpu, bind) in [(0, front.v4.to_string()), (1, FRONT2.to_string())] {
            let cfg = json!({"dst": pay.v4.to_string(), "port": 8443, "bind": bind, "count": (RATE * 2.5 * SECS) as u64,
                             "rate": RATE * 2.5, "timeout": 0.4, "start_at": start_at});
            senders.spawn(&front.ns, Some(cpu), TCP_CONNECTOR, &cfg);
        }
        let reports = senders.join(Duration::from_secs(20));
        let drops = agent.counter("drop_rate_limit") - drops0;
        let stats1 = limit(&agent, "frontend-connections");
        let conn_passed = u64_of(&stats1, "connections_passed") - u64_of(&stats0, "connections_passed");
        let conn_dropped = u64_of(&stats1, "connections_dropped") - u64_of(&stats0, "connections_dropped");

        let sum = |k: &str| reports.iter().map(|r| u64_of(r, k)).sum::<u64>();
        let (attempts, ok, timedout, failed) = (sum("attempts"), sum("ok"), sum("timedout"), sum("failed"));
        let first = reports.iter().map(|r| f64_of(r, "t_first")).fold(f64::MAX, f64::min);
        let last = reports.iter().map(|r| f64_of(r, "t_last")).fold(f64::MIN, f64::max);
        let window = last - first;
        let offered = attempts as f64 / window;
        // A full bucket of 10 at the first attempt, then one token per 50 ms until the last one;
        // at 100 attempts/s a token is taken within 10 ms of its refill, so the handshakes are
        // burst + rate * window, within one token.
        let expected = BURST + RATE * window;
        eprintln!(
            "connections: {attempts} attempts in {window:.3} s from 2 CPUs = {offered:.1}/s offered ({:.2}x the limit); \
             {ok} handshakes, {timedout} timed out (SYN dropped), {failed} failed; expected burst + rate * window = \
             {expected:.1} ({:+.2}%); rate (ok - burst) / window = {:.2}/s; datapath connections passed {conn_passed}, \
             dropped {conn_dropped}; drop_rate_limit +{drops}",
            offered / RATE,
            (ok as f64 / expected - 1.0) * 100.0,
            (ok as f64 - BURST) / window,
        );
        let fast = offered >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(&window);
        let why = format!("{offered:.1} attempts/s over {window:.3} s, not >= 4.5x {RATE}/s over ~{SECS} s");
        ((attempts, ok, timedout, failed, drops, conn_dropped, window, expected, fast), fast.then_some(()).ok_or(why))
    });
    assert_eq!(failed, 0, "connections failed other than by a dropped SYN");
    assert_eq!(ok + timedout, attempts);
    assert!(drops > 0 && conn_dropped > 0, "no SYN was dropped by the rate limit");
    // One SYN per attempt (the timeout is below the initial RTO): each timed-out attempt is
    // exactly one rate-limit drop.
    assert_eq!(drops, timedout, "attempts timed out without a rate-limit drop, or drops without an attempt");
    if fast {
        assert!(within_10pct(ok as f64, expected), "{ok} connections admitted; expected {expected:.1} (±10%)");
    } else {
        assert_within_bounds(ok, attempts, BURST, RATE, window, "connections");
    }
}
