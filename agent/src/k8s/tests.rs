//! The translation judged by its verdicts: every case is a set of concrete flows (source,
//! destination, protocol, port) decided by the compiled translated policy, whose datapath
//! lookup (`CompiledPolicy::lookup`) and reference meaning (`evaluate_naive`) must agree; and
//! a direct implementation of the upstream semantics (no classes, no flattening) that random
//! clusters and policies are checked against.

use std::net::IpAddr;

use super::*;
use crate::policy::{self, Action, Policy};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const SCTP: u8 = 132;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The upstream e2e model: namespaces x, y, z (labels `ns: <name>` besides the automatic
/// name label), pods a, b, c in each (label `pod: <name>`), serving 80 and 81 on TCP and UDP
/// with ports named `serve-<port>-<proto>`; x/a is 10.0.1.1, y/b 10.0.2.2, ...
fn model() -> String {
    let mut out = String::new();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        out.push_str(&format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: \"{ns}\", labels: {{ ns: \"{ns}\" }} }}\n"));
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {pod}, namespace: \"{ns}\", labels: {{ pod: {pod} }} }}\n\
                 spec:\n  containers:\n  - name: serve\n    ports:\n\
                 \x20   - {{ containerPort: 80, name: serve-80-tcp }}\n\
                 \x20   - {{ containerPort: 80, name: serve-80-udp, protocol: UDP }}\n\
                 \x20   - {{ containerPort: 81, name: serve-81-tcp }}\n\
                 \x20   - {{ containerPort: 81, name: serve-81-udp, protocol: UDP }}\n\
                 status: {{ phase: Running, podIP: 10.0.{}.{} }}\n",
                i + 1,
                j + 1
            ));
        }
    }
    out
}

fn pod_ip(name: &str) -> IpAddr {
    let (ns, pod) = name.split_once('/').unwrap();
    let i = ["x", "y", "z"].iter().position(|n| *n == ns).unwrap() + 1;
    let j = ["a", "b", "c"].iter().position(|n| *n == pod).unwrap() + 1;
    ip(&format!("10.0.{i}.{j}"))
}

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

/// A NetworkPolicy document in namespace `ns` with `spec`.
fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: {name}, namespace: \"{ns}\" }}\nspec:\n{spec}")
}

/// The translated policy of `native` (YAML; empty: `version: 1`) and objects `text`, checked
/// to validate again as written.
fn translated(native: &str, text: &str) -> Translation {
    let native = if native.is_empty() { "version: 1\n" } else { native };
    let native = policy::parse(native, "native.yaml").unwrap_or_else(|d| panic!("{d}"));
    let objs = parse_objects(&[("objs.yaml", text)]).unwrap_or_else(|d| panic!("{d}"));
    let t = translate(&native, &objs.cluster, &objs.policies).unwrap();
    let again = policy::parse(&t.policy.to_yaml(), "out.yaml").unwrap_or_else(|d| panic!("{d}\n{}", t.policy.to_yaml()));
    assert_eq!(again, t.policy, "the translation does not read back as itself");
    t
}

/// Judges flows under a translated policy, the compiled lookup and the reference agreeing.
struct Judge {
    policy: Policy,
    compiled: policy::CompiledPolicy,
}

impl Judge {
    fn new(native: &str, text: &str) -> Judge {
        let policy = translated(native, text).policy;
        let compiled = policy::compile(&policy);
        Judge { policy, compiled }
    }

    fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
        let d = self.compiled.lookup(src, dst, proto, port);
        let n = policy::evaluate_naive(&self.policy, src, dst, proto, port);
        assert_eq!(d, n, "lookup and reference disagree for {src} -> {dst} {proto}/{port}");
        d.action == agent_common::ACTION_ALLOW
    }

    /// Pod to pod on TCP `port`.
    fn tcp(&self, from: &str, to: &str, port: u16) -> bool {
        self.allows(pod_ip(from), pod_ip(to), TCP, port)
    }

    /// Which pods `from` reaches on TCP 80, as "x/a x/b ...".
    fn reach(&self, from: &str) -> String {
        PODS.iter().filter(|to| self.tcp(from, to, 80)).copied().collect::<Vec<_>>().join(" ")
    }

    /// Which pods reach `to` on TCP 80.
    fn reached_by(&self, to: &str) -> String {
        PODS.iter().filter(|from| self.tcp(from, to, 80)).copied().collect::<Vec<_>>().join(" ")
    }

    /// The allowed pod-to-pod pairs on (proto, port).
    fn table(&self, proto: u8, port: u16) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in PODS {
            for t in PODS {
                if self.allows(pod_ip(f), pod_ip(t), proto, port) {
                    out.push((f.to_string(), t.to_string()));
                }
            }
        }
        out
    }
}

