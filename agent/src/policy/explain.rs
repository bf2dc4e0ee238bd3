//! `check`: the verdict the datapath gives one flow under a compiled policy, with names (the
//! deciding rule, the segments, the rate limit, the mode). The daemon and the CLI turn it into
//! the wire type `api::CheckResult`.
use std::net::IpAddr;

use super::compile::CompiledPolicy;

/// A verdict and what decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// "allow" or "deny".
    pub verdict: String,
    /// The deciding rule's name, or None when the default action decided.
    pub rule: Option<String>,
    pub src_segment: String,
    pub dst_segment: String,
    /// The rate limit the flow's packets count against, if any (allowed flows only).
    pub rate_limit: Option<String>,
    /// "enforce", or "audit": then a "deny" passes, reported as would-deny.
    pub mode: String,
    /// A "deny" that passes, reported as would-deny: the policy, the deciding rule, or one of
    /// the two segments is in audit mode.
    pub audit: bool,
}

/// The verdict for a flow from `src` to `dst` (IP protocol `proto`; `port` the destination
/// port, for ICMP the type) under `compiled`, with names.
pub fn explain(compiled: &CompiledPolicy, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Explanation {
    let d = compiled.lookup(src, dst, proto, port);
    Explanation {
        verdict: if d.action == agent_common::ACTION_ALLOW { "allow" } else { "deny" }.into(),
        rule: compiled.rule_name(d.rule).map(str::to_string),
        src_segment: compiled.segment_name(d.src_segment).unwrap_or("?").to_string(),
        dst_segment: compiled.segment_name(d.dst_segment).unwrap_or("?").to_string(),
        rate_limit: compiled.limit_name(d.limit).map(str::to_string),
        mode: compiled.mode.as_str().into(),
        audit: d.audit,
    }
}
