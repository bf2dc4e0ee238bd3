//! Rate limits as configuration: fingerprints, diagnostics, round trips, summaries.

use super::*;

use super::limits::LIMITS;

#[test]
fn fingerprints() {
    let base = ok(LIMITS);
    let fp = |p: &Policy, i: usize| compile(p).limits[i].fingerprint;
    let f0 = fp(&base, 0);
    assert_eq!(f0, limit_fingerprint(&base, &base.rate_limits[0]));
    // The documented canonical form, rebuilt by hand, hashed with a separate FNV-1a 64.
    let mut bytes: Vec<u8> = Vec::new();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    string(&mut bytes, "ztagent.rateLimit.v1");
    string(&mut bytes, "frontend-to-payments");
    string(&mut bytes, "frontend");
    bytes.extend(1u64.to_le_bytes());
    string(&mut bytes, "payments");
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(((6u32 << 16) | 443).to_le_bytes());
    bytes.extend(((6u32 << 16) | 443).to_le_bytes());
    for (rate, per, burst) in [(2000u64, 1u64, 400u64), (600, 60, 20), (50_000_000, 1, 5_000_000)] {
        bytes.push(1);
        for v in [rate, per, burst] {
            bytes.extend(v.to_le_bytes());
        }
    }
    bytes.push(0);
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    assert_eq!(f0, fnv);
    // Pinned: the canonical form must not change between agent versions.
    assert_eq!(f0, 0x6627_1705_345c_2eeb, "{f0:#x}");
    let all: BTreeSet<u64> = compile(&base).limits.iter().map(|l| l.fingerprint).collect();
    assert_eq!(all.len(), 3);

    // Independent of everything else: other rules, other limits, the limit's position,
    // segment order and CIDRs, the default action.
    let mut q = base.clone();
    q.rules.clear();
    q.default_action = Action::Allow;
    q.rate_limits.swap(0, 2);
    q.rate_limits[1].name = "renamed".into();
    q.segments.reverse();
    q.segments[0].cidrs.clear();
    let remap = |r: SegRef| match r {
        SegRef::Named(i) => SegRef::Named(2 - i),
        other => other,
    };
    for l in &mut q.rate_limits {
        l.from = remap(l.from);
        if let Some(to) = &mut l.to {
            to.iter_mut().for_each(|r| *r = remap(*r));
        }
    }
    assert_eq!(q.seg_ref_name(q.rate_limits[2].from), "frontend");
    assert_eq!(fp(&q, 2), f0);
    assert_eq!(fp(&q, 0), fp(&base, 2));
    assert_ne!(fp(&q, 1), fp(&base, 1), "the renamed limit changes");
    // Equivalent spellings of `to` and `ports` agree.
    let mut q = base.clone();
    q.rate_limits[1].to = Some(vec![SegRef::Named(2), SegRef::Any]);
    q.rate_limits[1].ports = Some(vec!["tcp".parse().unwrap(); 1]);
    let mut r = q.clone();
    r.rate_limits[1].to = None;
    r.rate_limits[1].ports = Some(vec!["1-100/tcp".parse().unwrap(), "tcp".parse().unwrap()]);
    assert_eq!(fp(&q, 1), fp(&r, 1));
    let mut q = base.clone();
    q.rate_limits[0].to = Some(vec![SegRef::Named(1), SegRef::Named(1)]);
    q.rate_limits[0].ports = Some(vec!["443/tcp".parse().unwrap(), "443/tcp".parse().unwrap()]);
    assert_eq!(fp(&q, 0), f0);

    // Any change to the limit itself gives a new fingerprint.
    type Change = Box<dyn Fn(&mut RateLimit)>;
    let changes: Vec<(&str, Change)> = vec![
        ("name", Box::new(|l| l.name.push('x'))),
        ("from", Box::new(|l| l.from = SegRef::World)),
        ("from", Box::new(|l| l.from = SegRef::Named(2))),
        ("to", Box::new(|l| l.to = None)),
        ("to", Box::new(|l| l.to = Some(vec![SegRef::Named(1), SegRef::World]))),
        ("ports", Box::new(|l| l.ports = None)),
        ("ports", Box::new(|l| l.ports = Some(vec!["444/tcp".parse().unwrap()]))),
        ("ports", Box::new(|l| l.ports = Some(vec!["443/udp".parse().unwrap()]))),
        ("packets", Box::new(|l| l.packets = None)),
        ("packets.rate", Box::new(|l| l.packets.as_mut().unwrap().rate += 1)),
        ("packets.per", Box::new(|l| l.packets.as_mut().unwrap().per = Per::Minute)),
        ("packets.burst", Box::new(|l| l.packets.as_mut().unwrap().burst += 1)),
        ("connections", Box::new(|l| l.connections = None)),
        ("connections.rate", Box::new(|l| l.connections.as_mut().unwrap().rate = 601)),
        ("bytes", Box::new(|l| l.bytes = None)),
        ("bytes.burst", Box::new(|l| l.bytes.as_mut().unwrap().burst = 5_000_001)),
        // The same bucket moved to another kind.
        (
            "packets -> connections",
            Box::new(|l| {
                l.connections = l.packets.take();
            }),
        ),
        ("scope", Box::new(|l| l.scope = LimitScope::Address)),
    ];
    let mut seen = BTreeSet::from([f0]);
    for (what, change) in &changes {
        let mut q = base.clone();
        change(&mut q.rate_limits[0]);
        let f = fp(&q, 0);
        assert_ne!(f, f0, "changing {what} must change the fingerprint");
        assert!(seen.insert(f), "{what}: collides with another change");
        // ... and only that limit's.
        assert_eq!(fp(&q, 1), fp(&base, 1), "{what}");
    }
}

