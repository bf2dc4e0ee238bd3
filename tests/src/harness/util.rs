//! Small helpers every harness uses: unique names, commands, binaries, scratch directories,
//! polling, and the one deterministic random generator.

use std::{
    fs::{self},
    path::PathBuf,
    process::{Command, Output},
    sync::OnceLock,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A binary built by `cargo xtask test` next to this executable (target/<profile>/, or its
/// parent when this is a test in target/<profile>/deps/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let dir = if dir.ends_with("deps") { dir.parent().expect("target/<profile>") } else { dir };
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build with `cargo xtask test` (or demo, bench)", p.display());
    p
}

/// [`bin`], built first by the cargo that runs this test, in this test's profile (once per
/// process): a plain `cargo test` builds the test binaries of this package only, not the agent's
/// `ztagent`. Without cargo (CARGO unset: a test binary run by hand) it is [`bin`] as it is.
pub fn build_bin(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let Ok(cargo) = std::env::var("CARGO") else { return };
        let exe = std::env::current_exe().expect("executable path");
        // target/<profile>/deps/<test>: the profile is the directory above deps.
        let profile = exe.parent().and_then(|d| d.parent()).and_then(|d| d.file_name()).and_then(|p| p.to_str());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
        match profile {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(status.success(), "{cmd:?} failed ({status})");
    });
    bin(name)
}

/// Panics, saying why, unless this process runs as root: the kernel tests create network
/// namespaces and load BPF programs, which nobody else may do. The harness calls it where a
/// test first needs root ([`Netns::new`](crate::Netns::new), [`Loaded::new`](crate::Loaded::new)),
/// so that a test run without it fails loudly, not with some command's obscure refusal.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the kernel tests need root (they create network namespaces and load BPF programs), and \
         this runs as uid {euid}: run `sudo cargo xtask test`, or `cargo test --release -p \
         integration-tests --features privileged --test kernel` as root"
    );
}

/// Deterministic pseudo-random numbers (splitmix64): the same sequence for the same seed, on
/// every run (the benchmark's policies, for one).
pub struct Rng(pub u64);

impl Rng {
    // Not an Iterator: the sequence never ends, and `next` returns the number itself.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A port in `lo..=hi`.
    pub fn port(&mut self, lo: u16, hi: u16) -> u16 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u16
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("ztagent-test-"));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).unwrap();
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 50 ms until it is true or `within` passed; returns how long it took.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON a successful CLI call printed (panics with its stderr otherwise).
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ztagent check -o json`'s object; its exit status must be its verdict's (0 allow, 1 deny).
pub fn check_json_of(out: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let want = if v["verdict"] == "allow" { 0 } else { 1 };
    assert_eq!(out.status.code(), Some(want), "check's exit status is not its verdict's: {v}");
    v
}
