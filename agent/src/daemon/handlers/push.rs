//! `policy push`: parsed and compiled outside the state lock, installed under it.
use std::sync::Arc;

use super::super::reconcile::{compile_with, install_compiled};
use super::super::{Shared, lock};
use crate::api::Reply;
use crate::policy;

pub(super) fn push(shared: &Shared, origin: &str, source: &str) -> Reply {
    let parsed = match policy::parse(source, origin) {
        Err(d) => return Reply::Error { message: format!("the policy is invalid:\n{d}") },
        Ok(parsed) => parsed,
    };
    let (grants, k8s) = {
        let s = lock(shared);
        (s.grants.grants.clone(), s.k8s.clone())
    };
    let (mut compiled, mut warnings) = match compile_with(&parsed, &grants, k8s.as_deref()) {
        Ok(c) => c,
        Err(e) => return Reply::Error { message: e.to_string() },
    };
    let mut state = lock(shared);
    // A grant given or ended, or new Kubernetes objects, while this push was compiled.
    let same_k8s = match (&k8s, &state.k8s) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    if grants != state.grants.grants || !same_k8s {
        match compile_with(&parsed, &state.grants.grants, state.k8s.as_deref()) {
            Ok((c, w)) => (compiled, warnings) = (c, w),
            Err(e) => return Reply::Error { message: e.to_string() },
        }
    }
    state.last_k8s_warnings = warnings;
    let before = state.pushed_from.replace(origin.to_owned());
    match install_compiled(&mut state, parsed, compiled) {
        Err(e) => {
            state.pushed_from = before;
            Reply::Error { message: e.to_string() }
        }
        Ok(r) => {
            tracing::info!(revision = r.revision, entries = r.entries, "policy {origin} pushed");
            Reply::Pushed(r)
        }
    }
}
