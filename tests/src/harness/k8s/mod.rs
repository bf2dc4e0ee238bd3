//! The upstream Kubernetes NetworkPolicy e2e model (kubernetes test/e2e/network/netpol), live:
//! three namespaces x, y, z with pods a, b, c each, every pod serving 80 and 81 on TCP and UDP,
//! joined to one node as a CNI joins them, probed for real as a 9x9 truth table per port and
//! protocol; the cluster objects as `kubectl get pods,namespaces -A -o yaml` prints them; and the
//! reader of the cases in tests/data/k8s (see its README.md for the format).
//!
//! The node: a network namespace with one veth per pod (the pod side is its `eth0`, the node
//! side a name starting with a prefix unique to this topology, so that `<prefix>*` matches
//! exactly these), a /32 route per pod via its veth, proxy ARP and forwarding, as Calico does.
//! Each pod has its address as a /32 and the pod network on-link, so it ARPs for every peer
//! and the node answers. Nothing else is routed: traffic stays between these namespaces.

mod cases;
mod cluster;
pub mod configmap;
pub mod fake_api;
mod kubectl_yaml;
mod model;
pub mod shop;

pub use cases::*;
pub use cluster::*;
pub use kubectl_yaml::*;
pub use model::*;
