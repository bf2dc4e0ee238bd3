//! Per-identity rate limits: GCRA buckets, one u64 per bucket (its theoretical arrival time),
//! updated with compare-and-exchange so that packets of one identity on several CPUs share
//! one exact budget without a lock. Applied at ingress, after policy allowed the packet.
use agent_common::{
    Addr, BUCKET_BYTES, BUCKET_CONNECTIONS, BUCKET_PACKETS, BucketConfig, BucketKey, LimitConfig, LimitStats,
    MAX_LIMITS, TICK_SHIFT,
};

use crate::maps::{ADDR_BUCKETS, BUCKETS, LIMIT_STATS, LIMITS};

/// Map update flag: create only.
const BPF_NOEXIST: u64 = 1;

/// Attempts at the compare-and-exchange before giving up (and dropping): only reached when
/// other CPUs updated the same bucket this many times during one attempt.
const CAS_ATTEMPTS: usize = 8;

/// Takes `units` from one bucket at `now` (ticks). true = admitted.
#[inline(always)]
fn take(bucket: *mut u64, cfg: &BucketConfig, units: u64, now: u64) -> bool {
    let cost = cfg.cost.wrapping_mul(units);
    for _ in 0..CAS_ATTEMPTS {
        // SAFETY: an aligned u64 in a map value, valid for this program run.
        let tat = unsafe { core::ptr::read_volatile(bucket) };
        // The bucket's clock never lags now: an idle bucket starts from now (full burst).
        let ahead = tat.wrapping_sub(now) as i64;
        let base = if ahead > 0 { tat } else { now };
        let next = base.wrapping_add(cost);
        if next.wrapping_sub(now) > cfg.tolerance {
            return false;
        }
        // SAFETY: as above.
        if unsafe { crate::atomics::cas(bucket, tat, next) } {
            return true;
        }
    }
    false
}

/// The bucket of `kind` for this limit: by index in segment scope; per source address in
/// address scope, created idle on first use (BPF_NOEXIST: if another CPU created it meanwhile,
/// that one is used).
#[inline(always)]
fn bucket(limit: &LimitConfig, kind: usize, src: &Addr, now: u64, stats: *mut LimitStats) -> Option<*mut u64> {
    if limit.per_address == 0 {
        // Initialised idle by the agent when it gave the limit this index.
        return BUCKETS.get_ptr_mut(limit.bucket * 3 + kind as u32);
    }
    let key = BucketKey { fingerprint: limit.fingerprint, kind: kind as u32, _pad: 0, addr: *src };
    if let Some(b) = ADDR_BUCKETS.get_ptr_mut(&key) {
        return Some(b);
    }
    if ADDR_BUCKETS.insert(&key, &now, BPF_NOEXIST).is_ok() {
        // SAFETY: per-CPU stats slot, only this CPU writes it.
        unsafe { (*stats).buckets_created += 1 };
    }
    ADDR_BUCKETS.get_ptr_mut(&key)
}

/// Takes `units` from the bucket of `kind` (configured as `cfg`, 0 cost: none) of `limit` at
/// `now` (ticks). true = admitted. (Inlined: a closure here became a subprogram called for
/// every bucket.)
#[inline(always)]
fn charge(
    limit: &LimitConfig,
    (cfg, kind, units): (&BucketConfig, usize, u64),
    src: &Addr,
    now: u64,
    stats: *mut LimitStats,
) -> bool {
    cfg.cost == 0
        || match bucket(limit, kind, src, now, stats) {
            Some(b) => take(b, cfg, units, now),
            None => false, // the bucket map is full: fail closed for this identity only
        }
}

/// The index in `LIMITS` of limit `id` (1-based) of `slot`.
#[inline(always)]
pub fn index(slot: u32, id: u32) -> u32 {
    slot * MAX_LIMITS + (id - 1)
}

/// Charges one packet of `len` bytes (and a new connection when `new_conn`) to the limit at
/// `index` (see [`index`]) at `now_ns` (from the nanosecond clock). true = within the limit.
/// Also counts the outcome. (A subprogram: BPF allows it five arguments.)
#[inline(never)]
pub fn admit(index: u32, src: &Addr, len: u64, new_conn: bool, now_ns: u64) -> bool {
    let Some(limit) = LIMITS.get(index) else {
        return true; // no such limit in this slot: nothing to bound
    };
    // Counted at the limit's stable index (as its buckets): a push that keeps the limit keeps
    // its counts without copying them.
    let Some(stats) = LIMIT_STATS.get_ptr_mut(limit.bucket) else {
        return true;
    };
    let now = now_ns << TICK_SHIFT;
    // Destructured, not indexed: an index the compiler cannot bound would leave a panic path
    // the verifier rejects.
    let [packets, connections, bytes] = &limit.buckets;
    let ok = charge(limit, (packets, BUCKET_PACKETS, 1), src, now, stats)
        && (!new_conn || charge(limit, (connections, BUCKET_CONNECTIONS, 1), src, now, stats))
        && charge(limit, (bytes, BUCKET_BYTES, len), src, now, stats);
    // SAFETY: per-CPU stats slot, only this CPU writes it.
    let st = unsafe { &mut *stats };
    if ok {
        st.packets_passed += 1;
        st.bytes_passed += len;
        st.connections_passed += new_conn as u64;
    } else {
        st.packets_dropped += 1;
        st.bytes_dropped += len;
        st.connections_dropped += new_conn as u64;
    }
    ok
}
