//! `ztagent`: the daemon (`run`) and the CLI that drives it, in one binary.
use std::{
    io::IsTerminal,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use aya::programs::xdp::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use ztagent::{
    api::{self as control, CheckResult, EventFilter, EventRecord, Flow, Reply, Request},
    daemon,
    kernel::datapath::{self, Limits, PinLayout},
    policy,
};

#[derive(Parser)]
#[command(name = "ztagent", version, about = "Zero-trust enforcement agent: identity microsegmentation in the kernel (XDP + TC)")]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "ZTAGENT_SOCKET", default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup: the size of `Run` (all of the daemon's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the enforcement daemon on the given interfaces.
    Run {
        /// An interface to enforce (ingress XDP + egress TC); repeat for several.
        #[arg(long = "iface", required_unless_present = "iface_patterns")]
        ifaces: Vec<String>,
        /// Node mode: enforce every interface whose name matches this glob (`*`, `?`,
        /// `[a-z]`), e.g. the pods' `veth*`, `lxc*` or `cali*`, as interfaces appear and go;
        /// each is guarded by anti-spoofing (sources: the node's routes out of it). Repeat for
        /// several; combines with --iface (those stay unguarded).
        #[arg(long = "iface-pattern", value_name = "GLOB")]
        iface_patterns: Vec<String>,
        /// The policy to install before attaching; without it, the policy already in the
        /// kernel is kept, or everything IP is dropped until one is pushed.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Take the policy from this directory (e.g. a Kubernetes ConfigMap volume) and apply
        /// each new version; a broken version is rejected (logged, shown in `status`) and the
        /// policy in force stays. The file: policy.yaml, else policy.json, else the only
        /// *.yaml, *.yml or *.json file in DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "policy")]
        policy_dir: Option<PathBuf>,
        /// Take the policy from etcd: etcd://HOST:PORT[,HOST:PORT...]/PREFIX. Each new
        /// revision of PREFIX/policy is applied like a push; this host's status is kept under
        /// PREFIX/hosts/NAME (leased). Cut off from etcd, the policy in force stays.
        #[arg(long, value_name = "URL", conflicts_with_all = ["policy", "policy_dir"])]
        policy_source: Option<String>,
        /// This host's name in the fleet (its status key); default: the host name.
        #[arg(long, value_name = "NAME", requires = "policy_source")]
        fleet_host: Option<String>,
        #[command(flatten)]
        etcd_auth: EtcdAuth,
        /// Take the cluster inventory (Namespaces, Pods) and NetworkPolicies from the
        /// Kubernetes objects in this directory (*.yaml, *.yml, *.json, as `kubectl get -o yaml`
        /// prints them); every policy is translated with them, and each change of the
        /// directory is applied (a broken version is rejected, shown in `status`).
        #[arg(long, value_name = "DIR")]
        k8s_objects: Option<PathBuf>,
        /// Take the cluster inventory and NetworkPolicies from the Kubernetes API instead:
        /// watches of Pods, Namespaces and NetworkPolicies of all namespaces, as the pod's
        /// service account (or --kubeconfig); each change is applied as with --k8s-objects.
        #[arg(long, conflicts_with = "k8s_objects")]
        k8s_api: bool,
        /// The kubeconfig file for --k8s-api (its current context), instead of the service
        /// account.
        #[arg(long, value_name = "PATH", requires = "k8s_api")]
        kubeconfig: Option<PathBuf>,
        /// bpffs directory for the pinned maps and links.
        #[arg(long, default_value = datapath::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        xdp_mode: Mode,
        /// Log level (error, warn, info, debug, trace), or a tracing filter.
        #[arg(long, env = "ZTAGENT_LOG", default_value = "info")]
        log: String,
        /// Capacity of the CIDR and host-address maps (both policy slots together: a policy
        /// may use half).
        #[arg(long, default_value_t = Limits::default().cidrs)]
        max_cidrs: u32,
        /// Capacity of the segment-pair map (both policy slots together).
        #[arg(long, default_value_t = Limits::default().pairs)]
        max_pairs: u32,
        /// Capacity of the port map (both policy slots together).
        #[arg(long, default_value_t = Limits::default().ports)]
        max_port_entries: u32,
        /// Capacity of the connection-tracking map (two entries per flow).
        #[arg(long, default_value_t = Limits::default().conntrack)]
        max_conntrack: u32,
        /// Capacity of the per-address rate-limit buckets (LRU: the oldest are evicted).
        #[arg(long, default_value_t = Limits::default().addr_buckets)]
        max_rate_buckets: u32,
        /// Size of the kernel's event ring buffer in bytes (a power of two).
        #[arg(long, default_value_t = Limits::default().events_bytes)]
        events_ring_bytes: u32,
        /// Recent events the agent keeps for `ztagent events`.
        #[arg(long, default_value_t = 10_000)]
        events_history: usize,
        /// Members of this group may use the control socket too (default: root only).
        #[arg(long)]
        socket_group: Option<String>,
        /// Where the last-known-good policy is kept (and restored from on restart).
        #[arg(long, default_value = ztagent::store::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        // --- metrics and event files
        /// Serve Prometheus (OpenMetrics) metrics at http://ADDR/metrics, e.g. 127.0.0.1:9090.
        /// No authentication: keep it on loopback or a management network. Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Append every event to this file as one JSON line (the schema of `ztagent events
        /// -o json`), rotated by size into PATH.1 .. PATH.3.
        #[arg(long, value_name = "PATH")]
        events_file: Option<PathBuf>,
        /// Rotate the events file when a line would take it past this many bytes.
        #[arg(long, value_name = "N", requires = "events_file", default_value_t = ztagent::observe::sink::DEFAULT_MAX_BYTES,
              value_parser = clap::value_parser!(u64).range(1..))]
        events_file_max_bytes: u64,
        // ---
    },
    /// Work with policy files and the policy in force.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The verdict for a flow, and the rule that decides it.
    Check {
        #[arg(long)]
        src: IpAddr,
        #[arg(long)]
        dst: IpAddr,
        /// Destination port (required for tcp and udp).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// Judge against this file instead of the running agent's policy.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// What the kernel decided: recent events, or (-f) the live stream.
    Events {
        /// Follow the live stream after the recent events.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only these verdicts (repeat for several).
        #[arg(long = "verdict", value_parser = ["allowed", "denied", "rate-limited", "would-deny", "would-rate-limit", "granted", "grant-ended", "anomaly"])]
        verdicts: Vec<String>,
        /// Only events from this source segment.
        #[arg(long)]
        from: Option<String>,
        /// Only events to this destination segment.
        #[arg(long)]
        to: Option<String>,
        /// Only events to this destination port.
        #[arg(long)]
        port: Option<u16>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The agent's interfaces, policy revision and packet counters.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Allow a flow for a while: an exception that ends by itself, in the kernel.
    Grant {
        /// The source: a segment, `world`, "*", or an address block (10.20.9.0/24, or one
        /// address) whose addresses keep their segment.
        #[arg(long)]
        from: String,
        /// The destination: a segment, `world` or "*".
        #[arg(long)]
        to: String,
        /// A port spec as in a rule (443/tcp, 8000-8099/tcp, udp, icmp); repeat for several;
        /// absent = every port and protocol.
        #[arg(long = "port")]
        ports: Vec<String>,
        /// How long: 90s, 15m, 2h, 1d (at most 7 days).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why: reported with every event about the grant.
        #[arg(long)]
        reason: String,
    },
    /// The grants in force; --revoke ends one now.
    Grants {
        #[arg(long, value_name = "ID")]
        revoke: Option<u32>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// What has been seen talking to what: every (source identity, destination service,
    /// protocol, port), when, and what the policy did with it.
    Inventory {
        /// Only what was seen in this last while (90s, 15m, 2h, 1d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Kubernetes: NetworkPolicies and label-selected segments.
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Distribute policy to a fleet of agents through etcd (`run --policy-source etcd://...`).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Detach and unpin everything the agent left under the pin directory.
    Uninstall {
        #[arg(long, default_value = datapath::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file offline; prints FILE:LINE:COL: message for each problem.
    Validate { file: PathBuf },
    /// Validate a policy file and install it in the running agent, atomically.
    Push { file: PathBuf },
    /// The least policy that allows exactly what the agent's inventory saw allowed (or
    /// would-deny), each rule commented with what it was learned from; compared with the policy
    /// in force (or --base FILE): rules to add, rules unused in the window.
    Suggest {
        /// Only what was seen in this last while (90s, 15m, 2h, 1d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Leave out what was seen in fewer flows.
        #[arg(long, value_name = "N", default_value_t = 1)]
        min_flows: u64,
        /// Compare with this policy file instead of the policy in force.
        #[arg(long, value_name = "FILE")]
        base: Option<PathBuf>,
    },
    /// Print the policy in force.
    Get {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
}

#[derive(Subcommand)]
enum K8sCommand {
    /// Print the native policy the agent would enforce for these Kubernetes objects
    /// (Namespaces, Pods, NetworkPolicies: `kubectl get -o yaml` lists, multi-document YAML or
    /// JSON, in any mix and order; a directory stands for its *.yaml, *.yml and *.json files)
    /// and the native policy; deterministic. Problems are printed as FILE:LINE:COL and nothing
    /// is printed on stdout then; warnings go to stderr.
    Translate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The native policy to combine them with (default: `version: 1`, nothing allowed).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Validate a policy file and write it as the fleet's next revision (refused if someone
    /// else pushed since the base revision).
    Push {
        file: PathBuf,
        /// The fleet: etcd://HOST:PORT[,HOST:PORT...]/PREFIX.
        #[arg(long, value_name = "URL", env = "ZTAGENT_ETCD")]
        etcd: String,
        /// The fleet revision this push replaces (default: the newest, read just before).
        #[arg(long, value_name = "REVISION")]
        base: Option<i64>,
        #[command(flatten)]
        auth: EtcdAuth,
    },
    /// Every host's applied revision, and which are behind or rejected the newest.
    Status {
        #[arg(long, value_name = "URL", env = "ZTAGENT_ETCD")]
        etcd: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        auth: EtcdAuth,
    },
}

/// How to log in to etcd.
#[derive(clap::Args, Clone)]
struct EtcdAuth {
    /// etcd user name (with --etcd-password).
    #[arg(long, value_name = "NAME", requires = "etcd_password")]
    etcd_user: Option<String>,
    #[arg(long, value_name = "PASSWORD", env = "ZTAGENT_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
    /// Speak TLS to etcd, trusting this CA (PEM) for the members' certificates.
    #[arg(long, value_name = "FILE")]
    etcd_cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for members that require client certificates.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdAuth {
    fn target(self, url: &str) -> Result<ztagent::sources::etcd::Target, String> {
        let tls = (self.etcd_cacert.is_some() || self.etcd_cert.is_some())
            .then(|| ztagent::sources::etcd::TlsFiles { ca: self.etcd_cacert, cert: self.etcd_cert.zip(self.etcd_key) });
        let user = self.etcd_user.zip(self.etcd_password);
        ztagent::sources::etcd::Target::parse(url, user, tls.as_ref()).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    let socket = cli.socket;
    match cli.command {
        Command::Run {
            ifaces,
            iface_patterns,
            policy,
            pin_path,
            xdp_mode,
            log,
            max_cidrs,
            max_pairs,
            max_port_entries,
            max_conntrack,
            max_rate_buckets,
            events_ring_bytes,
            events_history,
            socket_group,
            state_dir,
            metrics_addr,
            events_file,
            events_file_max_bytes,
            policy_dir,
            policy_source,
            fleet_host,
            etcd_auth,
            k8s_objects,
            k8s_api,
            kubeconfig,
        } => {
            init_logging(&log);
            let fleet = match policy_source {
                Some(url) => Some((etcd_auth.target(&url)?, fleet_host.unwrap_or_else(ztagent::sources::etcd::hostname))),
                None => None,
            };
            let access = ztagent::api::auth::Access::new(socket_group.as_deref()).map_err(|e| e.to_string())?;
            let iface_patterns = iface_patterns
                .iter()
                .map(|p| ztagent::kernel::node::Pattern::new(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let cfg = daemon::Config {
                ifaces,
                iface_patterns,
                policy,
                socket,
                pins: PinLayout::new(pin_path),
                xdp_mode: match xdp_mode {
                    Mode::Auto => XdpMode::Default,
                    Mode::Native => XdpMode::Driver,
                    Mode::Generic => XdpMode::Skb,
                },
                limits: Limits {
                    cidrs: max_cidrs,
                    hosts: max_cidrs,
                    pairs: max_pairs,
                    ports: max_port_entries,
                    conntrack: max_conntrack,
                    addr_buckets: max_rate_buckets,
                    events_bytes: events_ring_bytes,
                    ..Limits::default()
                },
                events_history,
                access,
                state_dir,
                metrics_addr,
                events_file,
                events_file_max_bytes,
                policy_dir,
                fleet,
                k8s_objects,
                k8s_api: k8s_api.then_some(ztagent::sources::k8s_api::ApiConfig { kubeconfig }),
            };
            daemon::run(cfg).await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Validate { file }) => match policy::load(&file) {
            Ok(p) => {
                let s = policy::compile(&p).summary();
                println!("{}: valid ({s})", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(d) => {
                eprintln!("{d}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Policy(PolicyCommand::Push { file }) => {
            // Validate locally first, exactly as `policy validate` does (positions relative to
            // the user's file, also for unreadable bytes); the agent validates again (it trusts
            // no client).
            if let Err(d) = policy::load(&file) {
                eprintln!("{d}");
                return Ok(ExitCode::FAILURE);
            }
            let source = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let origin = file.display().to_string();
            match call(&socket, &Request::Push { origin, source }).await? {
                Reply::Pushed(r) => {
                    println!(
                        "revision {}: {} segments, {} rules, {} map entries written",
                        r.revision, r.segments, r.rules, r.entries
                    );
                    Ok(ExitCode::SUCCESS)
                }
                other => unexpected(other),
            }
        }
        Command::Policy(PolicyCommand::Get { output }) => match call(&socket, &Request::Get).await? {
            Reply::Policy { revision, policy } => {
                if output == Format::Json {
                    println!("{}", serde_json::json!({ "revision": revision, "policy": policy }));
                } else {
                    let p: policy::Policy = policy::parse(&policy.to_string(), "agent")
                        .map_err(|d| format!("the agent sent a policy this CLI cannot read:\n{d}"))?;
                    println!("# revision: {revision}\n{}", p.to_yaml());
                }
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
        Command::Check { src, dst, port, proto, policy: file, output } => {
            let (proto, port) = match (proto, port) {
                (Proto::Icmp, _) => (agent_common::PROTO_ICMP, agent_common::ICMP_ECHO_REQUEST),
                (Proto::Tcp, Some(p)) => (agent_common::PROTO_TCP, p),
                (Proto::Udp, Some(p)) => (agent_common::PROTO_UDP, p),
                (_, None) => return Err("--port is required for tcp and udp".into()),
            };
            if (src.is_ipv4()) != (dst.is_ipv4()) {
                return Err("--src and --dst must be of the same address family".into());
            }
            let flow = Flow { src, dst, proto, port };
            let result = match file {
                Some(path) => {
                    let p = policy::load(&path).map_err(|d| format!("the policy is invalid:\n{d}"))?;
                    daemon::check(&policy::compile(&p), &flow)
                }
                None => match call(&socket, &Request::Check(flow)).await? {
                    Reply::Check(r) => r,
                    other => return unexpected(other),
                },
            };
            print_check(&result, output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { follow, verdicts, from, to, port, output } => {
            let filter = EventFilter { verdicts, from, to, port };
            let mut lines =
                control::stream(&socket, &Request::Events { follow, filter }).await.map_err(|e| e.to_string())?;
            let colour = std::io::stdout().is_terminal();
            while let Some(line) = lines.next_line().await.map_err(|e| format!("the agent's stream broke: {e}"))? {
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| format!("the agent sent something unreadable: {e}"))?;
                if let Some(message) = v.get("message").and_then(|m| m.as_str()) {
                    return Err(message.to_string());
                }
                if let Some(n) = v.get("missed").and_then(|m| m.as_u64()) {
                    if output == Output::Json {
                        println!("{line}");
                    }
                    eprintln!("ztagent: this client fell behind and missed {n} events");
                    continue;
                }
                if output == Output::Json {
                    println!("{line}");
                } else {
                    let r: EventRecord = serde_json::from_value(v).map_err(|e| format!("unexpected event: {e}"))?;
                    println!("{}", event_line(&r, colour));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { output } => match call(&socket, &Request::Status).await? {
            Reply::Status(s) => {
                if output == Output::Json {
                    println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
                } else {
                    println!("policy revision: {} ({})", s.revision, s.mode);
                    println!("pin path: {}\nxdp mode: {}", s.pin_path, s.xdp_mode);
                    for i in &s.interfaces {
                        let how = match &i.pattern {
                            Some(p) => format!(" (pattern {p}, guarded)"),
                            None => String::new(),
                        };
                        println!("interface {}{how}: ingress {:?}, egress {:?}", i.name, i.ingress, i.egress);
                        if i.guarded {
                            println!("  allowed sources    {}", i.sources.join(", "));
                        }
                    }
                    for m in &s.maps {
                        println!("map {:<16} {} of {} entries", m.map, m.entries, m.capacity);
                    }
                    println!("counters:");
                    for (name, n) in &s.counters {
                        println!("  {name:<18} {n}");
                    }
                    for l in &s.limits {
                        let buckets = [("packets", &l.packets), ("connections", &l.connections), ("bytes", &l.bytes)]
                            .iter()
                            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
                            .collect::<Vec<_>>()
                            .join("; ");
                        println!("rate limit {} (scope {}): {buckets}", l.name, l.scope);
                        if let Some(t) = l.packet_tokens {
                            println!("  packet tokens now  {t:.1}");
                        }
                        if l.scope == "address" {
                            println!("  address buckets    {} live, {} evicted", l.address_buckets, l.evicted);
                        }
                        println!("  packets            {} admitted, {} dropped", l.packets_passed, l.packets_dropped);
                        println!("  connections        {} admitted, {} dropped", l.connections_passed, l.connections_dropped);
                        println!("  bytes              {} admitted, {} dropped", l.bytes_passed, l.bytes_dropped);
                    }
                    // --- policy directory
                    if let Some(p) = s.policy_source.as_ref().filter(|p| p.connected.is_some()) {
                        let link = if p.connected == Some(true) { "connected" } else { "disconnected, retrying" };
                        let state = if p.up_to_date { "up to date" } else { "newest revision rejected" };
                        println!("fleet {} ({link}, {state}): fleet revision {}", p.dir, p.fleet_revision.map_or("none".into(), |r| r.to_string()));
                        if let Some(r) = &p.last_rejection {
                            println!("  last rejected      {} {}", r.time, r.message.lines().next().unwrap_or(""));
                        }
                    } else if let Some(p) = &s.policy_source {
                        let state = if p.up_to_date { "up to date" } else { "newest version rejected" };
                        println!("policy directory {} ({state}): {}", p.dir, p.file.as_deref().unwrap_or("no file yet"));
                        if let Some(a) = &p.last_applied {
                            println!("  last applied       {} revision {}, sha256 {}", a.time, a.revision, a.sha256);
                        }
                        if let Some(r) = &p.last_rejection {
                            println!("  last rejected      {} sha256 {}", r.time, r.sha256.as_deref().unwrap_or("-"));
                            for line in r.message.lines() {
                                println!("    {line}");
                            }
                        }
                    }
                    // ---
                    if let Some(k) = &s.k8s_source {
                        let state = if k.up_to_date { "up to date" } else { "newest version rejected" };
                        let (from, inputs) = if k.source == "api" { ("from the API server ", "objects") } else { ("", "files") };
                        println!(
                            "kubernetes objects {from}{} ({state}): {} {inputs}, {} namespaces, {} pods ({} addresses), {} NetworkPolicies",
                            k.dir, k.files, k.namespaces, k.pods, k.pod_addresses, k.network_policies
                        );
                        if let Some(a) = &k.last_applied {
                            println!("  last applied       {} revision {}, sha256 {}", a.time, a.revision, a.sha256);
                        }
                        for w in &k.warnings {
                            println!("  {w}");
                        }
                        if let Some(r) = &k.last_rejection {
                            println!("  last rejected      {} sha256 {}", r.time, r.sha256.as_deref().unwrap_or("-"));
                            for line in r.message.lines() {
                                println!("    {line}");
                            }
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
        Command::Grant { from, to, ports, duration, reason } => {
            let d = ztagent::daemon::grants::parse_duration(&duration).map_err(|e| e.to_string())?;
            ztagent::daemon::grants::ports(&ports).map_err(|e| e.to_string())?;
            ztagent::daemon::grants::block(&from).map_err(|e| e.to_string())?;
            let req = Request::Grant { from, to, ports, seconds: d.as_secs(), reason };
            match call(&socket, &req).await? {
                Reply::Granted { grant, revision } => {
                    println!("grant {}: {} until {} (revision {revision})", grant.id, describe_grant(&grant), time_of(grant.expires_at));
                    Ok(ExitCode::SUCCESS)
                }
                other => unexpected(other),
            }
        }
        Command::Grants { revoke: Some(id), .. } => match call(&socket, &Request::Revoke { id }).await? {
            Reply::Revoked { grant, revision } => {
                println!("grant {} revoked: {} (revision {revision})", grant.id, describe_grant(&grant));
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
        Command::Grants { revoke: None, output } => match call(&socket, &Request::Grants).await? {
            Reply::Grants { grants } => {
                if output == Output::Json {
                    println!("{}", serde_json::to_string(&grants).map_err(|e| e.to_string())?);
                } else if grants.is_empty() {
                    println!("no grants in force");
                } else {
                    for g in &grants {
                        println!("grant {:<4} {} until {} ({})", g.id, describe_grant(g), time_of(g.expires_at), g.reason);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
        Command::Policy(PolicyCommand::Suggest { since, min_flows, base }) => {
            let since = since_of(since.as_deref())?;
            let Reply::Inventory(inventory) = call(&socket, &Request::Inventory { since }).await? else {
                return Err("the agent gave an unexpected answer to an inventory request".into());
            };
            let base = match base {
                Some(path) => policy::load(&path).map_err(|d| format!("the base policy is invalid:\n{d}"))?,
                None => match call(&socket, &Request::Get).await? {
                    Reply::Policy { policy, .. } => policy::parse(&policy.to_string(), "agent")
                        .map_err(|d| format!("the agent sent a policy this CLI cannot read:\n{d}"))?,
                    other => return unexpected(other),
                },
            };
            let s = ztagent::observe::suggest::suggest(&base, &inventory.entries, min_flows);
            let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
            println!("# Compared with the base policy: rules allowing what it denies: {}", list(&s.added));
            println!("# The base's allow rules that allowed nothing in the window: {}", list(&s.unused));
            print!("{}", s.text);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory { since, output } => {
            let since = since_of(since.as_deref())?;
            match call(&socket, &Request::Inventory { since }).await? {
                Reply::Inventory(l) => {
                    if output == Output::Json {
                        println!("{}", serde_json::to_string(&l).map_err(|e| e.to_string())?);
                    } else {
                        println!(
                            "{:<24} {:<24} {:<5} {:>5} {:>8} {:>10} {:>9} {:>11} {:>9} {:>8}  last seen",
                            "from", "to", "proto", "port", "allowed", "would-deny", "packets", "bytes", "denied", "limited"
                        );
                        for r in &l.entries {
                            println!(
                                "{:<24} {:<24} {:<5} {:>5} {:>8} {:>10} {:>9} {:>11} {:>9} {:>8}  {}",
                                r.key.src,
                                r.key.dst,
                                r.key.proto,
                                r.key.port,
                                r.seen.allowed_flows,
                                r.seen.would_deny_flows,
                                r.seen.packets,
                                r.seen.bytes,
                                r.seen.denied_packets,
                                r.seen.rate_limited_packets,
                                time_of(r.seen.last_seen)
                            );
                        }
                        println!(
                            "{} entries (at most {}), {} evicted; allowed and would-deny count flows, packets and bytes those flows \
                             (both directions), denied and limited packets",
                            l.entries.len(),
                            l.capacity,
                            l.evicted
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => unexpected(other),
            }
        }
        Command::Fleet(FleetCommand::Push { file, etcd, base, auth }) => {
            if let Err(d) = policy::load(&file) {
                eprintln!("{d}");
                return Ok(ExitCode::FAILURE);
            }
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let target = auth.target(&etcd)?;
            let revision = ztagent::sources::etcd::push(&target, &text, base).await.map_err(|e| e.to_string())?;
            println!("fleet revision {revision} pushed to {}", target.policy_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet(FleetCommand::Status { etcd, output, auth }) => {
            let target = auth.target(&etcd)?;
            let s = ztagent::sources::etcd::status(&target).await.map_err(|e| e.to_string())?;
            if output == Output::Json {
                let hosts: Vec<serde_json::Value> = s
                    .hosts
                    .iter()
                    .map(|h| {
                        let mut v = serde_json::to_value(h).unwrap_or_default();
                        v["state"] = s.state(h).into();
                        v
                    })
                    .collect();
                let v = serde_json::json!({ "revision": s.revision, "sha256": s.sha256, "hosts": hosts });
                println!("{v}");
            } else {
                println!("fleet revision {} (sha256 {}), {} hosts", s.revision, s.sha256.as_deref().unwrap_or("-"), s.hosts.len());
                println!("{:<24} {:>9} {:<11} {:<20} REJECTED", "HOST", "REVISION", "STATE", "SINCE");
                for h in &s.hosts {
                    let rejected = h.rejected.as_ref().map_or("-".into(), |r| {
                        format!("{}: {}", r.revision, r.message.lines().next().unwrap_or(""))
                    });
                    let rev = h.revision.map_or("-".into(), |r| r.to_string());
                    println!("{:<24} {:>9} {:<11} {:<20} {rejected}", h.host, rev, s.state(h), h.time.get(..19).unwrap_or(&h.time));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::K8s(K8sCommand::Translate { files, policy: native, output }) => k8s_translate(&files, native.as_deref(), output),
        Command::Uninstall { pin_path } => {
            let removed = datapath::uninstall(&PinLayout::new(&pin_path))
                .map_err(|e| format!("cannot remove the pins under {}: {e}", pin_path.display()))?;
            println!("removed {} pins under {}; enforcement detached", removed.len(), pin_path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ztagent k8s translate`: the flattened policy on stdout, warnings and a summary on stderr;
/// diagnostics and a failure when anything cannot be accepted (then nothing on stdout).
fn k8s_translate(files: &[PathBuf], native: Option<&Path>, output: Format) -> Result<ExitCode, String> {
    use ztagent::k8s;
    let native = match native {
        Some(path) => match policy::load(path) {
            Ok(p) => p,
            Err(d) => {
                eprintln!("{d}");
                return Ok(ExitCode::FAILURE);
            }
        },
        None => policy::Policy::default(),
    };
    let mut paths = Vec::new();
    for f in files {
        if f.is_dir() {
            paths.extend(k8s::load_dir(f)?);
        } else {
            paths.push(f.clone());
        }
    }
    let objects = match k8s::load_objects(&paths) {
        Ok(o) => o,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &objects.warnings {
        eprintln!("{w}");
    }
    let t = k8s::translate(&native, &objects.cluster, &objects.policies).map_err(|e| e.to_string())?;
    for w in &t.warnings {
        eprintln!("warning: {w}");
    }
    let summary = policy::compile(&t.policy).summary();
    // Each kernel map holds two policies (the one in force and the next).
    let limits = Limits::default();
    let per_slot = [
        ("segment pairs", summary.pairs, limits.pairs / 2, "--max-pairs"),
        ("port entries", summary.port_entries, limits.ports / 2, "--max-port-entries"),
        ("CIDRs", summary.cidrs, limits.cidrs / 2, "--max-cidrs"),
        ("host addresses", summary.hosts, limits.hosts / 2, "--max-cidrs"),
    ];
    for (what, n, max, flag) in per_slot {
        if n > max as usize {
            return Err(format!(
                "the translated policy needs {n} {what}; the kernel maps hold {max} per policy by default (`ztagent run {flag}` sets twice that)"
            ));
        }
    }
    if summary.rate_limits > agent_common::MAX_LIMITS as usize {
        return Err(format!(
            "the translated policy needs {} rate limits (one per class of addresses of each limited segment), at most {}",
            summary.rate_limits,
            agent_common::MAX_LIMITS
        ));
    }
    let text = match output {
        Format::Yaml => t.policy.to_yaml(),
        Format::Json => t.policy.to_json(),
    };
    println!("{}", text.trim_end());
    eprintln!(
        "translated {} pods ({} addresses) and {} NetworkPolicies: {summary}",
        objects.cluster.pods.len(),
        t.pod_addresses,
        objects.policies.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn call(socket: &Path, req: &Request) -> Result<Reply, String> {
    match control::call(socket, req).await.map_err(|e| e.to_string())? {
        Reply::Error { message } => Err(message),
        r => Ok(r),
    }
}

fn unexpected(r: Reply) -> Result<ExitCode, String> {
    Err(format!("the agent gave an unexpected answer: {r:?}"))
}

/// `--since DURATION` as the unix time it names.
fn since_of(since: Option<&str>) -> Result<Option<f64>, String> {
    let Some(d) = since else { return Ok(None) };
    let d = ztagent::daemon::grants::parse_duration(d).map_err(|_| format!("--since takes a duration such as 90s, 15m, 2h or 1d (up to 7 days), not `{d}`"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(Some(now.saturating_sub(d).as_secs_f64()))
}

/// `frontend -> payments 8080/tcp`.
fn describe_grant(g: &ztagent::api::Grant) -> String {
    let ports = if g.ports.is_empty() { "every port".to_string() } else { g.ports.join(", ") };
    format!("{} -> {} {ports}", g.from, g.to)
}

fn time_of(unix: f64) -> String {
    ztagent::clock::rfc3339((unix.max(0.0) * 1e9) as u64)
}

fn print_check(r: &CheckResult, output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let by = r.rule.as_deref().map_or("default action".to_string(), |n| format!("rule {n}"));
    let colour = std::io::stdout().is_terminal();
    let verdict = match (colour, r.verdict.as_str()) {
        (true, "allow") => "\x1b[32mallow\x1b[0m".to_string(),
        (true, _) => "\x1b[31mdeny\x1b[0m".to_string(),
        (false, v) => v.to_string(),
    };
    let limit = r.rate_limit.as_deref().map_or(String::new(), |l| format!(", rate limit {l}"));
    let audit = match (r.audit, r.mode.as_str()) {
        (_, "audit") => " [audit mode: not enforced, reported]",
        (true, _) => " [audited: not enforced, reported as would-deny]",
        _ => "",
    };
    let side = |segment: &str, pod: &Option<String>| match pod {
        Some(p) => format!("{segment} {p}"),
        None => segment.to_string(),
    };
    println!("{verdict} ({} -> {}) by {by}{limit}{audit}", side(&r.src_segment, &r.src_pod), side(&r.dst_segment, &r.dst_pod));
}

/// One aligned line per event, the verdict coloured on a terminal.
fn event_line(r: &EventRecord, colour: bool) -> String {
    let verdict = format!("{:<16}", r.verdict);
    let verdict = match (colour, r.verdict.as_str()) {
        (false, _) => verdict,
        (true, "allowed") => format!("\x1b[32m{verdict}\x1b[0m"),
        (true, "rate-limited") => format!("\x1b[33m{verdict}\x1b[0m"),
        (true, v) if v.starts_with("would-") => format!("\x1b[36m{verdict}\x1b[0m"),
        (true, _) => format!("\x1b[31m{verdict}\x1b[0m"),
    };
    let why = match (&r.rule, &r.rate_limit) {
        (Some(rule), _) => format!("{} {rule}", r.reason),
        (None, Some(limit)) => format!("{} {limit}", r.reason),
        (None, None) => r.reason.clone(),
    };
    let count = if r.count > 1 { format!(" x{}", r.count) } else { String::new() };
    let pods = match (&r.src_pod, &r.dst_pod) {
        (None, None) => String::new(),
        (s, d) => format!(" ({} -> {})", s.as_deref().unwrap_or("-"), d.as_deref().unwrap_or("-")),
    };
    format!(
        "{} {verdict} {:<8} {:<7} {:<4} {:>22} {:<10} -> {:>22} {:<10} {why}{count}{pods}",
        r.time.get(11..23).unwrap_or(&r.time),
        r.iface,
        r.direction,
        r.proto,
        format!("{}:{}", r.src, r.sport),
        r.src_segment,
        format!("{}:{}", r.dst, r.dport),
        r.dst_segment,
    )
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a log file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}
