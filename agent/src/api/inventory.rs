//! `ztagent inventory`'s wire types: what has been seen talking to what.
use serde::{Deserialize, Serialize};

/// One kind of traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// The caller: a segment, or `world PREFIX`.
    pub src: String,
    /// The service: a segment, or `world PREFIX`.
    pub dst: String,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub proto: String,
    /// The destination port (0 for ICMP and other protocols).
    pub port: u16,
}

/// What was seen of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// Unix times (seconds).
    pub first_seen: f64,
    pub last_seen: f64,
    /// New flows the policy allowed.
    pub allowed_flows: u64,
    /// New flows the policy would deny (audit mode), passed.
    pub would_deny_flows: u64,
    /// Packets denied (by a rule, by default, or revoked).
    pub denied_packets: u64,
    /// Packets over a rate limit (dropped, or passed in audit mode).
    pub rate_limited_packets: u64,
    /// Packets and bytes (frame lengths) of its allowed and would-deny flows, both directions,
    /// as the enforced interfaces passed them (the kernel's per-flow counters).
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
    /// The rule that last allowed a flow of it (`policy suggest` names the unused ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// An entry as `ztagent inventory` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    #[serde(flatten)]
    pub key: Key,
    #[serde(flatten)]
    pub seen: Seen,
}

/// The inventory and how many entries it evicted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<Row>,
    pub evicted: u64,
    pub capacity: usize,
}
