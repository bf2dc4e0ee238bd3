//! Tests across the policy modules: parsing and diagnostics, serialization round trips,
//! compiler output, and the compiled lookup against the reference semantics.

use std::collections::BTreeSet;
use std::net::IpAddr;

use agent_common::{
    ACTION_ALLOW, ACTION_DENY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SEG_ANY,
    SEG_F_DST_WILD, SEG_F_SRC_WILD, SegmentInfo,
};

use super::compile::PORT_SPACE;
use super::compile::limit_fingerprint;
use super::eval::naive_verdict;
use super::*;

const EXAMPLE: &str = r#"version: 1
defaultAction: deny        # deny | allow. Absent means deny.
segments:                  # named set of addresses = the identity of those addresses
  frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32] }
  batch:    { cidrs: [10.20.3.0/24] }
rules:
  - name: frontend-calls-payments
    from: [frontend]
    to: [payments]
    ports: ["443/tcp", "8000-8099/tcp", "53/udp", "icmp"]
    action: allow
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ok(text: &str) -> Policy {
    parse(text, "t.yaml").unwrap_or_else(|d| panic!("unexpected diagnostics:\n{d}"))
}

/// The diagnostics of an invalid policy as (line, col, message).
fn errs(text: &str) -> Vec<(usize, usize, String)> {
    match parse(text, "t.yaml") {
        Ok(p) => panic!("expected diagnostics, got {p:?}"),
        Err(d) => {
            assert!(!d.is_empty());
            d.iter()
                .map(|d| {
                    assert_eq!(d.origin, "t.yaml");
                    (d.line, d.col, d.message.clone())
                })
                .collect()
        }
    }
}

/// The one diagnostic of an invalid policy.
fn one_err(text: &str) -> (usize, usize, String) {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one diagnostic, got {e:#?}");
    e.into_iter().next().unwrap()
}

/// Decides with the compiled policy, checking it against the reference semantics.
fn decide(p: &Policy, src: &str, dst: &str, proto: u8, port: u16) -> Decision {
    let (src, dst) = (ip(src), ip(dst));
    let compiled = compile(p);
    let d = compiled.lookup(src, dst, proto, port);
    assert_eq!(
        d,
        evaluate_naive(p, src, dst, proto, port),
        "{src} -> {dst} {proto}/{port}"
    );
    d
}

fn allow(rule: u32) -> (u32, u32) {
    (ACTION_ALLOW, rule)
}
fn deny(rule: u32) -> (u32, u32) {
    (ACTION_DENY, rule)
}
fn verdict(d: Decision) -> (u32, u32) {
    (d.action, d.rule)
}

// ---- semantics ----------------------------------------------------------------------------

#[test]
fn example_policy() {
    let p = ok(EXAMPLE);
    assert_eq!(p.default_action, Action::Deny);
    assert_eq!(p.segments.len(), 3);
    assert_eq!(p.rules[0].from, vec![SegRef::Named(0)]);
    assert_eq!(p.rules[0].to, vec![SegRef::Named(1)]);
    let (f, pay) = ("10.20.1.7", "10.20.2.10");
    assert_eq!(verdict(decide(&p, f, pay, PROTO_TCP, 443)), allow(1));
    assert_eq!(verdict(decide(&p, f, pay, PROTO_TCP, 444)), deny(0));
    assert_eq!(verdict(decide(&p, f, pay, PROTO_UDP, 443)), deny(0));
    assert_eq!(verdict(decide(&p, f, pay, PROTO_UDP, 53)), allow(1));
    assert_eq!(verdict(decide(&p, f, pay, PROTO_TCP, 8050)), allow(1));
    assert_eq!(verdict(decide(&p, f, pay, PROTO_ICMP, 8)), allow(1));
    // The reverse direction is not allowed.
    assert_eq!(verdict(decide(&p, pay, f, PROTO_TCP, 443)), deny(0));
    let d = decide(&p, "fd20:1::5", pay, PROTO_TCP, 443);
    assert_eq!((d.src_segment, d.dst_segment, d.rule), (1, 2, 1));
    let d = decide(&p, "10.20.3.1", "10.20.2.11", PROTO_TCP, 443);
    assert_eq!(
        (d.src_segment, d.dst_segment, d.action),
        (3, 0, ACTION_DENY)
    );

    let c = compile(&p);
    assert_eq!(c.segment_names, ["world", "frontend", "payments", "batch"]);
    assert_eq!(c.rule_names, ["frontend-calls-payments"]);
    assert_eq!(c.rule_name(1), Some("frontend-calls-payments"));
    assert_eq!(c.rule_name(0), None);
    assert_eq!(c.segment_name(0), Some("world"));
    assert_eq!(c.segment_name(3), Some("batch"));
    assert_eq!(c.segment_name(4), None);
    assert_eq!(c.default_action, ACTION_DENY);
    assert_eq!(
        c.hosts,
        vec![(addr16(ip("10.20.2.10")), SegmentInfo { id: 2, flags: 0 })]
    );
    assert_eq!(
        c.cidrs,
        vec![
            (
                120,
                addr16(ip("10.20.1.0")),
                SegmentInfo { id: 1, flags: 0 }
            ),
            (64, addr16(ip("fd20:1::")), SegmentInfo { id: 1, flags: 0 }),
            (
                120,
                addr16(ip("10.20.3.0")),
                SegmentInfo { id: 3, flags: 0 }
            ),
        ]
    );
    assert_eq!(c.pairs, vec![(1, 2, 0)]);
    assert_eq!(c.any_any, None);
    assert_eq!(c.world_flags, 0);
    assert_eq!(c.profile_count, 1);
    let v = Verdict {
        action: ACTION_ALLOW,
        rule: 1,
        ..Default::default()
    };
    let mut expect = vec![
        PortEntry {
            profile: 0,
            bits: 24,
            value: (1 << 16) | 8,
            verdict: v,
        },
        PortEntry {
            profile: 0,
            bits: 24,
            value: (6 << 16) | 443,
            verdict: v,
        },
        PortEntry {
            profile: 0,
            bits: 24,
            value: (17 << 16) | 53,
            verdict: v,
        },
    ];
    // 8000-8099 = 8000-8063 (/18), 8064-8095 (/19), 8096-8099 (/22)
    for (bits, port) in [(18, 8000), (19, 8064), (22, 8096)] {
        expect.push(PortEntry {
            profile: 0,
            bits,
            value: (6 << 16) | port,
            verdict: v,
        });
    }
    let mut got = c.ports.clone();
    got.sort_by_key(|e| e.value);
    expect.sort_by_key(|e| e.value);
    assert_eq!(got, expect);
    let s = c.summary();
    assert_eq!(
        (
            s.segments,
            s.rules,
            s.hosts,
            s.cidrs,
            s.pairs,
            s.profiles,
            s.port_entries
        ),
        (3, 1, 1, 3, 1, 1, 6)
    );
    assert_eq!(
        s.to_string(),
        "3 segments, 1 rules, 1 hosts, 3 cidrs, 1 pairs, 1 profiles, 6 port entries"
    );
}

#[test]
fn longest_prefix_wins() {
    let p = ok(r#"
version: 1
segments:
  big: { cidrs: [10.0.0.0/8] }
  mid: { cidrs: [10.1.0.0/16] }
  host: { cidrs: [10.1.2.3/32] }
  v6big: { cidrs: ["fd00::/8"] }
  v6host: { cidrs: ["fd00::1/128"] }
rules: []
"#);
    let seg = |a: &str| decide(&p, a, "8.8.8.8", PROTO_TCP, 1).src_segment;
    assert_eq!(seg("10.9.9.9"), 1);
    assert_eq!(seg("10.1.9.9"), 2);
    assert_eq!(seg("10.1.2.3"), 3);
    assert_eq!(seg("10.1.2.4"), 2);
    assert_eq!(seg("11.0.0.1"), 0);
    assert_eq!(seg("fd00::2"), 4);
    assert_eq!(seg("fd00::1"), 5);
    assert_eq!(seg("fe80::1"), 0);
    // IPv4-mapped IPv6 is the same address as the IPv4 one.
    assert_eq!(seg("::ffff:10.1.2.3"), 3);
    let c = compile(&p);
    assert_eq!(c.hosts.len(), 2);
    assert_eq!(c.cidrs.len(), 3);
    assert!(c.cidrs.iter().all(|(_, _, i)| i.id != 0) && c.hosts.iter().all(|(_, i)| i.id != 0));
}

#[test]
fn world_in_rules() {
    let p = ok(r#"
version: 1
segments:
  web: { cidrs: [10.0.1.0/24] }
  db: { cidrs: [10.0.2.0/24] }
rules:
  - { name: in, from: [world], to: [web], ports: ["443/tcp"], action: allow }
  - { name: out, from: [db], to: [world], action: deny }
"#);
    assert_eq!(
        verdict(decide(&p, "1.2.3.4", "10.0.1.1", PROTO_TCP, 443)),
        allow(1)
    );
    // db is not world: the world rule does not cover it.
    assert_eq!(
        verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 443)),
        deny(0)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.2.1", "1.1.1.1", PROTO_UDP, 53)),
        deny(2)
    );
    let c = compile(&p);
    assert_eq!(c.pairs, vec![(0, 1, 0), (2, 0, 1)]);
    assert_eq!(c.world_flags, 0);
}

#[test]
fn wildcard_in_from() {
    let p = ok(r#"
version: 1
segments:
  web: { cidrs: [10.0.1.0/24] }
  db: { cidrs: [10.0.2.0/24] }
rules:
  - { name: anyone-to-db, from: ["*"], to: [db], ports: ["5432/tcp"], action: allow }
"#);
    for src in ["10.0.1.1", "10.0.2.9", "8.8.8.8"] {
        let d = decide(&p, src, "10.0.2.1", PROTO_TCP, 5432);
        assert_eq!(verdict(d), allow(1), "{src}");
    }
    assert_eq!(
        verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 5432)),
        deny(0)
    );
    let c = compile(&p);
    assert_eq!(c.pairs, vec![(SEG_ANY, 2, 0)]);
    let db = c.cidrs.iter().find(|c| c.2.id == 2).unwrap().2;
    assert_eq!(db.flags, SEG_F_DST_WILD);
}

