//! The unprivileged tests: the CLI offline (`ztagent policy validate`, `check --policy`,
//! `k8s translate`), as a user meets it. They need no root, no network namespace and no BPF:
//! this is the test binary a plain `cargo test` runs. The kernel tests are `tests/kernel/`.
//!
//! The `ztagent` binary they run is built first by the cargo that runs them
//! ([`integration_tests::build_bin`]), so that a plain `cargo test` in a fresh checkout passes.

#[path = "../common/bad_policy_corpus.rs"]
mod bad_policy_corpus;

mod bad_policies;
mod cli_reference;
mod help;
mod k8s_translate;
mod offline;
