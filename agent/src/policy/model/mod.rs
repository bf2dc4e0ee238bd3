//! The validated policy model, and its serialization back to the file format.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use agent_common::{ACTION_ALLOW, ACTION_DENY, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// The only policy file version this agent understands.
pub const POLICY_VERSION: u32 = 1;

/// Whether the policy's denials and rate limits are enforced, or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied and over-limit packets are dropped.
    #[default]
    Enforce,
    /// They pass, counted and reported as `would-deny` / `would-rate-limit`: for rolling a
    /// policy out, and for seeing what it would break.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// What happens to a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    #[default]
    Deny,
}

impl Action {
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`], as the maps store it.
    pub fn code(self) -> u32 {
        match self {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named set of addresses: the identity of those addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    /// Audit: what the policy denies to or from this segment passes, reported as would-deny
    /// (one segment newly restricted while the rest of the policy enforces).
    pub mode: Mode,
    /// Label-selected members (Kubernetes pods), beside `cidrs`: resolved against the cluster
    /// inventory by `k8s::translate`; without an inventory it holds no addresses.
    pub selector: Option<PodSelector>,
}

/// The pods a label-selected segment holds: those of `namespace` (any namespace when `None`)
/// whose labels the selector matches. A pod address joins the first such segment (file order)
/// that selects its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSelector {
    pub namespace: Option<String>,
    pub selector: crate::policy::selector::LabelSelector,
}

/// A segment as a rule names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SegRef {
    /// `*`: any address.
    Any,
    /// `world`: any address in no segment.
    World,
    /// A named segment: index in [`Policy::segments`].
    Named(usize),
}

/// The name `*` in `from`/`to`.
pub const ANY_NAME: &str = "*";
/// The name of the segment of addresses in no named segment.
pub const WORLD_NAME: &str = "world";

/// A transport protocol with ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One entry of a rule's `ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// `tcp` / `udp`: every port of the protocol (port 0 included).
    All(Proto),
    /// `N/tcp` (when `lo == hi`) or `LO-HI/tcp`, `1 <= lo <= hi <= 65535`.
    Range { proto: Proto, lo: u16, hi: u16 },
    /// `icmp`: ICMP and ICMPv6 echo request.
    Icmp,
}

/// Why a port spec is invalid (the message is completed with the spec by the validator).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// The number as written (leading zeros dropped, very long numbers shortened).
    #[error("port {0} is out of range; ports are 1 to 65535")]
    OutOfRange(String),
    #[error("the port range is reversed; did you mean `{lo}-{hi}/{proto}`?")]
    Reversed { lo: u16, hi: u16, proto: &'static str },
    #[error("unknown protocol `{0}`; expected tcp or udp")]
    UnknownProto(String),
    #[error("expected N/tcp, N/udp, LO-HI/tcp, LO-HI/udp, tcp, udp or icmp")]
    Syntax,
}

impl PortSpec {
    /// The inclusive range of 24-bit port keys (`(proto << 16) | port`) this spec covers.
    pub fn key_range(&self) -> (u32, u32) {
        match *self {
            PortSpec::All(p) => {
                let base = u32::from(p.number()) << 16;
                (base, base | 0xffff)
            }
            PortSpec::Range { proto, lo, hi } => {
                let base = u32::from(proto.number()) << 16;
                (base | u32::from(lo), base | u32::from(hi))
            }
            PortSpec::Icmp => {
                let k = (u32::from(PROTO_ICMP) << 16) | u32::from(agent_common::ICMP_ECHO_REQUEST);
                (k, k)
            }
        }
    }
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let proto_of = |p: &str| match p.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(PortSpecError::UnknownProto(p.to_owned())),
        };
        match s.to_ascii_lowercase().as_str() {
            "icmp" => return Ok(PortSpec::Icmp),
            "tcp" => return Ok(PortSpec::All(Proto::Tcp)),
            "udp" => return Ok(PortSpec::All(Proto::Udp)),
            _ => {}
        }
        let (ports, proto) = s.split_once('/').ok_or(PortSpecError::Syntax)?;
        let (lo, hi) = match ports.split_once('-') {
            Some((lo, hi)) => (parse_port(lo)?, parse_port(hi)?),
            None => {
                let p = parse_port(ports)?;
                (p, p)
            }
        };
        if proto.is_empty() || !proto.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PortSpecError::Syntax);
        }
        let proto = proto_of(proto)?;
        if lo > hi {
            return Err(PortSpecError::Reversed { lo: hi, hi: lo, proto: proto.as_str() });
        }
        Ok(PortSpec::Range { proto, lo, hi })
    }
}

