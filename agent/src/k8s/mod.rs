//! Kubernetes: the cluster inventory (namespaces, pods), NetworkPolicy (networking.k8s.io/v1)
//! and their translation into one flattened native [`Policy`] that the existing compiler and
//! datapath enforce (the kernel knows nothing of Kubernetes).
//!
//! - [`load_objects`] / [`parse_objects`]: Kubernetes objects as `kubectl get pods,namespaces,
//!   networkpolicies -A -o yaml` prints them (a `v1 List`), multi-document YAML of the same
//!   objects, or JSON, in any mix and order, into a [`Cluster`] and [`NetworkPolicy`]s.
//!   Unknown kinds are skipped with a warning; every problem is a `FILE:LINE:COL` diagnostic.
//! - [`translate`]: (native policy, cluster, NetworkPolicies) -> native policy (see `netpol`
//!   for the semantics and the construction). Pure and deterministic.
//! - [`Inventory`]: what the daemon keeps of the cluster to name pod addresses (`ns/pod`) in
//!   `check` and events.
//!
//! Sources feed [`crate::daemon`]'s one reconcile entry point with a [`Cluster`] and the
//! NetworkPolicies: the `--k8s-objects DIR` directory (see `crate::sources`), or the Kubernetes
//! API (`--k8s-api`, see [`api`]), whose objects go through the same reader.

pub mod netpol;
pub mod objects;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::selector::{LabelSelector, Labels};
pub use netpol::{TranslateError, Translation, translate};
pub use objects::{Objects, ObjectsError, load_dir, load_objects, parse_objects};

/// The label the API server puts on every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol of a container port or a NetworkPolicy port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    /// Accepted, never enforced as a port: the datapath keys protocols other than TCP, UDP and
    /// ICMP without a port, so an SCTP port of a NetworkPolicy allows nothing (a warning says
    /// so). SCTP never matches TCP or UDP.
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A container port of a pod: what a named port of a NetworkPolicy resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as the inventory knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIP` and `status.podIPs`, without duplicates, in that order.
    pub ips: Vec<IpAddr>,
    /// The ports of every container.
    pub ports: Vec<ContainerPort>,
    /// `spec.hostNetwork: true`: the pod uses the node's addresses.
    pub host_network: bool,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`).
    pub phase: Option<String>,
}

impl Pod {
    /// Whether the pod's addresses are its own (a NetworkPolicy endpoint): it has an address,
    /// does not use the node's (`hostNetwork`), and has not terminated (`Succeeded`, `Failed`).
    pub fn is_endpoint(&self) -> bool {
        !self.ips.is_empty() && !self.host_network && !matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The inventory: namespaces and pods, each sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    /// Sorted by (namespace, name).
    pub pods: Vec<Pod>,
}

impl Cluster {
    /// The labels of namespace `ns` as selectors see them: its own, plus
    /// `kubernetes.io/metadata.name: <ns>`, which the API server sets on every namespace (also
    /// for a namespace the inventory has pods of but no object for).
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        let mut labels = self.namespaces.get(ns).map(|n| n.labels.clone()).unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned());
        labels
    }

    /// Sorts the pods (sources may add them in any order).
    pub fn sort(&mut self) {
        self.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    }
}

/// The endpoint pods' addresses, named `ns/pod`: what `check` and events show beside the
/// segment. An address two pods claim is named after the first (by namespace and name), as
/// the translation assigns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pods: HashMap<IpAddr, String>,
}

impl Inventory {
    pub fn of(cluster: &Cluster) -> Inventory {
        let mut pods = HashMap::new();
        for p in cluster.pods.iter().filter(|p| p.is_endpoint()) {
            for ip in &p.ips {
                pods.entry(*ip).or_insert_with(|| p.id());
            }
        }
        Inventory { pods }
    }

    /// `ns/pod` of the pod at `ip`, if one is there.
    pub fn pod(&self, ip: IpAddr) -> Option<&str> {
        self.pods.get(&ip).map(String::as_str)
    }

    /// An address of the pod `ns/pod` (the lowest, of the family `v4` says when given).
    pub fn address_of(&self, pod: &str, v4: Option<bool>) -> Option<IpAddr> {
        self.pods
            .iter()
            .filter(|(ip, id)| id.as_str() == pod && v4.is_none_or(|v4| ip.is_ipv4() == v4))
            .map(|(ip, _)| *ip)
            .min_by_key(|ip| (!ip.is_ipv4(), *ip))
    }

    /// The pods (`ns/pod`) that have an address.
    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.pods.values().map(String::as_str).collect()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// Which pods a peer of a NetworkPolicy rule names, or which addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `podSelector` alone: pods of the policy's namespace; `namespaceSelector` alone: every
    /// pod of the selected namespaces; both: the selected pods of the selected namespaces.
    Pods { namespaces: Option<LabelSelector>, pods: Option<LabelSelector> },
    /// Addresses in `cidr` and in none of `except` (pod addresses included).
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// A port of a NetworkPolicy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    /// Resolved on the destination pod's container ports (name and protocol).
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetpolPort {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    /// With a numeric `port`: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

/// One ingress or egress rule: traffic from (to) any of `peers` on any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetpolRule {
    /// Empty: every source (destination), pods or not.
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol.
    pub ports: Vec<NetpolPort>,
}

/// A NetworkPolicy (networking.k8s.io/v1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// Pods of `namespace` it applies to.
    pub pod_selector: LabelSelector,
    /// `policyTypes` (default: Ingress, plus Egress when there is at least one egress rule).
    pub ingress_type: bool,
    pub egress_type: bool,
    pub ingress: Vec<NetpolRule>,
    pub egress: Vec<NetpolRule>,
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
