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
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
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

mod agent_view;
mod config;
mod kernel_maps;
mod samples;
mod system;
mod traffic;

use agent_view::*;
use config::*;
use kernel_maps::*;
use samples::*;
use system::*;
use traffic::*;

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

fn mb(kb: i64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

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
    let flags =
        ["--metrics-addr", &metrics_addr, "--events-file", events_path.to_str().unwrap(), "--events-history", &history];
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
        std::thread::sleep(
            Duration::from_millis(1000).min(Duration::from_nanos(waited_until.saturating_sub(mono_ns()))),
        );
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
    let limit = st["limits"][LIMIT_NAME].clone();
    let lu = |f: &str| limit[f].as_u64().unwrap_or(0);

    let t = &*tallies;
    let g = Tally::get;
    let mut checks = Checks { results: Vec::new() };

    // Traffic did what it was meant to.
    checks.check(
        g(&t.tcp.failed) == 0,
        format!("allowed TCP: {} of {} connections completed", g(&t.tcp.ok), g(&t.tcp.sent)),
    );
    checks.check(
        g(&t.udp_flows.ok) * 100 >= g(&t.udp_flows.sent) * 99,
        format!("allowed UDP: {} of {} new flows echoed (>= 99%)", g(&t.udp_flows.ok), g(&t.udp_flows.sent)),
    );
    checks.check(
        g(&t.udp_long.ok) * 100 >= g(&t.udp_long.sent) * 99,
        format!(
            "allowed UDP: {} of {} datagrams of {UDP_LONG_FLOWS} long-lived flows echoed (>= 99%)",
            g(&t.udp_long.ok),
            g(&t.udp_long.sent)
        ),
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
        format!(
            "pushes: {pushes} pushed, revision {} (want {}); failures: {push_failures:?}",
            st["revision"],
            1 + pushes
        ),
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
        format!(
            "conntrack: no TCP entry left with the established timeout (6 h): {} of {} TCP entries",
            ct.tcp_established,
            ct.count("tcp", true) + ct.count("tcp", false)
        ),
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
        format!(
            "ZT_DENIED: {denied_entries} entries <= {} (distinct denied keys sent + 16, capacity {denied_cap})",
            denied_keys
        ),
    );
    checks.check(
        agg_entries <= BATCH_PORTS as u64 && agg_entries <= agg_cap,
        format!("ZT_AGG: {agg_entries} entries <= {BATCH_PORTS} rate-limited flows (capacity {agg_cap})"),
    );
    checks.check(
        frag_entries == 0 && addr_bucket_entries == 0,
        format!("ZT_FRAGS {frag_entries}, ZT_ADDR_BUCKETS {addr_bucket_entries}: none used"),
    );

    // Events.
    let lost = k("events_lost");
    let acct = accounting(&c, &ev);
    for (verdict, events, kernel) in &acct {
        if lost == 0 && ev.missed == 0 {
            checks.check(events == kernel, format!("events: {verdict} {events} = kernel {kernel}"));
        } else {
            checks.check(
                events <= kernel,
                format!("events: {verdict} {events} <= kernel {kernel} ({lost} lost, {} missed)", ev.missed),
            );
        }
    }
    checks.check(
        lost == 0 && ev.missed == 0,
        format!("events: {lost} lost in the kernel, {} missed by the file writer", ev.missed),
    );
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
        format!(
            "memory: RSS at the end {} <= after warm-up {} + {}",
            mb(end.rss_kb),
            mb(rss_warm),
            mb(RSS_END_SLACK_KB)
        ),
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
    let _ = writeln!(
        r,
        "\n== ztsoak: {} s of traffic, {pushes} pushes (revision {}), {} CPUs ==",
        o.seconds,
        st["revision"],
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
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
    let _ = writeln!(
        r,
        "records {}, missed {}, events_lost {lost}, delivered {}",
        ev.records,
        ev.missed,
        metric(&m, "ztagent_events_delivered_total", "")
    );
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
        let mut csv = String::from(
            "t,rss_kb,revision,ct,denied,agg,delivered,pass_policy,drop_default,drop_rule,drop_revoked,drop_rate_limit,events_lost\n",
        );
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
