//! `ztsoak`: the agent under mixed traffic and a policy push every second, for `--seconds N`
//! (default 60), then an audit of what it left behind.
//!
//! A LAN of four hosts (payments, the enforced server; frontend; batch; an attacker in no
//! segment) and the agent on payments with `--metrics-addr` and `--events-file`. For N seconds,
//! at once:
//!
//! - *allowed*: frontend opens short TCP connections to 443 (IPv4 and IPv6 in turn: greeting,
//!   one echoed line, close), new UDP flows to 53 (one datagram and its echo each), four
//!   long-lived UDP flows to 53, and one ping stream;
//! - *toggled*: frontend sends a UDP stream to 9050, which only one of the two policies allows:
//!   it is allowed, revoked and denied in turn at every push;
//! - *rate limited*: batch sends UDP to 7000-7009 at 3x its limit (`batch-udp`, 200/s, burst 40,
//!   segment scope, the same in both policies, so its bucket and counters are kept);
//! - *denied*: the attacker floods one UDP flow, scans (one datagram to each of ever-new ports
//!   from 8 addresses, so the denial cache and the event stream churn) and tries TCP to 443;
//!   frontend tries the port a deny rule closes (8081/tcp).
//!
//! Every second a policy is pushed (alternately B, without the 9000-9099/udp rule, and A, with
//! it), and the agent's RSS, counters and map fills are sampled. Afterwards the traffic stops
//! and the soak waits past the closing-TCP timeout (10 s) and, unless `--no-wait-udp`, the UDP
//! timeout (60 s, which also covers ICMP's 30 s), then checks:
//!
//! - memory: RSS at the end within 20 MB of RSS after the warm-up, and no upward trend over the
//!   run (the median of the last quarter of the samples at most 4 MB above the first quarter's);
//! - map entries: each policy map holds exactly the current policy (active slot) and the
//!   previous one (inactive slot), as `ztagent policy validate` counts them; every conntrack
//!   entry is either expired (idle beyond its protocol's timeout: the datapath ignores it) or
//!   belongs to traffic that may still be live, no TCP entry is left with the 6-hour
//!   established timeout, and there are no more entries than the flows the traffic created; the
//!   denial cache and the aggregation maps hold no more than the distinct keys sent;
//! - events: the events file's counts per verdict equal the kernel's counters (allowed =
//!   `pass_policy`; denied = `drop_default` + `drop_rule` + `drop_revoked` + fragments,
//!   malformed, no policy; rate-limited = `drop_rate_limit`), with `events_lost` = 0 and no
//!   `missed` record; the metrics' event counters agree with the file;
//! - pushes: every push succeeded and the revision is 1 + pushes; the rate limit's counters
//!   survived every push and account for every batch datagram.
//!
//! Usage: `ztsoak [--seconds N] [--no-wait-udp] [--push-every S] [--csv PATH]` (as root, after
//! `cargo build --release --bins`; `cargo xtask soak` does both). Exit status 1 if a check fails.
use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::{
    AggKey, AggValue, BucketKey, CT_F_CLOSING, CT_TIMEOUT_ICMP_NS, CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_NS,
    CT_TIMEOUT_UDP_NS, CidrData, CtKey, CtValue, DenyKey, DenyValue, FragKey, HostKey, LimitConfig, MAX_LIMITS,
    PROFILE_SLOT_SHIFT, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PairKey, PortData, SegmentInfo, SlotConfig, Verdict, maps,
};
use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, Map, MapData};
use integration_tests::{Agent, Lan, Netns, Servers, TempDir, bin};
use serde_json::Value;

