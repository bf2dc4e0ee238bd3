//! Node mode (`ztagent run --iface-pattern GLOB`): every interface whose name matches a pattern
//! (the pods' veths of a Kubernetes node: `veth*`, `lxc*`, `cali*`) is enforced like an
//! `--iface` interface (XDP ingress + TC egress, links pinned under `PIN/links/`) from the
//! moment it appears, and cleaned up (its pins removed) when it goes away. Such an interface is
//! *guarded*: its ingress runs the anti-spoofing program, and the sources a packet entering it
//! may have are the destinations of the node's routes out of it (`ip route add 10.1.0.5/32 dev
//! vethX`, as CNIs route pods), kept in the kernel map `ZT_SOURCES` keyed by (ifindex, prefix).
//!
//! The agent's view is rebuilt from rtnetlink dumps (links, routes) at startup and after every
//! change the watch reports ([`Node::reconcile`]): what the kernel holds is made equal to what
//! the dumps imply, so a restarted agent adopts what is there (present interfaces: their pinned
//! links updated in place; vanished ones: their pins and sources removed) by the same code.
pub mod glob;
pub mod netlink;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use agent_common::{SOURCE_IFINDEX_BITS, SourceData, maps};
use aya::{
    maps::{LpmTrie, MapData, lpm_trie::Key},
    programs::xdp::XdpMode,
};
use ipnet::{IpNet, Ipv6Net};

pub use glob::{Pattern, PatternError};
pub use netlink::{Link, Route, Watch};

use crate::kernel::datapath::{Attachment, Datapath, DatapathError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot read the {what} of this network namespace over rtnetlink: {source}")]
    Netlink { what: &'static str, source: std::io::Error },
    #[error("cannot watch links and routes over rtnetlink: {0}")]
    Watch(std::io::Error),
    #[error("map {}: {message}", maps::SOURCES)]
    Map { message: String },
}

/// A source prefix as `ZT_SOURCES` keys it: its length in IPv6 space and its (truncated)
/// address, IPv4 mapped (`::ffff:a.b.c.d/96+n`).
type Prefix = (u8, [u8; 16]);

fn prefix_of(net: &IpNet) -> Prefix {
    match net.trunc() {
        IpNet::V4(n) => (96 + n.prefix_len(), n.network().to_ipv6_mapped().octets()),
        IpNet::V6(n) => (n.prefix_len(), n.network().octets()),
    }
}

fn net_of(p: &Prefix) -> IpNet {
    let v6 = Ipv6Addr::from(p.1);
    match v6.to_ipv4_mapped() {
        Some(v4) if p.0 >= 96 => IpNet::new(IpAddr::V4(v4), p.0 - 96).expect("length checked"),
        _ => IpNet::V6(Ipv6Net::new(v6, p.0.min(128)).expect("length checked")),
    }
}

/// Sources every guarded interface allows whatever its routes: IPv6 link-local (fe80::/10) and
/// the unspecified address (::), which neighbour discovery, duplicate address detection, MLD and
/// router solicitation send from before (or besides) any routed address.
pub fn always_allowed() -> [IpNet; 2] {
    ["fe80::/10".parse().expect("valid"), "::/128".parse().expect("valid")]
}

/// An interface node mode enforces.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ifindex: u32,
    /// The pattern that matched its name.
    pub pattern: String,
    pub ingress: Attachment,
    pub egress: Attachment,
}

/// The `ZT_SOURCES` map, and what this agent knows it holds.
struct Sources {
    map: LpmTrie<MapData, SourceData, u32>,
    /// The map's content by interface index (read from the map at startup, then kept).
    held: BTreeMap<u32, BTreeSet<Prefix>>,
    /// Interfaces whose entries did not all fit, warned about once.
    full: BTreeSet<u32>,
}

fn key(ifindex: u32, p: &Prefix) -> Key<SourceData> {
    Key::new(SOURCE_IFINDEX_BITS + u32::from(p.0), SourceData { ifindex: ifindex.to_be_bytes(), addr: p.1 })
}

impl Sources {
    fn take(ebpf: &mut aya::Ebpf) -> Result<Sources, NodeError> {
        let map = ebpf.take_map(maps::SOURCES).ok_or(NodeError::Map { message: "missing from the object".into() })?;
        let map: LpmTrie<MapData, SourceData, u32> =
            LpmTrie::try_from(map).map_err(|e| NodeError::Map { message: e.to_string() })?;
        let mut held: BTreeMap<u32, BTreeSet<Prefix>> = BTreeMap::new();
        for k in map.keys().filter_map(Result::ok) {
            let (len, data) = (k.prefix_len(), k.data());
            let Some(len) = len.checked_sub(SOURCE_IFINDEX_BITS).filter(|l| *l <= 128) else { continue };
            held.entry(u32::from_be_bytes(data.ifindex)).or_default().insert((len as u8, data.addr));
        }
        Ok(Sources { map, held, full: BTreeSet::new() })
    }

