//! Deviation alerts: `anomaly` events when behaviour departs from what was seen, with the
//! thresholds of the policy's `alerts:` section (no section, no alerts).
//!
//! Fed by the event stream (an observer, like the inventory) and by the flows' packet counters
//! (`flowcount`), it learns for `learnSeconds` which services (segment, or prefix in no
//! segment) each identity reaches, on which protocols and ports; afterwards a flow allowed (or
//! would-deny) to a service the identity never reached is a `new-peer` alert, to a known
//! service on a new port a `new-port` alert, and what it sees joins the baseline. A source
//! address denied on `scanDestinations` distinct (destination, port) within `scanSeconds` is a
//! `scan` alert.
//!
//! Rates: per identity, the packets (of the flows it starts, both directions, and its packets
//! denied or rate limited) and the new flows of each window of `rateWindowSeconds` are tallied
//! per hour of the day (UTC) and over all hours. Once that hour has `rateHistorySeconds` of
//! history (else all hours together), a window beyond `rateFactor` times the baseline's
//! expectation (and beyond `rateFactor` units in any case) is a `packet-rate` or `flow-rate`
//! alert. Every window joins the history, one beyond the factor counted at the factor: a burst
//! cannot inflate the baseline more than that, and a lasting change is learned.
//!
//! Alerts are rate limited themselves: at most one per identity and kind per `intervalSeconds`;
//! those held back are counted in the next one's `count`. The agent publishes them every
//! second ([`Engine::take`]). The baseline (services, ports, rates, when learning began) is
//! kept in the state directory (`baseline.json`, written atomically every 10 s and when the
//! agent stops), so a restart does not learn again.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{api::EventRecord, observe::inventory::identity, policy::Alerts};

/// Bounds on what the engine keeps: sources watched for scans, services per identity, and the
/// identities whose rates are tallied.
const MAX_SOURCES: usize = 65_536;
const MAX_SERVICES: usize = 65_536;
const MAX_RATE_IDENTITIES: usize = 16_384;
/// Tallies per identity: one per hour of the day, then all hours.
const ALL_HOURS: usize = 24;
const FILE: &str = "baseline.json";

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot write the alerts' baseline to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the alerts' baseline {path} cannot be read: {message}")]
    Read { path: PathBuf, message: String },
}

/// One source's denials in its current window.
struct Window {
    start: f64,
    targets: HashSet<(IpAddr, u16)>,
    reported: bool,
}

/// The services an identity reached, and on which protocols and ports.
#[derive(Default, Serialize, Deserialize)]
struct Known {
    services: HashSet<String>,
    ports: HashSet<(String, String, u16)>,
}

/// History of an identity's rates: seconds of windows, packets and new flows in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    seconds: u64,
    packets: u64,
    flows: u64,
}

/// What is kept in the state directory.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    since: Option<f64>,
    baseline: HashMap<String, Known>,
    /// identity -> 25 tallies (the hours of the day, then all hours).
    rates: HashMap<String, Vec<Tally>>,
}

#[derive(Serialize)]
struct SavedRef<'a> {
    since: Option<f64>,
    baseline: &'a HashMap<String, Known>,
    rates: &'a HashMap<String, Vec<Tally>>,
}

#[derive(Default)]
pub struct Engine {
    cfg: Option<Alerts>,
    /// When learning started (the first policy with alerts).
    since: Option<f64>,
    /// identity -> what it was seen reaching.
    baseline: HashMap<String, Known>,
    windows: HashMap<IpAddr, Window>,
    /// identity -> its rate history (25 tallies).
    rates: HashMap<String, Vec<Tally>>,
    /// The rate window under way: when it started, and per identity (packets, new flows).
    window_start: Option<f64>,
    current: HashMap<String, (u64, u64)>,
    /// (identity, kind) -> (last alert, alerts held back since).
    last: HashMap<(String, &'static str), (f64, u64)>,
    pending: Vec<EventRecord>,
    dirty: bool,
}

/// The hour of the day (UTC) of unix time `t`.
fn hour_of(t: f64) -> usize {
    ((t.max(0.0) as u64 % 86_400) / 3600) as usize
}

impl Engine {
    /// The thresholds of the policy in force (None: no alerts). Learning starts with the first
    /// policy that has them (ever: a restarted agent goes on with its saved baseline), and goes
    /// on across pushes.
    pub fn configure(&mut self, cfg: Option<Alerts>, now: f64) {
        if cfg.is_some() && self.since.is_none() {
            self.since = Some(now);
            self.dirty = true;
        }
        self.cfg = cfg;
    }

