//! Harness for the kernel tests: network namespaces, veth links and bridges, agents, servers
//! and probes. Every resource has a unique name and a guard that removes it on drop, also when
//! a test fails. Traffic goes only between namespaces the test created.
use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub mod fake_api;
pub mod k8s;

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

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
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
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .args(cmd)
            .output()
            .expect("nsenter")
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

/// A host of the test topology: a namespace with one interface and its addresses.
pub struct Host {
    pub ns: Netns,
    pub iface: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// A star of hosts on one Ethernet segment: a bridge in a switch namespace, one veth per host.
/// The `ports` are the switch's interfaces facing each host.
pub struct Lan {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

impl Lan {
    /// `hosts` = (IPv4, IPv6) per host; both on a /16 (fd20::/16 for IPv6), so all are on-link.
    pub fn new(hosts: &[(&str, &str)]) -> Lan {
        let switch = Netns::new("zs");
        // A plain switch: where br_netfilter is loaded, bridged frames would otherwise be
        // validated (and malformed ones dropped) before any host sees them.
        for family in ["iptables", "ip6tables"] {
            let _ = switch.exec(&["sh", "-c", &format!("echo 0 > /proc/sys/net/bridge/bridge-nf-call-{family}")]);
        }
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let mut out = Vec::new();
        for (v4, v6) in hosts {
            let ns = Netns::new("zh");
            let iface = unique("h");
            let port = unique("p");
            veth(&ns, &iface, &switch, &port);
            switch.ip(&["link", "set", &port, "master", "br0"]);
            ns.ip(&["addr", "add", &format!("{v4}/16"), "dev", &iface]);
            ns.ip(&["addr", "add", &format!("{v6}/16"), "dev", &iface, "nodad"]);
            out.push(Host { ns, iface, v4: v4.parse().unwrap(), v6: v6.parse().unwrap() });
        }
        Lan { hosts: out, switch }
    }
}

impl Lan {
    /// The topology most tests and the demo use: payments (the server, index 0), frontend (1),
    /// batch (2), and an attacker (3) whose addresses are in no segment of their policies.
    pub fn four_hosts() -> Lan {
        Lan::new(&[
            ("10.20.2.10", "fd20:2::10"), // payments
            ("10.20.1.2", "fd20:1::2"),   // frontend
            ("10.20.3.2", "fd20:3::2"),   // batch
            ("10.20.9.2", "fd20:9::2"),   // attacker (world)
        ])
    }
}

/// A policy for [`Lan::four_hosts`]: its segments (frontend, payments, batch; the attacker is
/// in none), then the rest of the file as given (a string literal: `rules:` and more).
#[macro_export]
macro_rules! four_host_policy {
    ($rest:literal) => {
        concat!(
            "version: 1\nsegments:\n  frontend: { cidrs: [10.20.1.0/24] }\n  payments: { cidrs: [10.20.2.10/32] }\n  batch: { cidrs: [10.20.3.0/24] }\n",
            $rest
        )
    };
}

/// The Kubernetes tests' and the demo's shop on [`Lan::four_hosts`]: its pods as `kubectl get pods -n shop -o yaml` prints them: the test hosts'
/// addresses (payments 10.20.2.10, frontend 10.20.1.2, batch 10.20.3.2) with these `app`
/// labels.
pub fn shop_pods(frontend_app: &str, batch_app: &str) -> String {
    let pod = |name: &str, app: &str, v4: &str, v6: &str| {
        format!(
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    labels:\n      app: {app}\n    name: {name}\n    namespace: shop\n  spec:\n    containers:\n    - name: main\n      ports:\n      - containerPort: 443\n        name: https\n        protocol: TCP\n  status:\n    phase: Running\n    podIP: {v4}\n    podIPs:\n    - ip: {v4}\n    - ip: {v6}\n"
        )
    };
    format!(
        "apiVersion: v1\nitems:\n{}{}{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
        pod("payments-0", "payments", "10.20.2.10", "fd20:2::10"),
        pod("frontend-0", frontend_app, "10.20.1.2", "fd20:1::2"),
        pod("batch-0", batch_app, "10.20.3.2", "fd20:3::2"),
    )
}

/// Payments admits the pods labelled `app: frontend`, on its named port `https`.
pub const SHOP_POLICIES: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: payments-from-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: payments
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - port: https
"#;

/// The Kubernetes tests' shop on [`Lan::four_hosts`] as its first NetworkPolicy has it:
/// payments admits the pods labelled `app: frontend` on its port named `https` (443) only.
/// Checked with real connections: frontend in (IPv4 and IPv6) but not on 8443; batch and the
/// attacker (no pod) out.
pub fn assert_only_frontend_reaches_payments(lan: &Lan, agent: &Agent) {
    let (payments, frontend, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "frontend denied:\n{}", agent.log());
    assert!(tcp_ok(&frontend.ns, payments.v6, 443), "frontend denied over IPv6");
    assert!(!tcp_ok(&frontend.ns, payments.v4, 8443), "a port that is not the named one was allowed");
    assert!(!tcp_ok(&batch.ns, payments.v4, 443), "batch allowed");
    assert!(!tcp_ok(&attacker.ns, payments.v4, 443), "an address that is no pod was allowed");
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

/// A directory laid out as the kubelet lays out a ConfigMap volume with one key, policy.yaml.
pub struct ConfigMap {
    dir: TempDir,
    versions: u32,
}

impl ConfigMap {
    pub fn new(first: &str) -> ConfigMap {
        let mut cm = ConfigMap { dir: TempDir::new(), versions: 0 };
        cm.publish(first);
        std::os::unix::fs::symlink("..data/policy.yaml", cm.path().join("policy.yaml")).unwrap();
        cm
    }

    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// The kubelet's update: a whole new timestamped directory, a temporary symlink to it
    /// renamed over `..data` (atomic), then the old directory removed.
    pub fn publish(&mut self, text: &str) {
        let old = fs::read_link(self.path().join("..data")).ok();
        self.versions += 1;
        let ts = format!("..2026_11_28_10_{:02}_00.{}", self.versions, std::process::id());
        fs::create_dir(self.path().join(&ts)).unwrap();
        fs::write(self.path().join(&ts).join("policy.yaml"), text).unwrap();
        std::os::unix::fs::symlink(&ts, self.path().join("..data_tmp")).unwrap();
        fs::rename(self.path().join("..data_tmp"), self.path().join("..data")).unwrap();
        if let Some(old) = old {
            fs::remove_dir_all(self.path().join(old)).unwrap();
        }
    }
}

/// `GET /metrics` on 127.0.0.1:`port` from inside `ns` (where an agent serves its metrics):
/// the raw HTTP response, head and body.
pub fn get_metrics(ns: &Netns, port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    ns.run(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw)
    })
}

/// The tests' smallest policy: frontend (10.20.1.0/24) may reach payments (10.20.2.10) on
/// 443/tcp, and nothing else is allowed. Tests extend it with rules appended at the end.
pub const WEB_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
"#;

/// Frontend (10.20.1.0/24) may reach `payments` (a CIDR) on these TCP ports: the policy whose
/// versions the policy-source tests (directory, fleet) and the fleet bench push.
pub fn ports_policy(payments: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("\"{p}/tcp\"")).collect();
    format!(
        "version: 1\nsegments:\n  frontend: {{ cidrs: [10.20.1.0/24] }}\n  payments: {{ cidrs: [{payments}] }}\nrules:\n  - {{ name: web, from: [frontend], to: [payments], ports: [{}], action: allow }}\n",
        ports.join(", ")
    )
}

