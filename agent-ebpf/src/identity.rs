//! Identity: the segment of an address, by exact host match first, then longest prefix.
use agent_common::{Addr, CIDR_SLOT_BITS, CidrData, HostKey, SEG_WORLD, SegmentInfo};
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

/// A segment and its flags packed in one word (flags in the high half, the id in the low half),
/// or [`UNKNOWN`].
pub type Packed = u64;

/// Not looked up.
pub const UNKNOWN: Packed = u64::MAX;

/// The segment of `addr` and its flags (`SEG_F_DENIED_ALL`: the policy allows it nothing as a
/// source; `SEG_F_ISOLATED`: nor anything to it). A subprogram of its own: its lookup keys stay
/// off the caller's stack, which holds the whole packet pipeline.
#[inline(never)]
pub fn packed(slot: u32, world_flags: u32, addr: &Addr) -> Packed {
    let s = segment_of(slot, world_flags, addr);
    (s.flags as u64) << 32 | s.id as u64
}

/// Whether `seg` was looked up and has all the segment flags `flags`.
#[inline(always)]
pub fn has(seg: Packed, flags: u32) -> bool {
    seg != UNKNOWN && (seg >> 32) as u32 & flags == flags
}
