//! `ztagent status`: the agent's interfaces, maps, counters, rate limits and policy sources.
use std::{path::Path, process::ExitCode};

use anyhow::bail;
use ztagent::{
    api::{K8sSource, LimitStatus, PinnedLinkState, PolicySource, RejectedVersion, Reply, Request, Status},
    kernel::datapath::PinLayout,
};

use super::{call, unexpected};
use crate::{
    args::{Output, StatusArgs},
    output,
};

pub async fn status(socket: &Path, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let out = args.output.output;
    if args.offline {
        return offline(&args.pin_path, out);
    }
    if let Err(e) = std::os::unix::net::UnixStream::connect(socket)
        && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
    {
        bail!(
            "no agent answers on {} ({e}); `ztagent status --offline` reads what the kernel enforces from the pins",
            socket.display()
        );
    }
    match call(socket, &Request::Status).await? {
        Reply::Status(s) => {
            if out == Output::Json {
                output::json(&s)?;
            } else {
                print_datapath(&s);
                for l in &s.limits {
                    print_limit(l);
                }
                for (name, a) in &s.apis {
                    println!(
                        "api {name}: segment {}, ports {}, protocol {}",
                        a.segment,
                        a.ports.join(", "),
                        a.protocol
                    );
                }
                if let Some(p) = &s.policy_source {
                    print_policy_source(p);
                }
                if let Some(k) = &s.k8s_source {
                    print_k8s_source(k);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}

/// `status --offline`: what the pins under `pin_path` enforce, read from the kernel alone.
fn offline(pin_path: &Path, out: Output) -> anyhow::Result<ExitCode> {
    let s = ztagent::kernel::offline::read(&PinLayout::new(pin_path))?;
    if out == Output::Json {
        output::json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("read from the pins (no agent asked): what the kernel enforces now");
    println!("policy revision: {} ({})", s.revision, s.mode);
    println!("pin path: {}", s.pin_path);
    let link = |l: &Option<PinnedLinkState>| match l {
        None => "none pinned".to_string(),
        Some(PinnedLinkState { ifindex: Some(0), link_id, .. }) => {
            format!("link {link_id}, detached (the interface is gone)")
        }
        Some(PinnedLinkState { link_id, program_id, ifindex }) => format!(
            "link {link_id} (program {program_id}) attached{}",
            ifindex.map_or(String::new(), |i| format!(" to ifindex {i}"))
        ),
    };
    for i in &s.interfaces {
        println!("interface {}: ingress {}; egress {}", i.name, link(&i.ingress), link(&i.egress));
    }
    if s.interfaces.is_empty() {
        println!("no interface: no link is pinned, nothing is enforced");
    }
    for m in &s.maps {
        println!("map {:<16} {} of {} entries", m.map, m.entries, m.capacity);
    }
    println!("counters:");
    for (name, n) in &s.counters {
        println!("  {name:<18} {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy revision, the interfaces, the maps' fill and the packet counters.
fn print_datapath(s: &Status) {
    println!("policy revision: {} ({})", s.revision, s.mode);
    println!("pin path: {}\nxdp mode: {}", s.pin_path, s.xdp_mode);
    let restored = match (&s.pins.last_restored, s.pins.restored) {
        (Some(t), n) => format!("; {n} vanished under the running agent and were pinned again (last at {t})"),
        (None, _) => String::new(),
    };
    if s.pins.intact {
        println!("pins: intact{restored}");
    } else {
        println!("pins: MISSING, enforcement ends with the agent: {}{restored}", s.pins.missing.join("; "));
    }
    for i in &s.interfaces {
        let how = match &i.pattern {
            Some(p) => format!(" (pattern {p}, guarded)"),
            None => String::new(),
        };
        println!("interface {}{how}: ingress {:?}, egress {:?}", i.name, i.ingress, i.egress);
        if i.guarded {
            println!("  allowed sources    {}", i.sources.join(", "));
        }
    }
    for m in &s.maps {
        println!("map {:<16} {} of {} entries", m.map, m.entries, m.capacity);
    }
    println!("counters:");
    for (name, n) in &s.counters {
        println!("  {name:<18} {n}");
    }
}

/// One rate limit: its buckets and what it admitted and dropped.
fn print_limit(l: &LimitStatus) {
    let buckets = [("packets", &l.packets), ("connections", &l.connections), ("bytes", &l.bytes)]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
        .collect::<Vec<_>>()
        .join("; ");
    println!("rate limit {} (scope {}): {buckets}", l.name, l.scope);
    if let Some(t) = l.packet_tokens {
        println!("  packet tokens now  {t:.1}");
    }
    if l.scope == "address" {
        println!("  address buckets    {} live, {} evicted", l.address_buckets, l.evicted);
    }
    println!("  packets            {} admitted, {} dropped", l.packets_passed, l.packets_dropped);
    println!("  connections        {} admitted, {} dropped", l.connections_passed, l.connections_dropped);
    println!("  bytes              {} admitted, {} dropped", l.bytes_passed, l.bytes_dropped);
}

/// The fleet (etcd: it has a connection) or the policy directory the policy comes from.
fn print_policy_source(p: &PolicySource) {
    if p.connected.is_some() {
        let link = if p.connected == Some(true) { "connected" } else { "disconnected, retrying" };
        let state = if p.up_to_date { "up to date" } else { "newest revision rejected" };
        println!(
            "fleet {} ({link}, {state}): fleet revision {}",
            p.dir,
            p.fleet_revision.map_or("none".into(), |r| r.to_string())
        );
        if let Some(r) = &p.last_rejection {
            println!("  last rejected      {} {}", r.time, r.message.lines().next().unwrap_or(""));
        }
    } else {
        let state = if p.up_to_date { "up to date" } else { "newest version rejected" };
        println!("policy directory {} ({state}): {}", p.dir, p.file.as_deref().unwrap_or("no file yet"));
        if let Some(a) = &p.last_applied {
            println!("  last applied       {} revision {}, sha256 {}", a.time, a.revision, a.sha256);
        }
        if let Some(r) = &p.last_rejection {
            print_rejection(r);
        }
    }
}

/// The Kubernetes objects (a directory or the API server) the policy is translated with.
fn print_k8s_source(k: &K8sSource) {
    let state = if k.up_to_date { "up to date" } else { "newest version rejected" };
    let (from, inputs) = if k.source == "api" { ("from the API server ", "objects") } else { ("", "files") };
    println!(
        "kubernetes objects {from}{} ({state}): {} {inputs}, {} namespaces, {} pods ({} addresses), {} NetworkPolicies",
        k.dir, k.files, k.namespaces, k.pods, k.pod_addresses, k.network_policies
    );
    if let Some(a) = &k.last_applied {
        println!("  last applied       {} revision {}, sha256 {}", a.time, a.revision, a.sha256);
    }
    for w in &k.warnings {
        println!("  {w}");
    }
    if let Some(r) = &k.last_rejection {
        print_rejection(r);
    }
}

/// The last version rejected, its whole message indented.
fn print_rejection(r: &RejectedVersion) {
    println!("  last rejected      {} sha256 {}", r.time, r.sha256.as_deref().unwrap_or("-"));
    for line in r.message.lines() {
        println!("    {line}");
    }
}
