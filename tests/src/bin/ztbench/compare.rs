//! The comparative benchmark (issue 11): packets per second a host drops (and passes) with
//! ztagent, against an XDP drop-all program (the limit) and nftables (netdev ingress and inet
//! input, each with an interval set), at N CIDRs, on live traffic.
//!
//! Traffic: a sender namespace and a receiver namespace joined by a veth pair. The generator is
//! an XDP program of the same object (`zt_bench_tx`, or `zt_bench_scan`, which randomises the
//! low 16 bits of the source) run by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on
//! the sender's veth, pinned to CPU 0: every repeat is a real frame sent out of the veth
//! (XDP_TX) into the receiver, whose veth NAPI runs threaded, its kthread pinned to CPU 1.
//! The dropper under test sits on the receiving veth (XDP) or in the receiver's nftables. The
//! receiver always has an XDP program (the empty `zt_baseline` for nftables and "no program"),
//! because a veth only takes XDP_TX frames into a NAPI ring when it has one.
//!
//! Rates: what the receiver processed (`rx_packets` of its veth) or delivered to its stack
//! (`Ip InDelivers`), divided by the sender's wall time. Frames the receiver cannot keep up
//! with are lost in the veth ring, so the rate is the dropper's, not the generator's.
//!
//! Droppers are interleaved round by round; each figure is the median of the rounds, with
//! their minimum and maximum.
use std::{
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use agent_common::programs;
use anyhow::{Context, Result, bail, ensure};
use aya::programs::{Xdp, XdpMode};
use integration_tests::{Netns, unique, veth};
use ztagent::{
    kernel::datapath::{Datapath, Limits, PinLayout},
    kernel::mapwriter::MapWriter,
    policy::{self, Action, Mode, Policy, PortSpec, Proto, Rule, SegRef, Segment},
};

use super::{INTERRUPTED, PinGuard, fmt_count, median, verdict};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 20);
/// Denied sources: one (`SCANNER`), or 65,536 (`SCANNER`'s /16, see `zt_bench_scan`).
const SCANNER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 9;

/// Targets of issue 11.
const MIN_VS_NETDEV: f64 = 4.0;
const MIN_VS_INET: f64 = 5.0;
const MIN_VS_DROP_ALL: f64 = 0.5;
const MIN_SCAN_VS_NETDEV: f64 = 3.0;
const MIN_ALLOWED_VS_NONE: f64 = 0.9;

