//! Consumers of events; nothing flows back into policy or the kernel: what has been seen
//! talking to what ([`inventory`]), anomalies ([`alerts`]), a policy learned from the
//! inventory ([`suggest`]), the events file ([`sink`]), the Prometheus endpoint ([`metrics`]).

pub mod alerts;
pub mod apis;
pub mod inventory;
pub mod metrics;
pub mod sink;
pub mod suggest;