/// A decimal port number, 1..=65535. Any run of digits is a number: one too big for any
/// integer type is out of range, not a syntax error.
fn parse_port(s: &str) -> Result<u16, PortSpecError> {
    /// Digits shown of a number out of range.
    const SHOWN: usize = 20;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortSpecError::Syntax);
    }
    let digits = s.trim_start_matches('0');
    match digits.parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ if digits.is_empty() => Err(PortSpecError::OutOfRange("0".to_owned())),
        // ASCII digits: any byte index is a character boundary.
        _ if digits.len() > SHOWN => Err(PortSpecError::OutOfRange(format!("{}…", &digits[..SHOWN]))),
        _ => Err(PortSpecError::OutOfRange(digits.to_owned())),
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PortSpec::All(p) => f.write_str(p.as_str()),
            PortSpec::Range { proto, lo, hi } if lo == hi => write!(f, "{lo}/{}", proto.as_str()),
            PortSpec::Range { proto, lo, hi } => write!(f, "{lo}-{hi}/{}", proto.as_str()),
            PortSpec::Icmp => f.write_str("icmp"),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One rule. A packet matches it if its source is in `from`, its destination in `to`, and its
/// protocol and port in `ports` (absent = everything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub from: Vec<SegRef>,
    pub to: Vec<SegRef>,
    pub ports: Option<Vec<PortSpec>>,
    pub action: Action,
    /// Audit (deny rules only): what this rule denies passes, reported as would-deny naming it.
    pub mode: Mode,
    /// For the rule of a time-bound grant (never in a file: the agent adds it, see `grants`):
    /// the grant's index in `ZT_GRANTS`, which holds its deadline.
    pub grant: Option<u32>,
}

/// The unit of time of a bucket's `rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    /// The length of the unit in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
        }
    }

    /// `second`, `minute` or `hour`.
    pub fn from_name(s: &str) -> Option<Per> {
        match s {
            "second" => Some(Per::Second),
            "minute" => Some(Per::Minute),
            "hour" => Some(Per::Hour),
            _ => None,
        }
    }
}

impl fmt::Display for Per {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest accepted `rate` (in any unit). At 10^12 per second one unit still costs 65.5
/// fixed-point nanoseconds (`ns << 16`), so the rounding error of the cost stays below 1%.
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// The longest accepted refill time of a bucket, `burst * per / rate`, in seconds (24 hours).
/// It bounds the bucket's tolerance (`burst * cost`) to `86400e9 << 16` ≈ 5.66e18, below 2^63,
/// so the datapath's clock arithmetic in `ns << 16` never overflows (see
/// [`Bucket`](super::Bucket)).
pub const MAX_REFILL_SECONDS: u64 = 24 * 3600;
/// The smallest accepted `bytes.burst`: a bucket smaller than a full-size (1500-byte) packet
/// could never admit one.
pub const MIN_BYTES_BURST: u64 = 1500;

/// One token bucket of a rate limit, as configured: on average `rate` units per `per`, with
/// bursts of up to `burst` units. Validated: `1 <= rate <= MAX_RATE`, `burst >= 1` (`bytes`:
/// `>= MIN_BYTES_BURST`) and `burst * per / rate <= MAX_REFILL_SECONDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketSpec {
    pub rate: u64,
    pub per: Per,
    pub burst: u64,
}

/// Who shares a rate limit's buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// One set of buckets shared by every address of the source segment.
    #[default]
    Segment,
    /// One set of buckets per source address.
    Address,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Segment => "segment",
            LimitScope::Address => "address",
        }
    }
}

/// A rate limit: bounds the traffic the rules (or the default action) allow from one source
/// identity. A packet counts against the first rate limit (file order) whose `from` is its
/// source segment, whose `to` holds its destination segment (absent or `*`: any) and whose
/// `ports` cover it (absent: every port and protocol). A limit never allows what is denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    /// One segment: [`SegRef::Named`] or [`SegRef::World`] (validation rejects `*`).
    pub from: SegRef,
    /// `None`: every destination.
    pub to: Option<Vec<SegRef>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
    /// Packets.
    pub packets: Option<BucketSpec>,
    /// New TCP connections (SYN) and new UDP flows.
    pub connections: Option<BucketSpec>,
    /// Bytes (the length of each counted packet).
    pub bytes: Option<BucketSpec>,
    pub scope: LimitScope,
}

/// What a declared API port speaks (`apis[].protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiProtocol {
    /// Plaintext HTTP/1.x: the datapath frames its requests and responses (a TLS handshake or
    /// an HTTP/2 preface on such a port is reported as such, not parsed).
    #[default]
    Http,
}

impl ApiProtocol {
    /// The protocols `protocol` may name.
    pub const NAMES: [&'static str; 1] = ["http"];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiProtocol::Http => "http",
        }
    }

    pub fn from_name(s: &str) -> Option<ApiProtocol> {
        match s {
            "http" => Some(ApiProtocol::Http),
            _ => None,
        }
    }
}

