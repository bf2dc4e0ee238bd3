//! What talks to what: every (source identity, destination service, protocol, port) the
//! kernel reported, with when it was first and last seen and what the policy did with it. The
//! first step of a zero-trust rollout: see who calls whom before writing the least policy that
//! allows exactly that.
//!
//! Fed by the event stream (an observer of the hub: it sees every record, whatever the clients
//! do): an `allowed` event is a new flow, a `would-deny` one a new flow the policy would deny, a
//! `denied` or `rate-limited` record carries the exact number of packets it stands for. The
//! packets and bytes of tracked (allowed and would-deny) flows come from the kernel's counters
//! in each conntrack entry, read by the agent ([`Inventory::count_flows`]): what it read last of
//! each entry is remembered (by a 64-bit hash of the entry's key) and kept with the inventory,
//! so a restart neither loses nor counts twice what was read before it. An
//! identity is a segment's name; an address in no segment is grouped by its prefix (`world
//! 10.20.9.0/24`, or a /64 for IPv6), so a scan does not make one entry per address. Bounded: at
//! most [`MAX_ENTRIES`] entries; beyond, the least recently seen tenth is evicted (counted).
//! Kept in the state directory (`inventory.json`, written atomically every
//! [`SAVE_INTERVAL`] and when the agent stops), so it survives restarts.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use agent_common::{CT_F_REPLY, CtKey, CtValue, PROTO_TCP, PROTO_UDP};

use crate::{
    api::{EventRecord, Key, Listing, Row, Seen},
    events::{ip_of, proto_name},
    policy::{CompiledPolicy, Lookup, WORLD_NAME},
};

pub const MAX_ENTRIES: usize = 100_000;
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);
const FILE: &str = "inventory.json";

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot write the inventory to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the inventory {path} cannot be read: {message}")]
    Read { path: PathBuf, message: String },
}

/// What is kept in the state directory: the listing, and what was read of each conntrack entry.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    listing: Listing,
    /// (hash of the entry's key, packets, bytes) as last read.
    #[serde(default)]
    flows: Vec<(u64, u64, u64)>,
}

#[derive(Debug, Default)]
pub struct Inventory {
    map: HashMap<Key, Seen>,
    evicted: u64,
    dirty: bool,
    /// Per conntrack entry (a hash of its key, see [`flow_id`]): packets and bytes as last read.
    /// At most one per entry of the kernel's conntrack table.
    read: HashMap<u64, (u64, u64)>,
}

