//! Deviation alerts: `anomaly` events when behaviour departs from what was seen, with the
//! thresholds of the policy's `alerts:` section (no section, no alerts).
//!
//! Fed by the event stream (an observer, like the inventory), it learns for `learnSeconds` which
//! services (segment, or prefix in no segment) each identity reaches, on which protocols and
//! ports; afterwards a flow allowed (or would-deny) to a service the identity never reached is
//! a `new-peer` alert, to a known service on a new port a `new-port` alert, and what it sees
//! joins the baseline. A source address denied on `scanDestinations` distinct (destination,
//! port) within `scanSeconds` is a `scan` alert. Alerts are rate limited themselves: at most one
//! per identity and kind per `intervalSeconds`; those held back are counted in the next one's
//! `count`. The agent publishes them every second ([`Engine::take`]).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::{events::EventRecord, inventory::identity, policy::Alerts};

/// Bounds on what the engine keeps: sources watched for scans, and services per identity.
const MAX_SOURCES: usize = 65_536;
const MAX_SERVICES: usize = 65_536;

/// One source's denials in its current window.
struct Window {
    start: f64,
    targets: HashSet<(IpAddr, u16)>,
    reported: bool,
}

/// The services an identity reached, and on which protocols and ports.
#[derive(Default)]
struct Known {
    services: HashSet<String>,
    ports: HashSet<(String, String, u16)>,
}

#[derive(Default)]
pub struct Engine {
    cfg: Option<Alerts>,
    /// When learning started (the first policy with alerts).
    since: f64,
    /// identity -> what it was seen reaching.
    baseline: HashMap<String, Known>,
    windows: HashMap<IpAddr, Window>,
    /// (identity, kind) -> (last alert, alerts held back since).
    last: HashMap<(String, &'static str), (f64, u64)>,
    pending: Vec<EventRecord>,
}

impl Engine {
    /// The thresholds of the policy in force (None: no alerts). Learning starts with the first
    /// policy that has them, and goes on across pushes.
    pub fn configure(&mut self, cfg: Option<Alerts>, now: f64) {
        if self.cfg.is_none() && cfg.is_some() {
            self.since = now;
        }
        self.cfg = cfg;
    }

    /// Takes in one event record, seen at unix time `now`.
    pub fn observe(&mut self, r: &EventRecord, now: f64) {
        let Some(cfg) = self.cfg.clone() else { return };
        match r.verdict.as_str() {
            "allowed" | "would-deny" => self.flow(&cfg, r, now),
            "denied" if r.reason == "rule" || r.reason == "default" => self.denial(&cfg, r, now),
            _ => {}
        }
    }

    fn flow(&mut self, cfg: &Alerts, r: &EventRecord, now: f64) {
        let (who, service) = (identity(&r.src_segment, r.src), identity(&r.dst_segment, r.dst));
        let port = if r.proto == "tcp" || r.proto == "udp" { r.dport } else { 0 };
        let learning = now - self.since < cfg.learn_seconds as f64;
        let known = self.baseline.entry(who.clone()).or_default();
        let key = (service.clone(), r.proto.clone(), port);
        if known.ports.contains(&key) || known.ports.len() >= MAX_SERVICES {
            return;
        }
        known.ports.insert(key);
        let seen_service = !known.services.insert(service.clone());
        if learning {
            return;
        }
        let what = match (seen_service, cfg.new_peer, cfg.new_port) {
            (false, true, _) => ("new-peer", "medium", format!("{who} reached {service} ({}/{port}) for the first time", r.proto)),
            (true, _, true) => ("new-port", "low", format!("{who} reached {service} on {}/{port} for the first time", r.proto)),
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
        let w = self.windows.entry(r.src).or_insert(Window { start: now, targets: HashSet::new(), reported: false });
        if now - w.start > cfg.scan_seconds as f64 {
            *w = Window { start: now, targets: HashSet::new(), reported: false };
        }
        if w.targets.len() as u64 >= cfg.scan_destinations {
            return;
        }
        w.targets.insert((r.dst, r.dport));
        if w.targets.len() as u64 >= cfg.scan_destinations && !w.reported {
            w.reported = true;
            let who = identity(&r.src_segment, r.src);
            let note = format!(
                "{} denied on {} distinct destinations and ports within {} s",
                r.src, cfg.scan_destinations, cfg.scan_seconds
            );
            self.alert(cfg, r, who, identity(&r.dst_segment, r.dst), ("scan", "high", note), now);
        }
    }

    /// One alert of `kind`, unless one of that kind and identity went out less than an
    /// interval ago (then it is counted in the next).
    fn alert(&mut self, cfg: &Alerts, r: &EventRecord, who: String, service: String, (kind, severity, note): (&'static str, &str, String), now: f64) {
        let slot = self.last.entry((who.clone(), kind)).or_insert((f64::NEG_INFINITY, 0));
        if now - slot.0 < cfg.interval_seconds as f64 {
            slot.1 += 1;
            return;
        }
        let count = 1 + slot.1;
        *slot = (now, 0);
        self.pending.push(EventRecord {
            time: crate::events::rfc3339((now.max(0.0) * 1e9) as u64),
            verdict: "anomaly".into(),
            reason: kind.into(),
            rule: None,
            rate_limit: None,
            src_segment: who,
            dst_segment: service,
            count,
            len: 0,
            severity: Some(severity.into()),
            note: Some(note),
            ..r.clone()
        });
    }

    /// The alerts raised since the last call.
    pub fn take(&mut self) -> Vec<EventRecord> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(verdict: &str, reason: &str, src: (&str, &str), dst: (&str, &str), proto: &str, dport: u16, count: u64) -> EventRecord {
        EventRecord::flow(verdict, reason, (src.0, src.1.parse().unwrap()), (dst.0, dst.1.parse().unwrap()), proto, dport, count)
    }

    #[test]
    fn learns_then_reports_what_deviates_once_per_interval() {
        let mut e = Engine::default();
        let cfg = Alerts { learn_seconds: 10, scan_destinations: 5, scan_seconds: 10, interval_seconds: 60, ..Alerts::default() };
        e.configure(Some(cfg), 0.0);
        let (front, pay, db) = (("frontend", "10.0.1.2"), ("payments", "10.0.2.10"), ("db", "10.0.3.5"));
        e.observe(&rec("allowed", "rule", front, pay, "tcp", 443, 1), 1.0);
        e.observe(&rec("allowed", "rule", front, pay, "tcp", 443, 1), 20.0);
        assert!(e.take().is_empty(), "steady traffic raised an alert");
        e.observe(&rec("allowed", "rule", front, db, "tcp", 5432, 1), 21.0);
        e.observe(&rec("allowed", "rule", front, pay, "tcp", 8443, 1), 22.0);
        let a = e.take();
        assert_eq!(a.iter().map(|r| (r.reason.as_str(), r.dst_segment.as_str())).collect::<Vec<_>>(), [("new-peer", "db"), ("new-port", "payments")]);
        assert_eq!(a[0].severity.as_deref(), Some("medium"));
        // A scan from one address in no segment: one alert, however many denials.
        for p in 0..200 {
            e.observe(&rec("denied", "default", ("world", "10.9.9.9"), pay, "tcp", 1000 + p, 1), 23.0);
        }
        let a = e.take();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].reason.as_str(), a[0].src_segment.as_str(), a[0].severity.as_deref()), ("scan", "world 10.9.9.0/24", Some("high")));
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
}