impl fmt::Display for ApiProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One declared API (`apis:`): the TCP ports of one segment's servers that speak `protocol`.
/// Only flows to those (segment, port) pairs are parsed by the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    /// Optional; unique among the named APIs of a policy file.
    pub name: Option<String>,
    /// The servers: a named segment (index in [`Policy::segments`]; never `*` or `world`).
    pub segment: usize,
    /// TCP ports and ranges ([`PortSpec::Range`] with [`Proto::Tcp`] only; validation rejects
    /// anything else).
    pub ports: Vec<PortSpec>,
    pub protocol: ApiProtocol,
}

impl Api {
    /// The inclusive TCP port ranges declared (anything but a TCP range is ignored).
    pub fn tcp_ranges(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.ports.iter().filter_map(|p| match *p {
            PortSpec::Range { proto: Proto::Tcp, lo, hi } => Some((lo, hi)),
            _ => None,
        })
    }

    /// How the API is known: its name, else `SEGMENT:PORTS` (`payments:8080/tcp,8443/tcp`).
    pub fn key(&self, policy: &Policy) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => {
                let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
                format!("{}:{}", policy.seg_ref_name(SegRef::Named(self.segment)), ports.join(","))
            }
        }
    }
}

/// A validated policy. Rule ids in the maps and in decisions are 1-based indexes of `rules`;
/// rate limit ids are 1-based indexes of `rate_limits` (0 = no limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Enforce (default) or audit.
    pub mode: Mode,
    /// What happens when no rule matches.
    pub default_action: Action,
    /// In file order; segment id = index + 1 (0 is `world`).
    pub segments: Vec<Segment>,
    /// In file order.
    pub rules: Vec<Rule>,
    /// In file order (`rateLimits`; absent = none).
    pub rate_limits: Vec<RateLimit>,
    /// Deviation alerts (`alerts`; absent = none).
    pub alerts: Option<Alerts>,
    /// The declared APIs (`apis`; absent = none), in file order.
    pub apis: Vec<Api>,
    /// Never in a file (the agent adds them, see `grants`): the last `grant_sources.len()`
    /// entries of `segments` are the address blocks of time-bound grants (`--from CIDR`),
    /// pseudo-segments that name no address (an address keeps its segment) and that only the
    /// grants' rules name. A packet the rest of the policy denies by default is judged again
    /// as if its source were the longest such block holding it.
    pub grant_sources: Vec<GrantSource>,
}

/// One of [`Policy::grant_sources`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSource {
    /// The identity every address of the block has in the policy (a segment or `world`), when
    /// it is one: the rate limits of that identity then bound the grant's flows too.
    pub identity: Option<SegRef>,
}

/// What the agent watches for, beyond the verdicts (see `alerts`): a baseline of who reaches
/// what, learned for `learn_seconds`, then `anomaly` events for what deviates from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alerts {
    /// How long the baseline is learned before deviations are reported.
    pub learn_seconds: u64,
    /// An identity reaching a service it never reached before.
    pub new_peer: bool,
    /// ... or a service it reaches on a protocol and port it never used.
    pub new_port: bool,
    /// One source denied on this many distinct (destination, port) within `scan_seconds` is a
    /// scan (0: off).
    pub scan_destinations: u64,
    pub scan_seconds: u64,
    /// At most one alert per identity and kind this often; the ones in between are counted in
    /// the next.
    pub interval_seconds: u64,
    /// An identity's packets or new flows in a window beyond this many times its baseline (for
    /// the hour of the day, where that has enough history) is a rate alert (0: off).
    pub rate_factor: u64,
    /// The history a baseline needs before rates are judged against it: of that hour of the
    /// day, else of all hours.
    pub rate_history_seconds: u64,
    /// The window rates are measured over.
    pub rate_window_seconds: u64,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            learn_seconds: 600,
            new_peer: true,
            new_port: true,
            scan_destinations: 20,
            scan_seconds: 10,
            interval_seconds: 60,
            rate_factor: 10,
            rate_history_seconds: 3600,
            rate_window_seconds: 60,
        }
    }
}

impl Policy {
    /// The name of a segment reference as the file spells it.
    pub fn seg_ref_name(&self, r: SegRef) -> String {
        match r {
            SegRef::Any => ANY_NAME.to_owned(),
            SegRef::World => WORLD_NAME.to_owned(),
            SegRef::Named(i) => match self.segments.get(i) {
                Some(s) => s.name.clone(),
                // Only reachable for a hand-built policy with a dangling index.
                None => format!("#{i}"),
            },
        }
    }

    /// The index of the named segment.
    pub fn segment_index(&self, name: &str) -> Option<usize> {
        self.segments.iter().position(|s| s.name == name)
    }

    /// The policy in the file format, as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing strings, numbers, lists and string-keyed maps cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The policy in the file format, as YAML.
    pub fn to_yaml(&self) -> String {
        match serde_saphyr::to_string(self) {
            Ok(s) => s,
            // Not expected; JSON is valid YAML, so this is still a correct answer.
            Err(_) => self.to_json(),
        }
    }
}

mod serialize;

#[cfg(test)]
mod tests;
