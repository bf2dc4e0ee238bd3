//! The one place that writes policy into the kernel. A push goes to the *inactive* slot of
//! every policy map; only when the slot is complete does one 4-byte write of `ZT_ACTIVE` make
//! it the policy in force. A packet reads `ZT_ACTIVE` once, so it is judged wholly by the old
//! policy or wholly by the new one, and a push that fails half-way changes nothing that is in
//! force.
use std::time::{Duration, Instant};

use std::collections::HashSet;

use agent_common::{
    BucketConfig, BucketKey, CIDR_SLOT_BITS, CidrData, HostKey, LimitConfig, LimitStats, MAX_BUCKET_SETS, MAX_GRANTS,
    MAX_LIMITS, PROFILE_NONE, PROFILE_SLOT_SHIFT, PairKey, PortData, SLOT_F_APIS, SLOT_F_AUDIT, SLOT_F_GRANT_SOURCES,
    SegmentInfo, SlotConfig, TICK_SHIFT, Verdict,
    http::{API_HTTP, ApiPortKey, MAX_API_PORTS},
    maps,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
};

use crate::policy::{Bucket, CompiledPolicy, Mode};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("map {map} is missing or has the wrong layout: {message}")]
    Map { map: &'static str, message: String },
    #[error("map {map} is full ({message}); raise its limit or shrink the policy — the policy in force is unchanged")]
    Full { map: &'static str, message: String },
    #[error(
        "the policy needs {needed} {what}, more than the {allowed} per policy that {flag} allows (half the map: a push holds two policies); the policy in force is unchanged"
    )]
    TooLarge { what: &'static str, needed: usize, allowed: usize, flag: &'static str },
}

/// What a push wrote.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Written {
    pub revision: u32,
    pub slot: u32,
    pub entries: usize,
    pub removed: usize,
}

/// Typed handles on the policy maps.
pub struct MapWriter {
    active: Array<MapData, u32>,
    slots: Array<MapData, SlotConfig>,
    hosts: HashMap<MapData, HostKey, SegmentInfo>,
    cidrs: LpmTrie<MapData, CidrData, SegmentInfo>,
    pairs: HashMap<MapData, PairKey, u32>,
    ports: LpmTrie<MapData, PortData, Verdict>,
    limits: Array<MapData, LimitConfig>,
    buckets: Array<MapData, u64>,
    addr_buckets: HashMap<MapData, BucketKey, u64>,
    limit_stats: PerCpuArray<MapData, LimitStats>,
    /// Deadlines of the time-bound grants (see `grants`).
    grants: Array<MapData, u64>,
    /// The address blocks of grants, per slot.
    grant_sources: LpmTrie<MapData, CidrData, SegmentInfo>,
    /// The declared HTTP ports (`apis`), per slot.
    api_ports: HashMap<MapData, ApiPortKey, u32>,
    last_flip: Option<Instant>,
    /// Entries one policy may use in each map: half of each (two slots).
    room: crate::kernel::datapath::Limits,
}

/// A program that read `ZT_ACTIVE` just before a flip may still be using the old slot for a
/// few microseconds; a push never clears a slot that was in force less than this long ago.
const GRACE: Duration = Duration::from_millis(20);

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, WriteError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(WriteError::Map { map: name, message: "not in the object".into() })?;
    T::try_from(map).map_err(|e| WriteError::Map { map: name, message: e.to_string() })
}

fn full(map: &'static str) -> impl Fn(MapError) -> WriteError {
    move |e| WriteError::Full { map, message: crate::kernel::datapath::error_chain(&e) }
}

fn profile_id(slot: u32, profile: u32) -> u32 {
    (slot << PROFILE_SLOT_SHIFT) | profile
}

impl MapWriter {
    /// The policy maps of `ebpf`, created with the sizes in `limits`.
    pub fn new(ebpf: &mut Ebpf, limits: &crate::kernel::datapath::Limits) -> Result<Self, WriteError> {
        Ok(MapWriter {
            active: take(ebpf, maps::ACTIVE_SLOT)?,
            slots: take(ebpf, maps::SLOTS)?,
            hosts: take(ebpf, maps::HOSTS)?,
            cidrs: take(ebpf, maps::CIDRS)?,
            pairs: take(ebpf, maps::PAIRS)?,
            ports: take(ebpf, maps::PORTS)?,
            limits: take(ebpf, maps::LIMITS)?,
            buckets: take(ebpf, maps::BUCKETS)?,
            addr_buckets: take(ebpf, maps::ADDR_BUCKETS)?,
            limit_stats: take(ebpf, maps::LIMIT_STATS)?,
            grants: take(ebpf, maps::GRANTS)?,
            grant_sources: take(ebpf, maps::GRANT_SOURCES)?,
            api_ports: take(ebpf, maps::API_PORTS)?,
            last_flip: None,
            room: limits.clone(),
        })
    }