const ALL_PODS: &str = "x/a x/b x/c y/a y/b y/c z/a z/b z/c";

#[test]
fn without_policies_every_pod_is_open() {
    let j = Judge::new("", &model());
    assert_eq!(j.table(TCP, 80).len(), 81);
    assert_eq!(j.table(UDP, 53).len(), 81);
    // A non-pod address reaches a pod (not isolated) and a pod reaches it; two non-pod
    // addresses are the native policy's (default deny).
    assert!(j.allows(ip("192.168.1.1"), pod_ip("x/a"), TCP, 80));
    assert!(j.allows(pod_ip("x/a"), ip("192.168.1.1"), ICMP, 8));
    assert!(!j.allows(ip("192.168.1.1"), ip("192.168.1.2"), TCP, 80));
}

#[test]
fn isolation_is_per_direction_and_allows_add_up() {
    // Ingress isolation of x/a only: nothing else changes.
    let deny_a = np("x", "deny-a", "podSelector: { matchLabels: { pod: a } }\ningress: []");
    let j = Judge::new("", &(model() + &deny_a));
    assert_eq!(j.reached_by("x/a"), "");
    // x/a reaches every pod but itself (it is the isolated destination then).
    assert_eq!(j.reach("x/a"), "x/b x/c y/a y/b y/c z/a z/b z/c", "ingress isolation restricted egress");
    assert_eq!(j.reached_by("x/b"), ALL_PODS);
    // Two policies on x/a: their allows add up.
    let from_b = np("x", "from-b", "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { podSelector: { matchLabels: { pod: b } } } ] } ]");
    let from_c = np("x", "from-c", "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { podSelector: { matchLabels: { pod: c } } } ] } ]");
    let j = Judge::new("", &(model() + &deny_a + &from_b + &from_c));
    assert_eq!(j.reached_by("x/a"), "x/b x/c");
    // Egress isolation of x/a only.
    let no_egress = np("x", "no-egress", "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]");
    let j = Judge::new("", &(model() + &no_egress));
    assert_eq!(j.reach("x/a"), "");
    assert_eq!(j.reached_by("x/a"), "x/b x/c y/a y/b y/c z/a z/b z/c");
}

#[test]
fn both_ends_must_allow() {
    // y/b admits everyone on ingress, but x/a may send nowhere: egress deny on the client
    // side wins even when the server allows.
    let client = np("x", "client-deny", "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]");
    let server = np("y", "server-open", "podSelector: { matchLabels: { pod: b } }\ningress: [ {} ]");
    let j = Judge::new("", &(model() + &client + &server));
    assert!(!j.tcp("x/a", "y/b", 80));
    assert!(j.tcp("x/b", "y/b", 80));
    // The client allows egress to y/b only on 81; the server allows 80 and 81 from x/a only.
    let client = np("x", "client", "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]\negress: [ { to: [ { namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: b } } } ], ports: [ { port: 81 } ] } ]");
    let server = np("y", "server", "podSelector: { matchLabels: { pod: b } }\ningress: [ { from: [ { namespaceSelector: { matchLabels: { ns: x } }, podSelector: { matchLabels: { pod: a } } } ], ports: [ { port: 80 }, { port: 81 } ] } ]");
    let j = Judge::new("", &(model() + &client + &server));
    assert!(!j.tcp("x/a", "y/b", 80));
    assert!(j.tcp("x/a", "y/b", 81));
    assert!(!j.tcp("x/b", "y/b", 81));
    assert!(!j.tcp("x/a", "y/c", 81));
}

