//! Namespaces and pods: metadata, addresses, container ports.

use std::net::IpAddr;

use super::*;

impl Reader {
    /// `metadata`: the name, the namespace (`None` for a namespace itself) and the labels.
    pub(super) fn metadata(
        &mut self,
        n: &Node,
        kind: &'static str,
        namespaced: bool,
    ) -> Option<(String, String, crate::policy::selector::Labels)> {
        let meta = map_get(n, "metadata");
        let Some(meta) = meta.filter(|m| matches!(m.value, Value::Map(_))) else {
            self.err(meta.map_or(n.pos, |m| m.pos), format!("this {kind} has no `metadata` mapping with its `name`"));
            return None;
        };
        let name = match map_get(meta, "name") {
            Some(Node { value: Value::Str(s), .. }) if !s.is_empty() => String::from(&**s),
            Some(v) => {
                self.err(
                    v.pos,
                    format!("`metadata.name` of a {kind} must be a non-empty string, not {}", not_a_string(&v.value)),
                );
                return None;
            }
            None => {
                self.err(meta.pos, format!("this {kind} has no `metadata.name`"));
                return None;
            }
        };
        let namespace = match map_get(meta, "namespace") {
            _ if !namespaced => String::new(),
            None | Some(Node { value: Value::Null, .. }) => "default".to_owned(),
            Some(Node { value: Value::Str(s), .. }) if !s.is_empty() => String::from(&**s),
            Some(v) => {
                self.err(
                    v.pos,
                    format!("`metadata.namespace` must be a non-empty string, not {}", not_a_string(&v.value)),
                );
                return None;
            }
        };
        let labels = match map_get(meta, "labels") {
            Some(l) => read_labels(l, "metadata.labels", &mut self.report()),
            None => crate::policy::selector::Labels::new(),
        };
        let key = (kind, namespace.clone(), name.clone());
        let line = self.at(n.pos).line as usize;
        if let Some(first) = self.defined.get(&key) {
            let what = if namespaced { format!("{kind} {namespace}/{name}") } else { format!("{kind} {name}") };
            let msg = format!("{what} is defined twice (first at {}:{})", first.origin, first.line);
            self.err(n.pos, msg);
            return None;
        }
        self.defined.insert(key, Defined { origin: self.origin.clone(), line });
        Some((namespace, name, labels))
    }

    pub(super) fn namespace(&mut self, n: &Node) {
        if let Some((_, name, labels)) = self.metadata(n, "Namespace", false) {
            self.cluster.namespaces.insert(name.clone(), Namespace { name, labels });
        }
    }

    pub(super) fn pod(&mut self, n: &Node) {
        let Some((namespace, name, labels)) = self.metadata(n, "Pod", true) else { return };
        let mut pod = Pod { namespace, name, labels, ..Pod::default() };
        if let Some(spec) = map_get(n, "spec") {
            match map_get(spec, "hostNetwork") {
                None | Some(Node { value: Value::Null, .. }) => {}
                Some(Node { value: Value::Bool(b), .. }) => pod.host_network = *b,
                Some(v) => self.err(v.pos, format!("`spec.hostNetwork` must be true or false, not {}", v.value.kind())),
            }
            for containers in ["containers", "initContainers"] {
                let Some(list) = map_get(spec, containers) else { continue };
                for c in seq(list) {
                    let Some(ports) = map_get(c, "ports") else { continue };
                    for p in seq(ports) {
                        if let Some(cp) = self.container_port(p) {
                            pod.ports.push(cp);
                        }
                    }
                }
            }
        }
        if let Some(status) = map_get(n, "status") {
            match map_get(status, "phase") {
                None | Some(Node { value: Value::Null, .. }) => {}
                Some(Node { value: Value::Str(s), .. }) => pod.phase = Some(String::from(&**s)),
                Some(v) => self.err(v.pos, format!("`status.phase` must be a string, not {}", v.value.kind())),
            }
            if let Some(ip) = map_get(status, "podIP") {
                self.pod_ip(ip, &mut pod.ips);
            }
            if let Some(ips) = map_get(status, "podIPs") {
                for entry in seq(ips) {
                    match map_get(entry, "ip") {
                        Some(ip) => self.pod_ip(ip, &mut pod.ips),
                        None => self.err(entry.pos, "an entry of `status.podIPs` must be a mapping with `ip`"),
                    }
                }
            }
        }
        self.cluster.pods.push(pod);
    }

    pub(super) fn pod_ip(&mut self, n: &Node, ips: &mut Vec<IpAddr>) {
        match &n.value {
            Value::Null => {}
            Value::Str(s) if s.is_empty() => {}
            Value::Str(s) => match IpAddr::from_str(s) {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => self.err(n.pos, format!("{} is not an IP address", quote(s))),
            },
            v => self.err(n.pos, format!("a pod IP must be a string, not {}", v.kind())),
        }
    }

    pub(super) fn container_port(&mut self, n: &Node) -> Option<ContainerPort> {
        let port = match map_get(n, "containerPort") {
            Some(v) => self.port_number(v, "containerPort")?,
            None => {
                self.err(n.pos, "a container port has no `containerPort`");
                return None;
            }
        };
        let name = match map_get(n, "name") {
            None | Some(Node { value: Value::Null, .. }) => None,
            Some(Node { value: Value::Str(s), .. }) => Some(String::from(&**s)),
            Some(v) => {
                self.err(v.pos, format!("the `name` of a container port must be a string, not {}", v.value.kind()));
                None
            }
        };
        let protocol = self.protocol(map_get(n, "protocol"))?;
        Some(ContainerPort { name, port, protocol })
    }

    /// `protocol` (absent: TCP).
    pub(super) fn protocol(&mut self, n: Option<&Node>) -> Option<Protocol> {
        match n {
            None | Some(Node { value: Value::Null, .. }) => Some(Protocol::Tcp),
            Some(Node { value: Value::Str(s), pos }) => match Protocol::from_name(s) {
                Some(p) => Some(p),
                None => {
                    self.err(*pos, format!("unknown protocol {}: expected TCP, UDP or SCTP", quote(s)));
                    None
                }
            },
            Some(v) => {
                self.err(v.pos, format!("`protocol` must be TCP, UDP or SCTP, not {}", v.value.kind()));
                None
            }
        }
    }

    pub(super) fn port_number(&mut self, n: &Node, what: &str) -> Option<u16> {
        match n.value {
            Value::Int(v) => match u16::try_from(v.get()) {
                Ok(p) if p >= 1 => Some(p),
                _ => {
                    self.err(n.pos, format!("`{what}` {v} is out of range; ports are 1 to 65535"));
                    None
                }
            },
            ref v => {
                self.err(n.pos, format!("`{what}` must be a port number, not {}", v.kind()));
                None
            }
        }
    }
}
