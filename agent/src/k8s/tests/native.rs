//! Native policies and NetworkPolicies together: rules, default allow, selectors, rate limits.

use super::*;

const NATIVE: &str = r#"
version: 1
segments:
  nodes: { cidrs: [192.168.0.0/24] }
  pods: { cidrs: [10.0.0.0/16] }
  monitoring: { cidrs: [192.168.5.0/24] }
rules:
  - { name: no-ssh, from: ["*"], to: ["*"], ports: ["22/tcp"], action: deny }
  - { name: monitoring-scrapes, from: [monitoring], to: [pods], ports: ["9100/tcp"], action: allow }
  - { name: nodes-talk, from: [nodes], to: [nodes], action: allow }
"#;

#[test]
fn native_rules_and_network_policies_combine() {
    let deny_all = np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]");
    let j = Judge::new(NATIVE, &(model() + &deny_all));
    let (xa, ya) = (pod_ip("x/a"), pod_ip("y/a"));
    // A native deny beats NetworkPolicy (y is open).
    assert!(!j.allows(pod_ip("y/b"), ya, TCP, 22));
    assert!(j.allows(pod_ip("y/b"), ya, TCP, 80));
    // A native allow adds to NetworkPolicy: monitoring reaches the isolated x/a on 9100 only.
    assert!(j.allows(ip("192.168.5.5"), xa, TCP, 9100));
    assert!(!j.allows(ip("192.168.5.5"), xa, TCP, 80));
    assert!(j.allows(ip("192.168.5.5"), ya, TCP, 80), "y is not isolated");
    // Flows without a pod: the native policy alone.
    assert!(j.allows(ip("192.168.0.1"), ip("192.168.0.2"), UDP, 53));
    assert!(!j.allows(ip("192.168.0.1"), ip("192.168.0.2"), TCP, 22));
    assert!(!j.allows(ip("192.168.5.1"), ip("192.168.0.2"), TCP, 80));
    // A pod address that is no pod of the inventory is a plain address of `pods`.
    assert!(!j.allows(ip("10.0.9.9"), ip("192.168.0.2"), TCP, 80));
    assert!(j.allows(ip("192.168.5.5"), ip("10.0.9.9"), TCP, 9100));
    // defaultAction: allow with NetworkPolicies is refused.
    let native = policy::parse("version: 1\ndefaultAction: allow\n", "n.yaml").unwrap();
    let objs = parse_objects(&[("o.yaml", &(model() + &deny_all))]).unwrap();
    assert_eq!(translate(&native, &objs.cluster, &objs.policies).unwrap_err(), TranslateError::DefaultAllow);
    // ... and fine without: pods are plain addresses then.
    let t = translate(&native, &objs.cluster, &[]).unwrap();
    assert_eq!(t.policy.segments.len(), 0, "{}", t.policy.to_yaml());
}

#[test]
fn under_default_allow_without_network_policies_pods_are_plain_addresses() {
    let native = r#"
version: 1
defaultAction: allow
segments:
  pinned: { cidrs: [10.0.1.1/32] }
  web: { selector: { labels: { pod: b } } }
  pods: { cidrs: [10.0.0.0/16] }
rules:
  - { name: no-web-to-pinned, from: [web], to: [pinned], action: deny }
"#;
    let t = translated(native, &model());
    let c = policy::compile(&t.policy);
    let seg = |a: IpAddr| c.segment_name(c.lookup(a, a, TCP, 1).src_segment).unwrap().to_string();
    assert_eq!(seg(pod_ip("x/a")), "pinned", "{}", t.policy.to_yaml());
    assert_eq!(seg(pod_ip("y/b")), "web");
    assert_eq!(seg(pod_ip("y/a")), "pods");
    assert_eq!(t.policy.rules.len(), 1, "no NetworkPolicy rules are needed under defaultAction: allow");
    let j = Judge { compiled: c, policy: t.policy };
    assert!(!j.tcp("z/b", "x/a", 80) && j.tcp("z/a", "x/a", 80) && j.tcp("x/a", "z/b", 80));
}

