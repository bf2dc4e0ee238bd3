//! NetworkPolicies: selectors, rules, peers, ipBlocks, ports.

use ipnet::IpNet;

use super::*;

impl Reader {
    pub(super) fn network_policy(&mut self, n: &Node) {
        let Some((namespace, name, _)) = self.metadata(n, "NetworkPolicy", true) else { return };
        let Some(spec) = map_get(n, "spec") else {
            self.err(n.pos, format!("NetworkPolicy {namespace}/{name} has no `spec`"));
            return;
        };
        let Some(f) = known_fields(spec, "a NetworkPolicy's `spec`", NP_SPEC_FIELDS, &mut self.report()) else {
            self.err(spec.pos, format!("`spec` must be a mapping, not {}", spec.value.kind()));
            return;
        };
        let errors = self.errors.len();
        let mut np = NetworkPolicy { namespace, name, ..NetworkPolicy::default() };
        match field(&f, "podSelector") {
            Some(s) => np.pod_selector = read_selector(s, "podSelector", &mut self.report()).unwrap_or_default(),
            None => self.err(
                spec.pos,
                "this NetworkPolicy has no `podSelector`; write `podSelector: {}` to select every pod of its namespace",
            ),
        }
        if let Some(rules) = field(&f, "ingress") {
            np.ingress = self.rules(rules, "ingress", "from", INGRESS_FIELDS);
        }
        let egress_rules = field(&f, "egress");
        if let Some(rules) = egress_rules {
            np.egress = self.rules(rules, "egress", "to", EGRESS_FIELDS);
        }
        match field(&f, "policyTypes") {
            // The API server's default: Ingress, and Egress when there are egress rules.
            None => (np.ingress_type, np.egress_type) = (true, !np.egress.is_empty()),
            Some(t) => {
                for item in seq_of(self, t, "policyTypes", "a list such as [Ingress, Egress]") {
                    match &item.value {
                        Value::Str(s) if &**s == "Ingress" => np.ingress_type = true,
                        Value::Str(s) if &**s == "Egress" => np.egress_type = true,
                        Value::Str(s) => {
                            self.err(item.pos, format!("unknown policy type {}: expected Ingress or Egress", quote(s)))
                        }
                        v => self.err(item.pos, format!("a policy type must be Ingress or Egress, not {}", v.kind())),
                    }
                }
            }
        }
        if self.errors.len() == errors {
            self.policies.push(np);
        }
    }

