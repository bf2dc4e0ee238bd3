//! NetworkPolicy (networking.k8s.io/v1) semantics, and the translation of (native policy,
//! cluster inventory, NetworkPolicies) into one flattened native [`Policy`] (segments of CIDRs
//! only) that the existing compiler and datapath enforce.
//!
//! # Semantics (upstream)
//!
//! - A pod is *ingress-isolated* when a policy of its namespace selects it (`podSelector`) and
//!   has `Ingress` in its `policyTypes`; *egress-isolated* likewise. `policyTypes` defaults to
//!   `[Ingress]`, plus `Egress` when the policy has egress rules.
//! - Allows add up across policies. A flow src -> dst (protocol, port) is allowed by
//!   NetworkPolicy iff (src is no pod, or src is not egress-isolated, or an egress rule of a
//!   policy selecting src admits dst on that port) AND (dst is no pod, or dst is not
//!   ingress-isolated, or an ingress rule of a policy selecting dst admits src on that port).
//! - A rule admits a peer when any of its peers matches (OR); no peers: everything. A peer
//!   `podSelector` alone: pods of the policy's namespace; `namespaceSelector` alone: every pod
//!   of the selected namespaces; both: ANDed; `ipBlock`: addresses in `cidr` and in no
//!   `except`, pod addresses included.
//! - Ports: none listed = every port and protocol; TCP by default, UDP; a number, a range
//!   (`endPort`), or a name resolved on the *destination* pod's container ports (name and
//!   protocol; a named port never matches a destination that is not a pod). SCTP ports allow
//!   nothing (the datapath has no SCTP port key) and never match TCP or UDP.
//!
//! # Combination with the native policy
//!
//! Flows with a pod at either end are allowed iff (NetworkPolicy allows them OR a native allow
//! rule matches) AND no native deny rule matches. Flows with no pod at either end are judged
//! by the native policy alone (its rules and `defaultAction`). A native `defaultAction: allow`
//! together with NetworkPolicies is refused: it would override the isolation. Without any
//! NetworkPolicy under `defaultAction: allow`, NetworkPolicy adds nothing and pods are plain
//! addresses of their segments.
//!
//! # Construction
//!
//! Every address is classified by its native segment and its NetworkPolicy *signature*:
//!
//! - a pod address (an endpoint pod's IP): its native segment (an explicit /32 or /128 CIDR
//!   of it, else the first label-selected segment selecting its pod, else the longest native
//!   CIDR, else world), the policies selecting it for ingress and for egress, the rules
//!   whose peers it matches, and the numbers of the named ports policies use;
//! - other addresses: regions cut by every native CIDR and every ipBlock `cidr` and `except`
//!   (the addresses whose longest match among them is one CIDR share one native segment and
//!   one ipBlock signature, since CIDRs nest or are disjoint), plus the addresses in none of
//!   them (the output's `world`).
//!
//! For every ordered pair of classes the allowed port set (egress of the source ∩ ingress of
//! the destination) is computed; classes with the same native segment whose rows and columns
//! are identical merge (they cannot be told apart). Each resulting class is one output
//! segment: the one holding the native segment's plain addresses (no ipBlock matches, no pod)
//! keeps the native segment's name, so a policy without NetworkPolicies, pods and selectors
//! translates to itself; the others are named `<segment>~<n>` (`world~<n>` for addresses in no
//! native segment), numbered in address order. Native rules are rewritten over classes (a
//! segment name -> all its classes, `world` -> `world` and the `world~<n>` classes, `*` stays)
//! keeping names, order, actions and modes; a rate limit becomes one limit per class of its
//! source (`<limit>@<class>` for all but the first; a segment-scope budget is then one per
//! class, with a warning). NetworkPolicy allows follow as allow rules after the native ones:
//! a destination whose column is the same for every source is `from: ["*"]`, a source whose
//! row is the same for every destination (when cheaper) `to: ["*"]`, and the other pairs are
//! grouped by (sources, ports, admitting policies) into `from: [S...] to: [D...]`, named
//! `np:<ns>/<policy>+...` (`np:open` when neither end is isolated). Everything is sorted: the
//! same input gives the same output.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

mod matrix;
mod translate;

pub use translate::translate;

use super::{Cluster, NetworkPolicy, Peer, Pod, PortRef, Protocol};
use crate::policy::selector::Labels;
use crate::policy::{
    self, Action, Addr, Api, LimitScope, Mode, PORT_SPACE, Policy, PortSpec, Proto, RateLimit, Rule, SegRef, Segment,
    addr16, cidr_key,
};

