//! Prometheus metrics: `ztagent run --metrics-addr ADDR` serves `GET /metrics` on ADDR in the
//! OpenMetrics text format (`HEAD` too; anything else is 404/405). The endpoint has no
//! authentication: bind it to loopback or a management network.
//!
//! Metrics (all prefixed `ztagent_`; counters end in `_total`):
//!
//! - `ztagent_packets_total{outcome}` (counter): packets by outcome, summed over CPUs, since
//!   the pinned maps were created; `outcome` is every name of `agent_common::counter::NAMES`
//!   but `events_lost` (`pass_tracked`, `pass_policy`, ..., `drop_rate_limit`).
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
//! - `ztagent_policy_last_push_timestamp_seconds` (gauge): unix time of the last policy this
//!   agent installed (absent when it installed none, e.g. it kept the kernel's).
//! - `ztagent_fleet_connected` (gauge, `--policy-source etcd://` only): 1 while connected to
//!   etcd, 0 while cut off; `ztagent_fleet_revision` (gauge): the fleet revision in force.
//!
//! Values are read at scrape time: the packet counters and limit statistics from the kernel
//! under the daemon's lock (a few map lookups), the map fills by walking the pinned maps'
//! keys without it. The per-segment counters come from a subscriber of the event stream,
//! which never holds up the event reader (it is told what it missed instead).
use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::api::MapFill;
use crate::events::EventHub;

const PREFIX: &str = "ztagent";
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The largest request head read; requests are a line and a few headers.
const MAX_HEAD: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;

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
        hub.observe(move |r| c.record(&r.src_segment, &r.dst_segment, &r.verdict, r.count));
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

/// Everything `/metrics` shows.
pub struct Exporter {
    events: Registry,
    gauges: Box<dyn Fn() -> Vec<MapFill> + Send + Sync>,
    read: Box<dyn Fn() -> Result<Scrape, String> + Send + Sync>,
}

impl Exporter {
    /// `gauges`: the state maps to report the fill of (shared with `status`); `read`: reads
    /// the daemon's state.
    pub fn new(
        events: &EventCounters,
        gauges: impl Fn() -> Vec<MapFill> + Send + Sync + 'static,
        read: impl Fn() -> Result<Scrape, String> + Send + Sync + 'static,
    ) -> Exporter {
        Exporter { events: events.registry(), gauges: Box::new(gauges), read: Box::new(read) }
    }

    /// The OpenMetrics text of a scrape. Blocking (map syscalls, the daemon's lock).
    pub fn render(&self) -> Result<String, String> {
        let scrape = (self.read)()?;
        encode(scrape, (self.gauges)(), &self.events).map_err(|_| "cannot encode the metrics".to_string())
    }
}