#[test]
fn wildcard_in_to_and_both() {
    let p = ok(r#"
version: 1
segments:
  web: { cidrs: [10.0.1.0/24] }
  db: { cidrs: [10.0.2.0/24] }
rules:
  - { name: web-anywhere, from: [web, world], to: ["*"], ports: [tcp], action: allow }
  - { name: no-telnet, from: ["*"], to: ["*"], ports: ["23/tcp"], action: deny }
  - { name: ping, from: ["*"], to: [db], ports: [icmp], action: allow }
"#);
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "10.0.2.1", PROTO_TCP, 80)),
        allow(1)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "9.9.9.9", PROTO_TCP, 80)),
        allow(1)
    );
    assert_eq!(
        verdict(decide(&p, "9.9.9.9", "10.0.1.1", PROTO_TCP, 0)),
        allow(1)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "10.0.2.1", PROTO_TCP, 23)),
        deny(2)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 23)),
        deny(2)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 80)),
        deny(0)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.2.1", "10.0.2.2", PROTO_ICMP, 8)),
        allow(3)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "10.0.2.2", PROTO_ICMP, 8)),
        allow(3)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "10.0.1.2", PROTO_ICMP, 8)),
        deny(0)
    );
    let c = compile(&p);
    assert_eq!(c.world_flags, SEG_F_SRC_WILD);
    let flags = |id| c.cidrs.iter().find(|c| c.2.id == id).unwrap().2.flags;
    assert_eq!(flags(1), SEG_F_SRC_WILD);
    assert_eq!(flags(2), SEG_F_DST_WILD);
    let keys: Vec<(u32, u32)> = c.pairs.iter().map(|&(s, d, _)| (s, d)).collect();
    // SRC_WILD x DST_WILD is explicit; then (s, ANY), (ANY, d).
    assert_eq!(
        keys,
        vec![(0, 2), (0, SEG_ANY), (1, 2), (1, SEG_ANY), (SEG_ANY, 2)]
    );
    assert!(c.any_any.is_some());
}

#[test]
fn port_ranges() {
    let p = ok(r#"
version: 1
segments:
  a: { cidrs: [10.0.1.0/24] }
  b: { cidrs: [10.0.2.0/24] }
rules:
  - { name: web, from: [a], to: [b], ports: ["8000-8099/tcp", "65535/udp", "1/tcp"], action: allow }
"#);
    let v = |proto, port| verdict(decide(&p, "10.0.1.1", "10.0.2.1", proto, port));
    assert_eq!(v(PROTO_TCP, 7999), deny(0));
    assert_eq!(v(PROTO_TCP, 8000), allow(1));
    assert_eq!(v(PROTO_TCP, 8099), allow(1));
    assert_eq!(v(PROTO_TCP, 8100), deny(0));
    assert_eq!(v(PROTO_UDP, 8050), deny(0));
    assert_eq!(v(PROTO_UDP, 65535), allow(1));
    assert_eq!(v(PROTO_TCP, 65535), deny(0));
    assert_eq!(v(PROTO_TCP, 1), allow(1));
    assert_eq!(v(PROTO_TCP, 0), deny(0));
    assert_eq!(v(47, 0), deny(0));
}

#[test]
fn deny_beats_allow_in_any_order() {
    for deny_first in [false, true] {
        let allow_rule = r#"{ name: allow-all, from: [a], to: [b], action: allow }"#;
        let deny_rule =
            r#"{ name: no-ssh, from: ["*"], to: [b], ports: ["22/tcp"], action: deny }"#;
        let deny2 = r#"{ name: no-ssh-2, from: [a], to: [b], ports: ["20-30/tcp"], action: deny }"#;
        let (r1, r2) = if deny_first {
            (deny_rule, allow_rule)
        } else {
            (allow_rule, deny_rule)
        };
        let p = ok(&format!(
            "version: 1\nsegments:\n  a: {{ cidrs: [10.0.1.0/24] }}\n  b: {{ cidrs: [10.0.2.0/24] }}\n\
             rules:\n  - {r1}\n  - {r2}\n  - {deny2}\n"
        ));
        let (allow_id, deny_id) = if deny_first { (2, 1) } else { (1, 2) };
        let v = |port| verdict(decide(&p, "10.0.1.1", "10.0.2.1", PROTO_TCP, port));
        assert_eq!(v(22), deny(deny_id), "the first matching deny decides");
        assert_eq!(v(21), deny(3));
        assert_eq!(v(80), allow(allow_id));
        assert_eq!(
            verdict(decide(&p, "10.0.2.1", "10.0.2.1", PROTO_TCP, 22)),
            deny(deny_id)
        );
    }
}

#[test]
fn first_matching_allow_decides() {
    let p = ok(r#"
version: 1
segments:
  a: { cidrs: [10.0.1.0/24] }
rules:
  - { name: one, from: [a], to: [a], ports: ["100-200/tcp"], action: allow }
  - { name: two, from: [a], to: [a], ports: [tcp], action: allow }
"#);
    let v = |port| verdict(decide(&p, "10.0.1.1", "10.0.1.2", PROTO_TCP, port));
    assert_eq!(v(150), allow(1));
    assert_eq!(v(99), allow(2));
    assert_eq!(v(201), allow(2));
}

#[test]
fn default_allow() {
    let p = ok(r#"
version: 1
defaultAction: allow
segments:
  a: { cidrs: [10.0.1.0/24] }
rules:
  - { name: block, from: [a], to: [world], ports: ["25/tcp"], action: deny }
"#);
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "1.2.3.4", PROTO_TCP, 25)),
        deny(1)
    );
    assert_eq!(
        verdict(decide(&p, "10.0.1.1", "1.2.3.4", PROTO_TCP, 26)),
        allow(0)
    );
    assert_eq!(
        verdict(decide(&p, "1.2.3.4", "10.0.1.1", PROTO_TCP, 25)),
        allow(0)
    );
    assert_eq!(compile(&p).default_action, ACTION_ALLOW);
}