/// The translated policy, and what the translation has to say about its inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    pub policy: Policy,
    /// One sentence each (an address two pods claim, a split rate-limit budget, ...).
    pub warnings: Vec<String>,
    /// Endpoint pod addresses classified (none when NetworkPolicy adds nothing and selectors
    /// do not move them).
    pub pod_addresses: usize,
    /// Classes of addresses, before those no flow tells apart were merged into one segment.
    pub classes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(
        "the native policy has `defaultAction: allow`, which would override the isolation NetworkPolicies give pods; \
         with NetworkPolicies write `defaultAction: deny` (the default) and allow what else is needed with rules"
    )]
    DefaultAllow,
    #[error(
        "the translation needs {0} address classes, more than the {MAX_CLASSES} it supports; \
         fewer distinct pod label sets, policies or ipBlocks would need fewer"
    )]
    TooManyClasses(usize),
}

/// The most classes a translation handles: the pair matrix is quadratic in them.
pub const MAX_CLASSES: usize = 4096;

// ---- port sets ------------------------------------------------------------------------------

/// Sorted, disjoint, non-adjacent inclusive ranges of 24-bit port keys `(proto << 16) | port`.
type Ports = Vec<(u32, u32)>;

const ALL_KEYS: (u32, u32) = (0, PORT_SPACE - 1);

fn proto_range(p: Proto, lo: u16, hi: u16) -> (u32, u32) {
    let base = u32::from(p.number()) << 16;
    (base | u32::from(lo), base | u32::from(hi))
}

/// The union of ranges, normalised.
fn normalise(mut v: Vec<(u32, u32)>) -> Ports {
    v.sort_unstable();
    let mut out: Ports = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn intersect(a: &[(u32, u32)], b: &[(u32, u32)]) -> Ports {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 { i += 1 } else { j += 1 }
    }
    out
}

fn overlaps(a: &[(u32, u32)], b: &[(u32, u32)]) -> bool {
    !intersect(a, b).is_empty()
}

/// The port specs of a set (`None`: everything).
fn port_specs(set: &[(u32, u32)]) -> Option<Vec<PortSpec>> {
    if set == [ALL_KEYS] {
        return None;
    }
    let mut out = Vec::new();
    for &(lo, hi) in set {
        for proto in [Proto::Tcp, Proto::Udp] {
            let (plo, phi) = proto_range(proto, 0, u16::MAX);
            let (l, h) = (lo.max(plo), hi.min(phi));
            if l > h {
                continue;
            }
            let (l, h) = ((l & 0xffff) as u16, (h & 0xffff) as u16);
            if l == 0 && h == u16::MAX {
                out.push(PortSpec::All(proto));
            } else if h >= 1 {
                // Port 0 is never a NetworkPolicy port: a set starting at 0 is a whole protocol.
                out.push(PortSpec::Range { proto, lo: l.max(1), hi: h });
            }
        }
    }
    Some(out)
}

// ---- inputs, indexed ------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// A rule of any policy, numbered globally.
struct GRule {
    /// No peers: every source (destination).
    all_peers: bool,
    /// The ports that do not depend on the destination (`ALL` when none are listed).
    fixed: Ports,
    /// Named ports: (index in `names`, protocol).
    named: Vec<u32>,
}

/// An ipBlock peer, for the regions' signatures.
struct GBlock {
    rule: u32,
    cidr: IpNet,
    except: Vec<IpNet>,
}

/// A named port as policies use it: (name, protocol).
type PortName = (String, Proto);

struct Index {
    rules: Vec<GRule>,
    /// Per policy: its ingress and egress rules (global numbers).
    ingress: Vec<Vec<u32>>,
    egress: Vec<Vec<u32>>,
    blocks: Vec<GBlock>,
    names: Vec<PortName>,
}

