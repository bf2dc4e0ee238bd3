//! The rate-limit step: two clients ping equally hard, one of them limited.

use super::{
    Agent, BATCH, Duration, FLOOD_COUNT, FLOOD_INTERVAL, FLOOD_LINGER, FLOOD_SLACK, FRONTEND, HOSTS, Instant, IpAddr,
    Ipv4Addr, Lan, Netns, OwnedFd, PAYMENTS, Path, Probe, Result, Style, bail, check_args, counters,
};
use anyhow::Context as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _};

/// The rate-limit section: frontend and batch ping payments equally hard at the same time; the
/// policy limits one of them (in the example, batch) and not the other. What each saw, what
/// the policy says, and what the agent counted must agree.
pub(crate) fn rate_limits(
    lan: &Lan,
    agent: &Agent,
    policy: &Path,
    st: Style,
    problems: &mut Vec<String>,
) -> Result<()> {
    let payments = &lan.hosts[PAYMENTS];
    let IpAddr::V4(dst) = payments.v4 else { bail!("payments has no IPv4 address") };
    // What the policy in force says about each client's pings.
    let mut checks = Vec::new();
    for client in [FRONTEND, BATCH] {
        let args = check_args(lan.hosts[client].v4, payments.v4, Probe::Icmp);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent.cli(&args);
        // 0 allow, 1 deny (both answers); anything else is an error.
        if !matches!(out.status.code(), Some(0 | 1)) {
            bail!("ztagent check failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ztagent check -o json")?;
        checks.push((client, v));
    }
    let limits: Vec<(usize, &str)> =
        checks.iter().filter_map(|(c, v)| v["rate_limit"].as_str().map(|l| (*c, l))).collect();
    let all_allowed = checks.iter().all(|(_, v)| v["verdict"] == "allow");
    let [(limited, name)] = limits[..] else {
        println!("  (the policy does not rate limit exactly one of frontend's and batch's pings: nothing to compare)");
        return Ok(());
    };
    let parsed = ztagent::policy::load(policy).map_err(|d| anyhow::anyhow!("{d}"))?;
    let spec = parsed.rate_limits.iter().find(|l| l.name == name).and_then(|l| l.packets.map(|p| (p, l.scope)));
    let (Some((spec, scope)), true) = (spec, all_allowed) else {
        println!("  (the rate limit {name} has no packets bucket, or a ping is denied: nothing to compare)");
        return Ok(());
    };
    let per_second = spec.rate as f64 / spec.per.seconds() as f64;
    for (client, v) in &checks {
        let by = v["rule"].as_str().map_or("default allow".to_string(), |r| format!("rule {r}"));
        let limit = match v["rate_limit"].as_str() {
            Some(l) => format!(
                "rate limit {l}: {}/{}, burst {} (scope {})",
                spec.rate,
                spec.per.as_str(),
                spec.burst,
                if scope == ztagent::policy::LimitScope::Address { "address" } else { "segment" }
            ),
            None => "no rate limit".to_string(),
        };
        let revision = v["revision"].as_u64().map(|r| format!(" [revision {r}]")).unwrap_or_default();
        println!(
            "  {:<8} -> {:<8} {:<10}  {:<9}  {}  {by}, {limit}{revision}",
            HOSTS[*client].0,
            HOSTS[PAYMENTS].0,
            payments.v4,
            Probe::Icmp.label(),
            st.green("ALLOW")
        );
    }
    let before = limit_status(agent, name)?;
    let drops_before = counters(agent, &["drop_rate_limit"])?;
    // Address scope has no shared bucket to read: it starts full for a quiet address.
    let tokens = before["packet_tokens"].as_f64().unwrap_or(spec.burst as f64);
    let span = (FLOOD_INTERVAL * (FLOOD_COUNT as u32 - 1)).as_secs_f64();
    if tokens + per_second * span >= FLOOD_COUNT as f64 {
        println!(
            "  ({name} admits {FLOOD_COUNT} pings in {span:.1} s: the flood would stay within it, nothing to compare)"
        );
        return Ok(());
    }
    println!(
        "  both send {FLOOD_COUNT} echo requests at once, one every {} ms; {name} holds {tokens:.1} tokens now",
        FLOOD_INTERVAL.as_millis()
    );
    let clients = [FRONTEND, BATCH];
    let sockets = clients.iter().map(|&c| raw_icmp(&lan.hosts[c].ns)).collect::<Result<Vec<_>>>()?;
    let start = Instant::now() + Duration::from_millis(50);
    let floods: Vec<Flood> = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .zip(clients)
            .map(|(fd, c)| {
                let id = (std::process::id() as u16).wrapping_add(c as u16);
                s.spawn(move || flood(fd, dst, id, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ping thread")).collect::<std::io::Result<_>>()
    })?;
    let after = limit_status(agent, name)?;
    let drops_after = counters(agent, &["drop_rate_limit"])?;
    let mut expected = 0.0;
    for (&client, f) in clients.iter().zip(&floods) {
        let secs = f.took.as_secs_f64();
        let note = if client == limited {
            // One packet per whole token: what the bucket held, plus what the rate refilled.
            expected = (tokens + per_second * secs).floor().min(f.sent as f64);
            format!("rate limit {name}: {expected} expected ({tokens:.1} tokens + {per_second}/s x {secs:.3} s)")
        } else {
            format!("no rate limit: all {} expected", f.sent)
        };
        println!(
            "  {:<8} -> {:<8} {:<10}  {:<9}  sent {} in {secs:.2} s, answered {:>3}  {note}",
            HOSTS[client].0,
            HOSTS[PAYMENTS].0,
            payments.v4,
            Probe::Icmp.label(),
            f.sent,
            f.answered
        );
    }
    println!("\n  ztagent status:");
    let status = agent.cli(&["status"]);
    if !status.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&status.stderr));
    }
    let text = String::from_utf8_lossy(&status.stdout);
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&format!("rate limit {name} ")));
    if let Some(first) = lines.next() {
        println!("    {first}");
        for l in lines.take_while(|l| l.starts_with("  ")) {
            println!("    {l}");
        }
    }
    let delta = |k: &str| after[k].as_u64().unwrap_or(0).saturating_sub(before[k].as_u64().unwrap_or(0));
    let (admitted, dropped) = (delta("packets_passed"), delta("packets_dropped"));
    let drop_counter = drops_after.saturating_sub(drops_before);
    println!("  during the flood: {admitted} admitted, {dropped} dropped by {name}; drop_rate_limit +{drop_counter}");

    let (held, free) = if limited == clients[0] { (0, 1) } else { (1, 0) };
    let (held_name, free_name) = (HOSTS[clients[held]].0, HOSTS[clients[free]].0);
    let (held, free) = (&floods[held], &floods[free]);
    let mut msgs = Vec::new();
    if free.answered != free.sent {
        msgs.push(format!(
            "{free_name} has no rate limit but only {} of its {} pings were answered",
            free.answered, free.sent
        ));
    }
    if held.answered >= held.sent || dropped == 0 {
        msgs.push(format!(
            "{held_name} was NOT limited by {name}: {} of {} pings answered, {dropped} dropped",
            held.answered, held.sent
        ));
    } else if (held.answered as f64 - expected).abs() > FLOOD_SLACK {
        msgs.push(format!(
            "{name} let {} of {held_name}'s pings through, the limit allows {expected} (+/- {FLOOD_SLACK})",
            held.answered
        ));
    }
    if admitted != held.answered as u64 || dropped != (held.sent - held.answered) as u64 || drop_counter != dropped {
        msgs.push(format!(
            "the agent counted {admitted} admitted and {dropped} dropped (drop_rate_limit +{drop_counter}), {held_name} saw {} of {} answered",
            held.answered, held.sent
        ));
    }
    if msgs.is_empty() {
        println!(
            "  => {} {held_name} got {} of {} through ({tokens:.0} tokens, then {per_second}/s for {:.1} s); {free_name}, not limited, {} of {}",
            st.green("THROTTLED:"),
            held.answered,
            held.sent,
            held.took.as_secs_f64(),
            free.answered,
            free.sent
        );
    }
    for m in msgs {
        println!("  {}", st.alarm(&format!("!!! {m}")));
        problems.push(m);
    }
    Ok(())
}