    /// Makes the entries of `ifindex` exactly `want` (adds first, then removals).
    fn set(&mut self, ifindex: u32, want: &BTreeSet<Prefix>) {
        let held = self.held.entry(ifindex).or_default();
        let mut full = false;
        for p in want.difference(&held.clone()) {
            match self.map.insert(&key(ifindex, p), 1u32, 0) {
                Ok(()) => {
                    held.insert(*p);
                }
                Err(e) => {
                    full = true;
                    if self.full.insert(ifindex) {
                        tracing::warn!(
                            ifindex,
                            "cannot add the allowed source {} ({e}); its packets are dropped as spoofed",
                            net_of(p)
                        );
                    }
                }
            }
        }
        if !full {
            self.full.remove(&ifindex);
        }
        for p in held.clone().difference(want) {
            // Gone already (another agent's start cleaned it) is as good as removed.
            let _ = self.map.remove(&key(ifindex, p));
            held.remove(p);
        }
        if held.is_empty() {
            self.held.remove(&ifindex);
        }
    }

    fn clear(&mut self, ifindex: u32) {
        self.set(ifindex, &BTreeSet::new());
        self.full.remove(&ifindex);
    }
}

/// Node mode's state: the patterns, the interfaces it enforces, and the sources map.
pub struct Node {
    patterns: Vec<Pattern>,
    /// Interfaces given with `--iface`: enforced unguarded as before, never by a pattern.
    fixed: Vec<String>,
    mode: XdpMode,
    pods: BTreeMap<u32, Pod>,
    sources: Sources,
    /// Interfaces that could not be attached, by index: warned about once, tried again when
    /// they change (name) or come back.
    failed: BTreeMap<u32, String>,
}

/// The interfaces a pattern matches, by index: (name, the pattern).
type Wanted = BTreeMap<u32, (String, String)>;

/// The sources each wanted interface may send from: the always-allowed ones and the
/// destinations of the routes out of it.
fn sources_of(want: &Wanted, routes: &[Route]) -> BTreeMap<u32, BTreeSet<Prefix>> {
    let mut sources: BTreeMap<u32, BTreeSet<Prefix>> =
        want.keys().map(|&i| (i, always_allowed().iter().map(prefix_of).collect())).collect();
    for r in routes {
        if let Some(s) = sources.get_mut(&r.oif) {
            s.insert(prefix_of(&r.dst));
        }
    }
    sources
}

/// The sources one guarded interface allows now, for `status`.
#[derive(Clone, Debug)]
pub struct PodStatus {
    pub pod: Pod,
    pub sources: Vec<String>,
}

impl Node {
    /// Node mode for these patterns; `fixed`: the `--iface` interfaces (never guarded).
    pub fn new(
        patterns: Vec<Pattern>,
        fixed: Vec<String>,
        mode: XdpMode,
        ebpf: &mut aya::Ebpf,
    ) -> Result<Node, NodeError> {
        Ok(Node {
            patterns,
            fixed,
            mode,
            pods: BTreeMap::new(),
            sources: Sources::take(ebpf)?,
            failed: BTreeMap::new(),
        })
    }

    /// The pattern that makes `name` a guarded interface, if any.
    fn pattern_of(&self, name: &str) -> Option<&Pattern> {
        // The loopback is never a pod's interface (and guarding it would cut the node off
        // from itself).
        if name == "lo" || self.fixed.iter().any(|f| f == name) {
            return None;
        }
        self.patterns.iter().find(|p| p.matches(name))
    }

    /// Reads links and routes and brings the kernel in line ([`Node::reconcile`]).
    pub fn read() -> Result<(Vec<Link>, Vec<Route>), NodeError> {
        let links = netlink::links().map_err(|source| NodeError::Netlink { what: "interfaces", source })?;
        let routes = netlink::routes().map_err(|source| NodeError::Netlink { what: "routes", source })?;
        Ok((links, routes))
    }

    /// Makes the kernel match `links` and `routes` (a dump): every interface a pattern matches
    /// is attached (a new one after its sources are written, so its first packets pass) or kept
    /// (its sources updated); every interface attached before that is gone (or no longer
    /// matches) is detached, its pins and sources removed. Errors concern one interface each
    /// and are logged once (an interface that vanishes meanwhile is no error: the next dump
    /// tells); an interface that cannot be attached is tried again once it changes.
    pub fn reconcile(&mut self, dp: &mut Datapath, links: &[Link], routes: &[Route]) {
        let present: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let want: Wanted = links
            .iter()
            .filter_map(|l| self.pattern_of(&l.name).map(|p| (l.index, (l.name.clone(), p.to_string()))))
            .collect();
        let sources = sources_of(&want, routes);
        self.detach_stale(dp, &want, &present);
        self.attach_new(dp, &want, &sources);
        self.update_sources(&want, &present, &sources);
    }

