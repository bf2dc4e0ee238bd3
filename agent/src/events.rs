//! The kernel event stream, userspace side: read the `EVENTS` ring buffer, turn each event into
//! an [`EventRecord`] (names for segments, rules and limits; exact packet counts), keep the most
//! recent ones, and fan them out to every client.
//!
//! Drops are aggregated in the kernel per flow and reason: an event carries the aggregate's
//! running packet total, and the count of a record is the difference from the last total seen
//! for that aggregate. The packets of a flood's last interval are in the kernel's aggregation
//! maps, not in any event; a sweep of those maps once a second reports them.
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use agent_common::{
    AGG_AUDIT, AggKey, AggValue, DenyKey, DenyValue, EVENT_INTERVAL_NS, Event, SEG_ANY,
    event::{
        DIRECTION_EGRESS, REASON_DEFAULT, REASON_GRANT_EXPIRED, REASON_FRAGMENT, REASON_MALFORMED, REASON_NO_POLICY,
        REASON_RATE_LIMIT, REASON_REVOKED, REASON_RULE, REASON_SPOOFED, VERDICT_ALLOWED, VERDICT_DENIED,
        VERDICT_RATE_LIMITED, VERDICT_WOULD_DENY, VERDICT_WOULD_RATE_LIMIT,
    },
};
use serde::{Deserialize, Serialize};

use crate::policy::{CompiledPolicy, addr16};

/// One event as clients see it (`ztagent events -o json` prints one per line; the field names
/// are stable).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// Wall-clock time, RFC 3339 with milliseconds (UTC).
    pub time: String,
    /// Interface name (or index when unknown) and "ingress" | "egress".
    pub iface: String,
    pub direction: String,
    /// "allowed" | "denied" | "rate-limited"; in audit mode "would-deny" | "would-rate-limit"
    /// (the packet passed).
    pub verdict: String,
    /// "rule" | "default" | "fragment" | "malformed" | "revoked" | "no-policy" | "rate-limit".
    pub reason: String,
    /// The deciding rule's name (verdicts by a rule, revocations by a deny rule).
    pub rule: Option<String>,
    /// The rate limit's name (rate-limited).
    pub rate_limit: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP/UDP ports, or the ICMP echo identifier; 0 when not known.
    pub sport: u16,
    pub dport: u16,
    /// "tcp" | "udp" | "icmp" | the protocol number.
    pub proto: String,
    pub src_segment: String,
    pub dst_segment: String,
    /// With `--k8s-objects`: the pod (`namespace/name`) at the source or destination address,
    /// as the inventory in force names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    /// Packets this record stands for (1 unless aggregated).
    pub count: u64,
    /// Length of the packet that triggered the event (0 for a sweep's report).
    pub len: u32,
    pub revision: u32,
    /// What the agent itself reports (verdicts `granted`, `grant-ended`, `anomaly`): the grant's
    /// reason, or what the alert saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `anomaly` only: `low`, `medium` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

impl EventRecord {
    /// A record of a flow from (segment, address) to (segment, address), on an interface's
    /// ingress, the other fields empty: for tests and benchmarks of what consumes records.
    pub fn flow(verdict: &str, reason: &str, src: (&str, IpAddr), dst: (&str, IpAddr), proto: &str, dport: u16, count: u64) -> EventRecord {
        EventRecord {
            time: String::new(),
            iface: "eth0".into(),
            direction: "ingress".into(),
            verdict: verdict.into(),
            reason: reason.into(),
            rule: None,
            rate_limit: None,
            src: src.1,
            dst: dst.1,
            sport: 40000,
            dport,
            proto: proto.into(),
            src_segment: src.0.into(),
            dst_segment: dst.0.into(),
            src_pod: None,
            dst_pod: None,
            count,
            len: 60,
            revision: 1,
            note: None,
            severity: None,
        }
    }
}

impl EventRecord {
    /// A record the agent makes itself (a grant given or ended, an alert), now: no packet,
    /// `count` 0, no addresses; `src_segment` and `dst_segment` name what it is about.
    pub fn own(verdict: &str, reason: &str, src_segment: &str, dst_segment: &str) -> EventRecord {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        EventRecord {
            time: rfc3339(now),
            iface: String::new(),
            direction: String::new(),
            verdict: verdict.into(),
            reason: reason.into(),
            rule: None,
            rate_limit: None,
            src: unspecified,
            dst: unspecified,
            sport: 0,
            dport: 0,
            proto: String::new(),
            src_segment: src_segment.into(),
            dst_segment: dst_segment.into(),
            src_pod: None,
            dst_pod: None,
            count: 0,
            len: 0,
            revision: 0,
            note: None,
            severity: None,
        }
    }
}