#[test]
fn rate_limit_diagnostics() {
    let text = r#"version: 1
segments:
  frontend: { cidrs: [10.0.1.0/24] }
  payments: { cidrs: [10.0.2.0/24] }
rateLimits:
  - name: a
    from: frontnd
    packets: { rate: 0, per: fortnight, burst: 0 }
  - name: a
    from: frontend
    to: [payments, paymentz]
    bytes: { rate: 1000, per: second, burst: 1000 }
    scope: host
  - name: c
    from: frontend
    to: [payments]
  - name: d
    from: [frontend]
    packets: { rate: 10, per: second, burst: 5, brust: 1 }
    colour: red
  - from: "*"
    connections: { rate: -3, per: seconds, burst: 2.5 }
"#;
    let e = errs(text);
    let expect: Vec<(usize, usize, &str)> = vec![
        (7, 11, "unknown segment `frontnd` in `from`; did you mean `frontend`?"),
        (8, 22, "`rate` must be at least 1, not 0"),
        (8, 30, "`per` must be `second`, `minute` or `hour`, not `fortnight`"),
        (8, 48, "`burst` must be at least 1, not 0"),
        (9, 11, "duplicate rate limit name `a` (first used on line 6)"),
        (11, 20, "unknown segment `paymentz` in `to`; did you mean `payments`?"),
        (
            12,
            46,
            "`bytes.burst` must be at least 1500, not 1000: a smaller bucket could never admit \
             a full-size (1500-byte) packet",
        ),
        (13, 12, "`scope` must be `segment` or `address`, not `host`"),
        (
            14,
            5,
            "rate limit `c` limits nothing; give at least one of `packets`, `connections`, \
             `bytes`",
        ),
        (18, 11, "the `from` of a rate limit is one segment name, not a list; write `from: frontend`"),
        (19, 49, "unknown field `brust` in `packets`; expected `rate`, `per`, `burst`"),
        (
            20,
            5,
            "unknown field `colour` in a rate limit; expected `name`, `from`, `to`, `ports`, \
             `packets`, `connections`, `bytes`, `scope`",
        ),
        (21, 5, "this rate limit has no `name`"),
        (
            21,
            11,
            "the `from` of a rate limit must name one segment or world, not \"*\": a rate \
             limit bounds one source identity",
        ),
        (22, 26, "`rate` must be at least 1, not -3"),
        (22, 35, "`per` must be `second`, `minute` or `hour`, not `seconds`; did you mean `second`?"),
        (22, 51, "`burst` must be a whole number, not 2.5"),
    ];
    let got: Vec<(usize, usize, &str)> = e.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got, expect);
}

