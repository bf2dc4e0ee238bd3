//! The kernel maps, read from the agent's pins.

use super::{
    Array, BTreeMap, BpfHashMap, CT_F_CLOSING, CT_TIMEOUT_ICMP_NS, CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_NS,
    CT_TIMEOUT_UDP_NS, CidrData, Command, CtKey, CtValue, HostKey, LimitConfig, LpmTrie, MAX_LIMITS, Map, MapData,
    PROFILE_SLOT_SHIFT, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PairKey, Path, PortData, Result, SegmentInfo, SlotConfig,
    Verdict, bin, ensure, maps, mono_ns,
};
use anyhow::Context as _;

pub(crate) fn open_map(pins: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(pins.join("maps").join(name)).with_context(|| format!("open pinned map {name}"))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

pub(crate) fn hash<K: aya::Pod, V: aya::Pod>(pins: &Path, name: &str) -> Result<BpfHashMap<MapData, K, V>> {
    BpfHashMap::try_from(open_map(pins, name)?).with_context(|| format!("{name} as a hash map"))
}

pub(crate) fn trie<K: aya::Pod, V: aya::Pod>(pins: &Path, name: &str) -> Result<LpmTrie<MapData, K, V>> {
    LpmTrie::try_from(open_map(pins, name)?).with_context(|| format!("{name} as an LPM trie"))
}

pub(crate) fn array<V: aya::Pod>(pins: &Path, name: &str) -> Result<Array<MapData, V>> {
    Array::try_from(open_map(pins, name)?).with_context(|| format!("{name} as an array"))
}

/// Entries of one policy slot, as `ztagent policy validate` counts a compiled policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotSize {
    pub(crate) hosts: usize,
    pub(crate) cidrs: usize,
    pub(crate) pairs: usize,
    pub(crate) ports: usize,
    pub(crate) limits: usize,
}

impl std::fmt::Display for SlotSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} hosts, {} cidrs, {} pairs, {} ports, {} limits",
            self.hosts, self.cidrs, self.pairs, self.ports, self.limits
        )
    }
}

/// `ztagent policy validate FILE`: "... (3 segments, 4 rules, 2 hosts, 4 cidrs, 3 pairs, 3
/// profiles, 14 port entries, 1 rate limit)".
pub(crate) fn compiled_size(file: &Path) -> Result<SlotSize> {
    let out = Command::new(bin("ztagent")).args(["policy", "validate"]).arg(file).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "policy validate {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let inner =
        text.rsplit_once('(').and_then(|(_, r)| r.split_once(')')).map(|(i, _)| i).context("validate output")?;
    let mut s = SlotSize::default();
    for part in inner.split(", ") {
        let (n, what) = part.split_once(' ').context("validate output")?;
        let n: usize = n.parse().with_context(|| format!("validate output {text:?}"))?;
        match what {
            "hosts" | "host" => s.hosts = n,
            "cidrs" | "cidr" => s.cidrs = n,
            "pairs" | "pair" => s.pairs = n,
            "port entries" | "port entry" => s.ports = n,
            "rate limits" | "rate limit" => s.limits = n,
            _ => {}
        }
    }
    Ok(s)
}

pub(crate) struct PolicyMaps {
    pub(crate) active: Option<u32>,
    pub(crate) revision: u32,
    pub(crate) slots: [SlotSize; 2],
    /// Fingerprints of the limits of each slot.
    pub(crate) fingerprints: [Vec<u64>; 2],
}

