//! Tests across the policy modules: parsing and diagnostics, serialization round trips,
//! compiler output, and the compiled lookup against the reference semantics.

use std::collections::BTreeSet;
use std::net::IpAddr;

use agent_common::{
    ACTION_ALLOW, ACTION_DENY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SEG_ANY,
    SEG_F_DST_WILD, SEG_F_SRC_WILD, SegmentInfo,
};

use super::compile::PORT_SPACE;
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
            "unknown field `color` in segment `batch`; expected `cidrs`",
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
            "unknown field `prio` in a rule; expected `name`, `description`, `from`, `to`, `ports`, `action`",
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
    // JSON: strict syntax, positions from the YAML reader.
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
        rules.push(Rule {
            name: format!("r{i}"),
            description: None,
            from,
            to,
            ports,
            action,
        });
    }
    let default_action = if rng.chance(2) {
        Action::Allow
    } else {
        Action::Deny
    };
    Policy {
        default_action,
        segments,
        rules,
    }
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
        assert!(e.verdict.rule >= 1 && e.verdict.rule as usize <= p.rules.len());
        per_profile[e.profile as usize].push((e.value, e.value + size - 1));
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
        for r in &p.rules {
            for (lo, hi) in super::compile::rule_ranges(r) {
                keys.extend([lo, hi, lo.saturating_sub(1), (hi + 1).min(PORT_SPACE - 1)]);
            }
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