#[test]
fn a_policy_without_network_policies_pods_or_selectors_translates_to_itself() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml")).unwrap();
    let native = policy::parse(&text, "policy.yaml").unwrap();
    let namespaces_only = "apiVersion: v1\nkind: Namespace\nmetadata: { name: x }\n";
    for objects in ["", namespaces_only] {
        let objs = parse_objects(&[("o.yaml", objects)]).unwrap();
        let t = translate(&native, &objs.cluster, &objs.policies).unwrap();
        assert_eq!(t.policy, native);
        assert_eq!(t.policy.to_yaml(), native.to_yaml());
    }
    let t = translate(&policy::parse(NATIVE, "n.yaml").unwrap(), &Cluster::default(), &[]).unwrap();
    assert_eq!(t.policy, policy::parse(NATIVE, "n.yaml").unwrap());
}

#[test]
fn label_selected_segments() {
    let native = r#"
version: 1
segments:
  web: { selector: { namespace: x, labels: { pod: a } } }
  others-b: { selector: { labels: { pod: b } }, cidrs: [10.9.0.0/16] }
  pinned: { cidrs: [10.0.2.2/32] }
  db: { selector: { matchExpressions: [ { key: pod, operator: In, values: [c] } ] } }
rules:
  - { name: web-to-db, from: [web], to: [db], ports: ["5432/tcp"], action: allow }
  - { name: b-never-db, from: [others-b], to: [db], action: deny }
"#;
    let deny_all = ["x", "y", "z"]
        .iter()
        .map(|ns| np(ns, "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]"))
        .collect::<String>();
    let objs = parse_objects(&[("o.yaml", &(model() + &deny_all))]).unwrap();
    let t = translate(&policy::parse(native, "n.yaml").unwrap(), &objs.cluster, &objs.policies).unwrap();
    // y/b's /32 in `pinned` wins over the selector of `others-b`, with a warning.
    assert!(t.warnings.iter().any(|w| w.contains("y/b") && w.contains("`pinned`")), "{:?}", t.warnings);
    let compiled = policy::compile(&t.policy);
    let seg = |a: &str| {
        let d = compiled.lookup(ip(a), ip(a), TCP, 1);
        let name = compiled.segment_name(d.src_segment).unwrap().to_string();
        name.split('~').next().unwrap().to_string()
    };
    assert_eq!(seg("10.0.1.1"), "web");
    assert_eq!(seg("10.0.2.1"), "world", "y/a is in no segment");
    assert_eq!(seg("10.0.1.2"), "others-b");
    assert_eq!(seg("10.0.2.2"), "pinned");
    assert_eq!(seg("10.9.1.1"), "others-b");
    for ns in ["x", "y", "z"] {
        assert_eq!(seg(&pod_ip(&format!("{ns}/c")).to_string()), "db");
    }
    let j = Judge { compiled, policy: t.policy };
    // Everything is isolated: only the native rules allow.
    assert!(j.tcp("x/a", "z/c", 5432));
    assert!(!j.tcp("x/a", "z/c", 80));
    assert!(!j.tcp("y/a", "z/c", 5432), "y/a is not in web");
    assert!(!j.tcp("z/b", "z/c", 1));
    // Without an inventory a selector segment holds nothing.
    let plain = translate(&policy::parse(native, "n.yaml").unwrap(), &Cluster::default(), &[]).unwrap();
    let c = policy::compile(&plain.policy);
    assert_eq!(c.segment_name(c.lookup(ip("10.0.1.1"), ip("10.0.1.1"), TCP, 1).src_segment), Some("world"));
}