#[test]
fn rate_limit_single_errors() {
    let seg = "version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\nrateLimits:\n";
    let limit = |body: &str| format!("{seg}  - {{ name: x, {body} }}\n");
    let pk = "packets: { rate: 1, per: second, burst: 1 }";
    ok(&limit(&format!("from: a, {pk}")));
    ok(&limit(&format!("from: world, to: [\"*\", world, a], ports: [icmp], {pk}")));
    assert_eq!(one_err(&limit(&format!("from: b, {pk}"))), (5, 22, "unknown segment `b` in `from`".into()));
    assert_eq!(one_err(&limit(pk)), (5, 5, "rate limit `x` has no `from`; name one source segment, or world".into()));
    assert_eq!(
        one_err(&limit(&format!("from: [a, world], {pk}"))).2,
        "the `from` of a rate limit is one segment name, not a list; write one rate limit per \
         source segment"
    );
    assert_eq!(
        one_err(&limit(&format!("from: 3, {pk}"))).2,
        "the `from` of a rate limit must be a segment name, not a number"
    );
    assert_eq!(
        one_err(&limit(&format!("from: a, to: [], {pk}"))).2,
        "`to` is empty, so the rate limit could never match; remove it to match every destination"
    );
    assert_eq!(one_err(&limit(&format!("from: a, to: a, {pk}"))).2, "`to` must be a list; write [a]");
    assert_eq!(
        one_err(&limit(&format!("from: a, ports: [], {pk}"))).2,
        "`ports` is empty, so the rate limit could never match; remove it to match every port"
    );
    assert_eq!(
        one_err(&limit(&format!("from: a, ports: [\"99999/tcp\"], {pk}"))).2,
        "invalid port spec `99999/tcp`: port 99999 is out of range; ports are 1 to 65535"
    );
    let bucket = |b: &str| one_err(&limit(&format!("from: a, packets: {b}"))).2;
    assert_eq!(bucket("{ rate: 10, burst: 1 }"), "`packets` has no `per`; add `per: second`, `minute` or `hour`");
    assert_eq!(bucket("{ per: second, burst: 1 }"), "`packets` has no `rate`");
    assert_eq!(bucket("{ rate: 1, per: second }"), "`packets` has no `burst` (how many units may pass at once)");
    assert_eq!(bucket("{ rate: 1.5, per: second, burst: 1 }"), "`rate` must be a whole number, not 1.5");
    assert_eq!(bucket("{ rate: ten, per: second, burst: 1 }"), "`rate` must be a whole number, not a string");
    assert_eq!(
        bucket("{ rate: 1000000000001, per: second, burst: 1 }"),
        "`rate` must be at most 1000000000000, not 1000000000001"
    );
    assert_eq!(
        bucket("{ rate: 1, per: second, burst: 99999999999999999999999 }"),
        "`burst` must be at most 18446744073709551615"
    );
    assert_eq!(
        bucket("{ rate: 1e13, per: second, burst: 1 }"),
        "`rate` must be at most 1000000000000, not 10000000000000"
    );
    assert_eq!(bucket("{ rate: 1, per: minute, burst: -0.0 }"), "`burst` must be at least 1, not 0");
    assert_eq!(bucket("{ rate: 1, per: 1, burst: 1 }"), "`per` must be `second`, `minute` or `hour`, not a number");
    assert_eq!(bucket("100"), "`packets` must be a mapping like { rate: 100, per: second, burst: 20 }, not a number");
    assert_eq!(
        one_err(&format!("{seg}  - {{ name: x, from: a, scope: 1, {pk} }}\n")).2,
        "`scope` must be `segment` or `address`, not a number"
    );
    assert_eq!(
        one_err(&format!("{seg}  - {{ name: \"\", from: a, {pk} }}\n")).2,
        "a rate limit name must not be empty"
    );
    assert_eq!(
        one_err("version: 1\nrateLimits: {}\n"),
        (2, 13, "`rateLimits` must be a list of rate limits, not a mapping".into())
    );
    assert_eq!(
        one_err("version: 1\nrateLimits: [3]\n").2,
        "a rate limit must be a mapping with `name`, `from` and at least one of `packets`, \
         `connections`, `bytes`, not a number"
    );
    assert_eq!(
        one_err("version: 1\nrateLimit: []\n").2,
        "unknown field `rateLimit` in the policy; did you mean `rateLimits`?"
    );
    // A rate limit can name a rule's name: they are separate namespaces.
    ok(&format!(
        "{seg}  - {{ name: x, from: a, {pk} }}\nrules:\n  - {{ name: x, from: [a], to: [a], action: allow }}\n"
    ));
    // Empty or null `rateLimits` is no limits.
    assert_eq!(ok("version: 1\nrateLimits: []\n"), Policy::default());
    assert_eq!(ok("version: 1\nrateLimits:\n"), Policy::default());
}

