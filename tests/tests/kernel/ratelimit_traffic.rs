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
    v["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no rate limit {name} in the status: {v}"))
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

const PACKETS_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  batch: { cidrs: [10.20.3.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: udp-in, from: [frontend, batch], to: [payments], ports: ["5301/udp", "5302/udp"], action: allow }
rateLimits:
  - name: frontend-packets
    from: frontend
    to: [payments]
    packets: { rate: 2000, per: second, burst: 400 }
    scope: segment
"#;

#[test]
fn packets_rate_and_burst_are_accurate_under_5x_overload_from_two_cpus() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const RATE: f64 = 2000.0;
    const BURST: f64 = 400.0;
    const SECS: f64 = 5.0;
    let lan = lan();
    add_second_address(&lan);
    let (pay, front, batch) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", PACKETS_POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let sinks = Servers::start(&pay.ns, &[], &[5301, 5302]);
    let (sink_f, sink_b) = (Sink(&sinks, 5301), Sink(&sinks, 5302));
    // Neighbours resolved, paths open (a few tokens of the frontend's bucket).
    assert!(udp_ok(&front.ns, pay.v4, 5301), "frontend cannot reach payments:5301/udp");
    assert!(udp_ok(&batch.ns, pay.v4, 5302), "batch cannot reach payments:5302/udp");
    assert!(udp_ok_from(&front.ns, FRONT2, pay.v4, 5301), "{FRONT2} cannot reach payments:5301/udp");
    std::thread::sleep(Duration::from_millis(500)); // idle: the bucket refills (400 in 0.2 s)

    // --- 1. sustained rate: 2 x 5000/s from two CPUs and two addresses, batch 1000/s ---
    let (f_sent, f_errors, f_recv, b_sent, b_recv, window, admitted_rate, drops, dropped, passed, rcvbuf_errors, fast) =
        retry(|| {
            let (f0, b0) = (sink_f.count(), sink_b.count());
            let (drops0, errs0) = (agent.counter("drop_rate_limit"), udp_rcvbuf_errors(&pay.ns));
            let stats0 = limit(&agent, "frontend-packets");
            let start_at = mono() + 0.5;
            let per_sender = (RATE * 2.5 * SECS) as u64; // 5000/s each: together 5x the limit
            let mut senders = Senders::new();
            for (cpu, bind) in [(0, front.v4.to_string()), (1, FRONT2.to_string())] {
                let phase = json!({"bind": bind, "port": 5301, "socks": 4, "count": per_sender, "rate": RATE * 2.5});
                senders.spawn(
                    &front.ns,
                    Some(cpu),
                    UDP_SENDER,
                    &json!({"dst": pay.v4.to_string(), "start_at": start_at, "phases": [phase]}),
                );
            }
            let phase = json!({"bind": batch.v4.to_string(), "port": 5302, "socks": 1, "count": (1000.0 * SECS) as u64, "rate": 1000});
            senders.spawn(
                &batch.ns,
                None,
                UDP_SENDER,
                &json!({"dst": pay.v4.to_string(), "start_at": start_at, "phases": [phase]}),
            );
            let reports = senders.join(Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(300)); // the tail: the servers drain their sockets
            let (f_recv, b_recv) = (sink_f.count() - f0, sink_b.count() - b0);
            let drops = agent.counter("drop_rate_limit") - drops0;
            let rcvbuf_errors = udp_rcvbuf_errors(&pay.ns) - errs0;
            let stats1 = limit(&agent, "frontend-packets");
            let passed = u64_of(&stats1, "packets_passed") - u64_of(&stats0, "packets_passed");
            let dropped = u64_of(&stats1, "packets_dropped") - u64_of(&stats0, "packets_dropped");

            let (fr, br) = (&reports[..2], &reports[2][0]);
            let f_sent: u64 = fr.iter().map(|r| u64_of(&r[0], "sent")).sum();
            let f_errors: u64 = fr.iter().map(|r| u64_of(&r[0], "errors")).sum();
            let first = fr.iter().map(|r| f64_of(&r[0], "t_first")).fold(f64::MAX, f64::min);
            let last = fr.iter().map(|r| f64_of(&r[0], "t_last")).fold(f64::MIN, f64::max);
            let window = last - first;
            let offered = f_sent as f64 / window;
            let admitted_rate = (f_recv as f64 - BURST) / window;
            let b_sent = u64_of(br, "sent");
            eprintln!(
                "packets: frontend sent {f_sent} ({f_errors} send errors) in {window:.3} s from 2 CPUs = {offered:.0}/s offered \
             ({:.2}x the limit); payments received {f_recv}; admitted rate (received - burst) / window = {admitted_rate:.1}/s \
             (limit {RATE}/s, {:+.2}%); over a nominal 5 s: {:.1}/s; expected burst + rate * window = {:.0}",
                offered / RATE,
                (admitted_rate / RATE - 1.0) * 100.0,
                (f_recv as f64 - BURST) / SECS,
                BURST + RATE * window,
            );
            eprintln!(
                "packets: datapath passed {passed}, dropped {dropped}, drop_rate_limit +{drops}, payments UDP RcvbufErrors +{rcvbuf_errors}; \
             batch sent {b_sent} ({} errors), received {b_recv}",
                u64_of(br, "errors")
            );
            // Whether the senders were fast enough for the exact judgment (speed, not correctness).
            let fast = offered >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(&window);
            let why =
                format!("the senders offered {offered:.0}/s over {window:.3} s, not >= 4.5x {RATE}/s over ~{SECS} s");
            (
                (
                    f_sent,
                    f_errors,
                    f_recv,
                    b_sent,
                    b_recv,
                    window,
                    admitted_rate,
                    drops,
                    dropped,
                    passed,
                    rcvbuf_errors,
                    fast,
                ),
                fast.then_some(()).ok_or(why),
            )
        });
    assert_eq!(f_errors, 0, "frontend send errors");
    assert_eq!(rcvbuf_errors, 0, "payments' sockets lost datagrams: the counts would not measure the limit");
    assert_eq!(b_recv, b_sent, "batch (no limit) lost datagrams while frontend was limited");
    assert!(b_sent >= (1000.0 * SECS) as u64 - 5, "batch sent only {b_sent}");
    assert!(drops > 0 && dropped > 0, "no datagram was dropped by the rate limit");
    // What the limit admitted is what arrived, and what it did not is what it dropped.
    assert_eq!(f_recv, passed, "received {f_recv} but the limit passed {passed}");
    assert_eq!(f_sent, passed + dropped, "sent {f_sent} != passed {passed} + dropped {dropped}");
    if fast {
        assert!(
            within_10pct(admitted_rate, RATE),
            "admitted {admitted_rate:.1}/s under overload; the limit is {RATE}/s (±10%)"
        );
    } else {
        // Slow senders let tokens go unused: only the bounds that hold at any speed.
        assert_within_bounds(f_recv, f_sent, BURST, RATE, window, "frontend");
    }

    // --- 2. burst: after idle, 1000 back-to-back datagrams from one process ---
    let (sent, got, drops, rcvbuf_errors, elapsed, burst, fast) = retry(|| {
        std::thread::sleep(Duration::from_millis(600)); // idle: full bucket again
        let f0 = sink_f.count();
        let (drops0, errs0) = (agent.counter("drop_rate_limit"), udp_rcvbuf_errors(&pay.ns));
        let mut senders = Senders::new();
        let phase = json!({"bind": front.v4.to_string(), "port": 5301, "socks": 1, "count": 1000, "rate": 0});
        senders.spawn(
            &front.ns,
            Some(0),
            UDP_SENDER,
            &json!({"dst": pay.v4.to_string(), "start_at": 0.0, "phases": [phase]}),
        );
        let r = senders.join(Duration::from_secs(10))[0][0].clone();
        std::thread::sleep(Duration::from_millis(300));
        let got = sink_f.count() - f0;
        let drops = agent.counter("drop_rate_limit") - drops0;
        let rcvbuf_errors = udp_rcvbuf_errors(&pay.ns) - errs0;
        let elapsed = f64_of(&r, "t_last") - f64_of(&r, "t_first");
        // Tokens that refilled while the datagrams were being sent.
        let refill = RATE * elapsed;
        let burst = got as f64 - refill;
        eprintln!(
            "burst: sent {} back to back in {:.2} ms (refill allowance {refill:.1}), received {got}, dropped {drops}: \
             measured burst {burst:.1} (configured {BURST}, {:+.2}%); payments UDP RcvbufErrors +{rcvbuf_errors}",
            u64_of(&r, "sent"),
            elapsed * 1e3,
            (burst / BURST - 1.0) * 100.0
        );
        let fast = elapsed < 0.1;
        let sent = u64_of(&r, "sent");
        (
            (sent, got, drops, rcvbuf_errors, elapsed, burst, fast),
            fast.then_some(()).ok_or(format!("1000 datagrams took {elapsed:.3} s to send, not back to back")),
        )
    });
    assert_eq!(sent, 1000);
    assert_eq!(rcvbuf_errors, 0, "payments' socket lost datagrams: the count would not measure the limit");
    assert!(drops > 0, "nothing dropped after the burst");
    assert_eq!(drops + got, 1000, "received {got} + dropped {drops} != 1000 sent");
    if fast {
        assert!(within_10pct(burst, BURST), "the burst admitted {burst:.1}; configured {BURST} (±10%)");
    } else {
        assert_within_bounds(got, sent, BURST, RATE, elapsed, "the burst");
    }
}

