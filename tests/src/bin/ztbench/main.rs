//! `ztbench`: the per-packet cost of the XDP ingress program, measured with BPF_PROG_TEST_RUN.
//!
//! For policies of 10, 1,000 and 100,000 rules over 1,000 and 100,000 CIDRs, the real program
//! judges four hand-built frames, each run `repeat` times in the kernel:
//!
//! - *empty*: the empty XDP program of the same object (`zt_baseline`) on the established
//!   frame: the fixed cost of a test run, against which every cost is given as a ratio;
//! - *established*: an ACK of an allowed client -> server:443/tcp flow (conntrack hit);
//! - *denied*: an ACK from a segment that may reach the server, but not on 443: conntrack miss,
//!   both identities (host hash miss + CIDR trie), pair hit, port miss, default deny: the
//!   longest path of a TCP packet;
//! - *new flow*: the allowed SYN itself: policy path + two conntrack inserts.
//!
//! Next to them, two floors in the same object: `zt_reference` (parse + one conntrack lookup)
//! on the established frame and `zt_denied_floor` (parse, conntrack miss, one denial-cache
//! lookup) on the denied one; the per-packet targets are ratios to these.
//!
//! And the ingress program of node mode's guarded (pod) interfaces, `zt_ingress_guarded`, on
//! the established frame (its source allowed for the test run's interface): what anti-spoofing
//! adds to a packet. The plain program, which every other interface runs, has no part of it.
//!
//! The frames are interleaved (empty, established, denied, new flow, empty, ...) and each cost
//! is the median over several rounds; ratios are taken within a round, then their median, so
//! that a noisy neighbour slowing one round down does not bias them. Every run checks the
//! program's verdict, so the benchmark also proves the frames are judged as intended.
//!
//! With `--breakdown`, more frames, each skipping part of the denied path, show what each
//! part costs.
//!
//! Then events (see [`event_cost`] and [`event_throughput`]):
//!
//! - *what an event costs a packet*: the allowed SYN and the first packet of a denied flow,
//!   each measured while the ring buffer has room (the event is written) and while it is full
//!   (the event is lost early), next to a denied repeat packet (aggregated away, no event);
//! - *events per second into the agent without loss*: the real daemon (`ztagent run
//!   --events-file --metrics-addr`) in a network namespace; this process test-runs its own copy
//!   of the XDP program on the daemon's pinned maps with the SYN of an allowed flow, so every
//!   run puts one event in the daemon's ring buffer, which the daemon reads, names and appends
//!   to its JSON-lines file. The producer is paced by what the file holds, so nothing may be
//!   lost; then the same number of events is sent unpaced, to show what is lost and where.
//!   Target: at least 500,000 events/s without loss.
//!
//! This process's own ring buffer has no reader, so it is full after the first ~47,000 events:
//! the table's *new flow* and *denied, first packet* are measured with their events lost
//! (which the event section shows costs ~10 ns less than writing them).
//!
//! Last, the comparative benchmark on live traffic (see [`compare`]); `--compare` runs only it.
//!
//! Usage: `ztbench [--quick] [--check] [--breakdown] [--out PATH] [--runs N] [--repeat N]
//! [--events N] [--compare] [--rounds N] [--json PATH]` (as root; see `--help`).
mod compare;
mod txring;

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use agent_common::{ACTION_ALLOW, ACTION_DENY, Event, PROTO_TCP, counter, maps, programs};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    maps::{MapData, RingBuf},
    programs::{Program, TestRun, TestRunOptions, Xdp, XdpMode},
};
mod fleet;

use integration_tests::{Agent, Lan, Netns, TempDir};

mod inventory;
mod k8s;
mod parse;
use ztagent::{
    kernel::datapath::{self, Datapath, Limits, PinLayout},
    kernel::mapwriter::MapWriter,
    policy::{
        self, Action, BucketSpec, CompiledPolicy, LimitScope, Mode, Per, Policy, PortSpec, Proto, RateLimit, Rule,
        SegRef, Segment,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// CIDRs per segment: 10k segments for 100k CIDRs, a plausible ratio for a large estate.
const CIDRS_PER_SEGMENT: usize = 10;
/// Segments with a fixed role; random rules use only the others, so the measured paths are
/// exactly the ones described at the top.
const SEG_CLIENT: usize = 0;
const SEG_SERVER: usize = 1;
const SEG_DENIED: usize = 2;
const SEG_MONITORING: usize = 3;
const FIXED_SEGMENTS: usize = 4;
/// Rules every policy holds (counted in its size): client -> server 443/tcp, the denied
/// segment -> server 5432/tcp (so its pair exists, but 443 is not in it), * -> monitoring.
const FIXED_RULES: usize = 3;

/// Targets from the issues. Per-packet costs are ratios to the in-bench floors of the same
/// run (issue 11 restated them so: an absolute bound below one map lookup cannot hold): an
/// established packet against `zt_reference` (parse + one conntrack lookup), a repeat-denied
/// packet against `zt_denied_floor` (parse, conntrack miss, one denial-cache lookup). A loop
/// over rules would make 100,000 rules cost thousands of times 10 rules; a lookup-based
/// datapath stays flat up to noise and cache effects, hence the 1.5 allowance for "does not
/// grow".
const MAX_ESTABLISHED_VS_REFERENCE: f64 = 1.3;
const MAX_DENIED_VS_FLOOR: f64 = 1.2;
const MAX_CIDR_GROWTH: f64 = 2.0;
const MAX_RULE_GROWTH: f64 = 1.5;
/// A rate-limited allowed packet costs at most this much more than the same packet unlimited.
const MAX_LIMIT_OVERHEAD: f64 = 1.5;

/// Set by SIGINT/SIGTERM; checked between runs so the pins are still removed on Ctrl-C.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Options {
    quick: bool,
    check: bool,
    breakdown: bool,
    out: Option<PathBuf>,
    runs: usize,
    repeat: u32,
    /// Events per throughput run (0: no throughput runs).
    events: u64,
    /// Only the policy-input section (see `parse`), on a policy of this many MB.
    parse_only: bool,
    parse_mb: usize,
    /// Only the comparative benchmark (live traffic, see `compare`).
    compare_only: bool,
    /// Rounds of the comparative benchmark.
    rounds: usize,
    /// Where the comparative benchmark's results also go, as JSON.
    json: Option<PathBuf>,
    /// Only the fleet section (push-to-enforced latency over etcd).
    fleet_only: bool,
    /// Only the per-packet table and the rate-limit overhead (BPF_PROG_TEST_RUN).
    packets_only: bool,
    /// Only the memory of the inventory and the alerts' baseline.
    inventory_only: bool,
    k8s_only: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        quick: false,
        check: false,
        breakdown: false,
        out: None,
        runs: 0,
        repeat: 0,
        events: 0,
        parse_only: false,
        parse_mb: 0,
        compare_only: false,
        rounds: 0,
        json: None,
        fleet_only: false,
        packets_only: false,
        inventory_only: false,
        k8s_only: false,
    };
    let (mut runs, mut repeat, mut events, mut parse_mb, mut rounds) = (None, None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--check" => o.check = true,
            "--breakdown" => o.breakdown = true,
            "--compare" => o.compare_only = true,
            "--json" => o.json = Some(value("--json")?.into()),
            "--rounds" => rounds = Some(value("--rounds")?.parse().context("--rounds: not a number")?),
            "--fleet" => o.fleet_only = true,
            "--packets" => o.packets_only = true,
            "--inventory" => o.inventory_only = true,
            "--k8s" => o.k8s_only = true,
            "--out" => o.out = Some(value("--out")?.into()),
            "--runs" => runs = Some(value("--runs")?.parse().context("--runs: not a number")?),
            "--repeat" => repeat = Some(value("--repeat")?.parse().context("--repeat: not a number")?),
            "--events" => events = Some(value("--events")?.parse().context("--events: not a number")?),
            "--parse" => o.parse_only = true,
            "--parse-mb" => parse_mb = Some(value("--parse-mb")?.parse().context("--parse-mb: not a number")?),
            "-h" | "--help" => {
                println!(
                    "usage: ztbench [--quick] [--check] [--breakdown] [--fleet] [--packets] [--inventory] [--k8s] [--out PATH] [--runs N] [--repeat N] [--events N]\n\
                     \x20              [--parse] [--parse-mb N] [--compare] [--rounds N] [--json PATH]\n\
                     --compare    only the comparative benchmark (live traffic: ztagent, XDP drop-all,\n\
                     \x20            nftables netdev ingress and inet input; also part of the default run)\n\
                     --rounds N   rounds of the comparative benchmark (default 5, quick 3)\n\
                     --json PATH  also write the comparative benchmark's results as JSON\n\
                     --quick      only 10 and 1,000 rules over 1,000 CIDRs, fewer repeats\n\
                     --check      exit 1 if a target fails\n\
                     --breakdown  also measure frames that take part of the denied path\n\
                     --fleet      only the fleet section: push-to-enforced latency over etcd\n\
                     --packets    only the per-packet table (with the guarded ingress and the rate-limit line)\n\
                     --inventory  only the memory of the inventory and the alerts' baseline (100,000 flows)\n\
                     --k8s        only the Kubernetes section: `ztagent k8s translate` of 1,000 pods, 200 policies\n\
                     --out        also write the report (markdown) to PATH\n\
                     --runs N     rounds per policy (median taken; default 11, quick 7)\n\
                     --repeat N   runs of each frame per round (default 200,000, quick 50,000)\n\
                     --events N   events per throughput run through the real agent (default\n\
                     \x20            1,000,000, quick 200,000; 0: skip the throughput runs)\n\
                     --parse      only the policy-input section (validate and push, YAML and JSON)\n\
                     --parse-mb N the size of its policy in MB (default 20, quick 5)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    o.runs = runs.unwrap_or(if o.quick { 7 } else { 11 });
    o.repeat = repeat.unwrap_or(if o.quick { 50_000 } else { 200_000 });
    o.events = events.unwrap_or(if o.quick { 200_000 } else { 1_000_000 });
    o.parse_mb = parse_mb.unwrap_or(if o.quick { 5 } else { 20 });
    o.rounds = rounds.unwrap_or(if o.quick { 3 } else { 5 });
    ensure!(o.runs >= 1 && o.repeat >= 1, "--runs and --repeat must be at least 1");
    Ok(o)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ztbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Removes the pin directory when dropped: on success, on error and on panic (unwinding).
pub(crate) struct PinGuard(pub(crate) PinLayout);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = datapath::uninstall(&self.0) {
            eprintln!("ztbench: cannot remove {}: {e}", self.0.root.display());
        }
    }
}

// ---- policies --------------------------------------------------------------------------

/// Deterministic pseudo-random numbers (splitmix64): the same policies on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn port(&mut self, lo: u16, hi: u16) -> u16 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u16
    }
}

