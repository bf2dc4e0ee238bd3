//! Test topologies built from namespaces: a LAN of hosts on one bridge, the fleet's
//! management network, and a node routing between pods as a CNI wires them.

use std::{net::IpAddr, process::Output};

use crate::harness::netns::{Netns, veth};
use crate::harness::util::{bin, sh, unique};

/// A host of the test topology: a namespace with one interface and its addresses.
pub struct Host {
    pub ns: Netns,
    pub iface: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// A star of hosts on one Ethernet segment: a bridge in a switch namespace, one veth per host.
/// The `ports` are the switch's interfaces facing each host.
pub struct Lan {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

impl Lan {
    /// `hosts` = (IPv4, IPv6) per host; both on a /16 (fd20::/16 for IPv6), so all are on-link.
    pub fn new(hosts: &[(&str, &str)]) -> Lan {
        let switch = Netns::new("zs");
        // A plain switch: where br_netfilter is loaded, bridged frames would otherwise be
        // validated (and malformed ones dropped) before any host sees them.
        for family in ["iptables", "ip6tables"] {
            let _ = switch.exec(&["sh", "-c", &format!("echo 0 > /proc/sys/net/bridge/bridge-nf-call-{family}")]);
        }
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let mut out = Vec::new();
        for (v4, v6) in hosts {
            let ns = Netns::new("zh");
            let iface = unique("h");
            let port = unique("p");
            veth(&ns, &iface, &switch, &port);
            switch.ip(&["link", "set", &port, "master", "br0"]);
            ns.ip(&["addr", "add", &format!("{v4}/16"), "dev", &iface]);
            ns.ip(&["addr", "add", &format!("{v6}/16"), "dev", &iface, "nodad"]);
            out.push(Host { ns, iface, v4: v4.parse().unwrap(), v6: v6.parse().unwrap() });
        }
        Lan { hosts: out, switch }
    }
}

impl Lan {
    /// The topology most tests and the demo use: payments (the server, index 0), frontend (1),
    /// batch (2), and an attacker (3) whose addresses are in no segment of their policies.
    pub fn four_hosts() -> Lan {
        Lan::new(&[
            ("10.20.2.10", "fd20:2::10"), // payments
            ("10.20.1.2", "fd20:1::2"),   // frontend
            ("10.20.3.2", "fd20:3::2"),   // batch
            ("10.20.9.2", "fd20:9::2"),   // attacker (world)
        ])
    }
}

/// The management network of a fleet test: a namespace with a bridge (10.99.0.1/24) where the
/// etcd members listen, and one veth per host namespace (10.99.0.10+i/24). The agents enforce
/// only their data interface, never this one, as a management network is deployed: their
/// policy cannot cut them off from etcd.
pub struct Mgmt {
    pub ns: Netns,
    /// The hosts' management interfaces, in the order of [`Mgmt::attach`].
    pub links: Vec<(String, String)>,
}

/// Where etcd members of a test listen (the bridge's address in the management namespace).
pub const ETCD_ADDR: &str = "10.99.0.1";

impl Mgmt {
    pub fn new() -> Mgmt {
        let ns = Netns::new("ze");
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"]);
        Mgmt { ns, links: Vec::new() }
    }

    /// Connects `host` to the management network; returns its management interface.
    pub fn attach(&mut self, host: &Netns) -> String {
        let (iface, port) = (unique("m"), unique("q"));
        veth(host, &iface, &self.ns, &port);
        self.ns.ip(&["link", "set", &port, "master", "br0"]);
        host.ip(&["addr", "add", &format!("10.99.0.{}/24", 10 + self.links.len()), "dev", &iface]);
        self.links.push((host.name.clone(), iface.clone()));
        iface
    }

