//! The ztagent datapath: one XDP program for ingress and one TC (clsact) program for egress,
//! sharing maps and the same decision pipeline:
//!
//! parse -> (non-IP, neighbour discovery: pass) -> (guarded interfaces: anti-spoofing) ->
//! fragments -> ICMP errors -> (under a flood: a source allowed nothing, to or from, dropped
//! after its identity lookup) -> conntrack -> recent denials -> (under a flood: a source allowed
//! nothing, dropped after its identity lookup) -> policy (identity, pair, ports) -> track the
//! new flow, or remember the denial (under a flood: count it per segment) and drop.
#![no_std]
#![no_main]
// Compare-and-exchange and atomic add on map values (see `atomics`): core's atomics lack them on BPF,
// the intrinsic lowers to BPF_CMPXCHG. The eBPF crate is always built with nightly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomics;
mod conntrack;
mod events;
mod guard;
mod identity;
mod maps;
mod parse;
mod policy;
mod ratelimit;

use agent_common::event::{
    REASON_DEFAULT, REASON_FRAGMENT, REASON_GRANT_EXPIRED, REASON_MALFORMED, REASON_NO_POLICY, REASON_RATE_LIMIT,
    REASON_REVOKED, REASON_RULE, REASON_SPOOFED, VERDICT_ALLOWED, VERDICT_DENIED, VERDICT_RATE_LIMITED,
    VERDICT_WOULD_DENY, VERDICT_WOULD_RATE_LIMIT,
};
use agent_common::{
    ACTION_ALLOW, CT_F_AUDIT, CT_F_REPLY, CtKey, CtValue, DenyKey, DenyValue, FRAG_TIMEOUT_NS, FragKey,
    ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SEG_ANY, SEG_F_DENIED_ALL, SEG_F_ISOLATED, SLOT_F_AUDIT,
    SLOT_F_GRANT_SOURCES, counter,
};
use agent_common::{SEGMENT_DENIED, SEGMENT_PASSED, SEGMENT_RATE_LIMITED};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use events::what;
use maps::{ACTIVE, Clock, DENIED, FRAGS, SLOTS, count, count_segment};
use parse::{Kind, Packet, TCP_ACK, TCP_SYN};

/// Ingress: judged before the kernel allocates anything for the packet.
#[xdp]
pub fn zt_ingress(ctx: XdpContext) -> u32 {
    ingress::<false>(&ctx)
}

/// Ingress on a guarded (pod) interface: as `zt_ingress`, after anti-spoofing (the source must
/// be one this interface may send from). A program of its own, so that interfaces without the
/// guard pay nothing for it, not even a flag lookup.
#[xdp]
pub fn zt_ingress_guarded(ctx: XdpContext) -> u32 {
    ingress::<true>(&ctx)
}