/// The network of the `k`th IPv4 /24 handed out (10.0.0.0, 10.0.1.0, ... then into 11/8).
fn net24(k: usize) -> u32 {
    0x0a00_0000 + ((k as u32) << 8)
}

/// CIDR number `j` (segment `j / 10`), all distinct and non-overlapping: of every 10, seven
/// IPv4 /24 (from 10.0.0.0 on), two IPv4 /32 (from 100.64.0.0 on) and one IPv6 (a /64 under
/// fd00::/16 or a /128 under fd01::/16, alternately).
fn cidr_text(j: usize) -> String {
    let (block, kind) = (j / 10, j % 10);
    match kind {
        0..=6 => format!("{}/24", Ipv4Addr::from(net24(block * 7 + kind))),
        7 | 8 => format!("{}/32", Ipv4Addr::from(0x6440_0000 + (block * 2 + kind - 7) as u32)),
        _ if block % 2 == 0 => format!("fd00:{:x}:{:x}::/64", block >> 16, block & 0xffff),
        _ => format!("fd01::{:x}:{:x}/128", block >> 16, block & 0xffff),
    }
}

/// An address inside the first /24 of `segment` (see [`cidr_text`]).
fn host_in(segment: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::from(net24(segment * 7) + u32::from(host))
}

fn tcp(lo: u16, hi: u16) -> PortSpec {
    PortSpec::Range { proto: Proto::Tcp, lo, hi }
}

/// A policy of `rules` rules over `cidrs` CIDRs, `CIDRS_PER_SEGMENT` per segment. Random rules
/// join two random segments (not the fixed ones) with the port shapes real policies have:
/// single TCP ports (mostly well known), ranges, UDP, a whole protocol, several specs; one in
/// ten denies.
fn make_policy(rules: usize, cidrs: usize) -> Result<Policy> {
    let nseg = cidrs / CIDRS_PER_SEGMENT;
    ensure!(nseg > FIXED_SEGMENTS + 1 && rules >= FIXED_RULES, "policy too small");
    let mut segments: Vec<Segment> = (0..nseg)
        .map(|k| {
            let name = match k {
                SEG_CLIENT => "client".to_owned(),
                SEG_SERVER => "server".to_owned(),
                SEG_DENIED => "denied".to_owned(),
                SEG_MONITORING => "monitoring".to_owned(),
                _ => format!("seg{k}"),
            };
            Segment { name, cidrs: Vec::with_capacity(CIDRS_PER_SEGMENT), mode: Mode::Enforce, selector: None }
        })
        .collect();
    for j in 0..nseg * CIDRS_PER_SEGMENT {
        let text = cidr_text(j);
        let net = text.parse().with_context(|| format!("generated CIDR {text}"))?;
        segments[j / CIDRS_PER_SEGMENT].cidrs.push(net);
    }

    let rule = |name: String, from, to, ports: Vec<PortSpec>, action| Rule {
        name,
        description: None,
        from: vec![from],
        to: vec![to],
        ports: Some(ports),
        action,
        mode: Mode::Enforce,
        grant: None,
    };
    let mut out = vec![
        rule("client-to-server".into(), SegRef::Named(SEG_CLIENT), SegRef::Named(SEG_SERVER), vec![tcp(443, 443)], Action::Allow),
        rule("denied-to-server-db".into(), SegRef::Named(SEG_DENIED), SegRef::Named(SEG_SERVER), vec![tcp(5432, 5432)], Action::Allow),
        rule("scrape-everything".into(), SegRef::Any, SegRef::Named(SEG_MONITORING), vec![tcp(9100, 9100)], Action::Allow),
    ];
    const WELL_KNOWN: [u16; 10] = [22, 80, 443, 3306, 5432, 6379, 8080, 8443, 9092, 27017];
    let mut rng = Rng(0x5eed ^ ((rules as u64) << 32) ^ cidrs as u64);
    for i in 0..rules - FIXED_RULES {
        let from = SegRef::Named(FIXED_SEGMENTS + rng.below(nseg - FIXED_SEGMENTS));
        let to = SegRef::Named(FIXED_SEGMENTS + rng.below(nseg - FIXED_SEGMENTS));
        let ports = match rng.below(100) {
            0..45 => {
                let p = if rng.below(2) == 0 { WELL_KNOWN[rng.below(WELL_KNOWN.len())] } else { rng.port(1024, 65535) };
                vec![tcp(p, p)]
            }
            45..65 => {
                let lo = rng.port(1024, 60000);
                vec![tcp(lo, lo + rng.port(1, 200))]
            }
            65..80 => {
                let p = rng.port(1, 65535);
                vec![PortSpec::Range { proto: Proto::Udp, lo: p, hi: p }]
            }
            80..85 => vec![PortSpec::All(Proto::Tcp)],
            85..95 => vec![tcp(80, 80), tcp(443, 443), tcp(8000, 8099)],
            _ => vec![PortSpec::Icmp, tcp(22, 22)],
        };
        let action = if rng.below(10) == 0 { Action::Deny } else { Action::Allow };
        out.push(rule(format!("r{i}"), from, to, ports, action));
    }
    Ok(Policy { default_action: Action::Deny, segments, rules: out, ..Policy::default() })
}

// ---- frames ----------------------------------------------------------------------------

const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// Ethernet + IPv4 (IHL 5, no options) + TCP (20 bytes), padded to the 60-byte minimum
/// frame. Checksums are left at zero: the program never checks them.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    // IPv4: version 4, IHL 5; TOS; total length 40; id; flags DF; TTL 64; TCP; checksum 0.
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&40u16.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, PROTO_TCP, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    // TCP: ports, seq, ack, data offset 5, flags, window, checksum 0, urgent 0.
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&1000u32.to_be_bytes());
    f.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
    f.extend_from_slice(&[0x50, flags]);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.resize(60, 0);
    f
}

// ---- measurement -----------------------------------------------------------------------

/// One BPF_PROG_TEST_RUN of `repeat` runs: the program's verdict and the mean cost of one
/// run in ns. The kernel reports the mean per repeat (total / repeat, rounded down to whole
/// ns), timing only the runs themselves (not time spent rescheduled).
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

/// A test run that must return `want`.
fn run_expect(prog: &Xdp, what: &str, frame: &[u8], repeat: u32, want: u32) -> Result<u64> {
    let (ret, ns) = test_run(prog, frame, repeat).with_context(|| format!("{what} frame"))?;
    ensure!(ret == want, "{what} frame: the program returned {ret}, expected {want} ({})", xdp_name(want));
    Ok(ns)
}

fn xdp_name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "?",
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Which program a probe runs.
#[derive(Clone, Copy, PartialEq)]
enum Prog {
    /// The empty program (`zt_baseline`).
    Empty,
    /// Parse and one conntrack lookup (`zt_reference`).
    Reference,
    /// Parse, conntrack miss, one denial-cache lookup (`zt_denied_floor`).
    DeniedFloor,
    /// The real ingress program.
    Ingress,
    /// The ingress program of guarded (pod) interfaces: anti-spoofing, then as `Ingress`.
    Guarded,
}

