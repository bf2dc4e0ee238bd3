//! Audit mode and label-selected segments.

use super::*;

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
    let r = super::explain(&compile(&p), ip("10.0.1.1"), ip("10.0.2.1"), PROTO_TCP, 22);
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
        let r = super::explain(&c, ip(src), ip(dst), PROTO_TCP, port);
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
    let at = |line: usize, col: usize| {
        e.iter()
            .find(|(l, c, _)| (*l, *c) == (line, col))
            .map(|(_, _, m)| m.as_str())
            .unwrap_or_else(|| panic!("nothing at {line}:{col} in {e:#?}"))
    };
    assert_eq!(at(3, 31), "`namespace` must be a namespace name, not a number");
    assert!(at(3, 49).starts_with("the value of label `app` must be a string, not a number"));
    assert_eq!(at(3, 74), "operator In needs at least one value in `values`");
    assert!(at(3, 102).starts_with("unknown field `tier` in a segment's `selector`"));
    assert_eq!(at(4, 3), "segment `b` has no `cidrs` (or `selector`, for pods selected by labels)");
    assert!(at(5, 18).starts_with("`selector` must be a mapping"));
    assert_eq!(e.len(), 6, "{e:#?}");
}
