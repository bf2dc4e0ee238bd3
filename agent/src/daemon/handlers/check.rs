//! `check` (live, and against a file: [`check`]) and `policy get`.
use std::net::IpAddr;

use crate::{
    api::{CheckResult, Flow, Reply},
    policy::{self, CompiledPolicy, source::diag::quote},
};

use super::super::State;

pub(super) fn get(state: &State) -> Reply {
    match &state.installed {
        Some(i) => match serde_json::from_str(&i.policy.to_json()) {
            Ok(policy) => Reply::Policy { revision: i.revision, policy },
            Err(e) => Reply::Error { message: format!("internal error: {e}") },
        },
        None => Reply::Error {
            message: "this agent has not been given a policy yet; push one with `ztagent policy push FILE`".into(),
        },
    }
}

pub(super) fn live(state: &State, flow: Flow) -> Reply {
    match &state.installed {
        Some(i) => {
            let mut r = check_with_pods(&i.compiled, &flow, state.k8s.as_ref().map(|v| &*v.inventory));
            r.revision = Some(i.revision);
            Reply::Check(r)
        }
        None => Reply::Error { message: "this agent has no policy yet: every IP packet is dropped".into() },
    }
}

/// `check` with ends given as addresses, segment names or pods (`ns/pod`): resolved against
/// the policy in force and the pods the agent knows, then judged as [`live`].
pub(super) fn live_named(state: &State, src: &str, dst: &str, proto: u8, port: u16) -> Reply {
    let Some(i) = &state.installed else {
        return live(state, Flow { src: IpAddr::from([0, 0, 0, 0]), dst: IpAddr::from([0, 0, 0, 0]), proto, port });
    };
    match resolve(&i.compiled, state.k8s.as_ref().map(|v| &*v.inventory), src, dst) {
        Ok((src, dst)) => live(state, Flow { src, dst, proto, port }),
        Err(e) => Reply::Error { message: e.to_string() },
    }
}

/// Why an end of a flow given to `check` names no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Segment(#[from] policy::EndpointError),
    #[error("{} is a network; give one address, a segment name or a pod (namespace/name)", quote(.0))]
    Network(String),
    #[error(
        "{} names a pod (namespace/name), but no pods are known here: a live check against an agent run with --k8s-objects or --k8s-api knows them",
        quote(.0)
    )]
    NoPods(String),
    #[error("no pod {} with an {family}address is known to the agent{hint}", quote(.name))]
    UnknownPod { name: String, family: &'static str, hint: String },
    #[error("--src and --dst must be of the same address family")]
    Families,
}

/// The addresses of a flow's ends, each given as an address, a segment's name (an address
/// whose identity is that segment) or, with `pods`, a pod `namespace/name` (its address). A name
/// takes the family of an address given for the other end (IPv4 first when both are names).
pub fn resolve(
    compiled: &CompiledPolicy,
    pods: Option<&crate::k8s::Inventory>,
    src: &str,
    dst: &str,
) -> Result<(IpAddr, IpAddr), ResolveError> {
    let one = |name: &str, v4: Option<bool>| -> Result<IpAddr, ResolveError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(ip);
        }
        if name.parse::<ipnet::IpNet>().is_ok() {
            return Err(ResolveError::Network(name.to_owned()));
        }
        if !name.contains('/') {
            return Ok(policy::segment_address(compiled, name, v4)?);
        }
        let pods = pods.ok_or_else(|| ResolveError::NoPods(name.to_owned()))?;
        pods.address_of(name, v4).ok_or_else(|| ResolveError::UnknownPod {
            name: name.to_owned(),
            family: match v4 {
                Some(true) => "IPv4 ",
                Some(false) => "IPv6 ",
                None => "",
            },
            hint: crate::policy::source::diag::suggest(name, pods.names())
                .map_or(String::new(), |s| format!("; did you mean {}?", quote(s))),
        })
    };
    let (s, d) = match (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) {
        (Ok(s), Ok(d)) => (s, d),
        (Ok(s), Err(_)) => (s, one(dst, Some(s.is_ipv4()))?),
        (Err(_), Ok(d)) => (one(src, Some(d.is_ipv4()))?, d),
        (Err(_), Err(_)) => match (one(src, Some(true)), one(dst, Some(true))) {
            (Ok(s), Ok(d)) => (s, d),
            (first, second) => match (one(src, Some(false)), one(dst, Some(false))) {
                (Ok(s), Ok(d)) => (s, d),
                _ => (first?, second?),
            },
        },
    };
    if s.is_ipv4() != d.is_ipv4() {
        return Err(ResolveError::Families);
    }
    Ok((s, d))
}

/// The verdict the datapath gives `flow` under `compiled`, with names.
pub fn check(compiled: &CompiledPolicy, flow: &Flow) -> CheckResult {
    check_with_pods(compiled, flow, None)
}

/// As [`check`], also naming the pods (of the inventory `pods`) at either end.
pub fn check_with_pods(compiled: &CompiledPolicy, flow: &Flow, pods: Option<&crate::k8s::Inventory>) -> CheckResult {
    let e = policy::explain(compiled, flow.src, flow.dst, flow.proto, flow.port);
    let pod = |ip| pods.and_then(|p| p.pod(ip)).map(str::to_string);
    CheckResult {
        src_pod: pod(flow.src),
        dst_pod: pod(flow.dst),
        verdict: e.verdict,
        rule: e.rule,
        src_segment: e.src_segment,
        dst_segment: e.dst_segment,
        rate_limit: e.rate_limit,
        revision: None,
        mode: e.mode,
        audit: e.audit,
    }
}