/// One frame to measure, on one of the programs, and the verdict it must get.
struct Probe {
    name: &'static str,
    prog: Prog,
    frame: Vec<u8>,
    want: u32,
}

/// Index in [`probes`] of what the main table reports.
const EMPTY: usize = 0;
const ESTABLISHED: usize = 1;
const DENIED: usize = 2;
const NEW_FLOW: usize = 3;
const REFERENCE: usize = 4;
const DENIED_FLOOR: usize = 5;
const GUARDED: usize = 6;

/// The frames of the benchmark. `[EMPTY]` must come first: every cost is a ratio to it.
/// With `breakdown`, frames that each skip a part of the denied path, to attribute its cost.
fn probes(breakdown: bool) -> Vec<Probe> {
    let (client, server, denied) = (host_in(SEG_CLIENT, 10), host_in(SEG_SERVER, 20), host_in(SEG_DENIED, 30));
    let ack = TCP_ACK | TCP_PSH;
    let established = tcp_frame(client, server, 40000, 443, ack);
    let denied = tcp_frame(denied, server, 40001, 443, ack);
    let p = |name, prog, frame, want| Probe { name, prog, frame, want };
    let mut v = vec![
        p("empty", Prog::Empty, established.clone(), XDP_PASS),
        p("established", Prog::Ingress, established.clone(), XDP_PASS),
        p("denied", Prog::Ingress, denied.clone(), XDP_DROP),
        p("new flow", Prog::Ingress, tcp_frame(client, server, 40000, 443, TCP_SYN), XDP_PASS),
        // Its conntrack hit proves it did the lookup.
        p("reference", Prog::Reference, established.clone(), XDP_PASS),
        // Its drop proves it found the denial the ingress program cached (the denied probe
        // runs before it in every round, the first time in the warm-up).
        p("denied floor", Prog::DeniedFloor, denied, XDP_DROP),
        // Node mode's pod interfaces: the same established packet through anti-spoofing (its
        // pass proves the source was found in ZT_SOURCES for the test run's interface).
        p("established, guarded", Prog::Guarded, established, XDP_PASS),
    ];
    if breakdown {
        // ARP: parsing and the counter only.
        let mut arp = tcp_frame(client, server, 0, 0, 0);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        v.push(p("non-IP", Prog::Ingress, arp, XDP_PASS));
        // (Frames that skip parts of the denied path no longer attribute its cost: after the
        // first run they all hit the denial cache. The first-packet column measures that path.)
    }
    v
}

/// An address in no segment of any generated policy (TEST-NET-1).
const WORLD_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The first /32 of `segment` (see [`cidr_text`]).
fn host32(segment: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 + (segment * 2) as u32)
}

/// Checks in userspace, on the compiled maps, that the policy has the shape the measured
/// paths need: the client's SYN allowed by rule 1; the denied frames' pair present (so the
/// datapath does the port lookup too) and their packets denied by default; the world's
/// packet denied without a pair.
fn check_shape(c: &CompiledPolicy) -> Result<()> {
    let ip = |a: Ipv4Addr| IpAddr::V4(a);
    let server = ip(host_in(SEG_SERVER, 20));
    let allow = c.lookup(ip(host_in(SEG_CLIENT, 10)), server, PROTO_TCP, 443);
    ensure!(allow.action == ACTION_ALLOW && allow.rule == 1, "client -> server:443 is not allowed by rule 1: {allow:?}");
    for (src, dst) in [(host_in(SEG_DENIED, 30), server), (host32(SEG_DENIED), ip(host32(SEG_SERVER)))] {
        let deny = c.lookup(ip(src), dst, PROTO_TCP, 443);
        ensure!(deny.action == ACTION_DENY && deny.rule == 0, "{src} -> {dst}:443 is not a default deny: {deny:?}");
        let pair = (deny.src_segment, deny.dst_segment);
        ensure!(
            pair == (SEG_DENIED as u32 + 1, SEG_SERVER as u32 + 1) && c.pairs.iter().any(|&(a, b, _)| (a, b) == pair),
            "{src} -> {dst}: not the (denied, server) pair, or it is missing: the port lookup would be skipped"
        );
    }
    let world = c.lookup(ip(WORLD_HOST), server, PROTO_TCP, 443);
    ensure!(world.action == ACTION_DENY && world.src_segment == 0, "world -> server:443 is not denied: {world:?}");
    Ok(())
}

/// One row of the report.
struct Row {
    rules: usize,
    cidrs: usize,
    /// Per probe: median ns, and median of the per-round ratios to the empty program.
    cost: Vec<(f64, f64)>,
    /// Medians of the per-round ratios established / reference and denied / denied floor.
    vs_floor: (f64, f64),
    /// The first packet of a denied flow (the full policy path, before the denial is cached):
    /// estimated ns, and ratio to the empty program.
    first_denied: (f64, f64),
    compile_ms: f64,
    push_ms: f64,
    /// What the compiled policy holds.
    summary: String,
}

/// Samples of the first packet of a denied flow per row.
const FIRST_SAMPLES: u16 = 1001;

/// The cost of the first packet of a denied flow. Every later packet of a denied flow finds
/// its verdict in the denial cache, so `repeat` cannot measure the first one: each sample is
/// one run (`repeat` = 1) of a frame to a port not yet judged under this policy, paired with
/// one run of the empty program, whose difference cancels the fixed cost of a test run.
/// Returns (estimated ns, ratio to `empty_ns`).
fn first_denied(progs: [&Xdp; 2], empty_frame: &[u8], empty_ns: f64) -> Result<(f64, f64)> {
    let [baseline, ingress] = progs;
    let (denied, server) = (host_in(SEG_DENIED, 30), host_in(SEG_SERVER, 20));
    let mut extra = Vec::with_capacity(FIRST_SAMPLES as usize);
    for i in 0..FIRST_SAMPLES {
        // Ports 20000.. are in no generated rule of the denied pair: default deny.
        let frame = tcp_frame(denied, server, 40001, 20000 + i, TCP_ACK);
        let full = run_expect(ingress, "denied first packet", &frame, 1, XDP_DROP)?;
        let empty = run_expect(baseline, "empty", empty_frame, 1, XDP_PASS)?;
        extra.push(full as f64 - empty as f64);
    }
    let ns = median(&mut extra) + empty_ns;
    Ok((ns, ns / empty_ns.max(0.5)))
}

/// Installs `compiled`, starts the tracked flow, then measures every probe. Returns the row.
fn measure(
    writer: &mut MapWriter,
    (progs, [reference, denied_floor, guarded]): ([&Xdp; 2], [&Xdp; 3]),
    probes: &[Probe],
    compiled: &CompiledPolicy,
    (rules, cidrs, compile_ms): (usize, usize, f64),
    opts: &Options,
) -> Result<Row> {
    let t = Instant::now();
    writer.apply(compiled).context("installing the policy")?;
    let push_ms = t.elapsed().as_secs_f64() * 1e3;
    // Push it again, so that both slots hold this policy (the state after two pushes of
    // similar policies): the size of the maps then depends on this policy only, not on the
    // one measured before.
    writer.apply(compiled).context("installing the policy again")?;
    let [baseline, ingress] = progs;
    let run = |p: &Probe, repeat| {
        let prog = match p.prog {
            Prog::Empty => baseline,
            Prog::Reference => reference,
            Prog::DeniedFloor => denied_floor,
            Prog::Ingress => ingress,
            Prog::Guarded => guarded,
        };
        run_expect(prog, p.name, &p.frame, repeat, p.want)
    };

    // The first SYN creates the conntrack entries the established frame then hits.
    run(&probes[NEW_FLOW], 1)?;
    // Warm up (caches, branch predictors, CPU frequency) without recording.
    for p in probes {
        run(p, (opts.repeat / 10).max(1))?;
    }

    // Interleaved rounds: a slow moment affects every probe of its round alike.
    let mut ns = vec![Vec::with_capacity(opts.runs); probes.len()];
    let mut ratio = vec![Vec::with_capacity(opts.runs); probes.len()];
    let (mut est_ref, mut den_floor) = (Vec::with_capacity(opts.runs), Vec::with_capacity(opts.runs));
    for _ in 0..opts.runs {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let round = probes.iter().map(|p| run(p, opts.repeat)).collect::<Result<Vec<_>>>()?;
        // The kernel rounds down to whole ns; never divide by zero on a very fast machine.
        let empty = (round[EMPTY] as f64).max(0.5);
        let of = |a: usize, b: usize| round[a] as f64 / (round[b] as f64).max(0.5);
        est_ref.push(of(ESTABLISHED, REFERENCE));
        den_floor.push(of(DENIED, DENIED_FLOOR));
        for (i, c) in round.into_iter().enumerate() {
            ns[i].push(c as f64);
            ratio[i].push(c as f64 / empty);
        }
    }
    let cost: Vec<(f64, f64)> = ns.iter_mut().zip(&mut ratio).map(|(n, r)| (median(n), median(r))).collect();
    let first_denied = first_denied(progs, &probes[EMPTY].frame, cost[EMPTY].0)?;
    let summary = compiled.summary().to_string();
    let vs_floor = (median(&mut est_ref), median(&mut den_floor));
    Ok(Row { rules, cidrs, cost, vs_floor, first_denied, compile_ms, push_ms, summary })
}

