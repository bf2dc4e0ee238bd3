//! Events per second into the real agent without loss: a daemon in a namespace, this process
//! test-running its copy of the program on the daemon's pinned maps.

use anyhow::Context as _;
use std::io::{BufRead as _, Read as _, Seek as _};
use std::os::fd::AsRawFd as _;

use super::{
    Agent, BufReader, Datapath, Duration, File, INTERRUPTED, Instant, Ipv4Addr, Lan, Limits, Netns, Options, Ordering,
    Path, PinLayout, Result, SeekFrom, TCP_SYN, TempDir, XDP_PASS, Xdp, XdpMode, ensure, events_lost, fmt_count,
    programs, run_expect, tcp_frame,
};

/// The host the agent enforces in the throughput runs, and a client of a segment it allows.
pub(crate) const EV_SERVER: (&str, &str) = ("10.20.2.10", "fd20:2::10");
pub(crate) const EV_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 10);
pub(crate) const EV_RULE: &str = "client-to-server";
pub(crate) const EV_POLICY: &str = "\
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
pub(crate) const METRICS_PORT: u16 = 9464;
/// How far the agent's file writer may fall behind the event stream before it misses records
/// and writes `{"missed": N}` instead: the depth of every subscription (`CLIENT_LAG` in the
/// daemon). A tighter bound than the ring buffer (~47,000 events of 4 MiB).
pub(crate) const SINK_DEPTH: u64 = 16_384;
/// Paced runs: events per test run, started only when at most `PACE_AHEAD` events are not in
/// the file yet, so that never more than `PACE_AHEAD + PACE_CHUNK` < `SINK_DEPTH` are in flight.
pub(crate) const PACE_CHUNK: u32 = 4_096;
pub(crate) const PACE_AHEAD: u64 = 12_000;
/// Unpaced runs: events per test run, back to back.
pub(crate) const UNPACED_CHUNK: u32 = 50_000;
/// Waiting for the agent fails when its file does not grow for this long.
pub(crate) const STALL: Duration = Duration::from_secs(15);
/// After the agent has read every event, its writer is done once the file stops growing for
/// this long (the events it missed are not coming).
pub(crate) const QUIET: Duration = Duration::from_millis(500);

/// One run of events through the agent.
pub(crate) struct EventRun {
    /// Events the kernel produced (test runs).
    pub(crate) produced: u64,
    /// From the first test run to the last line in the file.
    pub(crate) secs: f64,
    /// Wall time spent in test runs, and the kernel's mean ns per run.
    pub(crate) produce_secs: f64,
    pub(crate) run_ns: f64,
    /// When the agent had read every event not lost (unpaced runs; from the metrics, polled).
    pub(crate) read_secs: f64,
    /// `events_lost` (kernel: the ring was full), `ztagent_events_delivered_total` (read by the
    /// agent), and in the file: records, events reported missed, other lines.
    pub(crate) lost: u64,
    pub(crate) delivered: u64,
    pub(crate) records: u64,
    pub(crate) missed: u64,
    pub(crate) other: u64,
    pub(crate) first_other: Option<String>,
    /// CPU seconds the agent and this process (the producer, test runs included) used.
    pub(crate) agent_cpu: f64,
    pub(crate) self_cpu: f64,
    /// CPU seconds every other process used meanwhile, and the machine's (CPUs x wall time).
    pub(crate) others_cpu: f64,
    pub(crate) machine_cpu: f64,
    /// The agent's context switches (all threads).
    pub(crate) agent_switches: u64,
    /// Seconds the producing thread (this one) was runnable but waiting for a CPU.
    pub(crate) producer_wait: f64,
}

impl EventRun {
    pub(crate) fn lossless(&self) -> bool {
        // Other lines (events of real traffic on the agent's veth, if any) are no loss.
        self.lost == 0 && self.missed == 0 && self.records == self.produced
    }
    pub(crate) fn rate(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }
}

pub(crate) struct Throughput {
    pub(crate) paced: EventRun,
    pub(crate) unpaced: EventRun,
}

/// The agent's events file, read as it grows.
pub(crate) struct Tail {
    pub(crate) file: File,
    pub(crate) buf: Vec<u8>,
    pub(crate) bytes: u64,
    pub(crate) lines: u64,
}

impl Tail {
    pub(crate) fn open(path: &Path) -> Result<Tail> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Tail { file, buf: vec![0; 1 << 20], bytes: 0, lines: 0 })
    }

    /// Lines in the file now.
    pub(crate) fn lines(&mut self) -> Result<u64> {
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
pub(crate) fn count_lines(path: &Path, from: u64, to: u64) -> Result<(u64, u64, u64, Option<String>)> {
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
pub(crate) struct AgentMetrics {
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
}

pub(crate) fn scrape(ns: &Netns) -> Result<AgentMetrics> {
    let text = integration_tests::get_metrics(ns, METRICS_PORT).context("scraping the agent's metrics")?;
    ensure!(
        text.starts_with("HTTP/1.1 200"),
        "the agent's metrics endpoint answered: {}",
        text.lines().next().unwrap_or("")
    );
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in the agent's metrics"))
    };
    Ok(AgentMetrics { delivered: value("ztagent_events_delivered_total")?, lost: value("ztagent_events_lost_total")? })
}

/// CPU time (user + system, all threads) of process `pid` ("self": this one), in seconds.
pub(crate) fn cpu_secs(pid: &str) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
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
pub(crate) fn machine_cpu() -> Result<(f64, f64)> {
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
pub(crate) fn context_switches(pid: &str) -> Result<u64> {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("reading /proc/{pid}/task"))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        for l in status.lines() {
            if let Some(v) =
                l.strip_prefix("voluntary_ctxt_switches:").or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(n)
}

/// Seconds this thread has spent runnable but waiting for a CPU.
pub(crate) fn cpu_wait_secs() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("reading /proc/thread-self/schedstat")?;
    // Time on a CPU, time waiting on a run queue (ns), timeslices.
    let wait = s.split_whitespace().nth(1).context("a short schedstat")?;
    Ok(wait.parse::<f64>().context("a malformed schedstat")? / 1e9)
}

pub(crate) fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Events per second from the kernel into the real agent's JSON-lines file. The agent runs
/// (`ztagent run --events-file --metrics-addr`) in a namespace of its own, enforcing a veth;
/// this process loads the datapath on the agent's pinned maps (policy, conntrack, the event
/// ring buffer) with its own copy of the XDP program, never attached, and test-runs it with
/// the SYN of an allowed flow: every run takes the policy path and puts one "allowed" event in
/// the agent's ring buffer. A paced run, then an unpaced one, of `opts.events` events each.
/// Everything is removed on return, also on error (the harness guards).
pub(crate) fn event_throughput(opts: &Options) -> Result<Throughput> {
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
pub(crate) fn hold_in_dispatcher(prog: &mut Xdp, ns: &Netns) -> Result<()> {
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
pub(crate) fn through_agent(
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
    ensure!(
        m1.lost - m0.lost == lost,
        "the agent's metrics count {} events lost, the kernel {lost}",
        m1.lost - m0.lost
    );
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
pub(crate) struct Watch {
    pub(crate) label: &'static str,
    pub(crate) start_lines: u64,
    pub(crate) lines: u64,
    /// When the file last grew, and that time since the start of the run.
    pub(crate) last_change: Instant,
    pub(crate) end: Duration,
    pub(crate) t0: Instant,
}

impl Watch {
    /// Lines written since the start of the run; fails when the file has not grown for `STALL`.
    pub(crate) fn poll(&mut self, tail: &mut Tail, what: &str) -> Result<u64> {
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
