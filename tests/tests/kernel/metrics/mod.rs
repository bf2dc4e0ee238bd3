//! The metrics endpoint and the events file, against real traffic: the counters served at
//! `/metrics` are those of `ztagent status` at the same moment, the per-segment event counters
//! add up to the packets sent, a tiny ring buffer's losses are shown by both, and the events
//! file holds exactly what `ztagent events` shows, also across rotations; Prometheus' own tools
//! read the endpoint: `promtool check metrics` passes on a live scrape, and a real Prometheus
//! server scrapes the agent and answers PromQL about it.
//!
//! - [`exposition`]: reading the endpoint and `status` at the same moment;
//! - [`traffic`]: what the tests send;
//! - [`counters`]: the counters against the traffic, `status` and the event stream;
//! - [`events_file`]: the events file and its rotation;
//! - [`prometheus`]: promtool, a real Prometheus server, the content negotiation.
use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use integration_tests::{Agent, Host};
use serde_json::Value;

mod counters;
mod events_file;
mod exposition;
mod prometheus;
mod traffic;

/// The agent listens on the loopback of the namespace it runs in (the payments host's).
pub(super) const METRICS_PORT: u16 = 9464;

pub(super) const POLICY: &str = integration_tests::frontend_payments_policy!(
    r#"  batch: { cidrs: [10.20.3.0/24, "fd20:3::/64"] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
  - { name: pings, from: [batch], to: [payments], ports: ["icmp"], action: allow }
rateLimits:
  - name: batch-pings
    from: batch
    to: [payments]
    ports: ["icmp"]
    packets: { rate: 1, per: second, burst: 2 }
"#
);

pub(super) fn metrics_flags(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--metrics-addr".to_string(), format!("127.0.0.1:{METRICS_PORT}")];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub(super) fn start(pay: &Host, policy: &Path, flags: &[String]) -> Agent {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Agent::start_with(&pay.ns, &[&pay.iface], Some(policy), &flags)
}

/// An IGMP membership report of the LAN's own interfaces (sent from 0.0.0.0 by those without an
/// IPv4 address, to 224.0.0.22): the only traffic the test does not send itself, denied by
/// default (world -> world).
pub(super) fn is_igmp_chatter(r: &Value) -> bool {
    r["proto"] == "2"
        && r["verdict"] == "denied"
        && r["reason"] == "default"
        && r["src_segment"] == "world"
        && r["dst_segment"] == "world"
        && r["dst"].as_str().and_then(|d| d.parse::<std::net::Ipv4Addr>().ok()).is_some_and(|d| d.is_multicast())
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}