/// The values of one scrape, as a collector.
#[derive(Debug)]
struct Snapshot {
    scrape: Scrape,
    fill: Vec<MapFill>,
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
        for (name, v) in s.counters.iter().filter(|(n, _)| *n != lost) {
            ConstCounter::new(*v).encode(e.encode_family(&[("outcome", *name)])?)?;
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

/// The exposition: the scrape's values, then the event-stream counters, then `# EOF`.
fn encode(scrape: Scrape, fill: Vec<MapFill>, events: &Registry) -> Result<String, std::fmt::Error> {
    let mut now = Registry::with_prefix(PREFIX);
    now.register_collector(Box::new(Snapshot { scrape, fill }));
    let mut out = String::new();
    text::encode_registry(&mut out, &now)?;
    text::encode_registry(&mut out, events)?;
    text::encode_eof(&mut out)?;
    Ok(out)
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let exporter = exporter.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond(stream, &exporter).await {
                        tracing::debug!(%peer, "metrics client: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds the metrics listener (before anything else is set up, so a bad address fails early).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// One request, one response, then the connection is closed.
async fn respond(mut stream: TcpStream, exporter: &Arc<Exporter>) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let response = match head {
        None => plain(431, "Request Header Fields Too Large", "request head too large\n"),
        Some(head) => match route(&head) {
            Route::Metrics { head_only } => {
                let ex = exporter.clone();
                match tokio::task::spawn_blocking(move || ex.render()).await {
                    Ok(Ok(body)) => response(200, "OK", CONTENT_TYPE, &body, head_only, ""),
                    Ok(Err(e)) => {
                        tracing::warn!("metrics: scrape failed: {e}");
                        plain(500, "Internal Server Error", &format!("{e}\n"))
                    }
                    Err(e) => plain(500, "Internal Server Error", &format!("{e}\n")),
                }
            }
            Route::BadMethod => {
                let text = "text/plain; charset=utf-8";
                response(405, "Method Not Allowed", text, "use GET\n", false, "Allow: GET, HEAD\r\n")
            }
            Route::BadRequest => plain(400, "Bad Request", "bad request\n"),
            Route::NotFound => plain(404, "Not Found", "not found; metrics are at /metrics\n"),
        },
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request head (up to the blank line), or None when it is larger than [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    BadMethod,
    BadRequest,
    NotFound,
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    match (path, method) {
        ("/metrics", "GET") => Route::Metrics { head_only: false },
        ("/metrics", "HEAD") => Route::Metrics { head_only: true },
        ("/metrics", _) => Route::BadMethod,
        _ => Route::NotFound,
    }
}

fn plain(code: u16, reason: &str, body: &str) -> String {
    response(code, reason, "text/plain; charset=utf-8", body, false, "")
}

fn response(code: u16, reason: &str, content_type: &str, body: &str, head_only: bool, extra: &str) -> String {
    let mut r = String::with_capacity(body.len() + 160);
    let _ = write!(
        r,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        r.push_str(body);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        Scrape {
            counters: agent_common::counter::NAMES.iter().enumerate().map(|(i, n)| (*n, i as u64 * 10)).collect(),
            events_delivered: 7,
            limits: vec![LimitCounts { name: "batch-pings".into(), packets_passed: 12, packets_dropped: 3 }],
            revision: 4,
            last_push: Some(1_700_000_000.5),
            segments: vec![("frontend".into(), [5, 1, 2])],
            inventory: (42, 3),
            grants: 2,
            fleet: Some((false, 12)),
        }
    }

    #[test]
    fn the_exposition_names_every_metric() {
        let counters = EventCounters::default();
        counters.record("frontend", "payments", "allowed", 1);
        counters.record("frontend", "payments", "allowed", 2);
        counters.record("world", "payments", "denied", 40);
        let fill = vec![MapFill { map: agent_common::maps::CONNTRACK, entries: 2, capacity: 262_144 }];
        let text = encode(scrape(), fill, &counters.registry()).unwrap();
        for line in [
            "# TYPE ztagent_packets counter",
            r#"ztagent_packets_total{outcome="pass_tracked"} 0"#,
            r#"ztagent_packets_total{outcome="drop_rate_limit"} 120"#,
            "ztagent_events_lost_total 130",
            "ztagent_events_delivered_total 7",
            r#"ztagent_rate_limit_dropped_packets_total{limit="batch-pings"} 3"#,
            r#"ztagent_rate_limit_passed_packets_total{limit="batch-pings"} 12"#,
            "# TYPE ztagent_map_entries gauge",
            r#"ztagent_map_entries{map="ZT_CT"} 2"#,
            r#"ztagent_map_capacity{map="ZT_CT"} 262144"#,
            "ztagent_policy_revision 4",
            "ztagent_inventory_entries 42",
            "ztagent_inventory_evicted_total 3",
            "ztagent_grants 2",
            "# UNIT ztagent_policy_last_push_timestamp_seconds seconds",
            "ztagent_policy_last_push_timestamp_seconds 1700000000.5",
            "ztagent_fleet_connected 0",
            "ztagent_fleet_revision 12",
            r#"ztagent_event_packets_total{src_segment="frontend",dst_segment="payments",verdict="allowed"} 3"#,
            r#"ztagent_event_packets_total{src_segment="world",dst_segment="payments",verdict="denied"} 40"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains(r#"outcome="events_lost""#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Each family is described once.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{text}");
    }

    #[test]
    fn no_policy_no_push_time_no_limits() {
        let s = Scrape { last_push: None, limits: vec![], revision: 0, ..scrape() };
        let text = encode(s, vec![], &EventCounters::default().registry()).unwrap();
        assert!(text.contains("ztagent_policy_revision 0\n"), "{text}");
        assert!(!text.contains("last_push"), "{text}");
        assert!(!text.contains("ztagent_rate_limit"), "{text}");
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { head_only: false });
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics { head_only: false });
        assert_eq!(route("HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head_only: true });
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("garbage\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = response(200, "OK", CONTENT_TYPE, "abc", false, "");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nabc"));
        assert!(response(200, "OK", CONTENT_TYPE, "abc", true, "").ends_with("\r\n\r\n"));
    }
}
