//! Rate limits under real traffic, through the real programs attached to a real interface:
//! the admitted rate and burst of a `packets` bucket under a 5x overload from two CPUs, an
//! unlimited identity untouched meanwhile, the `connections` bucket against new TCP
//! connections, and `scope: address` giving each address its own budget.
//!
//! Senders are Debian's python3 in the client's namespace, pinned to CPUs with taskset, so that
//! the XDP program takes from one bucket on two CPUs at once. They start at a common
//! CLOCK_MONOTONIC instant and report what they sent and when (first and last send), so the
//! expected admissions are computed from the measured window, not a nominal one:
//!
//!   admitted = burst + rate * window   (GCRA: a full bucket, then one token per 1/rate)
//!
//! give or take one token of discretization. Datagrams are counted by receivers with a large
//! socket buffer, and payments' UDP RcvbufErrors must not move: what is counted is what the
//! limit admitted (checked against the limit's own kernel statistics). The tests run one at a time (they measure time on
//! a 2-core machine) and every sender process is killed and reaped by a guard, also when an
//! assertion fails.
//!
//! The tests, by bucket: [`packets`], [`connections`], [`address`] (scope: address); the
//! senders, receivers and judgments they share are here.
mod address;
mod connections;
mod packets;

use std::{
    io::Read,
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir, tcp_ok, udp_ok};
use serde_json::{Value, json};

/// The tests measure rates: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const PYTHON: &str = "/usr/bin/python3";

/// The frontend host's second address (same segment), added by the tests.
const FRONT2: &str = "10.20.1.3";

fn lan() -> Lan {
    // payments, frontend, batch.
    Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.3.2", "fd20:3::2")])
}