const CONNECTIONS_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: tls, from: [frontend], to: [payments], ports: ["8443/tcp"], action: allow }
rateLimits:
  - name: frontend-connections
    from: frontend
    to: [payments]
    ports: ["tcp"]
    connections: { rate: 20, per: second, burst: 10 }
"#;

#[test]
fn new_tcp_connections_are_limited_to_burst_plus_rate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const RATE: f64 = 20.0;
    const BURST: f64 = 10.0;
    const SECS: f64 = 5.0;
    let lan = lan();
    add_second_address(&lan);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", CONNECTIONS_POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let _servers = Servers::start(&pay.ns, &[8443], &[]);
    assert!(tcp_ok(&front.ns, pay.v4, 8443), "frontend cannot connect to payments:8443");
    std::thread::sleep(Duration::from_millis(1000)); // idle: 10 tokens refill in 0.5 s

    let (attempts, ok, timedout, failed, drops, conn_dropped, window, expected, fast) = retry(|| {
        let drops0 = agent.counter("drop_rate_limit");
        let stats0 = limit(&agent, "frontend-connections");
        let start_at = mono() + 0.5;
        let mut senders = Senders::new();
        // 2 x 50/s = 5x the limit, from two CPUs and the segment's two addresses.
        for (cpu, bind) in [(0, front.v4.to_string()), (1, FRONT2.to_string())] {
            let cfg = json!({"dst": pay.v4.to_string(), "port": 8443, "bind": bind, "count": (RATE * 2.5 * SECS) as u64,
                             "rate": RATE * 2.5, "timeout": 0.4, "start_at": start_at});
            senders.spawn(&front.ns, Some(cpu), TCP_CONNECTOR, &cfg);
        }
        let reports = senders.join(Duration::from_secs(20));
        let drops = agent.counter("drop_rate_limit") - drops0;
        let stats1 = limit(&agent, "frontend-connections");
        let conn_passed = u64_of(&stats1, "connections_passed") - u64_of(&stats0, "connections_passed");
        let conn_dropped = u64_of(&stats1, "connections_dropped") - u64_of(&stats0, "connections_dropped");

        let sum = |k: &str| reports.iter().map(|r| u64_of(r, k)).sum::<u64>();
        let (attempts, ok, timedout, failed) = (sum("attempts"), sum("ok"), sum("timedout"), sum("failed"));
        let first = reports.iter().map(|r| f64_of(r, "t_first")).fold(f64::MAX, f64::min);
        let last = reports.iter().map(|r| f64_of(r, "t_last")).fold(f64::MIN, f64::max);
        let window = last - first;
        let offered = attempts as f64 / window;
        // A full bucket of 10 at the first attempt, then one token per 50 ms until the last one;
        // at 100 attempts/s a token is taken within 10 ms of its refill, so the handshakes are
        // burst + rate * window, within one token.
        let expected = BURST + RATE * window;
        eprintln!(
            "connections: {attempts} attempts in {window:.3} s from 2 CPUs = {offered:.1}/s offered ({:.2}x the limit); \
             {ok} handshakes, {timedout} timed out (SYN dropped), {failed} failed; expected burst + rate * window = \
             {expected:.1} ({:+.2}%); rate (ok - burst) / window = {:.2}/s; datapath connections passed {conn_passed}, \
             dropped {conn_dropped}; drop_rate_limit +{drops}",
            offered / RATE,
            (ok as f64 / expected - 1.0) * 100.0,
            (ok as f64 - BURST) / window,
        );
        let fast = offered >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(&window);
        let why = format!("{offered:.1} attempts/s over {window:.3} s, not >= 4.5x {RATE}/s over ~{SECS} s");
        ((attempts, ok, timedout, failed, drops, conn_dropped, window, expected, fast), fast.then_some(()).ok_or(why))
    });
    assert_eq!(failed, 0, "connections failed other than by a dropped SYN");
    assert_eq!(ok + timedout, attempts);
    assert!(drops > 0 && conn_dropped > 0, "no SYN was dropped by the rate limit");
    // One SYN per attempt (the timeout is below the initial RTO): each timed-out attempt is
    // exactly one rate-limit drop.
    assert_eq!(drops, timedout, "attempts timed out without a rate-limit drop, or drops without an attempt");
    if fast {
        assert!(within_10pct(ok as f64, expected), "{ok} connections admitted; expected {expected:.1} (±10%)");
    } else {
        assert_within_bounds(ok, attempts, BURST, RATE, window, "connections");
    }
}

