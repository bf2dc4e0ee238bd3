//! Readers of what the kernel counts beyond the policy maps: the fill of the state maps
//! (conntrack, event aggregation, fragments, address buckets), for `status` and `/metrics`.
use std::path::Path;

use agent_common::{AggKey, AggValue, BucketKey, CtKey, CtValue, DenyKey, DenyValue, FragKey, maps};
use aya::{
    Pod,
    maps::{Map, MapData},
};

use crate::api::MapFill;

/// A hash map of the datapath whose fill is measured at each scrape.
struct Measured {
    name: &'static str,
    capacity: u32,
    map: Map,
    count: fn(&Map, usize) -> Option<u64>,
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measured").field("name", &self.name).field("capacity", &self.capacity).finish()
    }
}

/// Counts the keys of a hash map (one syscall per entry, in the kernel's order). Entries
/// deleted during the walk may make the kernel restart it: at most `cap` keys are counted, so
/// under heavy churn the count is approximate but the walk stays bounded.
fn count_keys<K: Pod, V: Pod>(map: &Map, cap: usize) -> Option<u64> {
    let h = aya::maps::HashMap::<&MapData, K, V>::try_from(map).ok()?;
    Some(h.keys().take(cap).filter(Result::is_ok).count() as u64)
}

fn open_measured<K: Pod, V: Pod>(dir: &Path, name: &'static str) -> Option<Measured> {
    let data = MapData::from_pin(dir.join(name))
        .map_err(|e| tracing::warn!("metrics: map {name} cannot be opened, its fill is not reported: {e}"))
        .ok()?;
    let capacity = data.info().ok()?.max_entries();
    // Every measured map is an LRU hash; `HashMap` reads both kinds.
    Some(Measured { name, capacity, map: Map::LruHashMap(data), count: count_keys::<K, V> })
}

/// The state maps whose fill `/metrics` and `ztagent status` report.
pub struct MapGauges {
    maps: Vec<Measured>,
}

impl MapGauges {
    /// Opens the maps pinned in `maps_dir`. The conntrack map is the one that matters; the
    /// others are the event aggregation caches, fragment tracking and per-address rate-limit
    /// buckets (all LRU: full is not an error, it means eviction). The policy maps hold two
    /// slots and are not measured.
    pub fn open(maps_dir: &Path) -> MapGauges {
        let maps = [
            open_measured::<CtKey, CtValue>(maps_dir, maps::CONNTRACK),
            open_measured::<DenyKey, DenyValue>(maps_dir, maps::DENIED),
            open_measured::<AggKey, AggValue>(maps_dir, maps::AGG),
            open_measured::<FragKey, u64>(maps_dir, maps::FRAGS),
            open_measured::<BucketKey, u64>(maps_dir, maps::ADDR_BUCKETS),
        ]
        .into_iter()
        .flatten()
        .collect();
        MapGauges { maps }
    }

    /// Entries and capacity of each map, now. Blocking (map syscalls).
    pub fn fill(&self) -> Vec<MapFill> {
        self.maps
            .iter()
            .map(|m| MapFill {
                map: m.name,
                entries: (m.count)(&m.map, m.capacity as usize).unwrap_or(0),
                capacity: m.capacity.into(),
            })
            .collect()
    }
}