    /// Takes in one event record, seen at unix time `now`.
    pub fn observe(&mut self, r: &EventRecord, now: f64) {
        let Some(cfg) = self.cfg.clone() else { return };
        // Only records of a packet count (the agent's own records carry none).
        if r.src.is_none() || r.dst.is_none() {
            return;
        }
        match r.verdict.as_str() {
            "allowed" | "would-deny" => {
                self.tally(identity(&r.src_segment, addr(r.src)), 0, 1);
                self.flow(&cfg, r, now);
            }
            "denied" | "rate-limited" | "would-rate-limit" => {
                self.tally(identity(&r.src_segment, addr(r.src)), r.count, 0);
                if r.verdict == "denied" && (r.reason == "rule" || r.reason == "default") {
                    self.denial(&cfg, r, now);
                }
            }
            _ => {}
        }
    }

    /// Takes in what the API inventory found new in a request event seen at unix time `now`
    /// (see [`crate::observe::apis`]): after the learning period, an endpoint never seen is a
    /// `new-endpoint` alert (medium), a known endpoint called by a caller never seen calling
    /// it a `new-caller` alert (low). The API inventory is their baseline.
    pub fn observe_api(&mut self, r: &EventRecord, novelty: &crate::observe::apis::Novelty, now: f64) {
        let Some(cfg) = self.cfg.clone() else { return };
        if now - self.since.unwrap_or(now) < cfg.learn_seconds as f64 {
            return;
        }
        let Some(http) = r.http.as_ref() else { return };
        let who = r.src.map_or_else(|| r.src_segment.clone(), |a| identity(&r.src_segment, a));
        let what = format!(
            "{} {} on {}:{}",
            http.method.as_deref().unwrap_or("?"),
            crate::observe::apis::route(http.path.as_deref().unwrap_or("")),
            r.dst_segment,
            r.service_port()
        );
        let alert = if novelty.new_endpoint {
            ("new-endpoint", "medium", format!("{who} called {what}, an endpoint never seen before"))
        } else if novelty.new_caller {
            ("new-caller", "low", format!("{who} called {what} for the first time"))
        } else {
            return;
        };
        self.alert(&cfg, r, who, r.dst_segment.clone(), alert, now);
    }

    /// Takes in the packets of allowed flows the agent read from the kernel's counters, per
    /// source identity.
    pub fn traffic(&mut self, counted: Vec<(String, u64)>) {
        if self.cfg.is_none() {
            return;
        }
        for (who, packets) in counted {
            self.tally(who, packets, 0);
        }
    }

    /// Adds to the current rate window of `who`.
    fn tally(&mut self, who: String, packets: u64, flows: u64) {
        if !self.current.contains_key(&who) && self.current.len() >= MAX_RATE_IDENTITIES {
            return;
        }
        let c = self.current.entry(who).or_default();
        c.0 += packets;
        c.1 += flows;
    }