const POLICY_A: &str = r#"# ztsoak policy A: B plus the toggled range
version: 1
segments:
  frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32, "fd20:2::10/128"] }
  batch: { cidrs: [10.20.3.0/24, "fd20:3::/64"] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp", "53/udp", "icmp"], action: allow }
  - { name: batch-jobs, from: [batch], to: [payments], ports: ["7000-7009/udp"], action: allow }
  - { name: no-admin, from: ["*"], to: [payments], ports: ["8081/tcp"], action: deny }
  - { name: toggled, from: [frontend], to: [payments], ports: ["9000-9099/udp"], action: allow }
rateLimits:
  - name: batch-udp
    from: batch
    to: [payments]
    ports: ["udp"]
    packets: { rate: 200, per: second, burst: 40 }
"#;

/// Policy A without the `toggled` rule (the last one: the other rules keep their ids).
fn policy_b() -> String {
    POLICY_A
        .replace("# ztsoak policy A: B plus the toggled range", "# ztsoak policy B: A without the toggled range")
        .replace("  - { name: toggled, from: [frontend], to: [payments], ports: [\"9000-9099/udp\"], action: allow }\n", "")
}

const LIMIT_NAME: &str = "batch-udp";
const LIMIT_RATE: f64 = 200.0;
const LIMIT_BURST: f64 = 40.0;

const METRICS_PORT: u16 = 9465;
/// The agent keeps this many recent events (default 10,000): a bounded ring that fills within
/// the warm-up, so that its filling is not mistaken for a trend.
const EVENTS_HISTORY: usize = 2000;
/// The agent's live event stream (a broadcast channel) keeps the last 16,384 records for its
/// clients: bounded too, and filled once that many events were delivered.
const EVENT_BROADCAST: u64 = 16_384;

// Offered traffic, per second.
const TCP_RATE: f64 = 40.0;
const UDP_FLOW_RATE: f64 = 20.0;
const UDP_LONG_FLOWS: usize = 4;
const UDP_LONG_INTERVAL: Duration = Duration::from_millis(100);
const TOGGLE_RATE: f64 = 50.0;
const TOGGLE_PORT: u16 = 9050;
const BATCH_RATE: f64 = 3.0 * LIMIT_RATE;
const BATCH_PORTS: u16 = 10;
const FLOOD_RATE: f64 = 300.0;
const FLOOD_PORT: u16 = 9999;
const SCAN_RATE: f64 = 300.0;
const SCAN_SOURCES: u8 = 8;
const ATTACK_SYN_RATE: f64 = 5.0;
const ADMIN_SYN_RATE: f64 = 2.0;

/// Memory bounds (see the README's Tests section for the reasoning).
const RSS_END_SLACK_KB: i64 = 20 * 1024;
const RSS_TREND_KB: i64 = 4 * 1024;

struct Options {
    seconds: u64,
    wait_udp: bool,
    push_every: u64,
    scan_rate: f64,
    csv: Option<PathBuf>,
}

fn parse_args() -> Result<Options> {
    let mut o = Options { seconds: 120, wait_udp: true, push_every: 1, scan_rate: SCAN_RATE, csv: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value("--seconds")?.parse().context("--seconds: not a number")?,
            "--no-wait-udp" => o.wait_udp = false,
            "--push-every" => o.push_every = value("--push-every")?.parse().context("--push-every: not a number")?,
            "--scan-rate" => o.scan_rate = value("--scan-rate")?.parse().context("--scan-rate: not a number")?,
            "--csv" => o.csv = Some(value("--csv")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: ztsoak [--seconds N] [--no-wait-udp] [--push-every S] [--scan-rate R] [--csv PATH]\n\
                     --seconds N     traffic and pushes for N seconds (default 60, at least 8)\n\
                     --no-wait-udp   after the traffic, wait only past the closing-TCP timeout (10 s),\n\
                     \x20               not the UDP one (60 s): live UDP entries are then checked\n\
                     \x20               against the flows that may still be live\n\
                     --push-every S  push a policy every S seconds (default 1; 0: never, for comparison)\n\
                     --scan-rate R   new denied keys the attacker's scan sends per second (default 300)\n\
                     --csv PATH      also write the per-second samples to PATH"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(o.seconds >= 8, "--seconds must be at least 8");
    Ok(o)
}

fn main() -> ExitCode {
    match parse_args().and_then(|o| run(&o)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ztsoak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clocks, namespaces, processes

/// CLOCK_MONOTONIC in ns: the clock of the datapath's timestamps (`bpf_ktime_get_*ns`).
fn mono_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed timespec.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// A thread that has entered the network namespace at `path`.
fn spawn_in<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd, affecting only this thread for CLONE_NEWNET.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
}

/// Child processes, killed (by pid) and reaped on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls `f(i)` for i = 0, 1, ... at `rate` per second until `stop`; `f` may block.
fn paced(stop: &AtomicBool, rate: f64, mut f: impl FnMut(u64)) {
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

fn rss_kb(pid: u32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// What one generator did. `flow_times`: CLOCK_MONOTONIC (ns) of the last packet of each flow
/// it created, for the conntrack audit.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    flow_times: Mutex<Vec<u64>>,
}

impl Tally {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn flow(&self, t: u64) {
        self.flow_times.lock().unwrap().push(t);
    }
    /// Flows whose last packet was at or after `t`.
    fn flows_since(&self, t: u64) -> u64 {
        self.flow_times.lock().unwrap().iter().filter(|&&x| x >= t).count() as u64
    }
}

#[derive(Default)]
struct Tallies {
    tcp: Tally,
    udp_flows: Tally,
    udp_long: Tally,
    toggle: Tally,
    batch: Tally,
    flood: Tally,
    scan: Tally,
    attack_syn: Tally,
    admin_syn: Tally,
    /// Time (ns) the batch sender lost to pauses longer than its bucket takes to fill
    /// (burst / rate): the tokens of that time went unused, whatever the limit did. A busy
    /// machine makes such pauses; the rate-limit check takes them out instead of failing.
    batch_idle_ns: AtomicU64,
}

/// A short TCP session: greeting, one echoed line, close (both sides send a FIN).
fn tcp_session(dst: SocketAddr) -> bool {
    // Generous: a failure is a check failure, and a busy machine may delay the server's thread.
    let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(5)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut hi = [0u8; 3];
    if s.read_exact(&mut hi).is_err() || &hi != b"hi\n" {
        return false;
    }
    if s.write_all(b"soak\n").is_err() {
        return false;
    }
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).is_ok() && &echo == b"soak\n"
}

/// One SYN that policy denies: given up before the first retransmission (1 s).
fn denied_syn(dst: SocketAddr) -> bool {
    TcpStream::connect_timeout(&dst, Duration::from_millis(250)).is_ok()
}

fn udp_socket(bind: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(bind, 0)).expect("bind udp");
    s.set_nonblocking(true).unwrap();
    s
}

/// Reads whatever echoes are waiting; returns how many.
fn drain(s: &UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while s.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

struct Hosts {
    pay4: IpAddr,
    pay6: IpAddr,
    front: String,
    batch: String,
    attacker: String,
    batch4: IpAddr,
    attacker4: IpAddr,
}

fn attacker_sources(n: u8) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::new(10, 20, 9, 3 + i))).collect()
}

/// Starts every generator; they run until `stop`.
fn start_traffic(h: &Hosts, t: &Arc<Tallies>, stop: &Arc<AtomicBool>, scan_rate: f64) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    let (pay4, pay6) = (h.pay4, h.pay6);
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let any6: IpAddr = "::".parse().unwrap();

    // Allowed: short TCP connections, IPv4 and IPv6 in turn.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        paced(&st, TCP_RATE, |i| {
            let dst = SocketAddr::new(if i % 2 == 0 { pay4 } else { pay6 }, 443);
            Tally::add(&tt.tcp.sent);
            if tcp_session(dst) {
                Tally::add(&tt.tcp.ok);
            } else {
                Tally::add(&tt.tcp.failed);
            }
            tt.tcp.flow(mono_ns());
        });
    }));
    // Allowed: new UDP flows, one datagram and its echo each.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        paced(&st, UDP_FLOW_RATE, |i| {
            let (dst, bind) = if i % 2 == 0 { (pay4, any4) } else { (pay6, any6) };
            let s = UdpSocket::bind(SocketAddr::new(bind, 0)).expect("bind udp");
            // Generous: an echo missed counts against the 99%, and the server's thread may wait.
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            Tally::add(&tt.udp_flows.sent);
            let _ = s.send_to(b"flow", SocketAddr::new(dst, 53));
            let mut buf = [0u8; 16];
            if matches!(s.recv_from(&mut buf), Ok((4, _))) {
                Tally::add(&tt.udp_flows.ok);
            } else {
                Tally::add(&tt.udp_flows.failed);
            }
            tt.udp_flows.flow(mono_ns());
        });
    }));
    // Allowed: long-lived UDP flows.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        let socks: Vec<UdpSocket> = (0..UDP_LONG_FLOWS).map(|_| udp_socket(any4)).collect();
        while !st.load(Ordering::Relaxed) {
            for s in &socks {
                let _ = s.send_to(b"long", SocketAddr::new(pay4, 53));
                Tally::add(&tt.udp_long.sent);
            }
            std::thread::sleep(UDP_LONG_INTERVAL);
            for s in &socks {
                tt.udp_long.ok.fetch_add(drain(s), Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for s in &socks {
            tt.udp_long.ok.fetch_add(drain(s), Ordering::Relaxed);
            tt.udp_long.flow(mono_ns());
        }
    }));
    // Toggled: allowed under A, revoked then denied under B.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        let s = udp_socket(any4);
        paced(&st, TOGGLE_RATE, |_| {
            if s.send_to(b"toggle", SocketAddr::new(pay4, TOGGLE_PORT)).is_ok() {
                Tally::add(&tt.toggle.sent);
            }
            tt.toggle.ok.fetch_add(drain(&s), Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(200));
        tt.toggle.ok.fetch_add(drain(&s), Ordering::Relaxed);
        tt.toggle.flow(mono_ns());
    }));
    // Denied by a rule: frontend -> 8081/tcp.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.front.clone(), move || {
        paced(&st, ADMIN_SYN_RATE, |_| {
            Tally::add(&tt.admin_syn.sent);
            if denied_syn(SocketAddr::new(pay4, 8081)) {
                Tally::add(&tt.admin_syn.ok);
            }
        });
    }));
    // Rate limited: batch -> 7000-7009/udp at 3x the limit, from one socket.
    let (tt, st) = (t.clone(), stop.clone());
    let batch4 = h.batch4;
    threads.push(spawn_in(h.batch.clone(), move || {
        let s = udp_socket(batch4);
        let fills = Duration::from_secs_f64(LIMIT_BURST / LIMIT_RATE);
        let mut last = Instant::now();
        paced(&st, BATCH_RATE, |i| {
            let gap = last.elapsed();
            last = Instant::now();
            if gap > fills {
                tt.batch_idle_ns.fetch_add((gap - fills).as_nanos() as u64, Ordering::Relaxed);
            }
            match s.send_to(b"batch", SocketAddr::new(pay4, 7000 + (i % BATCH_PORTS as u64) as u16)) {
                Ok(_) => Tally::add(&tt.batch.sent),
                Err(_) => Tally::add(&tt.batch.failed),
            }
            if i % 50 == 0 {
                tt.batch.ok.fetch_add(drain(&s), Ordering::Relaxed);
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        tt.batch.ok.fetch_add(drain(&s), Ordering::Relaxed);
        for _ in 0..BATCH_PORTS {
            tt.batch.flow(mono_ns());
        }
    }));
    // Denied: a flood of one flow.
    let (tt, st) = (t.clone(), stop.clone());
    let attacker4 = h.attacker4;
    threads.push(spawn_in(h.attacker.clone(), move || {
        let s = udp_socket(attacker4);
        paced(&st, FLOOD_RATE, |_| match s.send_to(b"flood", SocketAddr::new(pay4, FLOOD_PORT)) {
            Ok(_) => Tally::add(&tt.flood.sent),
            Err(_) => Tally::add(&tt.flood.failed),
        });
    }));
    // Denied: a scan, one datagram to each of ever-new ports from 8 addresses (ports 1024 and
    // up, never repeating a (source, port) within the run: each is a new denial).
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.attacker.clone(), move || {
        let socks: Vec<UdpSocket> = attacker_sources(SCAN_SOURCES).into_iter().map(udp_socket).collect();
        if scan_rate <= 0.0 {
            return;
        }
        paced(&st, scan_rate, |i| {
            let s = &socks[(i % SCAN_SOURCES as u64) as usize];
            let port = 1024 + ((i / SCAN_SOURCES as u64) % 64_000) as u16;
            match s.send_to(b"scan", SocketAddr::new(pay4, port)) {
                Ok(_) => Tally::add(&tt.scan.sent),
                Err(_) => Tally::add(&tt.scan.failed),
            }
        });
    }));
    // Denied: TCP from the world to 443.
    let (tt, st) = (t.clone(), stop.clone());
    threads.push(spawn_in(h.attacker.clone(), move || {
        paced(&st, ATTACK_SYN_RATE, |_| {
            Tally::add(&tt.attack_syn.sent);
            if denied_syn(SocketAddr::new(pay4, 443)) {
                Tally::add(&tt.attack_syn.ok);
            }
        });
    }));
    threads
}

