//! The agent's view: status, metrics, the events file.

use super::{Agent, BTreeMap, Duration, METRICS_PORT, Netns, Path, PathBuf, Result, Value, ensure};
use anyhow::Context as _;

pub(crate) fn status(agent: &Agent) -> Result<Value> {
    let out = agent.cli(&["status", "-o", "json"]);
    ensure!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("status JSON")
}

pub(crate) fn counters(s: &Value) -> BTreeMap<String, u64> {
    s["counters"]
        .as_object()
        .map(|o| o.iter().filter_map(|(name, n)| Some((name.clone(), n.as_u64()?))).collect())
        .unwrap_or_default()
}

/// One scrape of `/metrics`: (name, labels as `k=v,...` sorted) -> value.
pub(crate) type Metrics = BTreeMap<(String, String), f64>;

pub(crate) fn scrape(ns: &Netns) -> Result<Metrics> {
    let raw = integration_tests::get_metrics(ns, METRICS_PORT)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).context("no metrics body")?;
    let mut m = Metrics::new();
    for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').context("bad sample line")?;
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => {
                let mut parts: Vec<String> = l
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| p.replace('"', ""))
                    .collect();
                parts.sort();
                (n.to_string(), parts.join(","))
            }
            None => (key.to_string(), String::new()),
        };
        m.insert((name, labels), value.parse().unwrap_or(f64::NAN));
    }
    Ok(m)
}

pub(crate) fn metric(m: &Metrics, name: &str, labels: &str) -> u64 {
    m.get(&(name.to_string(), labels.to_string())).copied().unwrap_or(0.0) as u64
}

/// Sum of `ztagent_event_packets_total` per verdict.
pub(crate) fn metric_event_packets(m: &Metrics) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ((name, labels), v) in m {
        if name == "ztagent_event_packets_total"
            && let Some(verdict) = labels.split(',').find_map(|l| l.strip_prefix("verdict="))
        {
            *out.entry(verdict.to_string()).or_default() += *v as u64;
        }
    }
    out
}

/// What the events file (and its rotations) holds.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct EventFile {
    pub(crate) records: u64,
    pub(crate) missed: u64,
    /// Sum of `count` per verdict, per (verdict, reason), per (verdict, dport) of ours.
    pub(crate) by_verdict: BTreeMap<String, u64>,
    pub(crate) by_reason: BTreeMap<(String, String), u64>,
    pub(crate) by_port: BTreeMap<(String, u16), u64>,
}

pub(crate) fn read_events(path: &Path) -> Result<EventFile> {
    let mut files: Vec<PathBuf> = (1..=3).rev().map(|n| PathBuf::from(format!("{}.{n}", path.display()))).collect();
    files.push(path.to_path_buf());
    let mut ev = EventFile::default();
    for p in files.into_iter().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                // The writer may be in the middle of a line.
                continue;
            };
            if let Some(n) = v.get("missed").and_then(Value::as_u64) {
                ev.missed += n;
                continue;
            }
            ev.records += 1;
            let verdict = v["verdict"].as_str().unwrap_or("?").to_string();
            let count = v["count"].as_u64().unwrap_or(0);
            *ev.by_verdict.entry(verdict.clone()).or_default() += count;
            *ev.by_reason.entry((verdict.clone(), v["reason"].as_str().unwrap_or("?").to_string())).or_default() +=
                count;
            if v["dst_segment"] == "payments" {
                *ev.by_port.entry((verdict, v["dport"].as_u64().unwrap_or(0) as u16)).or_default() += count;
            }
        }
    }
    Ok(ev)
}

/// The final status, events file and scrape: retried until the kernel's counters and the file
/// agree, or stop moving (the LAN's own chatter, IGMP reports, may arrive at any moment).
pub(crate) fn settle(agent: &Agent, ns: &Netns, events: &Path, tries: usize) -> Result<(Value, EventFile, Metrics)> {
    let mut last: Option<(BTreeMap<String, u64>, EventFile)> = None;
    for _ in 0..tries {
        let s = status(agent)?;
        let ev = read_events(events)?;
        let m = scrape(ns)?;
        let c = counters(&s);
        let done = accounting(&c, &ev).iter().all(|(_, e, k)| e == k);
        let stable = last.as_ref().is_some_and(|(c0, ev0)| *c0 == c && *ev0 == ev);
        if done || stable {
            return Ok((s, ev, m));
        }
        last = Some((c, ev));
        std::thread::sleep(Duration::from_millis(1000));
    }
    Ok((status(agent)?, read_events(events)?, scrape(ns)?))
}

/// (verdict, sum of the events' counts, the kernel counters that verdict stands for).
pub(crate) fn accounting(c: &BTreeMap<String, u64>, ev: &EventFile) -> Vec<(&'static str, u64, u64)> {
    let k = |names: &[&str]| names.iter().map(|n| c.get(*n).copied().unwrap_or(0)).sum::<u64>();
    let e = |v: &str| ev.by_verdict.get(v).copied().unwrap_or(0);
    vec![
        ("allowed", e("allowed"), k(&["pass_policy"])),
        (
            "denied",
            e("denied"),
            k(&["drop_default", "drop_rule", "drop_revoked", "drop_fragment", "drop_malformed", "drop_no_policy"]),
        ),
        ("rate-limited", e("rate-limited"), k(&["drop_rate_limit"])),
    ]
}