    /// Closes the rate window if it has ended by `now` (the agent calls this every second):
    /// judges each identity's window against its baseline, then adds it to the history. After
    /// a gap (an agent stopped or stalled), only the window's own length counts as history.
    pub fn tick(&mut self, now: f64) {
        let Some(cfg) = self.cfg.clone() else { return };
        let w = cfg.rate_window_seconds.max(1) as f64;
        let start = *self.window_start.get_or_insert((now / w).floor() * w);
        if now < start + w {
            return;
        }
        self.window_start = Some((now / w).floor() * w);
        let current = std::mem::take(&mut self.current);
        let hour = hour_of(start);
        // Identities with history and no traffic had a quiet window: history too.
        let quiet: Vec<String> = self.rates.keys().filter(|k| !current.contains_key(*k)).cloned().collect();
        let windows = current.into_iter().chain(quiet.into_iter().map(|k| (k, (0, 0))));
        for (who, (packets, flows)) in windows {
            if !self.rates.contains_key(&who) && self.rates.len() >= MAX_RATE_IDENTITIES {
                continue;
            }
            let tallies = self.rates.entry(who.clone()).or_insert_with(|| vec![Tally::default(); ALL_HOURS + 1]);
            let base = [tallies[hour], tallies[ALL_HOURS]]
                .into_iter()
                .find(|t| t.seconds >= cfg.rate_history_seconds)
                .filter(|_| cfg.rate_factor > 0);
            let k = cfg.rate_factor as f64;
            let mut folded = (packets, flows);
            let mut raised = Vec::new();
            if let Some(b) = base {
                let expect = |total: u64| total as f64 * w / b.seconds as f64;
                for (kind, seen, expected, what, slot) in [
                    ("packet-rate", packets, expect(b.packets), "packets", &mut folded.0),
                    ("flow-rate", flows, expect(b.flows), "new flows", &mut folded.1),
                ] {
                    let bound = k * expected.max(1.0);
                    if seen as f64 > bound {
                        *slot = bound as u64;
                        let times = seen as f64 / expected.max(1e-9);
                        let scope = if b == tallies[hour] {
                            format!("{hour:02}:00-{:02}:00 UTC", hour + 1)
                        } else {
                            "all hours".into()
                        };
                        let note = format!(
                            "{who}: {seen} {what} in {w} s, {times:.1}x its baseline of {expected:.1} ({scope}, {} s of history; factor {k})",
                            b.seconds
                        );
                        raised.push((kind, note));
                    }
                }
            }
            for t in [hour, ALL_HOURS] {
                let t = &mut tallies[t];
                t.seconds += w as u64;
                t.packets += folded.0;
                t.flows += folded.1;
            }
            for (kind, note) in raised {
                let r = EventRecord::own("anomaly", kind, &who, "*");
                self.alert(&cfg, &r, who.clone(), "*".into(), (kind, "medium", note), now);
            }
        }
        self.dirty = true;
    }

    fn flow(&mut self, cfg: &Alerts, r: &EventRecord, now: f64) {
        let (who, service) = (identity(&r.src_segment, addr(r.src)), identity(&r.dst_segment, addr(r.dst)));
        let (port, proto) = (r.service_port(), r.proto.clone().unwrap_or_default());
        let learning = now - self.since.unwrap_or(now) < cfg.learn_seconds as f64;
        let known = self.baseline.entry(who.clone()).or_default();
        let key = (service.clone(), proto.clone(), port);
        if known.ports.contains(&key) || known.ports.len() >= MAX_SERVICES {
            return;
        }
        known.ports.insert(key);
        self.dirty = true;
        let seen_service = !known.services.insert(service.clone());
        if learning {
            return;
        }
        let what = match (seen_service, cfg.new_peer, cfg.new_port) {
            (false, true, _) => {
                ("new-peer", "medium", format!("{who} reached {service} ({proto}/{port}) for the first time"))
            }
            (true, _, true) => {
                ("new-port", "low", format!("{who} reached {service} on {proto}/{port} for the first time"))
            }
            _ => return,
        };
        self.alert(cfg, r, who, service, what, now);
    }

    fn denial(&mut self, cfg: &Alerts, r: &EventRecord, now: f64) {
        if cfg.scan_destinations == 0 {
            return;
        }
        if self.windows.len() >= MAX_SOURCES {
            let within = cfg.scan_seconds as f64;
            self.windows.retain(|_, w| now - w.start <= within);
            if self.windows.len() >= MAX_SOURCES {
                self.windows.clear();
            }
        }
        let w =
            self.windows.entry(addr(r.src)).or_insert(Window { start: now, targets: HashSet::new(), reported: false });
        if now - w.start > cfg.scan_seconds as f64 {
            *w = Window { start: now, targets: HashSet::new(), reported: false };
        }
        if w.targets.len() as u64 >= cfg.scan_destinations {
            return;
        }
        w.targets.insert((addr(r.dst), r.service_port()));
        if w.targets.len() as u64 >= cfg.scan_destinations && !w.reported {
            w.reported = true;
            let who = identity(&r.src_segment, addr(r.src));
            let note = format!(
                "{} denied on {} distinct destinations and ports within {} s",
                addr(r.src),
                cfg.scan_destinations,
                cfg.scan_seconds
            );
            self.alert(cfg, r, who, identity(&r.dst_segment, addr(r.dst)), ("scan", "high", note), now);
        }
    }