#[test]
fn ipv6_and_icmp() {
    let p = ok(r#"
version: 1
segments:
  a: { cidrs: ["2001:db8:1::/48", 10.0.1.0/24] }
  b: { cidrs: ["2001:db8:2::1/128"] }
rules:
  - { name: ping, from: [a], to: [b], ports: [icmp], action: allow }
  - { name: dns, from: [a], to: [b], ports: ["53/udp"], action: allow }
"#);
    let (a, b) = ("2001:db8:1::9", "2001:db8:2::1");
    assert_eq!(verdict(decide(&p, a, b, PROTO_ICMPV6, 128)), allow(1));
    assert_eq!(verdict(decide(&p, a, b, PROTO_ICMP, 8)), allow(1));
    assert_eq!(verdict(decide(&p, a, b, PROTO_ICMPV6, 129)), deny(0));
    assert_eq!(verdict(decide(&p, a, b, PROTO_ICMP, 0)), deny(0));
    assert_eq!(verdict(decide(&p, a, b, PROTO_TCP, 8)), deny(0));
    assert_eq!(verdict(decide(&p, a, b, PROTO_UDP, 53)), allow(2));
    assert_eq!(
        verdict(decide(&p, a, "2001:db8:2::2", PROTO_UDP, 53)),
        deny(0)
    );
    let d = decide(&p, a, b, PROTO_UDP, 53);
    assert_eq!((d.src_segment, d.dst_segment), (1, 2));
    let c = compile(&p);
    assert_eq!(
        c.hosts,
        vec![(addr16(ip(b)), SegmentInfo { id: 2, flags: 0 })]
    );
    assert_eq!(c.cidrs[0].0, 48);
}

// ---- diagnostics --------------------------------------------------------------------------

#[test]
fn diagnostics_report_everything_with_positions() {
    let text = r#"version: 2
defaultAction: maybe
segments:
  frontend: { cidrs: [10.20.1.5/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32, banana] }
  batch:    { cidrs: [10.20.2.10/32], color: red }
  world:    { cidrs: [192.168.0.0/16] }
rules:
  - name: r1
    from: [frontend, paymnts]
    to: [payments]
    ports: ["0/tcp", "65536/udp", "90-80/tcp", "443/tcp"]
    action: allow
  - name: r1
    from: []
    to: ["*"]
    action: deny
    prio: 3
"#;
    let e = errs(text);
    let expect: Vec<(usize, usize, &str)> = vec![
        (
            1,
            10,
            "unsupported policy version 2; this agent reads version 1",
        ),
        (
            2,
            16,
            "`defaultAction` must be `allow` or `deny`, not `maybe`",
        ),
        (
            4,
            23,
            "`10.20.1.5/24` has host bits set; did you mean 10.20.1.0/24?",
        ),
        (
            5,
            38,
            "invalid CIDR `banana`; expected an address and a prefix length such as 10.0.0.0/8 or fd00::/64",
        ),
        (
            6,
            23,
            "`10.20.2.10/32` is already in segment `payments` (line 5); a network can be in only one segment",
        ),
        (
            6,
            39,
            "unknown field `color` in segment `batch`; expected `cidrs`, `selector`, `mode`",
        ),
        (
            7,
            3,
            "the segment name `world` is reserved: it means every address in no segment",
        ),
        (
            10,
            22,
            "unknown segment `paymnts` in `from`; did you mean `payments`?",
        ),
        (
            12,
            13,
            "invalid port spec `0/tcp`: port 0 is out of range; ports are 1 to 65535",
        ),
        (
            12,
            22,
            "invalid port spec `65536/udp`: port 65536 is out of range; ports are 1 to 65535",
        ),
        (
            12,
            35,
            "invalid port spec `90-80/tcp`: the port range is reversed; did you mean `80-90/tcp`?",
        ),
        (14, 11, "duplicate rule name `r1` (first used on line 9)"),
        (
            15,
            11,
            "`from` is empty; list at least one segment, or \"*\" for any address",
        ),
        (
            18,
            5,
            "unknown field `prio` in a rule; expected `name`, `description`, `from`, `to`, `ports`, `action`, `mode`",
        ),
    ];
    let got: Vec<(usize, usize, &str)> = e.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got, expect);
    // Display: one per line, ORIGIN:LINE:COL: message.
    let shown = parse(text, "t.yaml").unwrap_err().to_string();
    assert_eq!(shown.lines().count(), expect.len());
    assert!(shown.starts_with("t.yaml:1:10: unsupported policy version 2"));
    for (_, _, m) in &e {
        let first = m.chars().next().unwrap();
        assert!(!first.is_uppercase(), "message starts upper-case: {m}");
        assert!(
            !m.contains('\n') && !m.contains("Some(") && !m.contains("\\\""),
            "{m}"
        );
    }
}

