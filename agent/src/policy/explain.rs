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

/// Why a segment name given for an end of a flow (`check --src NAME`) names no address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no segment is named {name}{hint}", name = super::source::diag::quote(.name))]
    UnknownSegment { name: String, hint: String },
    #[error(
        "segment {} has no {family}address of its own (each of its addresses is in a more specific segment)",
        super::source::diag::quote(.name)
    )]
    NoAddress { name: String, family: &'static str },
}

/// An address whose identity under `compiled` is the segment `name` (`world` included), to
/// judge a flow from or to that segment: the segment's first host address (or an exact
/// address of it), checked against the longest-prefix match; of the family `v4` says when it is
/// given (IPv4 first otherwise).
pub fn segment_address(compiled: &CompiledPolicy, name: &str, v4: Option<bool>) -> Result<IpAddr, EndpointError> {
    use std::net::Ipv6Addr;
    let Some(id) = compiled.segment_names.iter().position(|n| n == name) else {
        let hint = super::source::diag::suggest(name, compiled.segment_names.iter().map(String::as_str))
            .map_or(String::new(), |s| format!("; did you mean {}?", super::source::diag::quote(s)));
        return Err(EndpointError::UnknownSegment { name: name.to_owned(), hint });
    };
    let id = id as u32;
    let ip = |a: [u8; 16]| {
        let v6 = Ipv6Addr::from(a);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    let mut candidates: Vec<IpAddr> = compiled.hosts.iter().filter(|(_, i)| i.id == id).map(|(a, _)| ip(*a)).collect();
    for (len, net, _) in compiled.cidrs.iter().filter(|(_, _, i)| i.id == id) {
        let n = u128::from_be_bytes(*net);
        // The first host of the network, then the network itself.
        if *len < 128 {
            candidates.push(ip((n + 1).to_be_bytes()));
        }
        candidates.push(ip(*net));
    }
    if id == agent_common::SEG_WORLD {
        // Addresses no policy is likely to name (the documentation networks, RFC 5737/3849).
        candidates.extend(
            ["192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1", "2001:db8:ffff::1"]
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok()),
        );
    }
    let index = compiled.index();
    let family = |a: &IpAddr| v4.is_none_or(|v4| a.is_ipv4() == v4);
    let own = |a: &IpAddr| index.lookup(*a, *a, agent_common::PROTO_TCP, 1).src_segment == id;
    let mut found: Vec<IpAddr> = candidates.into_iter().filter(|a| family(a) && own(a)).collect();
    found.sort_by_key(|a| !a.is_ipv4());
    found.first().copied().ok_or_else(|| EndpointError::NoAddress {
        name: name.to_owned(),
        family: match v4 {
            Some(true) => "IPv4 ",
            Some(false) => "IPv6 ",
            None => "",
        },
    })
}