#[test]
fn peers_alone_anded_and_ored() {
    let on_a = |from: &str| np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: [ {{ from: {from} }} ]"));
    // podSelector alone: pods of the policy's namespace.
    let j = Judge::new("", &(model() + &on_a("[ { podSelector: { matchLabels: { pod: b } } } ]")));
    assert_eq!(j.reached_by("x/a"), "x/b");
    // namespaceSelector alone: every pod of the selected namespaces.
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: { matchLabels: { ns: 'y' } } } ]")));
    assert_eq!(j.reached_by("x/a"), "y/a y/b y/c");
    // Both in one peer: ANDed.
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: b } } } ]")));
    assert_eq!(j.reached_by("x/a"), "y/b");
    // Separate peers: ORed.
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: { matchLabels: { ns: 'y' } } }, { podSelector: { matchLabels: { pod: b } } } ]")));
    assert_eq!(j.reached_by("x/a"), "x/b y/a y/b y/c");
    // The automatic namespace name label, and `{}` selectors.
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: z } } } ]")));
    assert_eq!(j.reached_by("x/a"), "z/a z/b z/c");
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: {} } ]")));
    assert_eq!(j.reached_by("x/a"), ALL_PODS);
    assert!(!j.allows(ip("192.168.1.1"), pod_ip("x/a"), TCP, 80), "a namespaceSelector admitted an address that is no pod");
    let j = Judge::new("", &(model() + &on_a("[ { podSelector: {} } ]")));
    assert_eq!(j.reached_by("x/a"), "x/a x/b x/c");
}

#[test]
fn match_expressions() {
    let on_a = |peer: &str| np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: [ {{ from: [ {peer} ] }} ]"));
    let expr = |sel: &str, key: &str, op: &str, values: &str| {
        format!("{{ {sel}: {{ matchExpressions: [ {{ key: {key}, operator: {op}{values} }} ] }} }}")
    };
    let cases = [
        (expr("namespaceSelector", "ns", "In", ", values: ['y', z]"), "y/a y/b y/c z/a z/b z/c"),
        (expr("namespaceSelector", "ns", "NotIn", ", values: ['y', z]"), "x/a x/b x/c"),
        (expr("namespaceSelector", "ns", "Exists", ""), ALL_PODS),
        (expr("namespaceSelector", "ns", "DoesNotExist", ""), ""),
        (expr("podSelector", "pod", "In", ", values: [b, c]"), "x/b x/c"),
        (expr("podSelector", "pod", "NotIn", ", values: [b]"), "x/a x/c"),
        (expr("podSelector", "missing", "DoesNotExist", ""), "x/a x/b x/c"),
        (expr("podSelector", "missing", "Exists", ""), ""),
    ];
    for (peer, want) in cases {
        let j = Judge::new("", &(model() + &on_a(&peer)));
        assert_eq!(j.reached_by("x/a"), want, "{peer}");
    }
    // In the policy's own podSelector too: isolate every pod but a.
    let p = np("x", "iso", "podSelector: { matchExpressions: [ { key: pod, operator: NotIn, values: [a] } ] }\ningress: []");
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reached_by("x/a"), ALL_PODS);
    assert_eq!(j.reached_by("x/b"), "");
    assert_eq!(j.reached_by("y/b"), ALL_PODS);
}

#[test]
fn ip_blocks_with_except_include_pod_addresses() {
    let p = np(
        "x",
        "blocks",
        "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { ipBlock: { cidr: 10.0.0.0/16, except: [10.0.2.0/24, 10.0.3.3/32] } } ] } ]",
    );
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reached_by("x/a"), "x/a x/b x/c z/a z/b");
    let a = pod_ip("x/a");
    assert!(j.allows(ip("10.0.9.9"), a, TCP, 80), "an address of the block that is no pod");
    assert!(!j.allows(ip("10.0.2.200"), a, TCP, 80), "an address of an except");
    assert!(!j.allows(ip("10.1.0.1"), a, TCP, 80), "an address outside the block");
    assert!(!j.allows(ip("fd00::1"), a, TCP, 80));
    // Egress to an ipBlock: the client's side.
    let p = np("x", "egress", "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]\negress: [ { to: [ { ipBlock: { cidr: 192.168.0.0/16, except: [192.168.7.0/24] } } ] } ]");
    let j = Judge::new("", &(model() + &p));
    assert!(j.allows(a, ip("192.168.1.1"), TCP, 443));
    assert!(!j.allows(a, ip("192.168.7.1"), TCP, 443));
    assert!(!j.allows(a, ip("8.8.8.8"), UDP, 53));
    assert_eq!(j.reach("x/a"), "");
    // An IPv6 block that covers the IPv4-mapped space holds no IPv4 address.
    let p = np("x", "v6", "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { ipBlock: { cidr: \"::/0\" } } ] } ]");
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reached_by("x/a"), "");
    assert!(!j.allows(ip("192.168.1.1"), a, TCP, 80));
    assert!(j.allows(ip("fd00::1"), a, TCP, 80));
}