// ---------------------------------------------------------------------------------------------
// The agent's view: status, metrics, events file

fn status(agent: &Agent) -> Result<Value> {
    let out = agent.cli(&["status", "-o", "json"]);
    ensure!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("status JSON")
}

fn counters(s: &Value) -> BTreeMap<String, u64> {
    s["counters"]
        .as_object()
        .map(|o| o.iter().filter_map(|(name, n)| Some((name.clone(), n.as_u64()?))).collect())
        .unwrap_or_default()
}

/// One scrape of `/metrics`: (name, labels as `k=v,...` sorted) -> value.
type Metrics = BTreeMap<(String, String), f64>;

fn scrape(ns: &Netns) -> Result<Metrics> {
    let raw = integration_tests::get_metrics(ns, METRICS_PORT)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).context("no metrics body")?;
    let mut m = Metrics::new();
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').context("bad sample line")?;
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => {
                let mut parts: Vec<String> = l
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| p.replace('"', ""))
                    .collect();
                parts.sort();
                (n.to_string(), parts.join(","))
            }
            None => (key.to_string(), String::new()),
        };
        m.insert((name, labels), value.parse().unwrap_or(f64::NAN));
    }
    Ok(m)
}

fn metric(m: &Metrics, name: &str, labels: &str) -> u64 {
    m.get(&(name.to_string(), labels.to_string())).copied().unwrap_or(0.0) as u64
}

/// Sum of `ztagent_event_packets_total` per verdict.
fn metric_event_packets(m: &Metrics) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ((name, labels), v) in m {
        if name == "ztagent_event_packets_total"
            && let Some(verdict) = labels.split(',').find_map(|l| l.strip_prefix("verdict="))
        {
            *out.entry(verdict.to_string()).or_default() += *v as u64;
        }
    }
    out
}

/// What the events file (and its rotations) holds.
#[derive(Debug, Default, PartialEq)]
struct EventFile {
    records: u64,
    missed: u64,
    /// Sum of `count` per verdict, per (verdict, reason), per (verdict, dport) of ours.
    by_verdict: BTreeMap<String, u64>,
    by_reason: BTreeMap<(String, String), u64>,
    by_port: BTreeMap<(String, u16), u64>,
}

