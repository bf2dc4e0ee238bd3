//! `ztagent run --policy-dir DIR`: the policy comes from a directory (typically a Kubernetes
//! ConfigMap volume), and every complete new version of it is applied; a broken one is
//! rejected, logged and shown in `ztagent status`, and the policy in force stays.
//!
//! **Which file.** `DIR/policy.yaml`; else `DIR/policy.json`; else the only `*.yaml`, `*.yml`
//! or `*.json` file in DIR. Names starting with `.` are ignored (Kubernetes' `..data` and
//! `..2026_11_28_...` entries); symlinks are followed. No such file, or several candidates
//! without a `policy.yaml`/`policy.json`, is a rejected version like an invalid policy.
//!
//! **Kubernetes' layout.** A ConfigMap volume is `DIR/..2026_11_28_10_00_00.123/policy.yaml`
//! (the data), `DIR/..data -> ..2026_11_28_10_00_00.123` and `DIR/policy.yaml ->
//! ..data/policy.yaml`. The kubelet updates it by writing a whole new timestamped directory,
//! pointing a temporary symlink at it and renaming that over `..data` (atomic), then removing the
//! old directory. Opening `DIR/policy.yaml` resolves the symlinks at that instant, so it reads
//! either the old or the new version, each complete.
//!
//! **Never a half-written file.** Files written in place (not the ConfigMap way) can be caught
//! mid-write: a version is taken only once two reads 100 ms apart give the same bytes (re-read
//! until they do), and acted on only when its bytes differ from the last version seen.
//!
//! **Watching.** The `notify` crate (inotify on Linux) watches DIR itself, not recursively: the
//! ConfigMap swap (new directory, temporary link, rename over `..data`, removal of the old
//! directory) and in-place edits are all events in DIR. Events only wake the watcher; it then
//! compares contents, so a burst of events is one check and an unchanged file is no change. A
//! poll every 5 s (every second if inotify cannot be used, e.g. no instances left) catches what
//! inotify cannot see: a `policy.yaml` symlink to a file outside DIR edited there, DIR mounted
//! over.
//!
//! **Applying.** A new version is validated (`policy::parse`, the same diagnostics as
//! `ztagent policy validate`, `DIR/NAME:LINE:COL: message`) and installed exactly like a push:
//! atomically, under the agent's state lock, saved as the last-known-good policy. A `policy
//! push` still works and stays in force until the directory's next version.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use crate::{
    control::{AppliedVersion, PolicySource, RejectedVersion},
    policy::{self, Policy},
};

/// What `ztagent status` shows of the directory source; the watcher updates it.
pub type Report = Arc<Mutex<PolicySource>>;

/// Two reads this far apart must agree before a version is taken.
const SETTLE: Duration = Duration::from_millis(100);
/// Reads tried before a file that keeps changing is left for the next wake-up.
const SETTLE_TRIES: usize = 50;
/// After an inotify wake-up, events are gathered this long (one ConfigMap update is several).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The safety poll, with inotify working and without it.
const POLL: Duration = Duration::from_secs(5);
const POLL_WITHOUT_NOTIFY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the policy directory {path} cannot be used: {message}")]
    Dir { path: PathBuf, message: String },
}

/// One read of the directory: the policy file's bytes, or why there are none.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Snapshot {
    File(Version),
    Missing(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    /// `DIR/NAME`, as diagnostics name it.
    path: PathBuf,
    /// Through the symlinks (`DIR/..2026_.../NAME` in a ConfigMap).
    resolved: PathBuf,
    bytes: Vec<u8>,
}

/// The directory source: reads versions, decides, and keeps the report.
pub struct PolicyDir {
    dir: PathBuf,
    report: Report,
    /// The last snapshot acted on (applied or rejected): only a different one is a new version.
    seen: Option<Snapshot>,
    /// The bytes of the version in force from this source.
    applied: Option<Vec<u8>>,
    /// A version validated at startup, waiting for the daemon to install it.
    pending: Option<Version>,
}

