//! Where inputs come from: each source reads versions of its input, validates them, hands
//! each new valid one to the daemon's one reconcile (a closure it is given), and keeps a report
//! for `ztagent status`. A broken version is rejected, logged and reported; what was in force
//! stays.
//!
//! - [`policy_dir`]: `run --policy-dir DIR` (a ConfigMap volume, or any directory).
//! - [`objects_dir`]: `run --k8s-objects DIR`, Kubernetes objects as files.
//! - [`k8s_api`]: `run --k8s-api`, the same objects watched on the Kubernetes API.
//! - [`etcd`]: `run --policy-source etcd://...`, the fleet's policy (and `ztagent fleet`'s side).
//!
//! Sources depend on `k8s` and `policy` (and the `api` wire types of their reports), never on
//! the daemon.

pub mod etcd;
pub mod k8s_api;
pub mod k8s_versions;
pub mod objects_dir;
pub mod policy_dir;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

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

/// The daemon's reconcile refused a version a source read (too large for the maps, a write the
/// kernel refused, a translation that failed): the daemon's own error, whose sentence the
/// source logs and reports in `status`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Refused(pub Box<dyn std::error::Error + Send + Sync>);

impl Refused {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Refused {
        Refused(Box::new(e))
    }
}

/// That `dir` is a directory.
pub(crate) fn usable(dir: &Path) -> Result<(), WatchError> {
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
pub(crate) fn watch_dir(
    dir: &Path,
    what: &'static str,
    thread: &str,
    mut check: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
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
pub(crate) fn settle<T: PartialEq>(mut last: T, read: impl Fn() -> T, dir: &Path) -> Option<T> {
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

/// Now, RFC 3339, UTC.
pub(crate) fn now() -> String {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    crate::clock::rfc3339(ns)
}

/// SHA-256 of `data` in lower-case hex: what `sha256sum` prints for the policy file, so an
/// operator can tell which version is in force.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
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
}
