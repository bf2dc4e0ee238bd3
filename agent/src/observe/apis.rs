//! The API inventory: every HTTP request the kernel reported on a declared port (event records
//! with `reason` "request"), counted per endpoint = (destination segment, destination pod,
//! port, method, route template). Per endpoint: its callers (source identity and pod) with
//! their requests, status classes, a latency histogram (log scale, [`SUB_BUCKETS`] buckets per
//! power of two, so p50/p99 within about 12% and a bounded size), first and last seen.
//! Bounded: at most [`MAX_ENDPOINTS`] endpoints (beyond, the least recently seen tenth is
//! evicted, counted) and [`MAX_CALLERS`] callers per endpoint (beyond, the caller with the
//! fewest requests is evicted, counted). Kept in the state directory (`apis.json`, saved
//! with the inventory), so it survives restarts. The Prometheus counters
//! (`ztagent_api_requests_total`) are kept here too, at most [`MAX_METRIC_ROUTES`] endpoints
//! named, the others counted under `route="other"`.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    api::{ApiEndpoint, ApiListing, EventRecord},
    clock::rfc3339,
    observe::inventory::identity,
};

pub const MAX_ENDPOINTS: usize = 10_000;
pub const MAX_CALLERS: usize = 100;
/// Endpoints named in the metrics; requests to others count under `route="other"`.
pub const MAX_METRIC_ROUTES: usize = 1_000;
/// Histogram buckets per power of two.
pub const SUB_BUCKETS: u32 = 4;
const FILE: &str = "apis.json";

#[derive(Debug, thiserror::Error)]
pub enum ApiInventoryError {
    #[error("cannot write the API inventory to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the API inventory {path} cannot be read: {message}")]
    Read { path: PathBuf, message: String },
}

/// An endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub dst_segment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    pub port: u16,
    pub method: String,
    pub route: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Endpoint {
    /// `payments:8080 GET /v1/payments/{id}` (`payments(ns/pod):8080 ...` with a pod, `...`
    /// after a truncated route).
    pub fn name(&self) -> String {
        let pod = self.dst_pod.as_deref().map(|p| format!("({p})")).unwrap_or_default();
        let more = if self.truncated { "..." } else { "" };
        format!("{}{pod}:{} {} {}{more}", self.dst_segment, self.port, self.method, self.route)
    }
}

/// Log-scale latency histogram: bucket index -> requests (only buckets used are kept).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram(BTreeMap<u16, u64>);

impl Histogram {
    /// The bucket of `v`: values below 2^2 exact, then [`SUB_BUCKETS`] per power of two.
    fn bucket(v: u64) -> u16 {
        if v < 4 {
            return v as u16;
        }
        let log = 63 - v.leading_zeros(); // >= 2
        let sub = (v >> (log - 2)) & 3;
        (4 + (log - 2) * SUB_BUCKETS + sub as u32) as u16
    }

    /// A bucket's middle value.
    fn value(b: u16) -> u64 {
        if b < 4 {
            return u64::from(b);
        }
        let (log, sub) = ((u32::from(b) - 4) / SUB_BUCKETS + 2, u64::from((u32::from(b) - 4) % SUB_BUCKETS));
        let lower = (4 + sub) << (log - 2);
        let width = 1u64 << (log - 2);
        lower.saturating_add(width / 2)
    }

    pub fn add(&mut self, v: u64) {
        *self.0.entry(Self::bucket(v)).or_default() += 1;
    }

    /// The `q` quantile (0 < q <= 1), None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.0.values().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&b, &n) in &self.0 {
            seen += n;
            if seen >= rank {
                return Some(Self::value(b));
            }
        }
        self.0.keys().next_back().map(|&b| Self::value(b))
    }
}

/// What is kept of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// 2xx, 3xx, 4xx, 5xx, other.
    pub status: [u64; 5],
    pub latency: Histogram,
    pub callers: HashMap<String, u64>,
    pub callers_evicted: u64,
    /// Unix seconds.
    pub first_seen: f64,
    pub last_seen: f64,
}

pub const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];

fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(s @ 200..=599) => usize::from(s / 100 - 2),
        _ => 4,
    }
}

/// The route template of a path: each segment that is all digits, a UUID, or hex of at least
/// 8 characters becomes `{id}` (`/v1/payments/42` -> `/v1/payments/{id}`).
pub fn route(path: &str) -> String {
    path.split('/').map(|s| if is_id(s) { "{id}" } else { s }).collect::<Vec<_>>().join("/")
}

fn is_id(s: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = s.len() == 36 && s.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && s.split('-').all(hex);
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) || uuid || (s.len() >= 8 && hex(s))
}