#[test]
fn ports_protocols_and_ranges() {
    let on_a = |ports: &str| np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: [ {{ ports: {ports} }} ]"));
    let (b, a) = (pod_ip("x/b"), pod_ip("x/a"));
    // TCP by default.
    let j = Judge::new("", &(model() + &on_a("[ { port: 80 } ]")));
    assert!(j.allows(b, a, TCP, 80) && !j.allows(b, a, UDP, 80) && !j.allows(b, a, TCP, 81) && !j.allows(b, a, ICMP, 8));
    let j = Judge::new("", &(model() + &on_a("[ { protocol: UDP, port: 53 } ]")));
    assert!(j.allows(b, a, UDP, 53) && !j.allows(b, a, TCP, 53));
    // A protocol without a port: all its ports.
    let j = Judge::new("", &(model() + &on_a("[ { protocol: UDP } ]")));
    assert!(j.allows(b, a, UDP, 1) && j.allows(b, a, UDP, 65535) && !j.allows(b, a, TCP, 80));
    // SCTP never matches TCP (nor SCTP itself: the datapath has no SCTP port).
    let j = Judge::new("", &(model() + &on_a("[ { protocol: SCTP, port: 80 } ]")));
    assert!(!j.allows(b, a, TCP, 80) && !j.allows(b, a, UDP, 80) && !j.allows(b, a, SCTP, 80));
    // endPort: a range.
    let j = Judge::new("", &(model() + &on_a("[ { port: 8000, endPort: 8010 } ]")));
    assert!(!j.allows(b, a, TCP, 7999) && j.allows(b, a, TCP, 8000) && j.allows(b, a, TCP, 8005) && j.allows(b, a, TCP, 8010));
    assert!(!j.allows(b, a, TCP, 8011) && !j.allows(b, a, UDP, 8005));
    // No ports: everything, ICMP and other protocols included.
    let j = Judge::new("", &(model() + &on_a("[]")));
    assert!(j.allows(b, a, ICMP, 8) && j.allows(b, a, SCTP, 0) && j.allows(b, a, UDP, 9));
}

