//! The objects reader: lists, documents, diagnostics, defaults.

use std::net::IpAddr;

use super::*;

fn parse(text: &str) -> Result<Objects, Diagnostics> {
    parse_objects(&[("objs.yaml", text)])
}

const LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    labels:
      kubernetes.io/metadata.name: prod
      team: pay
    name: prod
- apiVersion: v1
  kind: Pod
  metadata:
    creationTimestamp: "2026-01-01T00:00:00Z"
    labels:
      app: web
    name: web-1
    namespace: prod
  spec:
    containers:
    - image: nginx
      name: web
      ports:
      - containerPort: 80
        name: http
        protocol: TCP
      - containerPort: 53
        name: dns
        protocol: UDP
  status:
    phase: Running
    podIP: 10.1.0.5
    podIPs:
    - ip: 10.1.0.5
    - ip: fd00::5
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: web
    namespace: prod
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: allow-web
    namespace: prod
  spec:
    podSelector:
      matchLabels:
        app: web
    ingress:
    - from:
      - namespaceSelector:
          matchLabels:
            team: pay
        podSelector:
          matchExpressions:
          - key: app
            operator: NotIn
            values: [db]
      - ipBlock:
          cidr: 10.0.0.0/8
          except: [10.9.0.0/16]
      ports:
      - port: http
      - protocol: UDP
        port: 5000
        endPort: 5010
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn a_kubectl_list_is_read() {
    let o = parse(LIST).unwrap();
    assert_eq!(o.cluster.namespaces["prod"].labels["team"], "pay");
    let pod = &o.cluster.pods[0];
    assert_eq!((pod.id().as_str(), pod.labels["app"].as_str()), ("prod/web-1", "web"));
    assert_eq!(pod.ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
    assert_eq!(pod.ports[1], ContainerPort { name: Some("dns".into()), port: 53, protocol: Protocol::Udp });
    assert!(pod.is_endpoint());
    let np = &o.policies[0];
    assert_eq!(np.id(), "prod/allow-web");
    assert!(np.ingress_type && !np.egress_type);
    assert_eq!(np.ingress[0].peers.len(), 2);
    assert_eq!(np.ingress[0].ports[0].port, Some(PortRef::Name("http".into())));
    assert_eq!(
        np.ingress[0].ports[1],
        NetpolPort { protocol: Protocol::Udp, port: Some(PortRef::Number(5000)), end_port: Some(5010) }
    );
    // The Deployment is skipped, with its position.
    assert_eq!(o.warnings.len(), 1, "{:?}", o.warnings);
    let w = o.warnings[0].to_string();
    assert!(w.starts_with("objs.yaml:36:9: warning: skipped: kind `Deployment`"), "{w}");
}

#[test]
fn multi_document_yaml_and_json_give_the_same_objects() {
    let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: { name: a }\n---\n# a comment\napiVersion: v1\nkind: Pod\nmetadata: { name: p, namespace: a, labels: { x: 'y' } }\nstatus: { podIP: 10.0.0.1 }\n---\n";
    let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"a","labels":{"x":"y"}},"status":{"podIP":"10.0.0.1"}},{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}]}"#;
    let a = parse_objects(&[("a.yaml", yaml)]).unwrap();
    let b = parse_objects(&[("b.json", json)]).unwrap();
    assert_eq!(a.cluster, b.cluster);
    // Positions in later documents count the lines before them.
    let broken = yaml.replace("10.0.0.1", "10.0.0.300");
    let e = parse_objects(&[("a.yaml", &broken)]).unwrap_err();
    assert_eq!(e.to_string(), "a.yaml:9:18: error: `10.0.0.300` is not an IP address");
    // A broken document does not hide the next one's problems.
    let e = parse_objects(&[("a.yaml", "a: [\n---\nkind: Pod\n")]).unwrap_err().to_string();
    assert!(
        e.starts_with("a.yaml:1:4: error: ") && e.contains("\na.yaml:3:1: error: this object has no `apiVersion`"),
        "{e}"
    );
}