    /// Refuses, before writing anything, a policy that would not fit in its slot.
    fn fits(&self, p: &CompiledPolicy) -> Result<(), WriteError> {
        let half = |n: u32| n as usize / 2;
        let checks = [
            ("host addresses", p.hosts.len(), half(self.room.hosts), "--max-cidrs"),
            ("CIDR entries", p.cidrs.len(), half(self.room.cidrs), "--max-cidrs"),
            ("segment pairs", p.pairs.len(), half(self.room.pairs), "--max-pairs"),
            ("port entries", p.ports.len(), half(self.room.ports), "--max-port-entries"),
            ("rate limits", p.limits.len(), MAX_LIMITS as usize, "this build"),
            ("grant address blocks", p.grant_sources.len(), MAX_GRANTS as usize, "this build"),
            ("declared API ports", p.api_ports.len(), MAX_API_PORTS as usize, "this build"),
        ];
        match checks.into_iter().find(|(_, needed, allowed, _)| needed > allowed) {
            Some((what, needed, allowed, flag)) => Err(WriteError::TooLarge { what, needed, allowed, flag }),
            None => Ok(()),
        }
    }

    /// The slot in force, if a policy was ever installed (possibly by an earlier agent).
    pub fn active_slot(&self) -> Option<u32> {
        match self.active.get(&0, 0) {
            Ok(v @ (1 | 2)) => Some(v - 1),
            _ => None,
        }
    }

    /// The revision in force (0 before the first push).
    pub fn revision(&self) -> u32 {
        self.active_slot().and_then(|s| self.slots.get(&s, 0).ok()).map_or(0, |c| c.revision)
    }

