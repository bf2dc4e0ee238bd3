//! Frames and the per-packet measurement (BPF_PROG_TEST_RUN): the probes, one row per policy
//! size, and the overhead of a rate limit.

use anyhow::Context as _;
use aya::programs::TestRun as _;

use super::{
    ACTION_ALLOW, ACTION_DENY, BucketSpec, CompiledPolicy, INTERRUPTED, Instant, IpAddr, Ipv4Addr, LimitScope,
    MapWriter, Mode, Options, Ordering, PROTO_TCP, Per, PinLayout, RateLimit, Result, SEG_CLIENT, SEG_DENIED,
    SEG_SERVER, SegRef, Segment, TestRunOptions, XDP_DROP, XDP_PASS, Xdp, bail, ensure, host_in, make_policy, policy,
    tcp,
};

pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;

/// Ethernet + IPv4 (IHL 5, no options) + TCP (20 bytes), padded to the 60-byte minimum
/// frame. Checksums are left at zero: the program never checks them.
pub(crate) fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
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

/// One BPF_PROG_TEST_RUN of `repeat` runs: the program's verdict and the mean cost of one
/// run in ns. The kernel reports the mean per repeat (total / repeat, rounded down to whole
/// ns), timing only the runs themselves (not time spent rescheduled).
pub(crate) fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

/// A test run that must return `want`.
pub(crate) fn run_expect(prog: &Xdp, what: &str, frame: &[u8], repeat: u32, want: u32) -> Result<u64> {
    let (ret, ns) = test_run(prog, frame, repeat).with_context(|| format!("{what} frame"))?;
    ensure!(ret == want, "{what} frame: the program returned {ret}, expected {want} ({})", xdp_name(want));
    Ok(ns)
}