/// What `ztagent events` asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventFilter {
    /// Any of these verdicts ("allowed", "denied", "rate-limited", "would-deny",
    /// "would-rate-limit"); empty = all.
    #[serde(default)]
    pub verdicts: Vec<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

impl EventFilter {
    pub fn matches(&self, r: &EventRecord) -> bool {
        (self.verdicts.is_empty() || self.verdicts.contains(&r.verdict))
            && self.from.as_ref().is_none_or(|s| *s == r.src_segment)
            && self.to.as_ref().is_none_or(|s| *s == r.dst_segment)
            && self.port.is_none_or(|p| p == r.dport)
    }
}

/// The aggregate class of policy denials (by a rule or by default): one aggregate per flow in
/// the kernel's denial cache, whose running total goes on when a push changes the reason.
const POLICY_DENIAL: u8 = 0;

/// The aggregate class of a reason: policy denials share one; other drops (rate limits,
/// fragments, malformed, no policy) are aggregated per reason in the kernel.
fn class(reason: u8) -> u8 {
    if reason == REASON_RULE || reason == REASON_DEFAULT { POLICY_DENIAL } else { reason }
}

/// The aggregate an event belongs to: its flow and class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Aggregate {
    src: [u8; 16],
    dst: [u8; 16],
    port: u16,
    proto: u8,
    reason: u8,
}

/// What the decoder remembers of an aggregate (16 bytes; with its 8-byte key, ~3 MB for a
/// full denial cache): the last total reported, and what the sweep's reports of it need that
/// the kernel's aggregation maps do not hold.
#[derive(Clone, Copy)]
struct Seen {
    total: u64,
    ifindex: u32,
    sport: u16,
    direction: u8,
    /// The sweep generation (wrapping) that last found it in the kernel maps, or in which an
    /// event last updated it.
    generation: u8,
}

/// The aggregates the decoder makes room for up front: the kernel's denial cache holds this
/// many flows (the other drops' aggregates are far fewer), so the decoder's memory is
/// allocated once and does not grow as the cache fills.
const AGGREGATES: usize = 65_536;
/// A hard cap on the aggregates remembered. The sweep keeps only those still in the kernel's
/// aggregation maps (or updated in the last few sweeps), so this is never reached in
/// practice: the kernel maps hold fewer.
const MAX_AGGREGATES: usize = 2 * AGGREGATES;
/// An aggregate gone from the kernel maps is still remembered for this many sweeps (events of
/// it may still be in flight when the sweep reads the maps).
const FORGET_AFTER_SWEEPS: u8 = 5;

/// Keys of the remembered aggregates: a keyed (per-process) 64-bit hash of the 36-byte
/// [`Aggregate`]. Two aggregates sharing a key would take a 64-bit collision of a secret
/// hash: at 131,072 aggregates, a chance of 5e-10.
type AggregateId = u64;

/// The remembered aggregates' map hashes its keys no further: they are hashes already.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("keyed by u64 only")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Interface names the decoder remembers at most.
const MAX_IFNAMES: usize = 4096;

