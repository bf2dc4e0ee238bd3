//! Policy: (source segment, destination segment, protocol, port) -> verdict, in a fixed number
//! of lookups whatever the size of the policy (see `agent_common` for the map design).
use agent_common::{
    ACTION_ALLOW, PROFILE_NONE, PairKey, PortData, SEG_ANY, SEG_F_AUDIT, SEG_F_DST_WILD, SEG_F_SRC_WILD,
    SlotConfig, VERDICT_F_AUDIT, VERDICT_GRANT_SHIFT, Verdict,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    identity::segment_of,
    maps::{PAIRS, PORTS, grant_expired},
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
    let verdict = if profile == PROFILE_NONE {
        default
    } else {
        let port = port.to_be_bytes();
        let data = PortData { profile: profile.to_be_bytes(), proto: t.proto, port, _pad: 0 };
        match PORTS.get(&Key::new(32 + agent_common::PORT_KEY_BITS, data)) {
            Some(v) => *v,
            None => default,
        }
    };
    let audit_segments = (src.flags | dst.flags) & SEG_F_AUDIT != 0;
    Judgement { verdict, src_segment: src.id, dst_segment: dst.id, audit_segments }
}
