//! The upstream Kubernetes NetworkPolicy e2e model (kubernetes test/e2e/network/netpol), live:
//! three namespaces x, y, z with pods a, b, c each, every pod serving 80 and 81 on TCP and UDP,
//! joined to one node as a CNI joins them, probed for real as a 9x9 truth table per port and
//! protocol; the cluster objects as `kubectl get pods,namespaces -A -o yaml` prints them; and the
//! reader of the cases in tests/data/k8s (see its README.md for the format).
//!
//! The node: a network namespace with one veth per pod (the pod side is its `eth0`, the node
//! side a name starting with a prefix unique to this topology, so that `<prefix>*` matches
//! exactly these), a /32 route per pod via its veth, proxy ARP and forwarding, as Calico does.
//! Each pod has its address as a /32 and the pod network on-link, so it ARPs for every peer
//! and the node answers. Nothing else is routed: traffic stays between these namespaces.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Netns, Probe, Servers, TempDir, enter, unique, veth};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// Pods of the model; pod `i` is `NAMESPACES[i / 3]/POD_NAMES[i % 3]`.
pub const PODS: usize = 9;
/// What every matrix probes, in this order: the ports and protocols every pod serves.
pub const PROBES: [Probe; 4] = [Probe::Tcp(80), Probe::Tcp(81), Probe::Udp(80), Probe::Udp(81)];
/// How long one probe waits: a TCP handshake must complete, a UDP request be answered, within it.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);
/// The network every pod address is in, and that pods reach on-link (through the node's proxy ARP).
pub const POD_NETWORK: &str = "10.0.0.0/8";
/// The node of the objects (`spec.nodeName`, `status.hostIP`): a name and address in the
/// objects only, not configured anywhere.
pub const NODE_NAME: &str = "node-1";
pub const NODE_IP: &str = "192.168.122.11";
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// `x/a` for pod 0.
pub fn pod_name(i: usize) -> String {
    format!("{}/{}", NAMESPACES[i / 3], POD_NAMES[i % 3])
}

/// The pod of `ns/name`.
pub fn pod_index(s: &str) -> Option<usize> {
    let (ns, name) = s.split_once('/')?;
    let n = NAMESPACES.iter().position(|x| *x == ns)?;
    let p = POD_NAMES.iter().position(|x| *x == name)?;
    Some(n * 3 + p)
}

/// The pods' fixed addresses (one node's pod CIDR, 10.244.0.0/24): x/a 10.244.0.10, x/b .11,
/// x/c .12, y/a .20, ..., z/c .32. Fixed, so that a case can name one in an ipBlock.
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, (10 * (i / 3 + 1) + i % 3) as u8)
}