#[test]
fn single_error_kinds() {
    let seg =
        "version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\n  b: { cidrs: [10.1.0.0/16] }\n";
    let rule = |body: &str| format!("{seg}rules:\n  - name: r\n{body}");
    // Unknown segment, without a suggestion.
    assert_eq!(
        one_err(&rule("    from: [zzz]\n    to: [b]\n    action: allow\n")),
        (7, 12, "unknown segment `zzz` in `from`".into())
    );
    assert_eq!(
        one_err(&rule(
            "    from: [a]\n    to:\n      - wrld\n    action: allow\n"
        )),
        (
            9,
            9,
            "unknown segment `wrld` in `to`; did you mean `world`?".into()
        )
    );
    // Bad CIDRs.
    let (l, c, m) = one_err("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/33] }\n");
    assert_eq!((l, c), (3, 16));
    assert_eq!(
        m,
        "invalid CIDR `10.0.0.0/33`: the prefix length must be at most 32 for an IPv4 address"
    );
    let (l, c, m) = one_err("version: 1\nsegments:\n  a:\n    cidrs:\n      - 10.0.0.1\n");
    assert_eq!((l, c), (5, 9));
    assert_eq!(
        m,
        "`10.0.0.1` is an address, not a CIDR; write 10.0.0.1/32 for a single address"
    );
    let (l, c, m) = one_err("version: 1\nsegments:\n  a: { cidrs: [\"fd00::1/64\"] }\n");
    assert_eq!(
        (l, c, m.as_str()),
        (
            3,
            16,
            "`fd00::1/64` has host bits set; did you mean fd00::/64?"
        )
    );
    // Duplicate CIDR in one segment, and the same network spelled as IPv4-mapped IPv6.
    let (l, c, m) = one_err("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8, 10.0.0.0/8] }\n");
    assert_eq!(
        (l, c, m.as_str()),
        (3, 28, "`10.0.0.0/8` is listed twice in segment `a`")
    );
    let (l, c, m) = one_err(
        "version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\n  b: { cidrs: [\"::ffff:10.0.0.0/104\"] }\n",
    );
    assert_eq!((l, c), (4, 16));
    assert!(m.starts_with("`::ffff:10.0.0.0/104` (the same network as `10.0.0.0/8`) is already in segment `a` (line 3)"), "{m}");
    // Ports.
    let ports = |p: &str| {
        rule(&format!(
            "    from: [a]\n    to: [b]\n    ports: [{p}]\n    action: allow\n"
        ))
    };
    assert_eq!(
        one_err(&ports("0/tcp")).2,
        "invalid port spec `0/tcp`: port 0 is out of range; ports are 1 to 65535"
    );
    // A number too big for any integer is still a port number out of range.
    assert_eq!(
        one_err(&ports("\"99999999999999999999/tcp\"")).2,
        "invalid port spec `99999999999999999999/tcp`: port 99999999999999999999 is out of \
         range; ports are 1 to 65535"
    );
    assert_eq!(
        (
            one_err(&ports("65536/tcp")).0,
            one_err(&ports("65536/tcp")).1
        ),
        (9, 13)
    );
    assert_eq!(
        one_err(&ports("443")).2,
        "port 443 needs a protocol: write \"443/tcp\" or \"443/udp\""
    );
    assert_eq!(
        one_err(&ports("443/sctp")).2,
        "invalid port spec `443/sctp`: unknown protocol `sctp`; expected tcp or udp"
    );
    assert_eq!(
        one_err(&ports("2000-1000/udp")).2,
        "invalid port spec `2000-1000/udp`: the port range is reversed; did you mean `1000-2000/udp`?"
    );
    assert!(
        one_err(&rule(
            "    from: [a]\n    to: [b]\n    ports: []\n    action: allow\n"
        ))
        .2
        .starts_with("`ports` is empty")
    );
    // Duplicate rule name.
    let text = format!(
        "{seg}rules:\n  - {{ name: x, from: [a], to: [b], action: allow }}\n  - {{ name: x, from: [a], to: [b], action: deny }}\n"
    );
    assert_eq!(
        one_err(&text),
        (
            7,
            13,
            "duplicate rule name `x` (first used on line 6)".into()
        )
    );
    // Unknown fields, at every level.
    assert_eq!(
        one_err("version: 1\nrule: []\n"),
        (
            2,
            1,
            "unknown field `rule` in the policy; did you mean `rules`?".into()
        )
    );
    assert_eq!(
        one_err(&rule(
            "    from: [a]\n    to: [b]\n    acton: allow\n    action: allow\n"
        )),
        (
            9,
            5,
            "unknown field `acton` in a rule; did you mean `action`?".into()
        )
    );
    // Version.
    assert_eq!(
        one_err("version: 3\n"),
        (
            1,
            10,
            "unsupported policy version 3; this agent reads version 1".into()
        )
    );
    assert_eq!(
        one_err("version: \"1\"\n"),
        (1, 10, "`version` must be the number 1, not a string".into())
    );
    assert_eq!(
        one_err("segments: {}\n"),
        (1, 1, "missing `version`; add `version: 1`".into())
    );
    // Reserved names and missing pieces.
    assert_eq!(
        one_err("version: 1\nsegments:\n  \"*\": { cidrs: [] }\n").2,
        "the segment name `*` is reserved: it means any address"
    );
    assert_eq!(
        one_err(&format!(
            "{seg}rules:\n  - {{ name: x, to: [b], action: allow }}\n"
        )),
        (
            6,
            5,
            "rule `x` has no `from`; list segment names, or \"*\" for any address".into()
        )
    );
    assert_eq!(
        one_err(&format!(
            "{seg}rules:\n  - {{ name: x, from: [a], to: [b] }}\n"
        ))
        .2,
        "rule `x` has no `action`; add `action: allow` or `action: deny`"
    );
    assert_eq!(
        one_err(&format!(
            "{seg}rules:\n  - {{ name: x, from: a, to: [b], action: allow }}\n"
        )),
        (6, 22, "`from` must be a list; write [a]".into())
    );
    // Wrong types.
    assert_eq!(
        one_err("version: 1\nsegments: [a, b]\n"),
        (
            2,
            11,
            "`segments` must be a mapping from segment name to { cidrs: [...] }, not a list".into()
        )
    );
    assert_eq!(
        one_err("version: 1\nrules: {}\n"),
        (
            2,
            8,
            "`rules` must be a list of rules, not a mapping".into()
        )
    );
    assert_eq!(
        one_err("version: 1\nsegments:\n  a: { cidrs: [10] }\n").2,
        "a CIDR must be a string like 10.0.0.0/8, not a number"
    );
    assert_eq!(
        one_err("- 1\n"),
        (
            1,
            1,
            "the policy must be a mapping with `version`, `segments` and `rules`, not a list"
                .into()
        )
    );
    assert!(one_err("").2.starts_with("the policy is empty"));
    assert!(one_err("# nothing\n").2.starts_with("the policy is empty"));
}

#[test]
fn syntax_errors_have_positions() {
    assert_eq!(one_err("version: 1\nsegments: { a: [\n").0, 2);
    let (l, c, m) = one_err("version: 1\nversion: 1\n");
    assert_eq!((l, c, m.as_str()), (2, 1, "duplicate key `version`"));
    let (l, c, m) =
        one_err("version: 1\nrules:\n  - { name: x, from: [*], to: [a], action: allow }\n");
    assert_eq!((l, c), (3, 23));
    assert!(m.contains("write \"*\" in quotes"), "{m}");
    // JSON: strict syntax, with positions.
    let (l, c, m) = one_err("{\"version\": 1,\n \"rules\": [],\n}");
    assert_eq!((l, c), (3, 1));
    assert!(m.starts_with("invalid JSON: trailing comma"), "{m}");
    assert_eq!(
        one_err("{\"version\": 1,\n \"version\": 1}"),
        (2, 2, "duplicate key `version`".into())
    );
    assert_eq!(
        one_err("{\n  \"version\": 1,\n  \"segmentz\": {}\n}\n"),
        (
            3,
            3,
            "unknown field `segmentz` in the policy; did you mean `segments`?".into()
        )
    );
}

#[test]
fn json_is_accepted() {
    let json = r#"{"version": 1, "defaultAction": "allow",
      "segments": {"a": {"cidrs": ["10.0.0.0/8"]}, "b": {"cidrs": ["fd00::/8"]}},
      "rules": [{"name": "x", "from": ["a", "world"], "to": ["*"], "ports": ["80/tcp"], "action": "deny"}]}"#;
    let p = ok(json);
    assert_eq!(p.default_action, Action::Allow);
    assert_eq!(p.rules[0].from, vec![SegRef::Named(0), SegRef::World]);
    assert_eq!(p.rules[0].to, vec![SegRef::Any]);
    // With a BOM and leading blanks too.
    assert_eq!(ok(&format!("\u{feff}  \n{json}")), p);
}

/// JSON keeps its positions whatever it holds: no position-less reading (every diagnostic at
/// 1:1), not even beyond what the YAML reader would take.
#[test]
fn json_positions_survive_deep_and_large_documents() {
    // 30 levels: the CIDR that is a list, where it is.
    let deep = format!(
        "{{\n  \"version\": 1,\n  \"segments\": {{\n    \"web\": {{ \"cidrs\": {}{} }}\n  }}\n}}\n",
        "[".repeat(30),
        "]".repeat(30)
    );
    assert_eq!(
        one_err(&deep),
        (
            4,
            24,
            "a CIDR must be a string like 10.0.0.0/8, not a list".into()
        )
    );
    // 100 levels: the nesting, where it crosses the limit (the 65th container).
    let deeper = deep
        .replace(&"[".repeat(30), &"[".repeat(100))
        .replace(&"]".repeat(30), &"]".repeat(100));
    assert_eq!(
        one_err(&deeper),
        (
            4,
            23 + 61,
            "the document nests deeper than 64 levels (the maximum nesting depth)".into()
        )
    );
    // A file that ends at the start of a line: that line, column 1.
    let (l, c, m) = one_err("{\n  \"version\": 1,\n  \"rules\": [\n");
    assert_eq!(
        (l, c, m.as_str()),
        (4, 1, "invalid JSON: EOF while parsing a list")
    );
    // 300,000 values (more than serde-saphyr's default budget), the mistake at the end.
    let mut big = String::from("{\"version\": 1, \"rules\": [], \"segments\": {");
    for i in 0..50_000u32 {
        big.push_str(&format!(
            "\"s{i}\": {{\"cidrs\": [\"10.{}.{}.0/24\"]}},\n",
            i >> 8,
            i & 255
        ));
    }
    big.push_str("\"last\": {\"cidrs\": [\"10.255.255.1/24\"]}}}");
    let (l, c, m) = one_err(&big);
    assert_eq!((l, c), (50_001, 20));
    assert!(m.starts_with("`10.255.255.1/24` has host bits set"), "{m}");
}

