//! `grant`, `revoke`, and the grants that end by themselves.
use super::super::reconcile::reinstall;
use super::super::{DaemonError, State, unix_now};
use crate::api::{EventRecord, Grant, Reply};

pub(super) fn give(
    state: &mut State,
    from: String,
    to: String,
    ports: Vec<String>,
    seconds: u64,
    reason: String,
) -> Reply {
    match grant(state, from, to, ports, seconds, reason) {
        Ok((grant, revision)) => Reply::Granted { grant, revision },
        Err(e) => Reply::Error { message: e.to_string() },
    }
}

pub(super) fn revoke(state: &mut State, id: u32) -> Reply {
    match end_grant(state, id) {
        Ok((grant, revision)) => Reply::Revoked { grant, revision },
        Err(e) => Reply::Error { message: e.to_string() },
    }
}

/// Gives a time-bound grant: checked against the policy in force, kept in the state directory,
/// its deadline in the kernel, then its rule installed with the policy (a new revision).
fn grant(
    state: &mut State,
    from: String,
    to: String,
    ports: Vec<String>,
    seconds: u64,
    reason: String,
) -> Result<(Grant, u32), DaemonError> {
    use crate::daemon::grants::{GrantError, check_duration};
    let d = check_duration(std::time::Duration::from_secs(seconds))?;
    let Some(installed) = &state.installed else {
        return Err(GrantError::NoPolicy.into());
    };
    // An address block as its network (`10.20.9.7` is `10.20.9.7/32`).
    let from = match crate::daemon::grants::block(&from)? {
        Some(net) if state.k8s.is_some() => return Err(GrantError::BlockUnderKubernetes(net.to_string()).into()),
        Some(net) => net.to_string(),
        None => from,
    };
    let g = state.grants.add(from, to, ports, reason, unix_now(), d)?;
    if let Err(e) = crate::daemon::grants::check(&installed.policy, &g) {
        let _ = state.grants.remove(g.id);
        return Err(e.into());
    }
    let installed = reinstall(state).and_then(|r| Ok((r, state.grants.save(&state.state_dir)?)));
    match installed {
        Ok((r, ())) => {
            tracing::info!(id = g.id, from = %g.from, to = %g.to, seconds, reason = %g.reason, revision = r.revision, "grant given");
            note_grant(state, &g, "granted", "grant", r.revision);
            Ok((g, r.revision))
        }
        Err(e) => {
            // Not in force: take it back out (the kernel's old policy never held its rule).
            let _ = state.grants.remove(g.id);
            let _ = state.writer.set_grant(g.index, 0);
            Err(e)
        }
    }
}

/// Ends grant `id` now: its deadline first (the kernel cuts its flows at their next packet),
/// then the policy without its rule.
fn end_grant(state: &mut State, id: u32) -> Result<(Grant, u32), DaemonError> {
    let g = state.grants.remove(id)?;
    state.writer.set_grant(g.index, 0)?;
    state.grants.save(&state.state_dir)?;
    let r = reinstall(state)?;
    tracing::info!(id, revision = r.revision, "grant revoked");
    note_grant(state, &g, "grant-ended", "revoked", r.revision);
    Ok((g, r.revision))
}

/// Removes the grants that have ended (the kernel enforced their deadlines already) and
/// installs the policy without their rules; reported as `grant-ended` events.
pub(in crate::daemon) fn expire_grants(state: &mut State) {
    let ended = state.grants.take_ended(unix_now());
    if ended.is_empty() {
        return;
    }
    if let Err(e) = state.grants.save(&state.state_dir) {
        tracing::warn!("{e}");
    }
    let revision = match reinstall(state) {
        Ok(r) => r.revision,
        Err(e) => {
            tracing::warn!("cannot install the policy without the ended grants: {e}");
            state.writer.revision()
        }
    };
    for g in &ended {
        tracing::info!(id = g.id, revision, "grant ended");
        note_grant(state, g, "grant-ended", "expired", revision);
    }
}

/// An event of the agent's own about grant `g`.
fn note_grant(state: &State, g: &Grant, verdict: &str, reason: &str, revision: u32) {
    state.hub.note(EventRecord {
        rule: Some(format!("grant-{}", g.id)),
        ports: g.ports.clone(),
        revision,
        note: Some(g.reason.clone()),
        ..EventRecord::own(verdict, reason, &g.from, &g.to)
    });
}
