//! Network namespaces (deleted on drop) and veth pairs between them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use crate::harness::util::{require_root, sh, unique};

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }
    /// Runs `cmd` inside the namespace (network only, host mounts).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("nsenter").arg(format!("--net={}", self.path())).arg("--").args(cmd).output().expect("nsenter")
    }
    /// Runs `f` on a thread that has entered this namespace: sockets it opens live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread for CLONE_NEWNET.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Creates a veth pair `a` (in `na`) <-> `b` (in `nb`), both up.
pub fn veth(na: &Netns, a: &str, nb: &Netns, b: &str) {
    sh(&["ip", "link", "add", a, "netns", &na.name, "type", "veth", "peer", "name", b, "netns", &nb.name]);
    na.ip(&["link", "set", a, "up"]);
    nb.ip(&["link", "set", b, "up"]);
}
