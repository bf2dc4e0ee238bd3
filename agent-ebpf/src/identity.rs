//! Identity: the segment of an address, by exact host match first, then longest prefix.
use agent_common::{Addr, CIDR_SLOT_BITS, CidrData, HostKey, SEG_ANY, SEG_WORLD, SegmentInfo};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{CIDRS, HOSTS};

#[inline(always)]
pub fn segment_of(slot: u32, world_flags: u32, addr: &Addr) -> SegmentInfo {
    let host = HostKey { slot, addr: *addr };
    if let Some(info) = HOSTS.get_ptr(&host) {
        // SAFETY: the map value outlives this program run (RCU); SegmentInfo is Copy.
        return unsafe { *info };
    }
    let key = Key::new(CIDR_SLOT_BITS + 128, CidrData { slot: slot.to_be_bytes(), addr: *addr });
    match CIDRS.get(&key) {
        Some(info) => *info,
        None => SegmentInfo { id: SEG_WORLD, flags: world_flags },
    }
}

/// The segment of `addr` if it has all the segment flags `flags` (`SEG_F_DENIED_ALL`: the policy
/// allows it nothing as a source; `SEG_F_ISOLATED`: nor anything to it), else `SEG_ANY`. A
/// subprogram of its own: its lookup keys stay off the caller's stack, which holds the whole
/// packet pipeline.
#[inline(never)]
pub fn flagged(slot: u32, world_flags: u32, addr: &Addr, flags: u32) -> u32 {
    let s = segment_of(slot, world_flags, addr);
    if s.flags & flags == flags { s.id } else { SEG_ANY }
}