impl Index {
    fn new(policies: &[NetworkPolicy]) -> Index {
        let mut ix =
            Index { rules: Vec::new(), ingress: Vec::new(), egress: Vec::new(), blocks: Vec::new(), names: Vec::new() };
        let mut name_ids: HashMap<PortName, u32> = HashMap::new();
        for p in policies {
            let mut lists = [Vec::new(), Vec::new()];
            for (dir, rules, on) in
                [(Dir::Ingress, &p.ingress, p.ingress_type), (Dir::Egress, &p.egress, p.egress_type)]
            {
                // Rules of a direction the policy does not isolate are ignored (upstream).
                if !on {
                    continue;
                }
                for r in rules {
                    let id = ix.rules.len() as u32;
                    let mut fixed = Vec::new();
                    let mut named = Vec::new();
                    for port in &r.ports {
                        let proto = match port.protocol {
                            Protocol::Tcp => Proto::Tcp,
                            Protocol::Udp => Proto::Udp,
                            Protocol::Sctp => continue,
                        };
                        match &port.port {
                            None => fixed.push(proto_range(proto, 0, u16::MAX)),
                            Some(PortRef::Number(lo)) => {
                                fixed.push(proto_range(proto, *lo, port.end_port.unwrap_or(*lo)))
                            }
                            Some(PortRef::Name(n)) => {
                                let next = name_ids.len() as u32;
                                let nid = *name_ids.entry((n.clone(), proto)).or_insert(next);
                                if nid == next {
                                    ix.names.push((n.clone(), proto));
                                }
                                named.push(nid);
                            }
                        }
                    }
                    let fixed = if r.ports.is_empty() { vec![ALL_KEYS] } else { normalise(fixed) };
                    named.sort_unstable();
                    named.dedup();
                    ix.rules.push(GRule { all_peers: r.peers.is_empty(), fixed, named });
                    for peer in &r.peers {
                        if let Peer::IpBlock { cidr, except } = peer {
                            ix.blocks.push(GBlock { rule: id, cidr: *cidr, except: except.clone() });
                        }
                    }
                    lists[(dir == Dir::Egress) as usize].push(id);
                }
            }
            let [ing, eg] = lists;
            ix.ingress.push(ing);
            ix.egress.push(eg);
        }
        ix
    }
}

fn contains_ip(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip)
}

/// A 16-byte prefix (length in IPv6 space, network), as the maps key CIDRs.
type Key = (u32, Addr);

fn key_contains(outer: Key, inner: Key) -> bool {
    outer.0 <= inner.0 && policy::mask(&inner.1, outer.0) == outer.1
}

/// Whether a key is IPv4 (`::ffff:0:0/96` or inside it).
fn key_is_v4(k: Key) -> bool {
    k.0 >= 96 && k.1[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
}

const V4_SPACE: Key = (96, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);

/// The CIDR a key writes as (IPv4 inside `::ffff:0:0/96`).
fn net_of(k: Key) -> IpNet {
    if key_is_v4(k) {
        let a = std::net::Ipv4Addr::new(k.1[12], k.1[13], k.1[14], k.1[15]);
        IpNet::V4(ipnet::Ipv4Net::new(a, (k.0 - 96) as u8).unwrap_or_default())
    } else {
        IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(k.1), k.0 as u8).unwrap_or_default())
    }
}

/// Whether an ipBlock holds every address of region `k` (same family, inside its `cidr`, in no
/// `except`): for a region, all or none of its addresses are (see the module docs).
fn block_holds_region(b: &GBlock, k: Key) -> bool {
    let ck = cidr_key(&b.cidr);
    key_is_v4(ck) == key_is_v4(k) && key_contains(ck, k) && !b.except.iter().any(|e| key_contains(cidr_key(e), k))
}

fn block_holds_ip(b: &GBlock, ip: IpAddr) -> bool {
    contains_ip(&b.cidr, ip) && !b.except.iter().any(|e| contains_ip(e, ip))
}

// ---- classes --------------------------------------------------------------------------------

/// What tells addresses apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClassKey {
    /// Native segment (index), `None` for world.
    native: Option<usize>,
    /// The addresses in no CIDR at all (the output's own `world`).
    world_base: bool,
    pod: bool,
    /// Policies selecting it, for ingress and for egress (pods only).
    ing: Vec<u32>,
    eg: Vec<u32>,
    /// Rules with peers that one of its peers matches (bitset over rules).
    matched: Vec<u64>,
    /// Named ports: (index in `names`, port number), sorted.
    named: Vec<(u32, u16)>,
}

impl ClassKey {
    fn matches(&self, rules: &[GRule], r: u32) -> bool {
        rules[r as usize].all_peers || self.matched.get(r as usize / 64).is_some_and(|w| w >> (r % 64) & 1 == 1)
    }
}

/// What a class is made of.
#[derive(Default)]
struct Members {
    /// Region CIDRs (keys), and pod addresses.
    regions: Vec<Key>,
    pods: Vec<IpAddr>,
}

