//! What a Kubernetes source (the objects directory, the API) did with its versions.

use std::sync::{Arc, Mutex};

use super::now;
use crate::api::{AppliedVersion, RejectedVersion};

/// What `ztagent status` shows of the Kubernetes objects directory; the watcher updates it.
pub type K8sReport = Arc<Mutex<crate::api::K8sSource>>;

/// What a new version of the objects did, once installed.
pub struct Reconciled {
    pub revision: u32,
    /// The translation's warnings (addresses two pods claim, ...).
    pub warnings: Vec<String>,
}

/// What a Kubernetes source (the objects directory, the API) did with its versions: logged,
/// and kept for `status` (`k8s_source`). Every source's lines after its read.
pub struct K8sVersions {
    report: K8sReport,
    /// Whether a version of this source is in force.
    applied: bool,
}

impl K8sVersions {
    /// `kind`: `dir` or `api`; `name`: the directory, or the API server's URL.
    pub fn new(kind: &str, name: String) -> K8sVersions {
        let source = crate::api::K8sSource { source: kind.to_owned(), dir: name, ..Default::default() };
        K8sVersions { report: Arc::new(Mutex::new(source)), applied: false }
    }

    pub fn report(&self) -> K8sReport {
        self.report.clone()
    }

    fn name(&self) -> String {
        self.lock().dir.clone()
    }

    /// A version is in force (reconciled as `done`): `sha256` names it, `inputs` is the number
    /// of texts it was read from (files, or the API's objects).
    pub fn accept(&mut self, sha256: String, inputs: usize, objects: &crate::k8s::Objects, done: &Reconciled) {
        let c = &objects.cluster;
        let pod_addresses = crate::k8s::Inventory::of(c).len();
        tracing::info!(
            revision = done.revision,
            sha256 = %sha256,
            "Kubernetes objects of {} in force: {} namespaces, {} pods ({pod_addresses} addresses), {} NetworkPolicies",
            self.name(),
            c.namespaces.len(),
            c.pods.len(),
            objects.policies.len()
        );
        let warnings: Vec<String> = objects
            .warnings
            .iter()
            .map(|w| w.to_string())
            .chain(done.warnings.iter().map(|w| format!("warning: {w}")))
            .collect();
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let mut r = self.lock();
        r.up_to_date = true;
        r.files = inputs;
        r.namespaces = c.namespaces.len();
        r.pods = c.pods.len();
        r.pod_addresses = pod_addresses;
        r.network_policies = objects.policies.len();
        r.warnings = warnings;
        r.last_applied = Some(AppliedVersion { sha256, revision: done.revision, time: now() });
        drop(r);
        self.applied = true;
    }

    /// A version is rejected: what was in force stays.
    pub fn reject(&mut self, sha256: Option<String>, message: &str) {
        let keeps = if self.applied {
            "the objects applied before stay in force"
        } else {
            "the agent has no inventory from it yet"
        };
        tracing::warn!(
            sha256 = sha256.as_deref().unwrap_or("-"),
            "Kubernetes objects of {}: the version is rejected; {keeps}:\n{message}",
            self.name()
        );
        let mut r = self.lock();
        r.up_to_date = false;
        r.last_rejection = Some(RejectedVersion { sha256, message: message.to_string(), time: now() });
    }

    /// The source is back to the version in force (after a rejected one).
    pub fn back_to_applied(&self) {
        tracing::info!("the Kubernetes objects of {} are back to the version in force", self.name());
        self.lock().up_to_date = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, crate::api::K8sSource> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}
