//! Prometheus metrics: `ztagent run --metrics-addr ADDR` serves `GET /metrics` (and `HEAD`) on
//! ADDR over HTTP/1.1 ([`http`]: axum on hyper), in the format the scraper asks for as
//! Prometheus' client libraries negotiate it: the classic text format (`text/plain;
//! version=0.0.4`) by default, OpenMetrics (`application/openmetrics-text; version=1.0.0`, ending
//! in `# EOF`) when the `Accept` header prefers it, as Prometheus itself does. Any other path is
//! 404, any other method 405. The endpoint has no authentication: bind it to loopback or a
//! management network.
//!
//! Metrics (all prefixed `ztagent_`; counters end in `_total`; every family has a HELP text):
//!
//! - `ztagent_packets_total{outcome}` (counter): packets by outcome, summed over CPUs, since
//!   the pinned maps were created; `outcome` is every name of `agent_common::counter::NAMES`
//!   but `events_lost` and the `http_*` ones (`pass_tracked`, `pass_policy`, ..., `drop_rate_limit`).
//! - `ztagent_http_requests_total`, `ztagent_http_responses_total` (counters): HTTP requests
//!   parsed and responses matched on declared ports; `ztagent_http_unparsable_total`: such
//!   connections that stopped being parsed (docs/api.md).
//! - `ztagent_events_lost_total` (counter): events the kernel could not put in the full ring
//!   buffer, since the maps were created.
//! - `ztagent_events_delivered_total` (counter): events the agent read from the ring buffer,
//!   since it started.
//! - `ztagent_event_packets_total{src_segment, dst_segment, verdict}` (counter): the sum of the
//!   event records' `count` since the agent started: every packet denied or rate limited
//!   (exact), and the first packet of every allowed flow. Counted as records are published,
//!   so it never falls behind, whatever the event rate.
//! - `ztagent_segment_packets_total{segment, outcome}` (counter): every packet by its source
//!   segment (identity) and outcome (`passed`, `denied`, `rate_limited`), from the kernel's
//!   per-CPU counters.
//! - `ztagent_rate_limit_dropped_packets_total{limit}`, `ztagent_rate_limit_passed_packets_total{limit}`
//!   (counters): packets each rate limit in force dropped / admitted, as `ztagent status`
//!   shows them (a changed limit starts from 0).
//! - `ztagent_map_entries{map}`, `ztagent_map_capacity{map}` (gauges): entries and max entries
//!   of the kernel's state maps `ZT_CT` (conntrack), `ZT_DENIED`, `ZT_AGG`, `ZT_FRAGS`,
//!   `ZT_ADDR_BUCKETS`.
//! - `ztagent_policy_revision` (gauge): revision of the policy in force (0: none).
//! - `ztagent_inventory_entries` (gauge), `ztagent_inventory_evicted_total` (counter).
//! - `ztagent_api_requests_total{dst_segment, port, method, route, status_class}` (counter):
//!   HTTP requests on declared ports by endpoint (the API inventory's route template) and
//!   status class (`2xx`..`5xx`, `other`), since the agent started; at most
//!   [`crate::observe::apis::MAX_METRIC_ROUTES`] endpoints are named, requests to the others
//!   count under `route="other"`. `ztagent_api_endpoints` (gauge),
//!   `ztagent_api_endpoints_evicted_total` (counter): the API inventory's size.
//! - `ztagent_grants` (gauge): time-bound grants in force.
//! - `ztagent_policy_last_push_timestamp_seconds` (gauge): unix time of the last policy this
//!   agent installed (absent when it installed none, e.g. it kept the kernel's).
//! - `ztagent_fleet_connected` (gauge, `--policy-source etcd://` only): 1 while connected to
//!   etcd, 0 while cut off; `ztagent_fleet_revision` (gauge): the fleet revision in force.
//!
//! Values are read at scrape time: the packet counters and limit statistics from the kernel
//! under the daemon's lock (a few map lookups), the map fills by walking the pinned maps'
//! keys without it. The per-segment counters come from a subscriber of the event stream,
//! which never holds up the event reader (it is told what it missed instead).
use prometheus_client::{
    encoding::{prometheus_text, text},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::api::MapFill;
use crate::events::EventHub;

mod collect;
mod http;

pub use http::{bind, serve};

const PREFIX: &str = "ztagent";

/// Why the agent's state could not be read for a scrape: the reader's own error (the daemon's
/// is the datapath's), with its causes.
pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// Why a scrape produced no exposition (the endpoint answers 500 with this sentence).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read the agent's counters: {}", causes(.0.as_ref()))]
    Read(ReadError),
    #[error("cannot encode the metrics")]
    Encode,
}

/// An error and its causes in one line (`error: cause: cause`).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source()).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// The two text formats of the exposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' classic text format, version 0.0.4: what a scraper gets unless it asks for
    /// OpenMetrics.
    Text,
    /// OpenMetrics 1.0.0 text: units, counters named without `_total` in their descriptors,
    /// `# EOF` at the end.
    OpenMetrics,
}

impl Format {
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for a request's `Accept` header (all its values joined by commas), as
    /// Prometheus' Go client negotiates it: the media ranges in order of preference (`q`, then
    /// the order written; `q=0` refused), the first one this endpoint serves wins, which is
    /// OpenMetrics for `application/openmetrics-text` (no version, 1.0.0 or 0.0.1) and the
    /// classic text for `text/plain` (no version or 0.0.4); nothing of either, or no header:
    /// the classic text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let mut ranges: Vec<(f32, usize, Option<Format>)> =
            accept.split(',').enumerate().filter_map(|(i, range)| media_range(range).map(|(q, f)| (q, i, f))).collect();
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges.into_iter().find_map(|(_, _, f)| f).unwrap_or(Format::Text)
    }
}