const ADDRESS_POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24] }
  payments: { cidrs: [10.20.2.10/32] }
rules:
  - { name: udp-in, from: [frontend], to: [payments], ports: ["5401/udp", "5402/udp"], action: allow }
rateLimits:
  - name: per-address
    from: frontend
    to: [payments]
    packets: { rate: 50, per: second, burst: 20 }
    scope: address
"#;

#[test]
fn scope_address_gives_each_address_its_own_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const RATE: f64 = 50.0;
    const BURST: f64 = 20.0;
    const SECS: f64 = 2.0;
    let lan = lan();
    add_second_address(&lan);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", ADDRESS_POLICY);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let servers = Servers::start(&pay.ns, &[], &[5401, 5402]);
    let sinks = [Sink(&servers, 5401), Sink(&servers, 5402)];
    assert!(udp_ok(&front.ns, pay.v4, 5401), "frontend cannot reach payments:5401/udp");
    assert!(udp_ok_from(&front.ns, FRONT2, pay.v4, 5402), "{FRONT2} cannot reach payments:5402/udp");
    std::thread::sleep(Duration::from_millis(600)); // idle: 20 tokens refill in 0.4 s
    let addrs: [IpAddr; 2] = [front.v4, FRONT2.parse().unwrap()];
    let ports = [5401u16, 5402];

    // --- 1. back-to-back bursts: the first address empties its bucket, the second still gets
    // its whole burst (in segment scope it would get nothing). ---
    let (r, got, drops) = retry(|| {
        let drops0 = agent.counter("drop_rate_limit");
        let before = [sinks[0].count(), sinks[1].count()];
        let mut senders = Senders::new();
        let phases: Vec<Value> = (0..2)
            .map(|i| json!({"bind": addrs[i].to_string(), "port": ports[i], "socks": 1, "count": 100, "rate": 0}))
            .collect();
        senders.spawn(
            &front.ns,
            Some(0),
            UDP_SENDER,
            &json!({"dst": pay.v4.to_string(), "start_at": 0.0, "phases": phases}),
        );
        let r = senders.join(Duration::from_secs(10)).remove(0);
        std::thread::sleep(Duration::from_millis(200));
        let drops = agent.counter("drop_rate_limit") - drops0;
        let got = [sinks[0].count() - before[0], sinks[1].count() - before[1]];
        let slow: Vec<String> = (0..2)
            .map(|i| (i, f64_of(&r[i], "t_last") - f64_of(&r[i], "t_first")))
            .filter(|(_, elapsed)| *elapsed >= 0.1)
            .map(|(i, elapsed)| format!("100 datagrams from {} took {elapsed:.3} s, not back to back", addrs[i]))
            .collect();
        ((r, got, drops), if slow.is_empty() { Ok(()) } else { Err(slow.join("; ")) })
    });
    for i in 0..2 {
        let got = got[i];
        let elapsed = f64_of(&r[i], "t_last") - f64_of(&r[i], "t_first");
        let expected = BURST + RATE * elapsed;
        eprintln!(
            "address {}: 100 back to back in {:.2} ms, received {got}: expected burst + refill = {expected:.2}",
            addrs[i],
            elapsed * 1e3
        );
        assert_eq!(u64_of(&r[i], "sent"), 100);
        if elapsed < 0.1 {
            assert!(within_10pct(got as f64, expected), "{} got {got} of a burst of {BURST}", addrs[i]);
        } else {
            assert_within_bounds(got, 100, BURST, RATE, elapsed, &addrs[i].to_string());
        }
    }
    let got: u64 = got.iter().sum();
    eprintln!("address bursts: drop_rate_limit +{drops}");
    assert_eq!(drops + got, 200, "received {got} + dropped {drops} != 200 sent");

    // --- 2. both at 5x their limit at once, from two CPUs: each gets burst + rate * window ---
    std::thread::sleep(Duration::from_millis(600));
    let (reports, got, drops, stats) = retry(|| {
        let drops0 = agent.counter("drop_rate_limit");
        let before = [sinks[0].count(), sinks[1].count()];
        let start_at = mono() + 0.5;
        let mut senders = Senders::new();
        for i in 0..2 {
            let phase = json!({"bind": addrs[i].to_string(), "port": ports[i], "socks": 2, "count": (RATE * 5.0 * SECS) as u64, "rate": RATE * 5.0});
            senders.spawn(
                &front.ns,
                Some(i),
                UDP_SENDER,
                &json!({"dst": pay.v4.to_string(), "start_at": start_at, "phases": [phase]}),
            );
        }
        let reports = senders.join(Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(200));
        let drops = agent.counter("drop_rate_limit") - drops0;
        let stats = limit(&agent, "per-address");
        let got = [sinks[0].count() - before[0], sinks[1].count() - before[1]];
        let slow: Vec<String> = (0..2)
            .map(|i| (i, &reports[i][0]))
            .map(|(i, r)| (i, f64_of(r, "t_last") - f64_of(r, "t_first"), u64_of(r, "sent")))
            .filter(|(_, window, sent)| {
                !(*sent as f64 / window >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(window))
            })
            .map(|(i, window, sent)| format!("{} offered {:.1}/s over {window:.3} s", addrs[i], sent as f64 / window))
            .collect();
        ((reports, got, drops, stats), if slow.is_empty() { Ok(()) } else { Err(slow.join("; ")) })
    });
    let mut total = 0;
    for i in 0..2 {
        let r = &reports[i][0];
        let got = got[i];
        total += got;
        let window = f64_of(r, "t_last") - f64_of(r, "t_first");
        let offered = u64_of(r, "sent") as f64 / window;
        let expected = BURST + RATE * window;
        eprintln!(
            "address {}: sent {} in {window:.3} s = {offered:.1}/s ({:.2}x), received {got}: expected burst + rate * window \
             = {expected:.1} ({:+.2}%)",
            addrs[i],
            u64_of(r, "sent"),
            offered / RATE,
            (got as f64 / expected - 1.0) * 100.0
        );
        if offered >= 4.5 * RATE && (SECS - 0.1..SECS + 0.5).contains(&window) {
            assert!(within_10pct(got as f64, expected), "{} got {got}; expected {expected:.1} (±10%)", addrs[i]);
        } else {
            assert_within_bounds(got, u64_of(r, "sent"), BURST, RATE, window, &addrs[i].to_string());
        }
    }
    eprintln!(
        "address concurrent: total {total}, drop_rate_limit +{drops}, address buckets {}",
        stats["address_buckets"]
    );
    let sent: u64 = reports.iter().map(|r| u64_of(&r[0], "sent")).sum();
    assert_eq!(drops + total, sent, "received {total} + dropped {drops} != {sent} sent");
    assert!(u64_of(&stats, "address_buckets") >= 2, "fewer than two per-address buckets: {stats}");
}

