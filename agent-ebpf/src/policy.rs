//! Policy: (source segment, destination segment, protocol, port) -> verdict, in a fixed number
//! of lookups whatever the size of the policy (see `agent_common` for the map design).
use agent_common::{
    ACTION_ALLOW, Addr, CIDR_SLOT_BITS, CidrData, PROFILE_NONE, PairKey, PortData, SEG_ANY, SEG_F_AUDIT,
    SEG_F_DST_WILD, SEG_F_SRC_WILD, SLOT_F_GRANT_SOURCES, SlotConfig, VERDICT_F_AUDIT, VERDICT_GRANT_SHIFT, Verdict,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    identity::segment_of,
    maps::{GRANT_SOURCES, PAIRS, PORTS, grant_expired},
    parse::Tuple,
};

#[inline(always)]
fn pair(slot: u32, src: u32, dst: u32) -> Option<u32> {
    // SAFETY: u32 values are plain data; the pointer is valid for this program run.
    PAIRS.get_ptr(&PairKey { slot, src, dst }).map(|p| unsafe { *p })
}

/// A verdict and the segments it was reached for (numeric; the agent names them).
pub struct Judgement {
    pub verdict: Verdict,
    pub src_segment: u32,
    pub dst_segment: u32,
    /// The source or the destination segment is in audit mode.
    pub audit_segments: bool,
}

impl Judgement {
    /// A denial that only audits: by a rule in audit mode, or to or from a segment in audit
    /// mode (the policy's own mode is the caller's to add).
    #[inline(always)]
    pub fn audit(&self) -> bool {
        self.verdict.action != ACTION_ALLOW && (self.verdict.flags & VERDICT_F_AUDIT != 0 || self.audit_segments)
    }

    /// 1 + the index of the time-bound grant that allows it (0: none). (Read from the verdict,
    /// not kept: the record stays small, and the caller's stack within 512 bytes.)
    #[inline(always)]
    pub fn grant(&self) -> u32 {
        self.verdict.flags >> VERDICT_GRANT_SHIFT
    }
}

/// Makes `j` the judgement at `now`: a time-bound grant past its deadline allows nothing. Its piece of port space
/// is one no other rule decides (grants come last, and a deny beats them), so without it the
/// default action decides. (Apart from `judge`: a BPF function takes at most 5 arguments, the
/// returned record counting as one.)
#[inline(always)]
pub fn at(j: &mut Judgement, cfg: &SlotConfig, now: u64) {
    let grant = j.grant();
    if grant != 0 && grant_expired(grant, now) {
        j.verdict = Verdict { action: cfg.default_action, rule: 0, limit: 0, flags: 0 };
    }
}

/// Judges a new flow given as the tuple of its first packet and the port policy sees (see
/// [`at`] for time-bound grants).
/// A BPF subprogram of its own (not inlined): its lookup keys then live in its own stack frame
/// instead of adding to the caller's, which would exceed the 512-byte limit.
#[inline(never)]
pub fn judge(slot: u32, cfg: &SlotConfig, t: &Tuple, port: u16) -> Judgement {
    let src = segment_of(slot, cfg.world_flags, &t.src);
    let dst = segment_of(slot, cfg.world_flags, &t.dst);
    // The compiler wrote explicit pairs wherever both wildcard entries would apply, so the
    // first hit in this order is the complete answer.
    let profile = match pair(slot, src.id, dst.id) {
        Some(p) => p,
        None if src.flags & SEG_F_SRC_WILD != 0 => pair(slot, src.id, SEG_ANY).unwrap_or(PROFILE_NONE),
        None if dst.flags & SEG_F_DST_WILD != 0 => pair(slot, SEG_ANY, dst.id).unwrap_or(PROFILE_NONE),
        None => cfg.any_any,
    };
    let default = Verdict { action: cfg.default_action, rule: 0, limit: 0, flags: 0 };
    let mut verdict =
        if profile == PROFILE_NONE { default } else { port_verdict(profile, t.proto, port).unwrap_or(default) };
    // Denied by default: a time-bound grant from an address block may allow it (deny rules
    // beat grants, and where a rule allows, it decides).
    if verdict.rule == 0
        && verdict.action != ACTION_ALLOW
        && cfg.flags & SLOT_F_GRANT_SOURCES != 0
        && let Some(v) = granted(slot, &t.src, dst.id, u32::from(t.proto) << 16 | u32::from(port))
    {
        verdict = v;
    }
    let audit_segments = (src.flags | dst.flags) & SEG_F_AUDIT != 0;
    Judgement { verdict, src_segment: src.id, dst_segment: dst.id, audit_segments }
}

/// The `PORTS` entry of `profile` for (`proto`, `port`).
#[inline(always)]
fn port_verdict(profile: u32, proto: u8, port: u16) -> Option<Verdict> {
    let data = PortData { profile: profile.to_be_bytes(), proto, port: port.to_be_bytes(), _pad: 0 };
    PORTS.get(&Key::new(32 + agent_common::PORT_KEY_BITS, data)).copied()
}

/// The allow of a time-bound grant from an address block holding `src`, to the segment `dst`,
/// for `proto_port` (`proto << 16 | port`: BPF functions take 5 arguments, the returned record
/// counting as one): the block's pseudo-segment (the longest block holding `src`; its entries
/// hold the grants of every block around it too), then its pair with `dst` or, for a grant to
/// `*`, its wildcard pair. (A subprogram: the trie key stays off the caller's stack.)
#[inline(never)]
fn granted(slot: u32, src: &Addr, dst: u32, proto_port: u32) -> Option<Verdict> {
    let (proto, port) = ((proto_port >> 16) as u8, proto_port as u16);
    let key = Key::new(CIDR_SLOT_BITS + 128, CidrData { slot: slot.to_be_bytes(), addr: *src });
    let block = *GRANT_SOURCES.get(&key)?;
    let profile = match pair(slot, block.id, dst) {
        Some(p) => p,
        None if block.flags & SEG_F_SRC_WILD != 0 => pair(slot, block.id, SEG_ANY)?,
        None => return None,
    };
    port_verdict(profile, proto, port).filter(|v| v.action == ACTION_ALLOW)
}
