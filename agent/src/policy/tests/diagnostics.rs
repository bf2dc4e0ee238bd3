//! Diagnostics: every problem, with its position, bounded, in plain sentences.

use super::*;

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
        (1, 10, "unsupported policy version 2; this agent reads version 1"),
        (2, 16, "`defaultAction` must be `allow` or `deny`, not `maybe`"),
        (4, 23, "`10.20.1.5/24` has host bits set; did you mean 10.20.1.0/24?"),
        (5, 38, "invalid CIDR `banana`; expected an address and a prefix length such as 10.0.0.0/8 or fd00::/64"),
        (6, 23, "`10.20.2.10/32` is already in segment `payments` (line 5); a network can be in only one segment"),
        (6, 39, "unknown field `color` in segment `batch`; expected `cidrs`, `selector`, `mode`"),
        (7, 3, "the segment name `world` is reserved: it means every address in no segment"),
        (10, 22, "unknown segment `paymnts` in `from`; did you mean `payments`?"),
        (12, 13, "invalid port spec `0/tcp`: port 0 is out of range; ports are 1 to 65535"),
        (12, 22, "invalid port spec `65536/udp`: port 65536 is out of range; ports are 1 to 65535"),
        (12, 35, "invalid port spec `90-80/tcp`: the port range is reversed; did you mean `80-90/tcp`?"),
        (14, 11, "duplicate rule name `r1` (first used on line 9)"),
        (15, 11, "`from` is empty; list at least one segment, or \"*\" for any address"),
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
        assert!(!m.contains('\n') && !m.contains("Some(") && !m.contains("\\\""), "{m}");
    }
}

