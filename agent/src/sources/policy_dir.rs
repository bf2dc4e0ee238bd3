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
    sync::{Arc, Mutex},
};

use super::{Refused, WatchError, now, settle, sha256_hex, usable, watch_dir};
use crate::{
    api::{AppliedVersion, PolicySource, RejectedVersion},
    policy::{self, Policy},
};

/// What `ztagent status` shows of the directory source; the watcher updates it.
pub type Report = Arc<Mutex<PolicySource>>;

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
        F: Fn(Policy) -> Result<u32, Refused> + Send + 'static,
    {
        let dir = self.dir.clone();
        watch_dir(&dir, "the policy directory", "ztagent-policy-dir", move || self.check(&apply))
    }

    /// Reads the directory and acts on a new version.
    fn check(&mut self, apply: &dyn Fn(Policy) -> Result<u32, Refused>) {
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
            Err(e) => self.reject(Some(&v), &e.to_string(), ""),
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
        tracing::warn!(
            sha256 = sha256.as_deref().unwrap_or("-"),
            "policy directory: the version of {what}{when} is rejected; {keeps}:\n{message}"
        );
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
    let mut candidates: Vec<String> = crate::k8s::load_dir(dir)
        .map_err(|e| e.to_string())?
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

#[cfg(test)]
mod tests {
    use super::*;

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