pub(crate) fn xdp_name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "?",
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Which program a probe runs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Prog {
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
pub(crate) struct Probe {
    pub(crate) name: &'static str,
    pub(crate) prog: Prog,
    pub(crate) frame: Vec<u8>,
    pub(crate) want: u32,
}

/// Index in [`probes`] of what the main table reports.
pub(crate) const EMPTY: usize = 0;
pub(crate) const ESTABLISHED: usize = 1;
pub(crate) const DENIED: usize = 2;
pub(crate) const NEW_FLOW: usize = 3;
pub(crate) const REFERENCE: usize = 4;
pub(crate) const DENIED_FLOOR: usize = 5;
pub(crate) const GUARDED: usize = 6;

/// The frames of the benchmark. `[EMPTY]` must come first: every cost is a ratio to it.
/// With `breakdown`, frames that each skip a part of the denied path, to attribute its cost.
pub(crate) fn probes(breakdown: bool) -> Vec<Probe> {
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
pub(crate) const WORLD_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The first /32 of `segment` (see [`cidr_text`]).
pub(crate) fn host32(segment: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 + (segment * 2) as u32)
}

/// Checks in userspace, on the compiled maps, that the policy has the shape the measured
/// paths need: the client's SYN allowed by rule 1; the denied frames' pair present (so the
/// datapath does the port lookup too) and their packets denied by default; the world's
/// packet denied without a pair.
pub(crate) fn check_shape(c: &CompiledPolicy) -> Result<()> {
    let ip = |a: Ipv4Addr| IpAddr::V4(a);
    let server = ip(host_in(SEG_SERVER, 20));
    let allow = c.lookup(ip(host_in(SEG_CLIENT, 10)), server, PROTO_TCP, 443);
    ensure!(
        allow.action == ACTION_ALLOW && allow.rule == 1,
        "client -> server:443 is not allowed by rule 1: {allow:?}"
    );
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
pub(crate) struct Row {
    pub(crate) rules: usize,
    pub(crate) cidrs: usize,
    /// Per probe: median ns, and median of the per-round ratios to the empty program.
    pub(crate) cost: Vec<(f64, f64)>,
    /// Medians of the per-round ratios established / reference and denied / denied floor.
    pub(crate) vs_floor: (f64, f64),
    /// The first packet of a denied flow (the full policy path, before the denial is cached):
    /// estimated ns, and ratio to the empty program.
    pub(crate) first_denied: (f64, f64),
    pub(crate) compile_ms: f64,
    pub(crate) push_ms: f64,
    /// What the compiled policy holds.
    pub(crate) summary: String,
}

/// Samples of the first packet of a denied flow per row.
pub(crate) const FIRST_SAMPLES: u16 = 1001;

/// The cost of the first packet of a denied flow. Every later packet of a denied flow finds
/// its verdict in the denial cache, so `repeat` cannot measure the first one: each sample is
/// one run (`repeat` = 1) of a frame to a port not yet judged under this policy, paired with
/// one run of the empty program, whose difference cancels the fixed cost of a test run.
/// Returns (estimated ns, ratio to `empty_ns`).
pub(crate) fn first_denied(progs: [&Xdp; 2], empty_frame: &[u8], empty_ns: f64) -> Result<(f64, f64)> {
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
pub(crate) fn measure(
    writer: &mut MapWriter,
    (progs, [reference, denied_floor, guarded]): ([&Xdp; 2], [&Xdp; 3]),
    probes: &[Probe],
    compiled: &CompiledPolicy,
    (rules, cidrs, compile_ms): (usize, usize, f64),
    pins: &PinLayout,
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
    // The repeat denied probe flooded the CPU: the first packets of denied flows are measured
    // on the path they take on a CPU under no flood (one per flow: cached, one event each).
    end_flood(pins)?;
    let first_denied = first_denied(progs, &probes[EMPTY].frame, cost[EMPTY].0)?;
    let summary = compiled.summary().to_string();
    let vs_floor = (median(&mut est_ref), median(&mut den_floor));
    Ok(Row { rules, cidrs, cost, vs_floor, first_denied, compile_ms, push_ms, summary })
}

/// What a rate limit adds to an allowed packet (see [`limit_overhead`]), ns (medians).
pub(crate) struct LimitCost {
    pub(crate) limited: f64,
    pub(crate) plain: f64,
    /// Median of the per-round ratios limited / plain.
    pub(crate) ratio: f64,
    /// `zt_bench_fine` - `zt_bench_coarse` on the same frame: what reading the nanosecond
    /// clock instead of the coarse one costs.
    pub(crate) clock: f64,
}

/// The cost a rate limit adds to an allowed packet. One policy (10 rules over 1,000 CIDRs) lets
/// the client reach the server on 443 and 8443; a packets limit (high enough never to drop
/// here) applies to 443 only. Two established flows of the same client, measured in the same
/// rounds, differ only by the limit; each round starts with the CPU under no flood (see
/// [`end_flood`]). Beside them, `clocks` (`zt_bench_coarse`, `zt_bench_fine`) on the limited
/// frame: what the finer clock costs of the difference.
pub(crate) fn limit_overhead(
    writer: &mut MapWriter,
    progs: [&Xdp; 2],
    clocks: [&Xdp; 2],
    pins: &PinLayout,
    opts: &Options,
) -> Result<LimitCost> {
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
    let [coarse, fine] = clocks;
    let (mut limited, mut plain, mut ratio, mut clock) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        end_flood(pins)?;
        let l = run_expect(ingress, "rate-limited established", &flows[0].1, opts.repeat, XDP_PASS)? as f64;
        let u = run_expect(ingress, "unlimited established", &flows[1].1, opts.repeat, XDP_PASS)? as f64;
        let c = run_expect(coarse, "coarse clock", &flows[0].1, opts.repeat, XDP_PASS)? as f64;
        let f = run_expect(fine, "nanosecond clock", &flows[0].1, opts.repeat, XDP_PASS)? as f64;
        limited.push(l);
        plain.push(u);
        ratio.push(l / u.max(0.5));
        clock.push(f - c);
    }
    Ok(LimitCost {
        limited: median(&mut limited),
        plain: median(&mut plain),
        ratio: median(&mut ratio),
        clock: median(&mut clock),
    })
}

/// The scan's sources: a segment of their own that no rule names.
const SCANNERS: &str = "198.18.0.0/16";

/// The cost of a scan packet: a TCP SYN from a source never seen before the round, in a segment
/// the policy allows nothing, while the CPU is under a flood (its per-flow budget spent: the
/// datapath then keeps no per-flow state for such a source, so each of the `repeat` runs of the
/// frame is a packet from a source never seen, with warm CPU caches), against the
/// one-LPM-lookup program on the same frame in the same round. The policy is the table's 10
/// rules over 1,000 CIDRs without its `*` rule, plus the scanners' segment. The thread stays on
/// one CPU meanwhile (a test run runs on the caller's CPU, whose budget the round spends first).
/// Returns (scan ns, LPM ns, median ratio).
pub(crate) fn scan_packet(
    writer: &mut MapWriter,
    progs: [&Xdp; 2],
    lpm: &Xdp,
    opts: &Options,
) -> Result<(f64, f64, f64)> {
    let [_, ingress] = progs;
    let mut p = make_policy(10, 1000)?;
    p.rules.retain(|r| !r.from.contains(&SegRef::Any));
    p.segments.push(Segment {
        name: "scanners".into(),
        cidrs: vec![SCANNERS.parse().context("the scanners' CIDR")?],
        mode: Mode::Enforce,
        selector: None,
    });
    writer.apply(&policy::compile(&p)).context("installing the scan policy")?;
    let server = host_in(SEG_SERVER, 20);
    let flood = tcp_frame(Ipv4Addr::new(198, 18, 255, 255), server, 40000, 443, TCP_SYN);
    let budget = u32::try_from(agent_common::FLOOD_BUDGET).unwrap_or(u32::MAX) + 1;
    let rounds = opts.runs.max(1);
    let (mut scan, mut one_lpm, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    on_one_cpu(|| -> Result<()> {
        for i in 0..=rounds {
            let frame = tcp_frame(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8), server, 40000, 443, TCP_SYN);
            run_expect(ingress, "flood", &flood, budget, XDP_DROP)?;
            let s = run_expect(ingress, "scan", &frame, opts.repeat, XDP_DROP)? as f64;
            let l = run_expect(lpm, "one LPM lookup", &frame, opts.repeat, XDP_DROP)? as f64;
            // The first round warms up.
            if i > 0 {
                scan.push(s);
                one_lpm.push(l);
                ratio.push(s / l.max(0.5));
            }
        }
        Ok(())
    })?;
    Ok((median(&mut scan), median(&mut one_lpm), median(&mut ratio)))
}

/// Ends a flood on every CPU (`ZT_FLOOD_STATE` zeroed in the maps pinned under `pins`): what
/// runs next is measured on a CPU that has its budget of per-flow denials, as on a host under
/// no attack. (A probe that floods, e.g. a denied flow repeated 50,000 times, spends it: from
/// then on, for up to a second, the datapath takes its flood paths.)
pub(crate) fn end_flood(pins: &PinLayout) -> Result<()> {
    use agent_common::{FloodBudget, maps};
    use aya::maps::{MapData, PerCpuArray, PerCpuValues};
    let path = pins.maps().join(maps::FLOOD_STATE);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut state: PerCpuArray<_, FloodBudget> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).context("opening the flood state")?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting the CPUs")?;
    let zero = PerCpuValues::try_from(vec![FloodBudget::default(); cpus]).context("the flood state's values")?;
    state.set(0, zero, 0).context("resetting the flood state")?;
    Ok(())
}

/// Runs `f` with this thread kept on the CPU it runs on, the earlier CPU mask restored after.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: affinity calls on this thread with cpu_set_t buffers of the size they are given.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        let had = libc::sched_getaffinity(0, size, &mut old) == 0;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut one);
        libc::sched_setaffinity(0, size, &one);
        let r = f();
        if had {
            libc::sched_setaffinity(0, size, &old);
        }
        r
    }
}