#[test]
fn named_ports_resolve_on_the_destination() {
    // x/a serves "http" on 8080, x/b on 80; the ingress policy names "http".
    let pods = "---\napiVersion: v1\nkind: Pod\nmetadata: { name: a, namespace: x, labels: { app: web } }\n\
        spec: { containers: [ { name: c, ports: [ { containerPort: 8080, name: http } ] } ] }\nstatus: { podIP: 10.0.1.1 }\n\
        ---\napiVersion: v1\nkind: Pod\nmetadata: { name: b, namespace: x, labels: { app: web } }\n\
        spec: { containers: [ { name: c, ports: [ { containerPort: 80, name: http }, { containerPort: 53, name: dns, protocol: UDP } ] } ] }\nstatus: { podIP: 10.0.1.2 }\n\
        ---\napiVersion: v1\nkind: Pod\nmetadata: { name: c, namespace: x, labels: { app: client } }\nstatus: { podIP: 10.0.1.3 }\n";
    let web = np("x", "web", "podSelector: { matchLabels: { app: web } }\ningress: [ { ports: [ { port: http }, { port: dns } ] } ]");
    let j = Judge::new("", &format!("{pods}{web}"));
    let (a, b, c) = (ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3"));
    assert!(j.allows(c, a, TCP, 8080) && !j.allows(c, a, TCP, 80));
    assert!(j.allows(c, b, TCP, 80) && !j.allows(c, b, TCP, 8080));
    // `dns` is a UDP port of b: a named TCP port (the default) of that name matches nothing.
    assert!(!j.allows(c, b, UDP, 53) && !j.allows(c, b, TCP, 53));
    let dns = np("x", "dns", "podSelector: { matchLabels: { app: web } }\ningress: [ { ports: [ { port: dns, protocol: UDP } ] } ]");
    let j = Judge::new("", &format!("{pods}{dns}"));
    assert!(j.allows(c, b, UDP, 53) && !j.allows(c, a, UDP, 53));
    // Egress: resolved on the destination pod; a non-pod destination has no named ports.
    let egress = np("x", "client", "podSelector: { matchLabels: { app: client } }\npolicyTypes: [Egress]\negress: [ { ports: [ { port: http } ] } ]");
    let j = Judge::new("", &format!("{pods}{egress}"));
    assert!(j.allows(c, a, TCP, 8080) && !j.allows(c, a, TCP, 80));
    assert!(j.allows(c, b, TCP, 80) && !j.allows(c, b, TCP, 8080));
    assert!(!j.allows(c, ip("192.168.1.1"), TCP, 80) && !j.allows(c, ip("192.168.1.1"), TCP, 8080));
    // The e2e model's names.
    let p = np("x", "named", "podSelector: { matchLabels: { pod: a } }\ningress: [ { ports: [ { port: serve-80-tcp }, { port: serve-81-udp, protocol: UDP } ] } ]");
    let j = Judge::new("", &(model() + &p));
    let (xb, xa) = (pod_ip("x/b"), pod_ip("x/a"));
    assert!(j.allows(xb, xa, TCP, 80) && !j.allows(xb, xa, TCP, 81) && !j.allows(xb, xa, UDP, 80) && j.allows(xb, xa, UDP, 81));
}

#[test]
fn policy_types_and_empty_lists() {
    // Egress rules without policyTypes: egress isolated too.
    let p = np("x", "p", "podSelector: { matchLabels: { pod: a } }\negress: [ { to: [ { podSelector: { matchLabels: { pod: b } } } ] } ]");
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reach("x/a"), "x/b");
    assert_eq!(j.reached_by("x/a"), "", "the default policyTypes include Ingress");
    // policyTypes [Egress]: ingress rules are ignored, ingress is not isolated.
    let p = np("x", "p", "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]\ningress: []\negress: [ {} ]");
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reached_by("x/a"), ALL_PODS);
    assert_eq!(j.reach("x/a"), ALL_PODS);
    // `ingress: [ {} ]` and `from: []` admit everything; `ingress: []` nothing.
    for (rules, want) in [("[ {} ]", ALL_PODS), ("[ { from: [] } ]", ALL_PODS), ("[]", ""), ("[ { from: [], ports: [] } ]", ALL_PODS)] {
        let p = np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: {rules}"));
        let j = Judge::new("", &(model() + &p));
        assert_eq!(j.reached_by("x/a"), want, "{rules}");
    }
    // podSelector {}: every pod of its namespace, none of another.
    let p = np("y", "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]");
    let j = Judge::new("", &(model() + &p));
    for pod in ["y/a", "y/b", "y/c"] {
        assert_eq!((j.reach(pod).as_str(), j.reached_by(pod).as_str()), ("", ""), "{pod}");
    }
    assert_eq!(j.reach("x/a"), "x/a x/b x/c z/a z/b z/c");
}

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
    let deny_all = ["x", "y", "z"].iter().map(|ns| np(ns, "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]")).collect::<String>();
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
    let p1 = np("x", "a", "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { ipBlock: { cidr: 10.0.0.0/8, except: [10.0.2.0/24] } } ], ports: [ { port: serve-80-tcp } ] } ]");
    let p2 = np("y", "b", "podSelector: {}\npolicyTypes: [Egress]\negress: [ { to: [ { namespaceSelector: { matchLabels: { ns: z } } } ] } ]");
    let forward = translated(NATIVE, &(model() + &p1 + &p2)).policy.to_yaml();
    // The documents in reverse order, over two files.
    let docs: Vec<String> = (model() + &p1 + &p2).split("---\n").filter(|d| !d.is_empty()).map(|d| format!("---\n{d}")).collect();
    let half = docs.len() / 2;
    let (first, second): (String, String) = (docs[half..].iter().rev().cloned().collect(), docs[..half].iter().rev().cloned().collect());
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
    assert!(names.len() > 1 && names[0] == "pods-pps" && names[1..].iter().all(|n| n.starts_with("pods-pps@pods~")), "{names:?}");
    assert!(t.warnings.iter().any(|w| w.contains("pods-pps")), "{:?}", t.warnings);
    let c = policy::compile(&t.policy);
    for from in PODS {
        let d = c.lookup(pod_ip(from), pod_ip("y/b"), TCP, 80);
        assert_ne!(d.limit, 0, "{from} is not limited");
    }
    // The native allow admits x/b -> x/a although x/a is isolated.
    assert_eq!(c.lookup(pod_ip("x/b"), pod_ip("x/a"), TCP, 80).action, agent_common::ACTION_ALLOW);
}

// ---- the upstream semantics, directly ------------------------------------------------------