/// What is new after a request is taken in (for the alerts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Novelty {
    pub new_endpoint: bool,
    pub new_caller: bool,
}

/// The metrics' label sets: (dst_segment, port, method, route, status class).
pub type MetricKey = (String, u16, String, String, &'static str);

#[derive(Debug, Default)]
pub struct ApiInventory {
    map: HashMap<Endpoint, Stats>,
    evicted: u64,
    dirty: bool,
    /// `ztagent_api_requests_total`, since the agent started.
    metrics: HashMap<MetricKey, u64>,
    /// The endpoints named in `metrics` (at most [`MAX_METRIC_ROUTES`]).
    named: std::collections::HashSet<(String, u16, String, String)>,
}

/// What is kept in the state directory.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    endpoints: Vec<(Endpoint, Stats)>,
    evicted: u64,
}

impl ApiInventory {
    /// Takes in one event record seen at unix time `now`: requests only (`reason` "request"
    /// with a method and a path); what else comes is ignored.
    pub fn record(&mut self, r: &EventRecord, now: f64) -> Novelty {
        let Some(http) = r.http.as_ref().filter(|_| r.reason == "request") else { return Novelty::default() };
        let (Some(method), Some(path)) = (http.method.as_ref(), http.path.as_deref()) else {
            return Novelty::default();
        };
        let endpoint = Endpoint {
            dst_segment: r.dst_segment.clone(),
            dst_pod: r.dst_pod.clone(),
            port: r.service_port(),
            method: method.clone(),
            route: route(path),
            truncated: http.path_truncated,
        };
        let caller = {
            let id = r.src.map_or_else(|| r.src_segment.clone(), |a| identity(&r.src_segment, a));
            match &r.src_pod {
                Some(p) => format!("{id} {p}"),
                None => id,
            }
        };
        let count = r.count.max(1);
        let class = status_class(http.status);
        self.count_metric(&endpoint, class, count);
        let mut novelty = Novelty::default();
        if !self.map.contains_key(&endpoint) {
            novelty.new_endpoint = true;
            if self.map.len() >= MAX_ENDPOINTS {
                self.evict();
            }
        }
        let s = self.map.entry(endpoint).or_insert_with(|| Stats { first_seen: now, ..Stats::default() });
        s.last_seen = now;
        s.requests += count;
        s.status[class] += count;
        if let Some(l) = http.latency_us.filter(|_| http.status.is_some()) {
            s.latency.add(l);
        }
        match s.callers.get_mut(&caller) {
            Some(n) => *n += count,
            None => {
                novelty.new_caller = true;
                if s.callers.len() >= MAX_CALLERS
                    && let Some(least) = s.callers.iter().min_by_key(|(_, n)| **n).map(|(c, _)| c.clone())
                {
                    s.callers.remove(&least);
                    s.callers_evicted += 1;
                }
                s.callers.insert(caller, count);
            }
        }
        self.dirty = true;
        novelty
    }

    fn count_metric(&mut self, e: &Endpoint, class: usize, count: u64) {
        let mut named = (e.dst_segment.clone(), e.port, e.method.clone(), e.route.clone());
        if e.truncated {
            named.3.push_str("...");
        }
        if !self.named.contains(&named) {
            if self.named.len() < MAX_METRIC_ROUTES {
                self.named.insert(named.clone());
            } else {
                named.3 = "other".into();
            }
        }
        *self.metrics.entry((named.0, named.1, named.2, named.3, STATUS_CLASSES[class])).or_default() += count;
    }

    /// `ztagent_api_requests_total`'s samples since the agent started, sorted.
    pub fn metrics(&self) -> Vec<(MetricKey, u64)> {
        let mut v: Vec<_> = self.metrics.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }

    /// Makes room: the least recently seen tenth goes.
    fn evict(&mut self) {
        let mut times: Vec<f64> = self.map.values().map(|s| s.last_seen).collect();
        let k = times.len() / 10;
        times.select_nth_unstable_by(k, f64::total_cmp);
        let cut = times[k];
        let before = self.map.len();
        self.map.retain(|_, s| s.last_seen > cut);
        self.evicted += (before - self.map.len()) as u64;
    }

    /// (Endpoints kept, endpoints evicted).
    pub fn size(&self) -> (u64, u64) {
        (self.map.len() as u64, self.evicted)
    }

    /// The endpoints and what was seen of each (with their templates, their callers).
    pub fn endpoints(&self) -> impl Iterator<Item = (&Endpoint, &Stats)> {
        self.map.iter()
    }

