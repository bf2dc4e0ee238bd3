//! Reading Kubernetes objects: Namespaces, Pods and NetworkPolicies, as `kubectl get
//! pods,namespaces,networkpolicies -A -o yaml` prints them (`apiVersion: v1, kind: List,
//! items: [...]`), as multi-document YAML (`---`) of the same objects, or as JSON; any mix and
//! order across files. Other kinds are skipped with a warning. Every problem is reported as
//! `FILE:LINE:COL: error: ...` (warnings `FILE:LINE:COL: warning: ...`), using the
//! position-carrying document tree of the policy reader.
//!
//! Only what the translation needs is read, and checked as the API server would: names,
//! namespaces (absent: `default`), labels, a pod's addresses (`status.podIP`, `status.podIPs`),
//! phase, `spec.hostNetwork` and container ports, and a NetworkPolicy's whole `spec` (unknown
//! fields there are errors: a misspelt `podSelector` would change what the policy means).
//! Other fields of Pods and Namespaces (status conditions, managed fields, ...) are ignored.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;

use super::selector::{field, known_fields, not_a_string, read_labels, read_selector};
use super::{Cluster, ContainerPort, NetpolPort, NetpolRule, NetworkPolicy, Namespace, Peer, Pod, PortRef, Protocol};
use crate::policy::diag::{quote, utf8_diagnostic};
use crate::policy::node::{Limits, Node, Pos, Value, parse_tree_with};
use crate::policy::{Diagnostic, Diagnostics};

/// What a set of files holds.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub cluster: Cluster,
    /// Sorted by (namespace, name).
    pub policies: Vec<NetworkPolicy>,
    /// `FILE:LINE:COL: warning: ...` (skipped kinds, host bits, ...), in input order.
    pub warnings: Vec<Diagnostic>,
}

/// The most problems reported for one set of files; then one more says how many others.
const MAX_ERRORS: usize = 1000;

/// Reads and checks every file; `Err` holds every error (then nothing of the files is used).
pub fn load_objects(files: &[PathBuf]) -> Result<Objects, Diagnostics> {
    let mut read = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        match fs::read(f) {
            Err(e) => errors.push(diag(&origin, Pos::START, format!("error: cannot read the file: {e}"))),
            Ok(bytes) => read.push((origin, bytes)),
        }
    }
    let inputs: Vec<(String, &[u8])> = read.iter().map(|(o, b)| (o.clone(), &b[..])).collect();
    with_errors(errors, parse_files(&inputs))
}

/// `result`, unless `errors` (found before it) are not empty: then they and its own.
fn with_errors(mut errors: Vec<Diagnostic>, result: Result<Objects, Diagnostics>) -> Result<Objects, Diagnostics> {
    match result {
        Ok(objects) if errors.is_empty() => Ok(objects),
        Ok(_) => Err(Diagnostics(errors)),
        Err(d) => {
            errors.extend(d);
            Err(Diagnostics(errors))
        }
    }
}

/// As [`parse_objects`], from files' bytes (`(origin, bytes)`): text that is not UTF-8 is a
/// diagnostic too.
pub fn parse_files(files: &[(String, &[u8])]) -> Result<Objects, Diagnostics> {
    let mut texts = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for (origin, bytes) in files {
        match std::str::from_utf8(bytes) {
            Ok(text) => texts.push((origin.as_str(), text)),
            Err(e) => {
                let mut d = utf8_diagnostic(origin, bytes, e);
                d.message = format!("error: {}", d.message);
                errors.push(d);
            }
        }
    }
    with_errors(errors, parse_objects(&texts))
}