// ---- report ----------------------------------------------------------------------------

fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// The markdown report and whether every target passed.
fn report(rows: &[Row], probes: &[Probe], opts: &Options) -> (String, bool) {
    let mut s = String::new();
    let mut all_ok = true;
    let _ = writeln!(
        s,
        "ztagent XDP ingress, BPF_PROG_TEST_RUN: median of {} runs of {} repeats; \
         (x empty) = median ratio to the empty XDP program measured in the same runs. \
         The kernel reports whole ns (rounded down). push ms: the first install of the policy \
         (clearing the inactive slot, which holds the policy measured before, then writing this \
         one); compile ms: `policy::compile`.\n",
        opts.runs,
        fmt_count(opts.repeat as usize)
    );
    let _ = writeln!(s, "| rules | CIDRs | empty ns | established ns (x empty) | denied ns (x empty) | denied, first packet ns (x empty) | new flow ns (x empty) | reference ns (x empty) | denied floor ns (x empty) | established / reference | denied / denied floor | push ms | compile ms |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cell = |r: &Row, i: usize| format!("{:.0} ({:.2}x)", r.cost[i].0, r.cost[i].1);
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {:.0} ({:.2}x) | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            fmt_count(r.rules),
            fmt_count(r.cidrs),
            r.cost[EMPTY].0,
            cell(r, ESTABLISHED),
            cell(r, DENIED),
            r.first_denied.0,
            r.first_denied.1,
            cell(r, NEW_FLOW),
            cell(r, REFERENCE),
            cell(r, DENIED_FLOOR),
            r.vs_floor.0,
            r.vs_floor.1,
            r.push_ms,
            r.compile_ms
        );
    }
    let _ = writeln!(
        s,
        "\nAnti-spoofing (node mode's guarded ingress, `zt_ingress_guarded`: one LPM lookup of \
         (interface, source) before the pipeline), the established frame, ns (x empty):\n"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "- {} rules / {} CIDRs: guarded {} against unguarded {}: {:+.0} ns",
            fmt_count(r.rules),
            fmt_count(r.cidrs),
            cell(r, GUARDED),
            cell(r, ESTABLISHED),
            r.cost[GUARDED].0 - r.cost[ESTABLISHED].0
        );
    }
    if probes.len() > GUARDED + 1 {
        // The breakdown: the same rounds, frames that each take part of the denied path.
        let extra = &probes[GUARDED + 1..];
        let _ = write!(s, "\nBreakdown, ns (x empty):\n\n| rules | CIDRs | established | denied |");
        for p in extra {
            let _ = write!(s, " {} |", p.name);
        }
        let _ = writeln!(s, "\n|---:|---:|---:|---:|{}", "---:|".repeat(extra.len()));
        for r in rows {
            let _ = write!(s, "| {} | {} | {} | {} |", fmt_count(r.rules), fmt_count(r.cidrs), cell(r, ESTABLISHED), cell(r, DENIED));
            for i in GUARDED + 1..probes.len() {
                let _ = write!(s, " {} |", cell(r, i));
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "\n*reference*: a program that only parses the established frame and looks its flow up in \
         the conntrack table (`zt_reference`): the least any stateful program does per packet, \
         measured in the same runs. *denied floor*: a program that parses the denied frame, \
         misses the conntrack table and finds the flow in the denial cache (`zt_denied_floor`): \
         the least a stateful program with a denial cache does with a repeat-denied packet. The \
         two ratio columns are medians of per-round ratios."
    );
    let _ = writeln!(s, "\nPolicies (one slot; both slots hold the policy while it is measured):\n");
    for r in rows {
        let _ = writeln!(s, "- {} rules / {} CIDRs: {}", fmt_count(r.rules), fmt_count(r.cidrs), r.summary);
    }
    let _ = writeln!(s, "\nTargets:\n");
    let mut line = |ok: bool, text: String| {
        all_ok &= ok;
        let _ = writeln!(s, "- {}: {text}", verdict(ok));
    };
    for r in rows {
        let (rules, cidrs) = (fmt_count(r.rules), fmt_count(r.cidrs));
        let (est, den) = r.vs_floor;
        line(
            est <= MAX_ESTABLISHED_VS_REFERENCE,
            format!("{rules} rules / {cidrs} CIDRs: established {est:.2}x the reference <= {MAX_ESTABLISHED_VS_REFERENCE}x"),
        );
        line(
            den <= MAX_DENIED_VS_FLOOR,
            format!("{rules} rules / {cidrs} CIDRs: repeat denied {den:.2}x the denied floor <= {MAX_DENIED_VS_FLOOR}x"),
        );
    }
    // Growth checks compare ratios to the empty program (the cost normalised by the run's
    // speed), between the smallest and the largest size measured.
    let find = |rules: usize, cidrs: usize| rows.iter().find(|r| r.rules == rules && r.cidrs == cidrs);
    let sizes = |f: fn(&Row) -> usize| {
        let mut v: Vec<usize> = rows.iter().map(f).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (rule_sizes, cidr_sizes) = (sizes(|r| r.rules), sizes(|r| r.cidrs));
    if let (Some(&lo), Some(&hi)) = (cidr_sizes.first(), cidr_sizes.last())
        && lo < hi
    {
        for &n in &rule_sizes {
            if let (Some(a), Some(b)) = (find(n, lo), find(n, hi)) {
                let g = b.first_denied.1 / a.first_denied.1;
                line(
                    g <= MAX_CIDR_GROWTH,
                    format!(
                        "{} rules: first denied packet (full policy path) at {} CIDRs / at {} CIDRs = {g:.2} <= {MAX_CIDR_GROWTH}",
                        fmt_count(n),
                        fmt_count(hi),
                        fmt_count(lo)
                    ),
                );
            }
        }
    }
    if let (Some(&lo), Some(&hi)) = (rule_sizes.first(), rule_sizes.last())
        && lo < hi
    {
        for &n in &cidr_sizes {
            if let (Some(a), Some(b)) = (find(lo, n), find(hi, n)) {
                let g = b.first_denied.1 / a.first_denied.1;
                line(
                    g <= MAX_RULE_GROWTH,
                    format!(
                        "{} CIDRs: denied cost with {} rules / with {} rules = {g:.2} <= {MAX_RULE_GROWTH} (lookups, not loops)",
                        fmt_count(n),
                        fmt_count(hi),
                        fmt_count(lo)
                    ),
                );
            }
        }
    }
    (s, all_ok)
}

// ---- main ------------------------------------------------------------------------------

fn run() -> Result<bool> {
    let opts = parse_args()?;
    // Kubernetes translation: a CLI run, no root needed.
    let k8s_runs = if opts.quick { 5 } else { 9 };
    if opts.k8s_only {
        let mut text = String::new();
        let ok = k8s::translate_time(&mut text, k8s_runs)?;
        println!("{text}");
        write_report(&opts, &text)?;
        return Ok(ok || !opts.check);
    }
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "BPF_PROG_TEST_RUN needs root");
    // Policy input: parse throughput (YAML against JSON), rounds as in the packet runs' quick mode.
    let parse_rounds = if opts.quick { 3 } else { 7 };
    if opts.inventory_only {
        let mut text = inventory::memory(100_000)?;
        text.push_str(&inventory::table_read()?);
        println!("{text}");
        write_report(&opts, &text)?;
        return Ok(true);
    }
    if opts.parse_only {
        let (mut text, ok) = parse::throughput(opts.parse_mb, parse_rounds)?;
        text.push_str(&inventory::memory(100_000)?);
        println!("{text}");
        write_report(&opts, &text)?;
        return Ok(ok || !opts.check);
    }
    // From here on there are pins to remove: turn Ctrl-C into an error the guards see.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let compare_opts =
        compare::CompareOptions { quick: opts.quick, rounds: opts.rounds, json: opts.json.clone() };
    if opts.compare_only {
        return Ok(compare::run(&compare_opts)? || !opts.check);
    }
    if opts.fleet_only {
        let mut text = String::new();
        fleet::push_to_enforced(&mut text)?;
        println!("{text}");
        return Ok(true);
    }

    let sizes: Vec<(usize, usize)> = if opts.quick {
        vec![(10, 1_000), (1_000, 1_000)]
    } else {
        [10, 1_000, 100_000].into_iter().flat_map(|r| [(r, 1_000), (r, 100_000)]).collect()
    };

    // Build and compile every policy first, so the maps can be sized for the largest two
    // (a push writes the inactive slot while the previous policy is still in force).
    let mut compiled = Vec::new();
    for &(rules, cidrs) in &sizes {
        eprintln!("ztbench: compiling {} rules over {} CIDRs", fmt_count(rules), fmt_count(cidrs));
        let p = make_policy(rules, cidrs)?;
        let t = Instant::now();
        let c = policy::compile(&p);
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        check_shape(&c).with_context(|| format!("policy of {rules} rules over {cidrs} CIDRs"))?;
        eprintln!("ztbench:   {} ({compile_ms:.0} ms)", c.summary());
        compiled.push((c, compile_ms));
    }
    let max = |f: fn(&CompiledPolicy) -> usize| compiled.iter().map(|(c, _)| f(c)).max().unwrap_or(0);
    let room = |n: usize| u32::try_from(2 * n + 1024).unwrap_or(u32::MAX);
    let limits = Limits {
        hosts: room(max(|c| c.hosts.len())),
        cidrs: room(max(|c| c.cidrs.len())),
        pairs: room(max(|c| c.pairs.len())),
        ports: room(max(|c| c.ports.len())),
        conntrack: 4096,
        frags: 1024,
        ..Limits::default()
    };

    let pins = PinLayout::new(format!("/sys/fs/bpf/ztbench-{}", std::process::id()));
    let _guard = PinGuard(pins.clone());
    let mut dp = Datapath::load(pins, &limits).context("loading the datapath")?;
    // The references live in the benchmark's own object, on the same pinned maps.
    let mut bench = dp.load_bench(&limits).context("loading the benchmark's object")?;
    for name in [programs::BASELINE, programs::REFERENCE, programs::DENIED_FLOOR] {
        let prog: &mut Xdp = bench
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the benchmark's object"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        prog.load().with_context(|| format!("loading {name}"))?;
    }
    let mut writer = MapWriter::new(&mut dp.ebpf, &limits).context("opening the policy maps")?;
    allow_guarded_source(&mut dp)?;
    // This process's own event ring buffer: nobody else reads it, so it is full after the first
    // ~48,000 events of the table's runs; the event section drains it (or not) itself.
    let mut ring = RingBuf::try_from(dp.ebpf.take_map(maps::EVENTS).context("the event ring buffer is missing")?)
        .context("opening the event ring buffer")?;
    let xdp = |obj: &'static str, name: &str| -> Result<&Xdp> {
        let ebpf = if obj == "bench" { &bench } else { &dp.ebpf };
        let p: &Program = ebpf.program(name).with_context(|| format!("program {name} missing"))?;
        p.try_into().with_context(|| format!("{name} is not an XDP program"))
    };
    let (ingress, baseline) = (xdp("agent", programs::INGRESS)?, xdp("bench", programs::BASELINE)?);
    let floors =
        [xdp("bench", programs::REFERENCE)?, xdp("bench", programs::DENIED_FLOOR)?, xdp("agent", programs::INGRESS_GUARDED)?];

    let probes = probes(opts.breakdown);
    let mut rows = Vec::new();
    for (&(rules, cidrs), (c, compile_ms)) in sizes.iter().zip(&compiled) {
        eprintln!("ztbench: measuring {} rules over {} CIDRs", fmt_count(rules), fmt_count(cidrs));
        let row = measure(&mut writer, ([baseline, ingress], floors), &probes, c, (rules, cidrs, *compile_ms), &opts)
            .with_context(|| format!("{rules} rules over {cidrs} CIDRs"))?;
        rows.push(row);
    }

    let (mut text, mut all_ok) = report(&rows, &probes, &opts);
    let (limited, plain, ratio) = limit_overhead(&mut writer, [baseline, ingress], &opts)?;
    let ok = ratio <= MAX_LIMIT_OVERHEAD;
    all_ok &= ok;
    let _ = writeln!(
        text,
        "\nRate limits (10 rules / 1,000 CIDRs, one rate limit): an established allowed packet \
         under a packets limit {limited:.0} ns, the same packet without one {plain:.0} ns.\n\n\
         - {}: rate-limited / unlimited allowed packet = {ratio:.2} <= {MAX_LIMIT_OVERHEAD}",
        verdict(ok)
    );
    if opts.packets_only {
        println!("{text}");
        write_report(&opts, &text)?;
        return Ok(all_ok || !opts.check);
    }

    // Events: what one costs a packet (this process's ring), then what the agent sustains.
    eprintln!("ztbench: measuring the cost of an event (10 rules over 1,000 CIDRs)");
    let cost = event_cost(&mut writer, &mut ring, &dp, [baseline, ingress], &probes, &rows[0], (limits.events_bytes, &opts))?;
    let throughput = if opts.events > 0 { Some(event_throughput(&opts)?) } else { None };
    all_ok &= event_report(&mut text, &cost, throughput.as_ref(), &opts);
    let (parsing, ok) = parse::throughput(opts.parse_mb, parse_rounds)?;
    text.push_str(&parsing);
    text.push_str(&inventory::memory(100_000)?);
    text.push_str(&inventory::table_read()?);
    all_ok &= ok;
    all_ok &= k8s::translate_time(&mut text, k8s_runs)?;
    fleet::push_to_enforced(&mut text)?;
    println!("{text}");
    write_report(&opts, &text)?;
    drop(ring);
    drop(writer);
    drop(dp);
    all_ok &= compare::run(&compare_opts)?;
    Ok(all_ok || !opts.check)
}

