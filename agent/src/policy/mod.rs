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
//! ```

mod compile;
mod diag;
mod eval;
mod model;
mod node;
mod validate;

#[cfg(test)]
mod tests;

pub use agent_common::{Addr, SegmentInfo, Verdict};
pub use compile::{CompiledPolicy, PortEntry, Summary, compile};
pub use diag::{Diagnostic, Diagnostics};
pub use eval::{Decision, Lookup, addr16, evaluate_naive, port_key};
pub use model::{
    ANY_NAME, Action, POLICY_VERSION, Policy, PortSpec, PortSpecError, Proto, Rule, SegRef,
    Segment, WORLD_NAME,
};
pub use validate::{load, parse};
