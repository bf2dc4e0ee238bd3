//! `ztagent events`: what the kernel decided, recent or (-f) live.
use std::{path::Path, process::ExitCode};

use anyhow::anyhow;
use ztagent::api::{self as control, EventFilter, EventRecord, Request};

use crate::{
    args::{EventsArgs, Output},
    output,
};

pub async fn events(socket: &Path, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let EventsArgs { follow, verdicts, from, to, port, output: out, socket: _ } = args;
    let json = out.output == Output::Json;
    let filter = EventFilter { verdicts, from, to, port };
    let mut lines = control::stream(socket, &Request::Events { follow, filter }).await?;
    let colour = output::colour();
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
        if json {
            println!("{line}");
        } else {
            let r: EventRecord = serde_json::from_value(v).map_err(|e| anyhow!("unexpected event: {e}"))?;
            println!("{}", event_line(&r, colour));
        }
    }
    if follow {
        // The agent never ends a live stream by itself: it stopped or restarted.
        return Err(anyhow!(
            "the event stream ended: the agent closed it (it stopped or restarted); \
             follow again once it is back"
        ));
    }
    Ok(ExitCode::SUCCESS)
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
    format!(
        "{} {verdict} {:<8} {:<7} {:<4} {:>22} {:<10} -> {:>22} {:<10} {why}{count}{pods}",
        r.time.get(11..23).unwrap_or(&r.time),
        r.iface,
        r.direction,
        r.proto,
        format!("{}:{}", r.src, r.sport),
        r.src_segment,
        format!("{}:{}", r.dst, r.dport),
        r.dst_segment,
    )
}
