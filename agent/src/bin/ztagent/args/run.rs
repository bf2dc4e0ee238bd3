//! `ztagent run`'s arguments, grouped as its help shows them.
use super::*;

// `ztagent run`: the daemon's configuration, in groups.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub interfaces: Interfaces,
    #[command(flatten)]
    pub inputs: PolicyInputs,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = datapath::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub xdp_mode: Mode,
    /// Log level (error, warn, info, debug, trace), or a tracing filter.
    #[arg(long, env = "ZTAGENT_LOG", default_value = "info")]
    pub log: String,
    #[command(flatten)]
    pub limits: MapLimits,
    /// Recent events the agent keeps for `ztagent events`.
    #[arg(long, default_value_t = 10_000)]
    pub events_history: usize,
    /// Members of this group may use the control socket too (default: root only).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Where the last-known-good policy is kept (and restored from on restart).
    #[arg(long, default_value = ztagent::store::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub exports: Exports,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The interfaces `run` enforces: named ones, and (node mode) those matching a pattern.
#[derive(Args)]
pub struct Interfaces {
    /// An interface to enforce (ingress XDP + egress TC); repeat for several.
    #[arg(long = "iface", required_unless_present = "iface_patterns")]
    pub ifaces: Vec<String>,
    /// Node mode: enforce every interface whose name matches this glob (`*`, `?`,
    /// `[a-z]`), e.g. the pods' `veth*`, `lxc*` or `cali*`, as interfaces appear and go;
    /// each is guarded by anti-spoofing (sources: the node's routes out of it). Repeat for
    /// several; combines with --iface (those stay unguarded).
    #[arg(long = "iface-pattern", value_name = "GLOB")]
    pub iface_patterns: Vec<String>,
}

/// Where `run` takes its policy and the Kubernetes objects from.
#[derive(Args)]
pub struct PolicyInputs {
    /// The policy to install before attaching; without it, the policy already in the
    /// kernel is kept, or everything IP is dropped until one is pushed. A policy pushed since
    /// (`policy push`) is newer: a restart keeps it, with a warning, unless
    /// --policy-overrides-pushed.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// At start, install --policy FILE even over a newer policy pushed since (the default
    /// keeps the pushed one, the last-known-good, and warns that FILE was not installed).
    #[arg(long, requires = "policy")]
    pub policy_overrides_pushed: bool,
    /// Take the policy from this directory (e.g. a Kubernetes ConfigMap volume) and apply
    /// each new version; a broken version is rejected (logged, shown in `status`) and the
    /// policy in force stays. The file: policy.yaml, else policy.json, else the only
    /// *.yaml, *.yml or *.json file in DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "policy")]
    pub policy_dir: Option<PathBuf>,
    /// Take the policy from etcd: etcd://HOST:PORT[,HOST:PORT...]/PREFIX. Each new
    /// revision of PREFIX/policy is applied like a push; this host's status is kept under
    /// PREFIX/hosts/NAME (leased). Cut off from etcd, the policy in force stays.
    #[arg(long, value_name = "URL", conflicts_with_all = ["policy", "policy_dir"])]
    pub policy_source: Option<String>,
    /// This host's name in the fleet (its status key); default: the host name.
    #[arg(long, value_name = "NAME", requires = "policy_source")]
    pub fleet_host: Option<String>,
    #[command(flatten)]
    pub etcd_auth: EtcdAuth,
    /// Take the cluster inventory (Namespaces, Pods) and NetworkPolicies from the
    /// Kubernetes objects in this directory (*.yaml, *.yml, *.json, as `kubectl get -o yaml`
    /// prints them); every policy is translated with them, and each change of the
    /// directory is applied (a broken version is rejected, shown in `status`).
    #[arg(long, value_name = "DIR")]
    pub k8s_objects: Option<PathBuf>,
    /// Take the cluster inventory and NetworkPolicies from the Kubernetes API instead:
    /// watches of Pods, Namespaces and NetworkPolicies of all namespaces, as the pod's
    /// service account (or --kubeconfig); each change is applied as with --k8s-objects.
    #[arg(long, conflicts_with = "k8s_objects")]
    pub k8s_api: bool,
    /// The kubeconfig file for --k8s-api (its current context), instead of the service
    /// account.
    #[arg(long, value_name = "PATH", requires = "k8s_api")]
    pub kubeconfig: Option<PathBuf>,
}

/// The capacities of the kernel maps.
#[derive(Args)]
pub struct MapLimits {
    /// Capacity of the CIDR and host-address maps (both policy slots together: a policy
    /// may use half).
    #[arg(long, default_value_t = Limits::default().cidrs)]
    pub max_cidrs: u32,
    /// Capacity of the segment-pair map (both policy slots together).
    #[arg(long, default_value_t = Limits::default().pairs)]
    pub max_pairs: u32,
    /// Capacity of the port map (both policy slots together).
    #[arg(long, default_value_t = Limits::default().ports)]
    pub max_port_entries: u32,
    /// Capacity of the connection-tracking map (two entries per flow).
    #[arg(long, default_value_t = Limits::default().conntrack)]
    pub max_conntrack: u32,
    /// Capacity of the per-address rate-limit buckets (LRU: the oldest are evicted).
    #[arg(long, default_value_t = Limits::default().addr_buckets)]
    pub max_rate_buckets: u32,
    /// Size of the kernel's event ring buffer in bytes (a power of two).
    #[arg(long, default_value_t = Limits::default().events_bytes)]
    pub events_ring_bytes: u32,
}

impl MapLimits {
    /// The datapath's limits: one capacity for CIDRs and host addresses, the rest as default.
    pub fn to_limits(&self) -> Limits {
        Limits {
            cidrs: self.max_cidrs,
            hosts: self.max_cidrs,
            pairs: self.max_pairs,
            ports: self.max_port_entries,
            conntrack: self.max_conntrack,
            addr_buckets: self.max_rate_buckets,
            events_bytes: self.events_ring_bytes,
            ..Limits::default()
        }
    }
}

/// What `run` serves and writes for others: metrics and the events file.
#[derive(Args)]
pub struct Exports {
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464: the text format
    /// 0.0.4, or OpenMetrics when the scraper's Accept header asks for it. No authentication:
    /// keep it on loopback or a management network. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Append every event to this file as one JSON line (the schema of `ztagent events
    /// -o json`), rotated by size into PATH.1 .. PATH.3.
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<PathBuf>,
    /// Rotate the events file when a line would take it past this many bytes.
    #[arg(long, value_name = "N", requires = "events_file", default_value_t = ztagent::observe::sink::DEFAULT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub events_file_max_bytes: u64,
}