    /// `ztagent ARGS...` in the management namespace (where an admin's `fleet` commands run).
    pub fn ztagent(&self, args: &[&str]) -> Output {
        let mut cmd = vec![bin("ztagent").to_str().unwrap().to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        self.ns.exec(&cmd)
    }
}

/// The fleet topology: a client (10.20.1.2, host 0) and three hosts in 10.20.2.0/24 (10.20.2.10
/// .. .12), each also on the management network.
pub fn fleet_lan() -> (Lan, Mgmt) {
    let lan = Lan::new(&[
        ("10.20.1.2", "fd20:1::2"),
        ("10.20.2.10", "fd20:2::10"),
        ("10.20.2.11", "fd20:2::11"),
        ("10.20.2.12", "fd20:2::12"),
    ]);
    let mut mgmt = Mgmt::new();
    for h in &lan.hosts[1..] {
        mgmt.attach(&h.ns);
    }
    (lan, mgmt)
}

impl Default for Mgmt {
    fn default() -> Self {
        Self::new()
    }
}

/// A Kubernetes-style node: a namespace that routes between pods, each pod a namespace joined
/// to it by a veth pair (pod side `eth0`, node side `<prefix><suffix>`, matched by
/// [`PodNode::pattern`]), routed as CNIs do (Calico's layout): the node routes each pod's
/// prefix out of its veth, answers ARP for the other pods (proxy_arp) and forwards; a pod
/// reaches other pods' IPv4 addresses on-link (10.77.0.0/16) and IPv6 ones through the node's
/// link-local fe80::1.
pub struct PodNode {
    pub ns: Netns,
    /// The node-side veth names' common prefix, unique to this node.
    pub prefix: String,
}

/// A pod of a [`PodNode`]: deleted (namespace and veth) on drop.
pub struct Pod {
    pub ns: Netns,
    /// The node-side interface.
    pub veth: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl PodNode {
    pub fn new() -> PodNode {
        let ns = Netns::new("zn");
        for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
            let out = ns.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
            assert!(out.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // An address of the node's own, the source of its ARP requests towards the pods.
        ns.ip(&["addr", "add", "10.77.255.1/32", "dev", "lo"]);
        PodNode { ns, prefix: unique("v") }
    }

    /// The `--iface-pattern` that matches this node's pod interfaces and no one else's.
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// A pod with addresses `v4` and `v6`, its veth named `<prefix><suffix>`; the node routes
    /// `route4` and `route6` (prefixes holding them, e.g. `10.77.0.1/32`, `10.77.0.16/28`,
    /// `fd77::1/128`) out of it.
    pub fn pod(&self, suffix: &str, (v4, route4): (&str, &str), (v6, route6): (&str, &str)) -> Pod {
        let ns = Netns::new("zp");
        let veth = format!("{}{suffix}", self.prefix);
        sh(&[
            "ip",
            "link",
            "add",
            &veth,
            "netns",
            &self.ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        let pod = Pod { ns, veth: veth.clone(), v4: v4.parse().unwrap(), v6: v6.parse().unwrap() };
        let n = &self.ns;
        // Proxy ARP answers at once (by default after up to 0.8 s, as Calico also changes).
        for key in [format!("net.ipv4.conf.{veth}.proxy_arp=1"), format!("net.ipv4.neigh.{veth}.proxy_delay=0")] {
            let out = n.exec(&["sysctl", "-qw", &key]);
            assert!(out.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        n.ip(&["addr", "add", "fe80::1/64", "dev", &veth, "nodad"]);
        n.ip(&["link", "set", &veth, "up"]);
        n.ip(&["route", "add", route4, "dev", &veth]);
        n.ip(&["-6", "route", "add", route6, "dev", &veth]);
        let p = &pod.ns;
        p.ip(&["link", "set", "eth0", "up"]);
        p.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
        p.ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"]);
        p.ip(&["route", "add", "10.77.0.0/16", "dev", "eth0"]);
        p.ip(&["-6", "route", "add", "fd77::/64", "via", "fe80::1", "dev", "eth0"]);
        pod
    }

    /// The interface index of `iface` in the node.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let v: serde_json::Value = serde_json::from_str(&self.ns.ip(&["-j", "link", "show", iface])).unwrap();
        v[0]["ifindex"].as_u64().unwrap_or_else(|| panic!("no ifindex for {iface}: {v}")) as u32
    }

    /// The MAC address of `iface` in the node.
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        let v: serde_json::Value = serde_json::from_str(&self.ns.ip(&["-j", "link", "show", iface])).unwrap();
        let text = v[0]["address"].as_str().unwrap_or_else(|| panic!("no address for {iface}: {v}")).to_string();
        let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }
}

impl Default for PodNode {
    fn default() -> Self {
        Self::new()
    }
}