/// The client's source, allowed on the interface a test run enters (the loopback of this
/// network namespace, where BPF_PROG_TEST_RUN puts an XDP frame that names no interface), so
/// that the guarded program passes the established frame.
fn allow_guarded_source(dp: &mut Datapath) -> Result<()> {
    use agent_common::{SOURCE_IFINDEX_BITS, SourceData};
    use aya::maps::{LpmTrie, lpm_trie::Key};
    let map = dp.ebpf.map_mut(maps::SOURCES).context("the sources map is missing")?;
    let mut trie: LpmTrie<_, SourceData, u32> = LpmTrie::try_from(map).context("opening the sources map")?;
    // SAFETY: a NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    ensure!(lo != 0, "this network namespace has no loopback");
    let addr = host_in(SEG_CLIENT, 10).to_ipv6_mapped().octets();
    let key = Key::new(SOURCE_IFINDEX_BITS + 128, SourceData { ifindex: lo.to_be_bytes(), addr });
    trie.insert(&key, 1u32, 0).context("allowing the client's source")?;
    Ok(())
}

fn write_report(opts: &Options, text: &str) -> Result<()> {
    if let Some(path) = &opts.out {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The cost a rate limit adds to an allowed packet. One policy (10 rules over 1,000 CIDRs) lets
/// the client reach the server on 443 and 8443; a packets limit (high enough never to drop
/// here) applies to 443 only. Two established flows of the same client, measured in the same
/// rounds, differ only by the limit. Returns (limited ns, unlimited ns, median ratio).
fn limit_overhead(writer: &mut MapWriter, progs: [&Xdp; 2], opts: &Options) -> Result<(f64, f64, f64)> {
    let mut p = make_policy(10, 1000)?;
    let mut extra = p.rules[0].clone();
    extra.name = "client-8443".into();
    extra.ports = Some(vec![tcp(8443, 8443)]);
    p.rules.push(extra);
    let bucket = BucketSpec { rate: 1_000_000_000, per: Per::Second, burst: 1_000_000_000 };
    p.rate_limits.push(RateLimit {
        name: "client-443".into(),
        from: SegRef::Named(SEG_CLIENT),
        to: None,
        ports: Some(vec![tcp(443, 443)]),
        packets: Some(bucket),
        connections: None,
        bytes: None,
        scope: LimitScope::Segment,
    });
    let c = policy::compile(&p);
    writer.apply(&c).context("installing the rate-limited policy")?;
    let [_, ingress] = progs;
    let (client, server) = (host_in(SEG_CLIENT, 10), host_in(SEG_SERVER, 20));
    let ack = TCP_ACK | TCP_PSH;
    let flows = [(443, 41000), (8443, 41001)].map(|(port, sport)| {
        (tcp_frame(client, server, sport, port, TCP_SYN), tcp_frame(client, server, sport, port, ack))
    });
    for (syn, _) in &flows {
        run_expect(ingress, "rate-limited SYN", syn, 1, XDP_PASS)?;
    }
    let (mut limited, mut plain, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let l = run_expect(ingress, "rate-limited established", &flows[0].1, opts.repeat, XDP_PASS)? as f64;
        let u = run_expect(ingress, "unlimited established", &flows[1].1, opts.repeat, XDP_PASS)? as f64;
        limited.push(l);
        plain.push(u);
        ratio.push(l / u.max(0.5));
    }
    Ok((median(&mut limited), median(&mut plain), median(&mut ratio)))
}

// ---- events ----------------------------------------------------------------------------

/// Bytes one event takes in a ring buffer: the kernel's 8-byte record header, then the event,
/// rounded up to 8.
const EVENT_RECORD_BYTES: u32 = (8 + std::mem::size_of::<Event>() as u32).div_ceil(8) * 8;

/// Repeats of the allowed SYN per measurement of the event cost: well under a ring's worth, so
/// that after the ring is emptied every one of its events is written.
const EVENT_COST_REPEAT: u32 = 20_000;

/// The target: events per second from the kernel into the agent (to its JSON-lines
/// file), without loss, on this machine (2 CPUs).
const MIN_EVENTS_PER_SEC: f64 = 500_000.0;

/// What an event costs a packet: ns, with the event written (the ring has room) or lost (the
/// ring is full, so `bpf_ringbuf_output` fails at the reservation and the program only counts
/// `events_lost`).
struct EventCost {
    /// The allowed SYN: policy path, conntrack insert, one event. Medians over the rounds.
    syn_written: f64,
    syn_lost: f64,
    /// Median of the per-round differences written - lost.
    syn_delta: f64,
    /// The first packet of a denied flow: policy path, denial cache insert, one event
    /// (estimated as in [`first_denied`]).
    first_written: f64,
    first_lost: f64,
    /// A repeat packet of a denied flow (aggregated away: no event), from the table's row.
    repeat_denied: f64,
    /// Events the ring holds.
    ring_events: u32,
    ring_bytes: u32,
}

/// The kernel's `events_lost` counter, summed over CPUs (shared by every program on the maps).
fn events_lost(dp: &Datapath) -> Result<u64> {
    let name = counter::NAMES[counter::EVENTS_LOST as usize];
    let all = dp.counters().context("reading the counters")?;
    all.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).context("no events_lost counter")
}

/// Empties `ring` (this process is its only reader). Returns how many events it held.
fn drain(ring: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        drop(item);
        n += 1;
    }
    n
}

