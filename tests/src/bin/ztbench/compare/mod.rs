//! The comparative benchmark (issue 11): packets per second a host drops (and passes) with
//! ztagent, against an XDP drop-all program (the limit) and nftables (netdev ingress and inet
//! input, each with an interval set), at N CIDRs, on live traffic.
//!
//! Traffic: a sender namespace and a receiver namespace joined by a veth pair. The generator is
//! an AF_PACKET socket with a TX ring and qdisc bypass ([`TxRing`]) on a second veth pair inside
//! the sender, in a thread pinned to CPU 0; the scan rewrites the low 16 bits of the source per
//! frame (all 65,536 sources in turn). The generator's frames reach that pair's other end as
//! skbs, which a veth copies before its XDP program runs; there the benchmark's forwarder
//! (`zt_bench_redirect`, in the benchmark's own eBPF object) redirects each to the veth towards
//! the receiver, which so receives XDP frames, as from a NIC: the copy is paid on CPU 0 (the
//! forwarder's NAPI thread is pinned there), not by the receiver. (`BPF_PROG_TEST_RUN` with
//! live frames, the earlier generator, is refused with EPERM on these kernels; there is no
//! pktgen.) The receiving veth's NAPI runs threaded, its kthread pinned to CPU 1, so the whole
//! receive path (XDP, and for passed frames the stack and nftables' hooks) runs in a thread
//! whose CPU time we read. The dropper under test sits on the receiving veth (XDP: ours, or
//! Debian's `xdp-filter`) or in the receiver's nftables. The receiver always has an XDP
//! program (the empty `zt_baseline` for nftables and "no program"), so every dropper sees the
//! same veth path (a veth takes XDP frames only when it has one).
//!
//! Figures, per dropper and round: what the receiver processed (`rx_packets` of its veth) or
//! delivered to its stack (`Ip InDelivers`) over the sender's wall time; what the generator
//! offered (frames / its time: the generator's ceiling shows as drop-all's); and the receiver's
//! CPU time per packet (the NAPI thread's `schedstat` run time over packets received). Where
//! the generator caps the faster droppers, rates tie; the CPU time per packet still ranks them,
//! and the targets are judged on it.
//!
//! Droppers are interleaved round by round; each figure is the median of the rounds, with
//! their minimum and maximum.
use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use agent_common::programs;
use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::DevMap,
    programs::{Xdp, XdpMode},
};
use integration_tests::{Netns, frame, unique, veth};
use ztagent::{
    kernel::datapath::{Datapath, Limits, PinLayout},
    kernel::mapwriter::MapWriter,
    policy::{self, Action, Mode, Policy, PortSpec, Proto, Rule, SegRef, Segment},
};

use super::{INTERRUPTED, PinGuard, fmt_count, txring::TxRing};

mod frames;
mod report;
use frames::{pin_to_cpu, send, udp_frame};
use report::{Cell, Results, report};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 20);
/// Denied sources: one (`SCANNER`), or 65,536 (`SCANNER`'s /16, see `zt_bench_scan`).
const SCANNER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 9;

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
    /// xdp-filter (Debian's xdp-tools): policy deny, the client's address allowed (IPv4
    /// features only, its cheapest configuration); the same verdicts as ztagent's policy.
    XdpFilter,
    /// Breakdown, denied traffic (one source and the scan): parse + one conntrack lookup, drop
    /// on the miss (`zt_reference`).
    Reference,
    /// Breakdown, denied traffic: parse, conntrack miss, the denial-cache lookup, drop on a
    /// hit, pass on a miss (`zt_denied_floor`; the cache entries are the ones ztagent wrote
    /// just before: for the scan, as many of its 65,536 flows as the cache kept).
    DeniedFloor,
}