/// Issue 23, defect 2: `status` counted a per-address limit's live buckets of the packets kind
/// only, so a bytes (or connections) limit showed "0 live, 2 evicted" while the map held two
/// buckets. Two addresses under a per-address bytes limit: two live, none evicted.
#[test]
fn address_buckets_of_every_kind_are_counted_live() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lan = lan();
    add_second_address(&lan);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let text = ADDRESS_POLICY.replace(
        "packets: { rate: 50, per: second, burst: 20 }",
        "bytes: { rate: 1000000, per: second, burst: 100000 }",
    );
    let policy = dir.file("policy.yaml", &text);
    let agent = Agent::start(&pay.ns, &[&pay.iface], Some(&policy));
    let _servers = Servers::start(&pay.ns, &[], &[5401, 5402]);
    assert!(udp_ok(&front.ns, pay.v4, 5401), "frontend cannot reach payments:5401/udp");
    assert!(udp_ok_from(&front.ns, FRONT2, pay.v4, 5402), "{FRONT2} cannot reach payments:5402/udp");
    let stats = limit(&agent, "per-address");
    assert_eq!(u64_of(&stats, "address_buckets"), 2, "two addresses, two live buckets: {stats}");
    assert_eq!(u64_of(&stats, "evicted"), 0, "nothing was evicted: {stats}");
    // Issue 23: a limit's buckets in JSON as values, not display strings
    // (`jq '.limits[] | select(.name == "per-address") | .bytes.rate'`).
    assert_eq!(stats["bytes"], serde_json::json!({"rate": 1_000_000, "per": "second", "burst": 100_000}), "{stats}");
    assert_eq!(
        (&stats["packets"], &stats["connections"], &stats["scope"]),
        (&Value::Null, &Value::Null, &"address".into())
    );
}