#[test]
fn document_splitting() {
    let d = documents("---\na: 1\n--- # two\nb: 2\n...\n---\nc: 3\n");
    assert_eq!(d, vec![(1, "a: 1\n"), (3, "b: 2\n"), (6, "c: 3\n")]);
    assert_eq!(documents("a: 1\n"), vec![(0, "a: 1\n")]);
    assert_eq!(documents("--- {a: 1}\n"), vec![(0, "--- {a: 1}\n")]);
    assert!(documents("---\n# nothing\n---\n").is_empty());
}

#[test]
fn broken_objects_are_reported_where_they_are() {
    let text = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: bad, namespace: x }
spec:
  podSelecter: {}
  policyTypes: [Ingres]
  ingress:
  - from:
    - {}
    - ipBlock: { cidr: 10.0.0.0/8, except: [11.0.0.0/16] }
      podSelector: {}
    ports:
    - { port: 80, endPort: 70 }
    - { port: web, endPort: 90 }
    - { protocol: tcp }
    - { port: "80" }
    - { port: 0 }
    - port: http
      protocol: SCTP
"#;
    let e = parse(text).unwrap_err().to_string();
    let expect = [
        "objs.yaml:5:3: error: this NetworkPolicy has no `podSelector`",
        "objs.yaml:5:3: error: unknown field `podSelecter` in a NetworkPolicy's `spec`; did you mean `podSelector`?",
        "objs.yaml:6:17: error: unknown policy type `Ingres`",
        "objs.yaml:9:7: error: this peer selects nothing",
        "objs.yaml:10:16: error: a peer with `ipBlock` cannot also have",
        "objs.yaml:13:28: error: `endPort` 70 is below `port` 80",
        "objs.yaml:14:29: error: `endPort` needs a numeric `port`",
        "objs.yaml:15:19: error: unknown protocol `tcp`: expected TCP, UDP or SCTP",
        "objs.yaml:16:15: error: invalid port name `80`: write a port number without quotes",
        "objs.yaml:17:15: error: `port` 0 is out of range",
    ];
    for want in expect {
        assert!(e.lines().any(|l| l.starts_with(want)), "missing {want:?} in\n{e}");
    }
    assert_eq!(e.lines().count(), expect.len(), "{e}");
    let e = parse("apiVersion: v1\nkind: Pod\nmetadata: { name: a }\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: a, namespace: default }\n").unwrap_err();
    assert_eq!(e.to_string(), "objs.yaml:5:1: error: Pod default/a is defined twice (first at objs.yaml:1)");
    let e = parse("- a\n").unwrap_err();
    assert!(e.to_string().starts_with("objs.yaml:1:1: error: expected a Kubernetes object"), "{e}");
    let e = parse("kind: Pod\n").unwrap_err();
    assert_eq!(e.to_string(), "objs.yaml:1:1: error: this object has no `apiVersion`");
}

#[test]
fn policy_types_default_and_pod_endpoints() {
    let o = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: a }\nspec: { podSelector: {}, egress: [ {} ] }\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: b }\nspec: { podSelector: {}, egress: [] }\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: c }\nspec: { podSelector: {}, policyTypes: [Egress] }\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: { name: h }\nspec: { hostNetwork: true }\nstatus: { podIP: 10.0.0.1 }\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: { name: done }\nstatus: { podIP: 10.0.0.2, phase: Succeeded }\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: { name: pending }\nstatus: { phase: Pending }\n",
        )
        .unwrap();
    let types: Vec<(bool, bool)> = o.policies.iter().map(|p| (p.ingress_type, p.egress_type)).collect();
    assert_eq!(types, vec![(true, true), (true, false), (false, true)]);
    assert!(o.cluster.pods.iter().all(|p| !p.is_endpoint()));
    assert_eq!(o.cluster.pods[0].namespace, "default");
}
