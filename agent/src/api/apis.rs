//! `ztagent api inventory`'s wire types: the HTTP endpoints seen on declared ports.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one endpoint has seen (see docs/api.md "Inventory" and docs/json.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiEndpoint {
    pub dst_segment: String,
    /// The destination pod (`namespace/name`), with Kubernetes inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    pub port: u16,
    pub method: String,
    /// The path with each numeric, UUID or long hex segment replaced by `{id}`.
    pub route: String,
    /// The paths were longer than the kernel keeps: `route` is their beginning's template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    pub requests: u64,
    /// Requests per status class: `2xx`, `3xx`, `4xx`, `5xx`, `other` (1xx, or no status seen).
    pub status: BTreeMap<String, u64>,
    /// From the request's first byte to the response's first byte, estimated from a log-scale
    /// histogram (within about 12%); absent when no request had a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_us: Option<u64>,
    /// Callers (`segment`, or `segment namespace/pod`) and their requests.
    pub callers: BTreeMap<String, u64>,
    /// Callers forgotten to stay within the bound per endpoint (their counts left `callers`).
    pub callers_evicted: u64,
    /// RFC 3339, UTC, milliseconds.
    pub first_seen: String,
    pub last_seen: String,
}

/// The API inventory: endpoints keyed by `SEGMENT[(POD)]:PORT METHOD ROUTE` (`...` after a
/// truncated route), endpoints evicted and the bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiListing {
    pub endpoints: BTreeMap<String, ApiEndpoint>,
    pub evicted: u64,
    pub capacity: usize,
}
