//! What rules mean: longest prefix, world and wildcards, ports, deny over allow, defaults.

use super::*;

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
    assert_eq!((d.src_segment, d.dst_segment, d.action), (3, 0, ACTION_DENY));

    let c = compile(&p);
    assert_eq!(c.segment_names, ["world", "frontend", "payments", "batch"]);
    assert_eq!(c.rule_names, ["frontend-calls-payments"]);
    assert_eq!(c.rule_name(1), Some("frontend-calls-payments"));
    assert_eq!(c.rule_name(0), None);
    assert_eq!(c.segment_name(0), Some("world"));
    assert_eq!(c.segment_name(3), Some("batch"));
    assert_eq!(c.segment_name(4), None);
    assert_eq!(c.default_action, ACTION_DENY);
    // Payments, batch and world are allowed nothing as sources: the datapath may drop them
    // under a flood right after their identity lookup; batch and world nothing to them either.
    let (nothing, isolated) = (SEG_F_DENIED_ALL, SEG_F_DENIED_ALL | SEG_F_ISOLATED);
    assert_eq!(c.hosts, vec![(addr16(ip("10.20.2.10")), SegmentInfo { id: 2, flags: nothing })]);
    assert_eq!(
        c.cidrs,
        vec![
            (120, addr16(ip("10.20.1.0")), SegmentInfo { id: 1, flags: 0 }),
            (64, addr16(ip("fd20:1::")), SegmentInfo { id: 1, flags: 0 }),
            (120, addr16(ip("10.20.3.0")), SegmentInfo { id: 3, flags: isolated }),
        ]
    );
    assert_eq!(c.pairs, vec![(1, 2, 0)]);
    assert_eq!(c.any_any, None);
    assert_eq!(c.world_flags, isolated);
    assert_eq!(c.profile_count, 1);
    let v = Verdict { action: ACTION_ALLOW, rule: 1, ..Default::default() };
    let mut expect = vec![
        PortEntry { profile: 0, bits: 24, value: (1 << 16) | 8, verdict: v },
        PortEntry { profile: 0, bits: 24, value: (6 << 16) | 443, verdict: v },
        PortEntry { profile: 0, bits: 24, value: (17 << 16) | 53, verdict: v },
    ];
    // 8000-8099 = 8000-8063 (/18), 8064-8095 (/19), 8096-8099 (/22)
    for (bits, port) in [(18, 8000), (19, 8064), (22, 8096)] {
        expect.push(PortEntry { profile: 0, bits, value: (6 << 16) | port, verdict: v });
    }
    let mut got = c.ports.clone();
    got.sort_by_key(|e| e.value);
    expect.sort_by_key(|e| e.value);
    assert_eq!(got, expect);
    let s = c.summary();
    assert_eq!((s.segments, s.rules, s.hosts, s.cidrs, s.pairs, s.profiles, s.port_entries), (3, 1, 1, 3, 1, 1, 6));
    assert_eq!(s.to_string(), "3 segments, 1 rules, 1 hosts, 3 cidrs, 1 pairs, 1 profiles, 6 port entries");
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
    assert_eq!(verdict(decide(&p, "1.2.3.4", "10.0.1.1", PROTO_TCP, 443)), allow(1));
    // db is not world: the world rule does not cover it.
    assert_eq!(verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 443)), deny(0));
    assert_eq!(verdict(decide(&p, "10.0.2.1", "1.1.1.1", PROTO_UDP, 53)), deny(2));
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
    assert_eq!(verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 5432)), deny(0));
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
    assert_eq!(verdict(decide(&p, "10.0.1.1", "10.0.2.1", PROTO_TCP, 80)), allow(1));
    assert_eq!(verdict(decide(&p, "10.0.1.1", "9.9.9.9", PROTO_TCP, 80)), allow(1));
    assert_eq!(verdict(decide(&p, "9.9.9.9", "10.0.1.1", PROTO_TCP, 0)), allow(1));
    assert_eq!(verdict(decide(&p, "10.0.1.1", "10.0.2.1", PROTO_TCP, 23)), deny(2));
    assert_eq!(verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 23)), deny(2));
    assert_eq!(verdict(decide(&p, "10.0.2.1", "10.0.1.1", PROTO_TCP, 80)), deny(0));
    assert_eq!(verdict(decide(&p, "10.0.2.1", "10.0.2.2", PROTO_ICMP, 8)), allow(3));
    assert_eq!(verdict(decide(&p, "10.0.1.1", "10.0.2.2", PROTO_ICMP, 8)), allow(3));
    assert_eq!(verdict(decide(&p, "10.0.1.1", "10.0.1.2", PROTO_ICMP, 8)), deny(0));
    let c = compile(&p);
    assert_eq!(c.world_flags, SEG_F_SRC_WILD);
    let flags = |id| c.cidrs.iter().find(|c| c.2.id == id).unwrap().2.flags;
    assert_eq!(flags(1), SEG_F_SRC_WILD);
    assert_eq!(flags(2), SEG_F_DST_WILD);
    let keys: Vec<(u32, u32)> = c.pairs.iter().map(|&(s, d, _)| (s, d)).collect();
    // SRC_WILD x DST_WILD is explicit; then (s, ANY), (ANY, d).
    assert_eq!(keys, vec![(0, 2), (0, SEG_ANY), (1, 2), (1, SEG_ANY), (SEG_ANY, 2)]);
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
        let deny_rule = r#"{ name: no-ssh, from: ["*"], to: [b], ports: ["22/tcp"], action: deny }"#;
        let deny2 = r#"{ name: no-ssh-2, from: [a], to: [b], ports: ["20-30/tcp"], action: deny }"#;
        let (r1, r2) = if deny_first { (deny_rule, allow_rule) } else { (allow_rule, deny_rule) };
        let p = ok(&format!(
            "version: 1\nsegments:\n  a: {{ cidrs: [10.0.1.0/24] }}\n  b: {{ cidrs: [10.0.2.0/24] }}\n\
             rules:\n  - {r1}\n  - {r2}\n  - {deny2}\n"
        ));
        let (allow_id, deny_id) = if deny_first { (2, 1) } else { (1, 2) };
        let v = |port| verdict(decide(&p, "10.0.1.1", "10.0.2.1", PROTO_TCP, port));
        assert_eq!(v(22), deny(deny_id), "the first matching deny decides");
        assert_eq!(v(21), deny(3));
        assert_eq!(v(80), allow(allow_id));
        assert_eq!(verdict(decide(&p, "10.0.2.1", "10.0.2.1", PROTO_TCP, 22)), deny(deny_id));
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
    assert_eq!(verdict(decide(&p, "10.0.1.1", "1.2.3.4", PROTO_TCP, 25)), deny(1));
    assert_eq!(verdict(decide(&p, "10.0.1.1", "1.2.3.4", PROTO_TCP, 26)), allow(0));
    assert_eq!(verdict(decide(&p, "1.2.3.4", "10.0.1.1", PROTO_TCP, 25)), allow(0));
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
    assert_eq!(verdict(decide(&p, a, "2001:db8:2::2", PROTO_UDP, 53)), deny(0));
    let d = decide(&p, a, b, PROTO_UDP, 53);
    assert_eq!((d.src_segment, d.dst_segment), (1, 2));
    let c = compile(&p);
    assert_eq!(c.hosts, vec![(addr16(ip(b)), SegmentInfo { id: 2, flags: SEG_F_DENIED_ALL })]);
    assert_eq!(c.cidrs[0].0, 48);
}