    /// One alert of `kind`, unless one of that kind and identity went out less than an
    /// interval ago (then it is counted in the next).
    fn alert(
        &mut self,
        cfg: &Alerts,
        r: &EventRecord,
        who: String,
        service: String,
        (kind, severity, note): (&'static str, &str, String),
        now: f64,
    ) {
        let slot = self.last.entry((who.clone(), kind)).or_insert((f64::NEG_INFINITY, 0));
        if now - slot.0 < cfg.interval_seconds as f64 {
            slot.1 += 1;
            return;
        }
        let count = 1 + slot.1;
        *slot = (now, 0);
        self.pending.push(EventRecord {
            time: crate::clock::rfc3339((now.max(0.0) * 1e9) as u64),
            verdict: "anomaly".into(),
            reason: kind.into(),
            rule: None,
            rate_limit: None,
            src_segment: who,
            dst_segment: service,
            count,
            len: None,
            severity: Some(severity.into()),
            note: Some(note),
            ..r.clone()
        });
    }

    /// The alerts raised since the last call.
    pub fn take(&mut self) -> Vec<EventRecord> {
        std::mem::take(&mut self.pending)
    }

    /// The baseline saved in `dir` (none when there is no file).
    pub fn load(dir: &Path) -> Result<Engine, BaselineError> {
        let saved: Saved =
            crate::store::read_json(dir, FILE).map_err(|(path, message)| BaselineError::Read { path, message })?;
        if saved.rates.values().any(|t| t.len() != ALL_HOURS + 1) {
            let message = format!("every identity's rates must have {} tallies", ALL_HOURS + 1);
            return Err(BaselineError::Read { path: dir.join(FILE), message });
        }
        Ok(Engine { since: saved.since, baseline: saved.baseline, rates: saved.rates, ..Engine::default() })
    }

    /// Writes the baseline to `dir` if it changed since the last save.
    pub fn save(&mut self, dir: &Path) -> Result<(), BaselineError> {
        if !self.dirty {
            return Ok(());
        }
        let saved = SavedRef { since: self.since, baseline: &self.baseline, rates: &self.rates };
        crate::store::write_json(dir, FILE, &saved).map_err(|(path, source)| BaselineError::Write { path, source })?;
        self.dirty = false;
        Ok(())
    }

    /// Identities with a baseline of services, and with a rate history (for the benchmark).
    pub fn size(&self) -> (usize, usize) {
        (self.baseline.len(), self.rates.len())
    }
}

/// A packet record's address ([`Engine::observe`] takes no record without both).
fn addr(a: Option<std::net::IpAddr>) -> std::net::IpAddr {
    a.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        verdict: &str,
        reason: &str,
        src: (&str, &str),
        dst: (&str, &str),
        proto: &str,
        dport: u16,
        count: u64,
    ) -> EventRecord {
        EventRecord::flow(
            verdict,
            reason,
            (src.0, src.1.parse().unwrap()),
            (dst.0, dst.1.parse().unwrap()),
            proto,
            dport,
            count,
        )
    }

    #[test]
    fn new_endpoints_and_callers_after_learning() {
        use crate::{api::HttpRecord, observe::apis::ApiInventory};
        let mut e = Engine::default();
        e.configure(Some(Alerts { learn_seconds: 10, interval_seconds: 60, ..Alerts::default() }), 0.0);
        let mut apis = ApiInventory::default();
        let mut feed = |e: &mut Engine, from: &str, path: &str, now: f64| {
            let mut r = rec("allowed", "request", (from, "10.0.1.2"), ("payments", "10.0.2.10"), "tcp", 8080, 1);
            r.http = Some(HttpRecord { method: Some("GET".into()), path: Some(path.into()), ..HttpRecord::default() });
            let novelty = apis.record(&r, now);
            e.observe_api(&r, &novelty, now);
        };
        // Learning: everything new, nothing raised.
        feed(&mut e, "frontend", "/v1/payments/1", 1.0);
        feed(&mut e, "batch", "/v1/payments/2", 2.0);
        assert!(e.take().is_empty());
        // Afterwards: known endpoint and caller, nothing.
        feed(&mut e, "frontend", "/v1/payments/3", 20.0);
        assert!(e.take().is_empty());
        feed(&mut e, "frontend", "/v1/refunds/3", 21.0);
        feed(&mut e, "admin", "/v1/payments/4", 22.0);
        let a = e.take();
        assert_eq!(
            a.iter().map(|r| (r.reason.as_str(), r.src_segment.as_str(), r.severity.as_deref())).collect::<Vec<_>>(),
            [("new-endpoint", "frontend", Some("medium")), ("new-caller", "admin", Some("low"))]
        );
        assert!(a[0].note.as_deref().unwrap().contains("GET /v1/refunds/{id} on payments:8080"), "{a:?}");
        // No alerts section: nothing.
        let mut quiet = Engine::default();
        feed(&mut quiet, "other", "/new", 100.0);
        assert!(quiet.take().is_empty());
    }