#[test]
fn single_error_kinds() {
    let seg = "version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\n  b: { cidrs: [10.1.0.0/16] }\n";
    let rule = |body: &str| format!("{seg}rules:\n  - name: r\n{body}");
    // Unknown segment, without a suggestion.
    assert_eq!(
        one_err(&rule("    from: [zzz]\n    to: [b]\n    action: allow\n")),
        (7, 12, "unknown segment `zzz` in `from`".into())
    );
    assert_eq!(
        one_err(&rule("    from: [a]\n    to:\n      - wrld\n    action: allow\n")),
        (9, 9, "unknown segment `wrld` in `to`; did you mean `world`?".into())
    );
    // Bad CIDRs.
    let (l, c, m) = one_err("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/33] }\n");
    assert_eq!((l, c), (3, 16));
    assert_eq!(m, "invalid CIDR `10.0.0.0/33`: the prefix length must be at most 32 for an IPv4 address");
    let (l, c, m) = one_err("version: 1\nsegments:\n  a:\n    cidrs:\n      - 10.0.0.1\n");
    assert_eq!((l, c), (5, 9));
    assert_eq!(m, "`10.0.0.1` is an address, not a CIDR; write 10.0.0.1/32 for a single address");
    let (l, c, m) = one_err("version: 1\nsegments:\n  a: { cidrs: [\"fd00::1/64\"] }\n");
    assert_eq!((l, c, m.as_str()), (3, 16, "`fd00::1/64` has host bits set; did you mean fd00::/64?"));
    // Duplicate CIDR in one segment, and the same network spelled as IPv4-mapped IPv6.
    let (l, c, m) = one_err("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8, 10.0.0.0/8] }\n");
    assert_eq!((l, c, m.as_str()), (3, 28, "`10.0.0.0/8` is listed twice in segment `a`"));
    let (l, c, m) =
        one_err("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\n  b: { cidrs: [\"::ffff:10.0.0.0/104\"] }\n");
    assert_eq!((l, c), (4, 16));
    assert!(
        m.starts_with("`::ffff:10.0.0.0/104` (the same network as `10.0.0.0/8`) is already in segment `a` (line 3)"),
        "{m}"
    );
    // Ports.
    let ports = |p: &str| rule(&format!("    from: [a]\n    to: [b]\n    ports: [{p}]\n    action: allow\n"));
    assert_eq!(one_err(&ports("0/tcp")).2, "invalid port spec `0/tcp`: port 0 is out of range; ports are 1 to 65535");
    // A number too big for any integer is still a port number out of range.
    assert_eq!(
        one_err(&ports("\"99999999999999999999/tcp\"")).2,
        "invalid port spec `99999999999999999999/tcp`: port 99999999999999999999 is out of \
         range; ports are 1 to 65535"
    );
    assert_eq!((one_err(&ports("65536/tcp")).0, one_err(&ports("65536/tcp")).1), (9, 13));
    assert_eq!(one_err(&ports("443")).2, "port 443 needs a protocol: write \"443/tcp\" or \"443/udp\"");
    assert_eq!(
        one_err(&ports("443/sctp")).2,
        "invalid port spec `443/sctp`: unknown protocol `sctp`; expected tcp or udp"
    );
    assert_eq!(
        one_err(&ports("2000-1000/udp")).2,
        "invalid port spec `2000-1000/udp`: the port range is reversed; did you mean `1000-2000/udp`?"
    );
    assert!(
        one_err(&rule("    from: [a]\n    to: [b]\n    ports: []\n    action: allow\n"))
            .2
            .starts_with("`ports` is empty")
    );
    // Duplicate rule name.
    let text = format!(
        "{seg}rules:\n  - {{ name: x, from: [a], to: [b], action: allow }}\n  - {{ name: x, from: [a], to: [b], action: deny }}\n"
    );
    assert_eq!(one_err(&text), (7, 13, "duplicate rule name `x` (first used on line 6)".into()));
    // Unknown fields, at every level.
    assert_eq!(
        one_err("version: 1\nrule: []\n"),
        (2, 1, "unknown field `rule` in the policy; did you mean `rules`?".into())
    );
    assert_eq!(
        one_err(&rule("    from: [a]\n    to: [b]\n    acton: allow\n    action: allow\n")),
        (9, 5, "unknown field `acton` in a rule; did you mean `action`?".into())
    );
    // Version.
    assert_eq!(one_err("version: 3\n"), (1, 10, "unsupported policy version 3; this agent reads version 1".into()));
    assert_eq!(one_err("version: \"1\"\n"), (1, 10, "`version` must be the number 1, not a string".into()));
    assert_eq!(one_err("segments: {}\n"), (1, 1, "missing `version`; add `version: 1`".into()));
    // Reserved names and missing pieces.
    assert_eq!(
        one_err("version: 1\nsegments:\n  \"*\": { cidrs: [] }\n").2,
        "the segment name `*` is reserved: it means any address"
    );
    assert_eq!(
        one_err(&format!("{seg}rules:\n  - {{ name: x, to: [b], action: allow }}\n")),
        (6, 5, "rule `x` has no `from`; list segment names, or \"*\" for any address".into())
    );
    assert_eq!(
        one_err(&format!("{seg}rules:\n  - {{ name: x, from: [a], to: [b] }}\n")).2,
        "rule `x` has no `action`; add `action: allow` or `action: deny`"
    );
    assert_eq!(
        one_err(&format!("{seg}rules:\n  - {{ name: x, from: a, to: [b], action: allow }}\n")),
        (6, 22, "`from` must be a list; write [a]".into())
    );
    // Wrong types.
    assert_eq!(
        one_err("version: 1\nsegments: [a, b]\n"),
        (2, 11, "`segments` must be a mapping from segment name to { cidrs: [...] }, not a list".into())
    );
    assert_eq!(one_err("version: 1\nrules: {}\n"), (2, 8, "`rules` must be a list of rules, not a mapping".into()));
    assert_eq!(
        one_err("version: 1\nsegments:\n  a: { cidrs: [10] }\n").2,
        "a CIDR must be a string like 10.0.0.0/8, not a number"
    );
    assert_eq!(
        one_err("- 1\n"),
        (1, 1, "the policy must be a mapping with `version`, `segments` and `rules`, not a list".into())
    );
    assert!(one_err("").2.starts_with("the policy is empty"));
    assert!(one_err("# nothing\n").2.starts_with("the policy is empty"));
}