/// The 20,000 rules of a large policy (more values than serde-saphyr's default budget).
#[test]
fn large_yaml_policies_validate() {
    let mut text = String::from(
        "version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/24] }\n  b: { cidrs: [10.0.1.0/24] }\nrules:\n",
    );
    for i in 0..20_000 {
        text.push_str(&format!(
            "  - {{ name: r{i}, from: [a], to: [b], ports: [\"{}/tcp\"], action: allow }}\n",
            1 + i
        ));
    }
    let p = ok(&text);
    assert_eq!(p.rules.len(), 20_000);
    assert_eq!(p.rules[19_999].name, "r19999");
}

#[test]
fn limits_are_plain_sentences() {
    let (l, c, m) = one_err(&format!("version: 1\nsegments: {}\n", "[".repeat(100)));
    assert_eq!(
        (l, m.as_str()),
        (
            2,
            "the document nests deeper than 64 levels (the maximum nesting depth)"
        )
    );
    // At the 64th `[` (the 65th level) or, where the scanner counts flow levels, the 65th.
    assert!((74..=75).contains(&c), "{c}");
}

/// A policy with more problems than are worth reading reports the first ones, then how many
/// more there are (memory stays bounded whatever the input).
#[test]
fn diagnostics_are_bounded() {
    let mut text = String::from("version: 1\nsegments:\n  web:\n    cidrs:\n");
    for i in 0..2_500u32 {
        text.push_str(&format!("      - 10.{}.{}.0/33\n", i >> 8, i & 255));
    }
    text.push_str("rules: 5\n");
    let e = errs(&text);
    assert_eq!(e.len(), 1001);
    assert_eq!(e[0].0, 5);
    assert!(e.windows(2).all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1)));
    // The last one reported is line 1004; the first one left out is the next CIDR.
    assert_eq!(e[999].0, 1004);
    assert_eq!(
        e[1000],
        (
            1005,
            9,
            "1501 more problems from here on are not shown; only the first 1000 are reported"
                .into()
        )
    );
}

#[test]
fn load_reports_read_and_encoding_errors() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!(
        "ztagent-policy-missing-{}.yaml",
        std::process::id()
    ));
    let d = load(&missing).unwrap_err();
    assert_eq!(d.len(), 1);
    assert!(
        d.0[0].message.starts_with("cannot read the policy file: "),
        "{d}"
    );
    assert_eq!(d.0[0].origin, missing.display().to_string());

    let bad = dir.join(format!("ztagent-policy-latin1-{}.yaml", std::process::id()));
    std::fs::write(&bad, b"version: 1\nsegments:\n  caf\xe9: { cidrs: [] }\n").unwrap();
    let d = load(&bad).unwrap_err();
    let good = dir.join(format!("ztagent-policy-good-{}.yaml", std::process::id()));
    std::fs::write(&good, EXAMPLE).unwrap();
    let loaded = load(&good);
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&good);
    assert_eq!((d.0[0].line, d.0[0].col), (3, 6));
    assert_eq!(d.0[0].message, "the file is not valid UTF-8 (byte 0xe9)");
    assert_eq!(loaded.unwrap(), ok(EXAMPLE));
}

// ---- serialization ------------------------------------------------------------------------

#[test]
fn round_trip_yaml_and_json() {
    let tricky = r##"
version: 1
defaultAction: allow
segments:
  "yes": { cidrs: [10.0.0.0/8, "fd00::/8", 10.1.2.3/32] }
  "123": { cidrs: ["::ffff:10.3.0.0/112"] }
  "a: b": { cidrs: [] }
  "#hash": { cidrs: ["2001:db8::1/128"] }
rules:
  - name: "null"
    description: "quotes \" and 'single', a\ttab and a\nnewline"
    from: ["*", "yes"]
    to: [world, "123"]
    ports: [tcp, udp, icmp, "1-65535/tcp", "9/udp"]
    action: deny
  - name: "*star"
    from: ["a: b"]
    to: ["#hash"]
    action: allow
  - name: " leading space"
    from: [world]
    to: ["*"]
    action: allow
"##;
    for text in [EXAMPLE, tricky] {
        let p = ok(text);
        let yaml = p.to_yaml();
        assert_eq!(
            parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")),
            p,
            "{yaml}"
        );
        let json = p.to_json();
        assert_eq!(
            parse(&json, "json").unwrap_or_else(|d| panic!("{d}\n{json}")),
            p,
            "{json}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&ok(EXAMPLE).to_json()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["defaultAction"], "deny");
    assert_eq!(json["segments"]["frontend"]["cidrs"][1], "fd20:1::/64");
    assert_eq!(json["rules"][0]["ports"][1], "8000-8099/tcp");
    assert!(json["rules"][0].get("description").is_none());
}

// ---- robustness ---------------------------------------------------------------------------

/// xorshift64*: a tiny deterministic PRNG for the randomized tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn check_no_panic(text: &str) {
    match parse(text, "fuzz") {
        Ok(p) => {
            let _ = compile(&p);
        }
        Err(d) => {
            assert!(!d.is_empty());
            for x in &d {
                assert!(x.line >= 1 && x.col >= 1, "{x}");
                assert!(!x.message.is_empty() && !x.message.contains('\n'), "{x:?}");
            }
        }
    }
}

#[test]
fn never_panics() {
    let json = ok(EXAMPLE).to_json();
    // Every truncation of valid files.
    for text in [EXAMPLE, json.as_str()] {
        for (i, _) in text.char_indices() {
            check_no_panic(&text[..i]);
        }
    }
    // Random mutations with YAML-significant characters, and random bytes.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let specials: Vec<char> = ":-[]{}\"'*&!|>#,%@`? \n\t\\/0123456789xé\u{feff}"
        .chars()
        .collect();
    for _ in 0..1500 {
        let base = if rng.chance(2) {
            EXAMPLE
        } else {
            json.as_str()
        };
        let mut chars: Vec<char> = base.chars().collect();
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
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        check_no_panic(&String::from_utf8_lossy(&bytes));
    }
    // Deep nesting and alias expansion stay bounded.
    check_no_panic(&"[".repeat(100_000));
    check_no_panic(&format!("version: 1\nrules: {}", "[".repeat(5_000)));
    check_no_panic(&"{\"a\":".repeat(10_000));
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12u8 {
        let (prev, cur) = ((b'a' + i) as char, (b'b' + i) as char);
        bomb.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    check_no_panic(&bomb);
}

// ---- compiled lookup vs reference semantics -----------------------------------------------

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
const PACKET_PORTS: &[u16] = &[
    0, 1, 8, 22, 53, 55, 80, 128, 129, 443, 999, 1000, 1024, 1025, 2000, 2001, 65535,
];

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
        let action = if rng.chance(2) {
            Action::Allow
        } else {
            Action::Deny
        };
        // Only a deny rule may be audited.
        let mode = if action == Action::Deny && rng.below(4) == 0 { Mode::Audit } else { Mode::Enforce };
        rules.push(Rule {
            name: format!("r{i}"),
            description: None,
            from,
            to,
            ports,
            action,
            mode,
            grant: None,
        });
    }
    let default_action = if rng.chance(2) {
        Action::Allow
    } else {
        Action::Deny
    };
    let mut rate_limits = Vec::new();
    for i in 0..rng.below(5) {
        rate_limits.push(random_limit(rng, format!("l{i}"), nseg, &side));
    }
    Policy {
        default_action,
        segments,
        rules,
        rate_limits,
        ..Policy::default()
    }
}