#[test]
fn rate_limits_round_trip() {
    let p = ok(LIMITS);
    let yaml = p.to_yaml();
    assert_eq!(parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")), p);
    let json = p.to_json();
    assert_eq!(parse(&json, "json").unwrap_or_else(|d| panic!("{d}\n{json}")), p);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let l = &v["rateLimits"];
    assert_eq!(l[0]["name"], "frontend-to-payments");
    assert_eq!(l[0]["from"], "frontend");
    assert_eq!(l[0]["to"][0], "payments");
    assert_eq!(l[0]["ports"][0], "443/tcp");
    assert_eq!(l[0]["packets"], serde_json::json!({ "rate": 2000, "per": "second", "burst": 400 }));
    assert_eq!(l[0]["connections"]["per"], "minute");
    assert_eq!(l[0]["bytes"]["burst"], 5_000_000);
    assert_eq!(l[0]["scope"], "segment");
    assert_eq!(l[1]["scope"], "address");
    // Absent `to`, `ports` and buckets stay absent.
    assert!(l[1].get("to").is_none() && l[1].get("ports").is_none());
    assert!(l[1].get("packets").is_none() && l[1].get("bytes").is_none());
    assert_eq!(l[2]["to"][0], "*");
    assert!(yaml.contains("rateLimits:"), "{yaml}");
    // A world source and names YAML would misread.
    let tricky = ok(r#"
version: 1
segments:
  "yes": { cidrs: [10.0.0.0/8] }
rateLimits:
  - { name: "null", from: "yes", to: ["yes", world], connections: { rate: 1, per: hour, burst: 1 } }
  - { name: "1", from: world, bytes: { rate: 1500, per: minute, burst: 1500 }, scope: address }
"#);
    assert_eq!(parse(&tricky.to_yaml(), "yaml").unwrap(), tricky);
    assert_eq!(parse(&tricky.to_json(), "json").unwrap(), tricky);
    // Without limits, the key is left out: the output is what it was before rate limits.
    for text in [EXAMPLE, "version: 1\n"] {
        let p = ok(text);
        assert!(!p.to_yaml().contains("rateLimits"));
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert!(v.get("rateLimits").is_none());
        assert_eq!(v.as_object().unwrap().len(), 4);
    }
    assert_eq!(
        ok("version: 1\n").to_json(),
        "{\n  \"version\": 1,\n  \"defaultAction\": \"deny\",\n  \"segments\": {},\n  \"rules\": []\n}"
    );
}

#[test]
fn summary_counts_rate_limits() {
    let c = compile(&ok(LIMITS));
    let s = c.summary();
    assert_eq!(s.rate_limits, 3);
    assert!(s.to_string().ends_with(" port entries, 3 rate limits"), "{s}");
    // Unchanged without limits.
    let s = compile(&ok(EXAMPLE)).summary();
    assert_eq!(s.rate_limits, 0);
    assert!(s.to_string().ends_with(" port entries"), "{s}");
}

#[test]
fn rate_limits_never_panic() {
    let json = ok(LIMITS).to_json();
    for text in [LIMITS, json.as_str()] {
        for (i, _) in text.char_indices() {
            check_no_panic(&text[..i]);
        }
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let specials: Vec<char> = ":-[]{}\"'*,.0123456789e\n ".chars().collect();
    for _ in 0..1500 {
        let mut chars: Vec<char> = LIMITS.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(chars.len());
            match rng.below(3) {
                0 => chars[i] = *rng.pick(&specials),
                1 => chars.insert(i, *rng.pick(&specials)),
                _ => {
                    chars.remove(i);
                }
            }
        }
        check_no_panic(&chars.iter().collect::<String>());
    }
}