/// Turns kernel events into records: names, exact counts, wall-clock times.
pub struct Decoder {
    /// Policies by revision, to name what events of recent revisions refer to.
    policies: VecDeque<(u32, Arc<CompiledPolicy>)>,
    ids: std::hash::RandomState,
    seen: HashMap<AggregateId, Seen, std::hash::BuildHasherDefault<IdHasher>>,
    /// The current sweep generation (see [`Seen::generation`]).
    generation: u8,
    ifnames: HashMap<u32, String>,
    /// The pods of the inventory in force (`--k8s-objects`), to name pod addresses.
    pods: Arc<crate::k8s::Inventory>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            policies: VecDeque::new(),
            ids: std::hash::RandomState::new(),
            seen: HashMap::with_capacity_and_hasher(AGGREGATES, Default::default()),
            generation: 0,
            ifnames: HashMap::new(),
            pods: Arc::default(),
        }
    }

    /// A new policy revision is in force (events may still refer to the previous one).
    pub fn policy(&mut self, revision: u32, compiled: Arc<CompiledPolicy>) {
        self.policies.push_front((revision, compiled));
        self.policies.truncate(4);
    }

    /// The inventory whose pods name addresses from now on.
    pub fn pods(&mut self, pods: Arc<crate::k8s::Inventory>) {
        self.pods = pods;
    }

    fn compiled(&self, revision: u32) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|(r, _)| *r == revision).or(self.policies.front()).map(|(_, c)| &**c)
    }

    fn id(&self, a: &Aggregate) -> AggregateId {
        std::hash::BuildHasher::hash_one(&self.ids, a)
    }

    /// The record of a kernel event, or None when it adds no packet to an aggregate already
    /// reported (a duplicate total).
    pub fn decode(&mut self, ev: &Event) -> Option<Arc<EventRecord>> {
        // One event per flow, not aggregated.
        if ev.verdict == VERDICT_ALLOWED
            || ev.verdict == VERDICT_WOULD_DENY
            || ev.reason == REASON_REVOKED
            || ev.reason == REASON_GRANT_EXPIRED
        {
            return Some(Arc::new(self.record(ev, 1)));
        }
        let audit = if ev.verdict == VERDICT_WOULD_RATE_LIMIT { AGG_AUDIT } else { 0 };
        let reason = class(ev.reason) | audit;
        let flow = Aggregate { src: ev.src, dst: ev.dst, port: ev.dport, proto: ev.proto, reason };
        let id = self.id(&flow);
        let count = self.delta(id, ev.total)?;
        let record = Arc::new(self.record(ev, count));
        if self.seen.len() >= MAX_AGGREGATES && !self.seen.contains_key(&id) {
            self.seen.clear();
        }
        let (ifindex, sport, direction, generation) = (ev.ifindex, ev.sport, ev.direction, self.generation);
        self.seen.insert(id, Seen { total: ev.total, ifindex, sport, direction, generation });
        Some(record)
    }

    /// Packets of `id` since its last report. A total below the last one means the kernel's
    /// aggregate was evicted or renewed (new policy): it counts from zero again.
    fn delta(&self, id: AggregateId, total: u64) -> Option<u64> {
        let last = self.seen.get(&id).map_or(0, |s| s.total);
        let delta = if total >= last { total - last } else { total };
        (delta > 0).then_some(delta)
    }

    /// Reports of the packets the kernel aggregated since the last event of each aggregate, for
    /// aggregates idle for a whole interval. `denied`/`dropped`: the kernel's aggregation maps.
    pub fn sweep(
        &mut self,
        denied: impl Iterator<Item = (DenyKey, DenyValue)>,
        dropped: impl Iterator<Item = (AggKey, AggValue)>,
        now_ns: u64,
    ) -> Vec<Arc<EventRecord>> {
        self.generation = self.generation.wrapping_add(1);
        // Both maps as (aggregate, reason, value); a policy denial's reason follows its rule.
        let policy_denials = denied.map(|(k, v)| {
            let flow = Aggregate { src: k.src, dst: k.dst, port: k.port, proto: k.proto, reason: POLICY_DENIAL };
            let reason = if v.rule != 0 { REASON_RULE } else { REASON_DEFAULT };
            let (total, last_emit, rule, revision) = (v.total, v.last_emit, v.rule, v.revision);
            let (src_segment, dst_segment) = (v.src_segment, v.dst_segment);
            (flow, reason, AggValue { total, last_emit, rule, revision, src_segment, dst_segment })
        });
        // Their key's reason has AGG_AUDIT for packets passed in audit mode.
        let other_drops = dropped.map(|(k, v)| {
            (Aggregate { src: k.src, dst: k.dst, port: k.port, proto: k.proto, reason: k.reason }, k.reason, v)
        });
        let mut out = Vec::new();
        for (flow, reason, v) in policy_denials.chain(other_drops) {
            let id = self.id(&flow);
            // Only aggregates this agent has seen an event of: their last total is known.
            let Some(seen) = self.seen.get_mut(&id) else { continue };
            seen.generation = self.generation;
            if now_ns.saturating_sub(v.last_emit) < EVENT_INTERVAL_NS || v.total <= seen.total {
                continue;
            }
            let count = v.total - seen.total;
            seen.total = v.total;
            let seen = *seen;
            let ev = Event {
                time_ns: now_ns,
                total: v.total,
                src: flow.src,
                dst: flow.dst,
                sport: seen.sport,
                dport: flow.port,
                ifindex: seen.ifindex,
                src_segment: v.src_segment,
                dst_segment: v.dst_segment,
                rule: v.rule,
                revision: v.revision,
                len: 0,
                proto: flow.proto,
                direction: seen.direction,
                verdict: match reason {
                    r if r & AGG_AUDIT != 0 => VERDICT_WOULD_RATE_LIMIT,
                    REASON_RATE_LIMIT => VERDICT_RATE_LIMITED,
                    _ => VERDICT_DENIED,
                },
                reason: reason & !AGG_AUDIT,
            };
            out.push(Arc::new(self.record(&ev, count)));
        }
        // Forget aggregates the kernel no longer holds (evicted, or renewed under another
        // reason): if one comes back, its total starts from zero again, as a new one.
        let generation = self.generation;
        self.seen.retain(|_, s| generation.wrapping_sub(s.generation) < FORGET_AFTER_SWEEPS);
        out
    }

    fn record(&mut self, ev: &Event, count: u64) -> EventRecord {
        let (src, dst) = (ip_of(&ev.src), ip_of(&ev.dst));
        let c = self.compiled(ev.revision);
        // Segments the datapath did not look up are found in the policy of the event.
        let segment = |id: u32, addr: IpAddr| -> String {
            let Some(c) = c else { return if id == SEG_ANY { "?".into() } else { id.to_string() } };
            let id = if id == SEG_ANY { c.index().segment_of(&addr16(addr)).id } else { id };
            c.segment_name(id).map_or_else(|| id.to_string(), str::to_string)
        };
        let (src_segment, dst_segment) = (segment(ev.src_segment, src), segment(ev.dst_segment, dst));
        let (rule, rate_limit) = match (ev.reason, c) {
            (REASON_RATE_LIMIT, Some(c)) => (None, c.limit_name(ev.rule).map(str::to_string)),
            (_, Some(c)) => (c.rule_name(ev.rule).map(str::to_string), None),
            _ => (None, None),
        };
        EventRecord {
            time: rfc3339(wall_clock_of(ev.time_ns)),
            iface: self.ifname(ev.ifindex),
            direction: if ev.direction == DIRECTION_EGRESS { "egress" } else { "ingress" }.into(),
            verdict: verdict_name(ev.verdict).into(),
            reason: reason_name(ev.reason).into(),
            rule,
            rate_limit,
            src,
            dst,
            sport: ev.sport,
            dport: ev.dport,
            proto: proto_name(ev.proto),
            src_pod: self.pods.pod(src).map(str::to_string),
            dst_pod: self.pods.pod(dst).map(str::to_string),
            src_segment,
            dst_segment,
            count,
            len: ev.len,
            revision: ev.revision,
            note: None,
            severity: None,
        }
    }

    fn ifname(&mut self, ifindex: u32) -> String {
        // Node mode's interfaces come and go (and their indexes are not reused soon): names
        // are looked up again rather than remembered without bound.
        if self.ifnames.len() >= MAX_IFNAMES && !self.ifnames.contains_key(&ifindex) {
            self.ifnames.clear();
        }
        self.ifnames
            .entry(ifindex)
            .or_insert_with(|| {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
                let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
                if p.is_null() {
                    ifindex.to_string()
                } else {
                    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
                    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
                }
            })
            .clone()
    }
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        VERDICT_ALLOWED => "allowed",
        VERDICT_DENIED => "denied",
        VERDICT_RATE_LIMITED => "rate-limited",
        VERDICT_WOULD_DENY => "would-deny",
        VERDICT_WOULD_RATE_LIMIT => "would-rate-limit",
        _ => "unknown",
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        REASON_RULE => "rule",
        REASON_DEFAULT => "default",
        REASON_FRAGMENT => "fragment",
        REASON_MALFORMED => "malformed",
        REASON_REVOKED => "revoked",
        REASON_NO_POLICY => "no-policy",
        REASON_RATE_LIMIT => "rate-limit",
        REASON_GRANT_EXPIRED => "grant-expired",
        REASON_SPOOFED => "spoofed",
        _ => "unknown",
    }
}

