//! The compiled lookup against the reference semantics, on random policies.

use super::*;

const CIDRS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.0/25",
    "10.1.2.128/25",
    "10.1.2.3/32",
    "10.1.2.4/32",
    "10.2.0.0/16",
    "192.168.0.0/16",
    "192.168.1.1/32",
    "172.16.0.0/12",
    "::/0",
    "fd00::/8",
    "fd00:1::/32",
    "fd00:1::/64",
    "fd00:1::1/128",
    "fd00:2::/48",
    "::ffff:10.3.0.0/112",
];
const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.1.2.5",
    "10.1.2.200",
    "10.1.3.1",
    "10.2.3.4",
    "10.3.0.1",
    "10.200.0.1",
    "192.168.1.1",
    "192.168.2.2",
    "172.16.5.5",
    "8.8.8.8",
    "fd00:1::1",
    "fd00:1::2",
    "fd00:1:0:1::1",
    "fd00:2::5",
    "fd01::1",
    "2001:db8::1",
    "::ffff:10.1.2.3",
];
const PORTS: &[&str] = &[
    "tcp",
    "udp",
    "icmp",
    "80/tcp",
    "443/tcp",
    "1-1024/tcp",
    "1000-2000/tcp",
    "53/udp",
    "50-60/udp",
    "65535/tcp",
    "1-65535/udp",
    "8/tcp",
];
const PROTOS: &[u8] = &[PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, 47];
const PACKET_PORTS: &[u16] = &[0, 1, 8, 22, 53, 55, 80, 128, 129, 443, 999, 1000, 1024, 1025, 2000, 2001, 65535];

fn random_policy(rng: &mut Rng) -> Policy {
    let mut cidrs: Vec<&str> = CIDRS.to_vec();
    let nseg = rng.below(6);
    let mut segments = Vec::new();
    for i in 0..nseg {
        let mut nets = Vec::new();
        for _ in 0..rng.below(4) {
            if cidrs.is_empty() {
                break;
            }
            let c = cidrs.swap_remove(rng.below(cidrs.len()));
            nets.push(c.parse().unwrap());
        }
        segments.push(Segment {
            name: format!("s{i}"),
            cidrs: nets,
            mode: if rng.below(8) == 0 { Mode::Audit } else { Mode::Enforce },
            selector: None,
        });
    }
    let side = |rng: &mut Rng| {
        let mut refs = Vec::new();
        for _ in 0..1 + rng.below(3) {
            refs.push(match rng.below(6) {
                0 => SegRef::Any,
                1 => SegRef::World,
                _ if nseg == 0 => SegRef::World,
                _ => SegRef::Named(rng.below(nseg)),
            });
        }
        refs
    };
    let mut rules = Vec::new();
    for i in 0..rng.below(8) {
        let from = side(rng);
        let to = side(rng);
        let ports = if rng.chance(3) {
            None
        } else {
            let n = 1 + rng.below(3);
            Some((0..n).map(|_| rng.pick(PORTS).parse().unwrap()).collect())
        };
        let action = if rng.chance(2) { Action::Allow } else { Action::Deny };
        // Only a deny rule may be audited.
        let mode = if action == Action::Deny && rng.below(4) == 0 { Mode::Audit } else { Mode::Enforce };
        rules.push(Rule { name: format!("r{i}"), description: None, from, to, ports, action, mode, grant: None });
    }
    let default_action = if rng.chance(2) { Action::Allow } else { Action::Deny };
    let mut rate_limits = Vec::new();
    for i in 0..rng.below(5) {
        rate_limits.push(random_limit(rng, format!("l{i}"), nseg, &side));
    }
    Policy { default_action, segments, rules, rate_limits, ..Policy::default() }
}

/// A random valid rate limit: `from` one segment or world, `to` absent or a list that may hold
/// `*`, `ports` absent or a list, at least one bucket.
fn random_limit(rng: &mut Rng, name: String, nseg: usize, side: &dyn Fn(&mut Rng) -> Vec<SegRef>) -> RateLimit {
    let from = if nseg == 0 || rng.chance(4) { SegRef::World } else { SegRef::Named(rng.below(nseg)) };
    let to = (!rng.chance(3)).then(|| side(rng));
    let ports = (!rng.chance(3)).then(|| {
        let n = 1 + rng.below(3);
        (0..n).map(|_| rng.pick(PORTS).parse().unwrap()).collect()
    });
    let per = *rng.pick(&[Per::Second, Per::Minute, Per::Hour]);
    let bucket = |rng: &mut Rng, min: u64| {
        let rate = min + rng.below(100_000) as u64;
        // burst <= rate: the bucket refills within one `per`, at most an hour.
        let burst = min + rng.below((rate - min + 1) as usize) as u64;
        BucketSpec { rate, per, burst }
    };
    let mut limit = RateLimit {
        name,
        from,
        to,
        ports,
        packets: rng.chance(2).then(|| bucket(rng, 1)),
        connections: rng.chance(2).then(|| bucket(rng, 1)),
        bytes: rng.chance(2).then(|| bucket(rng, MIN_BYTES_BURST)),
        scope: if rng.chance(2) { LimitScope::Segment } else { LimitScope::Address },
    };
    if limit.packets.is_none() && limit.connections.is_none() && limit.bytes.is_none() {
        limit.packets = Some(bucket(rng, 1));
    }
    limit
}