fn read_events(path: &Path) -> Result<EventFile> {
    let mut files: Vec<PathBuf> = (1..=3).rev().map(|n| PathBuf::from(format!("{}.{n}", path.display()))).collect();
    files.push(path.to_path_buf());
    let mut ev = EventFile::default();
    for p in files.into_iter().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                // The writer may be in the middle of a line.
                continue;
            };
            if let Some(n) = v.get("missed").and_then(Value::as_u64) {
                ev.missed += n;
                continue;
            }
            ev.records += 1;
            let verdict = v["verdict"].as_str().unwrap_or("?").to_string();
            let count = v["count"].as_u64().unwrap_or(0);
            *ev.by_verdict.entry(verdict.clone()).or_default() += count;
            *ev.by_reason.entry((verdict.clone(), v["reason"].as_str().unwrap_or("?").to_string())).or_default() += count;
            if v["dst_segment"] == "payments" {
                *ev.by_port.entry((verdict, v["dport"].as_u64().unwrap_or(0) as u16)).or_default() += count;
            }
        }
    }
    Ok(ev)
}

// ---------------------------------------------------------------------------------------------
// The kernel maps, read from the agent's pins

fn open_map(pins: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(pins.join("maps").join(name)).with_context(|| format!("open pinned map {name}"))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

fn hash<K: aya::Pod, V: aya::Pod>(pins: &Path, name: &str) -> Result<BpfHashMap<MapData, K, V>> {
    BpfHashMap::try_from(open_map(pins, name)?).with_context(|| format!("{name} as a hash map"))
}

fn trie<K: aya::Pod, V: aya::Pod>(pins: &Path, name: &str) -> Result<LpmTrie<MapData, K, V>> {
    LpmTrie::try_from(open_map(pins, name)?).with_context(|| format!("{name} as an LPM trie"))
}

fn array<V: aya::Pod>(pins: &Path, name: &str) -> Result<Array<MapData, V>> {
    Array::try_from(open_map(pins, name)?).with_context(|| format!("{name} as an array"))
}

/// Entries of one policy slot, as `ztagent policy validate` counts a compiled policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SlotSize {
    hosts: usize,
    cidrs: usize,
    pairs: usize,
    ports: usize,
    limits: usize,
}

impl std::fmt::Display for SlotSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hosts, {} cidrs, {} pairs, {} ports, {} limits", self.hosts, self.cidrs, self.pairs, self.ports, self.limits)
    }
}

/// `ztagent policy validate FILE`: "... (3 segments, 4 rules, 2 hosts, 4 cidrs, 3 pairs, 3
/// profiles, 14 port entries, 1 rate limit)".
fn compiled_size(file: &Path) -> Result<SlotSize> {
    let out = Command::new(bin("ztagent")).args(["policy", "validate"]).arg(file).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "policy validate {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let inner = text.rsplit_once('(').and_then(|(_, r)| r.split_once(')')).map(|(i, _)| i).context("validate output")?;
    let mut s = SlotSize::default();
    for part in inner.split(", ") {
        let (n, what) = part.split_once(' ').context("validate output")?;
        let n: usize = n.parse().with_context(|| format!("validate output {text:?}"))?;
        match what {
            "hosts" | "host" => s.hosts = n,
            "cidrs" | "cidr" => s.cidrs = n,
            "pairs" | "pair" => s.pairs = n,
            "port entries" | "port entry" => s.ports = n,
            "rate limits" | "rate limit" => s.limits = n,
            _ => {}
        }
    }
    Ok(s)
}

struct PolicyMaps {
    active: Option<u32>,
    revision: u32,
    slots: [SlotSize; 2],
    /// Fingerprints of the limits of each slot.
    fingerprints: [Vec<u64>; 2],
}

fn read_policy_maps(pins: &Path) -> Result<PolicyMaps> {
    let active = array::<u32>(pins, maps::ACTIVE_SLOT)?.get(&0, 0)?;
    let active = matches!(active, 1 | 2).then(|| active - 1);
    let revision = match active {
        Some(s) => array::<SlotConfig>(pins, maps::SLOTS)?.get(&s, 0)?.revision,
        None => 0,
    };
    let mut slots = [SlotSize::default(); 2];
    for k in hash::<HostKey, SegmentInfo>(pins, maps::HOSTS)?.keys() {
        slots[k?.slot as usize & 1].hosts += 1;
    }
    for k in trie::<CidrData, SegmentInfo>(pins, maps::CIDRS)?.keys() {
        slots[u32::from_be_bytes(k?.data().slot) as usize & 1].cidrs += 1;
    }
    for k in hash::<PairKey, u32>(pins, maps::PAIRS)?.keys() {
        slots[k?.slot as usize & 1].pairs += 1;
    }
    for k in trie::<PortData, Verdict>(pins, maps::PORTS)?.keys() {
        slots[(u32::from_be_bytes(k?.data().profile) >> PROFILE_SLOT_SHIFT) as usize & 1].ports += 1;
    }
    let limits = array::<LimitConfig>(pins, maps::LIMITS)?;
    let mut fingerprints = [Vec::new(), Vec::new()];
    for slot in 0..2u32 {
        for i in slot * MAX_LIMITS..(slot + 1) * MAX_LIMITS {
            let c = limits.get(&i, 0)?;
            if c.fingerprint == 0 {
                break;
            }
            fingerprints[slot as usize].push(c.fingerprint);
            slots[slot as usize].limits += 1;
        }
    }
    Ok(PolicyMaps { active, revision, slots, fingerprints })
}

