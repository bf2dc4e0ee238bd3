//! The nine pods of the upstream model on one node, and their truth tables.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use crate::harness::netns::{Netns, enter, veth};
use crate::harness::probes::Probe;
use crate::harness::servers::Servers;
use crate::harness::util::unique;

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
pub(super) const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

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
                        running.push((
                            (k, from, to),
                            s.spawn(move || {
                                enter(path);
                                reachable(probe, pod_ip(to))
                            }),
                        ));
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
            let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
                return false;
            };
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
                other => {
                    return Err(format!("table line {line:?}: {other:?} is neither allow nor deny"));
                }
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
    let (ns, pod) = if spec == "*" {
        ("*", "*")
    } else {
        spec.split_once('/').ok_or(format!("{spec:?} is not `*`, `ns/pod`, `ns/*` or `*/pod`"))?
    };
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