/// The cost of an event, on this process's own datapath (whose ring buffer nobody else reads),
/// under the 10 rules / 1,000 CIDRs policy: the allowed SYN of the table's new flow and the
/// first packet of a denied flow, each with the ring emptied first (every event is written)
/// and with the ring filled first (every event is lost, checked with `events_lost`). The SYN's
/// conntrack entries exist already, so both measure the same path but for the event.
fn event_cost(
    writer: &mut MapWriter,
    ring: &mut RingBuf<MapData>,
    dp: &Datapath,
    progs: [&Xdp; 2],
    probes: &[Probe],
    row: &Row,
    (ring_bytes, opts): (u32, &Options),
) -> Result<EventCost> {
    let [_, ingress] = progs;
    let compiled = policy::compile(&make_policy(10, 1_000)?);
    check_shape(&compiled)?;
    writer.apply(&compiled).context("installing the policy")?;
    let syn = &probes[NEW_FLOW].frame;
    let ring_events = ring_bytes / EVENT_RECORD_BYTES;
    ensure!(EVENT_COST_REPEAT < ring_events, "the ring buffer ({ring_bytes} bytes) is too small");
    let fill = || run_expect(ingress, "allowed SYN (filling the ring)", syn, ring_events + 1, XDP_PASS);
    // Warm up (and create the flow's conntrack entries).
    drain(ring);
    run_expect(ingress, "allowed SYN", syn, EVENT_COST_REPEAT, XDP_PASS)?;

    let (mut written, mut lost, mut delta) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        drain(ring);
        let l0 = events_lost(dp)?;
        let w = run_expect(ingress, "allowed SYN (ring with room)", syn, EVENT_COST_REPEAT, XDP_PASS)? as f64;
        let l1 = events_lost(dp)?;
        ensure!(l1 == l0, "{} events lost while the ring had room for all of them", l1 - l0);
        fill()?;
        let l2 = events_lost(dp)?;
        let f = run_expect(ingress, "allowed SYN (ring full)", syn, EVENT_COST_REPEAT, XDP_PASS)? as f64;
        let l3 = events_lost(dp)?;
        ensure!(l3 - l2 == u64::from(EVENT_COST_REPEAT), "with the ring full, {} of {EVENT_COST_REPEAT} events were lost", l3 - l2);
        written.push(w);
        lost.push(f);
        delta.push(w - f);
    }

    // The first packet of a denied flow, in rounds of both: each push is a new revision, under
    // which every denied flow is judged afresh (one event each).
    let empty_ns = row.cost[EMPTY].0;
    let (mut first_written, mut first_lost) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        writer.apply(&compiled).context("installing the policy")?;
        drain(ring);
        let l0 = events_lost(dp)?;
        first_written.push(first_denied(progs, &probes[EMPTY].frame, empty_ns)?.0);
        let l1 = events_lost(dp)?;
        ensure!(l1 == l0, "{} events of first denied packets lost while the ring had room", l1 - l0);
        fill()?;
        writer.apply(&compiled).context("installing the policy")?;
        let l2 = events_lost(dp)?;
        first_lost.push(first_denied(progs, &probes[EMPTY].frame, empty_ns)?.0);
        let l3 = events_lost(dp)?;
        ensure!(
            l3 - l2 == u64::from(FIRST_SAMPLES),
            "with the ring full, {} of {FIRST_SAMPLES} first denied packets' events were lost",
            l3 - l2
        );
    }
    drain(ring);

    Ok(EventCost {
        syn_written: median(&mut written),
        syn_lost: median(&mut lost),
        syn_delta: median(&mut delta),
        first_written: median(&mut first_written),
        first_lost: median(&mut first_lost),
        repeat_denied: row.cost[DENIED].0,
        ring_events,
        ring_bytes,
    })
}

/// The host the agent enforces in the throughput runs, and a client of a segment it allows.
const EV_SERVER: (&str, &str) = ("10.20.2.10", "fd20:2::10");
const EV_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 10);
const EV_RULE: &str = "client-to-server";
const EV_POLICY: &str = "\
version: 1
defaultAction: deny
segments:
  client: { cidrs: [10.20.1.0/24] }
  server: { cidrs: [10.20.2.10/32] }
rules:
  - name: client-to-server
    from: [client]
    to: [server]
    ports: [\"443/tcp\"]
    action: allow
";
/// The agent's metrics endpoint, on the loopback of its namespace.
const METRICS_PORT: u16 = 9464;
/// How far the agent's file writer may fall behind the event stream before it misses records
/// and writes `{"missed": N}` instead: the depth of every subscription (`CLIENT_LAG` in the
/// daemon). A tighter bound than the ring buffer (~47,000 events of 4 MiB).
const SINK_DEPTH: u64 = 16_384;
/// Paced runs: events per test run, started only when at most `PACE_AHEAD` events are not in
/// the file yet, so that never more than `PACE_AHEAD + PACE_CHUNK` < `SINK_DEPTH` are in flight.
const PACE_CHUNK: u32 = 4_096;
const PACE_AHEAD: u64 = 12_000;
/// Unpaced runs: events per test run, back to back.
const UNPACED_CHUNK: u32 = 50_000;
/// Waiting for the agent fails when its file does not grow for this long.
const STALL: Duration = Duration::from_secs(15);
/// After the agent has read every event, its writer is done once the file stops growing for
/// this long (the events it missed are not coming).
const QUIET: Duration = Duration::from_millis(500);

/// One run of events through the agent.
struct EventRun {
    /// Events the kernel produced (test runs).
    produced: u64,
    /// From the first test run to the last line in the file.
    secs: f64,
    /// Wall time spent in test runs, and the kernel's mean ns per run.
    produce_secs: f64,
    run_ns: f64,
    /// When the agent had read every event not lost (unpaced runs; from the metrics, polled).
    read_secs: f64,
    /// `events_lost` (kernel: the ring was full), `ztagent_events_delivered_total` (read by the
    /// agent), and in the file: records, events reported missed, other lines.
    lost: u64,
    delivered: u64,
    records: u64,
    missed: u64,
    other: u64,
    first_other: Option<String>,
    /// CPU seconds the agent and this process (the producer, test runs included) used.
    agent_cpu: f64,
    self_cpu: f64,
    /// CPU seconds every other process used meanwhile, and the machine's (CPUs x wall time).
    others_cpu: f64,
    machine_cpu: f64,
    /// The agent's context switches (all threads).
    agent_switches: u64,
    /// Seconds the producing thread (this one) was runnable but waiting for a CPU.
    producer_wait: f64,
}

impl EventRun {
    fn lossless(&self) -> bool {
        // Other lines (events of real traffic on the agent's veth, if any) are no loss.
        self.lost == 0 && self.missed == 0 && self.records == self.produced
    }
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }
}

struct Throughput {
    paced: EventRun,
    unpaced: EventRun,
}

/// The agent's events file, read as it grows.
struct Tail {
    file: File,
    buf: Vec<u8>,
    bytes: u64,
    lines: u64,
}

