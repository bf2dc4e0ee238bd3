//! Kernel events -> [`EventRecord`]s: names for segments, rules and limits, exact packet
//! counts from the kernel's running totals, wall-clock times.
use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use agent_common::{
    AGG_AUDIT, AggKey, AggValue, DenyKey, DenyValue, EVENT_INTERVAL_NS, Event, FloodValue, ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SEG_ANY,
    event::{
        DIRECTION_EGRESS, REASON_DEFAULT, REASON_FRAGMENT, REASON_GRANT_EXPIRED, REASON_MALFORMED, REASON_NO_POLICY,
        REASON_RATE_LIMIT, REASON_REVOKED, REASON_RULE, REASON_SPOOFED, VERDICT_ALLOWED, VERDICT_DENIED,
        VERDICT_RATE_LIMITED, VERDICT_WOULD_DENY, VERDICT_WOULD_RATE_LIMIT,
    },
};

use agent_common::http::{
    HTTP_F_PATH_TRUNCATED, HttpEvent, KIND_EXCHANGE, UNPARSABLE_FRAMING, UNPARSABLE_GAP, UNPARSABLE_HTTP2,
    UNPARSABLE_PIPELINE, UNPARSABLE_START_LINE, UNPARSABLE_TLS, UNPARSABLE_TOO_LONG, UNPARSABLE_UNSOLICITED,
    UNPARSABLE_UNSYNCED, UNPARSABLE_UPGRADE,
};