#[inline(always)]
fn ingress<const GUARD: bool>(ctx: &XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    if enforce::<true, GUARD>(ctx.data(), ctx.data_end(), len, ctx.ingress_ifindex() as u32) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// How much of a socket buffer must be linear for the parser to see every header it reads.
const TC_PULL_LEN: usize = 128;

/// Egress: what a workload on this host sends.
#[classifier]
pub fn zt_egress(ctx: TcContext) -> i32 {
    let len = ctx.len() as usize;
    let want = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
    if ctx.data_end() - ctx.data() < want {
        // Headers of a non-linear buffer: make them directly readable. On failure the parser
        // sees a short packet and drops it as malformed: fail closed.
        let _ = ctx.pull_data(want as u32);
    }
    // SAFETY: the context's __sk_buff, valid for this program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if enforce::<false, false>(ctx.data(), ctx.data_end(), len, ifindex) {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// true = pass, false = drop. Every outcome is counted, and reported as an event (drops
/// aggregated). Rate limits apply at ingress only; anti-spoofing (`GUARD`) on guarded
/// interfaces' ingress only.
#[inline(always)]
fn enforce<const INGRESS: bool, const GUARD: bool>(data: usize, data_end: usize, len: usize, ifindex: u32) -> bool {
    let mut pkt = Packet::new();
    let mut clock = Clock::new();
    if parse::parse(data, data_end, len, &mut pkt).is_err() {
        count(counter::DROP_MALFORMED);
        pkt.len = len as u32;
        pkt.ifindex = ifindex;
        pkt.now = clock.coarse();
        events::dropped(&pkt, what(VERDICT_DENIED, REASON_MALFORMED, INGRESS), 0);
        return false;
    }
    pkt.len = len as u32;
    pkt.ifindex = ifindex;
    match pkt.kind {
        Kind::NonIp => {
            count(counter::PASS_NON_IP);
            return true;
        }
        Kind::Ndp => {
            count(counter::PASS_NDP);
            return true;
        }
        _ => {}
    }
    // Read the active slot once: this packet is judged by that policy only.
    let (slot, cfg) = match ACTIVE.get(0) {
        Some(&s) if s == 1 || s == 2 => match SLOTS.get(s - 1) {
            Some(cfg) => (s - 1, cfg),
            None => return no_policy::<INGRESS>(&mut pkt, &mut clock),
        },
        _ => return no_policy::<INGRESS>(&mut pkt, &mut clock),
    };
    pkt.revision = cfg.revision;
    // Anti-spoofing, before anything can pass (a tracked flow, a fragment, an ICMP error): a
    // source this interface may not send from is dropped whatever the policy says, also in
    // audit mode. The lookup is a subprogram (its key off this frame); the drop reuses the
    // event path every other drop takes.
    if GUARD && !guard::allowed(ifindex, &pkt.tuple.src) {
        count(counter::DROP_SPOOFED);
        pkt.now = clock.coarse();
        events::dropped(&pkt, what(VERDICT_DENIED, REASON_SPOOFED, INGRESS), 0);
        return false;
    }
    // Audit mode: what the policy denies or rate-limits passes, counted and reported (a rule
    // or a segment in audit mode does the same for its own denials: `Judgement::audit`).
    let audit = cfg.flags & SLOT_F_AUDIT != 0;
    if pkt.kind == Kind::LaterFragment {
        pkt.now = clock.coarse();
        if later_fragment(&pkt) {
            return true;
        }
        events::dropped(&pkt, what(VERDICT_DENIED, REASON_FRAGMENT, INGRESS), 0);
        return false;
    }
    if pkt.kind == Kind::IcmpError && conntrack::lookup(&pkt.inner, clock.coarse()).is_some() {
        count(counter::PASS_ICMP_ERROR);
        return true;
    }

    // Under a flood of denials, a packet from a segment the policy allows nothing, neither from
    // it nor to it (so no flow of it can be tracked), is dropped after its identity lookup
    // alone, before the conntrack lookup (ICMP errors and later fragments were handled above).
    if !audit
        && cfg.flags & SLOT_F_GRANT_SOURCES == 0
        && events::flood_hint(|| clock.coarse())
        && let src = identity::flagged(slot, cfg.world_flags, &pkt.tuple.src, SEG_F_DENIED_ALL | SEG_F_ISOLATED)
        && src != SEG_ANY
    {
        return flood_drop::<INGRESS>(&mut pkt, &mut clock, src);
    }
    let key = &pkt.tuple;
    let syn = pkt.tuple.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A SYN always starts a new connection, judged afresh by the policy in force.
    if !syn
        && let Some(v) = conntrack::get(key)
        // SAFETY: valid map value pointer for this program run.
        && let val = unsafe { &mut *v }
        // One clock read: nanoseconds if a rate limit will need them, else the coarse clock.
        && let now = if INGRESS && val.limit != 0 { clock.fine() } else { clock.coarse() }
        && !conntrack::expired(val, key.proto, now)
    {
        if val.grant != 0 && maps::grant_expired(val.grant, now) {
            // The time-bound grant that allowed this flow has ended: cut it, like a revocation,
            // whether or not an agent is running.
            let rule = grant_ended(key, val);
            // Named by the policy that allowed the flow (the grant's rule may be gone since).
            (pkt.now, pkt.revision) = (now, val.revision);
            events::emit(&pkt, what(VERDICT_DENIED, REASON_GRANT_EXPIRED, INGRESS), rule, events::UNKNOWN_SEGMENTS, 1);
            return false;
        }
        if val.revision != cfg.revision {
            // The policy changed since this flow was allowed: judge it again.
            let orig = conntrack::original(key, val);
            let port = if orig.proto == PROTO_ICMP { ICMP_ECHO_REQUEST } else { orig.dport };
            let mut j = policy::judge(slot, cfg, &orig, port);
            policy::at(&mut j, cfg, now);
            let allowed = j.verdict.action == ACTION_ALLOW;
            if !allowed && !(audit || j.audit()) {
                conntrack::remove(&orig);
                count(counter::DROP_REVOKED);
                pkt.now = now;
                let segs = events::segments(j.src_segment, j.dst_segment);
                events::emit(&pkt, what(VERDICT_DENIED, REASON_REVOKED, INGRESS), j.verdict.rule, segs, 1);
                return false;
            }
            val.revision = cfg.revision;
            val.rule = j.verdict.rule;
            val.grant = j.grant();
            // In audit mode a flow the policy now denies goes on, marked; one it allows again
            // is unmarked.
            val.flags = if allowed { val.flags & !CT_F_AUDIT } else { val.flags | CT_F_AUDIT };
            if val.flags & CT_F_REPLY == 0 {
                val.limit = j.verdict.limit;
                val.src_segment = j.src_segment;
            } else {
                val.src_segment = j.dst_segment;
            }
        }
        if over_limit::<INGRESS>(&mut pkt, slot, val.limit, false, &mut clock, audit) {
            count_segment(val.src_segment, SEGMENT_RATE_LIMITED);
            return false;
        }
        conntrack::touch(v, now, pkt.tcp_flags);
        conntrack::count(v, pkt.len);
        first_fragment(&pkt, now);
        count(if val.flags & CT_F_AUDIT != 0 { counter::AUDIT_DENY } else { counter::PASS_TRACKED });
        count_segment(val.src_segment, SEGMENT_PASSED);
        return true;
    }

    // A flow denied under this revision already: no need to judge it again.
    let deny_key =
        DenyKey { src: pkt.tuple.src, dst: pkt.tuple.dst, port: pkt.policy_port, proto: pkt.tuple.proto, _pad: 0 };
    // A denied flow's aggregate lives as long as its cache entry: its running total only
    // grows, across pushes too, so the agent's counts stay exact.
    let mut renewing: Option<*mut DenyValue> = None;
    if let Some(d) = DENIED.get_ptr_mut(&deny_key) {
        // SAFETY: valid map value pointer for this program run.
        let dv = unsafe { &mut *d };
        pkt.now = clock.coarse();
        // Decided under an older policy: one CPU (the one that moves the revision) judges it
        // again below; the others count it as still denied meanwhile. The revision is the low
        // half of the value's first 8 bytes (the rule the high half): BPF compares and
        // exchanges 64-bit words.
        let word = (&raw mut dv.revision).cast::<u64>();
        // SAFETY: the map value starts with (revision, rule), 8-byte aligned.
        let old = unsafe { core::ptr::read_volatile(word) };
        let won = old as u32 != cfg.revision
            // SAFETY: as above; BPF compare-and-exchange.
            && unsafe { atomics::cas(word, old, (old & !0xffff_ffff) | cfg.revision as u64) };
        if !won {
            events::spend(pkt.now);
            count_denied(dv.rule);
            count_segment(dv.src_segment, SEGMENT_DENIED);
            if let Some(total) = events::aggregate(&raw mut dv.total, &raw mut dv.last_emit, pkt.now) {
                let segs = events::segments(dv.src_segment, dv.dst_segment);
                events::emit(&pkt, what(VERDICT_DENIED, rule_reason(dv.rule), INGRESS), dv.rule, segs, total);
            }
            return false;
        }
        renewing = Some(d);
    }
    // Under a flood of denials (this CPU spent its per-flow budget this interval), a new flow
    // from a source the policy allows nothing is dropped right after its identity lookup: no
    // denial-cache entry, no judgement, its packets counted per (segment, CPU). (After the
    // cache lookup, so that a flow denied already keeps its cheaper hit; grants from address
    // blocks and audit mode pass some such packets: they take the full path.)
    if renewing.is_none()
        && !audit
        && cfg.flags & SLOT_F_GRANT_SOURCES == 0
        && events::flooding(clock.coarse())
        && let src = identity::flagged(slot, cfg.world_flags, &pkt.tuple.src, SEG_F_DENIED_ALL)
        && src != SEG_ANY
    {
        return flood_drop::<INGRESS>(&mut pkt, &mut clock, src);
    }
    let mut j = policy::judge(slot, cfg, &pkt.tuple, pkt.policy_port);
    policy::at(&mut j, cfg, clock.coarse());
    let segs = events::segments(j.src_segment, j.dst_segment);
    let v = j.verdict;
    let allowed = v.action == ACTION_ALLOW;
    if !allowed && !(audit || j.audit()) {
        pkt.now = clock.coarse();
        count_denied(v.rule);
        count_segment(j.src_segment, SEGMENT_DENIED);
        let what = what(VERDICT_DENIED, rule_reason(v.rule), INGRESS);
        if renewing.is_none() && events::flooding(pkt.now) {
            // A new denied flow under a flood: counted per (segment, CPU), not cached.
            events::flood(&pkt, what, v.rule, j.src_segment);
            return false;
        }
        events::spend(pkt.now);
        if let Some(d) = renewing {
            // SAFETY: valid map value pointer for this program run (the entry found above).
            let dv = unsafe { &mut *d };
            (dv.rule, dv.src_segment, dv.dst_segment) = (v.rule, j.src_segment, j.dst_segment);
            // The aggregate goes on; report at once, as the first denial under this policy.
            // SAFETY: aligned u64 in the map value; BPF atomic add.
            unsafe { atomics::add_one(&raw mut dv.total) };
            dv.last_emit = pkt.now;
            events::emit(&pkt, what, v.rule, segs, unsafe { core::ptr::read_volatile(&raw const dv.total) });
        } else {
            let d = DenyValue {
                revision: cfg.revision,
                rule: v.rule,
                src_segment: j.src_segment,
                dst_segment: j.dst_segment,
                total: 1,
                last_emit: pkt.now,
            };
            let _ = DENIED.insert(&deny_key, &d, 0);
            events::emit(&pkt, what, v.rule, segs, 1);
        }
        return false;
    }
    // Allowed, or denied and passed in audit mode (a would-deny flow, tracked like an allowed
    // one but marked, so that its packets count as audit_deny).
    if let Some(d) = renewing {
        // Passes now: the flow is no longer denied. Report its aggregate's running total (the
        // packets since its last event are in it), then forget it.
        // SAFETY: valid map value pointer for this program run (the entry found above).
        let dv = unsafe { &*d };
        let what = what(VERDICT_DENIED, rule_reason(dv.rule), INGRESS);
        let old_segs = events::segments(dv.src_segment, dv.dst_segment);
        // SAFETY: aligned u64 in the map value.
        events::emit(&pkt, what, dv.rule, old_segs, unsafe { core::ptr::read_volatile(&raw const dv.total) });
        let _ = DENIED.remove(&deny_key);
    }
    // Echo replies and ICMP errors belong to other flows; everything else starts one.
    let starts_flow = pkt.kind == Kind::Ip && (pkt.tuple.proto != PROTO_ICMP || pkt.policy_port == ICMP_ECHO_REQUEST);
    // A new TCP connection or UDP flow also takes from the connections bucket.
    let new_conn = starts_flow && (pkt.tuple.proto == PROTO_TCP || pkt.tuple.proto == PROTO_UDP);
    if over_limit::<INGRESS>(&mut pkt, slot, v.limit, new_conn, &mut clock, audit) {
        count_segment(j.src_segment, SEGMENT_RATE_LIMITED);
        return false;
    }
    let now = clock.coarse();
    count_segment(j.src_segment, SEGMENT_PASSED);
    if starts_flow {
        conntrack::create(&pkt, now, cfg.revision, &v, segs);
        pkt.now = now;
        let verdict = if allowed { VERDICT_ALLOWED } else { VERDICT_WOULD_DENY };
        events::emit(&pkt, what(verdict, rule_reason(v.rule), INGRESS), v.rule, segs, 1);
    }
    first_fragment(&pkt, now);
    count(if allowed { counter::PASS_POLICY } else { counter::AUDIT_DENY });
    true
}

/// Stops tracking a flow whose time-bound grant has ended (`val`: its entry found with `key`),
/// counted as revoked; returns the grant's rule for the event. (A subprogram, which emits
/// nothing itself: the original key it builds stays off the caller's stack, and the event's
/// frame is not stacked on its own.)
#[inline(never)]
fn grant_ended(key: &CtKey, val: &CtValue) -> u32 {
    let (orig, rule) = (conntrack::original(key, val), val.rule);
    conntrack::remove(&orig);
    count(counter::DROP_REVOKED);
    rule
}

/// Drops a packet of `src`, a segment the policy allows nothing, under a flood: counted, and
/// reported in the segment's flood aggregate.
#[inline(always)]
fn flood_drop<const INGRESS: bool>(pkt: &mut Packet, clock: &mut Clock, src: u32) -> bool {
    pkt.now = clock.coarse();
    count(counter::DROP_DEFAULT);
    count_segment(src, SEGMENT_DENIED);
    events::flood(pkt, what(VERDICT_DENIED, REASON_DEFAULT, INGRESS), 0, src);
    false
}

/// Decided by a rule, or by the default action.
#[inline(always)]
fn rule_reason(rule: u32) -> u8 {
    if rule != 0 { REASON_RULE } else { REASON_DEFAULT }
}

/// No policy installed (yet): everything IP is dropped (fail closed).
#[inline(always)]
fn no_policy<const INGRESS: bool>(pkt: &mut Packet, clock: &mut Clock) -> bool {
    count(counter::DROP_NO_POLICY);
    pkt.now = clock.coarse();
    events::dropped(pkt, what(VERDICT_DENIED, REASON_NO_POLICY, INGRESS), 0);
    false
}

/// A packet denied by policy: by a deny rule, or by default.
#[inline(always)]
fn count_denied(rule: u32) {
    count(if rule != 0 { counter::DROP_RULE } else { counter::DROP_DEFAULT });
}

/// At ingress, charges the packet to its identity's rate limit `limit` (0 = none); true when
/// it is over the limit (counted, reported) and must be dropped. In `audit` mode a packet over
/// the limit is counted and reported as would-rate-limit, and passes.
#[inline(always)]
fn over_limit<const INGRESS: bool>(
    pkt: &mut Packet,
    slot: u32,
    limit: u32,
    new_conn: bool,
    clock: &mut Clock,
    audit: bool,
) -> bool {
    let src = &pkt.tuple.src;
    if !INGRESS
        || limit == 0
        || ratelimit::admit(ratelimit::index(slot, limit), src, pkt.len as u64, new_conn, clock.fine())
    {
        return false;
    }
    pkt.now = clock.fine();
    if audit {
        count(counter::AUDIT_RATE_LIMIT);
        events::dropped(pkt, what(VERDICT_WOULD_RATE_LIMIT, REASON_RATE_LIMIT, INGRESS), limit);
        return false;
    }
    count(counter::DROP_RATE_LIMIT);
    events::dropped(pkt, what(VERDICT_RATE_LIMITED, REASON_RATE_LIMIT, INGRESS), limit);
    true
}

#[inline(always)]
fn frag_key(pkt: &Packet, id: u32) -> FragKey {
    FragKey { src: pkt.tuple.src, dst: pkt.tuple.dst, id, proto: pkt.tuple.proto, _pad: [0; 3] }
}

/// Remembers an allowed first fragment so the rest of its datagram may follow.
#[inline(always)]
fn first_fragment(pkt: &Packet, now: u64) {
    if let Some(id) = pkt.frag_id() {
        let _ = FRAGS.insert(&frag_key(pkt, id), &now, 0);
    }
}

/// A fragment without L4 header passes only if its datagram's first fragment was allowed.
#[inline(always)]
fn later_fragment(pkt: &Packet) -> bool {
    let now = pkt.now;
    let seen = pkt.frag_id().and_then(|id| FRAGS.get_ptr(&frag_key(pkt, id)));
    // SAFETY: valid map value pointer for this program run.
    if let Some(t) = seen
        && now.saturating_sub(unsafe { *t }) <= FRAG_TIMEOUT_NS
    {
        count(counter::PASS_FRAGMENT);
        return true;
    }
    count(counter::DROP_FRAGMENT);
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
