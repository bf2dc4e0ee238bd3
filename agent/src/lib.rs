//! ztagent: the userspace agent. The binary (`src/bin/ztagent/`) is the daemon and the CLI; this
//! library holds what it is made of, one room per concern, with data flowing one way:
//!
//! ```text
//! inputs   sources ─> k8s ─> policy ─> kernel (map writer) ─> BPF maps ─> agent-ebpf programs
//! outputs  agent-ebpf (ring buffer) ─> events ─> observe ─> api ─> CLI, metrics
//! shared   agent-common (kernel/user #[repr(C)] types) · api (wire types) · store (state dir)
//!          · clock (the kernel's clock, RFC 3339)
//! glue     daemon (the one composition root) · bin/ztagent (the CLI)
//! ```
//!
//! - [`policy`] (PURE: no tokio, no aya): text -> positioned tree ([`policy::source`]) ->
//!   validated model -> compiled map image; lookups, the naive reference, `check`'s
//!   explanation, label selectors.
//! - [`k8s`] (PURE): Kubernetes objects -> one native policy. Depends on `policy` only.
//! - [`sources`]: where inputs come from (policy directory, objects directory, etcd, the
//!   Kubernetes API); each hands versions to the daemon's one reconcile.
//! - [`kernel`]: the only user of aya: load/attach/pin ([`kernel::datapath`]), the one map
//!   writer ([`kernel::mapwriter`]), node mode's interfaces ([`kernel::node`]), the readers of
//!   the kernel's counters and tables ([`kernel::flowcount`], [`kernel::counters`]).
//! - [`events`]: kernel events -> decoded records -> the hub that fans them out.
//! - [`observe`]: consumers of events, nothing flows back: inventory, alerts, suggest, the
//!   events file (sink), metrics.
//! - [`api`]: the control socket's contract: every wire type, client, server, peer-credential
//!   auth.
//! - [`store`]: the state directory (atomic JSON files, the last-known-good policy).
//! - [`daemon`]: the composition root: config, startup, reconcile, one handler per request,
//!   background tasks; grants ([`daemon::grants`]) are state the daemon applies to the policy.
//!   The fleet (etcd) is a source ([`sources::etcd`]), whose CLI side (`ztagent fleet`) uses
//!   the same module.
//!
//! # The layer rule
//!
//! A module imports only what lies to its left in its flow, plus the shared modules; only
//! `daemon` (and the binary) import across both flows. `layers` (a unit test) reads the
//! sources and fails on an edge the rule forbids:
//!
//! | module    | may import (besides itself)                         |
//! |-----------|-----------------------------------------------------|
//! | `clock`   | nothing                                             |
//! | `policy`  | nothing                                             |
//! | `k8s`     | policy                                              |
//! | `api`     | clock                                               |
//! | `store`   | policy                                              |
//! | `sources` | k8s, policy, api, store, clock                      |
//! | `kernel`  | policy, api, clock                                  |
//! | `events`  | policy, k8s, api, clock                             |
//! | `observe` | events, policy, k8s, api, store, clock              |
//! | `daemon`  | everything                                          |

pub mod api;
pub mod clock;
pub mod daemon;
pub mod events;
pub mod k8s;
pub mod kernel;
pub mod observe;
pub mod policy;
pub mod sources;
pub mod store;

#[cfg(test)]
mod layers;
