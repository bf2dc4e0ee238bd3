//! Rate limits: their buckets and fingerprints.
use std::collections::BTreeSet;

use super::super::model::{LimitScope, Policy, RateLimit, SegRef};
use super::limit_ranges;
use super::{Bucket, CompiledLimit};

pub(super) fn compile_limit(policy: &Policy, limit: &RateLimit) -> CompiledLimit {
    CompiledLimit {
        name: limit.name.clone(),
        fingerprint: limit_fingerprint(policy, limit),
        packets: limit.packets.as_ref().map(Bucket::of),
        connections: limit.connections.as_ref().map(Bucket::of),
        bytes: limit.bytes.as_ref().map(Bucket::of),
        per_address: limit.scope == LimitScope::Address,
    }
}

/// FNV-1a 64.
pub(super) struct Fnv(pub(super) u64);

impl Fnv {
    pub(super) const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(super) fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
    pub(super) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// Length-prefixed, so that consecutive strings cannot run into each other.
    pub(super) fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

/// The fingerprint of a rate limit: FNV-1a 64 over this canonical serialization (integers
/// little endian, strings as a u64 byte length then UTF-8):
///
/// 1. the tag `ztagent.rateLimit.v1` (a string);
/// 2. `name` (a string);
/// 3. `from` as the segment's name (`world` for world, `*` for any);
/// 4. `to` as a u64 count then the names, sorted and without duplicates; absent or containing
///    `*` is the single name `*` (they mean the same);
/// 5. `ports` as the covered port-key intervals, sorted and merged (so equivalent lists such as
///    `[80/tcp, 81/tcp]` and `[80-81/tcp]` agree; absent = the whole space): a u64 count then
///    each interval as two u32;
/// 6. `packets`, `connections`, `bytes`, each as a u8 0 (absent) or 1 followed by `rate`,
///    `per` in seconds and `burst` as u64;
/// 7. `scope` as a u8: 0 segment, 1 address.
///
/// Segments are named, not numbered, so adding, removing or reordering segments, rules or
/// other limits never changes the fingerprint of a limit; changing any of the limit's own
/// fields (or renaming a segment it names) does. The fingerprint is never 0 (a hash of 0 is
/// replaced by 1), so 0 can mark an unused entry.
pub fn limit_fingerprint(policy: &Policy, limit: &RateLimit) -> u64 {
    let mut h = Fnv(Fnv::OFFSET);
    h.str("ztagent.rateLimit.v1");
    h.str(&limit.name);
    h.str(&policy.seg_ref_name(limit.from));
    let to: BTreeSet<String> = match limit.to.as_deref() {
        Some(to) if !to.contains(&SegRef::Any) => to.iter().map(|r| policy.seg_ref_name(*r)).collect(),
        _ => [policy.seg_ref_name(SegRef::Any)].into(),
    };
    h.u64(to.len() as u64);
    for name in &to {
        h.str(name);
    }
    let mut ranges = limit_ranges(limit);
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    h.u64(merged.len() as u64);
    for (lo, hi) in merged {
        h.u32(lo);
        h.u32(hi);
    }
    for bucket in [&limit.packets, &limit.connections, &limit.bytes] {
        match bucket {
            None => h.u8(0),
            Some(b) => {
                h.u8(1);
                h.u64(b.rate);
                h.u64(b.per.seconds());
                h.u64(b.burst);
            }
        }
    }
    h.u8(match limit.scope {
        LimitScope::Segment => 0,
        LimitScope::Address => 1,
    });
    // 0 is free for "no limit" in the datapath's tables; FNV-1a gives it with odds of 2^-64.
    if h.0 == 0 { 1 } else { h.0 }
}
