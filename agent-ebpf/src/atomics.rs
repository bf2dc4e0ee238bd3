//! The two atomic operations the datapath uses on map values: BPF_CMPXCHG and BPF atomic add
//! (64-bit: the generic BPF CPU has no 32-bit compare-and-exchange). core's atomics lack
//! compare-and-exchange on BPF; the intrinsics lower to these instructions.
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

/// Compare-and-exchange: true when `*p` was `old` and is now `new`.
///
/// # Safety
/// `p` must point to an aligned u64 in a map value valid for this program run.
#[inline(always)]
pub unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: upheld by the caller.
    unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new).1 }
}

/// Adds one.
///
/// # Safety
/// As for [`cas`].
#[inline(always)]
pub unsafe fn add_one(p: *mut u64) {
    // SAFETY: upheld by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 1) };
}

/// Adds `n`.
///
/// # Safety
/// As for [`cas`].
#[inline(always)]
pub unsafe fn add(p: *mut u64, n: u64) {
    // SAFETY: upheld by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, n) };
}