/// The reference: the documented semantics evaluated for one flow, without classes.
fn reference(native: &Policy, cluster: &Cluster, nps: &[NetworkPolicy], src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
    let owner = |ipa: IpAddr| cluster.pods.iter().find(|p| p.is_endpoint() && p.ips.contains(&ipa));
    let (sp, dp) = (owner(src), owner(dst));
    let seg_of = |ipa: IpAddr, pod: Option<&Pod>| -> Option<usize> {
        let host = if ipa.is_ipv4() { 32 } else { 128 };
        let exact = native.segments.iter().position(|s| s.cidrs.iter().any(|c| c.prefix_len() == host && c.contains(&ipa)));
        if exact.is_some() {
            return exact;
        }
        if let Some(p) = pod {
            let sel = native.segments.iter().position(|s| {
                s.selector.as_ref().is_some_and(|sel| sel.namespace.as_deref().is_none_or(|n| n == p.namespace) && sel.selector.matches(&p.labels))
            });
            if sel.is_some() {
                return sel;
            }
        }
        let mut best: Option<(u8, usize)> = None;
        for (i, s) in native.segments.iter().enumerate() {
            for c in &s.cidrs {
                if c.contains(&ipa) && best.is_none_or(|(l, _)| c.prefix_len() > l) {
                    best = Some((c.prefix_len(), i));
                }
            }
        }
        best.map(|(_, i)| i)
    };
    let (ss, ds) = (seg_of(src, sp), seg_of(dst, dp));
    let side = |refs: &[policy::SegRef], s: Option<usize>| {
        refs.iter().any(|r| match r {
            policy::SegRef::Any => true,
            policy::SegRef::World => s.is_none(),
            policy::SegRef::Named(i) => s == Some(*i),
        })
    };
    let key = policy::port_key(proto, port);
    let covers = |ports: &Option<Vec<policy::PortSpec>>| {
        ports.as_ref().is_none_or(|v| v.iter().any(|p| {
            let (lo, hi) = p.key_range();
            lo <= key && key <= hi
        }))
    };
    let matching = |action: Action| native.rules.iter().any(|r| r.action == action && side(&r.from, ss) && side(&r.to, ds) && covers(&r.ports));
    let (deny, allow) = (matching(Action::Deny), matching(Action::Allow));
    let native_alone = !deny && (allow || native.default_action == Action::Allow);
    if (sp.is_none() && dp.is_none()) || (nps.is_empty() && native.default_action == Action::Allow) {
        return native_alone;
    }
    if deny {
        return false;
    }
    let peer_match = |np: &NetworkPolicy, peers: &[Peer], ipa: IpAddr, pod: Option<&Pod>| {
        peers.is_empty()
            || peers.iter().any(|peer| match peer {
                Peer::IpBlock { cidr, except } => cidr.contains(&ipa) && !except.iter().any(|e| e.contains(&ipa)),
                Peer::Pods { namespaces, pods } => pod.is_some_and(|p| {
                    let ns_ok = match namespaces {
                        None => p.namespace == np.namespace,
                        Some(s) => s.matches(&cluster.namespace_labels(&p.namespace)),
                    };
                    ns_ok && pods.as_ref().is_none_or(|s| s.matches(&p.labels))
                }),
            })
    };
    let port_match = |ports: &[NetpolPort]| {
        ports.is_empty()
            || ports.iter().any(|np_port| {
                let want = match np_port.protocol {
                    Protocol::Tcp => TCP,
                    Protocol::Udp => UDP,
                    Protocol::Sctp => return false,
                };
                if proto != want {
                    return false;
                }
                match &np_port.port {
                    None => true,
                    Some(PortRef::Number(lo)) => (*lo..=np_port.end_port.unwrap_or(*lo)).contains(&port),
                    Some(PortRef::Name(n)) => dp.is_some_and(|d| {
                        d.ports.iter().any(|cp| cp.name.as_deref() == Some(n) && cp.protocol == np_port.protocol && cp.port == port)
                    }),
                }
            })
    };
    let selecting = |pod: &Pod, egress: bool| -> Vec<&NetworkPolicy> {
        nps.iter()
            .filter(|np| np.namespace == pod.namespace && np.pod_selector.matches(&pod.labels) && if egress { np.egress_type } else { np.ingress_type })
            .collect()
    };
    let egress_ok = sp.is_none_or(|s| {
        let sel = selecting(s, true);
        sel.is_empty() || sel.iter().any(|np| np.egress.iter().any(|r| peer_match(np, &r.peers, dst, dp) && port_match(&r.ports)))
    });
    let ingress_ok = dp.is_none_or(|d| {
        let sel = selecting(d, false);
        sel.is_empty() || sel.iter().any(|np| np.ingress.iter().any(|r| peer_match(np, &r.peers, src, sp) && port_match(&r.ports)))
    });
    (egress_ok && ingress_ok) || allow
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

fn random_selector(rng: &mut Rng, keys: &[&str], values: &[&str]) -> String {
    let mut parts = Vec::new();
    if rng.below(2) == 0 {
        parts.push(format!("matchLabels: {{ {}: {} }}", rng.pick(keys), rng.pick(values)));
    }
    if rng.below(3) == 0 {
        let key = rng.pick(keys);
        parts.push(match rng.below(4) {
            0 => format!("matchExpressions: [ {{ key: {key}, operator: In, values: [{}, {}] }} ]", rng.pick(values), rng.pick(values)),
            1 => format!("matchExpressions: [ {{ key: {key}, operator: NotIn, values: [{}] }} ]", rng.pick(values)),
            2 => format!("matchExpressions: [ {{ key: {key}, operator: Exists }} ]"),
            _ => format!("matchExpressions: [ {{ key: {key}, operator: DoesNotExist }} ]"),
        });
    }
    format!("{{ {} }}", parts.join(", "))
}

fn random_case(rng: &mut Rng) -> (String, String) {
    const KEYS: [&str; 3] = ["app", "tier", "team"];
    const VALUES: [&str; 3] = ["a", "b", "c"];
    let mut objs = String::new();
    let nss = ["n1", "n2", "n3"];
    for ns in nss {
        objs.push_str(&format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns}, labels: {{ team: {} }} }}\n", rng.pick(&VALUES)));
    }
    let npods = 2 + rng.below(7);
    for i in 0..npods {
        let ns = rng.pick(&nss);
        let mut labels = Vec::new();
        for k in KEYS {
            if rng.below(2) == 0 {
                labels.push(format!("{k}: {}", rng.pick(&VALUES)));
            }
        }
        let ports = match rng.below(3) {
            0 => "[ { containerPort: 80, name: web }, { containerPort: 53, name: dns, protocol: UDP } ]".to_string(),
            1 => "[ { containerPort: 8080, name: web } ]".to_string(),
            _ => "[]".to_string(),
        };
        let ip = if rng.below(6) == 0 { format!("fd00::{i}") } else { format!("10.0.{}.{}", rng.below(3), 1 + i) };
        let host = if rng.below(10) == 0 { "true" } else { "false" };
        objs.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: p{i}, namespace: {ns}, labels: {{ {} }} }}\nspec: {{ hostNetwork: {host}, containers: [ {{ name: c, ports: {ports} }} ] }}\nstatus: {{ podIP: \"{ip}\" }}\n",
            labels.join(", ")
        ));
    }
    for i in 0..rng.below(5) {
        let ns = rng.pick(&nss);
        let peer = |rng: &mut Rng| match rng.below(5) {
            0 => format!("{{ podSelector: {} }}", random_selector(rng, &KEYS, &VALUES)),
            1 => format!("{{ namespaceSelector: {} }}", random_selector(rng, &KEYS, &VALUES)),
            2 => format!("{{ namespaceSelector: {}, podSelector: {} }}", random_selector(rng, &KEYS, &VALUES), random_selector(rng, &KEYS, &VALUES)),
            3 => "{ ipBlock: { cidr: 10.0.0.0/16, except: [10.0.1.0/24] } }".to_string(),
            _ => format!("{{ ipBlock: {{ cidr: {} }} }}", rng.pick(&["10.0.2.0/24", "192.168.0.0/16", "0.0.0.0/0", "fd00::/8", "::/0"])),
        };
        let ports = |rng: &mut Rng| match rng.below(6) {
            0 => "[ { port: 80 } ]",
            1 => "[ { port: web } ]",
            2 => "[ { protocol: UDP, port: dns }, { port: 8000, endPort: 8080 } ]",
            3 => "[ { protocol: SCTP, port: 80 }, { protocol: UDP } ]",
            4 => "[]",
            _ => "[ { port: 80 }, { port: 8080 } ]",
        };
        let rules = |rng: &mut Rng, side: &str| -> String {
            let n = rng.below(3);
            let rules: Vec<String> = (0..n)
                .map(|_| {
                    let peers: Vec<String> = (0..rng.below(3)).map(|_| peer(rng)).collect();
                    let p = ports(rng);
                    format!("{{ {side}: [ {} ], ports: {p} }}", peers.join(", "))
                })
                .collect();
            format!("[ {} ]", rules.join(", "))
        };
        let types = rng.pick(&["", "policyTypes: [Ingress]\n", "policyTypes: [Egress]\n", "policyTypes: [Ingress, Egress]\n"]);
        let mut spec = format!("podSelector: {}\n{types}", random_selector(rng, &KEYS, &VALUES));
        if rng.below(3) != 0 {
            spec.push_str(&format!("ingress: {}\n", rules(rng, "from")));
        }
        if rng.below(2) == 0 {
            spec.push_str(&format!("egress: {}\n", rules(rng, "to")));
        }
        objs.push_str(&np(ns, &format!("np{i}"), spec.trim_end()));
    }
    let mut native = String::from("version: 1\nsegments:\n");
    if !objs.contains("kind: NetworkPolicy") && rng.below(2) == 0 {
        native = String::from("version: 1\ndefaultAction: allow\nsegments:\n");
    }
    native.push_str(&format!("  s1: {{ cidrs: [{}] }}\n", rng.pick(&["10.0.0.0/16", "10.0.1.0/24", "10.0.0.0/8"])));
    native.push_str(&format!("  s2: {{ selector: {{ labels: {{ app: {} }} }}, cidrs: [192.168.1.0/24] }}\n", rng.pick(&VALUES)));
    native.push_str(&format!("  s3: {{ cidrs: [{}] }}\n", rng.pick(&["10.0.1.1/32", "192.168.0.0/16", "fd00::/16"])));
    native.push_str("rules:\n");
    for i in 0..rng.below(4) {
        let side = |rng: &mut Rng| rng.pick(&["[s1]", "[s2]", "[s3]", "[world]", "[\"*\"]", "[s1, s3]"]);
        let ports = rng.pick(&["", ", ports: [\"80/tcp\"]", ", ports: [\"udp\"]", ", ports: [icmp, \"8000-8010/tcp\"]"]);
        let action = rng.pick(&["allow", "deny"]);
        native.push_str(&format!("  - {{ name: r{i}, from: {}, to: {}{ports}, action: {action} }}\n", side(rng), side(rng)));
    }
    (native, objs)
}