#[test]
fn syntax_errors_have_positions() {
    assert_eq!(one_err("version: 1\nsegments: { a: [\n").0, 2);
    let (l, c, m) = one_err("version: 1\nversion: 1\n");
    assert_eq!((l, c, m.as_str()), (2, 1, "duplicate key `version`"));
    let (l, c, m) = one_err("version: 1\nrules:\n  - { name: x, from: [*], to: [a], action: allow }\n");
    assert_eq!((l, c), (3, 23));
    assert!(m.contains("write \"*\" in quotes"), "{m}");
    // JSON: strict syntax, with positions.
    let (l, c, m) = one_err("{\"version\": 1,\n \"rules\": [],\n}");
    assert_eq!((l, c), (3, 1));
    assert!(m.starts_with("invalid JSON: trailing comma"), "{m}");
    assert_eq!(one_err("{\"version\": 1,\n \"version\": 1}"), (2, 2, "duplicate key `version`".into()));
    assert_eq!(
        one_err("{\n  \"version\": 1,\n  \"segmentz\": {}\n}\n"),
        (3, 3, "unknown field `segmentz` in the policy; did you mean `segments`?".into())
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
    assert_eq!(one_err(&deep), (4, 24, "a CIDR must be a string like 10.0.0.0/8, not a list".into()));
    // 100 levels: the nesting, where it crosses the limit (the 65th container).
    let deeper = deep.replace(&"[".repeat(30), &"[".repeat(100)).replace(&"]".repeat(30), &"]".repeat(100));
    assert_eq!(
        one_err(&deeper),
        (4, 23 + 61, "the document nests deeper than 64 levels (the maximum nesting depth)".into())
    );
    // A file that ends at the start of a line: that line, column 1.
    let (l, c, m) = one_err("{\n  \"version\": 1,\n  \"rules\": [\n");
    assert_eq!((l, c, m.as_str()), (4, 1, "invalid JSON: EOF while parsing a list"));
    // 300,000 values (more than serde-saphyr's default budget), the mistake at the end.
    let mut big = String::from("{\"version\": 1, \"rules\": [], \"segments\": {");
    for i in 0..50_000u32 {
        big.push_str(&format!("\"s{i}\": {{\"cidrs\": [\"10.{}.{}.0/24\"]}},\n", i >> 8, i & 255));
    }
    big.push_str("\"last\": {\"cidrs\": [\"10.255.255.1/24\"]}}}");
    let (l, c, m) = one_err(&big);
    assert_eq!((l, c), (50_001, 20));
    assert!(m.starts_with("`10.255.255.1/24` has host bits set"), "{m}");
}

/// The 20,000 rules of a large policy (more values than serde-saphyr's default budget).
#[test]
fn large_yaml_policies_validate() {
    let mut text =
        String::from("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/24] }\n  b: { cidrs: [10.0.1.0/24] }\nrules:\n");
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
    assert_eq!((l, m.as_str()), (2, "the document nests deeper than 64 levels (the maximum nesting depth)"));
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
        (1005, 9, "1501 more problems from here on are not shown; only the first 1000 are reported".into())
    );
}

#[test]
fn load_reports_read_and_encoding_errors() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("ztagent-policy-missing-{}.yaml", std::process::id()));
    let d = load(&missing).unwrap_err();
    assert_eq!(d.len(), 1);
    assert!(d.0[0].message.starts_with("cannot read the policy file: "), "{d}");
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

/// A key indented like no block above it gets the project's hint beside the parser's sentence,
/// at the parser's position; a YAML error that is not about indentation gets none.
#[test]
fn indentation_errors_say_where_the_key_belongs() {
    let hint = |text: &str| {
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    };
    // A sibling one column too deep.
    let (line, _, m) = hint(
        "version: 1\nsegments:\n  frontend:\n    cidrs: [10.20.1.0/24]\n   payments: { cidrs: [10.20.2.10/32] }\nrules: []\n",
    );
    assert_eq!(line, 5);
    assert!(m.ends_with("; indent `payments:` like `frontend:` on line 3"), "{m}");
    // A rule's key indented like the `-` of its item.
    let (line, _, m) = hint(
        "version: 1\nsegments:\n  frontend: { cidrs: [10.20.1.0/24] }\nrules:\n  - name: web\n  from: [frontend]\n  to: [frontend]\n",
    );
    assert_eq!(line, 6);
    assert!(m.ends_with("; indent `from:` like `name:` on line 5"), "{m}");
    // Not an indentation problem: no hint.
    let (_, _, m) = hint("version: 1\nsegments: {\nrules: []\n");
    assert!(!m.contains("indent `"), "{m}");
}