/// What `--compare`, `--quick`, `--rounds` and `--json` ask of the comparative benchmark.
pub struct CompareOptions {
    pub quick: bool,
    pub rounds: usize,
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dropper {
    /// The empty XDP program only: the path with no filter.
    None,
    DropAll,
    /// One LPM lookup of the source in ztagent's CIDR trie, drop on a hit (`zt_bench_lpm`).
    Lpm,
    Ztagent,
    NftNetdev,
    NftInet,
    /// Breakdown, denied traffic (one source and the scan): parse + one conntrack lookup, drop
    /// on the miss (`zt_reference`).
    Reference,
    /// Breakdown, denied traffic: parse, conntrack miss, the denial-cache lookup, drop on a
    /// hit, pass on a miss (`zt_denied_floor`; the cache entries are the ones ztagent wrote
    /// just before: for the scan, as many of its 65,536 flows as the cache kept).
    DeniedFloor,
}

impl Dropper {
    const ALL: [Dropper; 8] = [
        Dropper::None,
        Dropper::DropAll,
        Dropper::Lpm,
        Dropper::Ztagent,
        Dropper::DeniedFloor,
        Dropper::Reference,
        Dropper::NftNetdev,
        Dropper::NftInet,
    ];
    fn name(self) -> &'static str {
        match self {
            Dropper::None => "no program",
            Dropper::DropAll => "XDP drop-all",
            Dropper::Lpm => "XDP one LPM lookup",
            Dropper::Ztagent => "ztagent",
            Dropper::NftNetdev => "nft netdev ingress",
            Dropper::NftInet => "nft inet input",
            Dropper::Reference => "parse + ct lookup",
            Dropper::DeniedFloor => "denied floor",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Traffic {
    Denied,
    Scan,
    Allowed,
}

impl Traffic {
    const ALL: [Traffic; 3] = [Traffic::Denied, Traffic::Scan, Traffic::Allowed];
    fn name(self) -> &'static str {
        match self {
            Traffic::Denied => "denied, one source",
            Traffic::Scan => "denied, scan from 65,536 sources",
            Traffic::Allowed => "allowed, established",
        }
    }
}

/// Ethernet + IPv4 + UDP (8 bytes of payload), UDP checksum zero (none, valid for IPv4); the
/// stack answers the allowed datagrams with (rate-limited) port unreachables.
fn udp_frame(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&16u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0; 8]);
    f.resize(60, 0);
    // The IPv4 header checksum: the stack drops a frame without a valid one before nft's inet
    // hooks (`zt_bench_scan` updates it incrementally).
    let mut sum: u32 = f[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// CIDR `k` of the filler: distinct IPv4 /28s in 11.0.0.0/8, never a benchmark address.
fn filler(k: usize) -> String {
    format!("{}/28", Ipv4Addr::from(0x0b00_0000 + (k as u32) * 16))
}

/// ztagent's policy of `n` CIDRs: client -> server:9/udp allowed; the scanners' /16 in a
/// segment of its own (denied by default); the rest filler segments of ten CIDRs joined by
/// rules among themselves.
fn ztagent_policy(n: usize) -> Result<Policy> {
    let seg = |name: &str, cidrs: Vec<String>| -> Result<Segment> {
        let cidrs = cidrs.iter().map(|c| c.parse().with_context(|| format!("CIDR {c}"))).collect::<Result<_>>()?;
        Ok(Segment { name: name.into(), cidrs, mode: Mode::Enforce, selector: None })
    };
    let mut segments = vec![
        seg("client", vec![format!("{CLIENT}/32")])?,
        seg("server", vec![format!("{SERVER}/32")])?,
        seg("scanners", vec!["198.18.0.0/16".into()])?,
    ];
    let rest = n.saturating_sub(3);
    for (i, chunk) in (0..rest).collect::<Vec<_>>().chunks(10).enumerate() {
        segments.push(seg(&format!("f{i}"), chunk.iter().map(|&k| filler(k)).collect())?);
    }
    let rule = |name: String, from, to, port: u16| Rule {
        name,
        description: None,
        from: vec![from],
        to: vec![to],
        ports: Some(vec![PortSpec::Range { proto: Proto::Udp, lo: port, hi: port }]),
        action: Action::Allow,
        mode: Mode::Enforce,
        grant: None,
    };
    let mut rules = vec![rule("client-to-server".into(), SegRef::Named(0), SegRef::Named(1), PORT)];
    let fillers = segments.len() - 3;
    for i in 0..fillers {
        rules.push(rule(format!("r{i}"), SegRef::Named(3 + i), SegRef::Named(3 + (i + 1) % fillers), 1000 + (i % 60000) as u16));
    }
    Ok(Policy { default_action: Action::Deny, segments, rules, ..Policy::default() })
}

/// The nftables set of `n` CIDRs: the scanners' /16 and `n - 1` filler CIDRs.
fn nft_elements(n: usize) -> String {
    let mut s = String::from("198.18.0.0/16");
    for k in 0..n.saturating_sub(1) {
        s.push_str(", ");
        s.push_str(&filler(k));
    }
    s
}

/// Runs `f` on a thread inside `ns` (network namespace only).
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = ns.path();
    std::thread::scope(|s| {
        let path = &path;
        s.spawn(move || -> Result<T> {
            let file = File::open(path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: setns with a network namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            ensure!(rc == 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
    })
}

fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity({pid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// BPF_PROG_TEST_RUN with live frames: `repeat` copies of `frame` through `prog_fd` as if
/// received on `ifindex`, in the calling thread's namespace. aya 0.14 does not expose the
/// flags, hence the raw syscall.
fn live_run(prog_fd: i32, ifindex: u32, frame: &[u8], repeat: u32) -> Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex;
    // the kernel wants data_end = the frame's length.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..TestAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; its pointers outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, size_of::<TestAttr>()) };
    ensure!(rc == 0, "BPF_PROG_TEST_RUN with live frames: {}", std::io::Error::last_os_error());
    Ok(())
}

/// The two namespaces, the veth between them, and what lives in the receiver.
struct Bench {
    tx: Netns,
    rx: Netns,
    rx_if: String,
    tx_index: u32,
    rx_index: u32,
    rx_mac: [u8; 6],
}

fn ifindex(ns: &Netns, name: &str) -> Result<u32> {
    let out = ns.ip(&["-j", "link", "show", "dev", name]);
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    let i = v[0]["ifindex"].as_u64().context("no ifindex")?;
    Ok(i as u32)
}

impl Bench {
    fn new() -> Result<Bench> {
        let (tx, rx) = (Netns::new("zcs"), Netns::new("zcr"));
        let (tx_if, rx_if) = (unique("ga"), unique("gb"));
        veth(&tx, &tx_if, &rx, &rx_if);
        tx.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", &tx_if]);
        rx.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", &rx_if]);
        let sysctl = |k: &str| -> Result<()> {
            let o = rx.exec(&["sysctl", "-qw", &format!("{k}=0")]);
            ensure!(o.status.success(), "sysctl {k}: {}", String::from_utf8_lossy(&o.stderr));
            Ok(())
        };
        sysctl("net.ipv4.conf.all.rp_filter")?;
        sysctl(&format!("net.ipv4.conf.{rx_if}.rp_filter"))?;
        let out = rx.ip(&["-j", "link", "show", "dev", &rx_if]);
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        let mac_text = v[0]["address"].as_str().context("no MAC")?;
        let mut rx_mac = [0u8; 6];
        for (i, b) in mac_text.split(':').enumerate().take(6) {
            rx_mac[i] = u8::from_str_radix(b, 16).context("MAC")?;
        }
        Ok(Bench { tx_index: ifindex(&tx, &tx_if)?, rx_index: ifindex(&rx, &rx_if)?, tx, rx, rx_if, rx_mac })
    }

    /// Pins the receiver's NAPI kthreads (named `napi/IF-ID`, 15 bytes at most) to CPU 1.
    /// Threaded NAPI first (a veth has NAPI instances only while it has an XDP program), so
    /// the receiver's work runs in kthreads that can be pinned.
    fn pin_napi(&self) -> Result<usize> {
        let rx_if = &self.rx_if;
        let o = Command::new("ip")
            .args(["netns", "exec", &self.rx.name, "sh", "-c", &format!("echo 1 > /sys/class/net/{rx_if}/threaded")])
            .output()?;
        ensure!(o.status.success(), "threaded NAPI on {rx_if}: {}", String::from_utf8_lossy(&o.stderr));
        let want: String = format!("napi/{}-", self.rx_if).chars().take(15).collect();
        let mut n = 0;
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
            let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else { continue };
            if comm.trim_end().starts_with(&want) || comm.trim_end() == want.trim_end_matches('-') {
                pin_to_cpu(pid, 1)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn rx_packets(&self) -> Result<u64> {
        let out = self.rx.ip(&["-s", "-j", "link", "show", "dev", &self.rx_if]);
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -s -j link")?;
        v[0]["stats64"]["rx"]["packets"].as_u64().context("no rx packets")
    }

    fn in_delivers(&self) -> Result<u64> {
        let o = self.rx.exec(&["cat", "/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&o.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (lines.next().context("no Ip: header")?, lines.next().context("no Ip: values")?);
        let i = names.split_whitespace().position(|w| w == "InDelivers").context("no InDelivers")?;
        values.split_whitespace().nth(i).context("short Ip: line")?.parse().context("InDelivers")
    }

    fn nft(&self, script: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.rx.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        {
            use std::io::Write;
            child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
        }
        let o = child.wait_with_output()?;
        ensure!(o.status.success(), "nft failed: {}", String::from_utf8_lossy(&o.stderr));
        Ok(())
    }
}

/// One measurement: Mpps per round.
#[derive(Default, Clone)]
struct Cell {
    mpps: Vec<f64>,
    /// Nanoseconds per packet inside the dropper's XDP program, from the kernel's program
    /// statistics in the extra round that has them on (they cost every program two clock
    /// reads, so the rates are measured with them off).
    prog_ns: Vec<f64>,
}

impl Cell {
    fn med(&self) -> f64 {
        median(&mut self.mpps.clone())
    }
    fn min(&self) -> f64 {
        self.mpps.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.mpps.iter().copied().fold(0.0, f64::max)
    }
}

/// Results: [n][dropper][traffic].
type Results = Vec<Vec<Vec<Cell>>>;

/// Runs the comparative benchmark and prints its report; true when every target holds.
pub fn run(opts: &CompareOptions) -> Result<bool> {
    let sizes: Vec<usize> = if opts.quick { vec![10, 1_000] } else { vec![10, 1_000, 100_000] };
    let repeat: u32 = if opts.quick { 300_000 } else { 1_000_000 };
    let compiled: Vec<_> = sizes.iter().map(|&n| ztagent_policy(n).map(|p| policy::compile(&p))).collect::<Result<_>>()?;
    let room = |f: fn(&policy::CompiledPolicy) -> usize| {
        u32::try_from(2 * compiled.iter().map(f).max().unwrap_or(0) + 1024).unwrap_or(u32::MAX)
    };
    let limits = Limits {
        hosts: room(|c| c.hosts.len()),
        cidrs: room(|c| c.cidrs.len()),
        pairs: room(|c| c.pairs.len()),
        ports: room(|c| c.ports.len()),
        ..Limits::default()
    };
    let pins = PinLayout::new(format!("/sys/fs/bpf/ztbench-cmp-{}", std::process::id()));
    let _guard = PinGuard(pins.clone());
    let mut dp = Datapath::load(pins, &limits).context("loading the datapath")?;
    for name in [
        programs::BASELINE,
        programs::BENCH_TX,
        programs::BENCH_SCAN,
        programs::BENCH_DROP,
        programs::BENCH_LPM,
        programs::REFERENCE,
        programs::DENIED_FLOOR,
    ] {
        let prog: &mut Xdp =
            dp.ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
    }
    let mut writer = MapWriter::new(&mut dp.ebpf, &limits).context("opening the policy maps")?;
    let bench = Bench::new()?;
    let fd_of = |dp: &Datapath, name: &str| -> Result<i32> {
        let p: &Xdp = dp.ebpf.program(name).with_context(|| format!("program {name} missing"))?.try_into()?;
        Ok(p.fd()?.as_fd().as_raw_fd())
    };
    let (tx_fd, scan_fd) = (fd_of(&dp, programs::BENCH_TX)?, fd_of(&dp, programs::BENCH_SCAN)?);
    let frames = [
        (Traffic::Denied, tx_fd, udp_frame(bench.rx_mac, SCANNER, SERVER, 40001)),
        (Traffic::Scan, scan_fd, udp_frame(bench.rx_mac, SCANNER, SERVER, 40002)),
        (Traffic::Allowed, tx_fd, udp_frame(bench.rx_mac, CLIENT, SERVER, 40000)),
    ];
    let mut results: Results = vec![vec![vec![Cell::default(); Traffic::ALL.len()]; Dropper::ALL.len()]; sizes.len()];
    let mut napi_pinned = 0;

    for (ni, (&n, c)) in sizes.iter().zip(&compiled).enumerate() {
        eprintln!("ztbench: compare at {} CIDRs", fmt_count(n));
        writer.apply(c).context("installing the policy")?;
        // Both nft tables with their sets, but no base chain yet: a dropper's chain is added
        // for its turn only.
        let elements = nft_elements(n);
        bench.nft(&format!(
            "table netdev ztb {{ set s {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}; }}\n\
             table inet ztb {{ set s {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}; }}\n"
        ))?;
        // The last round is the breakdown's: the kernel's program statistics on (run time and
        // count per program), no rates recorded, nftables left out (no program of theirs).
        for round in 0..=opts.rounds {
            let stats_round = round == opts.rounds;
            let _stats = if stats_round {
                Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF program statistics")?)
            } else {
                None
            };
            for (di, &d) in Dropper::ALL.iter().enumerate() {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    bail!("interrupted");
                }
                if stats_round && matches!(d, Dropper::NftNetdev | Dropper::NftInet) {
                    continue;
                }
                let name = match d {
                    Dropper::DropAll => programs::BENCH_DROP,
                    Dropper::Lpm => programs::BENCH_LPM,
                    Dropper::Ztagent => programs::INGRESS,
                    Dropper::Reference => programs::REFERENCE,
                    Dropper::DeniedFloor => programs::DENIED_FLOOR,
                    _ => programs::BASELINE,
                };
                let prog: &mut Xdp = dp.ebpf.program_mut(name).context("program")?.try_into()?;
                let rx_index = bench.rx_index;
                let link = in_ns(&bench.rx, || {
                    prog.attach_to_if_index(rx_index, XdpMode::default()).with_context(|| format!("attaching {name}"))
                })?;
                napi_pinned = bench.pin_napi()?;
                match d {
                    Dropper::NftNetdev => bench.nft(&format!(
                        "add chain netdev ztb c {{ type filter hook ingress device {} priority 0; }}\n\
                         add rule netdev ztb c ip saddr @s counter drop\n",
                        bench.rx_if
                    ))?,
                    Dropper::NftInet => bench.nft(
                        "add chain inet ztb c { type filter hook input priority 0; }\n\
                         add rule inet ztb c ip saddr @s counter drop\n",
                    )?,
                    _ => {}
                }
                for (ti, (t, fd, frame)) in frames.iter().enumerate() {
                    let breakdown = matches!(d, Dropper::Reference | Dropper::DeniedFloor);
                    if (d == Dropper::DropAll && *t == Traffic::Allowed) || (breakdown && *t == Traffic::Allowed) {
                        continue;
                    }
                    if *t == Traffic::Allowed {
                        // The first packet starts the flow; the measured ones are established.
                        in_ns(&bench.tx, || live_run(*fd, bench.tx_index, frame, 1))?;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let count = |b: &Bench| if *t == Traffic::Allowed { b.in_delivers() } else { b.rx_packets() };
                    let prog_stats = |dp: &Datapath| -> Result<(u64, u64)> {
                        let p: &Xdp = dp.ebpf.program(name).context("program")?.try_into()?;
                        let info = p.info()?;
                        Ok((info.run_time().as_nanos() as u64, info.run_count()))
                    };
                    let stats_before = prog_stats(&dp)?;
                    let before = count(&bench)?;
                    let secs = in_ns(&bench.tx, || {
                        pin_to_cpu(0, 0)?;
                        let t0 = Instant::now();
                        live_run(*fd, bench.tx_index, frame, repeat)?;
                        Ok(t0.elapsed().as_secs_f64())
                    })?;
                    std::thread::sleep(Duration::from_millis(10));
                    let after = count(&bench)?;
                    if stats_round {
                        let (t1, c1) = prog_stats(&dp)?;
                        let runs = c1.saturating_sub(stats_before.1).max(1);
                        results[ni][di][ti].prog_ns.push(t1.saturating_sub(stats_before.0) as f64 / runs as f64);
                    } else {
                        results[ni][di][ti].mpps.push((after - before) as f64 / secs / 1e6);
                    }
                }
                match d {
                    Dropper::NftNetdev => bench.nft("flush chain netdev ztb c\ndelete chain netdev ztb c\n")?,
                    Dropper::NftInet => bench.nft("flush chain inet ztb c\ndelete chain inet ztb c\n")?,
                    _ => {}
                }
                let prog: &mut Xdp = dp.ebpf.program_mut(name).context("program")?.try_into()?;
                prog.detach(link).with_context(|| format!("detaching {name}"))?;
            }
        }
        bench.nft("delete table netdev ztb\ndelete table inet ztb\n")?;
    }
    let (text, json, ok) = report(&sizes, &results, opts, napi_pinned, repeat);
    println!("{text}");
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ok)
}

fn report(sizes: &[usize], r: &Results, opts: &CompareOptions, napi: usize, repeat: u32) -> (String, serde_json::Value, bool) {
    let mut s = String::new();
    let mut ok = true;
    let _ = writeln!(
        s,
        "\nComparative benchmark, live traffic over a veth (sender on CPU 0, {napi} receiver NAPI thread(s) pinned to CPU 1): \
         Mpps received per dropper, median of {} rounds of {} frames [min-max].\n",
        opts.rounds,
        fmt_count(repeat as usize)
    );
    let mut json = serde_json::json!({ "rounds": opts.rounds, "frames_per_run": repeat, "results": [], "breakdown": [] });
    let zi = Dropper::ALL.iter().position(|&d| d == Dropper::Ztagent).unwrap_or(0);
    for (ti, t) in Traffic::ALL.iter().enumerate() {
        let _ = write!(s, "**{}**\n\n| CIDRs |", t.name());
        for d in Dropper::ALL {
            let _ = write!(s, " {} |", d.name());
        }
        let _ = writeln!(
            s,
            " ztagent / drop-all | ztagent / one LPM | ztagent / nft netdev | ztagent / nft inet | ztagent / no program |"
        );
        let _ = writeln!(s, "|---:|{}", "---:|".repeat(Dropper::ALL.len() + 5));
        for (ni, &n) in sizes.iter().enumerate() {
            let _ = write!(s, "| {} |", fmt_count(n));
            for (di, d) in Dropper::ALL.iter().enumerate() {
                let c = &r[ni][di][ti];
                if c.mpps.is_empty() {
                    let _ = write!(s, " - |");
                    continue;
                }
                let _ = write!(s, " {:.2} [{:.2}-{:.2}] |", c.med(), c.min(), c.max());
                if let Some(a) = json["results"].as_array_mut() {
                    a.push(serde_json::json!({
                        "traffic": t.name(), "cidrs": n, "dropper": d.name(),
                        "mpps_median": c.med(), "mpps_min": c.min(), "mpps_max": c.max(), "mpps": c.mpps,
                    }));
                }
            }
            let z = r[ni][zi][ti].med();
            for d in [Dropper::DropAll, Dropper::Lpm, Dropper::NftNetdev, Dropper::NftInet, Dropper::None] {
                let di = Dropper::ALL.iter().position(|&x| x == d).unwrap_or(0);
                let c = &r[ni][di][ti];
                if c.mpps.is_empty() {
                    let _ = write!(s, " - |");
                } else {
                    let _ = write!(s, " {:.2} |", z / c.med().max(1e-9));
                }
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "**Where a packet's time goes** on the receiving CPU: ns per packet received (1,000 / the median Mpps), \
         of it inside the XDP program (the kernel's program statistics, in an extra round: run time / runs; \
         they include the statistics' own clock reads, see the empty program's), the rest the veth, NAPI and, \
         for passed packets, the stack.\n\n| traffic | CIDRs | dropper | ns per packet | in the program | rest |\n|---|---:|---|---:|---:|---:|"
    );
    for (ti, t) in Traffic::ALL.iter().enumerate() {
        for (ni, &n) in sizes.iter().enumerate() {
            for (di, d) in Dropper::ALL.iter().enumerate() {
                let c = &r[ni][di][ti];
                if c.mpps.is_empty() || c.prog_ns.is_empty() {
                    continue;
                }
                let total = 1e3 / c.med().max(1e-9);
                let prog = median(&mut c.prog_ns.clone());
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {total:.0} | {prog:.0} | {:.0} |",
                    t.name(),
                    fmt_count(n),
                    d.name(),
                    total - prog
                );
                if let Some(a) = json["breakdown"].as_array_mut() {
                    a.push(serde_json::json!({
                        "traffic": t.name(), "cidrs": n, "dropper": d.name(), "ns_per_packet": total, "ns_in_program": prog,
                    }));
                }
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Targets:\n");
    let ratio = |ni: usize, ti: usize, d: Dropper| {
        let di = Dropper::ALL.iter().position(|&x| x == d).unwrap_or(0);
        r[ni][zi][ti].med() / r[ni][di][ti].med().max(1e-9)
    };
    let mut line = |pass: bool, text: String| {
        ok &= pass;
        let _ = writeln!(s, "- {}: {text}", verdict(pass));
    };
    for (ni, &n) in sizes.iter().enumerate() {
        let n_text = fmt_count(n);
        let (a, b) = (ratio(ni, 0, Dropper::NftNetdev), ratio(ni, 0, Dropper::NftInet));
        line(a >= MIN_VS_NETDEV, format!("{n_text} CIDRs: denied, ztagent {a:.2}x nft netdev ingress >= {MIN_VS_NETDEV}x"));
        line(b >= MIN_VS_INET, format!("{n_text} CIDRs: denied, ztagent {b:.2}x nft inet input >= {MIN_VS_INET}x"));
        if n == 1_000 {
            let c = ratio(ni, 0, Dropper::DropAll);
            line(c >= MIN_VS_DROP_ALL, format!("{n_text} CIDRs: denied, ztagent {c:.2}x XDP drop-all >= {MIN_VS_DROP_ALL}x"));
        }
        let sc = ratio(ni, 1, Dropper::NftNetdev);
        line(sc >= MIN_SCAN_VS_NETDEV, format!("{n_text} CIDRs: scan, ztagent {sc:.2}x nft netdev ingress >= {MIN_SCAN_VS_NETDEV}x"));
        let al = ratio(ni, 2, Dropper::None);
        line(al >= MIN_ALLOWED_VS_NONE, format!("{n_text} CIDRs: allowed, ztagent {al:.2}x no program >= {MIN_ALLOWED_VS_NONE}x"));
    }
    json["targets_pass"] = serde_json::Value::Bool(ok);
    (s, json, ok)
}
