//! A `ztagent run` under test: spawned in a namespace with its own socket, pins and state,
//! stopped and cleaned up on drop.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::netns::Netns;
use crate::harness::util::{TempDir, bin, unique};

/// A `ztagent run` in a namespace, with its own socket and bpffs pins. On drop it is stopped
/// (by its pid) and everything it pinned is removed.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub pins: PathBuf,
    /// The state directory (last-known-good policy); an agent restarted on the same pins
    /// gets the same one.
    pub state: PathBuf,
    log: PathBuf,
    _dir: TempDir,
    /// Set when a successor took the pins over: then dropping this guard leaves them.
    handed_over: bool,
}

impl Agent {
    pub fn start(ns: &Netns, ifaces: &[&str], policy: Option<&Path>) -> Agent {
        Self::start_with(ns, ifaces, policy, &[])
    }

    /// As [`Agent::start`], with more `ztagent run` flags.
    pub fn start_with(ns: &Netns, ifaces: &[&str], policy: Option<&Path>, args: &[&str]) -> Agent {
        let pins = PathBuf::from("/sys/fs/bpf").join(unique("zt-test-"));
        Self::start_on(ns, ifaces, policy, &pins, args)
    }

    /// As [`Agent::start`], on a given pin directory (e.g. one a killed agent left).
    pub fn start_with_pins(ns: &Netns, ifaces: &[&str], policy: Option<&Path>, pins: &Path) -> Agent {
        Self::start_on(ns, ifaces, policy, pins, &[])
    }

    /// As [`Agent::start_with_pins`], with more `ztagent run` flags.
    pub fn start_with_pins_args(
        ns: &Netns,
        ifaces: &[&str],
        policy: Option<&Path>,
        pins: &Path,
        args: &[&str],
    ) -> Agent {
        Self::start_on(ns, ifaces, policy, pins, args)
    }

    fn start_on(ns: &Netns, ifaces: &[&str], policy: Option<&Path>, pins: &Path, args: &[&str]) -> Agent {
        let dir = TempDir::new();
        let socket = dir.0.join("ztagent.sock");
        let cmd = Self::run_command(ns, ifaces, policy, pins, &socket, args);
        Self::spawn(cmd, dir, &socket, pins, &Self::state_dir(pins))
    }

    /// `ztagent ARGS...` as given (a deployment's own command line), in `ns`; `socket`, `pins`
    /// and `state` are the paths those arguments use, for the guard and its clean-up.
    pub fn start_args(ns: &Netns, args: &[String], socket: &Path, pins: &Path, state: &Path) -> Agent {
        let mut cmd = Self::command(ns);
        cmd.args(args);
        Self::spawn(cmd, TempDir::new(), socket, pins, state)
    }

    /// Starts `cmd`, its output logged in `dir`, and waits until it serves `socket`.
    fn spawn(mut cmd: Command, dir: TempDir, socket: &Path, pins: &Path, state: &Path) -> Agent {
        let log = dir.0.join("agent.log");
        let out = File::create(&log).unwrap();
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let child = cmd.spawn().expect("spawn ztagent");
        let (socket, pins, state) = (socket.to_path_buf(), pins.to_path_buf(), state.to_path_buf());
        let mut agent = Agent { child, socket, pins, state, log, _dir: dir, handed_over: false };
        agent.wait_ready();
        agent
    }

    /// The state directory of the agents on `pins`.
    fn state_dir(pins: &Path) -> PathBuf {
        let name = pins.file_name().map_or_else(|| "agent".into(), |n| n.to_string_lossy().into_owned());
        std::env::temp_dir().join(format!("ztagent-state-{name}"))
    }

