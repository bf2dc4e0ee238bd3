//! Policy model, validation and compiler (pure, no kernel access).
//!
//! - [`parse`] / [`load`]: policy file (YAML, or JSON) -> validated [`Policy`], or every
//!   problem as [`Diagnostics`] with line and column.
//! - [`compile`]: [`Policy`] -> [`CompiledPolicy`], the contents of the kernel maps laid out
//!   as `agent_common` defines them (without the slot, which the caller adds).
//! - [`CompiledPolicy::lookup`] performs the datapath's lookups on the compiled maps;
//!   [`evaluate_naive`] is the reference meaning of a policy. Tests check they agree.
//!
//! # File format (version 1)
//!
//! ```yaml
//! version: 1
//! defaultAction: deny        # deny | allow; absent means deny
//! segments:                  # name -> CIDRs; an address belongs to the longest prefix
//!   frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
//!   payments: { cidrs: [10.20.2.10/32] }
//! rules:
//!   - name: frontend-calls-payments
//!     description: optional text
//!     from: [frontend]       # segment names; "world" = in no segment; "*" = any address
//!     to: [payments]
//!     ports: ["443/tcp", "8000-8099/tcp", "53/udp", "tcp", "udp", "icmp"]  # absent = all
//!     action: allow          # a matching deny always beats a matching allow
//! apis:                      # optional: the TCP ports whose flows the datapath parses
//!   - name: payments-api     # optional; unique when given
//!     segment: payments      # the servers: one named segment (not "*" or world)
//!     ports: ["8080/tcp", "8443-8444/tcp"]   # TCP ports and ranges only
//!     protocol: http         # plaintext HTTP/1.x (the only protocol for now)
//! rateLimits:                # optional; bounds what the rules (or defaultAction) allow
//!   - name: frontend-to-payments
//!     from: frontend         # ONE source segment, or world
//!     to: [payments]         # absent = every destination ("*" and world allowed)
//!     ports: ["443/tcp"]     # as in rules; absent = every port and protocol
//!     packets:     { rate: 2000, per: second, burst: 400 }   # per: second | minute | hour
//!     connections: { rate: 600, per: minute, burst: 20 }     # new TCP connections, UDP flows
//!     bytes:       { rate: 50000000, per: second, burst: 5000000 }  # burst >= 1500
//!     scope: segment         # segment (default): one bucket set; address: one per address
//! ```
//!
//! A packet counts against the first rate limit (file order) that matches it; a rate limit
//! never allows what the rules deny. See [`CompiledLimit`] and [`Bucket`] for what the
//! datapath gets.
//!
//! # Limits
//!
//! In YAML and JSON alike, a policy document may nest lists and mappings at most 64 levels
//! deep (a policy needs 6) and hold at most 4,000,000 values (scalars, lists and mappings, keys
//! included; 100,000 rules over 100,000 CIDRs take about 1.6 million). Beyond either limit, a
//! single diagnostic says so, where the limit is crossed. At most 1,000 problems are reported
//! (the first in the file), then one diagnostic says how many more there are.

mod compile;
mod eval;
mod explain;
mod model;
pub mod selector;
pub(crate) mod source;
mod validate;

#[cfg(test)]
mod tests;

pub use agent_common::{Addr, MAX_GRANTS, SegmentInfo, Verdict};
pub use compile::{Bucket, CompiledLimit, CompiledPolicy, PortEntry, Summary, compile, limit_fingerprint};
pub(crate) use compile::{PORT_SPACE, cidr_key};
pub(crate) use eval::mask;
pub use eval::{Decision, Lookup, addr16, evaluate_naive, port_key};
pub use explain::{EndpointError, Explanation, explain, segment_address};
pub use model::{
    ANY_NAME, Action, Alerts, Api, ApiProtocol, BucketSpec, GrantSource, LimitScope, MAX_RATE, MAX_REFILL_SECONDS,
    MIN_BYTES_BURST, Mode, POLICY_VERSION, Per, PodSelector, Policy, PortSpec, PortSpecError, Proto, RateLimit, Rule,
    SegRef, Segment, WORLD_NAME,
};
pub(crate) use source::diag::utf8_diagnostic;
pub use source::diag::{Diagnostic, Diagnostics};
pub use validate::{load, parse};