/// CLOCK_MONOTONIC in seconds: python's time.monotonic() and bpf_ktime_get_ns()'s clock.
fn mono() -> f64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Sends UDP datagrams in phases, one after the other. A phase: from `bind` (`socks` sockets,
/// round robin, so several source ports) to `dst:port`, `count` datagrams at `rate` per second
/// (paced: each moment it sends what is due since the phase began; 0 = back to back). Starts
/// at CLOCK_MONOTONIC `start_at`. Prints per phase: sent, send errors, first and last send time.
const UDP_SENDER: &str = r#"
import json, socket, sys, time
cfg = json.loads(sys.argv[1])
payload = b"ztagent-ratelimit"
phases = []
for p in cfg["phases"]:
    socks = []
    for _ in range(p["socks"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # echoes: not read
        s.bind((p["bind"], 0))
        socks.append(s)
    phases.append((p, socks))
while time.monotonic() < cfg["start_at"]:
    time.sleep(0.0005)
out = []
for p, socks in phases:
    dst = (cfg["dst"], p["port"])
    count, rate, n = p["count"], p["rate"], len(socks)
    sent = err = i = 0
    t0 = time.monotonic()  # the first send follows at once (paced: 1 due at t0)
    last = t0
    while i < count:
        due = count if rate == 0 else min(count, int((time.monotonic() - t0) * rate) + 1)
        while i < due:
            try:
                socks[i % n].sendto(payload, dst)
                sent += 1
            except OSError:
                err += 1
            i += 1
        last = time.monotonic()
        if i < count:
            time.sleep(0.0002)
    out.append({"sent": sent, "errors": err, "t_first": t0, "t_last": last})
print(json.dumps(out))
"#;

/// Attempts new TCP connections from `bind` to `dst:port`, `rate` per second (paced) for
/// `count` attempts, non-blocking, each abandoned after `timeout` seconds (below the 1 s
/// initial RTO: one SYN per attempt, a SYN the limit dropped is never retransmitted). Prints
/// attempts, handshakes completed, timed out, failed otherwise, first and last attempt time.
const TCP_CONNECTOR: &str = r#"
import json, select, socket, sys, time
cfg = json.loads(sys.argv[1])
dst = (cfg["dst"], cfg["port"])
count, rate, tmo = cfg["count"], cfg["rate"], cfg["timeout"]
pending = {}
poller = select.poll()
started = ok = timedout = failed = 0
first = last = None
while time.monotonic() < cfg["start_at"]:
    time.sleep(0.0005)
t0 = time.monotonic()
while started < count or pending:
    due = min(count, int((time.monotonic() - t0) * rate) + 1)
    while started < due:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((cfg["bind"], 0))
        now = time.monotonic()
        first = now if first is None else first
        last = now
        started += 1
        try:
            s.connect(dst)
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        pending[s.fileno()] = (s, now)
        poller.register(s, select.POLLOUT | select.POLLERR | select.POLLHUP)
    for fd, _ in poller.poll(2):
        s, _ = pending.pop(fd)
        poller.unregister(fd)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            ok += 1
        else:
            failed += 1
        s.close()
    now = time.monotonic()
    for fd, (s, t) in list(pending.items()):
        if now - t > tmo:
            poller.unregister(fd)
            del pending[fd]
            s.close()
            timedout += 1
print(json.dumps({"attempts": started, "ok": ok, "timedout": timedout, "failed": failed,
                  "t_first": first, "t_last": last}))
"#;

/// Datagrams received on one port of a [`Servers`].
struct Sink<'a>(&'a Servers, u16);

impl Sink<'_> {
    fn count(&self) -> u64 {
        self.0.udp_count(self.1)
    }
}

/// Sender processes. Each is killed (by its pid, SIGKILL) and reaped on drop unless it was
/// already reaped by [`Senders::join`].
struct Senders {
    children: Vec<Child>,
}

impl Senders {
    fn new() -> Senders {
        Senders { children: Vec::new() }
    }

    /// `python3 -c script cfg` in `ns`, on CPU `cpu` (modulo the CPUs there are) if given.
    fn spawn(&mut self, ns: &Netns, cpu: Option<usize>, script: &str, cfg: &Value) {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path())).arg("--");
        if let Some(cpu) = cpu {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            cmd.args(["taskset", "-c", &(cpu % cpus).to_string()]);
        }
        cmd.args([PYTHON, "-c", script, &cfg.to_string()]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.children.push(cmd.spawn().expect("spawn a sender"));
    }

    /// Waits for every sender (at most `timeout`), then returns their reports in spawn order.
    fn join(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut statuses = vec![None; self.children.len()];
        while statuses.iter().any(Option::is_none) {
            assert!(Instant::now() < deadline, "a sender did not finish within {timeout:?}");
            for (c, st) in self.children.iter_mut().zip(statuses.iter_mut()) {
                if st.is_none() {
                    *st = c.try_wait().expect("wait for a sender");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // All reaped: nothing left for Drop to kill.
        let children: Vec<Child> = self.children.drain(..).collect();
        children
            .into_iter()
            .zip(statuses)
            .map(|(mut c, st)| {
                let (mut out, mut err) = (String::new(), String::new());
                c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
                c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                let st = st.unwrap();
                assert!(st.success(), "a sender failed ({st}):\n{err}");
                serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("sender report {out:?}: {e}\n{err}"))
            })
            .collect()
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Child::kill signals the pid of our own unreaped child (no reuse possible).
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn f64_of(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn u64_of(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// The rate limit `name` from `ztagent status -o json` (its kernel statistics).
fn limit(agent: &Agent, name: &str) -> Value {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["limits"].get(name).cloned().unwrap_or_else(|| panic!("no rate limit {name} in the status: {v}"))
}

/// UDP receive errors (socket buffer overflows) in `ns` since boot, from /proc/net/snmp, which
/// shows the namespace of the reader: datagrams the limit admitted but a socket lost.
fn udp_rcvbuf_errors(ns: &Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().expect("Udp header"), lines.next().expect("Udp values"));
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors").expect("RcvbufErrors");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// `|measured - expected| <= 10% of expected`.
fn within_10pct(measured: f64, expected: f64) -> bool {
    (measured - expected).abs() <= 0.1 * expected
}

/// How many times a measurement is made before it is judged with [`assert_within_bounds`].
const ATTEMPTS: usize = 3;

/// Runs `measure` until it is conclusive, at most [`ATTEMPTS`] times, and returns the last
/// measurement. `measure` returns its figures and `Err(why)` when the senders were not as fast
/// as the exact judgment assumes (overload over the whole window, a burst back to back): on a
/// busy machine that is the machine's speed, not the limit's accuracy, so it is measured again
/// (after an idle second: every bucket here is full again by then), and if still too slow the
/// caller judges with the bounds that hold at any speed instead of failing on speed.
fn retry<T>(mut measure: impl FnMut() -> (T, Result<(), String>)) -> T {
    for attempt in 1.. {
        let (figures, conclusive) = measure();
        match conclusive {
            Ok(()) => return figures,
            Err(why) if attempt >= ATTEMPTS => {
                eprintln!("still inconclusive after {attempt} attempts ({why}): judged with speed-independent bounds");
                return figures;
            }
            Err(why) => eprintln!("inconclusive ({why}; machine busy?): measuring again"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    unreachable!()
}

/// What a bucket of `burst` refilled at `rate` admits at any sending speed: never more than
/// burst + rate x the sending window (a slow sender only lets tokens go unused), and at least
/// the first burst (the bucket was full) or everything, if less was sent.
fn assert_within_bounds(got: u64, sent: u64, burst: f64, rate: f64, window: f64, what: &str) {
    let (most, least) = (1.1 * (burst + rate * window) + 1.0, 0.9 * burst.min(sent as f64));
    eprintln!("{what}: {got} admitted of {sent}; bounds at any speed {least:.1} ..= {most:.1}");
    assert!(
        (least..=most).contains(&(got as f64)),
        "{what}: {got} admitted of {sent}, outside burst {burst} .. burst + rate x {window:.3} s = {most:.1} (±10%)"
    );
}

/// A datagram from `src` (an address of `ns`) to `dst:port` and its echo: the path and both
/// neighbour entries are ready.
fn udp_ok_from(ns: &Netns, src: &str, dst: IpAddr, port: u16) -> bool {
    integration_tests::udp_ok_from(ns, src.parse().unwrap(), dst, port)
}

fn add_second_address(lan: &Lan) {
    let front = &lan.hosts[1];
    front.ns.ip(&["addr", "add", &format!("{FRONT2}/16"), "dev", &front.iface]);
}