#[test]
fn the_output_is_deterministic_and_independent_of_input_order() {
    let p1 = np(
        "x",
        "a",
        "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { ipBlock: { cidr: 10.0.0.0/8, except: [10.0.2.0/24] } } ], ports: [ { port: serve-80-tcp } ] } ]",
    );
    let p2 = np(
        "y",
        "b",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [ { to: [ { namespaceSelector: { matchLabels: { ns: z } } } ] } ]",
    );
    let forward = translated(NATIVE, &(model() + &p1 + &p2)).policy.to_yaml();
    // The documents in reverse order, over two files.
    let docs: Vec<String> =
        (model() + &p1 + &p2).split("---\n").filter(|d| !d.is_empty()).map(|d| format!("---\n{d}")).collect();
    let half = docs.len() / 2;
    let (first, second): (String, String) =
        (docs[half..].iter().rev().cloned().collect(), docs[..half].iter().rev().cloned().collect());
    let objs = parse_objects(&[("b.yaml", &first), ("a.yaml", &second)]).unwrap();
    let t = translate(&policy::parse(NATIVE, "n.yaml").unwrap(), &objs.cluster, &objs.policies).unwrap();
    assert_eq!(t.policy.to_yaml(), forward);
    assert_eq!(translated(NATIVE, &(model() + &p1 + &p2)).policy.to_yaml(), forward);
}

#[test]
fn rate_limits_follow_their_segment() {
    let native = r#"
version: 1
segments:
  pods: { cidrs: [10.0.0.0/16] }
rules:
  - { name: all, from: [pods], to: [pods], action: allow }
rateLimits:
  - { name: pods-pps, from: pods, packets: { rate: 100, per: second, burst: 10 } }
"#;
    let t = translated(native, &(model() + &np("x", "iso", "podSelector: { matchLabels: { pod: a } }\ningress: []")));
    let names: Vec<&str> = t.policy.rate_limits.iter().map(|l| l.name.as_str()).collect();
    assert!(
        names.len() > 1 && names[0] == "pods-pps" && names[1..].iter().all(|n| n.starts_with("pods-pps@pods~")),
        "{names:?}"
    );
    assert!(t.warnings.iter().any(|w| w.contains("pods-pps")), "{:?}", t.warnings);
    let c = policy::compile(&t.policy);
    for from in PODS {
        let d = c.lookup(pod_ip(from), pod_ip("y/b"), TCP, 80);
        assert_ne!(d.limit, 0, "{from} is not limited");
    }
    // The native allow admits x/b -> x/a although x/a is isolated.
    assert_eq!(c.lookup(pod_ip("x/b"), pod_ip("x/a"), TCP, 80).action, agent_common::ACTION_ALLOW);
}

#[test]
fn apis_on_label_selected_segments() {
    let native = r#"
version: 1
segments:
  web: { selector: { namespace: x, labels: { pod: a } } }
  db: { selector: { matchExpressions: [ { key: pod, operator: In, values: [c] } ] } }
rules:
  - { name: web-to-db, from: [web], to: [db], ports: ["5432/tcp"], action: allow }
apis:
  - { name: db-api, segment: db, ports: ["8080/tcp"], protocol: http }
  - { segment: web, ports: ["9000-9001/tcp"] }
"#;
    let deny_all = ["x", "y", "z"]
        .iter()
        .map(|ns| np(ns, "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]"))
        .collect::<String>();
    let t = translated(native, &(model() + &deny_all));
    let c = policy::compile(&t.policy);
    // Every pod of a declaring segment has its ports declared on its own segment id, whatever
    // class of addresses the translation made of it; no other pod has any.
    let declared = |a: IpAddr| -> Vec<u16> {
        let seg = c.lookup(a, a, TCP, 1).dst_segment;
        c.api_ports.iter().filter(|(s, _)| *s == seg).map(|(_, p)| *p).collect()
    };
    for pod in PODS {
        let want: &[u16] = match pod {
            "x/a" => &[9000, 9001],
            p if p.ends_with("/c") => &[8080],
            _ => &[],
        };
        assert_eq!(declared(pod_ip(pod)), want, "{pod}\n{}", t.policy.to_yaml());
    }
    // The first segment a named API stands for keeps its name.
    assert!(t.policy.apis.iter().any(|a| a.name.as_deref() == Some("db-api")), "{:?}", t.policy.apis);
}
