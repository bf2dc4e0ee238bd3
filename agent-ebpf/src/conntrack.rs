//! Connection tracking: one LRU entry per direction of an allowed flow, so that a packet of
//! either direction is found with a single lookup. Entries remember the policy revision that
//! allowed them; under a newer policy the flow is judged again (revocation).
use agent_common::{
    ACTION_ALLOW, CT_F_AUDIT, CT_F_CLOSING, CT_F_HTTP, CT_F_REPLY, CT_REFRESH_NS, CT_TIMEOUT_ICMP_NS,
    CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_NS, CT_TIMEOUT_UDP_NS, CtKey, CtValue, PROTO_ICMP, PROTO_TCP,
    VERDICT_F_HTTP, VERDICT_GRANT_SHIFT, Verdict,
};

use crate::{
    maps::CONNTRACK,
    parse::{Packet, TCP_FIN, TCP_RST},
};

#[inline(always)]
pub fn reversed(k: &CtKey) -> CtKey {
    CtKey { src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, proto: k.proto, _pad: [0; 3] }
}

#[inline(always)]
fn timeout(v: &CtValue, proto: u8) -> u64 {
    match proto {
        PROTO_TCP if v.flags & CT_F_CLOSING != 0 => CT_TIMEOUT_TCP_CLOSING_NS,
        PROTO_TCP => CT_TIMEOUT_TCP_NS,
        PROTO_ICMP => CT_TIMEOUT_ICMP_NS,
        _ => CT_TIMEOUT_UDP_NS,
    }
}

/// The entry for `k`, if any; see [`expired`].
#[inline(always)]
pub fn get(k: &CtKey) -> Option<*mut CtValue> {
    CONNTRACK.get_ptr_mut(k)
}

/// An entry idle for longer than its protocol's timeout counts as absent.
#[inline(always)]
pub fn expired(v: &CtValue, proto: u8, now: u64) -> bool {
    now.saturating_sub(v.last_seen) > timeout(v, proto)
}

/// The live entry for `k`, if any.
#[inline(always)]
pub fn lookup(k: &CtKey, now: u64) -> Option<*mut CtValue> {
    // SAFETY: valid map value pointer for this program run.
    get(k).filter(|&v| !expired(unsafe { &*v }, k.proto, now))
}

/// Marks `v` as used now, and closing after a FIN or RST. Refreshes at most once a second so
/// a busy flow does not write shared memory on every packet.
#[inline(always)]
pub fn touch(v: *mut CtValue, now: u64, tcp_flags: u8) {
    // SAFETY: valid map value pointer; racing writers store equivalent values.
    let val = unsafe { &mut *v };
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        val.flags |= CT_F_CLOSING;
        val.last_seen = now;
    } else if now.wrapping_sub(val.last_seen) > CT_REFRESH_NS {
        val.last_seen = now;
    }
}

/// One more packet of `len` bytes passed on the entry `v`, for the agent's inventory. Atomic
/// adds: the packets of one direction of a flow may be passed by two CPUs at once (a
/// multi-threaded UDP sender at egress), and the counts must stay exact. Measured, they cost
/// the established packet about as much as plain increments (an uncontended locked add on a
/// line the lookup just brought in), within the benchmark's noise.
#[inline(always)]
pub fn count(v: *mut CtValue, len: u32) {
    // SAFETY: aligned u64s in a valid map value for this program run; BPF atomic add.
    unsafe {
        crate::atomics::add(&raw mut (*v).packets, 1);
        crate::atomics::add(&raw mut (*v).bytes, u64::from(len));
    }
}

/// The original direction's tuple of the flow an entry belongs to.
#[inline(always)]
pub fn original(k: &CtKey, v: &CtValue) -> CtKey {
    if v.flags & CT_F_REPLY != 0 { reversed(k) } else { *k }
}

/// Starts tracking a flow whose first packet is `pkt` (counted in the entry), allowed by `verdict` (its rule; its
/// packets count against its rate limit, 0 = none), or denied by it in audit mode (then
/// marked [`CT_F_AUDIT`]); `segments`: its source and destination segments (see
/// `events::segments`). (A subprogram: keeps the two values and the reversed key off the
/// caller's stack.)
#[inline(never)]
pub fn create(pkt: &Packet, now: u64, revision: u32, verdict: &Verdict, segments: u64) {
    let k = &pkt.tuple;
    let (src_segment, dst_segment) = ((segments >> 32) as u32, segments as u32);
    let (rule, limit) = (verdict.rule, verdict.limit);
    // A grant's flows carry it, to be cut past its deadline (BPF functions take 5 arguments:
    // it travels in the verdict).
    let grant = verdict.flags >> VERDICT_GRANT_SHIFT;
    let flags = if verdict.action == ACTION_ALLOW { 0 } else { CT_F_AUDIT }
        | if verdict.flags & VERDICT_F_HTTP != 0 { CT_F_HTTP } else { 0 };
    // The first packet is this one.
    let (packets, bytes) = (1, u64::from(pkt.len));
    let v = CtValue { last_seen: now, revision, flags, rule, limit, src_segment, grant, packets, bytes };
    let _ = CONNTRACK.insert(k, &v, 0);
    let r = CtValue { flags: flags | CT_F_REPLY, limit: 0, src_segment: dst_segment, packets: 0, bytes: 0, ..v };
    let _ = CONNTRACK.insert(&reversed(k), &r, 0);
}

/// Stops tracking the flow `orig` (both directions).
#[inline(always)]
pub fn remove(orig: &CtKey) {
    let _ = CONNTRACK.remove(orig);
    let _ = CONNTRACK.remove(&reversed(orig));
}
