//! `scope: address`: each address its own budget, and its buckets counted live.
use super::*;

const ADDRESS_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: udp-in, from: [frontend], to: [payments], ports: ["5401/udp", "5402/udp"], action: allow }
rateLimits:
  - name: per-address
    from: frontend
    to: [payments]
    packets: { rate: 50, per: second, burst: 20 }
    scope: address
"#;

#[test]
fn scope_address_gives_each_address_its_own_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const RATE: f64 = 50.0;
    const BURST: f64 = 20.0;
    const SECS: f64 = 2.0;
    let lan = lan();
    add_second_address(&lan);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", ADDRESS_POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let servers = Servers::start(&pay.ns, &[], &[5401, 5402]);
    let sinks = [Sink(&servers, 5401), Sink(&servers, 5402)];
    assert!(udp_ok(&front.ns, pay.v4, 5401), "frontend cannot reach payments:5401/udp");
    assert!(udp_ok_from(&front.ns, FRONT2, pay.v4, 5402), "{FRONT2} cannot reach payments:5402/udp");
    std::thread::sleep(Duration::from_millis(600)); // idle: 20 tokens refill in 0.4 s
    let addrs: [IpAddr; 2] = [front.v4, FRONT2.parse().unwrap()];
    let ports = [5401u16, 5402];

    // --- 1. back-to-back bursts: the first address empties its bucket, the second still gets
    // its whole burst (in segment scope it would get nothing). ---
    let (r, got, drops) = retry(|| {
        let drops0 = agent.counter("drop_rate_limit");
        let before = [sinks[0].count(), sinks[1].count()];
        let mut senders = Senders::new();
        let phases: Vec<Value> = (0..2)
            .map(|i| json!({"bind": addrs[i].to_string(), "port": ports[i], "socks": 1, "count": 100, "rate": 0}))
            .collect();
        senders.spawn(
            &front.ns,
            Some(0),
            UDP_SENDER,
            &json!({"dst": pay.v4.to_string(), "start_at": 0.0, "phases": phases}),
        );
        let r = senders.join(Duration::from_secs(10)).remove(0);
        std::thread::sleep(Duration::from_millis(200));
        let drops = agent.counter("drop_rate_limit") - drops0;
        let got = [sinks[0].count() - before[0], sinks[1].count() - before[1]];
        let slow: Vec<String> = (0..2)
            .map(|i| (i, f64_of(&r[i], "t_last") - f64_of(&r[i], "t_first")))
            .filter(|(_, elapsed)| *elapsed >= 0.1)
            .map(|(i, elapsed)| format!("100 datagrams from {} took {elapsed:.3} s, not back to back", addrs[i]))
            .collect();
        ((r, got, drops), if slow.is_empty() { Ok(()) } else { Err(slow.join("; ")) })
    });
    for i in 0..2 {
        let got = got[i];
        let elapsed = f64_of(&r[i], "t_last") - f64_of(&r[i], "t_first");
        let expected = BURST + RATE * elapsed;
        eprintln!(
            "address {}: 100 back to back in {:.2} ms, received {got}: expected burst + refill = {expected:.2}",
            addrs[i],
            elapsed * 1e3
        );
        assert_eq!(u64_of(&r[i], "sent"), 100);
        if elapsed < 0.1 {
            assert!(within_10pct(got as f64, expected), "{} got {got} of a burst of {BURST}", addrs[i]);
        } else {
            assert_within_bounds(got, 100, BURST, RATE, elapsed, &addrs[i].to_string());
        }
    }
    let got: u64 = got.iter().sum();
    eprintln!("address bursts: drop_rate_limit +{drops}");
    assert_eq!(drops + got, 200, "received {got} + dropped {drops} != 200 sent");

    // --- 2. both at 5x their limit at once, from two CPUs: each gets burst + rate * window ---
    std::thread::sleep(Duration::from_millis(600));
    let (reports, got, drops, stats) = retry(|| {
        let drops0 = agent.counter("drop_rate_limit");
        let before = [sinks[0].count(), sinks[1].count()];
        let start_at = mono() + 0.5;
        let mut senders = Senders::new();
        for i in 0..2 {
            let phase = json!({"bind": addrs[i].to_string(), "port": ports[i], "socks": 2, "count": (RATE * 5.0 * SECS) as u64, "rate": RATE * 5.0});
            senders.spawn(
                &front.ns,
                Some(i),
                UDP_SENDER,
                &json!({"dst": pay.v4.to_string(), "start_at": start_at, "phases": [phase]}),
            );
        }
        let reports = senders.join(Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(200));
        let drops = agent.counter("drop_rate_limit") - drops0;
        let stats = limit(&agent, "per-address");
        let got = [sinks[0].count() - before[0], sinks[1].count() - before[1]];
        let slow: Vec<String> = (0..2)
            .map(|i| (i, &reports[i][0]))
            .map(|(i, r)| (i, f64_of(r, "t_last") - f64_of(r, "t_first"), u64_of(r, "sent")))
            .filter(|(_, window, sent)| {
                !(*sent as f64 / window >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(window))
            })
            .map(|(i, window, sent)| format!("{} offered {:.1}/s over {window:.3} s", addrs[i], sent as f64 / window))
            .collect();
        ((reports, got, drops, stats), if slow.is_empty() { Ok(()) } else { Err(slow.join("; ")) })
    });
    let mut total = 0;
    for i in 0..2 {
        let r = &reports[i][0];
        let got = got[i];
        total += got;
        let window = f64_of(r, "t_last") - f64_of(r, "t_first");
        let offered = u64_of(r, "sent") as f64 / window;
        let expected = BURST + RATE * window;
        eprintln!(
            "address {}: sent {} in {window:.3} s = {offered:.1}/s ({:.2}x), received {got}: expected burst + rate * window \
             = {expected:.1} ({:+.2}%)",
            addrs[i],
            u64_of(r, "sent"),
            offered / RATE,
            (got as f64 / expected - 1.0) * 100.0
        );
        if offered >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(&window) {
            assert!(within_10pct(got as f64, expected), "{} got {got}; expected {expected:.1} (±10%)", addrs[i]);
        } else {
            assert_within_bounds(got, u64_of(r, "sent"), BURST, RATE, window, &addrs[i].to_string());
        }
    }
    eprintln!(
        "address concurrent: total {total}, drop_rate_limit +{drops}, address buckets {}",
        stats["address_buckets"]
    );
    let sent: u64 = reports.iter().map(|r| u64_of(&r[0], "sent")).sum();
    assert_eq!(drops + total, sent, "received {total} + dropped {drops} != {sent} sent");
    assert!(u64_of(&stats, "address_buckets") >= 2, "fewer than two per-address buckets: {stats}");
}

