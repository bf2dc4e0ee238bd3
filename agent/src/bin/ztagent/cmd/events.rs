//! `ztagent events`: what the kernel decided, recent or (-f) live.
use std::{path::Path, process::ExitCode};

use anyhow::anyhow;
use ztagent::{
    api::{self as control, Criteria, EventFilter, EventRecord, Request},
    clock::{parse_rfc3339, rfc3339},
};

use crate::{
    args::{EventFilters, EventsArgs, NEGATABLE, Output},
    output,
};

pub async fn events(socket: &Path, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let json = args.output.output == Output::Json;
    if args.not {
        usage(format!("--not negates the filter right after it: one of --{}", NEGATABLE.join(", --")));
    }
    let mut filter = EventFilter {
        only: criteria(args.filters),
        not: {
            let n = args.negated;
            let f = EventFilters {
                verdicts: n.verdicts,
                from: n.from,
                to: n.to,
                ports: n.ports,
                ips: n.ips,
                pods: n.pods,
                namespaces: n.namespaces,
                methods: n.methods,
                path_prefixes: n.path_prefixes,
                statuses: n.statuses,
            };
            criteria(f)
        },
        since: args.since.as_deref().map(|t| time_bound("--since", t)).transpose()?,
        until: args.until.as_deref().map(|t| time_bound("--until", t)).transpose()?,
        last: args.last,
    };
    let follow = args.follow;
    let colour = output::colour();
    loop {
        let request = Request::Events { follow, filter: Box::new(filter.clone()) };
        let last_time = match control::stream(socket, &request).await {
            Ok(lines) => print_stream(lines, json, colour).await?,
            Err(e) if args.reconnect => {
                wait_for_agent(socket, &e.to_string()).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        if !args.reconnect {
            // The agent never ends a live stream by itself: it stopped or restarted.
            return Err(anyhow!(
                "the event stream ended: the agent closed it (it stopped or restarted); \
                 follow again once it is back, or follow with --reconnect"
            ));
        }
        eprintln!("ztagent: the event stream ended (the agent stopped or restarted); reconnecting");
        // Once back, from where the stream ended: the agent's recent events since then (an
        // agent that restarted keeps none from before), then the live ones.
        if let Some(t) = last_time {
            filter.since = Some(t);
        }
        filter.last = None;
        wait_for_agent(socket, "").await;
    }
}

/// Polls until the agent's socket accepts a connection again (once a second).
async fn wait_for_agent(socket: &Path, why: &str) {
    if !why.is_empty() {
        eprintln!("ztagent: {why}; reconnecting");
    }
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    eprintln!("ztagent: reconnected to the agent at {}", socket.display());
}

/// Prints the stream's lines until it ends; returns the time of the last event printed.
async fn print_stream(
    mut lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>,
    json: bool,
    colour: bool,
) -> anyhow::Result<Option<String>> {
    let mut last_time = None;
    while let Some(line) = lines.next_line().await.map_err(|e| anyhow!("the agent's stream broke: {e}"))? {
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| anyhow!("the agent sent something unreadable: {e}"))?;
        if let Some(message) = v.get("message").and_then(|m| m.as_str()) {
            return Err(anyhow::Error::msg(message.to_string()));
        }
        if let Some(n) = v.get("missed").and_then(|m| m.as_u64()) {
            if json {
                println!("{line}");
            }
            eprintln!("ztagent: this client fell behind and missed {n} events");
            continue;
        }
        let r: EventRecord = serde_json::from_value(v).map_err(|e| anyhow!("unexpected event: {e}"))?;
        if json {
            println!("{line}");
        } else {
            println!("{}", event_line(&r, colour));
        }
        last_time = Some(r.time);
    }
    Ok(last_time)
}

fn criteria(f: EventFilters) -> Criteria {
    let EventFilters { verdicts, from, to, ports, ips, pods, namespaces, methods, path_prefixes, statuses } = f;
    Criteria { verdicts, from, to, ports, ips, pods, namespaces, methods, path_prefixes, statuses }
}

/// `--since` / `--until`: a duration back from now or an RFC 3339 time, as events' times
/// are written (UTC, milliseconds), so that the agent compares them as strings.
fn time_bound(flag: &str, text: &str) -> anyhow::Result<String> {
    if let Ok(d) = ztagent::daemon::grants::parse_duration(text) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return Ok(rfc3339(now.saturating_sub(d).as_nanos() as u64));
    }
    match parse_rfc3339(text) {
        Some(ns) => Ok(rfc3339(ns)),
        None => usage(format!(
            "{flag} takes a duration back from now (90s, 15m, 2h, 1d) or an RFC 3339 time \
             (2026-12-07T10:00:00Z), not `{text}`"
        )),
    }
}

/// A usage error, as clap reports its own (exit status 2).
fn usage(message: String) -> ! {
    use clap::CommandFactory;
    crate::args::Cli::command().error(clap::error::ErrorKind::ValueValidation, message).exit()
}

/// One aligned line per event, the verdict coloured on a terminal.
fn event_line(r: &EventRecord, colour: bool) -> String {
    let verdict = format!("{:<16}", r.verdict);
    let verdict = match (colour, r.verdict.as_str()) {
        (false, _) => verdict,
        (true, "allowed") => output::paint(32, &verdict),
        (true, "rate-limited") => output::paint(33, &verdict),
        (true, v) if v.starts_with("would-") => output::paint(36, &verdict),
        (true, _) => output::paint(31, &verdict),
    };
    let why = match (&r.rule, &r.rate_limit) {
        (Some(rule), _) => format!("{} {rule}", r.reason),
        (None, Some(limit)) => format!("{} {limit}", r.reason),
        (None, None) => r.reason.clone(),
    };
    let count = if r.count > 1 { format!(" x{}", r.count) } else { String::new() };
    let pods = match (&r.src_pod, &r.dst_pod) {
        (None, None) => String::new(),
        (s, d) => format!(" ({} -> {})", s.as_deref().unwrap_or("-"), d.as_deref().unwrap_or("-")),
    };
    let time = r.time.get(11..23).unwrap_or(&r.time);
    let (Some(src), Some(dst)) = (r.src, r.dst) else {
        // The agent's own events: what they are about, no packet.
        let ports = if r.ports.is_empty() { String::new() } else { format!(" {}", r.ports.join(",")) };
        let rule = r.rule.as_deref().map(|g| format!(" {g}")).unwrap_or_default();
        let note = r.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
        return format!(
            "{time} {verdict} {} -> {}{ports} ({}{rule}){note}{count}",
            r.src_segment, r.dst_segment, r.reason
        );
    };
    // TCP/UDP with ports; an ICMP echo with its identifier.
    let (at_src, at_dst) = match (r.sport, r.dport, r.icmp_id) {
        (Some(s), Some(d), _) => (format!("{src}:{s}"), format!("{dst}:{d}")),
        (_, _, Some(id)) => (src.to_string(), format!("{dst} id {id}")),
        _ => (src.to_string(), dst.to_string()),
    };
    // ICMP with its message: `icmp echo-request`.
    let proto = match (r.proto.as_deref(), r.icmp) {
        (Some(p), Some(icmp)) => format!("{p} {}", icmp.describe(src.is_ipv6())),
        (p, _) => p.unwrap_or("-").to_string(),
    };
    format!(
        "{time} {verdict} {:<8} {:<7} {proto:<4} {at_src:>22} {:<10} -> {at_dst:>22} {:<10} {why}{count}{pods}",
        r.iface.as_deref().unwrap_or("-"),
        r.direction.as_deref().unwrap_or("-"),
        r.src_segment,
        r.dst_segment,
    )
}
