//! Rate limits: which limit a flow counts against, in both lookup schemes, and the buckets.

use super::*;

pub(super) const LIMITS: &str = r#"version: 1
defaultAction: deny
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.0/24] }
  batch:    { cidrs: [10.20.3.0/24] }
rules:
  - { name: web, from: [frontend], to: [payments, batch], ports: [tcp, udp], action: allow }
  - { name: no-telnet, from: ["*"], to: ["*"], ports: ["23/tcp"], action: deny }
rateLimits:
  - name: frontend-to-payments
    from: frontend
    to: [payments]
    ports: ["443/tcp"]
    packets:     { rate: 2000, per: second, burst: 400 }
    connections: { rate: 600,  per: minute, burst: 20 }
    bytes:       { rate: 50000000, per: second, burst: 5000000 }
  - name: frontend-anywhere
    from: frontend
    connections: { rate: 100, per: second, burst: 10 }
    scope: address
  - name: frontend-udp
    from: frontend
    to: ["*"]
    ports: [udp]
    packets: { rate: 10, per: hour, burst: 10 }
"#;

pub(super) fn limit_of(d: Decision) -> (u32, u32, u32) {
    (d.action, d.rule, d.limit)
}

#[test]
fn first_matching_limit_wins() {
    let p = ok(LIMITS);
    assert_eq!(p.rate_limits.len(), 3);
    let l = &p.rate_limits[0];
    assert_eq!((l.from, l.to.clone(), l.scope), (SegRef::Named(0), Some(vec![SegRef::Named(1)]), LimitScope::Segment));
    assert_eq!(l.packets, Some(BucketSpec { rate: 2000, per: Per::Second, burst: 400 }));
    assert_eq!(p.rate_limits[1].to, None);
    assert_eq!(p.rate_limits[1].ports, None);
    let (f, pay, batch) = ("10.20.1.5", "10.20.2.5", "10.20.3.5");
    let v = |src, dst, proto, port| limit_of(decide(&p, src, dst, proto, port));
    // 443/tcp to payments: the first limit, although the second also matches.
    assert_eq!(v(f, pay, PROTO_TCP, 443), (ACTION_ALLOW, 1, 1));
    // Other ports: the second (no `to`, no `ports`) matches before the third.
    assert_eq!(v(f, pay, PROTO_TCP, 444), (ACTION_ALLOW, 1, 2));
    assert_eq!(v(f, pay, PROTO_UDP, 53), (ACTION_ALLOW, 1, 2));
    assert_eq!(v(f, batch, PROTO_TCP, 443), (ACTION_ALLOW, 1, 2));
    // Denied: never counted, whatever matches.
    assert_eq!(v(f, pay, PROTO_TCP, 23), (ACTION_DENY, 2, 0));
    assert_eq!(v(f, "8.8.8.8", PROTO_UDP, 53), (ACTION_DENY, 0, 0));
    assert_eq!(v(f, pay, PROTO_ICMP, 8), (ACTION_DENY, 0, 0));
    // Other sources are not limited.
    assert_eq!(v(pay, f, PROTO_TCP, 443), (ACTION_DENY, 0, 0));

    // With the catch-all limit moved last, the third one wins for UDP.
    let mut q = p.clone();
    let catch_all = q.rate_limits.remove(1);
    q.rate_limits.push(catch_all);
    let v = |src, dst, proto, port| limit_of(decide(&q, src, dst, proto, port));
    assert_eq!(v(f, pay, PROTO_UDP, 53), (ACTION_ALLOW, 1, 2));
    assert_eq!(v(f, pay, PROTO_TCP, 443), (ACTION_ALLOW, 1, 1));
    assert_eq!(v(f, pay, PROTO_TCP, 444), (ACTION_ALLOW, 1, 3));

    let c = compile(&p);
    assert_eq!(c.limit_name(1), Some("frontend-to-payments"));
    assert_eq!(c.limit_name(3), Some("frontend-udp"));
    assert_eq!(c.limit_name(0), None);
    assert_eq!(c.limit_name(4), None);
    // The port partition of (frontend, payments) is split at the limits' boundaries.
    let verdict = |rule, limit| Verdict { action: ACTION_ALLOW, rule, limit, ..Default::default() };
    let profile = c.pairs.iter().find(|&&(s, d, _)| (s, d) == (1, 2)).unwrap().2;
    let entries: Vec<(u32, u32, Verdict)> =
        c.ports.iter().filter(|e| e.profile == profile).map(|e| (e.bits, e.value, e.verdict)).collect();
    assert!(entries.contains(&(24, (6 << 16) | 443, verdict(1, 1))), "{entries:?}");
    assert!(entries.contains(&(24, (6 << 16) | 442, verdict(1, 2))), "{entries:?}");
    assert!(entries.contains(&(8, 17 << 16, verdict(1, 2))), "{entries:?}");
}

