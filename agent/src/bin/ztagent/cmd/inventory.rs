//! `ztagent inventory`: what has been seen talking to what.
use std::{path::Path, process::ExitCode};

use ztagent::api::{Reply, Request};

use super::{call, since_of, unexpected};
use crate::{
    args::{InventoryArgs, Output},
    output::{self, time_of},
};

pub async fn inventory(socket: &Path, args: InventoryArgs) -> anyhow::Result<ExitCode> {
    let since = since_of(args.since.since.as_deref())?;
    let l = match call(socket, &Request::Inventory { since }).await? {
        Reply::Inventory(l) => l,
        other => return unexpected(other),
    };
    if args.output.output == Output::Json {
        output::json(&l)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<24} {:<5} {:>5} {:>8} {:>10} {:>9} {:>11} {:>9} {:>8}  last seen",
        "from", "to", "proto", "port", "allowed", "would-deny", "packets", "bytes", "denied", "limited"
    );
    for r in &l.entries {
        println!(
            "{:<24} {:<24} {:<5} {:>5} {:>8} {:>10} {:>9} {:>11} {:>9} {:>8}  {}",
            r.key.src,
            r.key.dst,
            r.key.proto,
            r.key.port,
            r.seen.allowed_flows,
            r.seen.would_deny_flows,
            r.seen.packets,
            r.seen.bytes,
            r.seen.denied_packets,
            r.seen.rate_limited_packets,
            time_of(r.seen.last_seen)
        );
    }
    println!(
        "{} entries (at most {}), {} evicted; allowed and would-deny count flows, packets and bytes those flows \
         (both directions), denied and limited packets",
        l.entries.len(),
        l.capacity,
        l.evicted
    );
    Ok(ExitCode::SUCCESS)
}