    #[test]
    fn learns_then_reports_what_deviates_once_per_interval() {
        let mut e = Engine::default();
        let cfg = Alerts {
            learn_seconds: 10,
            scan_destinations: 5,
            scan_seconds: 10,
            interval_seconds: 60,
            ..Alerts::default()
        };
        e.configure(Some(cfg), 0.0);
        let (front, pay, db) = (("frontend", "10.0.1.2"), ("payments", "10.0.2.10"), ("db", "10.0.3.5"));
        e.observe(&rec("allowed", "rule", front, pay, "tcp", 443, 1), 1.0);
        e.observe(&rec("allowed", "rule", front, pay, "tcp", 443, 1), 20.0);
        assert!(e.take().is_empty(), "steady traffic raised an alert");
        e.observe(&rec("allowed", "rule", front, db, "tcp", 5432, 1), 21.0);
        e.observe(&rec("allowed", "rule", front, pay, "tcp", 8443, 1), 22.0);
        let a = e.take();
        assert_eq!(
            a.iter().map(|r| (r.reason.as_str(), r.dst_segment.as_str())).collect::<Vec<_>>(),
            [("new-peer", "db"), ("new-port", "payments")]
        );
        assert_eq!(a[0].severity.as_deref(), Some("medium"));
        // A scan from one address in no segment: one alert, however many denials.
        for p in 0..200 {
            e.observe(&rec("denied", "default", ("world", "10.9.9.9"), pay, "tcp", 1000 + p, 1), 23.0);
        }
        let a = e.take();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].reason.as_str(), a[0].src_segment.as_str(), a[0].severity.as_deref()),
            ("scan", "world 10.9.9.0/24", Some("high"))
        );
        // Held back within the interval, counted in the next one.
        for p in 0..200 {
            e.observe(&rec("denied", "default", ("world", "10.9.9.9"), pay, "tcp", 3000 + p, 1), 40.0);
        }
        assert!(e.take().is_empty());
        for p in 0..5 {
            e.observe(&rec("denied", "default", ("world", "10.9.9.9"), pay, "tcp", 5000 + p, 1), 90.0);
        }
        assert_eq!(e.take().iter().map(|r| r.count).collect::<Vec<_>>(), [2]);
        // No section, no alerts.
        e.configure(None, 100.0);
        e.observe(&rec("allowed", "rule", front, ("other", "10.0.4.1"), "tcp", 1, 1), 101.0);
        assert!(e.take().is_empty());
    }

    /// One rate window of `w` seconds ending at `end`: `who` sent `packets` and started `flows`.
    fn window(e: &mut Engine, who: &str, (packets, flows): (u64, u64), end: f64) {
        e.traffic(vec![(who.to_owned(), packets)]);
        for _ in 0..flows {
            e.observe(&rec("allowed", "rule", (who, "10.0.1.2"), ("payments", "10.0.2.10"), "udp", 53, 1), end - 1.0);
        }
        e.tick(end);
    }

    #[test]
    fn rates_beyond_the_baseline_raise_one_alert_per_interval() {
        let mut e = Engine::default();
        let cfg = Alerts {
            learn_seconds: 100_000,
            rate_factor: 5,
            rate_history_seconds: 100,
            rate_window_seconds: 10,
            ..Alerts::default()
        };
        e.configure(Some(cfg), 0.0);
        e.tick(0.0);
        // Steady: 100 packets and 1 new flow every 10 s, for 300 s.
        for i in 1..=30u32 {
            window(&mut e, "frontend", (100 + u64::from(i % 3) * 20, 1), f64::from(i) * 10.0);
        }
        assert!(e.take().is_empty(), "steady traffic raised an alert");
        // A burst of packets far beyond: one alert, however many windows it lasts.
        window(&mut e, "frontend", (5_000, 1), 310.0);
        window(&mut e, "frontend", (5_000, 1), 320.0);
        let a = e.take();
        assert_eq!(
            a.iter().map(|r| (r.reason.as_str(), r.src_segment.as_str())).collect::<Vec<_>>(),
            [("packet-rate", "frontend")],
            "{a:?}"
        );
        assert!(a[0].note.as_deref().unwrap().contains("5000 packets in 10 s"), "{:?}", a[0].note);
        // The burst was learned at no more than the factor: steady traffic is still normal.
        for i in 33..=40 {
            window(&mut e, "frontend", (110, 1), f64::from(i) * 10.0);
        }
        assert!(e.take().is_empty());
        // New flows beyond the baseline, after the interval: a flow-rate alert (the held-back
        // packet-rate alert goes out with the next one of its kind, counted).
        window(&mut e, "frontend", (110, 40), 410.0);
        window(&mut e, "frontend", (5_000, 1), 420.0);
        let a = e.take();
        assert_eq!(
            a.iter().map(|r| (r.reason.as_str(), r.count)).collect::<Vec<_>>(),
            [("flow-rate", 1), ("packet-rate", 2)],
            "{a:?}"
        );
        // An identity without enough history is not judged.
        window(&mut e, "batch", (100_000, 100), 430.0);
        assert!(e.take().is_empty());
    }

    #[test]
    fn rates_are_judged_per_hour_of_the_day_where_there_is_history() {
        let mut e = Engine::default();
        let cfg = Alerts {
            learn_seconds: 100_000,
            rate_factor: 5,
            rate_history_seconds: 100,
            rate_window_seconds: 10,
            ..Alerts::default()
        };
        e.configure(Some(cfg), 3600.0);
        e.tick(3600.0);
        // Busy from 01:00 (1,000 packets a window), quiet from 02:00 (100).
        for i in 1..=20 {
            window(&mut e, "batch", (1_000, 0), 3600.0 + f64::from(i) * 10.0);
        }
        e.tick(7200.0);
        for i in 1..=20 {
            window(&mut e, "batch", (100, 0), 7200.0 + f64::from(i) * 10.0);
        }
        assert!(e.take().is_empty());
        // 1,000 at 02:00 is 10x that hour's baseline (not 2x the day's): an alert.
        window(&mut e, "batch", (1_000, 0), 7420.0);
        let a = e.take();
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].note.as_deref().unwrap().contains("02:00-03:00 UTC"), "{:?}", a[0].note);
        // The same at 01:00 the next day is normal for that hour.
        let next = 86_400.0 + 3600.0;
        e.tick(next);
        window(&mut e, "batch", (1_000, 0), next + 10.0);
        window(&mut e, "batch", (1_000, 0), next + 20.0);
        assert!(e.take().is_empty());
    }

    #[test]
    fn the_baseline_survives_a_restart() {
        let cfg = Alerts {
            learn_seconds: 10,
            rate_factor: 5,
            rate_history_seconds: 30,
            rate_window_seconds: 10,
            ..Alerts::default()
        };
        let mut e = Engine::default();
        e.configure(Some(cfg.clone()), 0.0);
        e.tick(0.0);
        e.observe(&rec("allowed", "rule", ("frontend", "10.0.1.2"), ("payments", "10.0.2.10"), "tcp", 443, 1), 1.0);
        for i in 1..=5 {
            window(&mut e, "frontend", (100, 0), f64::from(i) * 10.0);
        }
        let dir = std::env::temp_dir().join(format!("ztagent-baseline-test-{}", std::process::id()));
        e.save(&dir).unwrap();
        // Restarted long after: not learning again, and the rates have their history.
        let mut back = Engine::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        back.configure(Some(cfg.clone()), 1000.0);
        back.tick(1000.0);
        back.observe(
            &rec("allowed", "rule", ("frontend", "10.0.1.2"), ("payments", "10.0.2.10"), "tcp", 443, 1),
            1001.0,
        );
        back.observe(&rec("allowed", "rule", ("frontend", "10.0.1.2"), ("db", "10.0.3.5"), "tcp", 5432, 1), 1002.0);
        window(&mut back, "frontend", (5_000, 0), 1010.0);
        let a = back.take();
        assert_eq!(a.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(), ["new-peer", "packet-rate"], "{a:?}");
        // Without it, the same would be learning.
        let mut fresh = Engine::default();
        fresh.configure(Some(cfg), 1000.0);
        fresh.observe(&rec("allowed", "rule", ("frontend", "10.0.1.2"), ("db", "10.0.3.5"), "tcp", 5432, 1), 1002.0);
        assert!(fresh.take().is_empty());
    }
}