pub(crate) fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        n => n.to_string(),
    }
}

/// IPv4-mapped addresses back to IPv4.
pub(crate) fn ip_of(a: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if *a == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    }
}

/// Wall-clock nanoseconds since the epoch of a CLOCK_MONOTONIC time.
fn wall_clock_of(mono_ns: u64) -> u64 {
    let now_mono = crate::mapwriter::monotonic_ns();
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now_wall.saturating_sub(now_mono.saturating_sub(mono_ns))
}

/// RFC 3339 in UTC with milliseconds, from nanoseconds since the epoch.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let ms = (unix_ns / 1_000_000) % 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A function called with every record as it is published.
type Observer = Box<dyn Fn(&EventRecord) + Send>;

/// Recent events and the live stream, shared by the reader, the sweep and every client.
pub struct EventHub {
    inner: std::sync::Mutex<HubState>,
    tx: tokio::sync::broadcast::Sender<Arc<EventRecord>>,
    capacity: usize,
}

struct HubState {
    decoder: Decoder,
    history: VecDeque<Arc<EventRecord>>,
    /// Called with every record as it is published (under the hub's lock: must be quick).
    observers: Vec<Observer>,
}

/// What a client gets: the recent events it asked for, then (following) the live ones.
pub struct Subscription {
    pub history: Vec<Arc<EventRecord>>,
    pub live: tokio::sync::broadcast::Receiver<Arc<EventRecord>>,
}