/// The object files of directory `dir` (a `--k8s-objects` directory, maybe a ConfigMap
/// volume): every `*.yaml`, `*.yml` and `*.json` regular file (through symlinks), names
/// starting with `.` skipped (the kubelet's `..data` and timestamped directories), sorted.
pub fn load_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| [".yaml", ".yml", ".json"].iter().any(|ext| n.ends_with(ext)))
        .map(|n| dir.join(n))
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and checks objects from `(origin, text)` inputs (origin names the text in
/// diagnostics, usually its path).
pub fn parse_objects(inputs: &[(&str, &str)]) -> Result<Objects, Diagnostics> {
    let mut r = Reader::default();
    for (input, (origin, text)) in inputs.iter().enumerate() {
        for (offset, doc) in documents(text) {
            r.origin = origin.to_string();
            r.input = input;
            r.offset = offset;
            match parse_tree_with(doc, Limits::POLICY) {
                Err(e) => r.err(e.pos, e.message),
                Ok(tree) => r.document(&tree),
            }
        }
    }
    r.finish()
}

/// The YAML documents of `text`, split at `---` lines, with the number of lines before each
/// (a JSON text is one document). A `---` with content after it on its line starts the
/// document it belongs to; a `...` line ends one.
fn documents(text: &str) -> Vec<(u32, &str)> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    if body.trim_start().starts_with('{') {
        return vec![(0, body)];
    }
    let mut out = Vec::new();
    let (mut start, mut start_line) = (0usize, 0u32);
    let (mut at, mut line) = (0usize, 0u32);
    let mut ended = false;
    for l in body.split_inclusive('\n') {
        let content = l.trim_end_matches(['\n', '\r']);
        let bare = |marker: &str| {
            content.strip_prefix(marker).is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
        };
        let next = at + l.len();
        if content.starts_with("---") && (content.len() == 3 || content[3..].starts_with([' ', '\t'])) {
            if !ended {
                out.push((start_line, &body[start..at]));
            }
            ended = false;
            // A bare marker: the document starts on the next line; with content, on this one.
            (start, start_line) = if bare("---") { (next, line + 1) } else { (at, line) };
        } else if bare("...") {
            if !ended {
                out.push((start_line, &body[start..at]));
            }
            ended = true;
        }
        at = next;
        line += 1;
    }
    if !ended {
        out.push((start_line, &body[start..]));
    }
    out.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    out
}

fn diag(origin: &str, pos: Pos, message: String) -> Diagnostic {
    let pos = pos.or(Pos::START);
    Diagnostic { origin: origin.to_owned(), line: pos.line as usize, col: pos.col as usize, message }
}

/// Where an object was first defined, to report a second definition.
#[derive(Clone)]
struct Defined {
    origin: String,
    line: usize,
}

#[derive(Default)]
struct Reader {
    origin: String,
    /// The input being read (its index), to sort problems by input, then position.
    input: usize,
    /// Lines of the file before the current document.
    offset: u32,
    errors: Vec<(usize, Diagnostic)>,
    omitted: usize,
    warnings: Vec<(usize, Diagnostic)>,
    cluster: Cluster,
    policies: Vec<NetworkPolicy>,
    defined: HashMap<(&'static str, String, String), Defined>,
}

const NP_SPEC_FIELDS: &[&str] = &["podSelector", "policyTypes", "ingress", "egress"];
const INGRESS_FIELDS: &[&str] = &["from", "ports"];
const EGRESS_FIELDS: &[&str] = &["to", "ports"];
const PEER_FIELDS: &[&str] = &["podSelector", "namespaceSelector", "ipBlock"];
const IPBLOCK_FIELDS: &[&str] = &["cidr", "except"];
const PORT_FIELDS: &[&str] = &["protocol", "port", "endPort"];

impl Reader {
    fn at(&self, pos: Pos) -> Pos {
        let pos = pos.or(Pos::START);
        Pos { line: pos.line.saturating_add(self.offset), col: pos.col }
    }

    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        if self.errors.len() >= MAX_ERRORS {
            self.omitted += 1;
            return;
        }
        let d = diag(&self.origin, self.at(pos), format!("error: {}", message.into()));
        self.errors.push((self.input, d));
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        let d = diag(&self.origin, self.at(pos), format!("warning: {}", message.into()));
        self.warnings.push((self.input, d));
    }