impl Members {
    /// The smallest member, to order classes by address.
    fn first(&self) -> Option<Key> {
        let pods = self.pods.iter().map(|ip| (128, addr16(*ip)));
        self.regions.iter().copied().chain(pods).map(|(l, a)| (a, l)).min().map(|(a, l)| (l, a))
    }
}

/// Why a pair is allowed: per side, `None` when that side is not isolated (open), else the
/// admitting policies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Why {
    egress: Option<Vec<u32>>,
    ingress: Option<Vec<u32>>,
}

/// An entry of the pair matrix: what NetworkPolicy allows (0: nothing, or not applicable).
type EntryId = u32;

#[derive(Default)]
struct Entries {
    list: Vec<(Ports, Why)>,
    ids: HashMap<(Ports, Why), EntryId>,
}

impl Entries {
    fn intern(&mut self, ports: Ports, why: Why) -> EntryId {
        let key = (ports, why);
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        self.list.push(key.clone());
        let id = self.list.len() as EntryId;
        self.ids.insert(key, id);
        id
    }

    fn get(&self, id: EntryId) -> &(Ports, Why) {
        &self.list[id as usize - 1]
    }
}

/// The merged classes as the NetworkPolicy rules see them.
struct Blocks<'a> {
    blocks: &'a [Vec<usize>],
    /// The pair matrix over classes (`n * n`).
    m: &'a [EntryId],
    n: usize,
    /// Each block's place in the output's order, and its segment.
    pos: &'a [usize],
    seg_ref: &'a [SegRef],
}

impl Blocks<'_> {
    fn at(&self, s: usize, d: usize) -> EntryId {
        self.m[self.blocks[s][0] * self.n + self.blocks[d][0]]
    }

    /// The segments of blocks `bs`, in output order.
    fn refs(&self, bs: &[usize]) -> Vec<SegRef> {
        let mut v: Vec<usize> = bs.to_vec();
        v.sort_by_key(|&b| self.pos[b]);
        v.iter().map(|&b| self.seg_ref[b]).collect()
    }

    fn first(&self, bs: &[usize]) -> usize {
        bs.iter().map(|&b| self.pos[b]).min().unwrap_or(usize::MAX)
    }
}

/// A NetworkPolicy allow rule to write: sides, what it allows, and where it sorts.
struct Emitted {
    from: Vec<SegRef>,
    to: Vec<SegRef>,
    entry: EntryId,
    order: (usize, usize),
}

/// The allow rules of what NetworkPolicy allows between blocks (see the module docs), named
/// after their policies, unique among themselves and `taken`.
fn np_rules(b: &Blocks<'_>, entries: &Entries, policies: &[NetworkPolicy], taken: BTreeSet<String>) -> Vec<Rule> {
    let (col_w, row_w) = wildcards(b);
    let mut emitted = wildcard_rules(b, &col_w, &row_w);
    emitted.extend(pair_rules(b, &col_w, &row_w));
    emitted.sort_by_key(|e| (e.order, e.entry));
    named_rules(emitted, entries, policies, taken)
}

/// The columns the same for every source (`from: ["*"]`), and the rows the same for every
/// destination (`to: ["*"]`) worth writing so: those that spare more explicit pairs than the
/// cross pairs they add with the `from: ["*"]` columns.
#[allow(clippy::type_complexity)]
fn wildcards(b: &Blocks<'_>) -> (Vec<Option<EntryId>>, Vec<Option<EntryId>>) {
    let nb = b.blocks.len();
    let uniform = |e: EntryId| (e != 0).then_some(e);
    let col_w: Vec<Option<EntryId>> = (0..nb)
        .map(|d| {
            let e = b.at(0, d);
            (0..nb).all(|s| b.at(s, d) == e).then_some(e).and_then(uniform)
        })
        .collect();
    let n_col_w = col_w.iter().filter(|e| e.is_some()).count();
    let row_w: Vec<Option<EntryId>> = (0..nb)
        .map(|s| {
            let e = b.at(s, 0);
            let e = (0..nb).all(|d| b.at(s, d) == e).then_some(e).and_then(uniform)?;
            let spared = (0..nb).filter(|&d| col_w[d].is_none()).count();
            (spared > 1 + n_col_w).then_some(e)
        })
        .collect();
    (col_w, row_w)
}

