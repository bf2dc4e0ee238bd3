//! The events stream's wire types: what `ztagent events` asks for and what it gets.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;

/// One event as clients see it (`ztagent events -o json` prints one per line; the field names
/// are stable). What a kind of event does not have is absent, never a zero: the agent's own
/// events (`granted`, `grant-ended`, a rate `anomaly`) carry no packet, ICMP no ports (its
/// type and code, and an echo's identifier, instead). The shape of each kind is in docs/json.md.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// Wall-clock time, RFC 3339 with milliseconds (UTC).
    pub time: String,
    /// Interface name (or index when unknown) and "ingress" | "egress" (packet events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// "allowed" | "denied" | "rate-limited"; in audit mode "would-deny" | "would-rate-limit"
    /// (the packet passed); the agent's own: "granted" | "grant-ended" | "anomaly".
    pub verdict: String,
    /// "rule" | "default" | "fragment" | "malformed" | "revoked" | "no-policy" | "rate-limit"
    /// | "grant-expired" | "spoofed"; grants: "grant" | "expired" | "revoked"; anomalies: their kind.
    pub reason: String,
    /// The deciding rule's name (verdicts by a rule, revocations by a deny rule; `grant-ID`).
    pub rule: Option<String>,
    /// The rate limit's name (rate-limited).
    pub rate_limit: Option<String>,
    /// The packet's addresses (absent for the agent's own events without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// TCP/UDP ports (absent for other protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// "tcp" | "udp" | "icmp" | the protocol number (absent without a packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// ICMP echo request or reply: the identifier (absent for other messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    /// ICMP and ICMPv6: the message's type and code as on the wire (absent for other protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    pub src_segment: String,
    pub dst_segment: String,
    /// With `--k8s-objects`: the pod (`namespace/name`) at the source or destination address,
    /// as the inventory in force names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    /// `granted` / `grant-ended`: the grant's port specs as in a rule (`9000/tcp`); absent for
    /// a grant of every port, and for other events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Packets this record stands for (1 unless aggregated; 0 for a grant; alerts: how many).
    pub count: u64,
    /// Length of the packet that triggered the event (0 for a sweep's report; absent without
    /// a packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    pub revision: u32,
    /// What the agent itself reports (verdicts `granted`, `grant-ended`, `anomaly`): the grant's
    /// reason, or what the alert saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `anomaly` only: `low`, `medium` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// `segment` for a flood aggregate: under a flood of denials the kernel counts them per
    /// (source segment, reason) and CPU instead of per flow; `count` packets from
    /// `src_segment`, and the addresses, ports and rule are those of the last packet counted
    /// when the record was made. Absent for a flow's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
    /// A request on a declared HTTP port and its response (`reason` "request"), or such a
    /// connection that stopped being parsed (`reason` "unparsable"); absent for other events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRecord>,
}

/// What the kernel saw of an HTTP/1.x request and its response (see docs/api.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request-target's path, without its query (`?...`); at most 64 bytes kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path was longer than the kernel keeps: `path` is its beginning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    /// The `Host` header (at most 32 bytes kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From the request's first byte to the response's first byte, as the kernel saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Why the connection stopped being parsed: "gap" | "start-line" | "framing" | "too-long" |
    /// "pipeline" | "unsolicited" | "unsynced" (parse failures, counted `http_unparsable`), or
    /// "tls" | "http2" | "upgrade" (another protocol on the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unparsable: Option<String>,
}

/// An ICMP or ICMPv6 message's type and code, as on the wire (`"icmp": {"type": 8, "code": 0}`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
}

impl Icmp {
    /// The message's name (`echo-request`, `destination-unreachable code 3`, `type 42`), by
    /// ICMPv6's numbers when `v6`.
    pub fn describe(&self, v6: bool) -> String {
        let name = match (v6, self.kind) {
            (false, 0) | (true, 129) => "echo-reply",
            (false, 8) | (true, 128) => "echo-request",
            (false, 3) | (true, 1) => "destination-unreachable",
            (false, 11) | (true, 3) => "time-exceeded",
            (false, 12) | (true, 4) => "parameter-problem",
            (false, 4) => "source-quench",
            (false, 5) | (true, 137) => "redirect",
            (false, 9) | (true, 134) => "router-advertisement",
            (false, 10) | (true, 133) => "router-solicitation",
            (false, 13) => "timestamp-request",
            (false, 14) => "timestamp-reply",
            (true, 2) => "packet-too-big",
            (true, 135) => "neighbour-solicitation",
            (true, 136) => "neighbour-advertisement",
            (_, n) => return format!("type {n} code {}", self.code),
        };
        if self.code == 0 { name.to_string() } else { format!("{name} code {}", self.code) }
    }
}