/// Random inventories, NetworkPolicies and native policies: the translated policy decides
/// every flow as the upstream semantics (evaluated directly) do.
#[test]
fn random_cases_agree_with_the_upstream_semantics() {
    let mut rng = Rng(0x5eed_1234_9876_4321);
    let probes: [(u8, u16); 9] = [(TCP, 80), (TCP, 81), (TCP, 8080), (TCP, 8005), (UDP, 53), (UDP, 80), (ICMP, 8), (SCTP, 0), (TCP, 22)];
    for case in 0..300 {
        let (native_text, objs_text) = random_case(&mut rng);
        let native = policy::parse(&native_text, "n.yaml").unwrap_or_else(|d| panic!("{d}\n{native_text}"));
        let objs = parse_objects(&[("o.yaml", &objs_text)]).unwrap_or_else(|d| panic!("{d}\n{objs_text}"));
        let t = translate(&native, &objs.cluster, &objs.policies).unwrap();
        let again = policy::parse(&t.policy.to_yaml(), "out.yaml").unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(again, t.policy);
        let compiled = policy::compile(&t.policy);
        let lookup = compiled.index();
        let mut addrs: Vec<IpAddr> = objs.cluster.pods.iter().flat_map(|p| p.ips.clone()).collect();
        for a in ["10.0.1.200", "10.0.2.200", "10.0.9.9", "192.168.1.7", "192.168.9.9", "8.8.8.8", "fd00::99", "fe80::1", "10.0.1.1"] {
            addrs.push(ip(a));
        }
        addrs.sort();
        addrs.dedup();
        for &s in &addrs {
            for &d in &addrs {
                if s.is_ipv4() != d.is_ipv4() {
                    continue;
                }
                for (proto, port) in probes {
                    let want = reference(&native, &objs.cluster, &objs.policies, s, d, proto, port);
                    let got = lookup.lookup(s, d, proto, port);
                    let naive = policy::evaluate_naive(&t.policy, s, d, proto, port);
                    assert_eq!(got, naive, "case {case}: lookup and reference disagree on {s} -> {d} {proto}/{port}");
                    assert_eq!(
                        got.action == agent_common::ACTION_ALLOW,
                        want,
                        "case {case}: {s} -> {d} {proto}/{port}\n--- native\n{native_text}\n--- objects\n{objs_text}\n--- translated\n{}",
                        t.policy.to_yaml()
                    );
                }
            }
        }
    }
}

#[test]
fn pod_addresses_are_named() {
    let objs = parse_objects(&[("o.yaml", &model())]).unwrap();
    let inv = Inventory::of(&objs.cluster);
    assert_eq!(inv.pod(ip("10.0.2.3")), Some("y/c"));
    assert_eq!(inv.pod(ip("10.0.9.9")), None);
    assert_eq!(inv.len(), 9);
}