#[test]
fn limits_on_default_allow_traffic() {
    let p = ok(r#"
version: 1
defaultAction: allow
segments:
  a: { cidrs: [10.0.1.0/24] }
  b: { cidrs: [10.0.2.0/24] }
rules:
  - { name: no-smtp, from: [a], to: ["*"], ports: ["25/tcp"], action: deny }
  - { name: web, from: [a], to: [b], ports: ["80/tcp"], action: allow }
rateLimits:
  - { name: a-out, from: a, to: [world], ports: [tcp], packets: { rate: 5, per: second, burst: 5 } }
  - { name: from-world, from: world, to: [b], connections: { rate: 5, per: minute, burst: 1 } }
"#);
    let v = |src, dst, proto, port| limit_of(decide(&p, src, dst, proto, port));
    // No rule matches, the default allows, the limit bounds it.
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 443), (ACTION_ALLOW, 0, 1));
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 0), (ACTION_ALLOW, 0, 1));
    // Not covered by the limit's ports: default allow, no limit.
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_UDP, 443), (ACTION_ALLOW, 0, 0));
    // Denied by a rule: no limit.
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 25), (ACTION_DENY, 1, 0));
    // Allowed by a rule that no limit matches.
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 80), (ACTION_ALLOW, 2, 0));
    // `from: world`.
    assert_eq!(v("8.8.8.8", "10.0.2.1", PROTO_UDP, 53), (ACTION_ALLOW, 0, 2));
    assert_eq!(v("8.8.8.8", "10.0.1.1", PROTO_UDP, 53), (ACTION_ALLOW, 0, 0));
    let c = compile(&p);
    assert!(c.ports.iter().any(|e| e.verdict.rule == 0 && e.verdict.action == ACTION_ALLOW && e.verdict.limit == 1));
    // The profile of (world, b) holds only a limit, and still gets its entry.
    assert!(c.pairs.iter().any(|&(s, d, _)| (s, d) == (0, 2)));
}

#[test]
fn no_limit_on_denied_traffic() {
    // Default deny: where no rule allows, a limit needs (and gets) no entry.
    let p = ok(r#"
version: 1
segments:
  a: { cidrs: [10.0.1.0/24] }
  b: { cidrs: [10.0.2.0/24] }
rules:
  - { name: web, from: [a], to: [b], ports: ["80/tcp"], action: allow }
  - { name: no-8080, from: [a], to: [b], ports: ["8080/tcp"], action: deny }
rateLimits:
  - { name: lim, from: a, packets: { rate: 5, per: second, burst: 5 } }
"#);
    let v = |src, dst, proto, port| limit_of(decide(&p, src, dst, proto, port));
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 80), (ACTION_ALLOW, 1, 1));
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 8080), (ACTION_DENY, 2, 0));
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 81), (ACTION_DENY, 0, 0));
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 80), (ACTION_DENY, 0, 0));
    let c = compile(&p);
    assert!(c.ports.iter().all(|e| (e.verdict.action == ACTION_ALLOW) == (e.verdict.limit == 1)));
    // Only 80/tcp (allowed, limited) and 8080/tcp (denied) have entries.
    assert_eq!(c.ports.len(), 2, "{:?}", c.ports);
    // The limit without `to` makes `a` a wildcard source, as a rule with `to: ["*"]` would.
    assert_eq!(c.cidrs[0].2.flags, SEG_F_SRC_WILD);
    assert!(c.pairs.iter().any(|&(s, d, _)| (s, d) == (1, SEG_ANY)));
}

#[test]
fn limits_in_the_pair_scheme() {
    // A wildcard-source limit meets a wildcard-destination rule: the pair must be explicit.
    let p = ok(r#"
version: 1
defaultAction: allow
segments:
  web: { cidrs: [10.0.1.0/24] }
  db: { cidrs: [10.0.2.0/24] }
rules:
  - { name: to-db, from: ["*"], to: [db], ports: ["5432/tcp"], action: allow }
  - { name: no-ssh, from: ["*"], to: [db], ports: ["22/tcp"], action: deny }
rateLimits:
  - { name: web, from: web, bytes: { rate: 1000000, per: second, burst: 100000 } }
"#);
    let v = |src, dst, proto, port| limit_of(decide(&p, src, dst, proto, port));
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 5432), (ACTION_ALLOW, 1, 1));
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 22), (ACTION_DENY, 2, 0));
    assert_eq!(v("10.0.1.1", "10.0.2.1", PROTO_TCP, 80), (ACTION_ALLOW, 0, 1));
    assert_eq!(v("10.0.1.1", "9.9.9.9", PROTO_TCP, 80), (ACTION_ALLOW, 0, 1));
    assert_eq!(v("9.9.9.9", "10.0.2.1", PROTO_TCP, 22), (ACTION_DENY, 2, 0));
    assert_eq!(v("10.0.2.1", "10.0.2.2", PROTO_TCP, 5432), (ACTION_ALLOW, 1, 0));
    assert_eq!(v("10.0.2.1", "9.9.9.9", PROTO_TCP, 80), (ACTION_ALLOW, 0, 0));
    let c = compile(&p);
    let keys: Vec<(u32, u32)> = c.pairs.iter().map(|&(s, d, _)| (s, d)).collect();
    assert_eq!(keys, vec![(1, 2), (1, SEG_ANY), (SEG_ANY, 2)]);
    assert_eq!(c.any_any, None);
}

