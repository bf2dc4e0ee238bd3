//! Flood aggregates: policy denials a CPU counted per (source segment, class) once past its
//! per-flow budget (`agent_common::FLOOD_BUDGET`). Each carries its running total on that CPU,
//! so a record's count is the difference from the last total seen, as for flows; a sweep reads
//! the kernel's totals of the aggregates seen so far for what no event carried.
use std::collections::{BTreeSet, HashMap};

use agent_common::{EVENT_INTERVAL_NS, Event, FloodValue, flood_index};

/// What the decoder remembers of one CPU's flood aggregate: its last total, and its last event
/// (what a sweep's report of it says besides the count).
struct Seen {
    total: u64,
    last: Event,
}

/// The flood aggregates seen: at most `2 * MAX_COUNTED_SEGMENTS` per CPU.
#[derive(Default)]
pub(super) struct Floods {
    seen: HashMap<(u32, u32), Seen>,
}

/// (index in `FLOOD`, CPU) of a flood event (`aggregate` = 1 + CPU).
fn key(ev: &Event) -> (u32, u32) {
    (flood_index(ev.src_segment, ev.rule), ev.aggregate.saturating_sub(1))
}

impl Floods {
    /// The packets the flood event `ev` adds (None: none, a duplicate total).
    pub(super) fn delta(&mut self, ev: &Event) -> Option<u64> {
        let seen = self.seen.entry(key(ev)).or_insert(Seen { total: 0, last: *ev });
        // A total below the last one: the map was made anew (a new agent's maps).
        let delta = if ev.total >= seen.total { ev.total - seen.total } else { ev.total };
        (seen.total, seen.last) = (ev.total, *ev);
        (delta > 0).then_some(delta)
    }

    /// The `FLOOD` indexes of the aggregates seen (the sweep reads only these).
    pub(super) fn indexes(&self) -> BTreeSet<u32> {
        self.seen.keys().map(|&(index, _)| index).collect()
    }

    /// Reports (event, count) of the packets counted since the last event of each aggregate
    /// of `index` idle for a whole interval; `per_cpu`: the kernel's values, by CPU.
    pub(super) fn sweep(&mut self, index: u32, per_cpu: &[FloodValue], now_ns: u64) -> Vec<(Event, u64)> {
        let mut out = Vec::new();
        for (cpu, v) in per_cpu.iter().enumerate() {
            let Some(seen) = self.seen.get_mut(&(index, cpu as u32)) else { continue };
            if now_ns.saturating_sub(v.last_emit) < EVENT_INTERVAL_NS || v.total <= seen.total {
                continue;
            }
            let count = v.total - seen.total;
            seen.total = v.total;
            out.push((Event { time_ns: now_ns, total: v.total, len: 0, ..seen.last }, count));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(total: u64, cpu: u32) -> Event {
        Event { total, src_segment: 3, aggregate: 1 + cpu, ..Default::default() }
    }

    #[test]
    fn counts_per_cpu_are_differences_of_totals() {
        let mut f = Floods::default();
        assert_eq!(f.delta(&event(1, 0)), Some(1));
        assert_eq!(f.delta(&event(1, 1)), Some(1), "another CPU's aggregate");
        assert_eq!(f.delta(&event(500, 0)), Some(499));
        assert_eq!(f.delta(&event(500, 0)), None, "a duplicate total");
        assert_eq!(f.indexes().into_iter().collect::<Vec<_>>(), vec![flood_index(3, 0)]);
        let values = [FloodValue { total: 800, last_emit: 0 }, FloodValue { total: 1, last_emit: 0 }];
        let r = f.sweep(flood_index(3, 0), &values, EVENT_INTERVAL_NS);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].1, r[0].0.total, r[0].0.aggregate), (300, 800, 1));
        assert!(f.sweep(flood_index(3, 0), &values, 2 * EVENT_INTERVAL_NS).is_empty(), "reported once");
    }
}
