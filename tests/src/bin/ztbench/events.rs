//! What an event costs a packet (this process's own ring buffer), and the events section of
//! the report.

use super::{
    DENIED, Datapath, EMPTY, Event, EventRun, FIRST_SAMPLES, INTERRUPTED, Limits, MapData, MapWriter, NEW_FLOW,
    Options, Ordering, PACE_AHEAD, PACE_CHUNK, PinLayout, Probe, Result, RingBuf, Row, SINK_DEPTH, Throughput,
    UNPACED_CHUNK, XDP_PASS, Xdp, bail, check_shape, counter, end_flood, ensure, first_denied, fmt_count, make_policy,
    median, policy, run_expect, verdict,
};
use anyhow::Context as _;
use std::fmt::Write as _;

/// Bytes one event takes in a ring buffer: the kernel's 8-byte record header, then the event,
/// rounded up to 8.
pub(crate) const EVENT_RECORD_BYTES: u32 = (8 + std::mem::size_of::<Event>() as u32).div_ceil(8) * 8;

/// Repeats of the allowed SYN per measurement of the event cost: well under a ring's worth, so
/// that after the ring is emptied every one of its events is written.
pub(crate) const EVENT_COST_REPEAT: u32 = 20_000;

/// The target: events per second from the kernel into the agent (to its JSON-lines
/// file), without loss, on this machine (2 CPUs).
pub(crate) const MIN_EVENTS_PER_SEC: f64 = 500_000.0;

/// What an event costs a packet: ns, with the event written (the ring has room) or lost (the
/// ring is full, so `bpf_ringbuf_output` fails at the reservation and the program only counts
/// `events_lost`).
pub(crate) struct EventCost {
    /// The allowed SYN: policy path, conntrack insert, one event. Medians over the rounds.
    pub(crate) syn_written: f64,
    pub(crate) syn_lost: f64,
    /// Median of the per-round differences written - lost.
    pub(crate) syn_delta: f64,
    /// The first packet of a denied flow: policy path, denial cache insert, one event
    /// (estimated as in [`first_denied`]).
    pub(crate) first_written: f64,
    pub(crate) first_lost: f64,
    /// A repeat packet of a denied flow (aggregated away: no event), from the table's row.
    pub(crate) repeat_denied: f64,
    /// Events the ring holds.
    pub(crate) ring_events: u32,
    pub(crate) ring_bytes: u32,
}

/// The kernel's `events_lost` counter, summed over CPUs (shared by every program on the maps).
pub(crate) fn events_lost(dp: &Datapath) -> Result<u64> {
    let name = counter::NAMES[counter::EVENTS_LOST as usize];
    let all = dp.counters().context("reading the counters")?;
    all.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).context("no events_lost counter")
}

/// Empties `ring` (this process is its only reader). Returns how many events it held.
pub(crate) fn drain(ring: &mut RingBuf<MapData>) -> u64 {
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
pub(crate) fn event_cost(
    writer: &mut MapWriter,
    ring: &mut RingBuf<MapData>,
    dp: &Datapath,
    progs: [&Xdp; 2],
    probes: &[Probe],
    row: &Row,
    (ring_bytes, pins, opts): (u32, &PinLayout, &Options),
) -> Result<EventCost> {
    let [_, ingress] = progs;
    // The scan line before this ends with the CPU under a flood: every packet would take it.
    end_flood(pins)?;
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
        ensure!(
            l3 - l2 == u64::from(EVENT_COST_REPEAT),
            "with the ring full, {} of {EVENT_COST_REPEAT} events were lost",
            l3 - l2
        );
        written.push(w);
        lost.push(f);
        delta.push(w - f);
    }

    // The first packet of a denied flow, in rounds of both: each push is a new revision, under
    // which every denied flow is judged afresh, one event each, as long as the CPU is under no
    // flood: past its budget of per-flow denials (`FLOOD_BUDGET` a second), new denied flows
    // are counted in its per-segment aggregate instead (one event a second), which is not what
    // this measures. So each series of samples starts with a full budget, and spends less.
    const _: () = assert!(FIRST_SAMPLES as u64 <= agent_common::FLOOD_BUDGET);
    let empty_ns = row.cost[EMPTY].0;
    let (mut first_written, mut first_lost) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        writer.apply(&compiled).context("installing the policy")?;
        drain(ring);
        end_flood(pins)?;
        let l0 = events_lost(dp)?;
        first_written.push(first_denied(progs, &probes[EMPTY].frame, empty_ns)?.0);
        let l1 = events_lost(dp)?;
        ensure!(l1 == l0, "{} events of first denied packets lost while the ring had room", l1 - l0);
        fill()?;
        writer.apply(&compiled).context("installing the policy")?;
        end_flood(pins)?;
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

/// The events section of the report; false when the throughput target fails.
pub(crate) fn event_report(s: &mut String, c: &EventCost, t: Option<&Throughput>, opts: &Options) -> bool {
    let _ = writeln!(
        s,
        "\nEvents, cost per packet (10 rules / 1,000 CIDRs; this process's own {} KiB ring buffer \
         ({} events), emptied before \"written\", filled before \"lost\": a full ring makes \
         `bpf_ringbuf_output` fail at the reservation, and the program counts `events_lost`; \
         medians of {} rounds, each of {} repeats of the allowed SYN, and of {} single runs of \
         first denied packets estimated as in the table, each series on a CPU under no flood, so \
         that every denied flow is handled per flow, with an event of its own; past {} such \
         denials a second per CPU, new denied flows are counted per segment, one event a second, \
         without a cache entry):\n",
        c.ring_bytes >> 10,
        fmt_count(c.ring_events as usize),
        opts.runs,
        fmt_count(EVENT_COST_REPEAT as usize),
        fmt_count(FIRST_SAMPLES as usize),
        fmt_count(agent_common::FLOOD_BUDGET as usize),
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
    throughput_report(s, t)
}

/// CPU time per event, what a shared machine's load changes least.
fn cpu(r: &EventRun) -> String {
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
}

/// The throughput part of the events section; false when its target fails.
fn throughput_report(s: &mut String, t: &Throughput) -> bool {
    let (p, u) = (&t.paced, &t.unpaced);
    let _ = writeln!(
        s,
        "\nEvents through the agent (`ztagent run --events-file --metrics-addr` in a namespace, \
         default {} KiB ring buffer; this process test-runs the XDP program on the agent's maps \
         with the SYN of an allowed flow: one event per run, which the agent reads, names and \
         appends to its JSON-lines file):\n",
        Limits::default().events_bytes >> 10
    );
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
            let _ = writeln!(
                s,
                "- Other lines in the file (real traffic on the agent's interface): {}, the first: `{line}`",
                r.other
            );
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
