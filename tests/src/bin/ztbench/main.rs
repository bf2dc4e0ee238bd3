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
mod events;
mod measure;
mod policies;
mod report;
mod throughput;
mod txring;

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufReader, SeekFrom},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use agent_common::{ACTION_ALLOW, ACTION_DENY, Event, PROTO_TCP, counter, maps, programs};
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{Program, TestRunOptions, Xdp, XdpMode},
};
mod fleet;

use integration_tests::{Agent, Lan, Netns, Rng, TempDir};

use events::*;
use measure::*;
use policies::*;
use report::*;
use throughput::*;

mod inventory;
mod k8s;
mod parse;
use ztagent::{
    kernel::{
        datapath::{self, Datapath, Limits, PinLayout},
        mapwriter::MapWriter,
    },
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
/// A scan packet (a source never seen, under a flood) costs at most this much more than the
/// one-LPM-lookup program (issue 18).
const MAX_SCAN_VS_LPM: f64 = 2.0;

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
                     \x20            xdp-filter, nftables netdev ingress and inet input; also part of the default run)\n\
                     --rounds N   rounds of the comparative benchmark (default 5, quick 3)\n\
                     --json PATH  also write the comparative benchmark's results as JSON\n\
                     --quick      only 10 and 1,000 rules over 1,000 CIDRs, fewer repeats (the comparative\n\
                     \x20            benchmark keeps N = 10, 1,000 and 100,000, with fewer frames)\n\
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

fn run() -> Result<bool> {
    let opts = parse_args()?;
    // Kubernetes translation: a CLI run, no root needed.
    let k8s_runs = if opts.quick { 5 } else { 9 };
    // Policy input: parse throughput (YAML against JSON), rounds as in the packet runs' quick mode.
    let parse_rounds = if opts.quick { 3 } else { 7 };
    if let Some(ok) = run_without_pins(&opts, k8s_runs, parse_rounds)? {
        return Ok(ok);
    }
    // From here on there are pins to remove: turn Ctrl-C into an error the guards see.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let compare_opts = compare::CompareOptions { quick: opts.quick, rounds: opts.rounds, json: opts.json.clone() };
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
    let compiled = compile_policies(&sizes)?;
    let pins = PinLayout::new(format!("/sys/fs/bpf/ztbench-{}", std::process::id()));
    let _guard = PinGuard(pins.clone());
    let mut all_ok = in_kernel(pins, &sizes, &compiled, &opts, (k8s_runs, parse_rounds))?;
    if opts.packets_only {
        return Ok(all_ok || !opts.check);
    }
    all_ok &= compare::run(&compare_opts)?;
    Ok(all_ok || !opts.check)
}

/// The sections that pin nothing (`--k8s`, `--inventory`, `--parse`): their verdict, or None
/// when none of them was asked for. Past the Kubernetes one, root is required.
fn run_without_pins(opts: &Options, k8s_runs: usize, parse_rounds: usize) -> Result<Option<bool>> {
    if opts.k8s_only {
        let mut text = String::new();
        let ok = k8s::translate_time(&mut text, k8s_runs)?;
        println!("{text}");
        write_report(opts, &text)?;
        return Ok(Some(ok || !opts.check));
    }
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "BPF_PROG_TEST_RUN needs root");
    if opts.inventory_only {
        let mut text = inventory::memory(100_000)?;
        text.push_str(&inventory::table_read()?);
        println!("{text}");
        write_report(opts, &text)?;
        return Ok(Some(true));
    }
    if opts.parse_only {
        let (mut text, ok) = parse::throughput(opts.parse_mb, parse_rounds)?;
        text.push_str(&inventory::memory(100_000)?);
        println!("{text}");
        write_report(opts, &text)?;
        return Ok(Some(ok || !opts.check));
    }
    Ok(None)
}

/// Builds and compiles every policy first, so the maps can be sized for the largest two (a
/// push writes the inactive slot while the previous policy is still in force).
fn compile_policies(sizes: &[(usize, usize)]) -> Result<Vec<(CompiledPolicy, f64)>> {
    let mut compiled = Vec::new();
    for &(rules, cidrs) in sizes {
        eprintln!("ztbench: compiling {} rules over {} CIDRs", fmt_count(rules), fmt_count(cidrs));
        let p = make_policy(rules, cidrs)?;
        let t = Instant::now();
        let c = policy::compile(&p);
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        check_shape(&c).with_context(|| format!("policy of {rules} rules over {cidrs} CIDRs"))?;
        eprintln!("ztbench:   {} ({compile_ms:.0} ms)", c.summary());
        compiled.push((c, compile_ms));
    }
    Ok(compiled)
}

/// Maps with room for twice the largest compiled policy.
fn limits_for(compiled: &[(CompiledPolicy, f64)]) -> Limits {
    let max = |f: fn(&CompiledPolicy) -> usize| compiled.iter().map(|(c, _)| f(c)).max().unwrap_or(0);
    let room = |n: usize| u32::try_from(2 * n + 1024).unwrap_or(u32::MAX);
    Limits {
        hosts: room(max(|c| c.hosts.len())),
        cidrs: room(max(|c| c.cidrs.len())),
        pairs: room(max(|c| c.pairs.len())),
        ports: room(max(|c| c.ports.len())),
        conntrack: 4096,
        frags: 1024,
        ..Limits::default()
    }
}

