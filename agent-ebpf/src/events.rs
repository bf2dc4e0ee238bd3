//! Events to the agent through the `EVENTS` ring buffer: a new flow allowed, a packet denied
//! (and why), a packet over its rate limit. A flood must not drown the host: events about
//! drops are aggregated per flow and reason, at most one per `EVENT_INTERVAL_NS`, each carrying
//! the aggregate's running packet total; one CPU wins the right to emit with a
//! compare-and-exchange on the time of the last event. An event that does not fit in the ring
//! is counted (`events_lost`), never silently dropped.
use agent_common::{
    AGG_AUDIT, AggKey, AggValue, EVENT_INTERVAL_NS, Event, FLOOD_BUDGET, SEG_ANY, counter,
    event::VERDICT_WOULD_RATE_LIMIT, flood_index,
};

use crate::{
    maps::{AGG, Clock, EVENTS, FLOOD, FLOOD_STATE, count},
    parse::Packet,
};

/// What an event says: verdict, reason and direction, packed (BPF calls take five arguments).
#[inline(always)]
pub const fn what(verdict: u8, reason: u8, ingress: bool) -> u32 {
    verdict as u32 | (reason as u32) << 8 | (!ingress as u32) << 16
}

/// In `what`: the event is a flood aggregate's (this CPU's, see [`flood`]).
const WHAT_FLOOD: u32 = 1 << 24;

/// Both segments in one argument; `SEG_ANY` where the datapath did not look them up.
#[inline(always)]
pub const fn segments(src: u32, dst: u32) -> u64 {
    (src as u64) << 32 | dst as u64
}

pub const UNKNOWN_SEGMENTS: u64 = segments(SEG_ANY, SEG_ANY);

/// Sends one event about `pkt`, written straight into the ring buffer (no copy on the stack:
/// a subprogram whose frame stays small, as it is stacked under `dropped`'s).
#[inline(never)]
pub fn emit(pkt: &Packet, what: u32, rule: u32, segments: u64, total: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let t = &pkt.tuple;
    let e = entry.as_mut_ptr();
    // SAFETY: a reserved entry of Event's size, written field by field: no Event is built on
    // this frame, which stacks under `dropped`'s and the datapath's (512 bytes in all).
    unsafe {
        (*e).time_ns = pkt.now;
        (*e).total = total;
        (*e).src = t.src;
        (*e).dst = t.dst;
        (*e).sport = t.sport;
        (*e).dport = t.dport;
        (*e).ifindex = pkt.ifindex;
        (*e).src_segment = (segments >> 32) as u32;
        (*e).dst_segment = segments as u32;
        (*e).rule = rule;
        (*e).revision = pkt.revision;
        (*e).len = pkt.len;
        (*e).proto = t.proto;
        (*e).direction = (what >> 16) as u8;
        (*e).verdict = what as u8;
        (*e).reason = (what >> 8) as u8;
        // A helper with no arguments, available to every program type.
        (*e).aggregate =
            if what & WHAT_FLOOD != 0 { 1 + aya_ebpf::helpers::generated::bpf_get_smp_processor_id() } else { 0 };
        (*e).icmp_type = pkt.icmp[0];
        (*e).icmp_code = pkt.icmp[1];
        (*e)._pad = 0;
    }
    entry.submit(0);
}

/// One more packet of an aggregate (`total`, `last_emit` in a map value). Returns the total to
/// report when an event is due and this CPU won the right to send it.
#[inline(always)]
pub fn aggregate(total: *mut u64, last_emit: *mut u64, now: u64) -> Option<u64> {
    // SAFETY: aligned u64s in a map value, valid for this program run; BPF atomic add and
    // compare-and-exchange.
    unsafe {
        crate::atomics::add_one(total);
        let last = core::ptr::read_volatile(last_emit);
        if now.wrapping_sub(last) < EVENT_INTERVAL_NS {
            return None;
        }
        crate::atomics::cas(last_emit, last, now).then(|| core::ptr::read_volatile(total))
    }
}