#[test]
fn a_segment_is_allowed_nothing_only_when_no_rule_can_apply_to_it() {
    let flags = |yaml: &str| {
        let c = compile(&ok(yaml));
        let of = |id| c.cidrs.iter().find(|x| x.2.id == id).map(|x| x.2.flags & SEG_F_DENIED_ALL != 0);
        (c.world_flags & SEG_F_DENIED_ALL != 0, of(1).unwrap(), of(2).unwrap())
    };
    let base = "version: 1\nsegments:\n  a: { cidrs: [10.0.1.0/24] }\n  b: { cidrs: [10.0.2.0/24] }\nrules:\n";
    // a is a source; world and b are allowed nothing.
    assert_eq!(flags(&format!("{base}  - {{ name: r, from: [a], to: [b], action: allow }}\n")), (true, false, true));
    // A deny rule names its source too (its events name the rule).
    assert_eq!(flags(&format!("{base}  - {{ name: r, from: [b], to: [a], action: deny }}\n")), (true, true, false));
    // `*` as a source, or as both sides, applies to everybody.
    let star = format!("{base}  - {{ name: r, from: [\"*\"], to: [b], ports: [\"80/tcp\"], action: allow }}\n");
    assert_eq!(flags(&star), (false, false, false));
    // `*` as a destination applies to its source only (but then anybody may be a destination).
    let to_star = format!("{base}  - {{ name: r, from: [a], to: [\"*\"], action: allow }}\n");
    assert_eq!(flags(&to_star), (true, false, true));
    let isolated = |yaml: &str| compile(&ok(yaml)).world_flags & SEG_F_ISOLATED != 0;
    assert!(!isolated(&to_star), "world may be a destination of a's flows");
    assert!(isolated(&format!("{base}  - {{ name: r, from: [a], to: [b], action: allow }}\n")));
    assert!(!isolated(&format!("{base}  - {{ name: r, from: [a], to: [world], action: allow }}\n")));
    // A segment in audit mode passes denials to it; a default allow, everything.
    let audit = base.replace("b: { cidrs: [10.0.2.0/24] }", "b: { cidrs: [10.0.2.0/24], mode: audit }");
    assert_eq!(flags(&format!("{audit}  - {{ name: r, from: [a], to: [b], action: allow }}\n")), (false, false, false));
    let allow = format!("{base}  - {{ name: r, from: [a], to: [b], action: deny }}\ndefaultAction: allow\n");
    assert_eq!(flags(&allow), (false, false, false));
}