impl EventRecord {
    /// A record of a flow from (segment, address) to (segment, address), on an interface's
    /// ingress, the other fields empty: for tests and benchmarks of what consumes records.
    pub fn flow(
        verdict: &str,
        reason: &str,
        src: (&str, IpAddr),
        dst: (&str, IpAddr),
        proto: &str,
        dport: u16,
        count: u64,
    ) -> EventRecord {
        EventRecord {
            time: String::new(),
            iface: Some("eth0".into()),
            direction: Some("ingress".into()),
            verdict: verdict.into(),
            reason: reason.into(),
            rule: None,
            rate_limit: None,
            src: Some(src.1),
            dst: Some(dst.1),
            sport: Some(40000),
            dport: Some(dport),
            proto: Some(proto.into()),
            icmp_id: None,
            icmp: None,
            src_segment: src.0.into(),
            dst_segment: dst.0.into(),
            src_pod: None,
            dst_pod: None,
            ports: Vec::new(),
            count,
            len: Some(60),
            revision: 1,
            note: None,
            severity: None,
            aggregate: None,
            http: None,
        }
    }

    /// A record the agent makes itself (a grant given or ended, an alert), now: no packet,
    /// `count` 0; `src_segment` and `dst_segment` name what it is about.
    pub fn own(verdict: &str, reason: &str, src_segment: &str, dst_segment: &str) -> EventRecord {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        EventRecord {
            time: rfc3339(now),
            iface: None,
            direction: None,
            verdict: verdict.into(),
            reason: reason.into(),
            rule: None,
            rate_limit: None,
            src: None,
            dst: None,
            sport: None,
            dport: None,
            proto: None,
            icmp_id: None,
            icmp: None,
            src_segment: src_segment.into(),
            dst_segment: dst_segment.into(),
            src_pod: None,
            dst_pod: None,
            ports: Vec::new(),
            count: 0,
            len: None,
            revision: 0,
            note: None,
            severity: None,
            aggregate: None,
            http: None,
        }
    }

    /// The destination port of a TCP/UDP packet, else 0 (what inventories and alerts key by).
    pub fn service_port(&self) -> u16 {
        match self.proto.as_deref() {
            Some("tcp" | "udp") => self.dport.unwrap_or(0),
            _ => 0,
        }
    }
}

/// Values of each kind of filter: an event meets a kind when it matches any of its values
/// (OR within a repeated flag).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Criteria {
    /// Verdicts ("allowed", "denied", "rate-limited", "would-deny", "would-rate-limit",
    /// "granted", "grant-ended", "anomaly").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<String>,
    /// Source segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Destination segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Addresses, as the source or the destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Pods (`namespace/name`, or a name in any namespace), as the source or the destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Kubernetes namespaces of the source or the destination pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// HTTP request methods (`GET`), compared exactly; only request events have one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Beginnings of HTTP request paths (`/v1/`); only request events have one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// HTTP response statuses: a code (`404`) or a class (`5xx`); see [`status_spec`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<String>,
}

/// Whether `spec` is a status filter: a code 100-599 (`404`) or a class `1xx`..`5xx`.
pub fn status_spec(spec: &str) -> bool {
    let b = spec.as_bytes();
    b.len() == 3
        && (b'1'..=b'5').contains(&b[0])
        && ((b[1].is_ascii_digit() && b[2].is_ascii_digit()) || spec[1..].eq_ignore_ascii_case("xx"))
}

/// Whether `status` is what `spec` (see [`status_spec`]) names.
pub fn status_matches(spec: &str, status: u16) -> bool {
    if !status_spec(spec) {
        return false;
    }
    match spec.get(1..) {
        Some(x) if x.eq_ignore_ascii_case("xx") => status / 100 == u16::from(spec.as_bytes()[0] - b'0'),
        _ => spec.parse::<u16>().is_ok_and(|s| s == status),
    }
}