/// A rate limit's entry in `ztagent status -o json`.
pub(crate) fn limit_status(agent: &Agent, name: &str) -> Result<serde_json::Value> {
    let out = agent.cli(&["status", "-o", "json"]);
    if !out.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["limits"].get(name).cloned().with_context(|| format!("no rate limit {name} in ztagent status"))
}

/// A raw ICMP socket opened in `ns` (it stays there whichever thread uses it).
pub(crate) fn raw_icmp(ns: &Netns) -> Result<OwnedFd> {
    ns.run(|| {
        // SAFETY: socket has no preconditions; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
    })
    .context("cannot open a raw ICMP socket")
}

/// What one client's flood of pings saw.
pub(crate) struct Flood {
    pub(crate) sent: usize,
    pub(crate) answered: usize,
    /// From the first request to the last.
    pub(crate) took: Duration,
}

/// Sends `FLOOD_COUNT` echo requests (ICMP id `id`) to `dst`, the first at `start`, then one
/// every `FLOOD_INTERVAL`, and counts the distinct replies until `FLOOD_LINGER` after the last.
pub(crate) fn flood(fd: &OwnedFd, dst: Ipv4Addr, id: u16, start: Instant) -> std::io::Result<Flood> {
    let mut answered = [false; FLOOD_COUNT];
    let (mut sent, mut first, mut last) = (0usize, start, start);
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
        sin_zero: [0; 8],
    };
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if sent < FLOOD_COUNT && now >= start + FLOOD_INTERVAL * sent as u32 {
            let mut pkt = [0u8; 64];
            pkt[0] = 8; // echo request
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
            pkt[8..16].copy_from_slice(b"ztdemo!!");
            let sum = icmp_checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: pkt and to outlive the call; the lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if sent == 0 {
                first = now;
            }
            last = now;
            sent += 1;
            continue;
        }
        let done = sent == FLOOD_COUNT;
        if done && answered.iter().all(|a| *a) {
            break;
        }
        let deadline = if done { last + FLOOD_LINGER } else { start + FLOOD_INTERVAL * sent as u32 };
        if now >= deadline {
            if done {
                break;
            }
            continue;
        }
        let wait = (deadline - now).as_micros().div_ceil(1000) as libc::c_int;
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait) };
        loop {
            // SAFETY: buf outlives the call; its length is given.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            // An IPv4 packet: header, then the ICMP echo reply (type 0) with our id.
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl + 8 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_ICMP as u8 || p[12..16] != dst.octets() {
                continue;
            }
            let icmp = &p[ihl..];
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && seq < FLOOD_COUNT {
                answered[seq] = true;
            }
        }
    }
    Ok(Flood { sent, answered: answered.iter().filter(|a| **a).count(), took: last - first })
}

/// The Internet checksum of an ICMP message (its checksum field zero).
pub(crate) fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
