//! The values of one scrape as a prometheus-client collector: the same descriptors and samples
//! for both text formats (the encoder names the families as each format wants them).
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::{LimitCounts, Scrape};
use crate::api::MapFill;

/// The values of one scrape, as a collector.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) scrape: Scrape,
    pub(super) fill: Vec<MapFill>,
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_packets(&mut enc)?;
        self.encode_tables(&mut enc)?;
        self.encode_state(&mut enc)
    }
}

impl Snapshot {
    /// Packets by outcome, events lost and delivered.
    fn encode_packets(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.scrape;
        let lost = agent_common::counter::NAMES[agent_common::counter::EVENTS_LOST as usize];
        let mut e = enc.encode_descriptor(
            "packets",
            "Packets by outcome, summed over CPUs, since the pinned maps were created.",
            None,
            MetricType::Counter,
        )?;
        // Requests and connections of declared HTTP ports are not packets: families of their own.
        let http = |n: &str| n.starts_with("http_");
        for (name, v) in s.counters.iter().filter(|(n, _)| *n != lost && !http(n)) {
            ConstCounter::new(*v).encode(e.encode_family(&[("outcome", *name)])?)?;
        }
        for (name, v) in s.counters.iter().filter(|(n, _)| http(n)) {
            let help = match *name {
                "http_requests" => "HTTP requests parsed on declared ports, since the pinned maps were created.",
                "http_responses" => "HTTP responses matched to their requests, since the pinned maps were created.",
                _ => "Connections on declared HTTP ports that stopped being parsed (broken framing, lost bytes).",
            };
            let e = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(e)?;
        }
        if let Some((_, v)) = s.counters.iter().find(|(n, _)| *n == lost) {
            let e = enc.encode_descriptor(
                "events_lost",
                "Events the kernel could not put in the full ring buffer, since the maps were created.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(*v).encode(e)?;
        }
        let e = enc.encode_descriptor(
            "events_delivered",
            "Events the agent read from the kernel's ring buffer since it started.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.events_delivered).encode(e)?;
        Ok(())
    }

    /// Per segment, per rate limit, per state map.
    fn encode_tables(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.scrape;
        if !s.segments.is_empty() {
            let mut e = enc.encode_descriptor(
                "segment_packets",
                "Packets by source segment (identity) and outcome, from the kernel's per-CPU counters.",
                None,
                MetricType::Counter,
            )?;
            for (segment, counts) in &s.segments {
                for (outcome, v) in ["passed", "denied", "rate_limited"].iter().zip(counts) {
                    ConstCounter::new(*v)
                        .encode(e.encode_family(&[("segment", segment.as_str()), ("outcome", outcome)])?)?;
                }
            }
        }
        if !s.limits.is_empty() {
            type Pick = fn(&LimitCounts) -> u64;
            let families: [(&str, &str, Pick); 2] = [
                ("rate_limit_dropped_packets", "Packets each rate limit in force dropped.", |l| l.packets_dropped),
                ("rate_limit_passed_packets", "Packets each rate limit in force admitted.", |l| l.packets_passed),
            ];
            for (name, help, pick) in families {
                let mut e = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                for l in &s.limits {
                    ConstCounter::new(pick(l)).encode(e.encode_family(&[("limit", l.name.as_str())])?)?;
                }
            }
        }
        if !self.fill.is_empty() {
            type Pick = fn(&MapFill) -> u64;
            let families: [(&str, &str, Pick); 2] = [
                ("map_entries", "Entries in the kernel's state maps.", |m| m.entries),
                ("map_capacity", "Capacity (max entries) of the kernel's state maps.", |m| m.capacity),
            ];
            for (name, help, pick) in families {
                let mut e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for m in &self.fill {
                    ConstGauge::new(pick(m)).encode(e.encode_family(&[("map", m.map)])?)?;
                }
            }
        }
        Ok(())
    }

    /// The policy, the inventory, the grants, the fleet.
    fn encode_state(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.scrape;
        let e = enc.encode_descriptor(
            "policy_revision",
            "Revision of the policy in force (0: none).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.revision).encode(e)?;
        let e = enc.encode_descriptor(
            "inventory_entries",
            "Entries in the inventory (identity, service, protocol, port).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.inventory.0).encode(e)?;
        let e = enc.encode_descriptor(
            "inventory_evicted",
            "Inventory entries evicted to stay within its bound.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.inventory.1).encode(e)?;
        let e =
            enc.encode_descriptor("api_endpoints", "HTTP endpoints in the API inventory.", None, MetricType::Gauge)?;
        ConstGauge::new(s.api_endpoints.0).encode(e)?;
        let e = enc.encode_descriptor(
            "api_endpoints_evicted",
            "API inventory endpoints evicted to stay within its bound.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.api_endpoints.1).encode(e)?;
        if !s.api_requests.is_empty() {
            let mut e = enc.encode_descriptor(
                "api_requests",
                "HTTP requests on declared ports by endpoint and status class (route other: beyond the bound).",
                None,
                MetricType::Counter,
            )?;
            for ((segment, port, method, route, class), n) in &s.api_requests {
                let port = port.to_string();
                let labels: [(&str, &str); 5] = [
                    ("dst_segment", segment),
                    ("port", &port),
                    ("method", method),
                    ("route", route),
                    ("status_class", class),
                ];
                ConstCounter::new(*n).encode(e.encode_family(&labels)?)?;
            }
        }
        let e = enc.encode_descriptor("grants", "Time-bound grants in force.", None, MetricType::Gauge)?;
        ConstGauge::new(s.grants).encode(e)?;
        if let Some(t) = s.last_push {
            let e = enc.encode_descriptor(
                "policy_last_push_timestamp",
                "Unix time of the last policy this agent installed.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(t).encode(e)?;
        }
        if let Some((connected, revision)) = s.fleet {
            let e = enc.encode_descriptor(
                "fleet_connected",
                "1 while connected to etcd, 0 while cut off.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(connected)).encode(e)?;
            let e =
                enc.encode_descriptor("fleet_revision", "Fleet revision in force (0: none).", None, MetricType::Gauge)?;
            ConstGauge::new(revision).encode(e)?;
        }
        Ok(())
    }
}