/// Structural invariants of the compiler's output.
fn check_compiled(p: &Policy, c: &CompiledPolicy) {
    assert_eq!(c, &compile(p), "compile is deterministic");
    assert_eq!(c.segment_names.len(), p.segments.len() + 1);
    assert!(c.hosts.iter().all(|(_, i)| i.id >= 1 && i.id as usize <= p.segments.len()));
    assert!(c.cidrs.iter().all(|(l, _, i)| *l < 128 && i.id >= 1 && i.id as usize <= p.segments.len()));
    assert!(c.pairs.iter().all(|&(_, _, prof)| prof < c.profile_count));
    assert!(c.any_any.is_none_or(|a| a < c.profile_count));
    let mut per_profile: Vec<Vec<(u32, u32)>> = vec![Vec::new(); c.profile_count as usize];
    for e in &c.ports {
        assert!(e.bits <= 24 && e.value < PORT_SPACE);
        let size = 1u32 << (24 - e.bits);
        assert_eq!(e.value % size, 0, "bits beyond the prefix must be zero");
        let v = e.verdict;
        assert!(v.rule as usize <= p.rules.len() && v.limit as usize <= p.rate_limits.len());
        if v.rule == 0 {
            // Only default-allow traffic bounded by a limit needs an entry without a rule.
            assert_eq!(p.default_action, Action::Allow);
            assert!(v.action == ACTION_ALLOW && v.limit >= 1, "{v:?}");
        }
        if v.action == ACTION_DENY {
            assert_eq!(v.limit, 0, "a denied packet is never counted");
        }
        per_profile[e.profile as usize].push((e.value, e.value + size - 1));
    }
    assert_eq!(c.limits.len(), p.rate_limits.len());
    let fingerprints: BTreeSet<u64> = c.limits.iter().map(|l| l.fingerprint).collect();
    assert_eq!(fingerprints.len(), c.limits.len(), "distinct limits, distinct fingerprints");
    for (l, cl) in p.rate_limits.iter().zip(&c.limits) {
        assert_eq!(cl.name, l.name);
        assert_eq!(cl.per_address, l.scope == LimitScope::Address);
        assert_eq!(cl.packets.is_some(), l.packets.is_some());
        assert_eq!(cl.connections.is_some(), l.connections.is_some());
        assert_eq!(cl.bytes.is_some(), l.bytes.is_some());
    }
    for ranges in &mut per_profile {
        ranges.sort_unstable();
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "entries of a profile overlap");
    }
}

#[test]
fn compiled_lookup_matches_reference() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut limited, mut total) = (0, 0);
    for round in 0..300 {
        let p = random_policy(&mut rng);
        let c = compile(&p);
        check_compiled(&p, &c);
        let idx = c.index();
        for _ in 0..300 {
            let src = ip(ADDRS[rng.below(ADDRS.len())]);
            let dst = ip(ADDRS[rng.below(ADDRS.len())]);
            let proto = *rng.pick(PROTOS);
            let port = if rng.chance(4) { rng.next() as u16 } else { *rng.pick(PACKET_PORTS) };
            let naive = evaluate_naive(&p, src, dst, proto, port);
            let got = idx.lookup(src, dst, proto, port);
            total += 1;
            limited += usize::from(got.limit != 0);
            assert_eq!(got, naive, "round {round}: {src} -> {dst} {proto}/{port}\n{}", p.to_yaml());
        }
        // The text forms are exact.
        let yaml = p.to_yaml();
        assert_eq!(parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")), p);
        assert_eq!(parse(&p.to_json(), "json").unwrap(), p);
    }
    // The random policies exercise the limits (not only limit 0).
    assert!(limited * 20 > total, "{limited} of {total} decisions limited");
}

/// For every pair of segments and every port key that can change the outcome, the datapath's
/// pair fallback and port lookup give the reference verdict.
#[test]
fn pair_scheme_is_exact_for_every_pair() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..500 {
        let p = random_policy(&mut rng);
        let c = compile(&p);
        let idx = c.index();
        // Port keys at and around every boundary of every rule (the verdict is constant
        // between boundaries), plus the ends of the space.
        let mut keys: BTreeSet<u32> = [0, PORT_SPACE - 1].into();
        let ranges = p
            .rules
            .iter()
            .flat_map(super::super::compile::rule_ranges)
            .chain(p.rate_limits.iter().flat_map(super::super::compile::limit_ranges));
        for (lo, hi) in ranges {
            keys.extend([lo, hi, lo.saturating_sub(1), (hi + 1).min(PORT_SPACE - 1)]);
        }
        // The SegmentInfo the datapath would see for each segment id (only segments with an
        // address can be seen at all).
        let mut infos = vec![SegmentInfo { id: 0, flags: c.world_flags }];
        for id in 1..=p.segments.len() as u32 {
            let info = c.hosts.iter().map(|h| h.1).chain(c.cidrs.iter().map(|c| c.2)).find(|i| i.id == id);
            infos.extend(info);
        }
        for &s in &infos {
            for &d in &infos {
                for &k in &keys {
                    assert_eq!(
                        idx.judge(s, d, k),
                        naive_verdict(&p, s.id, d.id, k),
                        "pair ({}, {}) key {k:#x}\n{}",
                        s.id,
                        d.id,
                        p.to_yaml()
                    );
                }
            }
        }
    }
}

#[test]
fn segments_without_addresses_and_empty_policies() {
    let p = ok("version: 1\n");
    assert_eq!(p, Policy::default());
    let c = compile(&p);
    assert_eq!(c.segment_names, ["world"]);
    assert!(c.pairs.is_empty() && c.ports.is_empty() && c.any_any.is_none());
    assert_eq!(verdict(decide(&p, "1.1.1.1", "2.2.2.2", PROTO_TCP, 80)), deny(0));
    let p = ok(
        "version: 1\ndefaultAction: allow\nsegments:\n  empty: { cidrs: [] }\nrules:\n  - { name: x, from: [empty], to: [\"*\"], action: deny }\n",
    );
    assert_eq!(verdict(decide(&p, "1.1.1.1", "2.2.2.2", PROTO_TCP, 80)), allow(0));
}