/// A stable 64-bit hash (FNV-1a) of a conntrack key: the same across restarts and versions,
/// so what was read of an entry is recognised after a restart. (A collision, at 64 bits and a
/// table of 262,144 entries a chance of 2e-9, would take one entry's counts for a restart.)
pub fn flow_id(k: &agent_common::CtKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ports = [k.sport.to_be_bytes(), k.dport.to_be_bytes()];
    for b in k.src.iter().chain(&k.dst).chain(ports.iter().flatten()).chain([&k.proto]) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The identity of one side: its segment, or its prefix when it is in none.
pub fn identity(segment: &str, addr: IpAddr) -> String {
    if segment != WORLD_NAME {
        return segment.to_owned();
    }
    let net = match addr {
        IpAddr::V4(_) => ipnet::IpNet::new(addr, 24),
        IpAddr::V6(_) => ipnet::IpNet::new(addr, 64),
    };
    net.map_or_else(|_| WORLD_NAME.to_owned(), |n| format!("{WORLD_NAME} {}", n.trunc()))
}

impl Inventory {
    /// Takes in one event record (seen at unix time `now`).
    pub fn record(&mut self, r: &EventRecord, now: f64) {
        let (flows, would, denied, limited) = match (r.verdict.as_str(), r.reason.as_str()) {
            ("allowed", _) => (1, 0, 0, 0),
            ("would-deny", _) => (0, 1, 0, 0),
            ("denied", "rule" | "default" | "revoked") => (0, 0, r.count, 0),
            ("rate-limited" | "would-rate-limit", _) => (0, 0, 0, r.count),
            // Malformed packets, fragments, no policy, the agent's own records: no service.
            _ => return,
        };
        let (Some(src), Some(dst), Some(proto)) = (r.src, r.dst, r.proto.as_ref()) else { return };
        let key = Key {
            src: identity(&r.src_segment, src),
            dst: identity(&r.dst_segment, dst),
            proto: proto.clone(),
            port: r.service_port(),
        };
        if !self.map.contains_key(&key) && self.map.len() >= MAX_ENTRIES {
            self.evict();
        }
        let seen = self.map.entry(key).or_insert_with(|| Seen { first_seen: now, ..Seen::default() });
        seen.last_seen = now;
        seen.allowed_flows += flows;
        seen.would_deny_flows += would;
        seen.denied_packets += denied;
        seen.rate_limited_packets += limited;
        if flows > 0 && r.rule.is_some() {
            seen.rule.clone_from(&r.rule);
        }
        self.dirty = true;
    }

    /// Takes in the counters of the kernel's conntrack entries, read at unix time `now`: each
    /// entry's packets and bytes since it was last read go to the inventory entry `name` gives
    /// its flow (called only for entries that counted something). An entry whose counts went
    /// down is a new flow of the same tuple (counted from zero). Entries no longer in the table
    /// are forgotten. Returns the packets added, per source identity.
    pub fn count_flows(
        &mut self,
        entries: &[(agent_common::CtKey, agent_common::CtValue)],
        mut name: impl FnMut(&agent_common::CtKey, &agent_common::CtValue) -> Option<Key>,
        now: f64,
    ) -> Vec<(String, u64)> {
        let mut read = HashMap::with_capacity(entries.len());
        let mut by_source: HashMap<String, u64> = HashMap::new();
        for (k, v) in entries {
            if v.packets == 0 {
                continue;
            }
            let id = flow_id(k);
            let (p0, b0) = self.read.get(&id).copied().unwrap_or((0, 0));
            let (packets, bytes) =
                if v.packets < p0 || v.bytes < b0 { (v.packets, v.bytes) } else { (v.packets - p0, v.bytes - b0) };
            read.insert(id, (v.packets, v.bytes));
            if packets == 0 {
                continue;
            }
            let Some(key) = name(k, v) else { continue };
            match by_source.get_mut(key.src.as_str()) {
                Some(n) => *n += packets,
                None => {
                    by_source.insert(key.src.clone(), packets);
                }
            }
            let seen = match self.map.get_mut(&key) {
                Some(seen) => seen,
                None => {
                    if self.map.len() >= MAX_ENTRIES {
                        self.evict();
                    }
                    self.map.entry(key).or_insert_with(|| Seen { first_seen: now, ..Seen::default() })
                }
            };
            seen.last_seen = now;
            seen.packets += packets;
            seen.bytes += bytes;
        }
        if !by_source.is_empty() || read.len() != self.read.len() {
            self.dirty = true;
        }
        self.read = read;
        by_source.into_iter().collect()
    }

    /// Makes room: the least recently seen tenth goes.
    fn evict(&mut self) {
        let mut times: Vec<f64> = self.map.values().map(|s| s.last_seen).collect();
        let k = times.len() / 10;
        times.select_nth_unstable_by(k, f64::total_cmp);
        let cut = times[k];
        let before = self.map.len();
        self.map.retain(|_, s| s.last_seen > cut);
        self.evicted += (before - self.map.len()) as u64;
    }

    /// Conntrack entries whose last-read counts are kept (for the benchmark).
    pub fn tracked(&self) -> usize {
        self.read.len()
    }

    /// (Entries kept, entries evicted), for the metrics.
    pub fn size(&self) -> (u64, u64) {
        (self.map.len() as u64, self.evicted)
    }

    /// The entries seen since unix time `since` (all without), sorted by key.
    pub fn list(&self, since: Option<f64>) -> Listing {
        let mut entries: Vec<Row> = self
            .map
            .iter()
            .filter(|(_, s)| since.is_none_or(|t| s.last_seen >= t))
            .map(|(k, s)| Row { key: k.clone(), seen: s.clone() })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Listing { entries, evicted: self.evicted, capacity: MAX_ENTRIES }
    }

    pub fn load(dir: &Path) -> Result<Inventory, InventoryError> {
        let saved: Saved =
            crate::store::read_json(dir, FILE).map_err(|(path, message)| InventoryError::Read { path, message })?;
        let map = saved.listing.entries.into_iter().map(|r| (r.key, r.seen)).collect();
        let read = saved.flows.into_iter().map(|(id, p, b)| (id, (p, b))).collect();
        Ok(Inventory { map, evicted: saved.listing.evicted, dirty: false, read })
    }

    /// Writes the inventory to `dir` if it changed since the last save.
    pub fn save(&mut self, dir: &Path) -> Result<(), InventoryError> {
        if !self.dirty {
            return Ok(());
        }
        let flows = self.read.iter().map(|(&id, &(p, b))| (id, p, b)).collect();
        let saved = Saved { listing: self.list(None), flows };
        crate::store::write_json(dir, FILE, &saved).map_err(|(path, source)| InventoryError::Write { path, source })?;
        self.dirty = false;
        Ok(())
    }
}

/// The inventory key of the flow a conntrack entry belongs to, named by `lookup` of the policy
/// in force: (source identity, destination service, protocol, port) of its original direction.
pub fn key_of(compiled: &CompiledPolicy, lookup: &Lookup<'_>, k: &CtKey, v: &CtValue) -> Key {
    let (src, dst, dport) =
        if v.flags & CT_F_REPLY != 0 { (&k.dst, &k.src, k.sport) } else { (&k.src, &k.dst, k.dport) };
    let name = |a: &[u8; 16]| {
        let id = lookup.segment_of(a).id;
        identity(compiled.segment_name(id).unwrap_or(crate::policy::WORLD_NAME), ip_of(a))
    };
    let port = if k.proto == PROTO_TCP || k.proto == PROTO_UDP { dport } else { 0 };
    Key { src: name(src), dst: name(dst), proto: proto_name(k.proto), port }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        verdict: &str,
        reason: &str,
        src: (&str, &str),
        dst: (&str, &str),
        proto: &str,
        dport: u16,
        count: u64,
    ) -> EventRecord {
        EventRecord::flow(
            verdict,
            reason,
            (src.0, src.1.parse().unwrap()),
            (dst.0, dst.1.parse().unwrap()),
            proto,
            dport,
            count,
        )
    }

    #[test]
    fn counts_flows_and_packets_per_identity_and_service() {
        let mut inv = Inventory::default();
        let (front, pay) = (("frontend", "10.20.1.2"), ("payments", "10.20.2.10"));
        inv.record(&record("allowed", "rule", front, pay, "tcp", 443, 1), 10.0);
        inv.record(&record("allowed", "rule", front, pay, "tcp", 443, 1), 12.0);
        inv.record(&record("denied", "default", ("world", "10.20.9.7"), pay, "tcp", 22, 40), 13.0);
        inv.record(&record("denied", "default", ("world", "10.20.9.8"), pay, "tcp", 22, 2), 14.0);
        inv.record(&record("would-deny", "default", front, pay, "icmp", 777, 1), 15.0);
        inv.record(&record("denied", "malformed", front, pay, "tcp", 1, 1), 16.0);
        let l = inv.list(None);
        assert_eq!(l.entries.len(), 3, "{l:?}");
        let find = |src: &str, port| l.entries.iter().find(|r| r.key.src == src && r.key.port == port).unwrap();
        let web = find("frontend", 443);
        assert_eq!((web.seen.allowed_flows, web.seen.first_seen, web.seen.last_seen), (2, 10.0, 12.0));
        // Callers in no segment are grouped by prefix; the ICMP identifier is not a port.
        assert_eq!(find("world 10.20.9.0/24", 22).seen.denied_packets, 42);
        assert_eq!((find("frontend", 0).key.proto.as_str(), find("frontend", 0).seen.would_deny_flows), ("icmp", 1));
        assert_eq!(inv.list(Some(14.0)).entries.len(), 2);
        // Survives a restart.
        let dir = std::env::temp_dir().join(format!("ztagent-inventory-test-{}", std::process::id()));
        inv.save(&dir).unwrap();
        assert_eq!(Inventory::load(&dir).unwrap().list(None).entries, l.entries);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_the_flows_packets_and_bytes_once_across_restarts() {
        use agent_common::{CT_F_REPLY, CtKey, CtValue};
        let key = Key { src: "frontend".into(), dst: "payments".into(), proto: "udp".into(), port: 53 };
        let orig = CtKey { src: [1; 16], dst: [2; 16], sport: 4000, dport: 53, proto: 17, _pad: [0; 3] };
        let reply = CtKey { src: orig.dst, dst: orig.src, sport: 53, dport: 4000, ..orig };
        let entry = |k: CtKey, flags, packets, bytes| (k, CtValue { flags, packets, bytes, ..CtValue::default() });
        let name = |_: &CtKey, _: &CtValue| Some(key.clone());
        let totals =
            |inv: &Inventory| inv.list(None).entries.iter().map(|r| (r.seen.packets, r.seen.bytes)).collect::<Vec<_>>();
        let mut inv = Inventory::default();
        // Both directions count for the flow; an entry that passed nothing is skipped.
        let added = inv.count_flows(&[entry(orig, 0, 3, 300), entry(reply, CT_F_REPLY, 2, 150)], name, 1.0);
        assert_eq!(added, [("frontend".to_string(), 5)]);
        assert_eq!(totals(&inv), [(5, 450)]);
        // Read again: only what is new.
        inv.count_flows(&[entry(orig, 0, 4, 400), entry(reply, CT_F_REPLY, 2, 150)], name, 2.0);
        assert_eq!(totals(&inv), [(6, 550)]);
        // Saved and loaded (a restart): the next read counts only what came since.
        let dir = std::env::temp_dir().join(format!("ztagent-inventory-flows-{}", std::process::id()));
        inv.save(&dir).unwrap();
        let mut inv = Inventory::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        inv.count_flows(&[entry(orig, 0, 5, 500), entry(reply, CT_F_REPLY, 2, 150)], name, 3.0);
        assert_eq!(totals(&inv), [(7, 650)]);
        // A new flow of the same tuple (its counts went down) counts from zero; an entry gone
        // from the table is forgotten.
        inv.count_flows(&[entry(orig, 0, 1, 60)], name, 4.0);
        assert_eq!(totals(&inv), [(8, 710)]);
        assert_eq!(inv.read.len(), 1);
    }

    #[test]
    fn stays_within_its_bound() {
        let mut inv = Inventory::default();
        for i in 0..MAX_ENTRIES as u32 + 10 {
            let port = (i % 60000) as u16 + 1;
            let src = format!("s{}", i / 60000);
            inv.record(&record("allowed", "rule", (&src, "10.0.0.1"), ("d", "10.0.0.2"), "tcp", port, 1), f64::from(i));
        }
        let l = inv.list(None);
        assert!(
            l.entries.len() <= MAX_ENTRIES && l.evicted >= 10,
            "{} entries, {} evicted",
            l.entries.len(),
            l.evicted
        );
        // The most recent ones stay.
        assert!(l.entries.iter().any(|r| r.seen.last_seen == f64::from(MAX_ENTRIES as u32 + 9)));
    }
}
