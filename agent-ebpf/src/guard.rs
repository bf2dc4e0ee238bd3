//! Anti-spoofing on guarded interfaces (the pod interfaces of node mode): a packet entering
//! such an interface must come from a source the interface may send from, one of the prefixes
//! the agent keeps for it in `SOURCES` (the node's routes out of that interface, plus the IPv6
//! link-local and unspecified sources that neighbour discovery and DAD need).
use agent_common::{Addr, SOURCE_IFINDEX_BITS, SourceData};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::SOURCES;

/// Whether `src` may enter interface `ifindex`: one lookup of the whole key. (A subprogram of
/// its own: the 24-byte key lives in its frame, not in `enforce()`'s.)
#[inline(never)]
pub fn allowed(ifindex: u32, src: &Addr) -> bool {
    let key = Key::new(SOURCE_IFINDEX_BITS + 128, SourceData { ifindex: ifindex.to_be_bytes(), addr: *src });
    SOURCES.get(&key).is_some()
}