/// Conntrack, classified at one moment.
#[derive(Debug, Default)]
struct CtAudit {
    total: u64,
    /// (protocol, live?) -> entries.
    by: BTreeMap<(&'static str, bool), u64>,
    /// TCP entries without the closing flag: their timeout is the established one (6 h).
    tcp_established: u64,
    /// The largest last_seen of a live entry (CLOCK_MONOTONIC ns).
    newest_live: u64,
    now: u64,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// The datapath's timeouts (agent-common), by protocol and flags.
fn ct_timeout(k: &CtKey, v: &CtValue) -> u64 {
    match k.proto {
        PROTO_TCP if v.flags & CT_F_CLOSING != 0 => CT_TIMEOUT_TCP_CLOSING_NS,
        PROTO_TCP => CT_TIMEOUT_TCP_NS,
        PROTO_ICMP => CT_TIMEOUT_ICMP_NS,
        _ => CT_TIMEOUT_UDP_NS,
    }
}

fn audit_conntrack(pins: &Path) -> Result<CtAudit> {
    let ct = hash::<CtKey, CtValue>(pins, maps::CONNTRACK)?;
    let mut a = CtAudit { now: mono_ns(), ..Default::default() };
    for entry in ct.iter() {
        let (k, v) = entry?;
        a.total += 1;
        // `now - last_seen > timeout` is the datapath's own test (`conntrack::expired`).
        let live = a.now.saturating_sub(v.last_seen) <= ct_timeout(&k, &v);
        *a.by.entry((proto_name(k.proto), live)).or_default() += 1;
        if k.proto == PROTO_TCP && v.flags & CT_F_CLOSING == 0 {
            a.tcp_established += 1;
        }
        if live {
            a.newest_live = a.newest_live.max(v.last_seen);
        }
    }
    Ok(a)
}

impl CtAudit {
    fn count(&self, proto: &str, live: bool) -> u64 {
        self.by.get(&(proto, live)).copied().unwrap_or(0)
    }
    fn live(&self) -> u64 {
        self.by.iter().filter(|((_, l), _)| *l).map(|(_, n)| n).sum()
    }
}

fn count_keys<K: aya::Pod, V: aya::Pod>(pins: &Path, name: &str) -> Result<u64> {
    Ok(hash::<K, V>(pins, name)?.keys().filter(Result::is_ok).count() as u64)
}

fn max_entries(pins: &Path, name: &str) -> Result<u64> {
    let data = MapData::from_pin(pins.join("maps").join(name))?;
    Ok(data.info()?.max_entries().into())
}

// ---------------------------------------------------------------------------------------------
// Samples

#[derive(Clone, Debug, Default)]
struct Sample {
    t: f64,
    rss_kb: i64,
    revision: u64,
    counters: BTreeMap<String, u64>,
    ct: u64,
    denied: u64,
    agg: u64,
    delivered: u64,
}

fn sample(agent: &Agent, ns: &Netns, t0: Instant) -> Result<Sample> {
    let s = status(agent)?;
    let m = scrape(ns)?;
    Ok(Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kb: rss_kb(agent.pid()).context("the agent is gone")?,
        revision: s["revision"].as_u64().unwrap_or(0),
        counters: counters(&s),
        ct: metric(&m, "ztagent_map_entries", "map=ZT_CT"),
        denied: metric(&m, "ztagent_map_entries", "map=ZT_DENIED"),
        agg: metric(&m, "ztagent_map_entries", "map=ZT_AGG"),
        delivered: metric(&m, "ztagent_events_delivered_total", ""),
    })
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort();
    if v.is_empty() { 0 } else { v[v.len() / 2] }
}

/// Least-squares slope of RSS over time, kB/s.
fn slope(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, mr) = (samples.iter().map(|s| s.t).sum::<f64>() / n, samples.iter().map(|s| s.rss_kb as f64).sum::<f64>() / n);
    let cov: f64 = samples.iter().map(|s| (s.t - mt) * (s.rss_kb as f64 - mr)).sum();
    let var: f64 = samples.iter().map(|s| (s.t - mt).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

// ---------------------------------------------------------------------------------------------
// Checks

struct Checks {
    results: Vec<(bool, String)>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.results.push((ok, what.into()));
    }
    fn passed(&self) -> bool {
        self.results.iter().all(|(ok, _)| *ok)
    }
}

fn mb(kb: i64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------

fn run(o: &Options) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "ztsoak creates namespaces and loads BPF programs: run it as root");
    let lan = Lan::new(&[
        ("10.20.2.10", "fd20:2::10"), // payments
        ("10.20.1.2", "fd20:1::2"),   // frontend
        ("10.20.3.2", "fd20:3::2"),   // batch
        ("10.20.9.2", "fd20:9::2"),   // attacker (world)
    ]);
    let (pay, front, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    for a in attacker_sources(SCAN_SOURCES) {
        attacker.ns.ip(&["addr", "add", &format!("{a}/16"), "dev", &attacker.iface]);
    }
    let dir = TempDir::new();
    let policy_a = dir.file("policy-a.yaml", POLICY_A);
    let policy_b = dir.file("policy-b.yaml", &policy_b());
    let (size_a, size_b) = (compiled_size(&policy_a)?, compiled_size(&policy_b)?);
    let events_path = dir.0.join("events.jsonl");
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let history = EVENTS_HISTORY.to_string();
    let flags = ["--metrics-addr", &metrics_addr, "--events-file", events_path.to_str().unwrap(), "--events-history", &history];
    let agent = Agent::start_with(&pay.ns, &[&pay.iface], Some(&policy_a), &flags);
    let mut udp_ports = vec![53, TOGGLE_PORT, FLOOD_PORT];
    udp_ports.extend((0..BATCH_PORTS).map(|i| 7000 + i));
    let servers = Servers::start(&pay.ns, &[443, 8081], &udp_ports);
    let warmup = (o.seconds / 6).clamp(3, 10);
    eprintln!(
        "ztsoak: {} s of traffic with a push every {} s, warm-up {warmup} s, then wait {} s; agent pid {}, pins {}",
        o.seconds,
        o.push_every,
        if o.wait_udp { "61 (UDP timeout)" } else { "11 (closing-TCP timeout)" },
        agent.pid(),
        agent.pins.display()
    );

    let hosts = Hosts {
        pay4: pay.v4,
        pay6: pay.v6,
        front: front.ns.path(),
        batch: batch.ns.path(),
        attacker: attacker.ns.path(),
        batch4: batch.v4,
        attacker4: attacker.v4,
    };
    let tallies = Arc::new(Tallies::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut samples = vec![sample(&agent, &pay.ns, t0)?];
    let threads = start_traffic(&hosts, &tallies, &stop, o.scan_rate);
    let ping = Command::new("nsenter")
        .arg(format!("--net={}", front.ns.path()))
        .args(["--", "ping", "-q", "-n", "-i", "0.2", &pay.v4.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn ping")?;
    let mut children = Children(vec![ping]);

    // The run: a push every `push_every` seconds (B, A, B, ...), a sample every second.
    let mut pushes = 0u64;
    let mut push_failures = Vec::new();
    let mut push_ms: Vec<f64> = Vec::new();
    let mut current = policy_a.clone();
    let mut previous: Option<PathBuf> = None;
    for tick in 1..=o.seconds {
        let at = t0 + Duration::from_secs(tick);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if o.push_every > 0 && tick % o.push_every == 0 {
            let next = if pushes.is_multiple_of(2) { &policy_b } else { &policy_a };
            let t = Instant::now();
            let out = agent.cli(&["policy", "push", next.to_str().unwrap()]);
            push_ms.push(t.elapsed().as_secs_f64() * 1e3);
            pushes += 1;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() || !text.starts_with(&format!("revision {}:", pushes + 1)) {
                push_failures.push(format!("push {pushes}: {text}{}", String::from_utf8_lossy(&out.stderr)));
            }
            previous = Some(std::mem::replace(&mut current, next.clone()));
        }
        let s = sample(&agent, &pay.ns, t0)?;
        if tick % 10 == 0 || tick == o.seconds {
            eprintln!(
                "  t={:>4.0}s rev {:>3} rss {:>7} ct {:>6} denied {:>6} agg {:>3} events {:>8}",
                s.t,
                s.revision,
                mb(s.rss_kb),
                s.ct,
                s.denied,
                s.agg,
                s.delivered
            );
        }
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a traffic generator panicked"))?;
    }
    drop(std::mem::replace(&mut children, Children(Vec::new())));
    let t_end = mono_ns();
    let t_end_run = t0.elapsed().as_secs_f64();
    let traffic_samples = samples.len();

    // --- after the traffic: the timeouts pass (the sweep reports every aggregate's last packets
    // meanwhile: once it has been idle for a second).
    let tcp_wait = Duration::from_nanos(CT_TIMEOUT_TCP_CLOSING_NS) + Duration::from_millis(1500);
    let udp_wait = Duration::from_nanos(CT_TIMEOUT_UDP_NS) + Duration::from_millis(1500);
    let wait = if o.wait_udp { udp_wait } else { tcp_wait };
    let waited_until = t_end + wait.as_nanos() as u64;
    eprintln!("ztsoak: traffic stopped; waiting {:.0} s past it for the conntrack timeouts", wait.as_secs_f64());
    while mono_ns() < waited_until {
        samples.push(sample(&agent, &pay.ns, t0)?);
        std::thread::sleep(Duration::from_millis(1000).min(Duration::from_nanos(waited_until.saturating_sub(mono_ns()))));
    }
    let end = sample(&agent, &pay.ns, t0)?;
    samples.push(end.clone());

    // --- the audit
    let pins = agent.pins.clone();
    let ct = audit_conntrack(&pins)?;
    let pm = read_policy_maps(&pins)?;
    let denied_entries = count_keys::<DenyKey, DenyValue>(&pins, maps::DENIED)?;
    let agg_entries = count_keys::<AggKey, AggValue>(&pins, maps::AGG)?;
    let frag_entries = count_keys::<FragKey, u64>(&pins, maps::FRAGS)?;
    let addr_bucket_entries = count_keys::<BucketKey, u64>(&pins, maps::ADDR_BUCKETS)?;
    let (ct_cap, denied_cap, agg_cap) =
        (max_entries(&pins, maps::CONNTRACK)?, max_entries(&pins, maps::DENIED)?, max_entries(&pins, maps::AGG)?);
    let (st, ev, m) = settle(&agent, &pay.ns, &events_path, 10)?;
    let c = counters(&st);
    let k = |name: &str| c.get(name).copied().unwrap_or(0);
    let limit = st["limits"].as_array().and_then(|l| l.iter().find(|l| l["name"] == LIMIT_NAME)).cloned().unwrap_or(Value::Null);
    let lu = |f: &str| limit[f].as_u64().unwrap_or(0);

    let t = &*tallies;
    let g = Tally::get;
    let mut checks = Checks { results: Vec::new() };

    // Traffic did what it was meant to.
    checks.check(g(&t.tcp.failed) == 0, format!("allowed TCP: {} of {} connections completed", g(&t.tcp.ok), g(&t.tcp.sent)));
    checks.check(
        g(&t.udp_flows.ok) * 100 >= g(&t.udp_flows.sent) * 99,
        format!("allowed UDP: {} of {} new flows echoed (>= 99%)", g(&t.udp_flows.ok), g(&t.udp_flows.sent)),
    );
    checks.check(
        g(&t.udp_long.ok) * 100 >= g(&t.udp_long.sent) * 99,
        format!("allowed UDP: {} of {} datagrams of {UDP_LONG_FLOWS} long-lived flows echoed (>= 99%)", g(&t.udp_long.ok), g(&t.udp_long.sent)),
    );
    checks.check(
        g(&t.attack_syn.ok) == 0 && g(&t.admin_syn.ok) == 0 && servers.udp_count(FLOOD_PORT) == 0,
        format!(
            "denied: 0 of {} world SYNs, 0 of {} 8081 SYNs, {} of {} flood datagrams got through",
            g(&t.attack_syn.sent),
            g(&t.admin_syn.sent),
            servers.udp_count(FLOOD_PORT),
            g(&t.flood.sent)
        ),
    );
    let batch_received: u64 = (0..BATCH_PORTS).map(|i| servers.udp_count(7000 + i)).sum();
    let (passed, dropped) = (lu("packets_passed"), lu("packets_dropped"));
    let expected = LIMIT_BURST + LIMIT_RATE * t_end_run;
    // Tokens the sender could not take (it paused longer than the bucket takes to fill) are
    // not the limit's: the least it must have admitted leaves that time out.
    let idle = t.batch_idle_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let least = LIMIT_BURST + LIMIT_RATE * (t_end_run - idle).max(0.0);
    checks.check(
        g(&t.batch.failed) == 0 && passed + dropped == g(&t.batch.sent) && batch_received == passed,
        format!(
            "rate limit {LIMIT_NAME}: batch sent {} = passed {passed} + dropped {dropped}; payments received {batch_received}",
            g(&t.batch.sent)
        ),
    );
    checks.check(
        dropped == k("drop_rate_limit") && (0.9 * least..=1.1 * expected).contains(&(passed as f64)),
        format!(
            "rate limit kept across {pushes} pushes: admitted {passed} (burst + rate x {t_end_run:.1} s = {expected:.0}, +-10%; \
             the sender idle {idle:.2} s beyond the bucket's fill time: at least {least:.0} -10%), its drops = drop_rate_limit {}",
            k("drop_rate_limit")
        ),
    );

    // Pushes.
    checks.check(
        push_failures.is_empty() && st["revision"].as_u64() == Some(1 + pushes) && pm.revision as u64 == 1 + pushes,
        format!("pushes: {pushes} pushed, revision {} (want {}); failures: {push_failures:?}", st["revision"], 1 + pushes),
    );

    // Policy maps: the active slot holds the current policy, the other the previous one.
    let size_of = |p: &Path| if p == policy_a.as_path() { size_a } else { size_b };
    let want_active = size_of(&current);
    let want_inactive = previous.as_deref().map_or_else(SlotSize::default, size_of);
    let (act, inact) = match pm.active {
        Some(s) => (pm.slots[s as usize], pm.slots[1 - s as usize]),
        None => (SlotSize::default(), SlotSize::default()),
    };
    checks.check(
        act == want_active && inact == want_inactive,
        format!("policy maps: active slot {act} (want {want_active}); inactive slot {inact} (want {want_inactive})"),
    );
    let fps: HashSet<u64> = pm.fingerprints.iter().flatten().copied().collect();
    checks.check(fps.len() == 1, format!("one rate-limit fingerprint in both slots: {:?}", pm.fingerprints));

    // Conntrack.
    let since = |secs: u64| ct.now.saturating_sub(secs * 1_000_000_000 + 1_500_000_000);
    let live_udp_bound = 2
        * (t.udp_flows.flows_since(since(60))
            + t.udp_long.flows_since(since(60)).min(UDP_LONG_FLOWS as u64)
            + t.toggle.flows_since(since(60))
            + t.batch.flows_since(since(60)));
    let live_tcp_bound = 2 * t.tcp.flows_since(since(10));
    let live_icmp_bound = if t_end >= since(30) { 2 } else { 0 };
    // Every pair of conntrack entries is created by a packet that starts an allowed flow.
    let flows_created = k("pass_policy");
    checks.check(
        ct.tcp_established == 0,
        format!("conntrack: no TCP entry left with the established timeout (6 h): {} of {} TCP entries", ct.tcp_established, ct.count("tcp", true) + ct.count("tcp", false)),
    );
    checks.check(
        ct.count("tcp", true) <= live_tcp_bound
            && ct.count("udp", true) <= live_udp_bound
            && ct.count("icmp", true) <= live_icmp_bound
            && ct.count("other", true) == 0,
        format!(
            "conntrack: live entries tcp {} (<= {live_tcp_bound}), udp {} (<= {live_udp_bound}), icmp {} (<= {live_icmp_bound}), other {}",
            ct.count("tcp", true),
            ct.count("udp", true),
            ct.count("icmp", true),
            ct.count("other", true)
        ),
    );
    checks.check(
        ct.newest_live == 0 || ct.newest_live <= t_end + 1_000_000_000,
        if ct.newest_live == 0 {
            "conntrack: no live entry left".to_string()
        } else {
            format!(
                "conntrack: no live entry was refreshed after the traffic stopped (the newest {:.1} s before it stopped)",
                (t_end as f64 - ct.newest_live as f64) / 1e9
            )
        },
    );
    checks.check(
        ct.total <= 2 * flows_created && ct.total <= ct_cap,
        format!("conntrack: {} entries <= 2 x {flows_created} flows created, <= capacity {ct_cap}", ct.total),
    );
    // Denial cache and aggregation: no more than the distinct keys denied (the scan's, the
    // flood's, the SYNs', the toggled flow's and its echoes', a few of the LAN's chatter).
    let denied_keys = g(&t.scan.sent) + 16;
    checks.check(
        denied_entries <= denied_keys.min(denied_cap),
        format!("ZT_DENIED: {denied_entries} entries <= {} (distinct denied keys sent + 16, capacity {denied_cap})", denied_keys),
    );
    checks.check(
        agg_entries <= BATCH_PORTS as u64 && agg_entries <= agg_cap,
        format!("ZT_AGG: {agg_entries} entries <= {BATCH_PORTS} rate-limited flows (capacity {agg_cap})"),
    );
    checks.check(frag_entries == 0 && addr_bucket_entries == 0, format!("ZT_FRAGS {frag_entries}, ZT_ADDR_BUCKETS {addr_bucket_entries}: none used"));

    // Events.
    let lost = k("events_lost");
    let acct = accounting(&c, &ev);
    for (verdict, events, kernel) in &acct {
        if lost == 0 && ev.missed == 0 {
            checks.check(events == kernel, format!("events: {verdict} {events} = kernel {kernel}"));
        } else {
            checks.check(events <= kernel, format!("events: {verdict} {events} <= kernel {kernel} ({lost} lost, {} missed)", ev.missed));
        }
    }
    checks.check(lost == 0 && ev.missed == 0, format!("events: {lost} lost in the kernel, {} missed by the file writer", ev.missed));
    let from_metrics = metric_event_packets(&m);
    checks.check(
        from_metrics == ev.by_verdict && metric(&m, "ztagent_event_records_missed_total", "") == 0,
        format!("events: metrics' event packets {from_metrics:?} = the file's {:?}", ev.by_verdict),
    );

    // Memory. The agent's bounded event buffers (history and broadcast ring) fill as events
    // are delivered: the warm-up lasts until they are full (if that happens during the
    // traffic), so that filling bounded buffers is not taken for growth.
    let full = EVENT_BROADCAST + EVENTS_HISTORY as u64;
    let filled = samples[..traffic_samples].iter().find(|s| s.delivered >= full).map_or(0.0, |s| s.t);
    let warm_t = (warmup as f64).max(filled);
    let during: Vec<Sample> = samples[..traffic_samples].iter().filter(|s| s.t >= warm_t).cloned().collect();
    let rss_warm = samples.iter().find(|s| s.t >= warm_t).map_or(0, |s| s.rss_kb);
    let q = (during.len() / 4).max(1);
    let first_q = median(during[..q].iter().map(|s| s.rss_kb).collect());
    let last_q = median(during[during.len() - q..].iter().map(|s| s.rss_kb).collect());
    let peak = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let slope_kb = slope(&during);
    checks.check(
        end.rss_kb <= rss_warm + RSS_END_SLACK_KB,
        format!("memory: RSS at the end {} <= after warm-up {} + {}", mb(end.rss_kb), mb(rss_warm), mb(RSS_END_SLACK_KB)),
    );
    checks.check(
        last_q - first_q <= RSS_TREND_KB,
        format!(
            "memory: no upward trend: last-quarter median {} - first-quarter median {} = {} <= {} (slope {slope_kb:.1} kB/s)",
            mb(last_q),
            mb(first_q),
            mb(last_q - first_q),
            mb(RSS_TREND_KB)
        ),
    );

    // --- the report
    let mut r = String::new();
    let _ = writeln!(r, "\n== ztsoak: {} s of traffic, {pushes} pushes (revision {}), {} CPUs ==", o.seconds, st["revision"], std::thread::available_parallelism().map_or(1, |n| n.get()));
    let _ = writeln!(r, "{:<34} {:>9} {:>11} {:>9}", "traffic", "sent", "ok", "failed");
    let rows: [(&str, &Tally); 9] = [
        ("frontend tcp/443 connections", &t.tcp),
        ("frontend udp/53 new flows", &t.udp_flows),
        ("frontend udp/53 long-lived (dgrams)", &t.udp_long),
        ("frontend udp/9050 toggled (echoes)", &t.toggle),
        ("frontend tcp/8081 (deny rule)", &t.admin_syn),
        ("batch udp/7000-7009 (echoes)", &t.batch),
        ("attacker udp/9999 flood", &t.flood),
        ("attacker udp scan (new keys)", &t.scan),
        ("attacker tcp/443 SYNs", &t.attack_syn),
    ];
    for (name, tl) in rows {
        let _ = writeln!(r, "{name:<34} {:>9} {:>11} {:>9}", g(&tl.sent), g(&tl.ok), g(&tl.failed));
    }
    let _ = writeln!(r, "{:<34} {:>9}", "frontend ping (icmp echo)", "1 stream");
    let _ = writeln!(r, "\n{:<22} {:>12}", "kernel counter", "packets");
    for (name, v) in &c {
        let _ = writeln!(r, "{name:<22} {v:>12}");
    }
    let _ = writeln!(r, "\n{:<14} {:>12} {:>12} {:>10}", "events file", "count sum", "kernel", "diff");
    for (verdict, events, kernel) in &acct {
        let _ = writeln!(r, "{verdict:<14} {events:>12} {kernel:>12} {:>10}", *events as i64 - *kernel as i64);
    }
    let _ = writeln!(r, "records {}, missed {}, events_lost {lost}, delivered {}", ev.records, ev.missed, metric(&m, "ztagent_events_delivered_total", ""));
    let _ = writeln!(r, "by reason: {:?}", ev.by_reason);
    let port = |v: &str, p: u16| ev.by_port.get(&(v.to_string(), p)).copied().unwrap_or(0);
    let _ = writeln!(
        r,
        "denied per flow: flood udp/{FLOOD_PORT} {} of {} sent; tcp/8081 {} (SYNs {}); world tcp/443 {} (SYNs {}); toggled udp/{TOGGLE_PORT} {}",
        port("denied", FLOOD_PORT),
        g(&t.flood.sent),
        port("denied", 8081),
        g(&t.admin_syn.sent),
        port("denied", 443),
        g(&t.attack_syn.sent),
        port("denied", TOGGLE_PORT),
    );
    let _ = writeln!(
        r,
        "\nRSS: start {}, after warm-up ({warm_t:.0} s: event buffers full) {}, peak {}, end {}; first/last quarter medians {} / {}; slope {slope_kb:.1} kB/s",
        mb(samples[0].rss_kb),
        mb(rss_warm),
        mb(peak),
        mb(end.rss_kb),
        mb(first_q),
        mb(last_q)
    );
    let push_med = {
        let mut p = push_ms.clone();
        p.sort_by(f64::total_cmp);
        p.get(p.len() / 2).copied().unwrap_or(0.0)
    };
    let _ = writeln!(r, "pushes: {pushes}, median {push_med:.1} ms (CLI round trip)");
    let peak_ct = samples.iter().map(|s| s.ct).max().unwrap_or(0);
    let peak_denied = samples.iter().map(|s| s.denied).max().unwrap_or(0);
    let _ = writeln!(
        r,
        "ZT_CT {} entries at the end ({} live: tcp {}, udp {}, icmp {}; {} expired: tcp {}, udp {}, icmp {}), peak {peak_ct}, capacity {ct_cap}",
        ct.total,
        ct.live(),
        ct.count("tcp", true),
        ct.count("udp", true),
        ct.count("icmp", true),
        ct.total - ct.live(),
        ct.count("tcp", false),
        ct.count("udp", false),
        ct.count("icmp", false),
    );
    let _ = writeln!(
        r,
        "ZT_DENIED {denied_entries} (peak {peak_denied}, cap {denied_cap}), ZT_AGG {agg_entries}, ZT_FRAGS {frag_entries}, ZT_ADDR_BUCKETS {addr_bucket_entries}; \
         policy slots: active {act}, inactive {inact}"
    );
    let _ = writeln!(r, "\nchecks:");
    for (ok, what) in &checks.results {
        let _ = writeln!(r, "  [{}] {what}", if *ok { " ok " } else { "FAIL" });
    }
    println!("{r}");
    if let Some(path) = &o.csv {
        let mut csv = String::from("t,rss_kb,revision,ct,denied,agg,delivered,pass_policy,drop_default,drop_rule,drop_revoked,drop_rate_limit,events_lost\n");
        for s in &samples {
            let c = |n: &str| s.counters.get(n).copied().unwrap_or(0);
            let _ = writeln!(
                csv,
                "{:.1},{},{},{},{},{},{},{},{},{},{},{},{}",
                s.t,
                s.rss_kb,
                s.revision,
                s.ct,
                s.denied,
                s.agg,
                s.delivered,
                c("pass_policy"),
                c("drop_default"),
                c("drop_rule"),
                c("drop_revoked"),
                c("drop_rate_limit"),
                c("events_lost")
            );
        }
        std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))?;
    }
    drop(servers);
    if !checks.passed() {
        let log = agent.log();
        let problems: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        eprintln!(
            "ztsoak: FAILED; the agent logged {} warnings and errors{}",
            problems.len(),
            problems.iter().rev().take(10).rev().map(|l| format!("\n  {l}")).collect::<String>()
        );
    }
    Ok(checks.passed())
}

/// The final status, events file and scrape: retried until the kernel's counters and the file
/// agree, or stop moving (the LAN's own chatter, IGMP reports, may arrive at any moment).
fn settle(agent: &Agent, ns: &Netns, events: &Path, tries: usize) -> Result<(Value, EventFile, Metrics)> {
    let mut last: Option<(BTreeMap<String, u64>, EventFile)> = None;
    for _ in 0..tries {
        let s = status(agent)?;
        let ev = read_events(events)?;
        let m = scrape(ns)?;
        let c = counters(&s);
        let done = accounting(&c, &ev).iter().all(|(_, e, k)| e == k);
        let stable = last.as_ref().is_some_and(|(c0, ev0)| *c0 == c && *ev0 == ev);
        if done || stable {
            return Ok((s, ev, m));
        }
        last = Some((c, ev));
        std::thread::sleep(Duration::from_millis(1000));
    }
    Ok((status(agent)?, read_events(events)?, scrape(ns)?))
}

/// (verdict, sum of the events' counts, the kernel counters that verdict stands for).
fn accounting(c: &BTreeMap<String, u64>, ev: &EventFile) -> Vec<(&'static str, u64, u64)> {
    let k = |names: &[&str]| names.iter().map(|n| c.get(*n).copied().unwrap_or(0)).sum::<u64>();
    let e = |v: &str| ev.by_verdict.get(v).copied().unwrap_or(0);
    vec![
        ("allowed", e("allowed"), k(&["pass_policy"])),
        (
            "denied",
            e("denied"),
            k(&["drop_default", "drop_rule", "drop_revoked", "drop_fragment", "drop_malformed", "drop_no_policy"]),
        ),
        ("rate-limited", e("rate-limited"), k(&["drop_rate_limit"])),
    ]
}