    pub fn list(&self) -> ApiListing {
        let time = |t: f64| rfc3339((t.max(0.0) * 1e9) as u64);
        let endpoints = self
            .map
            .iter()
            .map(|(e, s)| {
                let a = ApiEndpoint {
                    dst_segment: e.dst_segment.clone(),
                    dst_pod: e.dst_pod.clone(),
                    port: e.port,
                    method: e.method.clone(),
                    route: e.route.clone(),
                    path_truncated: e.truncated,
                    requests: s.requests,
                    status: STATUS_CLASSES.iter().zip(s.status).map(|(c, n)| ((*c).to_owned(), n)).collect(),
                    latency_p50_us: s.latency.quantile(0.5),
                    latency_p99_us: s.latency.quantile(0.99),
                    callers: s.callers.iter().map(|(c, n)| (c.clone(), *n)).collect(),
                    callers_evicted: s.callers_evicted,
                    first_seen: time(s.first_seen),
                    last_seen: time(s.last_seen),
                };
                (e.name(), a)
            })
            .collect();
        ApiListing { endpoints, evicted: self.evicted, capacity: MAX_ENDPOINTS }
    }

    pub fn load(dir: &Path) -> Result<ApiInventory, ApiInventoryError> {
        let saved: Saved =
            crate::store::read_json(dir, FILE).map_err(|(path, message)| ApiInventoryError::Read { path, message })?;
        Ok(ApiInventory { map: saved.endpoints.into_iter().collect(), evicted: saved.evicted, ..Self::default() })
    }