/// Issue 23, defect 2: `status` counted a per-address limit's live buckets of the packets kind
/// only, so a bytes (or connections) limit showed "0 live, 2 evicted" while the map held two
/// buckets. Two addresses under a per-address bytes limit: two live, none evicted.
#[test]
fn address_buckets_of_every_kind_are_counted_live() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lan = lan();
    add_second_address(&lan);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let text = ADDRESS_POLICY.replace(
        "packets: { rate: 50, per: second, burst: 20 }",
        "bytes: { rate: 1000000, per: second, burst: 100000 }",
    );
    let policy = dir.file("policy.yaml", &text);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let _servers = Servers::start(&pay.ns, &[], &[5401, 5402]);
    assert!(udp_ok(&front.ns, pay.v4, 5401), "frontend cannot reach payments:5401/udp");
    assert!(udp_ok_from(&front.ns, FRONT2, pay.v4, 5402), "{FRONT2} cannot reach payments:5402/udp");
    let stats = limit(&agent, "per-address");
    assert_eq!(u64_of(&stats, "address_buckets"), 2, "two addresses, two live buckets: {stats}");
    assert_eq!(u64_of(&stats, "evicted"), 0, "nothing was evicted: {stats}");
    // Issue 23: a limit's buckets in JSON as values, not display strings
    // (`jq '.limits["per-address"].bytes.rate'`).
    assert_eq!(stats["bytes"], serde_json::json!({"rate": 1_000_000, "per": "second", "burst": 100_000}), "{stats}");
    assert_eq!(
        (&stats["packets"], &stats["connections"], &stats["scope"]),
        (&Value::Null, &Value::Null, &"address".into())
    );
}