impl Dropper {
    const ALL: [Dropper; 9] = [
        Dropper::None,
        Dropper::DropAll,
        Dropper::Lpm,
        Dropper::Ztagent,
        Dropper::XdpFilter,
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
            Dropper::XdpFilter => "xdp-filter",
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
        rules.push(rule(
            format!("r{i}"),
            SegRef::Named(3 + i),
            SegRef::Named(3 + (i + 1) % fillers),
            1000 + (i % 60000) as u16,
        ));
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

/// The two namespaces, the veth between them, and what lives in the receiver.
struct Bench {
    tx: Netns,
    rx: Netns,
    rx_if: String,
    /// The forwarder's veth (in `tx`, peer of the generator's) and the generator's.
    fwd_if: String,
    fwd_index: u32,
    gen_index: u32,
    /// The sender's end of the veth to the receiver: where the forwarder redirects to.
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
        let (gen_if, fwd_if) = (unique("gg"), unique("gf"));
        veth(&tx, &tx_if, &rx, &rx_if);
        veth(&tx, &gen_if, &tx, &fwd_if);
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
        Ok(Bench {
            tx_index: ifindex(&tx, &tx_if)?,
            rx_index: ifindex(&rx, &rx_if)?,
            gen_index: ifindex(&tx, &gen_if)?,
            fwd_index: ifindex(&tx, &fwd_if)?,
            tx,
            rx,
            rx_if,
            fwd_if,
            rx_mac,
        })
    }

    /// Pins the receiver's NAPI kthreads (named `napi/IF-ID`, 15 bytes at most) to CPU 1.
    /// Threaded NAPI first (a veth has NAPI instances only while it has an XDP program), so
    /// the receiver's work runs in kthreads that can be pinned.
    fn pin_napi(&self) -> Result<Vec<libc::pid_t>> {
        pin_napi(&self.rx, &self.rx_if, 1)
    }
}

/// Threaded NAPI on `iface` (in `ns`), its kthreads (named `napi/IF-ID`, 15 bytes at most)
/// pinned to `cpu`; returns their pids.
fn pin_napi(ns: &Netns, iface: &str, cpu: usize) -> Result<Vec<libc::pid_t>> {
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")])
        .output()?;
    ensure!(o.status.success(), "threaded NAPI on {iface}: {}", String::from_utf8_lossy(&o.stderr));
    let want: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else { continue };
        if comm.trim_end().starts_with(&want) || comm.trim_end() == want.trim_end_matches('-') {
            pin_to_cpu(pid, cpu)?;
            pids.push(pid);
        }
    }
    Ok(pids)
}