    /// Writes the API inventory to `dir` if it changed since the last save.
    pub fn save(&mut self, dir: &Path) -> Result<(), ApiInventoryError> {
        if !self.dirty {
            return Ok(());
        }
        let saved =
            Saved { endpoints: self.map.iter().map(|(e, s)| (e.clone(), s.clone())).collect(), evicted: self.evicted };
        crate::store::write_json(dir, FILE, &saved)
            .map_err(|(path, source)| ApiInventoryError::Write { path, source })?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HttpRecord;

    fn request(from: &str, to: &str, method: &str, path: &str, status: Option<u16>, latency: u64) -> EventRecord {
        let mut r = EventRecord::flow(
            "allowed",
            "request",
            (from, "10.20.1.2".parse().unwrap()),
            (to, "10.20.2.10".parse().unwrap()),
            "tcp",
            8080,
            1,
        );
        r.http = Some(HttpRecord {
            method: Some(method.into()),
            path: Some(path.into()),
            status,
            latency_us: status.map(|_| latency),
            ..HttpRecord::default()
        });
        r
    }

    #[test]
    fn route_templates() {
        assert_eq!(route("/v1/payments/42"), "/v1/payments/{id}");
        assert_eq!(route("/v1/u/123e4567-e89b-12d3-a456-426614174000/x"), "/v1/u/{id}/x");
        assert_eq!(route("/blobs/deadbeef01"), "/blobs/{id}");
        // Short hex, words, versions and empty segments stay.
        assert_eq!(route("/v1/cafe/abc1234/"), "/v1/cafe/abc1234/");
        assert_eq!(route("/"), "/");
        assert_eq!(route("/a//7"), "/a//{id}");
        assert_eq!(route("/123e4567-e89b-12d3-a456-42661417400z"), "/123e4567-e89b-12d3-a456-42661417400z");
    }

    #[test]
    fn histogram_quantiles_within_a_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.add(v * 100);
        }
        let (p50, p99) = (h.quantile(0.5).unwrap() as f64, h.quantile(0.99).unwrap() as f64);
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.13, "{p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.13, "{p99}");
        // Bounded whatever the values: at most 4 per power of two.
        for v in [0, 1, 2, 3, u64::MAX, 1 << 40] {
            h.add(v);
        }
        assert!(h.0.len() <= 4 + 62 * 4, "{}", h.0.len());
        assert_eq!(Histogram::bucket(3), 3);
        assert_eq!(Histogram::value(Histogram::bucket(5)), 5);
        assert!(Histogram::bucket(u64::MAX) > Histogram::bucket(1 << 40));
    }

    #[test]
    fn counts_per_endpoint_callers_classes_and_survives_a_restart() {
        let mut inv = ApiInventory::default();
        let n = inv.record(&request("frontend", "payments", "GET", "/v1/payments/42", Some(200), 1000), 10.0);
        assert_eq!(n, Novelty { new_endpoint: true, new_caller: true });
        let n = inv.record(&request("frontend", "payments", "GET", "/v1/payments/43", Some(503), 3000), 11.0);
        assert_eq!(n, Novelty::default());
        let n = inv.record(&request("batch", "payments", "GET", "/v1/payments/7", None, 0), 12.0);
        assert_eq!(n, Novelty { new_endpoint: false, new_caller: true });
        inv.record(&request("batch", "payments", "POST", "/v1/payments", Some(201), 500), 13.0);
        let mut long = request("batch", "payments", "GET", "/v1/very/long", Some(200), 5);
        long.http.as_mut().unwrap().path_truncated = true;
        inv.record(&long, 14.0);
        // Not requests: ignored.
        inv.record(
            &EventRecord::flow(
                "allowed",
                "rule",
                ("a", "10.0.0.1".parse().unwrap()),
                ("b", "10.0.0.2".parse().unwrap()),
                "tcp",
                8080,
                1,
            ),
            15.0,
        );
        let mut bad = request("batch", "payments", "GET", "/x", None, 0);
        bad.reason = "unparsable".into();
        inv.record(&bad, 15.0);

        let l = inv.list();
        let keys: Vec<_> = l.endpoints.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "payments:8080 GET /v1/payments/{id}",
                "payments:8080 GET /v1/very/long...",
                "payments:8080 POST /v1/payments"
            ]
        );
        let e = &l.endpoints["payments:8080 GET /v1/payments/{id}"];
        assert_eq!(e.requests, 3);
        assert_eq!((e.status["2xx"], e.status["5xx"], e.status["other"], e.status["4xx"]), (1, 1, 1, 0));
        assert_eq!(
            e.callers.iter().map(|(c, n)| (c.as_str(), *n)).collect::<Vec<_>>(),
            [("batch", 1), ("frontend", 2)]
        );
        assert_eq!(e.first_seen, "1970-01-01T00:00:10.000Z");
        assert_eq!(e.last_seen, "1970-01-01T00:00:12.000Z");
        let p50 = e.latency_p50_us.unwrap();
        assert!((900..=1100).contains(&p50), "{p50}");
        assert!(l.endpoints["payments:8080 GET /v1/very/long..."].path_truncated);

        // JSON: an object keyed by endpoint.
        let json = serde_json::to_value(&l).unwrap();
        let e = &json["endpoints"]["payments:8080 GET /v1/payments/{id}"];
        assert_eq!(e["route"], "/v1/payments/{id}");
        assert_eq!(e["status"]["5xx"], 1);
        assert_eq!(e["callers"]["frontend"], 2);
        assert!(e.get("dst_pod").is_none() && e.get("path_truncated").is_none());
        assert_eq!(json["capacity"], MAX_ENDPOINTS);

        // Metrics.
        let m = inv.metrics();
        assert!(m.contains(&(("payments".into(), 8080, "GET".into(), "/v1/payments/{id}".into(), "5xx"), 1)), "{m:?}");

        // A restart keeps it all.
        let dir = std::env::temp_dir().join(format!("ztagent-apis-test-{}", std::process::id()));
        inv.save(&dir).unwrap();
        let loaded = ApiInventory::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.list(), l);
        // Nothing saved yet: empty.
        assert_eq!(ApiInventory::load(&dir).unwrap().list().endpoints.len(), 0);
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut inv = ApiInventory::default();
        for i in 0..MAX_ENDPOINTS + 10 {
            inv.record(&request("frontend", "payments", "GET", &format!("/r{i}"), Some(200), 1), i as f64);
        }
        let (kept, evicted) = inv.size();
        assert!(kept as usize <= MAX_ENDPOINTS && evicted >= 10, "{kept} kept, {evicted} evicted");
        let l = inv.list();
        assert!(l.endpoints.contains_key(&format!("payments:8080 GET /r{}", MAX_ENDPOINTS + 9)));
        assert_eq!(l.evicted, evicted);
        // Metrics: at most MAX_METRIC_ROUTES routes named, the rest as "other", every request counted.
        let m = inv.metrics();
        let other: u64 = m.iter().filter(|(k, _)| k.3 == "other").map(|(_, n)| n).sum();
        assert_eq!(m.len(), MAX_METRIC_ROUTES + 1);
        assert_eq!(other as usize, MAX_ENDPOINTS + 10 - MAX_METRIC_ROUTES);

        // Callers: at most MAX_CALLERS; the least active goes.
        let mut inv = ApiInventory::default();
        for _ in 0..3 {
            inv.record(&request("busy", "payments", "GET", "/x", Some(200), 1), 1.0);
        }
        for i in 0..MAX_CALLERS + 5 {
            inv.record(&request(&format!("c{i}"), "payments", "GET", "/x", Some(200), 1), 2.0);
        }
        let l = inv.list();
        let e = &l.endpoints["payments:8080 GET /x"];
        assert_eq!((e.callers.len(), e.callers_evicted), (MAX_CALLERS, 6));
        assert_eq!(e.callers["busy"], 3);
        assert_eq!(e.requests, 3 + MAX_CALLERS as u64 + 5);
    }
}