pub(crate) fn read_policy_maps(pins: &Path) -> Result<PolicyMaps> {
    let active = array::<u32>(pins, maps::ACTIVE_SLOT)?.get(&0, 0)?;
    let active = matches!(active, 1 | 2).then(|| active - 1);
    let revision = match active {
        Some(s) => array::<SlotConfig>(pins, maps::SLOTS)?.get(&s, 0)?.revision,
        None => 0,
    };
    let mut slots = [SlotSize::default(); 2];
    for k in hash::<HostKey, SegmentInfo>(pins, maps::HOSTS)?.keys() {
        slots[k?.slot as usize & 1].hosts += 1;
    }
    for k in trie::<CidrData, SegmentInfo>(pins, maps::CIDRS)?.keys() {
        slots[u32::from_be_bytes(k?.data().slot) as usize & 1].cidrs += 1;
    }
    for k in hash::<PairKey, u32>(pins, maps::PAIRS)?.keys() {
        slots[k?.slot as usize & 1].pairs += 1;
    }
    for k in trie::<PortData, Verdict>(pins, maps::PORTS)?.keys() {
        slots[(u32::from_be_bytes(k?.data().profile) >> PROFILE_SLOT_SHIFT) as usize & 1].ports += 1;
    }
    let limits = array::<LimitConfig>(pins, maps::LIMITS)?;
    let mut fingerprints = [Vec::new(), Vec::new()];
    for slot in 0..2u32 {
        for i in slot * MAX_LIMITS..(slot + 1) * MAX_LIMITS {
            let c = limits.get(&i, 0)?;
            if c.fingerprint == 0 {
                break;
            }
            fingerprints[slot as usize].push(c.fingerprint);
            slots[slot as usize].limits += 1;
        }
    }
    Ok(PolicyMaps { active, revision, slots, fingerprints })
}

/// Conntrack, classified at one moment.
#[derive(Debug, Default)]
pub(crate) struct CtAudit {
    pub(crate) total: u64,
    /// (protocol, live?) -> entries.
    pub(crate) by: BTreeMap<(&'static str, bool), u64>,
    /// TCP entries without the closing flag: their timeout is the established one (6 h).
    pub(crate) tcp_established: u64,
    /// The largest last_seen of a live entry (CLOCK_MONOTONIC ns).
    pub(crate) newest_live: u64,
    pub(crate) now: u64,
}

pub(crate) fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// The datapath's timeouts (agent-common), by protocol and flags.
pub(crate) fn ct_timeout(k: &CtKey, v: &CtValue) -> u64 {
    match k.proto {
        PROTO_TCP if v.flags & CT_F_CLOSING != 0 => CT_TIMEOUT_TCP_CLOSING_NS,
        PROTO_TCP => CT_TIMEOUT_TCP_NS,
        PROTO_ICMP => CT_TIMEOUT_ICMP_NS,
        _ => CT_TIMEOUT_UDP_NS,
    }
}

pub(crate) fn audit_conntrack(pins: &Path) -> Result<CtAudit> {
    let ct = hash::<CtKey, CtValue>(pins, maps::CONNTRACK)?;
    let mut a = CtAudit { now: mono_ns(), ..Default::default() };
    for entry in ct.iter() {
        let (k, v) = entry?;
        a.total += 1;
        // `now - last_seen > timeout` is the datapath's own test (`conntrack::expired`).
        let live = a.now.saturating_sub(v.last_seen) <= ct_timeout(&k, &v);
        *a.by.entry((proto_name(k.proto), live)).or_default() += 1;
        if k.proto == PROTO_TCP && v.flags & CT_F_CLOSING == 0 {
            a.tcp_established += 1;
        }
        if live {
            a.newest_live = a.newest_live.max(v.last_seen);
        }
    }
    Ok(a)
}

impl CtAudit {
    pub(crate) fn count(&self, proto: &str, live: bool) -> u64 {
        self.by.get(&(proto, live)).copied().unwrap_or(0)
    }
    pub(crate) fn live(&self) -> u64 {
        self.by.iter().filter(|((_, l), _)| *l).map(|(_, n)| n).sum()
    }
}

pub(crate) fn count_keys<K: aya::Pod, V: aya::Pod>(pins: &Path, name: &str) -> Result<u64> {
    Ok(hash::<K, V>(pins, name)?.keys().filter(Result::is_ok).count() as u64)
}

pub(crate) fn max_entries(pins: &Path, name: &str) -> Result<u64> {
    let data = MapData::from_pin(pins.join("maps").join(name))?;
    Ok(data.info()?.max_entries().into())
}
