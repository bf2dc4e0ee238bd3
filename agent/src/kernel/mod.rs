//! The only users of aya's maps and programs: load, attach and pin the programs
//! ([`datapath`]), write the policy maps ([`mapwriter`], the one writer, atomic slot flip),
//! follow node mode's interfaces ([`node`]), read the event ring buffer and the aggregation maps
//! ([`ring`]), and read what the kernel counts ([`flowcount`]: the conntrack table's per-flow
//! counters; [`counters`]: the state maps' fill); [`offline`]: what the pins enforce, with no agent.

pub mod counters;
pub mod datapath;
pub mod flowcount;
pub mod mapwriter;
pub mod node;
pub mod offline;
pub mod ring;