impl Tail {
    fn open(path: &Path) -> Result<Tail> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Tail { file, buf: vec![0; 1 << 20], bytes: 0, lines: 0 })
    }

    /// Lines in the file now.
    fn lines(&mut self) -> Result<u64> {
        loop {
            let n = self.file.read(&mut self.buf).context("reading the events file")?;
            if n == 0 {
                return Ok(self.lines);
            }
            self.bytes += n as u64;
            self.lines += self.buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
}

/// What bytes `from..to` of the events file hold: records of allowed events, events the writer
/// reported missed (`{"missed": N}`), and other lines (and the first of them).
fn count_lines(path: &Path, from: u64, to: u64) -> Result<(u64, u64, u64, Option<String>)> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(1 << 20, f.take(to - from));
    let (mut records, mut missed, mut other, mut first_other) = (0, 0, 0, None);
    let mut line = Vec::with_capacity(1024);
    const ALLOWED: &[u8] = b"\"verdict\":\"allowed\"";
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).context("reading the events file")? == 0 {
            return Ok((records, missed, other, first_other));
        }
        if line.starts_with(b"{\"missed\":") {
            let v: serde_json::Value = serde_json::from_slice(&line).context("a missed line")?;
            missed += v["missed"].as_u64().context("a missed line without a count")?;
        } else if line.starts_with(b"{") && line.windows(ALLOWED.len()).any(|w| w == ALLOWED) {
            records += 1;
        } else {
            other += 1;
            first_other.get_or_insert_with(|| String::from_utf8_lossy(&line).trim_end().to_string());
        }
    }
}

/// The agent's event counters, from its metrics endpoint.
struct AgentMetrics {
    delivered: u64,
    lost: u64,
}

fn scrape(ns: &Netns) -> Result<AgentMetrics> {
    let text = integration_tests::get_metrics(ns, METRICS_PORT).context("scraping the agent's metrics")?;
    ensure!(text.starts_with("HTTP/1.1 200"), "the agent's metrics endpoint answered: {}", text.lines().next().unwrap_or(""));
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in the agent's metrics"))
    };
    Ok(AgentMetrics {
        delivered: value("ztagent_events_delivered_total")?,
        lost: value("ztagent_events_lost_total")?,
    })
}

