//! `status`: interfaces, counters, rate limits, the state maps' fill, the sources.
use agent_common::{BUCKET_PACKETS, TICK_SHIFT};

use super::super::State;
use crate::{
    api::{ApiStatus, Interface, LimitBucket, LimitStatus, MapStatus, Reply, Status},
    kernel::{datapath::error_chain, mapwriter::MapWriter},
    policy::{self, CompiledPolicy, Mode},
};

pub(super) fn status(state: &State) -> Reply {
    let counters = match state.datapath.counters() {
        Ok(c) => c.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        Err(e) => return Reply::Error { message: error_chain(&e) },
    };
    let limits = state.installed.as_ref().map_or_else(Vec::new, |i| limit_status(&state.writer, &i.compiled));
    Reply::Status(Box::new(Status {
        limits,
        apis: state.installed.as_ref().map_or_else(Default::default, |i| api_status(&i.policy)),
        revision: state.writer.revision(),
        mode: state.installed.as_ref().map_or(Mode::Enforce, |i| i.compiled.mode).as_str().into(),
        pin_path: state.datapath.pins.root.display().to_string(),
        interfaces: state
            .interfaces
            .iter()
            .map(|i| Interface { name: i.name.clone(), ingress: i.ingress, egress: i.egress, ..Interface::default() })
            .chain(state.node.iter().flat_map(|n| n.status()).map(|p| Interface {
                name: p.pod.name,
                ingress: p.pod.ingress,
                egress: p.pod.egress,
                pattern: Some(p.pod.pattern),
                ifindex: Some(p.pod.ifindex),
                guarded: true,
                sources: p.sources,
            }))
            .collect(),
        counters,
        policy_source: state.policy_source.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        k8s_source: state.k8s_source.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        maps: state
            .gauges
            .fill()
            .into_iter()
            .map(|m| MapStatus { map: m.map.into(), entries: m.entries, capacity: m.capacity })
            .collect(),
        xdp_mode: state.xdp_mode.into(),
        pins: state.pins.clone(),
    }))
}

/// The APIs `policy` declares, keyed by name (or `SEGMENT:PORTS`).
pub(crate) fn api_status(policy: &policy::Policy) -> std::collections::BTreeMap<String, ApiStatus> {
    let mut out = std::collections::BTreeMap::new();
    for api in &policy.apis {
        let status = ApiStatus {
            segment: policy.seg_ref_name(policy::SegRef::Named(api.segment)),
            ports: api.ports.iter().map(|p| p.to_string()).collect(),
            protocol: api.protocol.as_str().into(),
        };
        // Two unnamed APIs with the same segment and ports declare the same pairs: one entry.
        out.insert(api.key(policy), status);
    }
    out
}

/// The state of every rate limit in force, read from the kernel.
fn limit_status(writer: &MapWriter, compiled: &CompiledPolicy) -> Vec<LimitStatus> {
    let describe = |b: &Option<policy::Bucket>| {
        b.as_ref().map(|b| {
            let per = match b.per_seconds {
                1 => "second",
                60 => "minute",
                _ => "hour",
            };
            LimitBucket { rate: b.rate, per: per.into(), burst: b.burst }
        })
    };
    let now = crate::clock::monotonic_ns() << TICK_SHIFT;
    compiled
        .limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (cfg, stats) = writer.limit_stats(i).unwrap_or_default();
            let (tat, live) = writer.bucket_state(l.fingerprint, BUCKET_PACKETS);
            let packets = cfg.buckets[BUCKET_PACKETS];
            // GCRA: the bucket's clock runs ahead of now by what has been spent.
            let packet_tokens = (!l.per_address && packets.cost != 0).then(|| {
                let spent = tat.map_or(0, |t| (t.wrapping_sub(now) as i64).max(0) as u64);
                packets.tolerance.saturating_sub(spent) as f64 / packets.cost as f64
            });
            LimitStatus {
                name: l.name.clone(),
                scope: if l.per_address { "address" } else { "segment" }.into(),
                packets: describe(&l.packets),
                connections: describe(&l.connections),
                bytes: describe(&l.bytes),
                packet_tokens,
                address_buckets: live,
                evicted: stats.buckets_created.saturating_sub(live as u64),
                packets_passed: stats.packets_passed,
                packets_dropped: stats.packets_dropped,
                connections_passed: stats.connections_passed,
                connections_dropped: stats.connections_dropped,
                bytes_passed: stats.bytes_passed,
                bytes_dropped: stats.bytes_dropped,
            }
        })
        .collect()
}