/// The rules of the wildcard columns (`from: ["*"]`) and rows (`to: ["*"]`), one per entry.
fn wildcard_rules(b: &Blocks<'_>, col_w: &[Option<EntryId>], row_w: &[Option<EntryId>]) -> Vec<Emitted> {
    let by_entry = |w: &[Option<EntryId>]| {
        let mut m: BTreeMap<EntryId, Vec<usize>> = BTreeMap::new();
        for (i, e) in w.iter().enumerate() {
            if let Some(e) = e {
                m.entry(*e).or_default().push(i);
            }
        }
        m
    };
    let cols = by_entry(col_w).into_iter().map(|(entry, to)| Emitted {
        from: vec![SegRef::Any],
        to: b.refs(&to),
        entry,
        order: (b.first(&to), 0),
    });
    let rows = by_entry(row_w).into_iter().map(|(entry, from)| Emitted {
        from: b.refs(&from),
        to: vec![SegRef::Any],
        entry,
        order: (usize::MAX - 1, b.first(&from)),
    });
    cols.chain(rows).collect()
}

/// The other pairs: per destination, the sources of each entry; then the destinations sharing
/// (sources, entry) in one rule.
fn pair_rules(b: &Blocks<'_>, col_w: &[Option<EntryId>], row_w: &[Option<EntryId>]) -> Vec<Emitted> {
    let nb = b.blocks.len();
    let mut groups: BTreeMap<(Vec<usize>, EntryId), Vec<usize>> = BTreeMap::new();
    for d in (0..nb).filter(|&d| col_w[d].is_none()) {
        let mut per_entry: BTreeMap<EntryId, Vec<usize>> = BTreeMap::new();
        for s in (0..nb).filter(|&s| row_w[s].is_none()) {
            let e = b.at(s, d);
            if e != 0 {
                per_entry.entry(e).or_default().push(s);
            }
        }
        for (e, from) in per_entry {
            groups.entry((from, e)).or_default().push(d);
        }
    }
    groups
        .into_iter()
        .map(|((from, entry), to)| Emitted {
            order: (b.first(&to), b.first(&from)),
            from: b.refs(&from),
            to: b.refs(&to),
            entry,
        })
        .collect()
}

/// The rules of `emitted`, in its order, named after their policies (`name#2`, ... when a name
/// is taken already).
fn named_rules(
    emitted: Vec<Emitted>,
    entries: &Entries,
    policies: &[NetworkPolicy],
    mut taken: BTreeSet<String>,
) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(emitted.len());
    for Emitted { from, to, entry, .. } in emitted {
        let (ports, why) = entries.get(entry);
        let (name, description) = describe(why, policies);
        let mut unique = name.clone();
        let mut k = 1;
        while taken.contains(&unique) {
            k += 1;
            unique = format!("{name}#{k}");
        }
        taken.insert(unique.clone());
        rules.push(Rule {
            name: unique,
            description: Some(description),
            from,
            to,
            ports: port_specs(ports),
            action: Action::Allow,
            mode: Mode::Enforce,
            grant: None,
        });
    }
    rules
}

fn ip_of(k: Key) -> IpAddr {
    match net_of(k) {
        IpNet::V4(n) => IpAddr::V4(n.addr()),
        IpNet::V6(n) => IpAddr::V6(n.addr()),
    }
}

fn seg_name(segments: &[Segment], r: SegRef) -> String {
    match r {
        SegRef::Any => policy::ANY_NAME.to_owned(),
        SegRef::World => policy::WORLD_NAME.to_owned(),
        SegRef::Named(i) => segments.get(i).map_or_else(|| format!("#{i}"), |s| s.name.clone()),
    }
}

/// The name (`np:ns/a+ns/b`, `np:open`) and description of the rule for a pair's reason.
fn describe(why: &Why, policies: &[NetworkPolicy]) -> (String, String) {
    let ids = |v: &[u32]| v.iter().map(|&p| policies[p as usize].id()).collect::<Vec<_>>();
    let mut all: Vec<String> = why.ingress.iter().chain(why.egress.iter()).flat_map(|v| ids(v)).collect();
    all.sort();
    all.dedup();
    let name = if all.is_empty() { "np:open".to_owned() } else { format!("np:{}", all.join("+")) };
    let side = |v: &Option<Vec<u32>>, what: &str| match v {
        None => format!("{what}: not isolated"),
        Some(v) => format!("{what}: allowed by {}", ids(v).join(", ")),
    };
    let description = format!(
        "NetworkPolicy: {}; {}",
        side(&why.egress, "egress of the source"),
        side(&why.ingress, "ingress of the destination")
    );
    (name, description)
}