/// Counts a dropped packet that is not a policy denial (rate limit, fragment, malformed, no
/// policy), or one over its rate limit passed in audit mode, into its aggregate, emitting an
/// event for the first and then at most once per interval. `rule`: the rate limit, or 0.
#[inline(never)]
pub fn dropped(pkt: &Packet, what: u32, rule: u32) {
    let t = &pkt.tuple;
    let audit = if what as u8 == VERDICT_WOULD_RATE_LIMIT { AGG_AUDIT } else { 0 };
    let key = AggKey { src: t.src, dst: t.dst, port: t.dport, proto: t.proto, reason: (what >> 8) as u8 | audit };
    if let Some(v) = AGG.get_ptr_mut(&key) {
        // SAFETY: valid map value pointer for this program run.
        let (total, last) = unsafe { (&raw mut (*v).total, &raw mut (*v).last_emit) };
        if let Some(total) = aggregate(total, last, pkt.now) {
            emit(pkt, what, rule, UNKNOWN_SEGMENTS, total);
        }
        return;
    }
    let v = AggValue {
        total: 1,
        last_emit: pkt.now,
        rule,
        revision: pkt.revision,
        src_segment: SEG_ANY,
        dst_segment: SEG_ANY,
    };
    let _ = AGG.insert(&key, &v, 0);
    emit(pkt, what, rule, UNKNOWN_SEGMENTS, 1);
}

/// Whether this CPU is under a flood of policy denials: it handled `FLOOD_BUDGET` of them per
/// flow in the current interval already. Reads the clock only once the budget is spent (a
/// budget spent in an interval long past is reset then). With `isolated`, also that packets
/// of isolated segments take part in the flood ([`isolated_seen`]): the gate before the
/// conntrack lookup costs every packet an identity lookup, worth it only then (a flood of one
/// denied flow of another segment does not open it). (A per-CPU slot: no other CPU writes it.)
#[inline(always)]
pub fn flooding(clock: &mut Clock, isolated: bool) -> bool {
    let Some(b) = FLOOD_STATE.get_ptr_mut(0) else { return false };
    // SAFETY: valid map value pointer for this program run; only this CPU writes it.
    let b = unsafe { &mut *b };
    if b.used < FLOOD_BUDGET || (isolated && b.isolated == 0) {
        return false;
    }
    let now = clock.coarse();
    if now.wrapping_sub(b.window) >= EVENT_INTERVAL_NS {
        (b.window, b.used, b.isolated) = (now, 0, 0);
        return false;
    }
    true
}

/// Notes a packet of an isolated segment in this interval's flood (see [`flooding`]): one the
/// flood path dropped, or the one that spent the budget.
#[inline(always)]
pub fn isolated_seen() {
    if let Some(b) = FLOOD_STATE.get_ptr_mut(0) {
        // SAFETY: valid map value pointer for this program run; only this CPU writes it.
        unsafe { (*b).isolated += 1 };
    }
}

/// Takes one policy denial handled per flow from this CPU's budget (a new interval starts
/// with a full one). true when it took the last one: the CPU is under a flood from now on.
#[inline(always)]
pub fn spend(now: u64) -> bool {
    let Some(b) = FLOOD_STATE.get_ptr_mut(0) else { return false };
    // SAFETY: valid map value pointer for this program run; only this CPU writes it.
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b.window) >= EVENT_INTERVAL_NS {
        (b.window, b.used, b.isolated) = (now, 0, 0);
    }
    b.used += 1;
    b.used == FLOOD_BUDGET
}

/// Counts a policy denial under a flood in this CPU's aggregate of (`src_segment`, class of
/// `rule`), emitting an event for its first packet and then at most once per interval: no
/// per-flow state. (Inlined: a subprogram calling `emit` would stack three frames, over the
/// verifier's 512 bytes.)
#[inline(always)]
pub fn flood(pkt: &Packet, what: u32, rule: u32, src_segment: u32) {
    let Some(v) = FLOOD.get_ptr_mut(flood_index(src_segment, rule)) else { return };
    // SAFETY: valid map value pointer for this program run; a per-CPU slot only this CPU writes.
    let v = unsafe { &mut *v };
    v.total += 1;
    if v.total == 1 || pkt.now.wrapping_sub(v.last_emit) >= EVENT_INTERVAL_NS {
        v.last_emit = pkt.now;
        emit(pkt, what | WHAT_FLOOD, rule, segments(src_segment, SEG_ANY), v.total);
    }
}