/// `80/tcp`: how the cases name a probe.
pub fn probe_name(p: Probe) -> String {
    let (proto, port) = p.proto_port();
    format!("{port}/{proto}")
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    let out = ns.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    assert!(out.status.success(), "sysctl {key}={value} in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

/// One pod's network namespace and the node side of its veth.
pub struct PodNet {
    pub netns: Netns,
    pub node_iface: String,
}

/// The node and its nine pods, serving; all removed on drop (the servers stopped first, then the
/// namespaces deleted, which takes the veths with them).
pub struct Topology {
    _servers: Vec<Servers>,
    pub pods: Vec<PodNet>,
    pub node: Netns,
    /// The node-side interface names' common prefix, unique to this topology.
    pub prefix: String,
}

impl Topology {
    pub fn new() -> Topology {
        let node = Netns::new("zkn");
        // The separator keeps one topology's prefix from being a prefix of another's.
        let prefix = format!("{}-", unique("zk"));
        let mut pods = Vec::new();
        for i in 0..PODS {
            let netns = Netns::new("zkp");
            let node_iface = format!("{prefix}{}{}", NAMESPACES[i / 3], POD_NAMES[i % 3]);
            veth(&node, &node_iface, &netns, "eth0");
            netns.ip(&["addr", "add", &format!("{}/32", pod_ip(i)), "dev", "eth0"]);
            netns.ip(&["route", "add", POD_NETWORK, "dev", "eth0"]);
            node.ip(&["route", "add", &format!("{}/32", pod_ip(i)), "dev", &node_iface]);
            sysctl(&node, &format!("net.ipv4.conf.{node_iface}.proxy_arp"), "1");
            // Proxy ARP answers at once (the default delays a reply up to 0.8 s, beyond a probe).
            sysctl(&node, &format!("net.ipv4.neigh.{node_iface}.proxy_delay"), "0");
            pods.push(PodNet { netns, node_iface });
        }
        sysctl(&node, "net.ipv4.ip_forward", "1");
        let servers = pods.iter().map(|p| Servers::start(&p.netns, &[80, 81], &[80, 81])).collect();
        Topology { _servers: servers, pods, node, prefix }
    }

    /// The node-side interfaces, in pod order (what `--iface` takes, one each).
    pub fn node_ifaces(&self) -> Vec<&str> {
        self.pods.iter().map(|p| p.node_iface.as_str()).collect()
    }

    /// The glob matching exactly this topology's node-side interfaces.
    pub fn iface_pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// Every ordered pair of pods (the diagonal included) on every probe, all at once: each probe
    /// from a thread in the client pod's namespace, each given [`PROBE_WAIT`].
    pub fn probe(&self) -> Matrix {
        let paths: Vec<String> = self.pods.iter().map(|p| p.netns.path()).collect();
        let mut m = Matrix([Truth([[false; PODS]; PODS]); 4]);
        std::thread::scope(|s| {
            let mut running = Vec::new();
            for (k, probe) in PROBES.iter().enumerate() {
                for (from, path) in paths.iter().enumerate() {
                    for to in 0..PODS {
                        let probe = *probe;
                        running.push(((k, from, to), s.spawn(move || {
                            enter(path);
                            reachable(probe, pod_ip(to))
                        })));
                    }
                }
            }
            for ((k, from, to), h) in running {
                m.0[k].0[from][to] = h.join().expect("probe thread");
            }
        });
        m
    }

    /// Probes until what is observed is `expected` (the diagonal aside), in a round that started
    /// no earlier than `not_before`, or `within` has passed: then the error shows the tables. A
    /// change takes a moment to be enforced and a busy machine may miss an answer once, so a
    /// wrong round is probed again; a flow that must be denied can never seem allowed.
    pub fn await_matrix(&self, expected: &Matrix, not_before: Instant, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let round = Instant::now();
            let observed = self.probe();
            let loopback = observed.loopback_failures();
            if expected.mismatches(&observed).is_empty() && loopback.is_empty() && round >= not_before {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                let mut msg = expected.report(&observed);
                if !loopback.is_empty() {
                    let _ = write!(msg, "a pod did not reach itself (loopback, never judged): {}", loopback.join(", "));
                }
                return Err(msg);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// One probe from the calling thread's namespace: a TCP handshake that completes, or a UDP
/// datagram answered (sent again every 250 ms), within [`PROBE_WAIT`].
fn reachable(probe: Probe, dst: Ipv4Addr) -> bool {
    let deadline = Instant::now() + PROBE_WAIT;
    match probe {
        Probe::Tcp(port) => TcpStream::connect_timeout(&SocketAddr::from((dst, port)), PROBE_WAIT).is_ok(),
        Probe::Udp(port) => {
            let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else { return false };
            if s.connect((dst, port)).is_err() {
                return false;
            }
            let mut buf = [0u8; 16];
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                let wait = (deadline - now).min(Duration::from_millis(250));
                let _ = s.send(b"ping");
                if s.set_read_timeout(Some(wait)).is_err() {
                    return false;
                }
                match s.recv(&mut buf) {
                    Ok(4) => return true,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    // An ICMP error, say: wait out this try rather than spin.
                    Err(_) => std::thread::sleep(wait),
                }
            }
        }
        Probe::Icmp => panic!("the model probes TCP and UDP only"),
    }
}

/// A truth table: `0[from][to]` is true when `from` reaches `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truth(pub [[bool; PODS]; PODS]);

impl Truth {
    /// Upstream's reachability, written compactly: lines `FROM -> TO allow|deny` applied in
    /// order, the first `* -> * allow` or `* -> * deny` (every cell is given); FROM and TO are
    /// `*`, `ns/*`, `*/pod` or `ns/pod`, as upstream's `ExpectPeer` takes them.
    pub fn parse(lines: &[String]) -> Result<Truth, String> {
        let mut t = Truth([[false; PODS]; PODS]);
        for (n, line) in lines.iter().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [from, "->", to, verdict] = words[..] else {
                return Err(format!("table line {:?} is not `FROM -> TO allow|deny`", line));
            };
            let allow = match verdict {
                "allow" => true,
                "deny" => false,
                other => return Err(format!("table line {line:?}: {other:?} is neither allow nor deny")),
            };
            if n == 0 && (from, to) != ("*", "*") {
                return Err(format!("a table starts with `* -> * allow` or `* -> * deny`, not {line:?}"));
            }
            let (from, to) = (peer(from)?, peer(to)?);
            for (i, row) in t.0.iter_mut().enumerate() {
                for (j, cell) in row.iter_mut().enumerate() {
                    if from.contains(&i) && to.contains(&j) {
                        *cell = allow;
                    }
                }
            }
        }
        if lines.is_empty() {
            return Err("a table needs at least `* -> * allow`".into());
        }
        Ok(t)
    }

    /// Upstream's rendering: a row per client, a column per server, `.` reached, `X` not; with
    /// `against`, cells that differ from it are shown as `*.*` or `*X*`.
    pub fn render(&self, against: Option<&Truth>) -> String {
        let mut s = String::from("-     ");
        for j in 0..PODS {
            let _ = write!(s, " {:^5}", pod_name(j));
        }
        s.push('\n');
        for i in 0..PODS {
            let _ = write!(s, "{:<6}", pod_name(i));
            for j in 0..PODS {
                let c = if self.0[i][j] { "." } else { "X" };
                let differs = against.is_some_and(|a| a.0[i][j] != self.0[i][j] && i != j);
                let cell = if differs { format!("*{c}*") } else { c.to_string() };
                let _ = write!(s, " {cell:^5}");
            }
            s.push('\n');
        }
        s
    }
}

/// Every `ns/pod` a table peer names.
fn peer(spec: &str) -> Result<BTreeSet<usize>, String> {
    let (ns, pod) = if spec == "*" { ("*", "*") } else { spec.split_once('/').ok_or(format!("{spec:?} is not `*`, `ns/pod`, `ns/*` or `*/pod`"))? };
    let ok_ns = ns == "*" || NAMESPACES.contains(&ns);
    let ok_pod = pod == "*" || POD_NAMES.contains(&pod);
    if !ok_ns || !ok_pod {
        return Err(format!("{spec:?} names no pod of the model (namespaces x, y, z; pods a, b, c)"));
    }
    Ok((0..PODS)
        .filter(|i| (ns == "*" || NAMESPACES[i / 3] == ns) && (pod == "*" || POD_NAMES[i % 3] == pod))
        .collect())
}

/// A truth table per probe, in the order of [`PROBES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matrix(pub [Truth; 4]);

impl Matrix {
    /// Everything reaches everything (no NetworkPolicy).
    pub fn all_allowed() -> Matrix {
        Matrix([Truth([[true; PODS]; PODS]); 4])
    }

    /// (probe, from, to) where `observed` differs, the diagonal (a pod to itself, over its own
    /// loopback: it never reaches the node) left out as upstream leaves it out.
    pub fn mismatches(&self, observed: &Matrix) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for k in 0..PROBES.len() {
            for i in 0..PODS {
                for j in (0..PODS).filter(|j| *j != i) {
                    if self.0[k].0[i][j] != observed.0[k].0[i][j] {
                        v.push((k, i, j));
                    }
                }
            }
        }
        v
    }

    /// Pods that did not reach themselves: never judged by the node, so a server not answering.
    fn loopback_failures(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (k, p) in PROBES.iter().enumerate() {
            for i in (0..PODS).filter(|i| !self.0[k].0[*i][*i]) {
                v.push(format!("{} on {}", pod_name(i), probe_name(*p)));
            }
        }
        v
    }

    /// Expected and observed tables of every probe that differs.
    pub fn report(&self, observed: &Matrix) -> String {
        let wrong = self.mismatches(observed);
        let mut s = format!("{} of {} probes differ\n", wrong.len(), PROBES.len() * PODS * (PODS - 1));
        for (k, p) in PROBES.iter().enumerate() {
            if wrong.iter().any(|w| w.0 == k) {
                let _ = write!(
                    s,
                    "{}: expected\n{}observed (*X* or *.*: differs)\n{}",
                    probe_name(*p),
                    self.0[k].render(None),
                    observed.0[k].render(Some(&self.0[k]))
                );
            }
        }
        s
    }
}

// --- the cluster's objects

pub type Labels = BTreeMap<String, String>;

/// The model's Namespaces and Pods as the API server holds them: labels that steps change, a
/// resourceVersion each bumps.
#[derive(Clone, Debug)]
pub struct Cluster {
    namespace_labels: [Labels; 3],
    pod_labels: [Labels; PODS],
    namespace_versions: [u64; 3],
    pod_versions: [u64; PODS],
    next_version: u64,
}

impl Cluster {
    /// The upstream model's labels: `kubernetes.io/metadata.name: <ns>` on namespaces,
    /// `pod: <name>` on pods.
    pub fn upstream() -> Cluster {
        let label = |k: &str, v: &str| Labels::from([(k.to_string(), v.to_string())]);
        Cluster {
            namespace_labels: NAMESPACES.map(|n| label("kubernetes.io/metadata.name", n)),
            pod_labels: std::array::from_fn(|i| label("pod", POD_NAMES[i % 3])),
            namespace_versions: std::array::from_fn(|i| 1000 + i as u64),
            pod_versions: std::array::from_fn(|i| 1100 + i as u64),
            next_version: 2000,
        }
    }

    /// A pod's labels replaced (as `kubectl label --overwrite` leaves them).
    pub fn set_pod_labels(&mut self, pod: usize, labels: Labels) {
        self.pod_labels[pod] = labels;
        self.next_version += 1;
        self.pod_versions[pod] = self.next_version;
    }

    pub fn set_namespace_labels(&mut self, ns: usize, labels: Labels) {
        self.namespace_labels[ns] = labels;
        self.next_version += 1;
        self.namespace_versions[ns] = self.next_version;
    }

    /// The `v1 List` of `kubectl get pods,namespaces -A`: pods by namespace and name, then namespaces.
    pub fn objects(&self) -> Value {
        let mut items: Vec<Value> = (0..PODS).map(|i| self.pod(i)).collect();
        items.extend((0..3).map(|n| self.namespace(n)));
        json!({ "apiVersion": "v1", "items": items, "kind": "List", "metadata": { "resourceVersion": "" } })
    }

    /// `kubectl get pods,namespaces -A -o yaml`.
    pub fn to_yaml(&self) -> String {
        kubectl_yaml(&self.objects())
    }

    /// The same objects as multi-document YAML (`---` between them), one object each.
    pub fn to_documents(&self) -> String {
        let objects = self.objects();
        let items = objects["items"].as_array().expect("items");
        items.iter().map(kubectl_yaml).collect::<Vec<_>>().join("---\n")
    }

    fn namespace(&self, n: usize) -> Value {
        let name = NAMESPACES[n];
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "creationTimestamp": "2026-12-03T09:58:00Z",
                "labels": self.namespace_labels[n],
                "name": name,
                "resourceVersion": self.namespace_versions[n].to_string(),
                "uid": uid(&format!("namespace/{name}")),
            },
            "spec": { "finalizers": ["kubernetes"] },
            "status": { "phase": "Active" },
        })
    }

    /// A pod as upstream's model creates it: one agnhost container per port and protocol, its
    /// port named `serve-<port>-<proto>`; scheduled, running and ready on the node.
    fn pod(&self, i: usize) -> Value {
        let (ns, name) = (NAMESPACES[i / 3], POD_NAMES[i % 3]);
        let (created, started) = ("2026-12-03T09:59:00Z", "2026-12-03T09:59:04Z");
        let volume = format!("kube-api-access-{}", &hex(&format!("volume/{ns}/{name}"), 5));
        let containers: Vec<Value> = PROBES
            .iter()
            .map(|p| {
                let (proto, port) = p.proto_port();
                json!({
                    "command": ["/agnhost", "serve-hostname", format!("--{proto}"), "--http=false", "--port", port.to_string()],
                    "image": AGNHOST,
                    "imagePullPolicy": "IfNotPresent",
                    "name": format!("cont-{port}-{proto}"),
                    "ports": [{ "containerPort": port, "name": format!("serve-{port}-{proto}"), "protocol": proto.to_uppercase() }],
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "volumeMounts": [{ "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": volume, "readOnly": true }],
                })
            })
            .collect();
        let statuses: Vec<Value> = PROBES
            .iter()
            .map(|p| {
                let (proto, port) = p.proto_port();
                let cname = format!("cont-{port}-{proto}");
                json!({
                    "containerID": format!("containerd://{}", hex(&format!("container/{ns}/{name}/{cname}"), 64)),
                    "image": AGNHOST,
                    "imageID": format!("registry.k8s.io/e2e-test-images/agnhost@sha256:{}", hex("agnhost", 64)),
                    "lastState": {},
                    "name": cname,
                    "ready": true,
                    "restartCount": 0,
                    "started": true,
                    "state": { "running": { "startedAt": started } },
                })
            })
            .collect();
        let condition = |t: &str, at: &str| json!({ "lastProbeTime": null, "lastTransitionTime": at, "status": "True", "type": t });
        let ip = pod_ip(i).to_string();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "creationTimestamp": created,
                "labels": self.pod_labels[i],
                "name": name,
                "namespace": ns,
                "resourceVersion": self.pod_versions[i].to_string(),
                "uid": uid(&format!("pod/{ns}/{name}")),
            },
            "spec": {
                "containers": containers,
                "dnsPolicy": "ClusterFirst",
                "enableServiceLinks": true,
                "nodeName": NODE_NAME,
                "preemptionPolicy": "PreemptLowerPriority",
                "priority": 0,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "securityContext": {},
                "serviceAccount": "default",
                "serviceAccountName": "default",
                "terminationGracePeriodSeconds": 0,
                "tolerations": [
                    { "effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300 },
                    { "effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300 },
                ],
                "volumes": [{
                    "name": volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                            { "configMap": { "items": [{ "key": "ca.crt", "path": "ca.crt" }], "name": "kube-root-ca.crt" } },
                            { "downwardAPI": { "items": [{ "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" }, "path": "namespace" }] } },
                        ],
                    },
                }],
            },
            "status": {
                "conditions": [
                    condition("PodReadyToStartContainers", started),
                    condition("Initialized", created),
                    condition("Ready", started),
                    condition("ContainersReady", started),
                    condition("PodScheduled", created),
                ],
                "containerStatuses": statuses,
                "hostIP": NODE_IP,
                "hostIPs": [{ "ip": NODE_IP }],
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{ "ip": ip }],
                "qosClass": "BestEffort",
                "startTime": created,
            },
        })
    }
}

