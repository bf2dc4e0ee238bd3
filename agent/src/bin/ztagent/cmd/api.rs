//! `ztagent api inventory`: the HTTP endpoints seen on declared ports.
use std::{path::Path, process::ExitCode};

use ztagent::api::{ApiEndpoint, ApiListing, Reply, Request};

use super::{call, unexpected};
use crate::{
    args::{ApiInventoryArgs, Output},
    output,
};

pub async fn inventory(socket: &Path, args: ApiInventoryArgs) -> anyhow::Result<ExitCode> {
    let l = match call(socket, &Request::ApiInventory).await? {
        Reply::ApiInventory(l) => l,
        other => return unexpected(other),
    };
    if args.output.output == Output::Json {
        // An object keyed by endpoint (docs/json.md#api-inventory).
        output::json(&l)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&l));
    Ok(ExitCode::SUCCESS)
}

/// The text table: one line per endpoint, then the totals.
fn table(l: &ApiListing) -> String {
    let mut out = format!(
        "{:<48} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}  {:<24} callers\n",
        "endpoint", "requests", "2xx", "3xx", "4xx", "5xx", "other", "p50", "p99", "last seen"
    );
    for (name, e) in &l.endpoints {
        let class = |c: &str| e.status.get(c).copied().unwrap_or(0);
        let latency = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), micros);
        out.push_str(&format!(
            "{:<48} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}  {:<24} {}\n",
            name,
            e.requests,
            class("2xx"),
            class("3xx"),
            class("4xx"),
            class("5xx"),
            class("other"),
            latency(e.latency_p50_us),
            latency(e.latency_p99_us),
            e.last_seen,
            callers(e)
        ));
    }
    out.push_str(&format!(
        "{} endpoints (at most {}), {} evicted; other: no response seen or 1xx; a route ending in ... is a \
         truncated path\n",
        l.endpoints.len(),
        l.capacity,
        l.evicted
    ));
    out
}

/// `frontend 12, batch 3, +2 more`: the busiest callers first.
fn callers(e: &ApiEndpoint) -> String {
    let mut v: Vec<(&String, &u64)> = e.callers.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut s: Vec<String> = v.iter().take(3).map(|(c, n)| format!("{c} {n}")).collect();
    let more = v.len().saturating_sub(3) as u64 + e.callers_evicted;
    if more > 0 {
        s.push(format!("+{more} more"));
    }
    s.join(", ")
}

/// 850us, 12.3ms, 1.20s.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}