impl PolicyDir {
    /// The source for `dir`, which must be a directory.
    pub fn open(dir: &Path) -> Result<PolicyDir, WatchError> {
        usable(dir)?;
        let report = Arc::new(Mutex::new(PolicySource { dir: dir.display().to_string(), ..PolicySource::default() }));
        Ok(PolicyDir { dir: dir.to_path_buf(), report, seen: None, applied: None, pending: None })
    }

    /// The report `ztagent status` reads.
    pub fn report(&self) -> Report {
        self.report.clone()
    }

    /// The directory's policy at startup, validated, for the daemon to install (then
    /// [`PolicyDir::installed`]). None when it is missing or invalid: that is logged and
    /// reported, and the daemon falls back to the last-known-good policy.
    pub fn initial(&mut self) -> Option<Policy> {
        let snapshot = self.settle(read(&self.dir))?;
        self.seen = Some(snapshot.clone());
        match snapshot {
            Snapshot::Missing(message) => {
                self.reject(None, &message, "at startup");
                None
            }
            Snapshot::File(v) => match parse(&v) {
                Ok(p) => {
                    self.pending = Some(v);
                    Some(p)
                }
                Err(message) => {
                    self.reject(Some(&v), &message, "at startup");
                    None
                }
            },
        }
    }

    /// The policy [`PolicyDir::initial`] returned is in force as `revision`.
    pub fn installed(&mut self, revision: u32) {
        if let Some(v) = self.pending.take() {
            self.accept(&v, revision);
        }
    }

    /// Watches the directory on a thread of its own for the rest of the process's life.
    /// `apply` installs a validated policy like a push and returns its revision.
    pub fn spawn<F>(mut self, apply: F) -> std::io::Result<()>
    where
        F: Fn(Policy) -> Result<u32, String> + Send + 'static,
    {
        let dir = self.dir.clone();
        watch_dir(&dir, "the policy directory", "ztagent-policy-dir", move || self.check(&apply))
    }

    /// Reads the directory and acts on a new version.
    fn check(&mut self, apply: &dyn Fn(Policy) -> Result<u32, String>) {
        let first = read(&self.dir);
        if self.seen.as_ref() == Some(&first) {
            return;
        }
        let Some(snapshot) = self.settle(first) else { return };
        if self.seen.as_ref() == Some(&snapshot) {
            return;
        }
        self.seen = Some(snapshot.clone());
        let v = match snapshot {
            Snapshot::Missing(message) => return self.reject(None, &message, ""),
            Snapshot::File(v) => v,
        };
        if self.applied.as_deref() == Some(&v.bytes[..]) {
            tracing::info!(file = %v.path.display(), "the policy directory is back to the version in force");
            let mut r = self.lock();
            r.up_to_date = true;
            r.file = Some(v.resolved.display().to_string());
            return;
        }
        let parsed = match parse(&v) {
            Ok(p) => p,
            Err(message) => return self.reject(Some(&v), &message, ""),
        };
        match apply(parsed) {
            Ok(revision) => self.accept(&v, revision),
            Err(message) => self.reject(Some(&v), &message, ""),
        }
    }

    /// Re-reads until two reads [`SETTLE`] apart agree; None if the file keeps changing.
    fn settle(&self, first: Snapshot) -> Option<Snapshot> {
        settle(first, || read(&self.dir), &self.dir)
    }

    fn accept(&mut self, v: &Version, revision: u32) {
        let sha256 = sha256_hex(&v.bytes);
        tracing::info!(revision, sha256 = %sha256, "policy {} (from {}) installed", v.path.display(), v.resolved.display());
        self.applied = Some(v.bytes.clone());
        let mut r = self.lock();
        r.up_to_date = true;
        r.file = Some(v.resolved.display().to_string());
        r.last_applied = Some(AppliedVersion { sha256, revision, time: now() });
    }

