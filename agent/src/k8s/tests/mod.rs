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
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: \"{ns}\", labels: {{ ns: \"{ns}\" }} }}\n"
        ));
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
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: {name}, namespace: \"{ns}\" }}\nspec:\n{spec}"
    )
}

/// The translated policy of `native` (YAML; empty: `version: 1`) and objects `text`, checked
/// to validate again as written.
fn translated(native: &str, text: &str) -> Translation {
    let native = if native.is_empty() { "version: 1\n" } else { native };
    let native = policy::parse(native, "native.yaml").unwrap_or_else(|d| panic!("{d}"));
    let objs = parse_objects(&[("objs.yaml", text)]).unwrap_or_else(|d| panic!("{d}"));
    let t = translate(&native, &objs.cluster, &objs.policies).unwrap();
    let again =
        policy::parse(&t.policy.to_yaml(), "out.yaml").unwrap_or_else(|d| panic!("{d}\n{}", t.policy.to_yaml()));
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

mod native;
mod reference;
mod semantics;

#[test]
fn pod_addresses_are_named() {
    let objs = parse_objects(&[("o.yaml", &model())]).unwrap();
    let inv = Inventory::of(&objs.cluster);
    assert_eq!(inv.pod(ip("10.0.2.3")), Some("y/c"));
    assert_eq!(inv.pod(ip("10.0.9.9")), None);
    assert_eq!(inv.len(), 9);
}