/// A random valid rate limit: `from` one segment or world, `to` absent or a list that may hold
/// `*`, `ports` absent or a list, at least one bucket.
fn random_limit(
    rng: &mut Rng,
    name: String,
    nseg: usize,
    side: &dyn Fn(&mut Rng) -> Vec<SegRef>,
) -> RateLimit {
    let from = if nseg == 0 || rng.chance(4) {
        SegRef::World
    } else {
        SegRef::Named(rng.below(nseg))
    };
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
        scope: if rng.chance(2) {
            LimitScope::Segment
        } else {
            LimitScope::Address
        },
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
    assert!(
        c.hosts
            .iter()
            .all(|(_, i)| i.id >= 1 && i.id as usize <= p.segments.len())
    );
    assert!(
        c.cidrs
            .iter()
            .all(|(l, _, i)| *l < 128 && i.id >= 1 && i.id as usize <= p.segments.len())
    );
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
    assert_eq!(
        fingerprints.len(),
        c.limits.len(),
        "distinct limits, distinct fingerprints"
    );
    for (l, cl) in p.rate_limits.iter().zip(&c.limits) {
        assert_eq!(cl.name, l.name);
        assert_eq!(cl.per_address, l.scope == LimitScope::Address);
        assert_eq!(cl.packets.is_some(), l.packets.is_some());
        assert_eq!(cl.connections.is_some(), l.connections.is_some());
        assert_eq!(cl.bytes.is_some(), l.bytes.is_some());
    }
    for ranges in &mut per_profile {
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].1 < w[1].0),
            "entries of a profile overlap"
        );
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
            let port = if rng.chance(4) {
                rng.next() as u16
            } else {
                *rng.pick(PACKET_PORTS)
            };
            let naive = evaluate_naive(&p, src, dst, proto, port);
            let got = idx.lookup(src, dst, proto, port);
            total += 1;
            limited += usize::from(got.limit != 0);
            assert_eq!(
                got,
                naive,
                "round {round}: {src} -> {dst} {proto}/{port}\n{}",
                p.to_yaml()
            );
        }
        // The text forms are exact.
        let yaml = p.to_yaml();
        assert_eq!(
            parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")),
            p
        );
        assert_eq!(parse(&p.to_json(), "json").unwrap(), p);
    }
    // The random policies exercise the limits (not only limit 0).
    assert!(
        limited * 20 > total,
        "{limited} of {total} decisions limited"
    );
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
            .flat_map(super::compile::rule_ranges)
            .chain(p.rate_limits.iter().flat_map(super::compile::limit_ranges));
        for (lo, hi) in ranges {
            keys.extend([lo, hi, lo.saturating_sub(1), (hi + 1).min(PORT_SPACE - 1)]);
        }
        // The SegmentInfo the datapath would see for each segment id (only segments with an
        // address can be seen at all).
        let mut infos = vec![SegmentInfo {
            id: 0,
            flags: c.world_flags,
        }];
        for id in 1..=p.segments.len() as u32 {
            let info = c
                .hosts
                .iter()
                .map(|h| h.1)
                .chain(c.cidrs.iter().map(|c| c.2))
                .find(|i| i.id == id);
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
    assert_eq!(
        verdict(decide(&p, "1.1.1.1", "2.2.2.2", PROTO_TCP, 80)),
        deny(0)
    );
    let p = ok(
        "version: 1\ndefaultAction: allow\nsegments:\n  empty: { cidrs: [] }\nrules:\n  - { name: x, from: [empty], to: [\"*\"], action: deny }\n",
    );
    assert_eq!(
        verdict(decide(&p, "1.1.1.1", "2.2.2.2", PROTO_TCP, 80)),
        allow(0)
    );
}

// ---- rate limits --------------------------------------------------------------------------

const LIMITS: &str = r#"version: 1
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

fn limit_of(d: Decision) -> (u32, u32, u32) {
    (d.action, d.rule, d.limit)
}

