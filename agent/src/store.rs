//! The last-known-good policy on disk: the agent's state directory holds the policy in force
//! and its revision, written atomically (temporary file, fsync, rename, fsync of the
//! directory) after every successful push, so a restarted agent can check the pinned kernel
//! state against it and, if they differ, install it again.
use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::policy::{self, Policy};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ztagent";
const FILE: &str = "policy.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write the last-known-good policy to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("the last-known-good policy {path} cannot be read: {message}")]
    Read { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
struct Saved {
    revision: u32,
    /// As written: its segments in the policy's order, which numbers them as the pinned maps
    /// do (a `serde_json::Value` would sort them by name).
    policy: Box<serde_json::value::RawValue>,
    /// Where a pushed policy came from (`policy push`'s origin); absent for one the agent
    /// took from `--policy`, a directory or etcd. A restart with `--policy FILE` keeps a
    /// pushed policy (it is newer than FILE) unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pushed: Option<String>,
}

/// The last-known-good policy as saved.
#[derive(Debug, PartialEq)]
pub struct LastKnownGood {
    pub revision: u32,
    pub policy: Policy,
    /// `policy push`'s origin when it was pushed (see [`save`]).
    pub pushed: Option<String>,
}

/// Saves `policy` as revision `revision` of the policy in force; `pushed`: the origin of a
/// pushed policy (None for one from `--policy`, a directory or etcd).
pub fn save(dir: &Path, revision: u32, policy: &Policy, pushed: Option<&str>) -> Result<(), StateError> {
    let path = dir.join(FILE);
    let err = |source| StateError::Write { path: path.clone(), source };
    let value = serde_json::value::RawValue::from_string(policy.to_json()).map_err(|e| err(io::Error::other(e)))?;
    let bytes = serde_json::to_vec_pretty(&Saved { revision, policy: value, pushed: pushed.map(str::to_owned) })
        .map_err(|e| err(io::Error::other(e)))?;
    write_atomic(dir, FILE, &bytes).map_err(err)
}

/// Replaces `dir/name` with `bytes`, atomically and durably: a temporary file, fsynced,
/// renamed over it, and the directory fsynced (the rename must reach the disk too).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir).and_then(|d| d.sync_all())
}

/// `dir/file` read as JSON; `T::default()` when there is no such file. Err: the path and why.
pub fn read_json<T: serde::de::DeserializeOwned + Default>(dir: &Path, file: &str) -> Result<T, (PathBuf, String)> {
    let path = dir.join(file);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| (path, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err((path, e.to_string())),
    }
}

/// `value` written to `dir/file` as JSON, atomically (see [`write_atomic`]). Err: the path and
/// why.
pub fn write_json<T: Serialize>(dir: &Path, file: &str, value: &T) -> Result<(), (PathBuf, io::Error)> {
    let path = dir.join(file);
    match serde_json::to_vec(value) {
        Ok(bytes) => write_atomic(dir, file, &bytes).map_err(|e| (path, e)),
        Err(e) => Err((path, io::Error::other(e))),
    }
}

/// The saved policy and its revision; None when there is none.
pub fn load(dir: &Path) -> Result<Option<(u32, Policy)>, StateError> {
    Ok(load_last_known_good(dir)?.map(|l| (l.revision, l.policy)))
}

/// The saved policy, its revision and whether it was pushed; None when there is none.
pub fn load_last_known_good(dir: &Path) -> Result<Option<LastKnownGood>, StateError> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::Read { path, message: e.to_string() }),
    };
    let read = |message: String| StateError::Read { path: path.clone(), message };
    let saved: Saved = serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
    let policy = policy::parse(saved.policy.get(), &path.display().to_string()).map_err(|d| read(d.to_string()))?;
    Ok(Some(LastKnownGood { revision: saved.revision, policy, pushed: saved.pushed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_policy_loads_back_and_replaces_the_previous_one() {
        let dir = std::env::temp_dir().join(format!("ztagent-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_none());
        let p1 = policy::parse("version: 1\nsegments:\n  a: { cidrs: [10.0.0.0/8] }\nrules: []\n", "t").unwrap();
        // Segments keep their order (their ids): not sorted by name.
        let p0 = policy::parse(
            "version: 1\nsegments:\n  z: { cidrs: [10.0.0.0/8] }\n  a: { cidrs: [11.0.0.0/8] }\nrules: []\n",
            "t",
        )
        .unwrap();
        save(&dir, 1, &p0, None).unwrap();
        assert_eq!(load(&dir).unwrap().unwrap(), (1, p0));
        let p2 = policy::parse("version: 1\ndefaultAction: allow\nsegments: {}\nrules: []\n", "t").unwrap();
        save(&dir, 1, &p1, None).unwrap();
        save(&dir, 2, &p2, Some("p2.yaml")).unwrap();
        assert_eq!(load_last_known_good(&dir).unwrap().unwrap().pushed.as_deref(), Some("p2.yaml"));
        let (rev, p) = load(&dir).unwrap().unwrap();
        assert_eq!((rev, p), (2, p2));
        assert!(!dir.join(".policy.json.tmp").exists());
        fs::write(dir.join(FILE), "{ not json").unwrap();
        assert!(matches!(load(&dir), Err(StateError::Read { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