/// `n` hex digits determined by `seed` (FNV-1a, extended): ids that look real and never change.
fn hex(seed: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    let mut round = 0u8;
    while out.len() < n {
        for b in seed.bytes().chain([round]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let _ = write!(out, "{h:016x}");
        round += 1;
    }
    out.truncate(n);
    out
}

/// A version-4-shaped UUID determined by `seed`.
fn uid(seed: &str) -> String {
    let h = hex(seed, 32);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// YAML as kubectl prints it (sigs.k8s.io/yaml over go-yaml v2): keys sorted, a sequence at its
/// key's indentation, empty collections as `{}` and `[]`, strings quoted only where a plain
/// scalar would read as something else (a number, a boolean of YAML 1.1 such as `y`, null, a
/// timestamp...).
pub fn kubectl_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                let (k, x) = (scalar(&Value::String(k.clone())), &m[k]);
                match x {
                    Value::Object(o) if !o.is_empty() => {
                        let _ = writeln!(out, "{pad}{k}:");
                        emit(x, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{k}:");
                        emit(x, indent, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{k}: {}", scalar(x));
                    }
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                let nested = matches!(x, Value::Object(o) if !o.is_empty()) || matches!(x, Value::Array(a) if !a.is_empty());
                if nested {
                    let mut sub = String::new();
                    emit(x, indent + 2, &mut sub);
                    let _ = write!(out, "{pad}- {}", &sub[indent + 2..]);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(x));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(s) => {
            if needs_quotes(s) {
                serde_json::to_string(s).expect("a string")
            } else {
                s.clone()
            }
        }
    }
}

fn needs_quotes(s: &str) -> bool {
    const YAML11_WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE", "on", "On",
        "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
    ];
    let b = s.as_bytes();
    // An indicator that cannot start a plain scalar, or `-`, `?`, `:` alone or before a space.
    let indicator = b.first().is_some_and(|c| b",[]{}#&*!|>'\"%@`".contains(c) || c.is_ascii_whitespace())
        || (b.first().is_some_and(|c| b"-?:".contains(c)) && b.get(1).is_none_or(|c| *c == b' '));
    let unsigned = s.trim_start_matches(['-', '+']);
    let numeric = s.replace('_', "").parse::<f64>().is_ok_and(|_| !s.contains(char::is_alphabetic) || s.contains(['e', 'E']))
        || unsigned.strip_prefix("0x").is_some_and(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()))
        || [".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN"].contains(&unsigned);
    let timestamp = b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && b[..4].iter().all(u8::is_ascii_digit);
    s.is_empty()
        || YAML11_WORDS.contains(&s)
        || indicator
        || s.ends_with(char::is_whitespace)
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
        || numeric
        || timestamp
}

/// The directory the agent's `--k8s-objects` reads: `cluster.yaml` (the [`Cluster`]) and one
/// file per NetworkPolicy (`networkpolicy-<ns>-<name>.yaml`). Every write is atomic (a
/// dot-file renamed into place), so a reader never sees half a file.
pub struct ObjectsDir(TempDir);

pub const CLUSTER_FILE: &str = "cluster.yaml";

impl ObjectsDir {
    pub fn new(cluster: &Cluster) -> ObjectsDir {
        let d = ObjectsDir(TempDir::new());
        d.write_cluster(cluster);
        d
    }

    pub fn path(&self) -> &Path {
        &self.0.0
    }

    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.path().join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        fs::rename(&tmp, self.path().join(name)).unwrap_or_else(|e| panic!("rename into {}: {e}", self.path().display()));
    }

    pub fn write_cluster(&self, cluster: &Cluster) {
        self.write(CLUSTER_FILE, &cluster.to_yaml());
    }

    pub fn remove(&self, name: &str) {
        let p = self.path().join(name);
        fs::remove_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// The NetworkPolicy files in the directory.
    pub fn policy_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path())
            .expect("objects directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("networkpolicy-"))
            .collect();
        v.sort();
        v
    }
}

