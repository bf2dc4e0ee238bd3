//! Events to the agent through the `EVENTS` ring buffer: a new flow allowed, a packet denied
//! (and why), a packet over its rate limit. A flood must not drown the host: events about
//! drops are aggregated per flow and reason, at most one per `EVENT_INTERVAL_NS`, each carrying
//! the aggregate's running packet total; one CPU wins the right to emit with a
//! compare-and-exchange on the time of the last event. An event that does not fit in the ring
//! is counted (`events_lost`), never silently dropped.
use agent_common::{
    AGG_AUDIT, AggKey, AggValue, EVENT_INTERVAL_NS, Event, SEG_ANY, counter, event::VERDICT_WOULD_RATE_LIMIT,
};

use crate::{
    maps::{AGG, EVENTS, count},
    parse::Packet,
};

/// What an event says: verdict, reason and direction, packed (BPF calls take five arguments).
#[inline(always)]
pub const fn what(verdict: u8, reason: u8, ingress: bool) -> u32 {
    verdict as u32 | (reason as u32) << 8 | (!ingress as u32) << 16
}

/// Both segments in one argument; `SEG_ANY` where the datapath did not look them up.
#[inline(always)]
pub const fn segments(src: u32, dst: u32) -> u64 {
    (src as u64) << 32 | dst as u64
}

pub const UNKNOWN_SEGMENTS: u64 = segments(SEG_ANY, SEG_ANY);

/// Sends one event about `pkt`. (A subprogram: the event is built in its own stack frame.)
#[inline(never)]
pub fn emit(pkt: &Packet, what: u32, rule: u32, segments: u64, total: u64) {
    let t = &pkt.tuple;
    let ev = Event {
        time_ns: pkt.now,
        total,
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        ifindex: pkt.ifindex,
        src_segment: (segments >> 32) as u32,
        dst_segment: segments as u32,
        rule,
        revision: pkt.revision,
        len: pkt.len,
        proto: t.proto,
        direction: (what >> 16) as u8,
        verdict: what as u8,
        reason: (what >> 8) as u8,
    };
    if EVENTS.output::<Event>(&ev, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
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