impl Bench {
    /// xdp-filter on the receiving veth (in the host's mounts: it pins its maps in bpffs).
    fn xdp_filter(&self, args: &[&str]) -> Result<()> {
        let o = Command::new("nsenter")
            .arg(format!("--net={}", self.rx.path()))
            .args(["--", "xdp-filter"])
            .args(args)
            .output()
            .context("cannot run xdp-filter (Debian package xdp-tools; `cargo xtask setup` installs it)")?;
        ensure!(
            o.status.success(),
            "xdp-filter {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
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

/// CPU time the receiver's NAPI threads have run, in ns (`/proc/PID/schedstat`'s first field):
/// with threaded NAPI, the whole receive path of the veth (XDP, and for passed packets the
/// stack: nft's hooks included) runs in them.
fn cpu_ns(pids: &[libc::pid_t]) -> Result<u64> {
    let mut sum = 0;
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .with_context(|| format!("schedstat of NAPI thread {pid}"))?;
        sum += text.split_whitespace().next().and_then(|w| w.parse::<u64>().ok()).context("schedstat")?;
    }
    Ok(sum)
}

/// An XDP program of the agent's object (`zt_ingress`) or of the benchmark's (the rest).
fn prog_mut<'a>(dp: &'a mut Datapath, obj: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let ebpf = if name == programs::INGRESS { &mut dp.ebpf } else { obj };
    Ok(ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?)
}

/// The forwarder between the generator and the receiver: `zt_bench_redirect` on the
/// generator's peer veth, sending every frame out of the veth to the receiver as an XDP
/// frame (a frame from an AF_PACKET socket reaches a veth's XDP as an skb, which the veth
/// copies first; that copy is paid here, on CPU 0 with the sender, not by the receiver). Its
/// threaded NAPI is pinned to CPU 0.
fn forwarder(obj: &mut Ebpf, bench: &Bench) -> Result<()> {
    let mut port: DevMap<_> =
        DevMap::try_from(obj.map_mut(programs::BENCH_TX_PORT).context("the forwarder's device map")?)?;
    // A device map resolves the ifindex in the writer's network namespace: write it from the
    // sender's, or the index would name a device of the host's.
    let tx_index = bench.tx_index;
    in_ns(&bench.tx, || port.set(0, tx_index, None, 0).context("setting the forwarder's target"))?;
    let prog = obj.program_mut(programs::BENCH_REDIRECT).context("the forwarder")?;
    let prog: &mut Xdp = prog.try_into()?;
    let fwd_index = bench.fwd_index;
    in_ns(&bench.tx, || prog.attach_to_if_index(fwd_index, XdpMode::default()).context("attaching the forwarder"))?;
    let pinned = pin_napi(&bench.tx, &bench.fwd_if, 0)?;
    ensure!(!pinned.is_empty(), "the forwarder's veth has no NAPI thread");
    Ok(())
}

/// Runs the comparative benchmark and prints its report; true when every target holds.
pub fn run(opts: &CompareOptions) -> Result<bool> {
    // Issue 18's targets name all three sizes; --quick sends fewer frames, not fewer sizes.
    let sizes: Vec<usize> = vec![10, 1_000, 100_000];
    let repeat: u32 = if opts.quick { 100_000 } else { 1_000_000 };
    let compiled: Vec<_> =
        sizes.iter().map(|&n| ztagent_policy(n).map(|p| policy::compile(&p))).collect::<Result<_>>()?;
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
    // The references and the forwarder live in the benchmark's own object, on the same maps.
    let mut obj = dp.load_bench(&limits).context("loading the benchmark's object")?;
    for name in [
        programs::BASELINE,
        programs::BENCH_DROP,
        programs::BENCH_LPM,
        programs::REFERENCE,
        programs::DENIED_FLOOR,
        programs::BENCH_REDIRECT,
    ] {
        let prog: &mut Xdp = obj.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
    }
    let mut writer = MapWriter::new(&mut dp.ebpf, &limits).context("opening the policy maps")?;
    let bench = Bench::new()?;
    forwarder(&mut obj, &bench)?;
    let gen_index = bench.gen_index;
    let mut ring = in_ns(&bench.tx, || TxRing::open(gen_index)).context("the traffic generator (AF_PACKET TX ring)")?;
    let frames = [
        (Traffic::Denied, udp_frame(bench.rx_mac, SCANNER, SERVER, 40001)),
        (Traffic::Scan, udp_frame(bench.rx_mac, SCANNER, SERVER, 40002)),
        (Traffic::Allowed, udp_frame(bench.rx_mac, CLIENT, SERVER, 40000)),
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
                if stats_round && matches!(d, Dropper::NftNetdev | Dropper::NftInet | Dropper::XdpFilter) {
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
                let link = if d == Dropper::XdpFilter {
                    bench.xdp_filter(&[
                        "load",
                        "--mode",
                        "native",
                        "--policy",
                        "deny",
                        "--features",
                        "ipv4",
                        &bench.rx_if,
                    ])?;
                    bench.xdp_filter(&["ip", "--mode", "src", &CLIENT.to_string()])?;
                    None
                } else {
                    let prog = prog_mut(&mut dp, &mut obj, name)?;
                    let rx_index = bench.rx_index;
                    Some(in_ns(&bench.rx, || {
                        prog.attach_to_if_index(rx_index, XdpMode::default())
                            .with_context(|| format!("attaching {name}"))
                    })?)
                };
                let napi = bench.pin_napi()?;
                napi_pinned = napi.len();
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
                for (ti, (t, frame)) in frames.iter().enumerate() {
                    let breakdown = matches!(d, Dropper::Reference | Dropper::DeniedFloor);
                    if *t == Traffic::Allowed && (d == Dropper::DropAll || breakdown) {
                        continue;
                    }
                    if *t == Traffic::Allowed {
                        // The first packet starts the flow; the measured ones are established.
                        send(&mut ring, *t, frame, 1)?;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let count = |b: &Bench| if *t == Traffic::Allowed { b.in_delivers() } else { b.rx_packets() };
                    let prog_stats = |dp: &mut Datapath, obj: &mut Ebpf| -> Result<(u64, u64)> {
                        let p = prog_mut(dp, obj, name)?;
                        let info = p.info()?;
                        Ok((info.run_time().as_nanos() as u64, info.run_count()))
                    };
                    let stats_before = prog_stats(&mut dp, &mut obj)?;
                    let before = count(&bench)?;
                    let (rx_before, cpu_before) = (bench.rx_packets()?, cpu_ns(&napi)?);
                    let secs = send(&mut ring, *t, frame, u64::from(repeat))?;
                    std::thread::sleep(Duration::from_millis(10));
                    let after = count(&bench)?;
                    let (rx_after, cpu_after) = (bench.rx_packets()?, cpu_ns(&napi)?);
                    if stats_round {
                        let (t1, c1) = prog_stats(&mut dp, &mut obj)?;
                        let runs = c1.saturating_sub(stats_before.1).max(1);
                        results[ni][di][ti].prog_ns.push(t1.saturating_sub(stats_before.0) as f64 / runs as f64);
                    } else {
                        let cell = &mut results[ni][di][ti];
                        cell.mpps.push((after - before) as f64 / secs / 1e6);
                        cell.offered.push(f64::from(repeat) / secs / 1e6);
                        let rx = rx_after.saturating_sub(rx_before).max(1);
                        cell.rx_ns.push(cpu_after.saturating_sub(cpu_before) as f64 / rx as f64);
                    }
                }
                match d {
                    Dropper::NftNetdev => bench.nft("flush chain netdev ztb c\ndelete chain netdev ztb c\n")?,
                    Dropper::NftInet => bench.nft("flush chain inet ztb c\ndelete chain inet ztb c\n")?,
                    _ => {}
                }
                if let Some(link) = link {
                    let prog = prog_mut(&mut dp, &mut obj, name)?;
                    prog.detach(link).with_context(|| format!("detaching {name}"))?;
                } else {
                    bench.xdp_filter(&["unload", &bench.rx_if])?;
                }
            }
        }
        bench.nft("delete table netdev ztb\ndelete table inet ztb\n")?;
    }
    let (text, json, ok) = report(&sizes, &results, opts, napi_pinned, repeat);
    println!("{text}");
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ok)
}