use super::flood::Floods;
use crate::api::{EventRecord, HttpRecord, Icmp};
use crate::clock::{monotonic_ns, rfc3339};
use crate::policy::{CompiledPolicy, addr16};

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
    /// The source port; for ICMP the message's type and code (`[type, code]` big-endian).
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
    floods: Floods,
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
            floods: Floods::default(),
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
        if ev.aggregate != 0 {
            let count = self.floods.delta(ev)?;
            return Some(Arc::new(self.record(ev, count)));
        }
        let audit = if ev.verdict == VERDICT_WOULD_RATE_LIMIT { AGG_AUDIT } else { 0 };
        let reason = class(ev.reason) | audit;
        let icmp = ev.proto == PROTO_ICMP;
        // The kernel keys an ICMP policy denial by the message's type (its policy port), other
        // drops by the flow's ports (an echo's identifier).
        let port = if icmp && reason == POLICY_DENIAL { icmp_policy_port(ev) } else { ev.dport };
        let flow = Aggregate { src: ev.src, dst: ev.dst, port, proto: ev.proto, reason };
        let id = self.id(&flow);
        let count = self.delta(id, ev.total)?;
        let record = Arc::new(self.record(ev, count));
        if self.seen.len() >= MAX_AGGREGATES && !self.seen.contains_key(&id) {
            self.seen.clear();
        }
        let sport = if icmp { u16::from_be_bytes([ev.icmp_type, ev.icmp_code]) } else { ev.sport };
        let (ifindex, direction, generation) = (ev.ifindex, ev.direction, self.generation);
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
    /// aggregates idle for a whole interval. `denied`/`dropped`: the kernel's aggregation maps;
    /// `flood`: the per-CPU values of a flood aggregate's index.
    pub fn sweep(
        &mut self,
        denied: impl Iterator<Item = (DenyKey, DenyValue)>,
        dropped: impl Iterator<Item = (AggKey, AggValue)>,
        flood: &dyn Fn(u32) -> Vec<FloodValue>,
        now_ns: u64,
    ) -> Vec<Arc<EventRecord>> {
        let mut out = Vec::new();
        for index in self.floods.indexes() {
            for (ev, count) in self.floods.sweep(index, &flood(index), now_ns) {
                out.push(Arc::new(self.record(&ev, count)));
            }
        }
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
            // ICMP: the type and code were remembered in place of the source port; an echo's
            // identifier is in the key of other drops, not in a policy denial's (its type is).
            let (sport, dport, [icmp_type, icmp_code]) = match flow.proto {
                PROTO_ICMP if flow.reason == POLICY_DENIAL => (0, 0, seen.sport.to_be_bytes()),
                PROTO_ICMP => (flow.port, flow.port, seen.sport.to_be_bytes()),
                _ => (seen.sport, flow.port, [0, 0]),
            };
            let ev = Event {
                time_ns: now_ns,
                total: v.total,
                src: flow.src,
                dst: flow.dst,
                sport,
                dport,
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
                aggregate: 0,
                icmp_type,
                icmp_code,
                _pad: 0,
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
        let ports = ev.proto == PROTO_TCP || ev.proto == PROTO_UDP;
        let icmp = ev.proto == PROTO_ICMP;
        // ICMP: the kernel's flow key holds an echo's identifier in both ports (0 for other
        // messages), the event the message's type and code.
        let echo_type = matches!(icmp_policy_port(ev), ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY);
        let echo = icmp && echo_type && ev.sport == ev.dport && ev.dport != 0;
        EventRecord {
            time: rfc3339(wall_clock_of(ev.time_ns)),
            iface: Some(self.ifname(ev.ifindex)),
            direction: Some(if ev.direction == DIRECTION_EGRESS { "egress" } else { "ingress" }.into()),
            verdict: verdict_name(ev.verdict).into(),
            reason: reason_name(ev.reason).into(),
            rule,
            rate_limit,
            src: Some(src),
            dst: Some(dst),
            sport: ports.then_some(ev.sport),
            dport: ports.then_some(ev.dport),
            proto: Some(proto_name(ev.proto)),
            icmp_id: echo.then_some(ev.dport),
            icmp: icmp.then_some(Icmp { kind: ev.icmp_type, code: ev.icmp_code }),
            src_pod: self.pods.pod(src).map(str::to_string),
            dst_pod: self.pods.pod(dst).map(str::to_string),
            src_segment,
            dst_segment,
            ports: Vec::new(),
            count,
            len: Some(ev.len),
            revision: ev.revision,
            note: None,
            severity: None,
            aggregate: (ev.aggregate != 0).then(|| "segment".to_string()),
            http: None,
        }
    }

    /// An HTTP event: a request with its response, or a connection no longer parsed.
    pub fn decode_http(&mut self, ev: &HttpEvent) -> Arc<EventRecord> {
        let (src, dst) = (ip_of(&ev.src), ip_of(&ev.dst));
        let c = self.compiled(ev.revision);
        let segment = |id: u32| c.and_then(|c| c.segment_name(id)).map_or_else(|| id.to_string(), str::to_string);
        let (src_segment, dst_segment) = (segment(ev.src_segment), segment(ev.dst_segment));
        let text = |b: &[u8], len: usize| {
            (len > 0).then(|| String::from_utf8_lossy(b.get(..len.min(b.len())).unwrap_or_default()).into_owned())
        };
        let exchange = ev.kind == KIND_EXCHANGE;
        let http = HttpRecord {
            method: text(&ev.method, ev.method_len.into()),
            path: text(&ev.path, ev.path_len.into()),
            path_truncated: ev.flags & HTTP_F_PATH_TRUNCATED != 0,
            host: text(&ev.host, ev.host_len.into()),
            status: exchange.then_some(ev.status),
            latency_us: exchange.then_some(ev.latency_ns / 1000),
            unparsable: (!exchange).then(|| unparsable_name(ev.reason).to_string()),
        };
        Arc::new(EventRecord {
            time: rfc3339(wall_clock_of(ev.time_ns)),
            iface: Some(self.ifname(ev.ifindex)),
            direction: None,
            verdict: "allowed".into(),
            reason: if exchange { "request" } else { "unparsable" }.into(),
            rule: None,
            rate_limit: None,
            src: Some(src),
            dst: Some(dst),
            sport: Some(ev.sport),
            dport: Some(ev.dport),
            proto: Some("tcp".into()),
            icmp: None,
            icmp_id: None,
            src_pod: self.pods.pod(src).map(str::to_string),
            dst_pod: self.pods.pod(dst).map(str::to_string),
            src_segment,
            dst_segment,
            ports: Vec::new(),
            count: 1,
            len: None,
            revision: ev.revision,
            note: None,
            severity: None,
            aggregate: None,
            http: Some(http),
        })
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

/// Why an HTTP connection stopped being parsed (`agent_common::http::UNPARSABLE_*`).
fn unparsable_name(reason: u8) -> &'static str {
    match reason {
        UNPARSABLE_GAP => "gap",
        UNPARSABLE_START_LINE => "start-line",
        UNPARSABLE_FRAMING => "framing",
        UNPARSABLE_TOO_LONG => "too-long",
        UNPARSABLE_PIPELINE => "pipeline",
        UNPARSABLE_UNSOLICITED => "unsolicited",
        UNPARSABLE_UNSYNCED => "unsynced",
        UNPARSABLE_TLS => "tls",
        UNPARSABLE_HTTP2 => "http2",
        UNPARSABLE_UPGRADE => "upgrade",
        _ => "unknown",
    }
}

/// An ICMP message's type as the kernel's policy lookups and denial cache key it: ICMPv6's echo
/// request and reply folded into ICMP's numbers (8 and 0), other types as they are.
fn icmp_policy_port(ev: &Event) -> u16 {
    match (ip_of(&ev.src).is_ipv6(), ev.icmp_type) {
        (true, 128) => ICMP_ECHO_REQUEST,
        (true, 129) => ICMP_ECHO_REPLY,
        (_, t) => u16::from(t),
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
    let now_mono = monotonic_ns();
    let now_wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    now_wall.saturating_sub(now_mono.saturating_sub(mono_ns))
}

#[cfg(test)]
mod tests {
    use agent_common::{
        AGG_AUDIT, AggKey, AggValue, DenyKey, DenyValue, EVENT_INTERVAL_NS, Event,
        event::{
            DIRECTION_EGRESS, REASON_DEFAULT, REASON_FRAGMENT, REASON_RATE_LIMIT, REASON_RULE, VERDICT_DENIED,
            VERDICT_RATE_LIMITED, VERDICT_WOULD_DENY, VERDICT_WOULD_RATE_LIMIT,
        },
    };

    use super::*;
    use crate::policy::addr16;

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
        let r = d.sweep(std::iter::empty(), [(key, value)].into_iter(), &|_| Vec::new(), EVENT_INTERVAL_NS);
        assert_eq!(r.iter().map(|r| (r.count, r.verdict.as_str())).collect::<Vec<_>>(), [(5, "would-rate-limit")]);
        // A would-deny event is one flow's first packet, never aggregated.
        let first = Event { verdict: VERDICT_WOULD_DENY, ..event(1, REASON_DEFAULT) };
        assert_eq!(d.decode(&first).map(|r| (r.count, r.verdict.clone())), Some((1, "would-deny".into())));
        assert_eq!(d.decode(&first).map(|r| r.count), Some(1));
    }

    #[test]
    fn the_sweep_reports_what_no_event_carried() {
        let mut d = Decoder::new();
        let e = Event { sport: 4321, proto: PROTO_TCP, direction: DIRECTION_EGRESS, ..event(10, REASON_DEFAULT) };
        d.decode(&e);
        let key = DenyKey { src: e.src, dst: e.dst, port: e.dport, proto: PROTO_TCP, _pad: 0 };
        let value = |total, last_emit| DenyValue { total, last_emit, ..Default::default() };
        // Not idle for an interval yet: nothing.
        assert!(d.sweep([(key, value(25, 1_000))].into_iter(), std::iter::empty(), &|_| Vec::new(), 1_500).is_empty());
        let r = d.sweep(
            [(key, value(25, 1_000))].into_iter(),
            std::iter::empty(),
            &|_| Vec::new(),
            1_000 + EVENT_INTERVAL_NS,
        );
        assert_eq!(r.iter().map(|r| r.count).collect::<Vec<_>>(), [15]);
        // Named from the aggregate's last event and the kernel's value.
        let r = &r[0];
        assert_eq!(
            (r.sport, r.direction.as_deref(), r.reason.as_str(), r.len),
            (Some(4321), Some("egress"), "default", Some(0))
        );
        // Reported once.
        assert!(
            d.sweep([(key, value(25, 1_000))].into_iter(), std::iter::empty(), &|_| Vec::new(), 3 * EVENT_INTERVAL_NS)
                .is_empty()
        );
        // Gone from the kernel maps: remembered for a few sweeps, then forgotten, so an
        // aggregate of the same flow starts from zero again.
        for _ in 0..FORGET_AFTER_SWEEPS {
            assert_eq!(d.seen.len(), 1);
            d.sweep(std::iter::empty(), std::iter::empty(), &|_| Vec::new(), 4 * EVENT_INTERVAL_NS);
        }
        assert!(d.seen.is_empty());
        assert_eq!(d.decode(&e).map(|r| r.count), Some(10));
    }

    #[test]
    fn icmp_events_carry_type_and_code_not_ports() {
        let mut d = Decoder::new();
        // An ICMPv6 echo request (identifier 77) denied: named by ICMPv6's own numbers.
        let v6 = addr16("fd00::1".parse().unwrap());
        let ping =
            Event { src: v6, sport: 77, dport: 77, proto: PROTO_ICMP, icmp_type: 128, ..event(3, REASON_DEFAULT) };
        let r = d.decode(&ping).unwrap();
        assert_eq!((r.sport, r.dport, r.icmp_id), (None, None, Some(77)));
        assert_eq!(r.icmp, Some(Icmp { kind: 128, code: 0 }));
        assert_eq!(serde_json::to_value(&*r).unwrap()["icmp"], serde_json::json!({"type": 128, "code": 0}));
        // The kernel's denial cache keys it by its type folded into ICMP's (8): the sweep finds
        // it there and keeps its type and code (the identifier is not in that key).
        let key = DenyKey { src: v6, dst: ping.dst, port: ICMP_ECHO_REQUEST, proto: PROTO_ICMP, _pad: 0 };
        let value = DenyValue { total: 5, last_emit: 0, ..Default::default() };
        let r = d.sweep([(key, value)].into_iter(), std::iter::empty(), &|_| Vec::new(), EVENT_INTERVAL_NS);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].count, r[0].icmp, r[0].icmp_id), (2, Some(Icmp { kind: 128, code: 0 }), None));
        // A port unreachable: no identifier; TCP: no ICMP.
        let unreachable = Event { proto: PROTO_ICMP, icmp_type: 3, icmp_code: 3, ..event(1, REASON_RULE) };
        let r = d.decode(&unreachable).unwrap();
        assert_eq!((r.icmp, r.icmp_id), (Some(Icmp { kind: 3, code: 3 }), None));
        assert_eq!(r.icmp.map(|i| i.describe(false)).as_deref(), Some("destination-unreachable code 3"));
        let tcp = Event { sport: 1, dport: 2, proto: PROTO_TCP, ..event(1, REASON_DEFAULT) };
        assert_eq!(d.decode(&tcp).map(|r| r.icmp), Some(None));
    }
}
