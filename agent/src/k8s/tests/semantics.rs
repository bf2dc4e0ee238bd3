//! NetworkPolicy's meaning: isolation per direction, peers, ipBlocks, ports, named ports.

use super::*;

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
    let from_b = np(
        "x",
        "from-b",
        "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { podSelector: { matchLabels: { pod: b } } } ] } ]",
    );
    let from_c = np(
        "x",
        "from-c",
        "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { podSelector: { matchLabels: { pod: c } } } ] } ]",
    );
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
    let client = np(
        "x",
        "client",
        "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]\negress: [ { to: [ { namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: b } } } ], ports: [ { port: 81 } ] } ]",
    );
    let server = np(
        "y",
        "server",
        "podSelector: { matchLabels: { pod: b } }\ningress: [ { from: [ { namespaceSelector: { matchLabels: { ns: x } }, podSelector: { matchLabels: { pod: a } } } ], ports: [ { port: 80 }, { port: 81 } ] } ]",
    );
    let j = Judge::new("", &(model() + &client + &server));
    assert!(!j.tcp("x/a", "y/b", 80));
    assert!(j.tcp("x/a", "y/b", 81));
    assert!(!j.tcp("x/b", "y/b", 81));
    assert!(!j.tcp("x/a", "y/c", 81));
}

#[test]
fn peers_alone_anded_and_ored() {
    let on_a = |from: &str| {
        np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: [ {{ from: {from} }} ]"))
    };
    // podSelector alone: pods of the policy's namespace.
    let j = Judge::new("", &(model() + &on_a("[ { podSelector: { matchLabels: { pod: b } } } ]")));
    assert_eq!(j.reached_by("x/a"), "x/b");
    // namespaceSelector alone: every pod of the selected namespaces.
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: { matchLabels: { ns: 'y' } } } ]")));
    assert_eq!(j.reached_by("x/a"), "y/a y/b y/c");
    // Both in one peer: ANDed.
    let j = Judge::new(
        "",
        &(model()
            + &on_a(
                "[ { namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: b } } } ]",
            )),
    );
    assert_eq!(j.reached_by("x/a"), "y/b");
    // Separate peers: ORed.
    let j = Judge::new(
        "",
        &(model()
            + &on_a(
                "[ { namespaceSelector: { matchLabels: { ns: 'y' } } }, { podSelector: { matchLabels: { pod: b } } } ]",
            )),
    );
    assert_eq!(j.reached_by("x/a"), "x/b y/a y/b y/c");
    // The automatic namespace name label, and `{}` selectors.
    let j = Judge::new(
        "",
        &(model() + &on_a("[ { namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: z } } } ]")),
    );
    assert_eq!(j.reached_by("x/a"), "z/a z/b z/c");
    let j = Judge::new("", &(model() + &on_a("[ { namespaceSelector: {} } ]")));
    assert_eq!(j.reached_by("x/a"), ALL_PODS);
    assert!(
        !j.allows(ip("192.168.1.1"), pod_ip("x/a"), TCP, 80),
        "a namespaceSelector admitted an address that is no pod"
    );
    let j = Judge::new("", &(model() + &on_a("[ { podSelector: {} } ]")));
    assert_eq!(j.reached_by("x/a"), "x/a x/b x/c");
}

#[test]
fn match_expressions() {
    let on_a = |peer: &str| {
        np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: [ {{ from: [ {peer} ] }} ]"))
    };
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
    let p = np(
        "x",
        "iso",
        "podSelector: { matchExpressions: [ { key: pod, operator: NotIn, values: [a] } ] }\ningress: []",
    );
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
    let p = np(
        "x",
        "egress",
        "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]\negress: [ { to: [ { ipBlock: { cidr: 192.168.0.0/16, except: [192.168.7.0/24] } } ] } ]",
    );
    let j = Judge::new("", &(model() + &p));
    assert!(j.allows(a, ip("192.168.1.1"), TCP, 443));
    assert!(!j.allows(a, ip("192.168.7.1"), TCP, 443));
    assert!(!j.allows(a, ip("8.8.8.8"), UDP, 53));
    assert_eq!(j.reach("x/a"), "");
    // An IPv6 block that covers the IPv4-mapped space holds no IPv4 address.
    let p = np(
        "x",
        "v6",
        "podSelector: { matchLabels: { pod: a } }\ningress: [ { from: [ { ipBlock: { cidr: \"::/0\" } } ] } ]",
    );
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reached_by("x/a"), "");
    assert!(!j.allows(ip("192.168.1.1"), a, TCP, 80));
    assert!(j.allows(ip("fd00::1"), a, TCP, 80));
}