#[test]
fn address_scope_flag() {
    let c = compile(&ok(LIMITS));
    let flags: Vec<bool> = c.limits.iter().map(|l| l.per_address).collect();
    assert_eq!(flags, [false, true, false]);
    let l = &c.limits[0];
    assert_eq!(l.name, "frontend-to-payments");
    assert!(l.packets.is_some() && l.connections.is_some() && l.bytes.is_some());
    assert!(c.limits[1].packets.is_none() && c.limits[1].bytes.is_none());
}

#[test]
fn fixed_point_costs() {
    let c = compile(&ok(LIMITS));
    let l = &c.limits[0];
    // 2000/s: 500000 ns per packet.
    assert_eq!(
        l.packets,
        Some(Bucket {
            rate: 2000,
            per_seconds: 1,
            burst: 400,
            cost_fp16: 500_000 << 16,
            tolerance_fp16: 400 * (500_000 << 16),
        })
    );
    // 600/minute: 100 ms per connection.
    let conn = l.connections.unwrap();
    assert_eq!(conn.per_seconds, 60);
    assert_eq!(conn.cost_fp16, 100_000_000 << 16);
    assert_eq!(conn.tolerance_fp16, 20 * (100_000_000 << 16));
    // 50 MB/s: 20 ns per byte.
    let bytes = l.bytes.unwrap();
    assert_eq!(bytes.cost_fp16, 20 << 16);
    assert_eq!(bytes.tolerance_fp16, 5_000_000 * (20 << 16));
    // 10/hour: 360 s per packet.
    assert_eq!(c.limits[2].packets.unwrap().cost_fp16, 360_000_000_000 << 16);
    // Rounding to the nearest: 3/s is 333333333.33.. ns = 21845333333333.33.. << 16 units;
    // 7/s is 142857142.857.. ns = 9362285714285.71.. units.
    assert_eq!(Bucket::new(3, 1, 1).cost_fp16, 21_845_333_333_333);
    assert_eq!(Bucket::new(7, 1, 1).cost_fp16, 9_362_285_714_286);
    // The extremes validation accepts: no overflow, tolerance below 2^63.
    let slow = Bucket::new(1, 3600, 24);
    assert_eq!(slow.cost_fp16, 3_600_000_000_000 << 16);
    assert_eq!(slow.tolerance_fp16, 86_400_000_000_000 << 16);
    assert!(slow.tolerance_fp16 < 1 << 63);
    let fast = Bucket::new(MAX_RATE, 1, MAX_RATE * MAX_REFILL_SECONDS);
    assert_eq!(fast.cost_fp16, 66);
    assert!(fast.tolerance_fp16 < 1 << 63 && fast.tolerance_fp16 >= fast.cost_fp16);
    // Out of range (hand-built policies): saturates, never panics.
    assert_eq!(Bucket::new(1, 3600, u64::MAX).tolerance_fp16, u64::MAX);
    assert_eq!(Bucket::new(0, 1, 1).cost_fp16, 1_000_000_000 << 16);
    assert_eq!(Bucket::new(u64::MAX, 1, 1).cost_fp16, 0);
}

#[test]
fn refill_bound_is_exact() {
    let limit = |b: &str| {
        format!("version: 1\nsegments:\n  a: {{ cidrs: [10.0.0.0/8] }}\nrateLimits:\n  - {{ name: x, from: a, {b} }}\n")
    };
    // Refilling in exactly 24 hours is accepted; one more unit is not.
    let p = ok(&limit("packets: { rate: 1, per: hour, burst: 24 }"));
    assert_eq!(compile(&p).limits[0].packets.unwrap().tolerance_fp16, 86_400_000_000_000 << 16);
    assert_eq!(
        one_err(&limit("packets: { rate: 1, per: hour, burst: 25 }")),
        (
            5,
            63,
            "a burst of 25 at 1 per hour takes about 25 hours to refill; at most 24 hours is \
             supported: lower `burst` or raise `rate`"
                .into()
        )
    );
    // The brief's example: bytes at 1 per hour with a burst of 1e9.
    assert_eq!(
        one_err(&limit("bytes: { rate: 1, per: hour, burst: 1000000000 }")).2,
        "a burst of 1000000000 at 1 per hour takes about 1000000000 hours to refill; at most \
         24 hours is supported: lower `burst` or raise `rate`"
    );
    ok(&limit("bytes: { rate: 1000000000000, per: second, burst: 1500 }"));
    // Whole floats are whole numbers.
    let p = ok(&limit("bytes: { rate: 5e6, per: second, burst: 1.5e6 }"));
    assert_eq!(p.rate_limits[0].bytes, Some(BucketSpec { rate: 5_000_000, per: Per::Second, burst: 1_500_000 }));
}