/// CPU time (user + system, all threads) of process `pid` ("self": this one), in seconds.
fn cpu_secs(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the command name (in parentheses, which may hold spaces): state is field 3, utime
    // and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("a malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(f.get(i - 3).context("a short /proc stat")?.parse::<f64>()?) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// Busy and total CPU seconds of the whole machine (every CPU) since boot, from /proc/stat.
fn machine_cpu() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("an empty /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let v: Vec<f64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().unwrap_or(0.0)).collect();
    ensure!(v.len() == 8, "a short /proc/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: f64 = v.iter().sum();
    Ok(((total - v[3] - v[4]) / hz, total / hz))
}

/// Context switches (voluntary and not) of every thread of process `pid` alive now.
fn context_switches(pid: &str) -> Result<u64> {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("reading /proc/{pid}/task"))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else { continue };
        for l in status.lines() {
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:").or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:")) {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(n)
}

/// Seconds this thread has spent runnable but waiting for a CPU.
fn cpu_wait_secs() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("reading /proc/thread-self/schedstat")?;
    // Time on a CPU, time waiting on a run queue (ns), timeslices.
    let wait = s.split_whitespace().nth(1).context("a short schedstat")?;
    Ok(wait.parse::<f64>().context("a malformed schedstat")? / 1e9)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Events per second from the kernel into the real agent's JSON-lines file. The agent runs
/// (`ztagent run --events-file --metrics-addr`) in a namespace of its own, enforcing a veth;
/// this process loads the datapath on the agent's pinned maps (policy, conntrack, the event
/// ring buffer) with its own copy of the XDP program, never attached, and test-runs it with
/// the SYN of an allowed flow: every run takes the policy path and puts one "allowed" event in
/// the agent's ring buffer. A paced run, then an unpaced one, of `opts.events` events each.
/// Everything is removed on return, also on error (the harness guards).
fn event_throughput(opts: &Options) -> Result<Throughput> {
    eprintln!("ztbench: starting the agent for the event runs");
    let lan = Lan::new(&[EV_SERVER]);
    let host = &lan.hosts[0];
    let dir = TempDir::new();
    let policy = dir.file("policy.yaml", EV_POLICY);
    let events = dir.0.join("events.jsonl");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let args = [
        "--events-file",
        path_str(&events)?,
        // Never rotate during the runs: every line stays in one file to be counted.
        "--events-file-max-bytes",
        "1099511627776",
        "--metrics-addr",
        &metrics,
    ];
    let agent = Agent::start_with(&host.ns, &[&host.iface], Some(&policy), &args);
    // The pins belong to the agent, whose guard removes them: this process only drops its
    // handles (never `datapath::uninstall` here). The agent runs with the default limits.
    let parking = Netns::new("zb");
    let mut dp = Datapath::load(PinLayout::new(agent.pins.clone()), &Limits::default())
        .context("loading the datapath on the agent's maps")?;
    let prog: &mut Xdp = dp
        .ebpf
        .program_mut(programs::INGRESS)
        .context("the ingress program is missing")?
        .try_into()
        .context("the ingress program is not XDP")?;
    hold_in_dispatcher(prog, &parking)?;
    let ingress: &Xdp = dp
        .ebpf
        .program(programs::INGRESS)
        .context("the ingress program is missing")?
        .try_into()
        .context("the ingress program is not XDP")?;
    let server: Ipv4Addr = EV_SERVER.0.parse()?;
    let syn = tcp_frame(EV_CLIENT, server, 40000, 443, TCP_SYN);
    let mut tail = Tail::open(&events)?;

    // One event first: the pipeline works, and the agent names it as the policy says. (Real
    // traffic on the veth, e.g. an IGMP report, may bring an event of its own: skipped.)
    run_expect(ingress, "allowed SYN", &syn, 1, XDP_PASS)?;
    let t = Instant::now();
    let v: serde_json::Value = loop {
        let text = std::fs::read_to_string(&events).context("reading the events file")?;
        if let Some(line) = text.lines().find(|l| l.contains("\"verdict\":\"allowed\"")) {
            break serde_json::from_str(line).context("the first event")?;
        }
        ensure!(t.elapsed() < STALL, "the agent wrote no allowed event in {STALL:?}:\n{text}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(5));
    };
    let fields = [
        ("verdict", "allowed"),
        ("rule", EV_RULE),
        ("src_segment", "client"),
        ("dst_segment", "server"),
        ("src", "10.20.1.10"),
        ("dst", EV_SERVER.0),
    ];
    for (k, want) in fields {
        ensure!(v[k] == want, "the first event's {k} is {}, expected {want}: {v}", v[k]);
    }
    ensure!(v["dport"] == 443, "the first event's dport is {}, expected 443: {v}", v["dport"]);

    let agent_pid = agent.pid().to_string();
    let ctx = (&dp, &host.ns, agent_pid.as_str());
    let paced = through_agent(ingress, &syn, ctx, &mut tail, &events, opts.events, true)?;
    let unpaced = through_agent(ingress, &syn, ctx, &mut tail, &events, opts.events, false)?;
    drop(dp);
    drop(parking);
    drop(agent);
    Ok(Throughput { paced, unpaced })
}

/// Attaches `prog` in generic mode to the loopback of `ns`, a namespace where no packet ever
/// goes. Why: a test run of more than one repeat adds its XDP program to the kernel's XDP
/// dispatcher before running and removes it after, and each of these changes waits for an RCU
/// grace period (`synchronize_rcu`) unless the program is in the dispatcher already, as any
/// attached XDP program is. Measured here: 16-27 ms of every test run's wall time, the producer
/// asleep and the agent idle, which made paced runs measure the test runs, not the agent.
fn hold_in_dispatcher(prog: &mut Xdp, ns: &Netns) -> Result<()> {
    let path = ns.path();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<()> {
            let f = File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: setns with a network namespace fd affects only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            ensure!(rc == 0, "setns({path}): {}", std::io::Error::last_os_error());
            prog.attach("lo", XdpMode::Skb).context("attaching the test program to an idle loopback")?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread attaching the test program panicked"))?
    })
}

/// `total` events through the agent. Paced: a test run starts only when the file lacks at most
/// `PACE_AHEAD` of the events produced, so neither the ring buffer nor the file writer's
/// subscription can overflow. Unpaced: test runs back to back. Either way, then waits until
/// the agent has read every event the kernel did not lose, and written it (or reported it
/// missed).
fn through_agent(
    ingress: &Xdp,
    syn: &[u8],
    (dp, ns, agent_pid): (&Datapath, &Netns, &str),
    tail: &mut Tail,
    path: &Path,
    total: u64,
    paced: bool,
) -> Result<EventRun> {
    let label = if paced { "paced" } else { "unpaced" };
    eprintln!("ztbench: {label} run of {} events through the agent", fmt_count(total as usize));
    let start_lines = tail.lines()?;
    let start_bytes = tail.bytes;
    let m0 = scrape(ns)?;
    let lost0 = events_lost(dp)?;
    let (agent_cpu0, self_cpu0) = (cpu_secs(agent_pid)?, cpu_secs("self")?);
    let ((busy0, total0), switches0) = (machine_cpu()?, context_switches(agent_pid)?);
    let wait0 = cpu_wait_secs()?;
    let chunk = u64::from(if paced { PACE_CHUNK } else { UNPACED_CHUNK });
    let t0 = Instant::now();
    let mut watch = Watch { label, start_lines, lines: start_lines, last_change: t0, end: Duration::ZERO, t0 };

    let (mut produced, mut produce_secs, mut kernel_ns) = (0u64, 0.0, 0.0);
    while produced < total {
        let n = chunk.min(total - produced);
        if paced {
            while produced.saturating_sub(watch.poll(tail, "pacing")?) > PACE_AHEAD {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let t = Instant::now();
        let ns = run_expect(ingress, "allowed SYN", syn, n as u32, XDP_PASS)?;
        produce_secs += t.elapsed().as_secs_f64();
        kernel_ns += ns as f64 * n as f64;
        produced += n;
    }
    let lost = events_lost(dp)? - lost0;

    // Wait for the agent to read what the ring received, and to write it.
    let expect = produced - lost;
    let (mut read_secs, mut last_scrape) = (None, Instant::now());
    loop {
        if watch.poll(tail, "draining")? >= expect {
            break;
        }
        if read_secs.is_none() && last_scrape.elapsed() >= Duration::from_millis(20) {
            last_scrape = Instant::now();
            if scrape(ns)?.delivered - m0.delivered >= expect {
                read_secs = Some(t0.elapsed().as_secs_f64());
            }
        }
        if read_secs.is_some() && watch.last_change.elapsed() >= QUIET {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let end = watch.end;
    let (agent_cpu, self_cpu) = (cpu_secs(agent_pid)? - agent_cpu0, cpu_secs("self")? - self_cpu0);
    let ((busy1, total1), switches1) = (machine_cpu()?, context_switches(agent_pid)?);
    let wait1 = cpu_wait_secs()?;
    let m1 = scrape(ns)?;
    let delivered = m1.delivered - m0.delivered;
    ensure!(m1.lost - m0.lost == lost, "the agent's metrics count {} events lost, the kernel {lost}", m1.lost - m0.lost);
    let _ = tail.lines()?;
    let (records, missed, other, first_other) = count_lines(path, start_bytes, tail.bytes)?;
    Ok(EventRun {
        produced,
        secs: end.as_secs_f64(),
        produce_secs,
        run_ns: kernel_ns / produced.max(1) as f64,
        read_secs: read_secs.unwrap_or(end.as_secs_f64()),
        lost,
        delivered,
        records,
        missed,
        other,
        first_other,
        agent_cpu,
        self_cpu,
        others_cpu: ((busy1 - busy0) - agent_cpu - self_cpu).max(0.0),
        machine_cpu: total1 - total0,
        agent_switches: switches1.saturating_sub(switches0),
        producer_wait: wait1 - wait0,
    })
}

/// The growth of the events file during a run.
struct Watch {
    label: &'static str,
    start_lines: u64,
    lines: u64,
    /// When the file last grew, and that time since the start of the run.
    last_change: Instant,
    end: Duration,
    t0: Instant,
}

impl Watch {
    /// Lines written since the start of the run; fails when the file has not grown for `STALL`.
    fn poll(&mut self, tail: &mut Tail, what: &str) -> Result<u64> {
        let l = tail.lines()?;
        if l != self.lines {
            self.lines = l;
            self.last_change = Instant::now();
            self.end = self.t0.elapsed();
        }
        ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
        let label = self.label;
        ensure!(self.last_change.elapsed() < STALL, "{label} run: the agent wrote nothing for {STALL:?} ({what})");
        Ok(l - self.start_lines)
    }
}

/// The events section of the report; false when the throughput target fails.
fn event_report(s: &mut String, c: &EventCost, t: Option<&Throughput>, opts: &Options) -> bool {
    let _ = writeln!(
        s,
        "\nEvents, cost per packet (10 rules / 1,000 CIDRs; this process's own {} KiB ring buffer \
         ({} events), emptied before \"written\", filled before \"lost\": a full ring makes \
         `bpf_ringbuf_output` fail at the reservation, and the program counts `events_lost`; \
         medians of {} rounds, each of {} repeats of the allowed SYN, and of {} single runs of \
         first denied packets estimated as in the table):\n",
        c.ring_bytes >> 10,
        fmt_count(c.ring_events as usize),
        opts.runs,
        fmt_count(EVENT_COST_REPEAT as usize),
        fmt_count(FIRST_SAMPLES as usize),
    );
    let _ = writeln!(s, "| packet | event written ns | event lost ns | written - lost ns |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| allowed SYN (policy path, conntrack insert, one event) | {:.0} | {:.0} | {:.0} |",
        c.syn_written, c.syn_lost, c.syn_delta
    );
    let _ = writeln!(
        s,
        "| denied, first packet (policy path, denial cache insert, one event) | {:.0} | {:.0} | {:.0} |",
        c.first_written,
        c.first_lost,
        c.first_written - c.first_lost
    );
    let _ = writeln!(s, "| denied, repeat packet (aggregated away: no event) | {:.0} | | |", c.repeat_denied);
    let Some(t) = t else { return true };
    let (p, u) = (&t.paced, &t.unpaced);
    let _ = writeln!(
        s,
        "\nEvents through the agent (`ztagent run --events-file --metrics-addr` in a namespace, \
         default {} KiB ring buffer; this process test-runs the XDP program on the agent's maps \
         with the SYN of an allowed flow: one event per run, which the agent reads, names and \
         appends to its JSON-lines file):\n",
        Limits::default().events_bytes >> 10
    );
    // CPU time per event, what a shared machine's load changes least.
    let cpu = |r: &EventRun| {
        format!(
            "the agent used {:.2} CPU-s ({:.2} us per event; {:.0} context switches per 1,000 events), this \
             process {:.2} CPU-s ({:.2} us per event, test runs included; it waited {:.2} s for a CPU), \
             other processes {:.2} of the machine's {:.2} CPU-s",
            r.agent_cpu,
            r.agent_cpu * 1e6 / r.produced.max(1) as f64,
            r.agent_switches as f64 * 1e3 / r.produced.max(1) as f64,
            r.self_cpu,
            r.self_cpu * 1e6 / r.produced.max(1) as f64,
            r.producer_wait,
            r.others_cpu,
            r.machine_cpu,
        )
    };
    let _ = writeln!(
        s,
        "- Without loss (paced: a test run of {} events starts when at most {} are not in the file yet, \
         as the file writer's subscription holds {}): {} events in {:.3} s = **{} events/s** into the \
         file; events_lost +{}, read by the agent {}, in the file {} records and {} missed. The kernel \
         reported {:.0} ns per event; the test runs took {:.2} s of wall time; {}.",
        fmt_count(PACE_CHUNK as usize),
        fmt_count(PACE_AHEAD as usize),
        fmt_count(SINK_DEPTH as usize),
        fmt_count(p.produced as usize),
        p.secs,
        fmt_count(p.rate() as usize),
        fmt_count(p.lost as usize),
        fmt_count(p.delivered as usize),
        fmt_count(p.records as usize),
        fmt_count(p.missed as usize),
        p.run_ns,
        p.produce_secs,
        cpu(p),
    );
    let _ = writeln!(
        s,
        "- Unpaced (test runs of {} back to back): {} events produced in {:.3} s ({} events/s, \
         {:.0} ns per event); lost in the kernel (ring full) {}; read by the agent {} (all by \
         {:.2} s: {} events/s); in the file {} records and {} reported missed by its writer \
         (its last line at {:.2} s); {}.",
        fmt_count(UNPACED_CHUNK as usize),
        fmt_count(u.produced as usize),
        u.produce_secs,
        fmt_count((u.produced as f64 / u.produce_secs.max(1e-9)) as usize),
        u.run_ns,
        fmt_count(u.lost as usize),
        fmt_count(u.delivered as usize),
        u.read_secs,
        fmt_count((u.delivered as f64 / u.read_secs.max(1e-9)) as usize),
        fmt_count(u.records as usize),
        fmt_count(u.missed as usize),
        u.secs,
        cpu(u),
    );
    for r in [p, u] {
        if let Some(line) = &r.first_other {
            let _ = writeln!(s, "- Other lines in the file (real traffic on the agent's interface): {}, the first: `{line}`", r.other);
        }
    }
    let ok = p.lossless() && p.rate() >= MIN_EVENTS_PER_SEC;
    let _ = writeln!(
        s,
        "\n- {}: events into the agent without loss: {} events/s{} >= {} events/s",
        verdict(ok),
        fmt_count(p.rate() as usize),
        if p.lossless() { "" } else { " (NOT lossless)" },
        fmt_count(MIN_EVENTS_PER_SEC as usize)
    );
    ok
}