/// [`ports_policy`] with 443 and a misspelt protocol at line 6, column 71.
pub fn broken_ports_policy(payments: &str) -> String {
    ports_policy(payments, &[443, 8443]).replace("8443/tcp", "8443/tpc")
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
    fn run_command(ns: &Netns, ifaces: &[&str], policy: Option<&Path>, pins: &Path, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = Self::command(ns);
        cmd.arg("--socket").arg(socket).arg("run");
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.arg("--pin-path").arg(pins).arg("--state-dir").arg(Self::state_dir(pins)).arg("--log").arg("debug").args(args);
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
        // SAFETY: signalling the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!matches!(self.child.try_wait(), Ok(None)), "ztagent did not stop on SIGTERM within 10 s:\n{}", self.log());
        self.handed_over = true;
        Agent::start_on(ns, ifaces, None, &self.pins, &[])
    }

    /// As [`Agent::crash_and_restart`], the new daemon with more `ztagent run` flags.
    pub fn crash_and_restart_with(mut self, ns: &Netns, ifaces: &[&str], args: &[&str]) -> Agent {
        self.kill();
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

/// Servers in a namespace: TCP (greets "hi" then echoes lines) and UDP (echoes, counts per
/// port). Stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub udp_received: Arc<Vec<(u16, AtomicU64)>>,
}

impl Servers {
    pub fn start(ns: &Netns, tcp: &[u16], udp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Vec<(u16, AtomicU64)>> = Arc::new(udp.iter().map(|p| (*p, AtomicU64::new(0))).collect());
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for &port in tcp {
            let (stop, path, tx) = (stop.clone(), ns.path(), tx.clone());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let l = TcpListener::bind(("::", port)).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let stop = stop.clone();
                            std::thread::spawn(move || tcp_echo(s, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        for (i, &port) in udp.iter().enumerate() {
            let (stop, path, tx, counts) = (stop.clone(), ns.path(), tx.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                enter(&path);
                let s = UdpSocket::bind(("::", port)).expect("bind udp");
                // A large receive buffer: when this thread waits for a CPU during a burst, the
                // datagrams the datapath admitted must not be lost by the socket instead.
                let size: libc::c_int = 16 << 20;
                // SAFETY: setsockopt on our socket with a c_int option value.
                let rc = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        counts[i].1.fetch_add(1, Ordering::Relaxed);
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        for _ in 0..tcp.len() + udp.len() {
            rx.recv_timeout(Duration::from_secs(5)).expect("server did not start");
        }
        Servers { stop, threads, udp_received: counts }
    }

    pub fn udp_count(&self, port: u16) -> u64 {
        self.udp_received.iter().find(|(p, _)| *p == port).map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }
}

fn tcp_echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    if s.write_all(b"hi\n").is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How long a TCP probe waits for the handshake. A denied probe (its SYN or SYN-ACK dropped)
/// costs this much, so it is short; the handshake is answered by the kernel, not by the
/// server's thread, so a busy machine hardly delays an allowed one.
const TCP_CONNECT: Duration = Duration::from_millis(700);
/// How long a connected TCP probe waits for the greeting, which the server's thread writes:
/// generous, since only a probe that passed the datapath waits for it.
const TCP_GREETING: Duration = Duration::from_secs(5);
/// How long each try of a UDP probe waits for its echo: the echo comes from the server's
/// thread, which a busy machine may delay, so the last try is patient. A denied probe costs
/// the sum.
const UDP_TRIES: [Duration; 3] = [Duration::from_millis(300), Duration::from_millis(300), Duration::from_millis(1000)];

/// Connects from `ns` to `dst:port` and reads the server's greeting.
pub fn tcp_ok(ns: &Netns, dst: IpAddr, port: u16) -> bool {
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(dst, port), TCP_CONNECT) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(TCP_GREETING));
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).is_ok() && &buf == b"hi\n"
    })
}

/// A TCP connection from `ns` to `dst:port`, its greeting read: an established flow to test
/// later with [`echoes`].
pub fn hold_tcp(ns: &Netns, dst: IpAddr, port: u16) -> TcpStream {
    let s = ns.run(move || {
        let s = TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {dst}:{port}: {e}"));
        s.set_read_timeout(Some(ECHO)).unwrap();
        s
    });
    let mut greeting = [0u8; 3];
    (&s).read_exact(&mut greeting).unwrap_or_else(|e| panic!("no greeting from {dst}:{port}: {e}"));
    s
}

/// How long to wait for an echo that must come (the server's thread may wait for a CPU on a
/// busy machine), and for one that must not (nothing can make it come late).
pub const ECHO: Duration = Duration::from_secs(5);
pub const NO_ECHO: Duration = Duration::from_millis(500);

/// One line sent on `s` and echoed back within `wait` ([`ECHO`] or [`NO_ECHO`]).
pub fn echoes(s: &mut TcpStream, wait: Duration) -> bool {
    let mut line = [0u8; 5];
    s.set_read_timeout(Some(wait)).is_ok() && s.write_all(b"ping\n").is_ok() && s.read_exact(&mut line).is_ok()
}

/// Sends a datagram from `ns` to `dst:port` and waits for its echo (up to 3 tries).
pub fn udp_ok(ns: &Netns, dst: IpAddr, port: u16) -> bool {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    udp_ok_from(ns, bind.ip(), dst, port)
}

/// As [`udp_ok`], from the address `src` of `ns` (the unspecified address: any).
pub fn udp_ok_from(ns: &Netns, src: IpAddr, dst: IpAddr, port: u16) -> bool {
    ns.run(move || {
        let s = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
        let mut buf = [0u8; 64];
        UDP_TRIES.iter().any(|wait| {
            s.set_read_timeout(Some(*wait)).unwrap();
            let _ = s.send_to(b"ping", SocketAddr::new(dst, port));
            matches!(s.recv_from(&mut buf), Ok((4, _)))
        })
    })
}

/// One ICMP echo (ping) from `ns` to `dst`, waiting up to a second.
pub fn ping_ok(ns: &Netns, dst: IpAddr) -> bool {
    let out = ns.exec(&["ping", "-c", "1", "-W", "1", &dst.to_string()]);
    out.status.success()
}

/// One kind of real traffic that tests and the demo send.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl Probe {
    pub fn proto_port(self) -> (&'static str, u16) {
        match self {
            Probe::Tcp(p) => ("tcp", p),
            Probe::Udp(p) => ("udp", p),
            Probe::Icmp => ("icmp", 0),
        }
    }
    pub fn label(self) -> String {
        match self {
            Probe::Icmp => "icmp echo".into(),
            p => {
                let (proto, port) = p.proto_port();
                format!("{proto}/{port}")
            }
        }
    }
    /// Real traffic from `ns` to `dst`: true when it got through (and back).
    pub fn observe(self, ns: &Netns, dst: IpAddr) -> bool {
        match self {
            Probe::Tcp(p) => tcp_ok(ns, dst, p),
            Probe::Udp(p) => udp_ok(ns, dst, p),
            Probe::Icmp => ping_ok(ns, dst),
        }
    }
}

