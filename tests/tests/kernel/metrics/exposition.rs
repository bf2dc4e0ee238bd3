//! Reading the endpoint as Prometheus does, and the agent's own view (`status`) at the same
//! moment.
use std::{collections::BTreeMap, time::Duration};

use integration_tests::{Agent, Netns, PROMETHEUS_ACCEPT, get_metrics_accepting, header, split_response};
use serde_json::Value;

use super::METRICS_PORT;

/// One scrape: every sample as (metric name, labels sorted by name) -> value as written.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Metrics {
    pub(super) samples: BTreeMap<(String, Vec<(String, String)>), String>,
    pub(super) text: String,
}

impl Metrics {
    pub(super) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&str> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.sort();
        self.samples.get(&(name.to_string(), l)).map(String::as_str)
    }

    /// An integer sample (counters, entries); panics with the exposition when absent.
    pub(super) fn u(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text));
        v.parse().unwrap_or_else(|e| panic!("{name}{labels:?} = {v:?}: {e}"))
    }

    pub(super) fn f(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.get(name, labels).map(|v| v.parse().unwrap_or_else(|e| panic!("{name} = {v:?}: {e}")))
    }

    /// Every sample of `name`: its labels (as a map) and integer value.
    pub(super) fn family(&self, name: &str) -> Vec<(BTreeMap<String, String>, u64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| {
                (l.iter().cloned().collect(), v.parse().unwrap_or_else(|e| panic!("{name} = {v:?}: {e}")))
            })
            .collect()
    }
}

/// `name{a="x",b="y"} value` (label values may hold escaped quotes and backslashes).
pub(super) fn parse_sample(line: &str) -> ((String, Vec<(String, String)>), String) {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("bad sample line {line:?}"),
    };
    let mut labels = Vec::new();
    let value_part = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let eq = r.find('=').unwrap_or_else(|| panic!("bad labels in {line:?}"));
            let key = r[..eq].to_string();
            let mut chars =
                r[eq + 1..].strip_prefix('"').unwrap_or_else(|| panic!("bad label value in {line:?}")).char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => panic!("bad escape in {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key, value));
            r = &r[eq + 1 + 1 + end + 1..];
        }
    } else {
        rest
    };
    let value = value_part.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}")).to_string();
    labels.sort();
    ((name.to_string(), labels), value)
}

/// `GET /metrics` from inside `ns` (where the agent listens on 127.0.0.1) as Prometheus asks
/// (OpenMetrics preferred), parsed.
pub(super) fn scrape(ns: &Netns) -> Metrics {
    scrape_as(ns, Some(PROMETHEUS_ACCEPT), true)
}

pub(super) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub(super) const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` with `accept` as the `Accept` header (None: none), parsed; the answer must
/// be OpenMetrics (ending in `# EOF`) when `openmetrics`, the classic text format otherwise.
pub(super) fn scrape_as(ns: &Netns, accept: Option<&str>, openmetrics: bool) -> Metrics {
    let raw = get_metrics_accepting(ns, METRICS_PORT, accept).expect("scrape the metrics endpoint");
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 200 "), "metrics answered:\n{raw}");
    let want = if openmetrics { OPENMETRICS } else { TEXT };
    assert_eq!(header(head, "content-type"), Some(want), "the content type for Accept {accept:?}:\n{head}");
    assert_eq!(body.ends_with("# EOF\n"), openmetrics, "only OpenMetrics ends with # EOF (Accept {accept:?}):\n{body}");
    let mut samples = BTreeMap::new();
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = parse_sample(line);
        assert!(samples.insert(k.clone(), v).is_none(), "sample {k:?} twice in:\n{body}");
    }
    Metrics { samples, text: body.to_string() }
}

pub(super) fn status(agent: &Agent) -> Value {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

pub(super) fn status_counters(s: &Value) -> BTreeMap<String, u64> {
    s["counters"].as_object().expect("counters").iter().map(|(name, n)| (name.clone(), n.as_u64().unwrap())).collect()
}

pub(super) fn status_limit<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["limits"].get(name).unwrap_or_else(|| panic!("no limit {name} in {s}"))
}

/// A scrape and a `status` taken at the same moment: the status is read between two scrapes
/// whose kernel counters are identical. The counters only grow, so the status's must be those
/// too; any difference is the endpoint's. Retried while stray packets move the counters.
pub(super) fn same_moment(agent: &Agent, ns: &Netns) -> (Metrics, Value, usize) {
    let kernel = |m: &Metrics| {
        let mut v = m.family("ztagent_packets_total");
        v.push((BTreeMap::new(), m.u("ztagent_events_lost_total", &[])));
        v.extend(m.family("ztagent_rate_limit_dropped_packets_total"));
        v.extend(m.family("ztagent_rate_limit_passed_packets_total"));
        v
    };
    for attempt in 1..=30 {
        let m1 = scrape(ns);
        let s = status(agent);
        let m2 = scrape(ns);
        if kernel(&m1) == kernel(&m2) {
            return (m1, s, attempt);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the kernel counters never stood still for a scrape, a status and a scrape");
}

/// Every outcome of `status` has the same value in `ztagent_packets_total` (and no other
/// outcome is there), `events_lost` is `ztagent_events_lost_total`, and each `http_*` counter
/// is `ztagent_http_*_total`.
pub(super) fn assert_counters_agree(m: &Metrics, s: &Value) {
    let from_status = status_counters(s);
    let mut from_metrics: BTreeMap<String, u64> =
        m.family("ztagent_packets_total").into_iter().map(|(l, v)| (l["outcome"].clone(), v)).collect();
    from_metrics.insert("events_lost".into(), m.u("ztagent_events_lost_total", &[]));
    // Requests and connections of declared HTTP ports have families of their own.
    for name in ["http_requests", "http_responses", "http_unparsable"] {
        from_metrics.insert(name.into(), m.u(&format!("ztagent_{name}_total"), &[]));
    }
    assert_eq!(from_metrics, from_status, "/metrics and `status` disagree at the same moment");
}

/// The kernel's counters since the agent started are the sums of the event stream's counts:
/// allowed = new flows (every allowed packet here starts one), denied = drop_default (no deny
/// rule here), rate-limited = drop_rate_limit.
pub(super) fn kernel_matches_events(m: &Metrics) -> Result<(), String> {
    let mut by_verdict: BTreeMap<String, u64> = BTreeMap::new();
    for (l, v) in m.family("ztagent_event_packets_total") {
        *by_verdict.entry(l["verdict"].clone()).or_default() += v;
    }
    let kernel = |outcome: &str| m.u("ztagent_packets_total", &[("outcome", outcome)]);
    let pairs = [("allowed", "pass_policy"), ("denied", "drop_default"), ("rate-limited", "drop_rate_limit")];
    for (verdict, outcome) in pairs {
        let (events, counter) = (by_verdict.get(verdict).copied().unwrap_or(0), kernel(outcome));
        if events != counter {
            return Err(format!("{verdict} events add up to {events} packets, {outcome} is {counter}"));
        }
    }
    Ok(())
}