#[test]
fn ports_protocols_and_ranges() {
    let on_a = |ports: &str| {
        np("x", "p", &format!("podSelector: {{ matchLabels: {{ pod: a }} }}\ningress: [ {{ ports: {ports} }} ]"))
    };
    let (b, a) = (pod_ip("x/b"), pod_ip("x/a"));
    // TCP by default.
    let j = Judge::new("", &(model() + &on_a("[ { port: 80 } ]")));
    assert!(
        j.allows(b, a, TCP, 80) && !j.allows(b, a, UDP, 80) && !j.allows(b, a, TCP, 81) && !j.allows(b, a, ICMP, 8)
    );
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
    assert!(
        !j.allows(b, a, TCP, 7999)
            && j.allows(b, a, TCP, 8000)
            && j.allows(b, a, TCP, 8005)
            && j.allows(b, a, TCP, 8010)
    );
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
    let web = np(
        "x",
        "web",
        "podSelector: { matchLabels: { app: web } }\ningress: [ { ports: [ { port: http }, { port: dns } ] } ]",
    );
    let j = Judge::new("", &format!("{pods}{web}"));
    let (a, b, c) = (ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3"));
    assert!(j.allows(c, a, TCP, 8080) && !j.allows(c, a, TCP, 80));
    assert!(j.allows(c, b, TCP, 80) && !j.allows(c, b, TCP, 8080));
    // `dns` is a UDP port of b: a named TCP port (the default) of that name matches nothing.
    assert!(!j.allows(c, b, UDP, 53) && !j.allows(c, b, TCP, 53));
    let dns = np(
        "x",
        "dns",
        "podSelector: { matchLabels: { app: web } }\ningress: [ { ports: [ { port: dns, protocol: UDP } ] } ]",
    );
    let j = Judge::new("", &format!("{pods}{dns}"));
    assert!(j.allows(c, b, UDP, 53) && !j.allows(c, a, UDP, 53));
    // Egress: resolved on the destination pod; a non-pod destination has no named ports.
    let egress = np(
        "x",
        "client",
        "podSelector: { matchLabels: { app: client } }\npolicyTypes: [Egress]\negress: [ { ports: [ { port: http } ] } ]",
    );
    let j = Judge::new("", &format!("{pods}{egress}"));
    assert!(j.allows(c, a, TCP, 8080) && !j.allows(c, a, TCP, 80));
    assert!(j.allows(c, b, TCP, 80) && !j.allows(c, b, TCP, 8080));
    assert!(!j.allows(c, ip("192.168.1.1"), TCP, 80) && !j.allows(c, ip("192.168.1.1"), TCP, 8080));
    // The e2e model's names.
    let p = np(
        "x",
        "named",
        "podSelector: { matchLabels: { pod: a } }\ningress: [ { ports: [ { port: serve-80-tcp }, { port: serve-81-udp, protocol: UDP } ] } ]",
    );
    let j = Judge::new("", &(model() + &p));
    let (xb, xa) = (pod_ip("x/b"), pod_ip("x/a"));
    assert!(
        j.allows(xb, xa, TCP, 80)
            && !j.allows(xb, xa, TCP, 81)
            && !j.allows(xb, xa, UDP, 80)
            && j.allows(xb, xa, UDP, 81)
    );
}

#[test]
fn policy_types_and_empty_lists() {
    // Egress rules without policyTypes: egress isolated too.
    let p = np(
        "x",
        "p",
        "podSelector: { matchLabels: { pod: a } }\negress: [ { to: [ { podSelector: { matchLabels: { pod: b } } } ] } ]",
    );
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reach("x/a"), "x/b");
    assert_eq!(j.reached_by("x/a"), "", "the default policyTypes include Ingress");
    // policyTypes [Egress]: ingress rules are ignored, ingress is not isolated.
    let p =
        np("x", "p", "podSelector: { matchLabels: { pod: a } }\npolicyTypes: [Egress]\ningress: []\negress: [ {} ]");
    let j = Judge::new("", &(model() + &p));
    assert_eq!(j.reached_by("x/a"), ALL_PODS);
    assert_eq!(j.reach("x/a"), ALL_PODS);
    // `ingress: [ {} ]` and `from: []` admit everything; `ingress: []` nothing.
    for (rules, want) in
        [("[ {} ]", ALL_PODS), ("[ { from: [] } ]", ALL_PODS), ("[]", ""), ("[ { from: [], ports: [] } ]", ALL_PODS)]
    {
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
