//! The kernel event stream, userspace side: read the `EVENTS` ring buffer, turn each event into
//! an [`EventRecord`] (names for segments, rules and limits; exact packet counts), keep the most
//! recent ones, and fan them out to every client.
//!
//! Drops are aggregated in the kernel per flow and reason: an event carries the aggregate's
//! running packet total, and the count of a record is the difference from the last total seen
//! for that aggregate. The packets of a flood's last interval are in the kernel's aggregation
//! maps, not in any event; a sweep of those maps once a second reports them. Under a flood of
//! denials (past a CPU's per-flow budget) the kernel aggregates them per (source segment,
//! reason) and CPU instead (`flood`), in the same way.

mod decode;
mod flood;
mod hub;

pub use decode::{Decoder, reason_name, verdict_name};
pub(crate) use decode::{ip_of, proto_name};
pub use hub::{EventHub, Subscription};