    /// `ztagent` in `ns`, without arguments yet.
    fn command(ns: &Netns) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path())).arg("--").arg(bin("ztagent"));
        cmd
    }

    /// `ztagent run` in `ns` on these interfaces, pins and socket, its state next to the pins.
    fn run_command(
        ns: &Netns,
        ifaces: &[&str],
        policy: Option<&Path>,
        pins: &Path,
        socket: &Path,
        args: &[&str],
    ) -> Command {
        let mut cmd = Self::command(ns);
        cmd.arg("--socket").arg(socket).arg("run");
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.arg("--pin-path")
            .arg(pins)
            .arg("--state-dir")
            .arg(Self::state_dir(pins))
            .arg("--log")
            .arg("debug")
            .args(args);
        cmd
    }

    /// A `ztagent run` on `pins` that must not start: returns its exit status and output once
    /// it exits. One that starts anyway (opens its socket) is stopped and fails the test.
    pub fn fail_to_start(
        ns: &Netns,
        ifaces: &[&str],
        policy: Option<&Path>,
        pins: &Path,
        args: &[&str],
    ) -> (std::process::ExitStatus, String) {
        let dir = TempDir::new();
        let (socket, log) = (dir.0.join("ztagent.sock"), dir.0.join("agent.log"));
        let mut cmd = Self::run_command(ns, ifaces, policy, pins, &socket, args);
        // A file, not a pipe: the debug log can outgrow a pipe's buffer while nobody reads it.
        let out = File::create(&log).unwrap();
        let mut child = cmd.stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("spawn ztagent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait for ztagent") {
                return (status, fs::read_to_string(&log).unwrap_or_default());
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "ztagent started (or hung) although it should have failed to start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ztagent exited ({status}):\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ztagent did not open its socket within 20 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ztagent --socket S ARGS...` (the CLI, from the host).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("ztagent")).arg("--socket").arg(&self.socket).args(args).output().expect("run ztagent")
    }

    /// Pushes a policy file; panics if the push fails.
    pub fn push(&self, policy: &Path) -> String {
        let out = self.cli(&["policy", "push", policy.to_str().unwrap()]);
        assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ztagent events -o json ARGS...`: the recent events, one object each.
    pub fn events(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.cli(&[&["events", "-o", "json"], args].concat());
        assert!(out.status.success(), "events failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
    }

    /// Packet counters from `ztagent status -o json`.
    pub fn counter(&self, name: &str) -> u64 {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the daemon: a reader that cannot keep up.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0, "signal the agent");
    }

    /// Stops the daemon with SIGTERM and waits for it (enforcement stays pinned); the guard
    /// still removes the pins when dropped.
    pub fn stop(&mut self) {
        // SAFETY: signalling the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !self.exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(self.exited(), "ztagent did not stop on SIGTERM within 10 s:\n{}", self.log());
    }

    /// Whether the daemon exited (reaped here if so).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Marks the pins as taken over by another agent: dropping this guard leaves them.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }

    /// Kills the daemon with SIGKILL (enforcement must stay).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the daemon with SIGKILL and starts another on the same pins and state, without
    /// a policy (it finds the one in force): a crash and a restart.
    pub fn crash_and_restart(self, ns: &Netns, ifaces: &[&str]) -> Agent {
        self.crash_and_restart_with(ns, ifaces, &[])
    }

    /// Stops the daemon with SIGTERM (it saves what it keeps, and leaves enforcement in place)
    /// and starts another on the same pins and state, without a policy.
    pub fn stop_and_restart(mut self, ns: &Netns, ifaces: &[&str]) -> Agent {
        self.stop();
        self.restart_on_same_pins(ns, ifaces, &[])
    }

    /// As [`Agent::crash_and_restart`], the new daemon with more `ztagent run` flags.
    pub fn crash_and_restart_with(mut self, ns: &Netns, ifaces: &[&str], args: &[&str]) -> Agent {
        self.kill();
        self.restart_on_same_pins(ns, ifaces, args)
    }

    /// Another daemon on this (stopped) one's pins and state, without a policy: this guard
    /// hands the pins over to it.
    fn restart_on_same_pins(mut self, ns: &Netns, ifaces: &[&str], args: &[&str]) -> Agent {
        self.handed_over = true;
        Agent::start_on(ns, ifaces, None, &self.pins, args)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling the pid of a child we spawned and have not reaped (so the pid
            // cannot have been reused).
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.handed_over {
            return;
        }
        uninstall(&self.pins);
        let _ = fs::remove_dir_all(&self.state);
    }
}

/// Removes what agents pinned under `pins` (`ztagent uninstall`) and their state directory.
pub fn uninstall(pins: &Path) {
    let _ = Command::new(bin("ztagent")).args(["uninstall", "--pin-path"]).arg(pins).stdout(Stdio::null()).status();
    let _ = fs::remove_dir_all(pins);
    let _ = fs::remove_dir_all(Agent::state_dir(pins));
}
