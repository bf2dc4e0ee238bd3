//! The kernel tests' harness, one module per concern. Every resource has a unique name and a
//! guard that removes it on drop, also when a test fails; traffic goes only between namespaces
//! the test created.

pub mod agent;
pub mod bpf;
pub mod etcd;
pub mod frames;
pub mod k8s;
pub mod metrics;
pub mod netns;
pub mod nginx;
pub mod policies;
pub mod probes;
pub mod prometheus;
pub mod servers;
pub mod topology;
pub mod util;
