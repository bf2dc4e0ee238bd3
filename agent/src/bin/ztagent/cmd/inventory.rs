//! `ztagent inventory`: what has been seen talking to what.
use std::{path::Path, process::ExitCode};

use serde::Serialize;
use ztagent::api::{Listing, Reply, Request, Row};

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
        output::json(&ListingJson::of(&l))?;
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

/// `inventory -o json`: `{"entries": [...], "evicted": N, "capacity": N}`, times in RFC 3339
/// (docs/json.md#inventory). Entries have no name (a source, a service, a protocol and a port):
/// a list.
#[derive(Serialize)]
struct ListingJson<'a> {
    entries: Vec<EntryJson<'a>>,
    evicted: u64,
    capacity: usize,
}

impl<'a> ListingJson<'a> {
    fn of(l: &'a Listing) -> Self {
        ListingJson { entries: l.entries.iter().map(EntryJson::of).collect(), evicted: l.evicted, capacity: l.capacity }
    }
}

/// One entry as `-o json` prints it.
#[derive(Serialize)]
struct EntryJson<'a> {
    src: &'a str,
    dst: &'a str,
    proto: &'a str,
    port: u16,
    first_seen: String,
    last_seen: String,
    allowed_flows: u64,
    would_deny_flows: u64,
    denied_packets: u64,
    rate_limited_packets: u64,
    packets: u64,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
}

impl<'a> EntryJson<'a> {
    fn of(r: &'a Row) -> Self {
        let (k, s) = (&r.key, &r.seen);
        EntryJson {
            src: &k.src,
            dst: &k.dst,
            proto: &k.proto,
            port: k.port,
            first_seen: time_of(s.first_seen),
            last_seen: time_of(s.last_seen),
            allowed_flows: s.allowed_flows,
            would_deny_flows: s.would_deny_flows,
            denied_packets: s.denied_packets,
            rate_limited_packets: s.rate_limited_packets,
            packets: s.packets,
            bytes: s.bytes,
            rule: s.rule.as_deref(),
        }
    }
}