/// One media range of an `Accept` header: its quality and the format it names, if any; None
/// when it is refused (`q=0`) or its quality is not a number.
fn media_range(range: &str) -> Option<(f32, Option<Format>)> {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let (mut q, mut version) = (1.0_f32, None);
    for param in parts {
        let Some((key, value)) = param.split_once('=') else { continue };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "q" => q = value.parse().ok()?,
            "version" => version = Some(value.to_string()),
            _ => {}
        }
    }
    if q <= 0.0 {
        return None;
    }
    let format = match (media.as_str(), version.as_deref()) {
        ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => Some(Format::OpenMetrics),
        ("text/plain", None | Some("0.0.4")) => Some(Format::Text),
        _ => None,
    };
    Some((q, format))
}

/// What the daemon reads of itself at each scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// `Datapath::counters()`: (name in `counter::NAMES`, value).
    pub counters: Vec<(&'static str, u64)>,
    /// Events read from the kernel's ring buffer.
    pub events_delivered: u64,
    /// The rate limits in force.
    pub limits: Vec<LimitCounts>,
    pub revision: u32,
    /// Unix time (seconds) of the last policy the agent installed.
    pub last_push: Option<f64>,
    /// Packets by source segment (name; passed, denied, rate limited), from the kernel's
    /// per-CPU counters.
    pub segments: Vec<(String, [u64; 3])>,
    /// The inventory: entries kept, and entries evicted since it began.
    pub inventory: (u64, u64),
    /// The API inventory: endpoints kept and evicted, and its request counters.
    pub api_endpoints: (u64, u64),
    pub api_requests: Vec<(crate::observe::apis::MetricKey, u64)>,
    /// Time-bound grants in force.
    pub grants: u64,
    /// With an etcd source: (connected, fleet revision in force, 0 for none).
    pub fleet: Option<(bool, i64)>,
}

#[derive(Clone, Debug, Default)]
pub struct LimitCounts {
    pub name: String,
    pub packets_passed: u64,
    pub packets_dropped: u64,
}

type Labels3 = [(&'static str, String); 3];

/// The counters fed by the event stream.
#[derive(Clone, Debug, Default)]
pub struct EventCounters {
    packets: Family<Labels3, Counter>,
}

impl EventCounters {
    /// Counts every record `hub` publishes from now on, as it is published: exact, whatever
    /// the event rate (an observer, not a subscriber that could fall behind).
    pub fn start(hub: &EventHub) -> EventCounters {
        let counters = EventCounters::default();
        let c = counters.clone();
        // Packets only: a request event (`http`) stands for a request, not a packet.
        hub.observe(move |r| {
            if r.http.is_none() {
                c.record(&r.src_segment, &r.dst_segment, &r.verdict, r.count);
            }
        });
        counters
    }

    fn record(&self, src: &str, dst: &str, verdict: &str, count: u64) {
        let labels =
            [("src_segment", src.to_string()), ("dst_segment", dst.to_string()), ("verdict", verdict.to_string())];
        self.packets.get_or_create(&labels).inc_by(count);
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "event_packets",
            "Packets reported by the event stream since the agent started (sum of the records' count): \
             every packet denied or rate limited, the first packet of every flow allowed",
            self.packets.clone(),
        );
        r
    }
}

type Read = Box<dyn Fn() -> Result<Scrape, ReadError> + Send + Sync>;

/// Everything `/metrics` shows.
pub struct Exporter {
    events: Registry,
    gauges: Box<dyn Fn() -> Vec<MapFill> + Send + Sync>,
    read: Read,
}

impl Exporter {
    /// `gauges`: the state maps to report the fill of (shared with `status`); `read`: reads
    /// the daemon's state.
    pub fn new(
        events: &EventCounters,
        gauges: impl Fn() -> Vec<MapFill> + Send + Sync + 'static,
        read: impl Fn() -> Result<Scrape, ReadError> + Send + Sync + 'static,
    ) -> Exporter {
        Exporter { events: events.registry(), gauges: Box::new(gauges), read: Box::new(read) }
    }

    /// The exposition of a scrape in `format`. Blocking (map syscalls, the daemon's lock).
    pub fn render(&self, format: Format) -> Result<String, MetricsError> {
        let scrape = (self.read)().map_err(MetricsError::Read)?;
        encode(scrape, (self.gauges)(), &self.events, format).map_err(|_| MetricsError::Encode)
    }
}

/// The exposition: the scrape's values, then the event-stream counters (then `# EOF` in
/// OpenMetrics).
fn encode(scrape: Scrape, fill: Vec<MapFill>, events: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut now = Registry::with_prefix(PREFIX);
    now.register_collector(Box::new(collect::Snapshot { scrape, fill }));
    let mut out = String::new();
    match format {
        Format::Text => {
            prometheus_text::encode(&mut out, &now)?;
            prometheus_text::encode(&mut out, events)?;
        }
        Format::OpenMetrics => {
            text::encode_registry(&mut out, &now)?;
            text::encode_registry(&mut out, events)?;
            text::encode_eof(&mut out)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