/// What `ztagent check -o json` says about one flow.
pub struct Why {
    pub allow: bool,
    pub rule: Option<String>,
    pub src_segment: String,
    pub dst_segment: String,
    pub rate_limit: Option<String>,
    pub revision: Option<u64>,
    /// The pods (`ns/pod`) of the addresses, under Kubernetes inputs.
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
}

pub fn check_args(src: IpAddr, dst: IpAddr, probe: Probe) -> Vec<String> {
    let (proto, port) = probe.proto_port();
    [
        "check",
        "-o",
        "json",
        "--proto",
        proto,
        "--src",
        &src.to_string(),
        "--dst",
        &dst.to_string(),
        "--port",
        &port.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Judged offline against a policy file.
pub fn check_file(policy: &Path, src: IpAddr, dst: IpAddr, probe: Probe) -> anyhow::Result<Why> {
    let out = Command::new(bin("ztagent")).args(check_args(src, dst, probe)).arg("--policy").arg(policy).output()?;
    parse_check(out)
}

pub fn parse_check(out: std::process::Output) -> anyhow::Result<Why> {
    if !out.status.success() {
        anyhow::bail!("ztagent check failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("ztagent check -o json: {e}"))?;
    let allow = match v["verdict"].as_str() {
        Some("allow") => true,
        Some("deny") => false,
        other => anyhow::bail!("ztagent check gave the verdict {other:?}"),
    };
    Ok(Why {
        allow,
        rule: v["rule"].as_str().map(String::from),
        src_segment: v["src_segment"].as_str().unwrap_or("?").into(),
        dst_segment: v["dst_segment"].as_str().unwrap_or("?").into(),
        rate_limit: v["rate_limit"].as_str().map(String::from),
        revision: v["revision"].as_u64(),
        src_pod: v["src_pod"].as_str().map(String::from),
        dst_pod: v["dst_pod"].as_str().map(String::from),
    })
}

/// The datapath loaded into the kernel in this process (not attached anywhere), with its pins
/// under a unique bpffs directory removed on drop: for `Program::test_run` with crafted frames.
pub struct Loaded {
    pub datapath: ztagent::kernel::datapath::Datapath,
    pub writer: ztagent::kernel::mapwriter::MapWriter,
}

impl Loaded {
    pub fn new(limits: &ztagent::kernel::datapath::Limits) -> Loaded {
        let pins = ztagent::kernel::datapath::PinLayout::new(PathBuf::from("/sys/fs/bpf").join(unique("zt-load-")));
        let mut datapath = match ztagent::kernel::datapath::Datapath::load(pins.clone(), limits) {
            Ok(d) => d,
            Err(e) => {
                // Maps pinned before the failure must not outlive the test.
                let _ = ztagent::kernel::datapath::uninstall(&pins);
                panic!("load the datapath: {e}");
            }
        };
        let writer = ztagent::kernel::mapwriter::MapWriter::new(&mut datapath.ebpf, limits).expect("policy maps");
        Loaded { datapath, writer }
    }

    /// Installs a policy given as YAML text.
    pub fn apply(&mut self, yaml: &str) {
        let p = ztagent::policy::parse(yaml, "test").unwrap_or_else(|d| panic!("bad test policy:\n{d}"));
        self.writer.apply(&ztagent::policy::compile(&p)).expect("apply policy");
    }

    /// Runs the program `name` (XDP or TC) once on `frame`; returns its return value.
    pub fn run(&mut self, name: &str, frame: &[u8]) -> u32 {
        self.try_run(name, frame).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e}"))
    }

    /// As [`Loaded::run`], or the kernel's refusal to run the program on this frame.
    pub fn try_run(&mut self, name: &str, frame: &[u8]) -> Result<u32, String> {
        use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() };
        let prog = self.datapath.ebpf.program_mut(name).expect("program");
        let r = match <&mut Xdp>::try_from(&mut *prog) {
            Ok(x) => x.test_run(opts),
            Err(_) => <&mut SchedClassifier>::try_from(prog).expect("XDP or TC program").test_run(opts),
        };
        r.map(|r| r.return_value).map_err(|e| ztagent::kernel::datapath::error_chain(&e))
    }

    pub fn counter(&self, name: &str) -> u64 {
        let all = self.datapath.counters().expect("counters");
        all.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no counter {name}"))
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = ztagent::kernel::datapath::uninstall(&self.datapath.pins);
    }
}

/// Crafted frames for test runs and benchmarks.
pub mod frame {
    pub const ETH_IP: u16 = 0x0800;
    pub const ETH_IPV6: u16 = 0x86DD;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_ACK: u8 = 0x10;

    /// Ethernet header with optional VLAN tags (outer first), then `ethertype`.
    pub fn eth(tags: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (i, _) in tags.iter().enumerate() {
            let tpid: u16 = if i == 0 && tags.len() > 1 { 0x88A8 } else { 0x8100 };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    /// IPv4 header (with `options`, a multiple of 4 bytes) and payload `l4`.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], frag: u16, l4: &[u8]) -> Vec<u8> {
        let ihl = 20 + options.len();
        let mut h = vec![0u8; 20];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&7u16.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h.extend_from_slice(options);
        h.extend_from_slice(l4);
        h
    }

    /// IPv6 header followed by `ext` (already chained) and `l4`; `next` is the first header.
    pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        h.extend_from_slice(ext);
        h.extend_from_slice(l4);
        h
    }

    pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// The Internet checksum (RFC 1071) of `parts` in sequence.
    pub fn checksum(parts: &[&[u8]]) -> u16 {
        let bytes = parts.concat();
        let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn udp_header(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::with_capacity(8 + payload.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// A whole Ethernet frame `dst_mac` <- `src_mac` carrying an IPv4 UDP datagram whose
    /// header and UDP checksums are right: a receiving stack delivers it.
    pub fn udp4_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = udp_header(40000, dport, payload);
        let len = (u.len() as u16).to_be_bytes();
        let sum = checksum(&[&src, &dst, &[0, 17], &len, &u]);
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        let mut ip = ipv4(src, dst, 17, &[], 0, &u);
        let sum = checksum(&[&ip[..20]]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        cat(&[&dst_mac, &src_mac, &ETH_IP.to_be_bytes(), &ip])
    }

    /// As [`udp4_frame`], IPv6 (the UDP checksum is mandatory there).
    pub fn udp6_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 16], dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = udp_header(40000, dport, payload);
        let len = (u.len() as u32).to_be_bytes();
        let sum = checksum(&[&src, &dst, &len, &[0, 0, 0, 17], &u]);
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        let ip = ipv6(src, dst, 17, &[], &u);
        cat(&[&dst_mac, &src_mac, &ETH_IPV6.to_be_bytes(), &ip])
    }
}

// --- fleet (etcd)

/// The management network of a fleet test: a namespace with a bridge (10.99.0.1/24) where the
/// etcd members listen, and one veth per host namespace (10.99.0.10+i/24). The agents enforce
/// only their data interface, never this one, as a management network is deployed: their
/// policy cannot cut them off from etcd.
pub struct Mgmt {
    pub ns: Netns,
    /// The hosts' management interfaces, in the order of [`Mgmt::attach`].
    pub links: Vec<(String, String)>,
}

/// Where etcd members of a test listen (the bridge's address in the management namespace).
pub const ETCD_ADDR: &str = "10.99.0.1";

impl Mgmt {
    pub fn new() -> Mgmt {
        let ns = Netns::new("ze");
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"]);
        Mgmt { ns, links: Vec::new() }
    }

    /// Connects `host` to the management network; returns its management interface.
    pub fn attach(&mut self, host: &Netns) -> String {
        let (iface, port) = (unique("m"), unique("q"));
        veth(host, &iface, &self.ns, &port);
        self.ns.ip(&["link", "set", &port, "master", "br0"]);
        host.ip(&["addr", "add", &format!("10.99.0.{}/24", 10 + self.links.len()), "dev", &iface]);
        self.links.push((host.name.clone(), iface.clone()));
        iface
    }

    /// `ztagent ARGS...` in the management namespace (where an admin's `fleet` commands run).
    pub fn ztagent(&self, args: &[&str]) -> Output {
        let mut cmd = vec![bin("ztagent").to_str().unwrap().to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        self.ns.exec(&cmd)
    }
}

/// The fleet topology: a client (10.20.1.2, host 0) and three hosts in 10.20.2.0/24 (10.20.2.10
/// .. .12), each also on the management network.
pub fn fleet_lan() -> (Lan, Mgmt) {
    let lan = Lan::new(&[
        ("10.20.1.2", "fd20:1::2"),
        ("10.20.2.10", "fd20:2::10"),
        ("10.20.2.11", "fd20:2::11"),
        ("10.20.2.12", "fd20:2::12"),
    ]);
    let mut mgmt = Mgmt::new();
    for h in &lan.hosts[1..] {
        mgmt.attach(&h.ns);
    }
    (lan, mgmt)
}

impl Default for Mgmt {
    fn default() -> Self {
        Self::new()
    }
}

/// etcd members started by a test in the management namespace, each with its data directory in
/// a [`TempDir`]; killed (by pid) on drop. Member `i` serves clients on ETCD_ADDR:2379+10000*i.
pub struct Etcd {
    members: Vec<Option<Child>>,
    dir: TempDir,
    ns_path: String,
    size: usize,
    /// TLS: the directory of [`EtcdCerts`]; clients must then present a certificate too.
    tls: Option<PathBuf>,
}

/// A CA, a member certificate for ETCD_ADDR and a client certificate (openssl), in a TempDir:
/// `ca.pem`, `server.pem`/`server-key.pem`, `client.pem`/`client-key.pem`.
pub struct EtcdCerts(pub TempDir);

impl EtcdCerts {
    pub fn new() -> EtcdCerts {
        let d = TempDir::new();
        let p = |n: &str| d.0.join(n).to_str().unwrap().to_string();
        sh(&["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &p("ca-key.pem"), "-out", &p("ca.pem"), "-days", "1", "-subj", "/CN=ztagent-test-ca"]);
        for (name, ext) in [
            ("server", format!("subjectAltName=IP:{ETCD_ADDR}\nextendedKeyUsage=serverAuth\n")),
            ("client", "extendedKeyUsage=clientAuth\n".to_string()),
        ] {
            let ext_file = d.file(&format!("{name}.ext"), &ext);
            let key = p(&format!("{name}-key.pem"));
            let csr = p(&format!("{name}.csr"));
            sh(&["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]);
            sh(&["openssl", "x509", "-req", "-in", &csr, "-CA", &p("ca.pem"), "-CAkey", &p("ca-key.pem"), "-CAcreateserial",
                 "-out", &p(&format!("{name}.pem")), "-days", "1", "-extfile", ext_file.to_str().unwrap()]);
        }
        EtcdCerts(d)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.0.join(name).to_str().unwrap().to_string()
    }
}

impl Default for EtcdCerts {
    fn default() -> Self {
        Self::new()
    }
}

impl Etcd {
    /// A cluster of `size` members; panics if etcd is not installed (`cargo xtask setup`).
    pub fn start(mgmt: &Mgmt, size: usize) -> Etcd {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()),
            "etcd is not installed: run `cargo xtask setup` (Debian package etcd-server)"
        );
        Self::start_with(mgmt, size, None)
    }

    /// One member speaking only TLS with client certificates (`certs`).
    pub fn start_tls(mgmt: &Mgmt, certs: &EtcdCerts) -> Etcd {
        Self::start_with(mgmt, 1, Some(certs.0.0.clone()))
    }

    fn start_with(mgmt: &Mgmt, size: usize, tls: Option<PathBuf>) -> Etcd {
        let members = (0..size).map(|_| None).collect();
        let mut e = Etcd { members, dir: TempDir::new(), ns_path: mgmt.ns.path(), size, tls };
        for i in 0..size {
            e.start_member(i);
        }
        e
    }

    pub fn client_port(i: usize) -> u16 {
        2379 + 10_000 * i as u16
    }

    /// etcd://members/PREFIX, all members.
    pub fn url(&self, prefix: &str) -> String {
        let members: Vec<String> = (0..self.size).map(|i| format!("{ETCD_ADDR}:{}", Self::client_port(i))).collect();
        format!("etcd://{}/{prefix}", members.join(","))
    }

    /// Starts member `i` again (on its data directory, if it ran before).
    pub fn start_member(&mut self, i: usize) {
        let peer = |i: usize| format!("http://{ETCD_ADDR}:{}", Self::client_port(i) + 1);
        let cluster: Vec<String> = (0..self.size).map(|j| format!("m{j}={}", peer(j))).collect();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{ETCD_ADDR}:{}", Self::client_port(i));
        let mut tls = Vec::new();
        if let Some(d) = &self.tls {
            for (flag, file) in [("--cert-file", "server.pem"), ("--key-file", "server-key.pem"), ("--trusted-ca-file", "ca.pem")] {
                tls.push(flag.to_string());
                tls.push(d.join(file).to_str().unwrap().to_string());
            }
            tls.push("--client-cert-auth".into());
        }
        let data = self.dir.0.join(format!("m{i}"));
        let log = File::create(self.dir.0.join(format!("m{i}.log"))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["--", "etcd", "--name", &format!("m{i}"), "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-token", &self.ns_path])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&tls)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i] = Some(child);
    }

    /// Kills member `i` (SIGKILL, by its pid).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for i in 0..self.size {
            self.kill_member(i);
        }
    }

    /// Starts every member that is not running.
    pub fn restart(&mut self) {
        for i in 0..self.size {
            if self.members[i].is_none() {
                self.start_member(i);
            }
        }
    }

    /// The members' logs, for failure messages.
    pub fn log(&self) -> String {
        (0..self.size).map(|i| fs::read_to_string(self.dir.0.join(format!("m{i}.log"))).unwrap_or_default()).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

// --- node mode (pods behind a node, as a CNI wires them)

/// A Kubernetes-style node: a namespace that routes between pods, each pod a namespace joined
/// to it by a veth pair (pod side `eth0`, node side `<prefix><suffix>`, matched by
/// [`PodNode::pattern`]), routed as CNIs do (Calico's layout): the node routes each pod's
/// prefix out of its veth, answers ARP for the other pods (proxy_arp) and forwards; a pod
/// reaches other pods' IPv4 addresses on-link (10.77.0.0/16) and IPv6 ones through the node's
/// link-local fe80::1.
pub struct PodNode {
    pub ns: Netns,
    /// The node-side veth names' common prefix, unique to this node.
    pub prefix: String,
}

/// A pod of a [`PodNode`]: deleted (namespace and veth) on drop.
pub struct Pod {
    pub ns: Netns,
    /// The node-side interface.
    pub veth: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl PodNode {
    pub fn new() -> PodNode {
        let ns = Netns::new("zn");
        for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")] {
            let out = ns.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
            assert!(out.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // An address of the node's own, the source of its ARP requests towards the pods.
        ns.ip(&["addr", "add", "10.77.255.1/32", "dev", "lo"]);
        PodNode { ns, prefix: unique("v") }
    }

    /// The `--iface-pattern` that matches this node's pod interfaces and no one else's.
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// A pod with addresses `v4` and `v6`, its veth named `<prefix><suffix>`; the node routes
    /// `route4` and `route6` (prefixes holding them, e.g. `10.77.0.1/32`, `10.77.0.16/28`,
    /// `fd77::1/128`) out of it.
    pub fn pod(&self, suffix: &str, (v4, route4): (&str, &str), (v6, route6): (&str, &str)) -> Pod {
        let ns = Netns::new("zp");
        let veth = format!("{}{suffix}", self.prefix);
        sh(&["ip", "link", "add", &veth, "netns", &self.ns.name, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        let pod = Pod { ns, veth: veth.clone(), v4: v4.parse().unwrap(), v6: v6.parse().unwrap() };
        let n = &self.ns;
        // Proxy ARP answers at once (by default after up to 0.8 s, as Calico also changes).
        for key in [format!("net.ipv4.conf.{veth}.proxy_arp=1"), format!("net.ipv4.neigh.{veth}.proxy_delay=0")] {
            let out = n.exec(&["sysctl", "-qw", &key]);
            assert!(out.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        n.ip(&["addr", "add", "fe80::1/64", "dev", &veth, "nodad"]);
        n.ip(&["link", "set", &veth, "up"]);
        n.ip(&["route", "add", route4, "dev", &veth]);
        n.ip(&["-6", "route", "add", route6, "dev", &veth]);
        let p = &pod.ns;
        p.ip(&["link", "set", "eth0", "up"]);
        p.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
        p.ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"]);
        p.ip(&["route", "add", "10.77.0.0/16", "dev", "eth0"]);
        p.ip(&["-6", "route", "add", "fd77::/64", "via", "fe80::1", "dev", "eth0"]);
        pod
    }

    /// The interface index of `iface` in the node.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let v: serde_json::Value = serde_json::from_str(&self.ns.ip(&["-j", "link", "show", iface])).unwrap();
        v[0]["ifindex"].as_u64().unwrap_or_else(|| panic!("no ifindex for {iface}: {v}")) as u32
    }

    /// The MAC address of `iface` in the node.
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        let v: serde_json::Value = serde_json::from_str(&self.ns.ip(&["-j", "link", "show", iface])).unwrap();
        let text = v[0]["address"].as_str().unwrap_or_else(|| panic!("no address for {iface}: {v}")).to_string();
        let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }
}

impl Default for PodNode {
    fn default() -> Self {
        Self::new()
    }
}

/// Sends one raw Ethernet frame out of `iface` in `ns` (AF_PACKET): a frame the pod's own
/// stack would not send (a forged source address).
pub fn send_frame(ns: &Netns, iface: &str, frame: Vec<u8>) {
    let iface = std::ffi::CString::new(iface).unwrap();
    ns.run(move || {
        // SAFETY: plain socket calls on a socket this closure owns; the address and the
        // buffer outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(iface.as_ptr()) as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(n, frame.len() as isize, "send a raw frame: {err}");
        }
    });
}

/// The pinned links under `pins` (file names: `xdp@IFACE`, `tc-egress@IFACE`).
pub fn link_pins(pins: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(pins.join("links"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The interface indexes that hold entries in the pinned `ZT_SOURCES` map under `pins`
/// (bpftool's dump; key bytes: prefix length (u32, host order), ifindex (big endian), address).
pub fn source_ifindexes(pins: &Path) -> Vec<u32> {
    let map = pins.join("maps").join("ZT_SOURCES");
    let out = sh(&["bpftool", "-j", "map", "dump", "pinned", map.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool: {e}: {out}"));
    let mut ids: Vec<u32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key: Vec<u8> = e["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
                .collect();
            u32::from_be_bytes([key[4], key[5], key[6], key[7]])
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