impl Criteria {
    /// For each kind given, whether `r` matches one of its values (kinds not given: None).
    fn kinds(&self, r: &EventRecord) -> [Option<bool>; 10] {
        let given = |empty: bool, hit: &dyn Fn() -> bool| (!empty).then(hit);
        let pod = |want: &str, at: &Option<String>| {
            at.as_deref().is_some_and(|p| {
                p == want || (!want.contains('/') && p.split_once('/').is_some_and(|(_, n)| n == want))
            })
        };
        let namespace =
            |ns: &str, at: &Option<String>| at.as_deref().and_then(|p| p.split_once('/')).is_some_and(|(n, _)| n == ns);
        let http = r.http.as_ref();
        [
            given(self.verdicts.is_empty(), &|| self.verdicts.contains(&r.verdict)),
            given(self.from.is_empty(), &|| self.from.contains(&r.src_segment)),
            given(self.to.is_empty(), &|| self.to.contains(&r.dst_segment)),
            given(self.ports.is_empty(), &|| r.dport.is_some_and(|p| self.ports.contains(&p))),
            given(self.ips.is_empty(), &|| self.ips.iter().any(|ip| r.src == Some(*ip) || r.dst == Some(*ip))),
            given(self.pods.is_empty(), &|| self.pods.iter().any(|p| pod(p, &r.src_pod) || pod(p, &r.dst_pod))),
            given(self.namespaces.is_empty(), &|| {
                self.namespaces.iter().any(|ns| namespace(ns, &r.src_pod) || namespace(ns, &r.dst_pod))
            }),
            given(self.methods.is_empty(), &|| {
                http.and_then(|h| h.method.as_ref()).is_some_and(|m| self.methods.contains(m))
            }),
            given(self.path_prefixes.is_empty(), &|| {
                http.and_then(|h| h.path.as_deref())
                    .is_some_and(|p| self.path_prefixes.iter().any(|x| p.starts_with(x.as_str())))
            }),
            given(self.statuses.is_empty(), &|| {
                http.and_then(|h| h.status).is_some_and(|s| self.statuses.iter().any(|x| status_matches(x, s)))
            }),
        ]
    }

    /// The segment names these criteria use (to check them against the policy in force).
    pub fn segments(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.from.iter().map(|s| ("--from", s.as_str())).chain(self.to.iter().map(|s| ("--to", s.as_str())))
    }
}

/// What `ztagent events` asks for: every kind of `only` given must match (AND across
/// flags), no value of `not` may; `since` / `until` bound the time (inclusive); `last` keeps the
/// newest recent events only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EventFilter {
    #[serde(flatten)]
    pub only: Criteria,
    /// `--not`: an event matching any of these is left out.
    #[serde(default)]
    pub not: Criteria,
    /// RFC 3339, UTC, milliseconds: as events' `time`, so that they compare as strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Of the recent events matching, only the last N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
}

impl EventFilter {
    pub fn matches(&self, r: &EventRecord) -> bool {
        self.only.kinds(r).iter().all(|k| k.is_none_or(|hit| hit))
            && !self.not.kinds(r).iter().any(|k| k.is_some_and(|hit| hit))
            && self.since.as_ref().is_none_or(|t| r.time.as_str() >= t.as_str())
            && self.until.as_ref().is_none_or(|t| r.time.as_str() <= t.as_str())
    }

