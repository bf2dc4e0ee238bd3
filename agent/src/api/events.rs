//! The events stream's wire types: what `ztagent events` asks for and what it gets.
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;

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
    /// `segment` for a flood aggregate: under a flood of denials the kernel counts them per
    /// (source segment, reason) and CPU instead of per flow; `count` packets from
    /// `src_segment`, and the addresses, ports and rule are those of the last packet counted
    /// when the record was made. Absent for a flow's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
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
            aggregate: None,
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
            aggregate: None,
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
