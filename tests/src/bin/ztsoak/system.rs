//! Clocks, namespaces and processes.

use super::{AtomicBool, Child, Duration, Instant, JoinHandle, Ordering};
use std::os::fd::AsRawFd as _;

/// CLOCK_MONOTONIC in ns: the clock of the datapath's timestamps (`bpf_ktime_get_*ns`).
pub(crate) fn mono_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// A thread that has entered the network namespace at `path`.
pub(crate) fn spawn_in<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd, affecting only this thread for CLONE_NEWNET.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
}

/// Child processes, killed (by pid) and reaped on drop.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls `f(i)` for i = 0, 1, ... at `rate` per second until `stop`; `f` may block.
pub(crate) fn paced(stop: &AtomicBool, rate: f64, mut f: impl FnMut(u64)) {
    let t0 = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (t0.elapsed().as_secs_f64() * rate) as u64 + 1;
        while i < due && !stop.load(Ordering::Relaxed) {
            f(i);
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn rss_kb(pid: u32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}
