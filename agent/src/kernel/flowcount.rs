//! Packets and bytes of allowed flows. The datapath counts them in each conntrack entry
//! (`CtValue::packets` and `bytes`, one entry per direction); the agent reads the table now and
//! then, and whenever the inventory is asked for, and adds what each entry counted since it
//! was last read to the inventory entry of its flow (and to the alerts' packet rates; see
//! `observe::inventory::key_of`).
//!
//! Reading the table costs two syscalls per entry (aya has no batch lookups), and counting an
//! entry that passed packets a few microseconds more, so the periodic read is paced by its
//! own cost: after one that took `T` (read and count), the next comes after `max(INTERVAL,
//! DUTY x T)`, i.e. it takes at most a twentieth of a CPU. (A read asked for by `ztagent
//! inventory` happens at once.)
use std::{
    path::Path,
    time::{Duration, Instant},
};

use agent_common::{CtKey, CtValue, maps};
use aya::maps::{HashMap, MapData};

/// How often the table is read when reading it is cheap.
pub const INTERVAL: Duration = Duration::from_secs(1);
const DUTY: u32 = 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot open the conntrack table {path} to read the flows' packet and byte counts: {message}")]
pub struct FlowCountError {
    path: String,
    message: String,
}

pub struct FlowReader {
    table: HashMap<MapData, CtKey, CtValue>,
    capacity: usize,
    next: Instant,
}

impl FlowReader {
    /// Opens the pinned conntrack table in `maps_dir`.
    pub fn open(maps_dir: &Path) -> Result<FlowReader, FlowCountError> {
        let path = maps_dir.join(maps::CONNTRACK);
        let err = |message: String| FlowCountError { path: path.display().to_string(), message };
        let data = MapData::from_pin(&path).map_err(|e| err(e.to_string()))?;
        let capacity = data.info().map_err(|e| err(e.to_string()))?.max_entries() as usize;
        let table = HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|e| err(e.to_string()))?;
        Ok(FlowReader { table, capacity, next: Instant::now() })
    }

    /// Whether a periodic read is due.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Every entry of the table, now. (Entries deleted during the walk may make the kernel
    /// restart it: at most the table's capacity are read.)
    pub fn read(&mut self) -> Vec<(CtKey, CtValue)> {
        self.table.iter().take(self.capacity).filter_map(Result::ok).collect()
    }

    /// A read and what was done with it took `t`: the next periodic one is due in
    /// `max(INTERVAL, DUTY x t)`.
    pub fn took(&mut self, t: Duration) {
        self.next = Instant::now() + INTERVAL.max(t * DUTY);
    }
}