/// The datapath loaded on `pins`, the benchmark's own object with its reference programs (on
/// the same pinned maps), the policy writer and this process's own event ring buffer (nobody
/// else reads it, so it is full after the first ~48,000 events of the table's runs; the event
/// section drains it, or not, itself).
fn load(pins: PinLayout, limits: &Limits) -> Result<(Datapath, Ebpf, MapWriter, RingBuf<MapData>)> {
    let mut dp = Datapath::load(pins, limits).context("loading the datapath")?;
    let mut bench = dp.load_bench(limits).context("loading the benchmark's object")?;
    for name in [
        programs::BASELINE,
        programs::REFERENCE,
        programs::DENIED_FLOOR,
        programs::BENCH_LPM,
        programs::BENCH_COARSE,
        programs::BENCH_FINE,
    ] {
        let prog: &mut Xdp = bench
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the benchmark's object"))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        prog.load().with_context(|| format!("loading {name}"))?;
    }
    let writer = MapWriter::new(&mut dp.ebpf, limits).context("opening the policy maps")?;
    allow_guarded_source(&mut dp)?;
    let ring = RingBuf::try_from(dp.ebpf.take_map(maps::EVENTS).context("the event ring buffer is missing")?)
        .context("opening the event ring buffer")?;
    Ok((dp, bench, writer, ring))
}

/// Everything measured on the datapath loaded in this process: the per-packet table, the
/// rate-limit overhead, then (unless `--packets`) events, policy input, inventory, Kubernetes
/// and fleet. Prints and writes the report; true when every target passed.
fn in_kernel(
    pins: PinLayout,
    sizes: &[(usize, usize)],
    compiled: &[(CompiledPolicy, f64)],
    opts: &Options,
    (k8s_runs, parse_rounds): (usize, usize),
) -> Result<bool> {
    let limits = limits_for(compiled);
    let (dp, bench, mut writer, mut ring) = load(pins.clone(), &limits)?;
    let xdp = |ebpf: &'static str, name: &str| -> Result<&Xdp> {
        let ebpf = if ebpf == "bench" { &bench } else { &dp.ebpf };
        let p: &Program = ebpf.program(name).with_context(|| format!("program {name} missing"))?;
        p.try_into().with_context(|| format!("{name} is not an XDP program"))
    };
    let (ingress, baseline) = (xdp("agent", programs::INGRESS)?, xdp("bench", programs::BASELINE)?);
    let floors = [
        xdp("bench", programs::REFERENCE)?,
        xdp("bench", programs::DENIED_FLOOR)?,
        xdp("agent", programs::INGRESS_GUARDED)?,
    ];

    let probes = probes(opts.breakdown);
    let mut rows = Vec::new();
    for (&(rules, cidrs), (c, compile_ms)) in sizes.iter().zip(compiled) {
        eprintln!("ztbench: measuring {} rules over {} CIDRs", fmt_count(rules), fmt_count(cidrs));
        let row =
            measure(&mut writer, ([baseline, ingress], floors), &probes, c, (rules, cidrs, *compile_ms), &pins, opts)
                .with_context(|| format!("{rules} rules over {cidrs} CIDRs"))?;
        rows.push(row);
    }

    let (mut text, mut all_ok) = report(&rows, &probes, opts);
    let clocks = [xdp("bench", programs::BENCH_COARSE)?, xdp("bench", programs::BENCH_FINE)?];
    let l = limit_overhead(&mut writer, [baseline, ingress], clocks, &pins, opts)?;
    let ok = l.ratio <= MAX_LIMIT_OVERHEAD;
    all_ok &= ok;
    let _ = writeln!(
        text,
        "\nRate limits (10 rules / 1,000 CIDRs, one rate limit; the CPU under no flood): an established \
         allowed packet under a packets limit {:.0} ns, the same packet without one {:.0} ns; of the \
         {:.0} ns between them, the nanosecond clock (read instead of the coarse one) {:.0} ns.\n\n\
         - {}: rate-limited / unlimited allowed packet = {:.2} <= {MAX_LIMIT_OVERHEAD}",
        l.limited,
        l.plain,
        l.limited - l.plain,
        l.clock,
        verdict(ok),
        l.ratio
    );
    let lpm = xdp("bench", programs::BENCH_LPM)?;
    let (scan, one_lpm, ratio) = scan_packet(&mut writer, [baseline, ingress], lpm, opts)?;
    let ok = ratio <= MAX_SCAN_VS_LPM;
    all_ok &= ok;
    let _ = writeln!(
        text,
        "\nScan (10 rules / 1,000 CIDRs, the scanners a segment allowed nothing): a TCP SYN from a \
         source never seen, under a flood (no per-flow state kept for it), {scan:.0} ns; the \
         one-LPM-lookup program on the same frame {one_lpm:.0} ns.\n\n- {}: scan packet / one LPM lookup = {ratio:.2} <= {MAX_SCAN_VS_LPM}",
        verdict(ok)
    );
    if opts.packets_only {
        println!("{text}");
        write_report(opts, &text)?;
        return Ok(all_ok);
    }

    // Events: what one costs a packet (this process's ring), then what the agent sustains.
    eprintln!("ztbench: measuring the cost of an event (10 rules over 1,000 CIDRs)");
    let cost = event_cost(
        &mut writer,
        &mut ring,
        &dp,
        [baseline, ingress],
        &probes,
        &rows[0],
        (limits.events_bytes, &pins, opts),
    )?;
    let throughput = if opts.events > 0 { Some(event_throughput(opts)?) } else { None };
    all_ok &= event_report(&mut text, &cost, throughput.as_ref(), opts);
    let (parsing, ok) = parse::throughput(opts.parse_mb, parse_rounds)?;
    text.push_str(&parsing);
    text.push_str(&inventory::memory(100_000)?);
    text.push_str(&inventory::table_read()?);
    all_ok &= ok;
    all_ok &= k8s::translate_time(&mut text, k8s_runs)?;
    fleet::push_to_enforced(&mut text)?;
    println!("{text}");
    write_report(opts, &text)?;
    drop(ring);
    drop(writer);
    drop(dp);
    Ok(all_ok)
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
