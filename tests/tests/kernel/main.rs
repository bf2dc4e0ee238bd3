//! The kernel tests: ONE test binary, a module per topic. They create network namespaces, load
//! the programs into the running kernel and attach them, start etcd members and agents: they
//! need root, and fail loudly without it (the harness panics, saying so, when a test creates
//! its first namespace or loads the datapath).
//!
//! Built only with the `privileged` feature, which `cargo xtask test` passes, so that a plain
//! `cargo test` (as any user) never builds nor runs them:
//!
//! ```text
//! cargo test --release -p integration-tests --features privileged --test kernel [FILTER]
//! ```
//!
//! Every test isolates itself by unique names (namespaces, interfaces, bpffs pins), so they run
//! in parallel on one machine.

#[path = "../common/bad_policy_corpus.rs"]
mod bad_policy_corpus;

mod agent;
mod alerts;
mod apis;
mod atomic;
mod audit;
mod bad_policies;
mod bench_compare;
mod deploy;
mod events;
mod failed_start;
mod fleet;
mod flood;
mod fragments;
mod grants;
mod hostile;
mod http;
mod inventory;
mod k8s_api;
mod k8s_netpol;
mod k8s_objects;
mod malformed;
mod matrix;
mod metrics;
mod node_mode;
mod pins;
mod policy_dir;
mod ratelimit;
mod ratelimit_traffic;
mod restart;
mod soak;
mod socket_auth;
mod stateful;