    /// Installs `policy` as the policy in force, atomically; returns what was written.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<Written, WriteError> {
        self.fits(policy)?;
        let active = self.active_slot();
        let slot = match active {
            Some(s) => 1 - s,
            None => 0,
        };
        let revision = self.revision().wrapping_add(1).max(1);
        if let Some(t) = self.last_flip {
            let since = t.elapsed();
            if since < GRACE {
                std::thread::sleep(GRACE - since);
            }
        }
        let removed = self.clear(slot)?;
        let entries = match self.fill(slot, policy) {
            Ok(n) => n,
            Err(e) => {
                // Leave nothing half-written behind; the slot in force was never touched.
                let _ = self.clear(slot);
                return Err(e);
            }
        };
        if let Err(e) = self.fill_limits(slot, active, policy) {
            let _ = self.clear(slot);
            return Err(e);
        }
        let cfg = SlotConfig {
            default_action: policy.default_action,
            revision,
            any_any: policy.any_any.map_or(PROFILE_NONE, |p| profile_id(slot, p)),
            world_flags: policy.world_flags,
            flags: if policy.mode == Mode::Audit { SLOT_F_AUDIT } else { 0 }
                | if policy.grant_sources.is_empty() { 0 } else { SLOT_F_GRANT_SOURCES }
                | if policy.api_ports.is_empty() { 0 } else { SLOT_F_APIS },
        };
        self.slots.set(slot, cfg, 0).map_err(full(maps::SLOTS))?;
        // The flip: ZT_ACTIVE holds 1 + slot, so it only ever changes in its low byte and a
        // concurrent reader cannot see a torn value.
        self.active.set(0, slot + 1, 0).map_err(full(maps::ACTIVE_SLOT))?;
        self.last_flip = Some(Instant::now());
        // Buckets of limits the new policy no longer has: removed with the limit. (Packets
        // still judged by the old slot may recreate one for a moment; the next push removes
        // it.) Unchanged limits keep theirs: same fingerprint, same buckets.
        let live: HashSet<u64> = policy.limits.iter().map(|l| l.fingerprint).collect();
        let stale: Vec<BucketKey> =
            self.addr_buckets.keys().filter_map(Result::ok).filter(|k| !live.contains(&k.fingerprint)).collect();
        for k in &stale {
            let _ = self.addr_buckets.remove(k);
        }
        Ok(Written { revision, slot, entries, removed })
    }

    /// Sets the deadline of the grant at `index` (monotonic ns; 0 ends it at once). Its rule may
    /// be in force already: the kernel applies a deadline the moment it is written.
    pub fn set_grant(&mut self, index: u32, deadline_ns: u64) -> Result<(), WriteError> {
        self.grants.set(index, deadline_ns, 0).map_err(full(maps::GRANTS))
    }

    /// Removes every entry of `slot` from the policy maps.
    fn clear(&mut self, slot: u32) -> Result<usize, WriteError> {
        let mut n = 0;
        let hosts: Vec<HostKey> = self.hosts.keys().filter_map(Result::ok).filter(|k| k.slot == slot).collect();
        for k in &hosts {
            n += self.hosts.remove(k).is_ok() as usize;
        }
        let cidrs: Vec<Key<CidrData>> =
            self.cidrs.keys().filter_map(Result::ok).filter(|k| k.data().slot == slot.to_be_bytes()).collect();
        for k in &cidrs {
            n += self.cidrs.remove(k).is_ok() as usize;
        }
        let blocks: Vec<Key<CidrData>> =
            self.grant_sources.keys().filter_map(Result::ok).filter(|k| k.data().slot == slot.to_be_bytes()).collect();
        for k in &blocks {
            n += self.grant_sources.remove(k).is_ok() as usize;
        }
        let pairs: Vec<PairKey> = self.pairs.keys().filter_map(Result::ok).filter(|k| k.slot == slot).collect();
        for k in &pairs {
            n += self.pairs.remove(k).is_ok() as usize;
        }
        let ports: Vec<Key<PortData>> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from_be_bytes(k.data().profile) >> PROFILE_SLOT_SHIFT == slot)
            .collect();
        for k in &ports {
            n += self.ports.remove(k).is_ok() as usize;
        }
        let apis: Vec<ApiPortKey> = self.api_ports.keys().filter_map(Result::ok).filter(|k| k.slot == slot).collect();
        for k in &apis {
            n += self.api_ports.remove(k).is_ok() as usize;
        }
        Ok(n)
    }

    /// Writes the rate limits of `p` into `slot`. Counters of a limit that was already in
    /// force (same fingerprint) carry over; new limits start from zero.
    fn fill_limits(&mut self, slot: u32, active: Option<u32>, p: &CompiledPolicy) -> Result<(), WriteError> {
        if p.limits.len() > MAX_LIMITS as usize {
            return Err(WriteError::Full {
                map: maps::LIMITS,
                message: format!("{} rate limits, at most {MAX_LIMITS}", p.limits.len()),
            });
        }
        let cpus = aya::util::nr_cpus().map_or(1, |n| n);
        let zero = || {
            PerCpuValues::try_from(vec![LimitStats::default(); cpus])
                .map_err(|e| WriteError::Map { map: maps::LIMIT_STATS, message: e.to_string() })
        };
        // The limits in force: a limit that stays (same fingerprint) keeps its stable index, and
        // with it its segment buckets and its counts; any other gets an index no limit in force
        // uses, its buckets reset to idle and its counts to zero.
        let old: Vec<(u32, LimitConfig)> = active.map_or_else(Vec::new, |a| self.slot_limits(a));
        let mut taken: HashSet<u32> = old.iter().map(|(_, c)| c.bucket).collect();
        let now = crate::clock::monotonic_ns() << TICK_SHIFT;
        for (i, l) in p.limits.iter().enumerate() {
            let index = slot * MAX_LIMITS + i as u32;
            let ticks = |b: &Option<Bucket>| {
                // A cost below one tick would read as "no bucket": at least 1.
                b.as_ref().map_or(BucketConfig::default(), |b| BucketConfig {
                    cost: (b.cost_fp16 >> (16 - TICK_SHIFT)).max(1),
                    tolerance: b.tolerance_fp16 >> (16 - TICK_SHIFT),
                })
            };
            let kept = old.iter().find(|(_, c)| c.fingerprint == l.fingerprint);
            let bucket = match kept {
                Some((_, c)) => c.bucket,
                None => {
                    let free = (0..MAX_BUCKET_SETS)
                        .find(|b| !taken.contains(b))
                        .ok_or(WriteError::Full { map: maps::BUCKETS, message: "no free bucket set".into() })?;
                    taken.insert(free);
                    for kind in 0..3 {
                        self.buckets.set(free * 3 + kind, now, 0).map_err(full(maps::BUCKETS))?;
                    }
                    self.limit_stats.set(free, zero()?, 0).map_err(full(maps::LIMIT_STATS))?;
                    free
                }
            };
            let cfg = LimitConfig {
                fingerprint: l.fingerprint,
                buckets: [ticks(&l.packets), ticks(&l.connections), ticks(&l.bytes)],
                per_address: l.per_address as u32,
                bucket,
            };
            self.limits.set(index, cfg, 0).map_err(full(maps::LIMITS))?;
        }
        // Terminate the list (a zero fingerprint), so a later push reads only live entries.
        if (p.limits.len() as u32) < MAX_LIMITS {
            let index = slot * MAX_LIMITS + p.limits.len() as u32;
            self.limits.set(index, LimitConfig::default(), 0).map_err(full(maps::LIMITS))?;
        }
        Ok(())
    }

    /// The rate limits in force: (index in the policy, config, stats summed over CPUs).
    pub fn limit_stats(&self, id: usize) -> Option<(LimitConfig, LimitStats)> {
        let slot = self.active_slot()?;
        let index = slot * MAX_LIMITS + id as u32;
        let cfg = self.limits.get(&index, 0).ok()?;
        let per_cpu = self.limit_stats.get(&cfg.bucket, 0).ok()?;
        let sum = per_cpu.iter().fold(LimitStats::default(), |a, s| LimitStats {
            packets_passed: a.packets_passed + s.packets_passed,
            packets_dropped: a.packets_dropped + s.packets_dropped,
            connections_passed: a.connections_passed + s.connections_passed,
            connections_dropped: a.connections_dropped + s.connections_dropped,
            bytes_passed: a.bytes_passed + s.bytes_passed,
            bytes_dropped: a.bytes_dropped + s.bytes_dropped,
            buckets_created: a.buckets_created + s.buckets_created,
            _pad: 0,
        });
        Some((cfg, sum))
    }

    /// The limits of `slot`: (index in `LIMITS`, config), up to the zero fingerprint.
    fn slot_limits(&self, slot: u32) -> Vec<(u32, LimitConfig)> {
        (slot * MAX_LIMITS..(slot + 1) * MAX_LIMITS)
            .map_while(|i| self.limits.get(&i, 0).ok().filter(|c| c.fingerprint != 0).map(|c| (i, c)))
            .collect()
    }

    /// Of a limit in force: the theoretical arrival time (ticks) of its segment-scope bucket of
    /// `kind` (None if the limit is not in force or per address), and the number of its live
    /// per-address buckets of every kind (packets, connections, bytes), as the kernel's
    /// `buckets_created` counts them.
    pub fn bucket_state(&self, fingerprint: u64, kind: usize) -> (Option<u64>, usize) {
        let limit = self
            .active_slot()
            .and_then(|a| self.slot_limits(a).into_iter().map(|(_, c)| c).find(|c| c.fingerprint == fingerprint));
        let tat =
            limit.filter(|c| c.per_address == 0).and_then(|c| self.buckets.get(&(c.bucket * 3 + kind as u32), 0).ok());
        let live = self.addr_buckets.keys().filter_map(Result::ok).filter(|k| k.fingerprint == fingerprint).count();
        (tat, live)
    }

    fn fill(&mut self, slot: u32, p: &CompiledPolicy) -> Result<usize, WriteError> {
        for (addr, info) in &p.hosts {
            self.hosts.insert(HostKey { slot, addr: *addr }, info, 0).map_err(full(maps::HOSTS))?;
        }
        for (len, addr, info) in &p.cidrs {
            let key = Key::new(CIDR_SLOT_BITS + len, CidrData { slot: slot.to_be_bytes(), addr: *addr });
            self.cidrs.insert(&key, info, 0).map_err(full(maps::CIDRS))?;
        }
        for (len, addr, info) in &p.grant_sources {
            let key = Key::new(CIDR_SLOT_BITS + len, CidrData { slot: slot.to_be_bytes(), addr: *addr });
            self.grant_sources.insert(&key, info, 0).map_err(full(maps::GRANT_SOURCES))?;
        }
        for (src, dst, profile) in &p.pairs {
            let key = PairKey { slot, src: *src, dst: *dst };
            self.pairs.insert(key, profile_id(slot, *profile), 0).map_err(full(maps::PAIRS))?;
        }
        for e in &p.ports {
            let v = e.value;
            let data = PortData {
                profile: profile_id(slot, e.profile).to_be_bytes(),
                proto: (v >> 16) as u8,
                port: ((v & 0xffff) as u16).to_be_bytes(),
                _pad: 0,
            };
            self.ports.insert(&Key::new(32 + e.bits, data), e.verdict, 0).map_err(full(maps::PORTS))?;
        }
        for &(segment, port) in &p.api_ports {
            let key = ApiPortKey { slot, segment, port, _pad: [0; 2] };
            self.api_ports.insert(key, API_HTTP, 0).map_err(full(maps::API_PORTS))?;
        }
        Ok(p.hosts.len() + p.cidrs.len() + p.grant_sources.len() + p.pairs.len() + p.ports.len() + p.api_ports.len())
    }
}