impl EventHub {
    /// Keeps the last `capacity` events; a client more than `lag` events behind the stream is
    /// told how many it missed instead of holding the others up or growing memory.
    pub fn new(capacity: usize, lag: usize) -> EventHub {
        let (tx, _) = tokio::sync::broadcast::channel(lag.max(16));
        EventHub {
            inner: std::sync::Mutex::new(HubState {
                decoder: Decoder::new(),
                history: VecDeque::new(),
                observers: Vec::new(),
            }),
            tx,
            capacity,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn policy(&self, revision: u32, compiled: Arc<CompiledPolicy>) {
        self.state().decoder.policy(revision, compiled);
    }

    /// The pods that name addresses in records from now on (`--k8s-objects`).
    pub fn pods(&self, pods: Arc<crate::k8s::Inventory>) {
        self.state().decoder.pods(pods);
    }

    /// Decodes kernel events and publishes their records.
    pub fn publish(&self, events: &[Event]) {
        let mut st = self.state();
        let records: Vec<_> = events.iter().filter_map(|e| st.decoder.decode(e)).collect();
        self.push(&mut st, records);
    }

    /// Publishes what the kernel aggregated without an event (see [`Decoder::sweep`]).
    pub fn sweep(
        &self,
        denied: impl Iterator<Item = (DenyKey, DenyValue)>,
        dropped: impl Iterator<Item = (AggKey, AggValue)>,
    ) {
        let mut st = self.state();
        let records = st.decoder.sweep(denied, dropped, crate::mapwriter::monotonic_ns());
        self.push(&mut st, records);
    }

    /// Publishes a record the agent makes itself (a grant given or ended), in the same stream
    /// as the kernel's.
    pub fn note(&self, record: EventRecord) {
        let mut st = self.state();
        self.push(&mut st, vec![Arc::new(record)]);
    }

    /// Calls `f` with every record published from now on, synchronously: unlike a
    /// subscriber it cannot fall behind (for counters).
    pub fn observe(&self, f: impl Fn(&EventRecord) + Send + 'static) {
        self.state().observers.push(Box::new(f));
    }

    fn push(&self, st: &mut HubState, records: Vec<Arc<EventRecord>>) {
        for r in records {
            for f in &st.observers {
                f(&r);
            }
            if st.history.len() == self.capacity {
                st.history.pop_front();
            }
            st.history.push_back(r.clone());
            // No subscriber is not an error.
            let _ = self.tx.send(r);
        }
    }

    /// The recent events matching `filter`, and a receiver for the ones after them (no gap,
    /// no duplicate: both are taken under the lock `push` holds).
    pub fn subscribe(&self, filter: &EventFilter) -> Subscription {
        let st = self.state();
        let history = st.history.iter().filter(|r| filter.matches(r)).cloned().collect();
        Subscription { history, live: self.tx.subscribe() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_838_096_000_000_000), "2026-11-28T03:54:56.000Z");
    }

    fn event(total: u64, reason: u8) -> Event {
        Event { total, verdict: VERDICT_DENIED, reason, src: addr16("10.0.0.1".parse().unwrap()), ..Default::default() }
    }

    #[test]
    fn aggregated_counts_are_differences_of_totals() {
        let mut d = Decoder::new();
        let counts: Vec<Option<u64>> =
            [1, 40, 40, 100, 3].iter().map(|&t| d.decode(&event(t, REASON_DEFAULT)).map(|r| r.count)).collect();
        // 1, then 39 more, a duplicate total adds nothing, 60 more, then a renewed aggregate.
        assert_eq!(counts, [Some(1), Some(39), None, Some(60), Some(3)]);
        // Another reason is another aggregate.
        assert_eq!(d.decode(&event(5, REASON_FRAGMENT)).map(|r| r.count), Some(5));
    }

    #[test]
    fn audit_verdicts_are_their_own_aggregates() {
        let mut d = Decoder::new();
        let limited = Event { verdict: VERDICT_RATE_LIMITED, ..event(10, REASON_RATE_LIMIT) };
        let would = Event { verdict: VERDICT_WOULD_RATE_LIMIT, ..event(4, REASON_RATE_LIMIT) };
        assert_eq!(d.decode(&limited).map(|r| r.count), Some(10));
        // The same flow's would-rate-limit packets are another aggregate, not 4 below 10.
        let r = d.decode(&would).unwrap();
        assert_eq!((r.count, r.verdict.as_str(), r.reason.as_str()), (4, "would-rate-limit", "rate-limit"));
        // Its tail, found by the sweep under the key with AGG_AUDIT, keeps its verdict.
        let key = AggKey { src: would.src, dst: would.dst, port: 0, proto: 0, reason: REASON_RATE_LIMIT | AGG_AUDIT };
        let value = AggValue { total: 9, last_emit: 0, ..Default::default() };
        let r = d.sweep(std::iter::empty(), [(key, value)].into_iter(), EVENT_INTERVAL_NS);
        assert_eq!(r.iter().map(|r| (r.count, r.verdict.as_str())).collect::<Vec<_>>(), [(5, "would-rate-limit")]);
        // A would-deny event is one flow's first packet, never aggregated.
        let first = Event { verdict: VERDICT_WOULD_DENY, ..event(1, REASON_DEFAULT) };
        assert_eq!(d.decode(&first).map(|r| (r.count, r.verdict.clone())), Some((1, "would-deny".into())));
        assert_eq!(d.decode(&first).map(|r| r.count), Some(1));
    }

    #[test]
    fn the_sweep_reports_what_no_event_carried() {
        let mut d = Decoder::new();
        let e = Event { sport: 4321, direction: DIRECTION_EGRESS, ..event(10, REASON_DEFAULT) };
        d.decode(&e);
        let key = DenyKey { src: e.src, dst: e.dst, port: 0, proto: 0, _pad: 0 };
        let value = |total, last_emit| DenyValue { total, last_emit, ..Default::default() };
        // Not idle for an interval yet: nothing.
        assert!(d.sweep([(key, value(25, 1_000))].into_iter(), std::iter::empty(), 1_500).is_empty());
        let r = d.sweep([(key, value(25, 1_000))].into_iter(), std::iter::empty(), 1_000 + EVENT_INTERVAL_NS);
        assert_eq!(r.iter().map(|r| r.count).collect::<Vec<_>>(), [15]);
        // Named from the aggregate's last event and the kernel's value.
        let r = &r[0];
        assert_eq!((r.sport, r.direction.as_str(), r.reason.as_str(), r.len), (4321, "egress", "default", 0));
        // Reported once.
        assert!(d.sweep([(key, value(25, 1_000))].into_iter(), std::iter::empty(), 3 * EVENT_INTERVAL_NS).is_empty());
        // Gone from the kernel maps: remembered for a few sweeps, then forgotten, so an
        // aggregate of the same flow starts from zero again.
        for _ in 0..FORGET_AFTER_SWEEPS {
            assert_eq!(d.seen.len(), 1);
            d.sweep(std::iter::empty(), std::iter::empty(), 4 * EVENT_INTERVAL_NS);
        }
        assert!(d.seen.is_empty());
        assert_eq!(d.decode(&e).map(|r| r.count), Some(10));
    }
}