    /// Gone, renamed or no longer matching: detached first (a new interface may take the name
    /// of one that went); a renamed one that still matches keeps its enforcement (the pins
    /// follow the name).
    fn detach_stale(&mut self, dp: &mut Datapath, want: &Wanted, present: &BTreeMap<u32, &str>) {
        let attached: Vec<u32> = self.pods.keys().copied().collect();
        for ifindex in attached {
            let pod = &self.pods[&ifindex];
            match want.get(&ifindex) {
                Some((name, _)) if *name == pod.name => {}
                Some((name, pattern)) => {
                    let (old, name, pattern) = (pod.name.clone(), name.clone(), pattern.clone());
                    match dp.rename(&old, &name) {
                        Ok(()) => {
                            tracing::info!(from = %old, to = %name, "enforced interface renamed");
                            let pod = self.pods.get_mut(&ifindex).expect("present");
                            (pod.name, pod.pattern) = (name, pattern);
                        }
                        Err(e) => {
                            tracing::warn!(from = %old, to = %name, "cannot move the pins of a renamed interface ({e}); attaching it again");
                            dp.detach(&old);
                            self.pods.remove(&ifindex);
                        }
                    }
                }
                None => {
                    let pod = self.pods.remove(&ifindex).expect("present");
                    dp.detach(&pod.name);
                    let why = if present.contains_key(&ifindex) { "no longer matches a pattern" } else { "gone" };
                    tracing::info!(iface = %pod.name, ifindex, "interface {why}: enforcement and pins removed");
                }
            }
        }
        self.failed.retain(|i, name| want.get(i).is_some_and(|(n, _)| *n == *name));
    }

    /// Attaches every wanted interface not enforced yet (nor failed as it is), its sources
    /// written first: its first packets must not be dropped as spoofed.
    fn attach_new(&mut self, dp: &mut Datapath, want: &Wanted, sources: &BTreeMap<u32, BTreeSet<Prefix>>) {
        for (&ifindex, (name, pattern)) in want {
            if self.pods.contains_key(&ifindex) || self.failed.contains_key(&ifindex) {
                continue;
            }
            self.sources.set(ifindex, &sources[&ifindex]);
            match dp.attach(name, self.mode, true) {
                Ok([ingress, egress]) => {
                    tracing::info!(iface = %name, ifindex, %pattern, ?ingress, ?egress, "enforcing (guarded)");
                    let pod = Pod { name: name.clone(), ifindex, pattern: pattern.clone(), ingress, egress };
                    self.pods.insert(ifindex, pod);
                }
                // Went away between the dump and the attach: the next dump says so.
                Err(DatapathError::NoInterface { .. }) => tracing::debug!(iface = %name, "gone before it was attached"),
                Err(e) => {
                    tracing::warn!(iface = %name, ifindex, "not enforced: {e}");
                    self.failed.insert(ifindex, name.clone());
                }
            }
        }
    }

    /// Sources: those of the enforced interfaces as the routes say; none for interfaces that
    /// are gone. (Entries of present interfaces this agent does not enforce, left by an earlier
    /// configuration, stay: their links may still run the guarded program.)
    fn update_sources(
        &mut self,
        want: &Wanted,
        present: &BTreeMap<u32, &str>,
        sources: &BTreeMap<u32, BTreeSet<Prefix>>,
    ) {
        let held: Vec<u32> = self.sources.held.keys().copied().collect();
        for ifindex in held {
            if !present.contains_key(&ifindex) || (want.contains_key(&ifindex) && !self.pods.contains_key(&ifindex)) {
                self.sources.clear(ifindex);
            }
        }
        for ifindex in self.pods.keys() {
            self.sources.set(*ifindex, &sources[ifindex]);
        }
    }

    /// The interfaces node mode enforces, with their allowed sources.
    pub fn status(&self) -> Vec<PodStatus> {
        self.pods
            .values()
            .map(|pod| {
                let held = self.sources.held.get(&pod.ifindex);
                let sources = held.into_iter().flatten().map(|p| net_of(p).to_string()).collect();
                PodStatus { pod: pod.clone(), sources }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        for text in ["10.1.0.5/32", "10.1.0.0/24", "0.0.0.0/0", "fd00:1::5/128", "fe80::/10", "::/128", "::/0"] {
            let net: IpNet = text.parse().unwrap();
            assert_eq!(net_of(&prefix_of(&net)).to_string(), text);
        }
        // Host bits are dropped: the key is the prefix.
        assert_eq!(prefix_of(&"10.1.0.5/24".parse().unwrap()), prefix_of(&"10.1.0.0/24".parse().unwrap()));
        assert_eq!(prefix_of(&"10.1.0.5/32".parse().unwrap()).0, 128);
    }
}
