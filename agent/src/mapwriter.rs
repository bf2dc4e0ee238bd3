//! The one place that writes policy into the kernel. A push goes to the *inactive* slot of
//! every policy map; only when the slot is complete does one 4-byte write of `ZT_ACTIVE` make
//! it the policy in force. A packet reads `ZT_ACTIVE` once, so it is judged wholly by the old
//! policy or wholly by the new one, and a push that fails half-way changes nothing that is in
//! force.
use std::time::{Duration, Instant};

use agent_common::{
    CIDR_SLOT_BITS, CidrData, HostKey, PROFILE_NONE, PROFILE_SLOT_SHIFT, PairKey,
    PortData, SegmentInfo, SlotConfig, Verdict, maps,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};

use crate::policy::CompiledPolicy;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("map {map} is missing or has the wrong layout: {message}")]
    Map { map: &'static str, message: String },
    #[error("map {map} is full ({message}); raise its limit or shrink the policy — the policy in force is unchanged")]
    Full { map: &'static str, message: String },
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
    last_flip: Option<Instant>,
}

/// A program that read `ZT_ACTIVE` just before a flip may still be using the old slot for a
/// few microseconds; a push never clears a slot that was in force less than this long ago.
const GRACE: Duration = Duration::from_millis(20);

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, WriteError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(WriteError::Map { map: name, message: "not in the object".into() })?;
    T::try_from(map).map_err(|e| WriteError::Map { map: name, message: e.to_string() })
}

fn full(map: &'static str) -> impl Fn(MapError) -> WriteError {
    move |e| WriteError::Full { map, message: crate::datapath::error_chain(&e) }
}

fn profile_id(slot: u32, profile: u32) -> u32 {
    (slot << PROFILE_SLOT_SHIFT) | profile
}

impl MapWriter {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, WriteError> {
        Ok(MapWriter {
            active: take(ebpf, maps::ACTIVE_SLOT)?,
            slots: take(ebpf, maps::SLOTS)?,
            hosts: take(ebpf, maps::HOSTS)?,
            cidrs: take(ebpf, maps::CIDRS)?,
            pairs: take(ebpf, maps::PAIRS)?,
            ports: take(ebpf, maps::PORTS)?,
            last_flip: None,
        })
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
        self.active_slot()
            .and_then(|s| self.slots.get(&s, 0).ok())
            .map_or(0, |c| c.revision)
    }

    /// Installs `policy` as the policy in force, atomically; returns what was written.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<Written, WriteError> {
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
        let cfg = SlotConfig {
            default_action: policy.default_action,
            revision,
            any_any: policy.any_any.map_or(PROFILE_NONE, |p| profile_id(slot, p)),
            world_flags: policy.world_flags,
        };
        self.slots.set(slot, cfg, 0).map_err(full(maps::SLOTS))?;
        // The flip: ZT_ACTIVE holds 1 + slot, so it only ever changes in its low byte and a
        // concurrent reader cannot see a torn value.
        self.active.set(0, slot + 1, 0).map_err(full(maps::ACTIVE_SLOT))?;
        self.last_flip = Some(Instant::now());
        Ok(Written { revision, slot, entries, removed })
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
        Ok(n)
    }

    fn fill(&mut self, slot: u32, p: &CompiledPolicy) -> Result<usize, WriteError> {
        for (addr, info) in &p.hosts {
            self.hosts.insert(HostKey { slot, addr: *addr }, info, 0).map_err(full(maps::HOSTS))?;
        }
        for (len, addr, info) in &p.cidrs {
            let key = Key::new(CIDR_SLOT_BITS + len, CidrData { slot: slot.to_be_bytes(), addr: *addr });
            self.cidrs.insert(&key, info, 0).map_err(full(maps::CIDRS))?;
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
        Ok(p.hosts.len() + p.cidrs.len() + p.pairs.len() + p.ports.len())
    }
}