    /// A reporter for the selector readers.
    fn report(&mut self) -> impl FnMut(Pos, String) + '_ {
        move |p, m| self.err(p, m)
    }

    fn finish(mut self) -> Result<Objects, Diagnostics> {
        let sorted = |mut v: Vec<(usize, Diagnostic)>| -> Vec<Diagnostic> {
            v.sort_by_key(|(input, d)| (*input, d.line, d.col));
            v.into_iter().map(|(_, d)| d).collect()
        };
        if !self.errors.is_empty() {
            let mut errors = sorted(std::mem::take(&mut self.errors));
            if self.omitted > 0
                && let Some(last) = errors.last().cloned()
            {
                errors.push(Diagnostic {
                    message: format!("error: {} more problems are not shown; only the first {MAX_ERRORS} are reported", self.omitted),
                    ..last
                });
            }
            return Err(Diagnostics(errors));
        }
        self.cluster.sort();
        self.policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(Objects { cluster: self.cluster, policies: self.policies, warnings: sorted(self.warnings) })
    }

    /// One YAML document or JSON text: an object, or a list of them.
    fn document(&mut self, root: &Node) {
        match root.value {
            Value::Null => {}
            Value::Map(_) => self.object(root, 0),
            ref v => self.err(root.pos, format!("expected a Kubernetes object (a mapping with `apiVersion` and `kind`), not {}", v.kind())),
        }
    }

    fn object(&mut self, n: &Node, depth: usize) {
        let Value::Map(entries) = &n.value else {
            self.err(n.pos, format!("an item of a list must be a Kubernetes object (a mapping with `apiVersion` and `kind`), not {}", n.value.kind()));
            return;
        };
        let get = |name: &str| entries.iter().find(|(k, _)| matches!(&k.value, Value::Str(s) if &**s == name)).map(|(_, v)| v);
        let string = |r: &mut Reader, name: &str| -> Option<String> {
            match get(name) {
                None => {
                    r.err(n.pos, format!("this object has no `{name}`"));
                    None
                }
                Some(Node { value: Value::Str(s), .. }) => Some(String::from(&**s)),
                Some(v) => {
                    r.err(v.pos, format!("`{name}` must be a string, not {}", not_a_string(&v.value)));
                    None
                }
            }
        };
        let (Some(api), Some(kind)) = (string(self, "apiVersion"), string(self, "kind")) else { return };
        let at = get("kind").map_or(n.pos, |k| k.pos);
        match (api.as_str(), kind.as_str()) {
            ("v1", "List") | (_, "PodList" | "NamespaceList" | "NetworkPolicyList") if depth == 0 => match get("items") {
                Some(Node { value: Value::Seq(items), .. }) => {
                    for item in items.iter() {
                        self.object(item, depth + 1);
                    }
                }
                Some(Node { value: Value::Null, .. }) => {}
                Some(v) => self.err(v.pos, format!("`items` of a {kind} must be a list of objects, not {}", v.value.kind())),
                None => self.err(n.pos, format!("this {kind} has no `items`")),
            },
            ("v1", "Namespace") => self.namespace(n),
            ("v1", "Pod") => self.pod(n),
            ("networking.k8s.io/v1", "NetworkPolicy") => self.network_policy(n),
            (_, "Namespace" | "Pod" | "NetworkPolicy") => {
                let want = if kind == "NetworkPolicy" { "networking.k8s.io/v1" } else { "v1" };
                self.warn(at, format!("skipped: a {kind} of apiVersion {} (this agent reads {kind} of {want})", quote(&api)));
            }
            _ => self.warn(at, format!("skipped: kind {} ({}) is not read (only Namespace, Pod, NetworkPolicy and lists of them)", quote(&kind), quote(&api))),
        }
    }

    /// `metadata`: the name, the namespace (`None` for a namespace itself) and the labels.
    fn metadata(&mut self, n: &Node, kind: &'static str, namespaced: bool) -> Option<(String, String, super::Labels)> {
        let meta = map_get(n, "metadata");
        let Some(meta) = meta.filter(|m| matches!(m.value, Value::Map(_))) else {
            self.err(meta.map_or(n.pos, |m| m.pos), format!("this {kind} has no `metadata` mapping with its `name`"));
            return None;
        };
        let name = match map_get(meta, "name") {
            Some(Node { value: Value::Str(s), .. }) if !s.is_empty() => String::from(&**s),
            Some(v) => {
                self.err(v.pos, format!("`metadata.name` of a {kind} must be a non-empty string, not {}", not_a_string(&v.value)));
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
                self.err(v.pos, format!("`metadata.namespace` must be a non-empty string, not {}", not_a_string(&v.value)));
                return None;
            }
        };
        let labels = match map_get(meta, "labels") {
            Some(l) => read_labels(l, "metadata.labels", &mut self.report()),
            None => super::Labels::new(),
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

    fn namespace(&mut self, n: &Node) {
        if let Some((_, name, labels)) = self.metadata(n, "Namespace", false) {
            self.cluster.namespaces.insert(name.clone(), Namespace { name, labels });
        }
    }

    fn pod(&mut self, n: &Node) {
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

    fn pod_ip(&mut self, n: &Node, ips: &mut Vec<IpAddr>) {
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

    fn container_port(&mut self, n: &Node) -> Option<ContainerPort> {
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
    fn protocol(&mut self, n: Option<&Node>) -> Option<Protocol> {
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

    fn port_number(&mut self, n: &Node, what: &str) -> Option<u16> {
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

    fn network_policy(&mut self, n: &Node) {
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
            None => self.err(spec.pos, "this NetworkPolicy has no `podSelector`; write `podSelector: {}` to select every pod of its namespace"),
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
                        Value::Str(s) => self.err(item.pos, format!("unknown policy type {}: expected Ingress or Egress", quote(s))),
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
    fn rules(&mut self, n: &Node, what: &str, peers: &str, fields: &'static [&'static str]) -> Vec<NetpolRule> {
        let mut out = Vec::new();
        for item in seq_of(self, n, what, "a list of rules") {
            let owner = format!("an {what} rule");
            let Some(f) = known_fields(item, &owner, fields, &mut self.report()) else {
                self.err(item.pos, format!("{owner} must be a mapping with `{peers}` and `ports`, not {}", item.value.kind()));
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

    fn peer(&mut self, n: &Node) -> Option<Peer> {
        let Some(f) = known_fields(n, "a peer", PEER_FIELDS, &mut self.report()) else {
            self.err(n.pos, format!("a peer must be a mapping with `podSelector`, `namespaceSelector` or `ipBlock`, not {}", n.value.kind()));
            return None;
        };
        let pods = field(&f, "podSelector").and_then(|s| read_selector(s, "podSelector", &mut self.report()));
        let namespaces = field(&f, "namespaceSelector").and_then(|s| read_selector(s, "namespaceSelector", &mut self.report()));
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

    fn ip_block(&mut self, n: &Node) -> Option<Peer> {
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
                    self.err(e.pos, format!("the except {net} is not inside the ipBlock's cidr {cidr} (it must be a smaller part of it)"));
                    continue;
                }
                except.push(net);
            }
        }
        Some(Peer::IpBlock { cidr, except })
    }

    fn cidr(&mut self, n: &Node) -> Option<IpNet> {
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
                self.err(n.pos, format!("invalid CIDR {}; expected an address and a prefix length such as 10.0.0.0/8", quote(s)));
                None
            }
        }
    }

    fn np_port(&mut self, n: &Node) -> Option<NetpolPort> {
        let Some(f) = known_fields(n, "a port", PORT_FIELDS, &mut self.report()) else {
            self.err(n.pos, format!("a port must be a mapping such as {{ protocol: TCP, port: 80 }}, not {}", n.value.kind()));
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

/// Why `s` is not a valid port name (IANA service name: 1-15 lower-case letters, digits and
/// `-`, with a letter, no `-` at either end or twice in a row), or `None`.
fn port_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 15 {
        return Some("a port name has 1 to 15 characters");
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some("write a port number without quotes");
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("a port name has only lower-case letters, digits and `-`");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Some("a `-` cannot start or end a port name, or follow another");
    }
    None
}

/// The value of key `name` of mapping `n`.
fn map_get<'n, 't>(n: &'n Node<'t>, name: &str) -> Option<&'n Node<'t>> {
    let Value::Map(entries) = &n.value else { return None };
    entries.iter().find(|(k, _)| matches!(&k.value, Value::Str(s) if &**s == name)).map(|(_, v)| v)
}

/// The items of a list (nothing for anything else: fields the translation only browses).
fn seq<'n, 't>(n: &'n Node<'t>) -> &'n [Node<'t>] {
    match &n.value {
        Value::Seq(items) => items,
        _ => &[],
    }
}

/// The items of list field `what`, after reporting that anything else must be `expected`.
fn seq_of<'n, 't>(r: &mut Reader, n: &'n Node<'t>, what: &str, expected: &str) -> &'n [Node<'t>] {
    match &n.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        v => {
            r.err(n.pos, format!("`{what}` must be {expected}, not {}", v.kind()));
            &[]
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(np.ingress[0].ports[1], NetpolPort { protocol: Protocol::Udp, port: Some(PortRef::Number(5000)), end_port: Some(5010) });
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
        assert!(e.starts_with("a.yaml:1:4: error: ") && e.contains("\na.yaml:3:1: error: this object has no `apiVersion`"), "{e}");
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
}
