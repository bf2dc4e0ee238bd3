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
}