    /// The segment names the filter uses, with the flag that gave each.
    pub fn segments(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.only.segments().chain(self.not.segments().map(|(_, s)| ("--not", s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verdict: &str, from: &str, ip: &str, dport: u16) -> EventRecord {
        let mut r = EventRecord::flow(
            verdict,
            "rule",
            (from, ip.parse().unwrap()),
            ("payments", "10.0.0.9".parse().unwrap()),
            "tcp",
            dport,
            1,
        );
        r.time = "2026-12-07T10:00:00.000Z".into();
        r.src_pod = Some("x/a".into());
        r
    }

    #[test]
    fn or_within_a_flag_and_across_flags_not_negates() {
        let (a, b) = (record("denied", "frontend", "10.0.0.1", 80), record("allowed", "batch", "10.0.0.2", 81));
        let mut f = EventFilter::default();
        assert!(f.matches(&a) && f.matches(&b));
        f.only.from = vec!["frontend".into(), "batch".into()];
        assert!(f.matches(&a) && f.matches(&b));
        f.only.ports = vec![81];
        assert!(!f.matches(&a) && f.matches(&b));
        f.only.ports.clear();
        f.not.ips = vec!["10.0.0.9".parse().unwrap()];
        assert!(!f.matches(&a) && !f.matches(&b), "the destination address is negated");
        f.not.ips = vec!["10.0.0.2".parse().unwrap()];
        assert!(f.matches(&a) && !f.matches(&b));
        f.not = Criteria::default();
        f.only.pods = vec!["a".into()];
        assert!(f.matches(&a));
        f.only.pods = vec!["y/a".into()];
        assert!(!f.matches(&a));
        f.only.pods.clear();
        f.only.namespaces = vec!["x".into()];
        assert!(f.matches(&a));
        f.since = Some("2026-12-07T10:00:00.001Z".into());
        assert!(!f.matches(&a));
        f.since = Some("2026-12-07T10:00:00.000Z".into());
        f.until = Some("2026-12-07T10:00:00.000Z".into());
        assert!(f.matches(&a));
    }

    #[test]
    fn http_filters_match_request_events_only() {
        let mut a = record("allowed", "frontend", "10.0.0.1", 8080);
        a.reason = "request".into();
        a.http = Some(HttpRecord {
            method: Some("GET".into()),
            path: Some("/v1/payments/42".into()),
            status: Some(503),
            ..HttpRecord::default()
        });
        let mut b = a.clone();
        b.http = Some(HttpRecord {
            method: Some("POST".into()),
            path: Some("/health".into()),
            status: Some(404),
            ..HttpRecord::default()
        });
        let plain = record("denied", "frontend", "10.0.0.1", 8080);
        let mut f = EventFilter::default();
        f.only.methods = vec!["GET".into(), "PUT".into()];
        assert!(f.matches(&a) && !f.matches(&b) && !f.matches(&plain));
        f.only.methods.clear();
        f.only.path_prefixes = vec!["/v2/".into(), "/v1/".into()];
        assert!(f.matches(&a) && !f.matches(&b) && !f.matches(&plain));
        f.only.path_prefixes.clear();
        f.only.statuses = vec!["5xx".into()];
        assert!(f.matches(&a) && !f.matches(&b) && !f.matches(&plain));
        f.only.statuses = vec!["2xx".into(), "404".into()];
        assert!(!f.matches(&a) && f.matches(&b));
        // AND across flags, and negated.
        f.only.statuses = vec!["5xx".into(), "404".into()];
        f.only.methods = vec!["POST".into()];
        assert!(!f.matches(&a) && f.matches(&b));
        f.only = Criteria::default();
        f.not.statuses = vec!["5xx".into()];
        assert!(!f.matches(&a) && f.matches(&b) && f.matches(&plain), "--not leaves events without a status");
        f.not.statuses.clear();
        f.not.path_prefixes = vec!["/health".into()];
        assert!(f.matches(&a) && !f.matches(&b));
    }

    #[test]
    fn status_specs() {
        for ok in ["5xx", "2XX", "404", "100", "599"] {
            assert!(status_spec(ok), "{ok}");
        }
        for bad in ["6xx", "0xx", "40", "4040", "x04", "4x4", "", "699", "5xy"] {
            assert!(!status_spec(bad), "{bad}");
        }
        assert!(status_matches("5xx", 500) && status_matches("5xx", 599) && !status_matches("5xx", 499));
        assert!(status_matches("404", 404) && !status_matches("404", 405) && !status_matches("6xx", 600));
    }

    #[test]
    fn the_agents_own_events_have_no_packet_fields() {
        let mut r = EventRecord::own("granted", "grant", "10.30.9.7/32", "payments");
        r.ports = vec!["9000/tcp".into()];
        let v = serde_json::to_value(&r).unwrap();
        for absent in ["src", "dst", "sport", "dport", "proto", "iface", "direction", "len"] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        assert_eq!(v["ports"], serde_json::json!(["9000/tcp"]));
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), r);
    }
}