// --- the cases (tests/data/k8s)

/// The case files' directory.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/k8s")
}

/// A NetworkPolicy object of a case, its text as written in the case file (kubectl's output).
#[derive(Clone, Debug)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub text: String,
}

impl NetworkPolicy {
    /// Its file in the [`ObjectsDir`].
    pub fn file_name(&self) -> String {
        policy_file(&self.namespace, &self.name)
    }
}

pub fn policy_file(namespace: &str, name: &str) -> String {
    format!("networkpolicy-{namespace}-{name}.yaml")
}

/// What a step changes in the cluster, in this order: created, updated and deleted policies,
/// then pods' and namespaces' labels.
#[derive(Clone, Debug)]
pub enum Change {
    Create(NetworkPolicy),
    Update(NetworkPolicy),
    Delete { namespace: String, name: String },
    PodLabels(usize, Labels),
    NamespaceLabels(usize, Labels),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub note: String,
    pub changes: Vec<Change>,
    /// The truth table of every probe once the changes are in force.
    pub expect: Matrix,
    /// The same verdicts as a native policy, hand-translated (a few cases have one).
    pub native: Option<String>,
}

impl Step {
    /// Puts the step's changes into the objects directory (policies) and `cluster` (labels,
    /// then `cluster.yaml` written again).
    pub fn apply(&self, objects: &ObjectsDir, cluster: &mut Cluster) {
        let mut labels_changed = false;
        for c in &self.changes {
            match c {
                Change::Create(p) | Change::Update(p) => objects.write(&p.file_name(), &p.text),
                Change::Delete { namespace, name } => objects.remove(&policy_file(namespace, name)),
                Change::PodLabels(i, l) => {
                    cluster.set_pod_labels(*i, l.clone());
                    labels_changed = true;
                }
                Change::NamespaceLabels(n, l) => {
                    cluster.set_namespace_labels(*n, l.clone());
                    labels_changed = true;
                }
            }
        }
        if labels_changed {
            objects.write_cluster(cluster);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    /// The file's stem, e.g. `01-default-deny-ingress`.
    pub name: String,
    /// The upstream test's title.
    pub upstream: String,
    pub note: String,
    pub steps: Vec<Step>,
}

impl Case {
    /// Every step has a native equivalent.
    pub fn has_native(&self) -> bool {
        self.steps.iter().all(|s| s.native.is_some())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    upstream: String,
    #[serde(default)]
    note: String,
    steps: Vec<StepDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StepDoc {
    #[serde(default)]
    note: String,
    #[serde(default)]
    create: Vec<String>,
    #[serde(default)]
    update: Vec<String>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    pod_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, Labels>,
    expect: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    native: Option<String>,
}

/// Every case of `dir` (`*.yaml`, by name), checked: policies are NetworkPolicy objects of the
/// model's namespaces, a policy is created once and updated or deleted only while it exists,
/// labels go to pods and namespaces of the model, every probe has exactly one table.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, String> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_case(p).map_err(|e| format!("{}: {e}", p.display()))).collect()
}

fn load_case(path: &Path) -> Result<Case, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let doc: CaseDoc = serde_saphyr::from_str(&text).map_err(|e| e.to_string())?;
    let mut live = BTreeSet::new();
    let mut steps = Vec::new();
    for (n, s) in doc.steps.into_iter().enumerate() {
        let step = load_step(s, &mut live).map_err(|e| format!("step {}: {e}", n + 1))?;
        steps.push(step);
    }
    if steps.is_empty() {
        return Err("a case has at least one step".into());
    }
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Case { name, upstream: doc.upstream, note: doc.note, steps })
}

fn load_step(s: StepDoc, live: &mut BTreeSet<(String, String)>) -> Result<Step, String> {
    let mut changes = Vec::new();
    for text in &s.create {
        let p = network_policy(text)?;
        if !live.insert((p.namespace.clone(), p.name.clone())) {
            return Err(format!("{}/{} is created twice", p.namespace, p.name));
        }
        changes.push(Change::Create(p));
    }
    for text in &s.update {
        let p = network_policy(text)?;
        if !live.contains(&(p.namespace.clone(), p.name.clone())) {
            return Err(format!("{}/{} is updated before it is created", p.namespace, p.name));
        }
        changes.push(Change::Update(p));
    }
    for d in &s.delete {
        let (ns, name) = d.split_once('/').ok_or(format!("delete {d:?}: not `namespace/name`"))?;
        if !live.remove(&(ns.to_string(), name.to_string())) {
            return Err(format!("{d} is deleted but does not exist"));
        }
        changes.push(Change::Delete { namespace: ns.into(), name: name.into() });
    }
    for (pod, labels) in s.pod_labels {
        let i = pod_index(&pod).ok_or(format!("podLabels: {pod:?} is no pod of the model"))?;
        changes.push(Change::PodLabels(i, labels));
    }
    for (ns, labels) in s.namespace_labels {
        let n = NAMESPACES.iter().position(|x| *x == ns).ok_or(format!("namespaceLabels: {ns:?} is no namespace of the model"))?;
        changes.push(Change::NamespaceLabels(n, labels));
    }
    let mut tables: [Option<Truth>; 4] = [None; 4];
    for (probes, lines) in &s.expect {
        let t = Truth::parse(lines).map_err(|e| format!("expect {probes}: {e}"))?;
        for name in probes.split_whitespace() {
            let k = PROBES.iter().position(|p| probe_name(*p) == name).ok_or(format!(
                "expect: {name:?} is not one of the probes {}",
                PROBES.map(probe_name).join(", ")
            ))?;
            if tables[k].replace(t).is_some() {
                return Err(format!("expect: {name} has two tables"));
            }
        }
    }
    let missing: Vec<String> = (0..4).filter(|k| tables[*k].is_none()).map(|k| probe_name(PROBES[k])).collect();
    if !missing.is_empty() {
        return Err(format!("expect: no table for {}", missing.join(", ")));
    }
    let expect = Matrix(tables.map(|t| t.expect("checked above")));
    Ok(Step { note: s.note, changes, expect, native: s.native })
}

fn network_policy(text: &str) -> Result<NetworkPolicy, String> {
    let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("a policy is not YAML: {e}"))?;
    let field = |f: &str| v.pointer(f).and_then(Value::as_str).map(String::from);
    if field("/apiVersion").as_deref() != Some("networking.k8s.io/v1") || field("/kind").as_deref() != Some("NetworkPolicy") {
        return Err(format!("not a networking.k8s.io/v1 NetworkPolicy:\n{text}"));
    }
    let (Some(namespace), Some(name)) = (field("/metadata/namespace"), field("/metadata/name")) else {
        return Err(format!("a policy needs metadata.namespace and metadata.name:\n{text}"));
    };
    if !NAMESPACES.contains(&namespace.as_str()) {
        return Err(format!("{namespace}/{name}: {namespace} is no namespace of the model"));
    }
    Ok(NetworkPolicy { namespace, name, text: text.to_string() })
}

/// The schema validator the bootstrap installs (`cargo xtask setup`: PyPI `kubernetes-validate`
/// in its own virtualenv, with the Kubernetes schemas it bundles, so it works offline): the path
/// in `ZTAGENT_KUBERNETES_VALIDATE` (set by `cargo xtask test`), else where the bootstrap puts
/// it. Panics, saying how to install it, when it is missing.
pub fn kubernetes_validate() -> PathBuf {
    let p = std::env::var_os("ZTAGENT_KUBERNETES_VALIDATE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".local/share/ztagent/kubernetes-validate/bin/kubernetes-validate")
    });
    assert!(
        p.exists(),
        "kubernetes-validate is not installed at {}: run `cargo xtask setup` (it installs PyPI kubernetes-validate)",
        p.display()
    );
    p
}

/// `kubernetes-validate --strict FILE...`: Ok, or its report. An object it has no schema for
/// (a `v1 List`, say: validate its items) is a failure, not a pass.
pub fn validate_manifests(files: &[PathBuf]) -> Result<(), String> {
    let out = std::process::Command::new(kubernetes_validate())
        .arg("--strict")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run kubernetes-validate: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("ERROR") && !text.contains("Couldn't find schema") { Ok(()) } else { Err(text) }
}