#[test]
fn first_matching_limit_wins() {
    let p = ok(LIMITS);
    assert_eq!(p.rate_limits.len(), 3);
    let l = &p.rate_limits[0];
    assert_eq!(
        (l.from, l.to.clone(), l.scope),
        (
            SegRef::Named(0),
            Some(vec![SegRef::Named(1)]),
            LimitScope::Segment
        )
    );
    assert_eq!(
        l.packets,
        Some(BucketSpec {
            rate: 2000,
            per: Per::Second,
            burst: 400
        })
    );
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
    let verdict = |rule, limit| Verdict {
        action: ACTION_ALLOW,
        rule,
        limit,
        ..Default::default()
    };
    let profile = c
        .pairs
        .iter()
        .find(|&&(s, d, _)| (s, d) == (1, 2))
        .unwrap()
        .2;
    let entries: Vec<(u32, u32, Verdict)> = c
        .ports
        .iter()
        .filter(|e| e.profile == profile)
        .map(|e| (e.bits, e.value, e.verdict))
        .collect();
    assert!(
        entries.contains(&(24, (6 << 16) | 443, verdict(1, 1))),
        "{entries:?}"
    );
    assert!(
        entries.contains(&(24, (6 << 16) | 442, verdict(1, 2))),
        "{entries:?}"
    );
    assert!(
        entries.contains(&(8, 17 << 16, verdict(1, 2))),
        "{entries:?}"
    );
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
    assert_eq!(
        v("10.0.1.1", "1.1.1.1", PROTO_TCP, 443),
        (ACTION_ALLOW, 0, 1)
    );
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 0), (ACTION_ALLOW, 0, 1));
    // Not covered by the limit's ports: default allow, no limit.
    assert_eq!(
        v("10.0.1.1", "1.1.1.1", PROTO_UDP, 443),
        (ACTION_ALLOW, 0, 0)
    );
    // Denied by a rule: no limit.
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 25), (ACTION_DENY, 1, 0));
    // Allowed by a rule that no limit matches.
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 80),
        (ACTION_ALLOW, 2, 0)
    );
    // `from: world`.
    assert_eq!(
        v("8.8.8.8", "10.0.2.1", PROTO_UDP, 53),
        (ACTION_ALLOW, 0, 2)
    );
    assert_eq!(
        v("8.8.8.8", "10.0.1.1", PROTO_UDP, 53),
        (ACTION_ALLOW, 0, 0)
    );
    let c = compile(&p);
    assert!(
        c.ports.iter().any(|e| e.verdict.rule == 0
            && e.verdict.action == ACTION_ALLOW
            && e.verdict.limit == 1)
    );
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
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 80),
        (ACTION_ALLOW, 1, 1)
    );
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 8080),
        (ACTION_DENY, 2, 0)
    );
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 81),
        (ACTION_DENY, 0, 0)
    );
    assert_eq!(v("10.0.1.1", "1.1.1.1", PROTO_TCP, 80), (ACTION_DENY, 0, 0));
    let c = compile(&p);
    assert!(
        c.ports
            .iter()
            .all(|e| (e.verdict.action == ACTION_ALLOW) == (e.verdict.limit == 1))
    );
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
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 5432),
        (ACTION_ALLOW, 1, 1)
    );
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 22),
        (ACTION_DENY, 2, 0)
    );
    assert_eq!(
        v("10.0.1.1", "10.0.2.1", PROTO_TCP, 80),
        (ACTION_ALLOW, 0, 1)
    );
    assert_eq!(
        v("10.0.1.1", "9.9.9.9", PROTO_TCP, 80),
        (ACTION_ALLOW, 0, 1)
    );
    assert_eq!(v("9.9.9.9", "10.0.2.1", PROTO_TCP, 22), (ACTION_DENY, 2, 0));
    assert_eq!(
        v("10.0.2.1", "10.0.2.2", PROTO_TCP, 5432),
        (ACTION_ALLOW, 1, 0)
    );
    assert_eq!(
        v("10.0.2.1", "9.9.9.9", PROTO_TCP, 80),
        (ACTION_ALLOW, 0, 0)
    );
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
    assert_eq!(
        c.limits[2].packets.unwrap().cost_fp16,
        360_000_000_000 << 16
    );
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
        format!(
            "version: 1\nsegments:\n  a: {{ cidrs: [10.0.0.0/8] }}\nrateLimits:\n  - {{ name: x, from: a, {b} }}\n"
        )
    };
    // Refilling in exactly 24 hours is accepted; one more unit is not.
    let p = ok(&limit("packets: { rate: 1, per: hour, burst: 24 }"));
    assert_eq!(
        compile(&p).limits[0].packets.unwrap().tolerance_fp16,
        86_400_000_000_000 << 16
    );
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
    ok(&limit(
        "bytes: { rate: 1000000000000, per: second, burst: 1500 }",
    ));
    // Whole floats are whole numbers.
    let p = ok(&limit("bytes: { rate: 5e6, per: second, burst: 1.5e6 }"));
    assert_eq!(
        p.rate_limits[0].bytes,
        Some(BucketSpec {
            rate: 5_000_000,
            per: Per::Second,
            burst: 1_500_000
        })
    );
}

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
    for (rate, per, burst) in [
        (2000u64, 1u64, 400u64),
        (600, 60, 20),
        (50_000_000, 1, 5_000_000),
    ] {
        bytes.push(1);
        for v in [rate, per, burst] {
            bytes.extend(v.to_le_bytes());
        }
    }
    bytes.push(0);
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    assert_eq!(f0, fnv);
    // Pinned: the canonical form must not change between agent versions.
    assert_eq!(f0, 0x6627_1705_345c_2eeb, "{f0:#x}");
    let all: BTreeSet<u64> = compile(&base)
        .limits
        .iter()
        .map(|l| l.fingerprint)
        .collect();
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
        (
            "to",
            Box::new(|l| l.to = Some(vec![SegRef::Named(1), SegRef::World])),
        ),
        ("ports", Box::new(|l| l.ports = None)),
        (
            "ports",
            Box::new(|l| l.ports = Some(vec!["444/tcp".parse().unwrap()])),
        ),
        (
            "ports",
            Box::new(|l| l.ports = Some(vec!["443/udp".parse().unwrap()])),
        ),
        ("packets", Box::new(|l| l.packets = None)),
        (
            "packets.rate",
            Box::new(|l| l.packets.as_mut().unwrap().rate += 1),
        ),
        (
            "packets.per",
            Box::new(|l| l.packets.as_mut().unwrap().per = Per::Minute),
        ),
        (
            "packets.burst",
            Box::new(|l| l.packets.as_mut().unwrap().burst += 1),
        ),
        ("connections", Box::new(|l| l.connections = None)),
        (
            "connections.rate",
            Box::new(|l| l.connections.as_mut().unwrap().rate = 601),
        ),
        ("bytes", Box::new(|l| l.bytes = None)),
        (
            "bytes.burst",
            Box::new(|l| l.bytes.as_mut().unwrap().burst = 5_000_001),
        ),
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
        (
            7,
            11,
            "unknown segment `frontnd` in `from`; did you mean `frontend`?",
        ),
        (8, 22, "`rate` must be at least 1, not 0"),
        (
            8,
            30,
            "`per` must be `second`, `minute` or `hour`, not `fortnight`",
        ),
        (8, 48, "`burst` must be at least 1, not 0"),
        (
            9,
            11,
            "duplicate rate limit name `a` (first used on line 6)",
        ),
        (
            11,
            20,
            "unknown segment `paymentz` in `to`; did you mean `payments`?",
        ),
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
        (
            18,
            11,
            "the `from` of a rate limit is one segment name, not a list; write `from: frontend`",
        ),
        (
            19,
            49,
            "unknown field `brust` in `packets`; expected `rate`, `per`, `burst`",
        ),
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
        (
            22,
            35,
            "`per` must be `second`, `minute` or `hour`, not `seconds`; did you mean `second`?",
        ),
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
    ok(&limit(&format!(
        "from: world, to: [\"*\", world, a], ports: [icmp], {pk}"
    )));
    assert_eq!(
        one_err(&limit(&format!("from: b, {pk}"))),
        (5, 22, "unknown segment `b` in `from`".into())
    );
    assert_eq!(
        one_err(&limit(pk)),
        (
            5,
            5,
            "rate limit `x` has no `from`; name one source segment, or world".into()
        )
    );
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
    assert_eq!(
        one_err(&limit(&format!("from: a, to: a, {pk}"))).2,
        "`to` must be a list; write [a]"
    );
    assert_eq!(
        one_err(&limit(&format!("from: a, ports: [], {pk}"))).2,
        "`ports` is empty, so the rate limit could never match; remove it to match every port"
    );
    assert_eq!(
        one_err(&limit(&format!("from: a, ports: [\"99999/tcp\"], {pk}"))).2,
        "invalid port spec `99999/tcp`: port 99999 is out of range; ports are 1 to 65535"
    );
    let bucket = |b: &str| one_err(&limit(&format!("from: a, packets: {b}"))).2;
    assert_eq!(
        bucket("{ rate: 10, burst: 1 }"),
        "`packets` has no `per`; add `per: second`, `minute` or `hour`"
    );
    assert_eq!(
        bucket("{ per: second, burst: 1 }"),
        "`packets` has no `rate`"
    );
    assert_eq!(
        bucket("{ rate: 1, per: second }"),
        "`packets` has no `burst` (how many units may pass at once)"
    );
    assert_eq!(
        bucket("{ rate: 1.5, per: second, burst: 1 }"),
        "`rate` must be a whole number, not 1.5"
    );
    assert_eq!(
        bucket("{ rate: ten, per: second, burst: 1 }"),
        "`rate` must be a whole number, not a string"
    );
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
    assert_eq!(
        bucket("{ rate: 1, per: minute, burst: -0.0 }"),
        "`burst` must be at least 1, not 0"
    );
    assert_eq!(
        bucket("{ rate: 1, per: 1, burst: 1 }"),
        "`per` must be `second`, `minute` or `hour`, not a number"
    );
    assert_eq!(
        bucket("100"),
        "`packets` must be a mapping like { rate: 100, per: second, burst: 20 }, not a number"
    );
    assert_eq!(
        one_err(&format!(
            "{seg}  - {{ name: x, from: a, scope: 1, {pk} }}\n"
        ))
        .2,
        "`scope` must be `segment` or `address`, not a number"
    );
    assert_eq!(
        one_err(&format!("{seg}  - {{ name: \"\", from: a, {pk} }}\n")).2,
        "a rate limit name must not be empty"
    );
    assert_eq!(
        one_err("version: 1\nrateLimits: {}\n"),
        (
            2,
            13,
            "`rateLimits` must be a list of rate limits, not a mapping".into()
        )
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
    assert_eq!(
        parse(&yaml, "yaml").unwrap_or_else(|d| panic!("{d}\n{yaml}")),
        p
    );
    let json = p.to_json();
    assert_eq!(
        parse(&json, "json").unwrap_or_else(|d| panic!("{d}\n{json}")),
        p
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let l = &v["rateLimits"];
    assert_eq!(l[0]["name"], "frontend-to-payments");
    assert_eq!(l[0]["from"], "frontend");
    assert_eq!(l[0]["to"][0], "payments");
    assert_eq!(l[0]["ports"][0], "443/tcp");
    assert_eq!(
        l[0]["packets"],
        serde_json::json!({ "rate": 2000, "per": "second", "burst": 400 })
    );
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
    assert!(
        s.to_string().ends_with(" port entries, 3 rate limits"),
        "{s}"
    );
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

#[test]
fn audit_mode_is_parsed_compiled_and_round_tripped() {
    let text = "version: 1\nmode: audit\nsegments:\n  a: { cidrs: [10.0.1.0/24] }\nrules: []\n";
    let p = ok(text);
    assert_eq!(p.mode, Mode::Audit);
    assert_eq!(compile(&p).mode, Mode::Audit);
    // The default is enforce, and `policy get` writes `mode` only when it is audit.
    let enforced = ok("version: 1\nsegments: {}\nrules: []\n");
    assert_eq!(enforced.mode, Mode::Enforce);
    assert_eq!(compile(&enforced).mode, Mode::Enforce);
    assert!(!enforced.to_yaml().contains("mode"));
    assert_eq!(ok(&p.to_yaml()), p);
    assert_eq!(ok(&p.to_json()), p);
    // A check names the mode: the verdict is the policy's, the mode says whether it is enforced.
    let flow = crate::control::Flow { src: ip("10.0.1.1"), dst: ip("10.0.2.1"), proto: PROTO_TCP, port: 22 };
    let r = crate::daemon::check(&compile(&p), &flow);
    assert_eq!((r.verdict.as_str(), r.mode.as_str()), ("deny", "audit"));
    assert_eq!(
        one_err("version: 1\nmode: dry-run\n"),
        (2, 7, "`mode` must be `enforce` or `audit`, not `dry-run`".to_string())
    );
    assert_eq!(one_err("version: 1\nmode: [audit]\n").2, "`mode` must be `enforce` or `audit`, not a list");
}

#[test]
fn a_rule_or_a_segment_in_audit_mode_audits_its_own_denials() {
    let text = r#"version: 1
segments:
  web: { cidrs: [10.0.1.0/24] }
  db: { cidrs: [10.0.2.0/24], mode: audit }
  ops: { cidrs: [10.0.3.0/24] }
rules:
  - { name: web-any, from: [web], to: ["*"], action: allow }
  - { name: no-ssh, from: ["*"], to: [web], ports: ["22/tcp"], action: deny, mode: audit }
  - { name: no-telnet, from: ["*"], to: [web], ports: ["23/tcp"], action: deny }
"#;
    let p = ok(text);
    assert_eq!((p.segments[1].mode, p.rules[1].mode, p.rules[2].mode), (Mode::Audit, Mode::Audit, Mode::Enforce));
    let c = compile(&p);
    let check = |src: &str, dst: &str, port| {
        let r = crate::daemon::check(&c, &crate::control::Flow { src: ip(src), dst: ip(dst), proto: PROTO_TCP, port });
        (r.verdict, r.rule, r.audit)
    };
    // The audited rule's denial passes, reported; the other deny rule enforces.
    assert_eq!(check("10.0.3.1", "10.0.1.1", 22), ("deny".into(), Some("no-ssh".into()), true));
    assert_eq!(check("10.0.3.1", "10.0.1.1", 23), ("deny".into(), Some("no-telnet".into()), false));
    // Denials to and from the audited segment pass, reported; others between enforced
    // segments are dropped; what is allowed stays allowed.
    assert_eq!(check("10.0.3.1", "10.0.2.1", 5432), ("deny".into(), None, true));
    assert_eq!(check("10.0.2.1", "10.0.3.1", 80), ("deny".into(), None, true));
    assert_eq!(check("10.0.3.1", "10.0.1.1", 80), ("deny".into(), None, false));
    assert_eq!(check("10.0.1.1", "10.0.2.1", 5432), ("allow".into(), Some("web-any".into()), false));
    // The modes survive `policy get` and the state file.
    assert_eq!(ok(&p.to_yaml()), p);
    assert_eq!(ok(&p.to_json()), p);
    // An allow rule cannot be audited: it would change nothing.
    assert_eq!(
        one_err("version: 1\nsegments: {}\nrules:\n  - { name: r, from: [\"*\"], to: [\"*\"], action: allow, mode: audit }\n"),
        (4, 61, "rule `r` allows, so auditing it changes nothing: `mode: audit` applies to a deny rule (or a segment, or the whole policy)".into())
    );
    assert_eq!(
        one_err("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8], mode: dry }\n"),
        (3, 35, "`mode` must be `enforce` or `audit`, not `dry`".into())
    );
}

// ---- label-selected segments ----------------------------------------------------------------

const SELECTORS: &str = r#"
version: 1
segments:
  payments:
    selector:
      namespace: prod
      labels: { app: payments }
      matchExpressions: [ { key: tier, operator: In, values: [api, web] } ]
  edge: { selector: {}, cidrs: [10.9.0.0/16] }
  db: { cidrs: [10.1.0.0/16] }
rules:
  - { name: pay-db, from: [payments], to: [db], ports: ["5432/tcp"], action: allow }
"#;

#[test]
fn selector_segments_are_read_and_written_back() {
    let p = ok(SELECTORS);
    let s = p.segments[0].selector.as_ref().unwrap();
    assert_eq!(s.namespace.as_deref(), Some("prod"));
    assert_eq!(s.selector.to_string(), "app=payments,tier in (api,web)");
    assert!(p.segments[0].cidrs.is_empty());
    let edge = p.segments[1].selector.as_ref().unwrap();
    assert!(edge.namespace.is_none() && edge.selector.is_everything());
    assert_eq!(p.segments[1].cidrs, vec!["10.9.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    assert!(p.segments[2].selector.is_none());
    for text in [p.to_yaml(), p.to_json()] {
        assert_eq!(parse(&text, "again").unwrap_or_else(|d| panic!("{d}\n{text}")), p, "{text}");
    }
    // Without an inventory a selector segment holds no address: it compiles, matching nothing.
    let c = compile(&p);
    let d = c.lookup(ip("10.1.0.5"), ip("10.1.0.6"), 6, 5432);
    assert_eq!(c.segment_name(d.src_segment), Some("db"));
    assert_eq!(decide(&p, "10.2.0.1", "10.1.0.5", 6, 5432).action, agent_common::ACTION_DENY);
}

#[test]
fn selector_segments_are_validated_with_positions() {
    let e = errs(
        "version: 1\nsegments:\n  a: { selector: { namespace: 5, labels: { app: 1 }, matchExpressions: [ { key: x, operator: In } ], tier: web } }\n  b: { mode: audit }\n  c: { selector: [app] }\nrules: []\n",
    );
    let at = |line: usize, col: usize| e.iter().find(|(l, c, _)| (*l, *c) == (line, col)).map(|(_, _, m)| m.as_str()).unwrap_or_else(|| panic!("nothing at {line}:{col} in {e:#?}"));
    assert_eq!(at(3, 31), "`namespace` must be a namespace name, not a number");
    assert!(at(3, 49).starts_with("the value of label `app` must be a string, not a number"));
    assert_eq!(at(3, 74), "operator In needs at least one value in `values`");
    assert!(at(3, 102).starts_with("unknown field `tier` in a segment's `selector`"));
    assert_eq!(at(4, 3), "segment `b` has no `cidrs` (or `selector`, for pods selected by labels)");
    assert!(at(5, 18).starts_with("`selector` must be a mapping"));
    assert_eq!(e.len(), 6, "{e:#?}");
}
