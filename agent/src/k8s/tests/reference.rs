//! The upstream semantics, directly: random cases against the translation.

use super::*;

// ---- the upstream semantics, directly ------------------------------------------------------

/// The reference: the documented semantics evaluated for one flow, without classes.
fn reference(
    native: &Policy,
    cluster: &Cluster,
    nps: &[NetworkPolicy],
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let owner = |ipa: IpAddr| cluster.pods.iter().find(|p| p.is_endpoint() && p.ips.contains(&ipa));
    let (sp, dp) = (owner(src), owner(dst));
    let seg_of = |ipa: IpAddr, pod: Option<&Pod>| -> Option<usize> {
        let host = if ipa.is_ipv4() { 32 } else { 128 };
        let exact =
            native.segments.iter().position(|s| s.cidrs.iter().any(|c| c.prefix_len() == host && c.contains(&ipa)));
        if exact.is_some() {
            return exact;
        }
        if let Some(p) = pod {
            let sel = native.segments.iter().position(|s| {
                s.selector.as_ref().is_some_and(|sel| {
                    sel.namespace.as_deref().is_none_or(|n| n == p.namespace) && sel.selector.matches(&p.labels)
                })
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
        ports.as_ref().is_none_or(|v| {
            v.iter().any(|p| {
                let (lo, hi) = p.key_range();
                lo <= key && key <= hi
            })
        })
    };
    let matching = |action: Action| {
        native.rules.iter().any(|r| r.action == action && side(&r.from, ss) && side(&r.to, ds) && covers(&r.ports))
    };
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
                        d.ports.iter().any(|cp| {
                            cp.name.as_deref() == Some(n) && cp.protocol == np_port.protocol && cp.port == port
                        })
                    }),
                }
            })
    };
    let selecting = |pod: &Pod, egress: bool| -> Vec<&NetworkPolicy> {
        nps.iter()
            .filter(|np| {
                np.namespace == pod.namespace
                    && np.pod_selector.matches(&pod.labels)
                    && if egress { np.egress_type } else { np.ingress_type }
            })
            .collect()
    };
    let egress_ok = sp.is_none_or(|s| {
        let sel = selecting(s, true);
        sel.is_empty()
            || sel.iter().any(|np| np.egress.iter().any(|r| peer_match(np, &r.peers, dst, dp) && port_match(&r.ports)))
    });
    let ingress_ok = dp.is_none_or(|d| {
        let sel = selecting(d, false);
        sel.is_empty()
            || sel.iter().any(|np| np.ingress.iter().any(|r| peer_match(np, &r.peers, src, sp) && port_match(&r.ports)))
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
            0 => format!(
                "matchExpressions: [ {{ key: {key}, operator: In, values: [{}, {}] }} ]",
                rng.pick(values),
                rng.pick(values)
            ),
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
        objs.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns}, labels: {{ team: {} }} }}\n",
            rng.pick(&VALUES)
        ));
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
            2 => format!(
                "{{ namespaceSelector: {}, podSelector: {} }}",
                random_selector(rng, &KEYS, &VALUES),
                random_selector(rng, &KEYS, &VALUES)
            ),
            3 => "{ ipBlock: { cidr: 10.0.0.0/16, except: [10.0.1.0/24] } }".to_string(),
            _ => format!(
                "{{ ipBlock: {{ cidr: {} }} }}",
                rng.pick(&["10.0.2.0/24", "192.168.0.0/16", "0.0.0.0/0", "fd00::/8", "::/0"])
            ),
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
        let types =
            rng.pick(&["", "policyTypes: [Ingress]\n", "policyTypes: [Egress]\n", "policyTypes: [Ingress, Egress]\n"]);
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
    native.push_str(&format!(
        "  s2: {{ selector: {{ labels: {{ app: {} }} }}, cidrs: [192.168.1.0/24] }}\n",
        rng.pick(&VALUES)
    ));
    native.push_str(&format!("  s3: {{ cidrs: [{}] }}\n", rng.pick(&["10.0.1.1/32", "192.168.0.0/16", "fd00::/16"])));
    native.push_str("rules:\n");
    for i in 0..rng.below(4) {
        let side = |rng: &mut Rng| rng.pick(&["[s1]", "[s2]", "[s3]", "[world]", "[\"*\"]", "[s1, s3]"]);
        let ports =
            rng.pick(&["", ", ports: [\"80/tcp\"]", ", ports: [\"udp\"]", ", ports: [icmp, \"8000-8010/tcp\"]"]);
        let action = rng.pick(&["allow", "deny"]);
        native.push_str(&format!(
            "  - {{ name: r{i}, from: {}, to: {}{ports}, action: {action} }}\n",
            side(rng),
            side(rng)
        ));
    }
    (native, objs)
}

/// Random inventories, NetworkPolicies and native policies: the translated policy decides
/// every flow as the upstream semantics (evaluated directly) do.
#[test]
fn random_cases_agree_with_the_upstream_semantics() {
    let mut rng = Rng(0x5eed_1234_9876_4321);
    let probes: [(u8, u16); 9] =
        [(TCP, 80), (TCP, 81), (TCP, 8080), (TCP, 8005), (UDP, 53), (UDP, 80), (ICMP, 8), (SCTP, 0), (TCP, 22)];
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
        for a in [
            "10.0.1.200",
            "10.0.2.200",
            "10.0.9.9",
            "192.168.1.7",
            "192.168.9.9",
            "8.8.8.8",
            "fd00::99",
            "fe80::1",
            "10.0.1.1",
        ] {
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
