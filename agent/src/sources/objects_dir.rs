//! `run --k8s-objects DIR`: Kubernetes objects as files in a directory.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::k8s_versions::{K8sReport, K8sVersions, Reconciled};
use super::{Refused, WatchError, settle, sha256_hex, usable, watch_dir};

/// One read of an objects directory: every object file's path and bytes (name order), or why
/// the directory cannot be read.
type ObjectFiles = Result<Files, String>;
/// Object files: paths and bytes.
type Files = Vec<(PathBuf, Vec<u8>)>;

/// The `--k8s-objects DIR` source: every `*.yaml`, `*.yml` and `*.json` file of DIR (names
/// starting with `.` skipped, symlinks followed: a ConfigMap volume works as for
/// `--policy-dir`) holds Kubernetes objects; together they are the inventory and the
/// NetworkPolicies. Watched like the policy directory (inotify on DIR, a poll, two reads 100 ms
/// apart must agree); each new version is read whole (`k8s::parse_objects`, the diagnostics of
/// `ztagent k8s translate`) and handed to the daemon's reconcile; a broken one is rejected,
/// logged and shown in `status` (`k8s_source`), and what was in force stays.
pub struct ObjectsDir {
    dir: PathBuf,
    versions: K8sVersions,
    seen: Option<ObjectFiles>,
    /// The files in force (applied), and those validated at startup awaiting installation.
    applied: Option<Files>,
    pending: Option<(Files, crate::k8s::Objects)>,
}

impl ObjectsDir {
    pub fn open(dir: &Path) -> Result<ObjectsDir, WatchError> {
        usable(dir)?;
        let versions = K8sVersions::new("dir", dir.display().to_string());
        Ok(ObjectsDir { dir: dir.to_path_buf(), versions, seen: None, applied: None, pending: None })
    }

    pub fn report(&self) -> K8sReport {
        self.versions.report()
    }

    /// The objects at startup, for the daemon's first reconcile (then [`ObjectsDir::installed`]);
    /// None when they cannot be read or are broken (logged, reported): the agent starts
    /// without an inventory then.
    pub fn initial(&mut self) -> Option<crate::k8s::Objects> {
        let files = settle(read_objects(&self.dir), || read_objects(&self.dir), &self.dir)?;
        self.seen = Some(files.clone());
        match files.and_then(|f| parse_objects(&f).map(|o| (f, o))) {
            Ok((f, objects)) => {
                self.pending = Some((f, objects.clone()));
                Some(objects)
            }
            Err(message) => {
                let sha256 = files_of(self.seen.as_ref()).map(files_sha256);
                self.reject(sha256, &message);
                None
            }
        }
    }

    /// The objects [`ObjectsDir::initial`] returned are in force.
    pub fn installed(&mut self, done: &Reconciled) {
        if let Some((files, objects)) = self.pending.take() {
            self.accept(files, &objects, done);
        }
    }

    /// Watches the directory on a thread of its own for the rest of the process's life; each
    /// new valid version goes to `reconcile`.
    pub fn spawn<F>(mut self, reconcile: F) -> std::io::Result<()>
    where
        F: Fn(crate::k8s::Objects) -> Result<Reconciled, Refused> + Send + 'static,
    {
        let dir = self.dir.clone();
        watch_dir(&dir, "the Kubernetes objects directory", "ztagent-k8s-dir", move || self.check(&reconcile))
    }

    fn check(&mut self, reconcile: &dyn Fn(crate::k8s::Objects) -> Result<Reconciled, Refused>) {
        let first = read_objects(&self.dir);
        if self.seen.as_ref() == Some(&first) {
            return;
        }
        let Some(files) = settle(first, || read_objects(&self.dir), &self.dir) else { return };
        if self.seen.as_ref() == Some(&files) {
            return;
        }
        self.seen = Some(files.clone());
        let files = match files {
            Ok(f) => f,
            Err(message) => return self.reject(None, &message),
        };
        if self.applied.as_ref() == Some(&files) {
            self.versions.back_to_applied();
            return;
        }
        let objects = match parse_objects(&files) {
            Ok(o) => o,
            Err(message) => return self.reject(Some(files_sha256(&files)), &message),
        };
        match reconcile(objects.clone()) {
            Ok(done) => self.accept(files, &objects, &done),
            Err(e) => self.reject(Some(files_sha256(&files)), &e.to_string()),
        }
    }

    fn accept(&mut self, files: Vec<(PathBuf, Vec<u8>)>, objects: &crate::k8s::Objects, done: &Reconciled) {
        self.versions.accept(files_sha256(&files), files.len(), objects, done);
        self.applied = Some(files);
    }

    fn reject(&mut self, sha256: Option<String>, message: &str) {
        self.versions.reject(sha256, message);
    }
}

fn files_of(seen: Option<&ObjectFiles>) -> Option<&[(PathBuf, Vec<u8>)]> {
    match seen {
        Some(Ok(f)) => Some(f),
        _ => None,
    }
}

/// Every object file of `dir` and its bytes.
fn read_objects(dir: &Path) -> ObjectFiles {
    let mut out = Vec::new();
    for path in crate::k8s::load_dir(dir).map_err(|e| e.to_string())? {
        // A file removed between the listing and the read is a change the next read sees.
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        out.push((path, bytes));
    }
    Ok(out)
}

/// The objects of the files, with the diagnostics of `ztagent k8s translate`.
fn parse_objects(files: &[(PathBuf, Vec<u8>)]) -> Result<crate::k8s::Objects, String> {
    let inputs: Vec<(String, &[u8])> = files.iter().map(|(p, b)| (p.display().to_string(), &b[..])).collect();
    crate::k8s::objects::parse_files(&inputs).map_err(|d| d.to_string())
}

/// SHA-256 over every file's name, a NUL and its bytes, in name order.
fn files_sha256(files: &[(PathBuf, Vec<u8>)]) -> String {
    let mut all = Vec::new();
    for (path, bytes) in files {
        all.extend_from_slice(path.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
        all.push(0);
        all.extend_from_slice(bytes);
    }
    sha256_hex(&all)
}
