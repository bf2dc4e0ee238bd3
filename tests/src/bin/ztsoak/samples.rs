//! The per-second samples, the trends fitted to them, and the checks' tally.

use super::{Agent, BTreeMap, Instant, Netns, Result, counters, metric, rss_kb, scrape, status};
use anyhow::Context as _;

#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) t: f64,
    pub(crate) rss_kb: i64,
    pub(crate) revision: u64,
    pub(crate) counters: BTreeMap<String, u64>,
    pub(crate) ct: u64,
    pub(crate) denied: u64,
    pub(crate) agg: u64,
    pub(crate) delivered: u64,
}

pub(crate) fn sample(agent: &Agent, ns: &Netns, t0: Instant) -> Result<Sample> {
    let s = status(agent)?;
    let m = scrape(ns)?;
    Ok(Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kb: rss_kb(agent.pid()).context("the agent is gone")?,
        revision: s["revision"].as_u64().unwrap_or(0),
        counters: counters(&s),
        ct: metric(&m, "ztagent_map_entries", "map=ZT_CT"),
        denied: metric(&m, "ztagent_map_entries", "map=ZT_DENIED"),
        agg: metric(&m, "ztagent_map_entries", "map=ZT_AGG"),
        delivered: metric(&m, "ztagent_events_delivered_total", ""),
    })
}

pub(crate) fn median(mut v: Vec<i64>) -> i64 {
    v.sort();
    if v.is_empty() { 0 } else { v[v.len() / 2] }
}

/// Least-squares slope of RSS over time, kB/s.
pub(crate) fn slope(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, mr) =
        (samples.iter().map(|s| s.t).sum::<f64>() / n, samples.iter().map(|s| s.rss_kb as f64).sum::<f64>() / n);
    let cov: f64 = samples.iter().map(|s| (s.t - mt) * (s.rss_kb as f64 - mr)).sum();
    let var: f64 = samples.iter().map(|s| (s.t - mt).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

pub(crate) struct Checks {
    pub(crate) results: Vec<(bool, String)>,
}

impl Checks {
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.results.push((ok, what.into()));
    }
    pub(crate) fn passed(&self) -> bool {
        self.results.iter().all(|(ok, _)| *ok)
    }
}