    /// The `ingress` or `egress` rules; `peers` is `from` or `to`.
    pub(super) fn rules(
        &mut self,
        n: &Node,
        what: &str,
        peers: &str,
        fields: &'static [&'static str],
    ) -> Vec<NetpolRule> {
        let mut out = Vec::new();
        for item in seq_of(self, n, what, "a list of rules") {
            let owner = format!("an {what} rule");
            let Some(f) = known_fields(item, &owner, fields, &mut self.report()) else {
                self.err(
                    item.pos,
                    format!("{owner} must be a mapping with `{peers}` and `ports`, not {}", item.value.kind()),
                );
                continue;
            };
            let mut rule = NetpolRule::default();
            if let Some(list) = field(&f, peers) {
                for p in seq_of(self, list, peers, "a list of peers") {
                    if let Some(peer) = self.peer(p) {
                        rule.peers.push(peer);
                    }
                }
            }
            if let Some(list) = field(&f, "ports") {
                for p in seq_of(self, list, "ports", "a list of ports") {
                    if let Some(port) = self.np_port(p) {
                        rule.ports.push(port);
                    }
                }
            }
            out.push(rule);
        }
        out
    }

    pub(super) fn peer(&mut self, n: &Node) -> Option<Peer> {
        let Some(f) = known_fields(n, "a peer", PEER_FIELDS, &mut self.report()) else {
            self.err(
                n.pos,
                format!(
                    "a peer must be a mapping with `podSelector`, `namespaceSelector` or `ipBlock`, not {}",
                    n.value.kind()
                ),
            );
            return None;
        };
        let pods = field(&f, "podSelector").and_then(|s| read_selector(s, "podSelector", &mut self.report()));
        let namespaces =
            field(&f, "namespaceSelector").and_then(|s| read_selector(s, "namespaceSelector", &mut self.report()));
        match field(&f, "ipBlock") {
            Some(b) if pods.is_some() || namespaces.is_some() => {
                self.err(b.pos, "a peer with `ipBlock` cannot also have `podSelector` or `namespaceSelector`; make them separate peers");
                None
            }
            Some(b) => self.ip_block(b),
            None if pods.is_none() && namespaces.is_none() => {
                if !f.iter().any(|(k, _)| *k == "podSelector" || *k == "namespaceSelector") {
                    self.err(n.pos, "this peer selects nothing: give `podSelector`, `namespaceSelector` or `ipBlock` (an absent peer list means every source or destination)");
                }
                None
            }
            None => Some(Peer::Pods { namespaces, pods }),
        }
    }

    pub(super) fn ip_block(&mut self, n: &Node) -> Option<Peer> {
        let Some(f) = known_fields(n, "`ipBlock`", IPBLOCK_FIELDS, &mut self.report()) else {
            self.err(n.pos, format!("`ipBlock` must be a mapping with `cidr`, not {}", n.value.kind()));
            return None;
        };
        let Some(c) = field(&f, "cidr") else {
            self.err(n.pos, "this `ipBlock` has no `cidr`");
            return None;
        };
        let cidr = self.cidr(c)?;
        let mut except = Vec::new();
        if let Some(list) = field(&f, "except") {
            for e in seq_of(self, list, "except", "a list of CIDRs") {
                let Some(net) = self.cidr(e) else { continue };
                if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
                    self.err(
                        e.pos,
                        format!(
                            "the except {net} is not inside the ipBlock's cidr {cidr} (it must be a smaller part of it)"
                        ),
                    );
                    continue;
                }
                except.push(net);
            }
        }
        Some(Peer::IpBlock { cidr, except })
    }

    pub(super) fn cidr(&mut self, n: &Node) -> Option<IpNet> {
        let Value::Str(s) = &n.value else {
            self.err(n.pos, format!("a CIDR must be a string such as 10.0.0.0/8, not {}", n.value.kind()));
            return None;
        };
        match IpNet::from_str(s) {
            Ok(net) => {
                let trunc = net.trunc();
                if trunc != net {
                    self.warn(n.pos, format!("{} has host bits set; read as {trunc}", quote(s)));
                }
                Some(trunc)
            }
            Err(_) => {
                self.err(
                    n.pos,
                    format!("invalid CIDR {}; expected an address and a prefix length such as 10.0.0.0/8", quote(s)),
                );
                None
            }
        }
    }

    pub(super) fn np_port(&mut self, n: &Node) -> Option<NetpolPort> {
        let Some(f) = known_fields(n, "a port", PORT_FIELDS, &mut self.report()) else {
            self.err(
                n.pos,
                format!("a port must be a mapping such as {{ protocol: TCP, port: 80 }}, not {}", n.value.kind()),
            );
            return None;
        };
        let protocol = self.protocol(field(&f, "protocol"))?;
        let port = match field(&f, "port") {
            None | Some(Node { value: Value::Null, .. }) => None,
            Some(p @ Node { value: Value::Int(_), .. }) => Some(PortRef::Number(self.port_number(p, "port")?)),
            Some(Node { value: Value::Str(s), pos }) => match port_name_problem(s) {
                None => Some(PortRef::Name(String::from(&**s))),
                Some(problem) => {
                    self.err(*pos, format!("invalid port name {}: {problem}", quote(s)));
                    return None;
                }
            },
            Some(v) => {
                self.err(v.pos, format!("`port` must be a number or a port name, not {}", v.value.kind()));
                return None;
            }
        };
        let end_port = match field(&f, "endPort") {
            None | Some(Node { value: Value::Null, .. }) => None,
            Some(e) => {
                let end = self.port_number(e, "endPort")?;
                match &port {
                    Some(PortRef::Number(p)) if end >= *p => Some(end),
                    Some(PortRef::Number(p)) => {
                        self.err(e.pos, format!("`endPort` {end} is below `port` {p}"));
                        return None;
                    }
                    _ => {
                        self.err(e.pos, "`endPort` needs a numeric `port` (the start of the range)");
                        return None;
                    }
                }
            }
        };
        if protocol == Protocol::Sctp {
            self.warn(n.pos, "an SCTP port allows nothing here: the datapath enforces ports of TCP and UDP only (SCTP traffic stays denied where the policy isolates)");
        }
        Some(NetpolPort { protocol, port, end_port })
    }
}