    fn reject(&mut self, v: Option<&Version>, message: &str, when: &str) {
        let sha256 = v.map(|v| sha256_hex(&v.bytes));
        let keeps = if self.applied.is_some() {
            "the policy applied before stays in force".to_string()
        } else if when.is_empty() {
            "the policy in force stays".to_string()
        } else {
            "falling back to the last-known-good policy, if any".to_string()
        };
        let what = v.map_or_else(|| self.dir.display().to_string(), |v| v.path.display().to_string());
        let when = if when.is_empty() { String::new() } else { format!(" {when}") };
        tracing::warn!(sha256 = sha256.as_deref().unwrap_or("-"), "policy directory: the version of {what}{when} is rejected; {keeps}:\n{message}");
        let mut r = self.lock();
        r.up_to_date = false;
        if let Some(v) = v {
            r.file = Some(v.resolved.display().to_string());
        }
        r.last_rejection = Some(RejectedVersion { sha256, message: message.to_string(), time: now() });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PolicySource> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// That `dir` is a directory.
fn usable(dir: &Path) -> Result<(), WatchError> {
    let err = |message: String| WatchError::Dir { path: dir.to_path_buf(), message };
    let meta = fs::metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    Ok(())
}

/// Calls `check` on a thread of its own whenever `dir` may have changed (inotify events in it,
/// gathered for [`DEBOUNCE`]) and at least every [`POLL`] (every [`POLL_WITHOUT_NOTIFY`]
/// without inotify), for the rest of the process's life. `what` names the directory in logs.
fn watch_dir(dir: &Path, what: &'static str, thread: &str, mut check: impl FnMut() + Send + 'static) -> std::io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        // A full channel already holds a wake-up: the check reads the directory anyway.
        let _ = tx.try_send(());
    })
    .and_then(|mut w| {
        notify::Watcher::watch(&mut w, dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    let poll = match &watcher {
        Ok(_) => {
            tracing::info!(dir = %dir.display(), "watching {what} (inotify, and a poll every {}s)", POLL.as_secs());
            POLL
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch {what} with inotify ({e}): polling it every second");
            POLL_WITHOUT_NOTIFY
        }
    };
    std::thread::Builder::new().name(thread.into()).spawn(move || {
        // The watcher stops when dropped: it lives as long as this thread.
        let _watcher = watcher;
        loop {
            match rx.recv_timeout(poll) {
                Ok(()) => {
                    std::thread::sleep(DEBOUNCE);
                    while rx.try_recv().is_ok() {}
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
            }
            check();
        }
    })?;
    Ok(())
}

/// Re-reads (`read`) until two reads [`SETTLE`] apart agree, starting from `last`; None if
/// what is read keeps changing (then it is tried again at the next wake-up).
fn settle<T: PartialEq>(mut last: T, read: impl Fn() -> T, dir: &Path) -> Option<T> {
    for _ in 0..SETTLE_TRIES {
        std::thread::sleep(SETTLE);
        let again = read();
        if again == last {
            return Some(again);
        }
        last = again;
    }
    tracing::warn!(dir = %dir.display(), "the files keep changing: trying again later");
    None
}

/// The policy file of `dir` (see the module's documentation for the rule) and its bytes.
fn read(dir: &Path) -> Snapshot {
    let name = match choose(dir) {
        Ok(name) => name,
        Err(message) => return Snapshot::Missing(message),
    };
    let path = dir.join(&name);
    // Both through the symlinks as they are now; if `..data` is swapped in between, the next
    // read differs and the settling reads again.
    let resolved = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    match fs::read(&path) {
        Ok(bytes) => Snapshot::File(Version { path, resolved, bytes }),
        Err(e) => Snapshot::Missing(format!("cannot read {}: {e}", path.display())),
    }
}

/// `policy.yaml`, else `policy.json`, else the only `*.yaml`/`*.yml`/`*.json` regular file
/// (through symlinks); hidden names are skipped.
fn choose(dir: &Path) -> Result<String, String> {
    let mut candidates: Vec<String> = crate::k8s::load_dir(dir)?
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    for preferred in ["policy.yaml", "policy.json"] {
        if candidates.iter().any(|n| n == preferred) {
            return Ok(preferred.into());
        }
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(format!(
            "{} holds no policy file (policy.yaml, policy.json, or a single *.yaml, *.yml or *.json file)",
            dir.display()
        )),
        _ => Err(format!(
            "{} holds several policy files ({}) and no policy.yaml or policy.json: which one is meant is unclear",
            dir.display(),
            candidates.join(", ")
        )),
    }
}

/// Validates a version, with the diagnostics of `policy validate` (invalid UTF-8 included).
fn parse(v: &Version) -> Result<Policy, String> {
    let origin = v.path.display().to_string();
    match std::str::from_utf8(&v.bytes) {
        Ok(text) => policy::parse(text, &origin).map_err(|d| d.to_string()),
        Err(e) => Err(policy::utf8_diagnostic(&origin, &v.bytes, e).to_string()),
    }
}

// ---- `--k8s-objects DIR` --------------------------------------------------------------------

/// What `ztagent status` shows of the Kubernetes objects directory; the watcher updates it.
pub type K8sReport = Arc<Mutex<crate::control::K8sSource>>;

/// One read of an objects directory: every object file's path and bytes (name order), or why
/// the directory cannot be read.
type ObjectFiles = Result<Files, String>;
/// Object files: paths and bytes.
type Files = Vec<(PathBuf, Vec<u8>)>;

/// What a new version of the objects did, once installed.
pub struct Reconciled {
    pub revision: u32,
    /// The translation's warnings (addresses two pods claim, ...).
    pub warnings: Vec<String>,
}

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
        F: Fn(crate::k8s::Objects) -> Result<Reconciled, String> + Send + 'static,
    {
        let dir = self.dir.clone();
        watch_dir(&dir, "the Kubernetes objects directory", "ztagent-k8s-dir", move || self.check(&reconcile))
    }

    fn check(&mut self, reconcile: &dyn Fn(crate::k8s::Objects) -> Result<Reconciled, String>) {
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
            Err(message) => self.reject(Some(files_sha256(&files)), &message),
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
        let source = crate::control::K8sSource { source: kind.to_owned(), dir: name, ..Default::default() };
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
        let warnings: Vec<String> =
            objects.warnings.iter().map(|w| w.to_string()).chain(done.warnings.iter().map(|w| format!("warning: {w}"))).collect();
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
        let keeps = if self.applied { "the objects applied before stay in force" } else { "the agent has no inventory from it yet" };
        tracing::warn!(sha256 = sha256.as_deref().unwrap_or("-"), "Kubernetes objects of {}: the version is rejected; {keeps}:\n{message}", self.name());
        let mut r = self.lock();
        r.up_to_date = false;
        r.last_rejection = Some(RejectedVersion { sha256, message: message.to_string(), time: now() });
    }

    /// The source is back to the version in force (after a rejected one).
    pub fn back_to_applied(&self) {
        tracing::info!("the Kubernetes objects of {} are back to the version in force", self.name());
        self.lock().up_to_date = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, crate::control::K8sSource> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
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
    for path in crate::k8s::load_dir(dir)? {
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

/// Now, RFC 3339, UTC.
pub(crate) fn now() -> String {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    crate::events::rfc3339(ns)
}

/// SHA-256 of `data` in lower-case hex: what `sha256sum` prints for the policy file, so an
/// operator can tell which version is in force.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(sha256_hex(&[b'a'; 1000]), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
    }

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ztagent-watch-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    #[test]
    fn which_file_is_the_policy() {
        let d = scratch("choose");
        let dir = &d.0;
        assert!(choose(dir).unwrap_err().contains("holds no policy file"));
        fs::write(dir.join("README.md"), "x").unwrap();
        fs::create_dir(dir.join("sub.yaml")).unwrap(); // a directory is no file
        fs::write(dir.join(".hidden.yaml"), "x").unwrap();
        assert!(choose(dir).is_err());
        fs::write(dir.join("b.yml"), "x").unwrap();
        assert_eq!(choose(dir).unwrap(), "b.yml");
        fs::write(dir.join("a.json"), "x").unwrap();
        let e = choose(dir).unwrap_err();
        assert!(e.contains("several policy files (a.json, b.yml)"), "{e}");
        fs::write(dir.join("policy.json"), "x").unwrap();
        assert_eq!(choose(dir).unwrap(), "policy.json");
        fs::write(dir.join("policy.yaml"), "x").unwrap();
        assert_eq!(choose(dir).unwrap(), "policy.yaml");
    }

    /// Kubernetes' layout, swapped the kubelet's way: every read sees one whole version.
    #[test]
    fn configmap_layout_is_read_through_its_symlinks() {
        use std::os::unix::fs::symlink;
        let d = scratch("configmap");
        let dir = &d.0;
        let version = |ts: &str, text: &str| {
            fs::create_dir(dir.join(ts)).unwrap();
            fs::write(dir.join(ts).join("policy.yaml"), text).unwrap();
            symlink(ts, dir.join("..data_tmp")).unwrap();
            fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        };
        version("..2026_11_28_10_00_00.1", "one");
        symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
        let Snapshot::File(v) = read(dir) else { panic!("no version") };
        assert_eq!((v.bytes.as_slice(), v.path.clone()), (&b"one"[..], dir.join("policy.yaml")));
        assert!(v.resolved.ends_with("..2026_11_28_10_00_00.1/policy.yaml"), "{}", v.resolved.display());
        version("..2026_11_28_10_05_00.2", "two");
        fs::remove_dir_all(dir.join("..2026_11_28_10_00_00.1")).unwrap();
        let Snapshot::File(v) = read(dir) else { panic!("no version") };
        assert_eq!(v.bytes, b"two");
        assert!(v.resolved.ends_with("..2026_11_28_10_05_00.2/policy.yaml"));
    }

    #[test]
    fn rejections_are_reported_and_a_valid_version_applied_once() {
        let d = scratch("check");
        let dir = &d.0;
        let good = "version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\nrules: []\n";
        fs::write(dir.join("policy.yaml"), good).unwrap();
        let mut src = PolicyDir::open(dir).unwrap();
        assert!(src.initial().is_some());
        src.installed(1);
        let applied = std::cell::Cell::new(0u32);
        let apply = |_: Policy| {
            applied.set(applied.get() + 1);
            Ok(applied.get() + 1)
        };
        src.check(&apply);
        assert_eq!(applied.get(), 0, "an unchanged version was applied again");
        fs::write(dir.join("policy.yaml"), good.replace("10.0.0.0/8", "10.0.0.300/8")).unwrap();
        src.check(&apply);
        assert_eq!(applied.get(), 0);
        let r = src.report.lock().unwrap().clone();
        assert!(!r.up_to_date);
        assert_eq!(r.last_applied.as_ref().unwrap().revision, 1);
        let msg = &r.last_rejection.as_ref().unwrap().message;
        assert!(msg.starts_with(&format!("{}:3:", dir.join("policy.yaml").display())), "{msg}");
        fs::write(dir.join("policy.yaml"), [b'v', 0xff]).unwrap();
        src.check(&apply);
        let msg = src.report.lock().unwrap().last_rejection.clone().unwrap().message;
        assert!(msg.ends_with("policy.yaml:1:2: the file is not valid UTF-8 (byte 0xff)"), "{msg}");
        fs::write(dir.join("policy.yaml"), good.replace("rules: []", "defaultAction: allow\nrules: []")).unwrap();
        src.check(&apply);
        let r = src.report.lock().unwrap().clone();
        assert_eq!((applied.get(), r.up_to_date, r.last_applied.unwrap().revision), (1, true, 2));
        assert_eq!(r.last_rejection.unwrap().sha256.unwrap(), sha256_hex(&[b'v', 0xff]));
    }
}
