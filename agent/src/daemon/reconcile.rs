//! The one way a policy gets into the kernel: compiled with the grants in force (and
//! translated with the Kubernetes inputs), written by the map writer, saved as the
//! last-known-good.
use std::sync::Arc;

use super::{DaemonError, Installed, K8sView, State, unix_now};
use crate::{
    api::PushResult,
    policy::{self, CompiledPolicy, Policy},
};

pub(super) fn install(state: &mut State, parsed: Policy) -> Result<PushResult, DaemonError> {
    let (compiled, warnings) = compile_with(&parsed, &state.grants.grants, state.k8s.as_deref())?;
    state.last_k8s_warnings = warnings;
    install_compiled(state, parsed, compiled)
}

/// What the kernel gets of `parsed`: the policy and the rules of the grants in force, translated
/// with the Kubernetes inputs when there are any; and the translation's warnings.
pub(super) fn compile_with(
    parsed: &Policy,
    grants: &[crate::api::Grant],
    k8s: Option<&K8sView>,
) -> Result<(Arc<CompiledPolicy>, Vec<String>), DaemonError> {
    // Under Kubernetes inputs only grants between segments apply (see `with_grants`).
    let (with, skipped) = crate::daemon::grants::with_grants(parsed, grants, k8s.is_none());
    for (id, e) in skipped {
        tracing::warn!("grant {id} does not apply to this policy: {e}");
    }
    match k8s {
        None => Ok((Arc::new(policy::compile(&with)), Vec::new())),
        Some(view) => {
            let t = crate::k8s::translate(&with, &view.cluster, &view.policies)?;
            Ok((Arc::new(policy::compile(&t.policy)), t.warnings))
        }
    }
}

/// The one entry point of every Kubernetes source (today the `--k8s-objects` directory; an
/// API watcher would call it the same way): the inventory and the NetworkPolicies are now
/// `cluster` and `policies`. The native policy in force (or `version: 1` if none) is translated
/// with them, compiled and installed like a push (atomically, a new revision). On failure
/// (a translation the native policy refuses, full maps) nothing changes.
pub(super) fn reconcile(
    state: &mut State,
    cluster: crate::k8s::Cluster,
    policies: Vec<crate::k8s::NetworkPolicy>,
) -> Result<crate::sources::k8s_versions::Reconciled, DaemonError> {
    let old = state.k8s.replace(Arc::new(K8sView::new(cluster, policies)));
    let native = state.installed.as_ref().map_or_else(Policy::default, |i| i.policy.clone());
    match install(state, native) {
        Ok(r) => Ok(crate::sources::k8s_versions::Reconciled { revision: r.revision, warnings: state.k8s_warnings() }),
        Err(e) => {
            state.k8s = old;
            Err(e)
        }
    }
}

/// The policy in force installed again, with the grants as they are now (a new revision, so
/// every tracked flow is judged again at its next packet).
pub(super) fn reinstall(state: &mut State) -> Result<PushResult, DaemonError> {
    let parsed = match &state.installed {
        Some(i) => i.policy.clone(),
        None => return Err(crate::daemon::grants::GrantError::NoPolicy.into()),
    };
    install(state, parsed)
}

/// As [`install`], with the policy already compiled (with the grants of `state`).
pub(super) fn install_compiled(
    state: &mut State,
    parsed: Policy,
    compiled: Arc<CompiledPolicy>,
) -> Result<PushResult, DaemonError> {
    // The deadlines first: a grant's rule must never be in force without its own.
    let (unix, mono) = (unix_now(), crate::clock::monotonic_ns());
    for g in &state.grants.grants {
        state.writer.set_grant(g.index, crate::daemon::grants::deadline_ns(g.expires_at, unix, mono))?;
    }
    // Events of the new revision may arrive as soon as it is in force: name them first.
    let revision = state.writer.revision().wrapping_add(1).max(1);
    state.hub.policy(revision, compiled.clone());
    if let Some(view) = &state.k8s {
        state.hub.pods(view.inventory.clone());
    }
    let written = state.writer.apply(&compiled)?;
    let result = PushResult {
        revision: written.revision,
        segments: parsed.segments.len(),
        rules: parsed.rules.len(),
        entries: written.entries,
    };
    state.alerts.lock().unwrap_or_else(|p| p.into_inner()).configure(parsed.alerts.clone(), unix_now());
    // Acknowledged only once the state directory holds it too.
    crate::store::save(&state.state_dir, written.revision, &parsed, state.pushed_from.as_deref())?;
    state.installed =
        Some(Installed { revision: written.revision, policy: parsed, compiled, installed_at: unix_now() });
    Ok(result)
}
