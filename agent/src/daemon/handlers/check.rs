//! `check` (live, and against a file: [`check`]) and `policy get`.
use crate::{
    api::{CheckResult, Flow, Reply},
    policy::{self, CompiledPolicy},
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
