//! Every clap type of the command line: the commands, their arguments, and the option groups
//! that several commands share (flattened where they appear).
//!
//! The order of the fields is the order of `--help`: a flattened group stands where its
//! options appeared before they were grouped.
use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ztagent::{
    api as control,
    kernel::datapath::{self, Limits},
};

#[derive(Parser)]
#[command(
    name = "ztagent",
    version,
    about = "Zero-trust enforcement agent: identity microsegmentation in the kernel (XDP + TC)"
)]
pub struct Cli {
    /// The agent's control socket, for the commands that talk to the agent (which also take
    /// it after their name) [default: $ZTAGENT_SOCKET, else /run/ztagent/ztagent.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: the size of `Run` (all of the daemon's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run the enforcement daemon on the given interfaces.
    Run(RunArgs),
    /// Work with policy files and the policy in force.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The verdict for a flow, and the rule that decides it.
    Check(CheckArgs),
    /// What the kernel decided: recent events, or (-f) the live stream.
    Events(EventsArgs),
    /// The agent's interfaces, policy revision and packet counters.
    Status(StatusArgs),
    /// Allow a flow for a while: an exception that ends by itself, in the kernel.
    Grant(GrantArgs),
    /// The grants in force; --revoke ends one now.
    Grants(GrantsArgs),
    /// What has been seen talking to what: every (source identity, destination service,
    /// protocol, port), when, and what the policy did with it.
    Inventory(InventoryArgs),
    /// HTTP APIs on declared ports: the endpoints seen, their callers and statuses.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Kubernetes: NetworkPolicies and label-selected segments.
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Distribute policy to a fleet of agents through etcd (`run --policy-source etcd://...`).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Detach and unpin everything the agent left under the pin directory.
    Uninstall(UninstallArgs),
}

impl Cli {
    /// The control socket: given after the command, else before it, else $ZTAGENT_SOCKET,
    /// else the default.
    pub fn socket(top: Option<&PathBuf>, given: &SocketArg) -> PathBuf {
        given
            .socket
            .clone()
            .or_else(|| top.cloned())
            .or_else(|| std::env::var_os("ZTAGENT_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(control::DEFAULT_SOCKET))
    }
}

/// `--socket PATH`, for the commands that talk to the agent (and `run`, which serves it).
#[derive(Args)]
pub struct SocketArg {
    /// The agent's control socket [default: $ZTAGENT_SOCKET, else /run/ztagent/ztagent.sock].
    #[arg(long = "socket", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

// --- run: in run.rs

mod run;
pub use run::*;

// --- the commands that ask the agent

#[derive(Args)]
pub struct CheckArgs {
    /// The source: an address, a segment's name (judged as an address whose identity it is),
    /// or a pod as namespace/name (live, with an agent run with Kubernetes inputs).
    #[arg(long, value_name = "ADDR|SEGMENT|NS/POD")]
    pub src: String,
    /// The destination: an address, a segment's name or a pod, as --src.
    #[arg(long, value_name = "ADDR|SEGMENT|NS/POD")]
    pub dst: String,
    /// Destination port (required for tcp and udp).
    #[arg(long)]
    pub port: Option<u16>,
    /// The protocol (icmp: an echo request).
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,
    /// Judge against this file instead of the running agent's policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Follow the live stream after the recent events.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// With -f: when the agent stops or restarts, say so on stderr and follow again once it is
    /// back, instead of ending.
    #[arg(long, requires = "follow")]
    pub reconnect: bool,
    /// Of the recent events, only the last N (then, with -f, the live ones).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only events since then: a duration back from now (90s, 15m, 2h, 1d) or an RFC 3339 time
    /// (2026-12-07T10:00:00Z, 2026-12-07T11:00:00+01:00).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events until then (a duration back from now, or an RFC 3339 time); not with -f.
    #[arg(long, value_name = "TIME", conflicts_with = "follow")]
    pub until: Option<String>,
    #[command(flatten)]
    pub filters: EventFilters,
    /// Leave out the events the next filter matches (--not --from batch).
    #[arg(long)]
    pub not: bool,
    #[command(flatten)]
    pub negated: NegatedFilters,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The verdicts `events --verdict` takes.
pub const VERDICTS: [&str; 8] =
    ["allowed", "denied", "rate-limited", "would-deny", "would-rate-limit", "granted", "grant-ended", "anomaly"];

/// `events`' filters: a repeated flag matches any of its values; different flags must all
/// match.
#[derive(Args)]
pub struct EventFilters {
    /// Only these verdicts (repeat for several).
    #[arg(long = "verdict", value_name = "VERDICT", value_parser = VERDICTS)]
    pub verdicts: Vec<String>,
    /// Only events from this source segment (repeat for several).
    #[arg(long, value_name = "SEGMENT")]
    pub from: Vec<String>,
    /// Only events to this destination segment (repeat for several).
    #[arg(long, value_name = "SEGMENT")]
    pub to: Vec<String>,
    /// Only events to this destination port (repeat for several).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only events from or to this address (repeat for several).
    #[arg(long = "ip", value_name = "ADDRESS")]
    pub ips: Vec<IpAddr>,
    /// Kubernetes inputs: only events from or to this pod, NAMESPACE/NAME or a NAME in any
    /// namespace (repeat for several).
    #[arg(long = "pod", value_name = "POD")]
    pub pods: Vec<String>,
    /// Kubernetes inputs: only events from or to a pod of this namespace (repeat for several).
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Only HTTP requests with this method, e.g. GET (repeat for several).
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Only HTTP requests whose path begins so, e.g. /v1/ (repeat for several).
    #[arg(long = "path-prefix", value_name = "PREFIX")]
    pub path_prefixes: Vec<String>,
    /// Only HTTP requests answered with this status: a code (404) or a class (5xx) (repeat for
    /// several).
    #[arg(long = "status", value_name = "STATUS", value_parser = status)]
    pub statuses: Vec<String>,
}

/// `--status`: a code 100-599 or a class 1xx..5xx.
fn status(s: &str) -> Result<String, String> {
    if ztagent::api::status_spec(s) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a status is a code from 100 to 599 (404) or a class from 1xx to 5xx (5xx)".into())
    }
}

/// `--not --FILTER VALUE`, as the command line is read: each filter negated has a hidden flag
/// of its own (`--not --from a` arrives as `--not-from a`).
#[derive(Args)]
pub struct NegatedFilters {
    #[arg(id = "not-verdict", long = "not-verdict", hide = true, value_parser = VERDICTS)]
    pub verdicts: Vec<String>,
    #[arg(id = "not-from", long = "not-from", hide = true)]
    pub from: Vec<String>,
    #[arg(id = "not-to", long = "not-to", hide = true)]
    pub to: Vec<String>,
    #[arg(id = "not-port", long = "not-port", hide = true)]
    pub ports: Vec<u16>,
    #[arg(id = "not-ip", long = "not-ip", hide = true)]
    pub ips: Vec<IpAddr>,
    #[arg(id = "not-pod", long = "not-pod", hide = true)]
    pub pods: Vec<String>,
    #[arg(id = "not-namespace", long = "not-namespace", hide = true)]
    pub namespaces: Vec<String>,
    #[arg(id = "not-method", long = "not-method", hide = true)]
    pub methods: Vec<String>,
    #[arg(id = "not-path-prefix", long = "not-path-prefix", hide = true)]
    pub path_prefixes: Vec<String>,
    #[arg(id = "not-status", long = "not-status", hide = true, value_parser = status)]
    pub statuses: Vec<String>,
}

/// The filters `--not` may come before.
pub const NEGATABLE: [&str; 10] =
    ["verdict", "from", "to", "port", "ip", "pod", "namespace", "method", "path-prefix", "status"];

/// `ztagent events ... --not --from a ...` -> `... --not-from a ...`: `--not` negates the
/// filter after it (a `--not` before anything else is left for clap... and for the command,
/// which refuses it).
pub fn negations(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let events = args.iter().position(|a| a == "events");
    let Some(events) = events else { return args };
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().enumerate().peekable();
    while let Some((i, a)) = it.next() {
        if i > events && a == "--not" {
            let next = it.peek().and_then(|(_, n)| n.to_str()).and_then(|n| n.strip_prefix("--")).map(str::to_string);
            let negated = next.as_deref().map(|n| n.split_once('=').map_or((n, None), |(f, v)| (f, Some(v))));
            if let Some((flag, value)) = negated
                && NEGATABLE.contains(&flag)
            {
                out.push(match value {
                    Some(v) => format!("--not-{flag}={v}").into(),
                    None => format!("--not-{flag}").into(),
                });
                it.next();
                continue;
            }
        }
        out.push(a);
    }
    out
}

#[derive(Args)]
pub struct StatusArgs {
    /// Without asking the agent (which need not run): what the kernel enforces now, read
    /// from the pinned maps and links under --pin-path.
    #[arg(long)]
    pub offline: bool,
    /// With --offline: the bpffs directory of the pinned maps and links.
    #[arg(long, value_name = "DIR", requires = "offline", default_value = datapath::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args)]
pub struct GrantArgs {
    /// The source: a segment, `world`, "*", or an address block (10.20.9.0/24, or one
    /// address) whose addresses keep their segment.
    #[arg(long)]
    pub from: String,
    /// The destination: a segment, `world` or "*".
    #[arg(long)]
    pub to: String,
    /// A port spec as in a rule (443/tcp, 8000-8099/tcp, udp, icmp); repeat for several;
    /// absent = every port and protocol.
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// How long: 90s, 15m, 2h, 1d (at most 7 days).
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Why: reported with every event about the grant.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args)]
pub struct GrantsArgs {
    /// End this grant now (its id, as listed).
    #[arg(long, value_name = "ID")]
    pub revoke: Option<u32>,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub since: Since,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Subcommand)]
pub enum ApiCommand {
    /// Every endpoint (destination segment and pod, port, method, route template) seen on a
    /// declared HTTP port: its callers, requests, status classes, p50/p99 latency, first and
    /// last seen.
    Inventory(ApiInventoryArgs),
}

#[derive(Args)]
pub struct ApiInventoryArgs {
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args)]
pub struct UninstallArgs {
    /// The bpffs directory of the pinned maps and links (refused while an agent answering on
    /// --socket uses it: stop the agent first, or give --stop-agent).
    #[arg(long, default_value = datapath::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Stop the agent answering on --socket for this pin path first (SIGTERM to the process
    /// behind the socket), wait up to 30 s for it to exit, then remove the pins.
    #[arg(long)]
    pub stop_agent: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

// --- policy

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file offline; prints FILE:LINE:COL: message for each problem.
    Validate {
        /// The policy file (YAML or JSON).
        file: PathBuf,
    },
    /// Validate a policy file and install it in the running agent, atomically.
    Push {
        /// The policy file (YAML or JSON).
        file: PathBuf,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The least policy that allows exactly what the agent's inventory saw allowed (or
    /// would-deny), each rule commented with what it was learned from; compared with the policy
    /// in force (or --base FILE): rules to add, rules unused in the window.
    Suggest(SuggestArgs),
    /// Print the policy in force.
    Get {
        #[command(flatten)]
        output: FormatArg,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Args)]
pub struct SuggestArgs {
    #[command(flatten)]
    pub since: Since,
    /// Leave out what was seen in fewer flows.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_flows: u64,
    /// Compare with this policy file instead of the policy in force.
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
}

// --- k8s

#[derive(Subcommand)]
pub enum K8sCommand {
    /// Print the native policy the agent would enforce for these Kubernetes objects
    /// (Namespaces, Pods, NetworkPolicies: `kubectl get -o yaml` lists, multi-document YAML or
    /// JSON, in any mix and order; a directory stands for its *.yaml, *.yml and *.json files)
    /// and the native policy; deterministic. Problems are printed as FILE:LINE:COL and nothing
    /// is printed on stdout then; warnings go to stderr.
    Translate(TranslateArgs),
}

#[derive(Args)]
pub struct TranslateArgs {
    /// Kubernetes object files, or directories of them.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The native policy to combine them with (default: `version: 1`, nothing allowed).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub output: FormatArg,
}

// --- fleet

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Validate a policy file and write it as the fleet's next revision (refused if someone
    /// else pushed since the base revision).
    Push(FleetPushArgs),
    /// Every host's applied revision, and which are behind or rejected the newest.
    Status(FleetStatusArgs),
}

#[derive(Args)]
pub struct FleetPushArgs {
    /// The policy file (YAML or JSON).
    pub file: PathBuf,
    /// The fleet: etcd://HOST:PORT[,HOST:PORT...]/PREFIX.
    #[arg(long, value_name = "URL", env = "ZTAGENT_ETCD")]
    pub etcd: String,
    /// The fleet revision this push replaces (default: the newest, read just before).
    #[arg(long, value_name = "REVISION")]
    pub base: Option<i64>,
    #[command(flatten)]
    pub auth: EtcdAuth,
}

#[derive(Args)]
pub struct FleetStatusArgs {
    /// The fleet: etcd://HOST:PORT[,HOST:PORT...]/PREFIX.
    #[arg(long, value_name = "URL", env = "ZTAGENT_ETCD")]
    pub etcd: String,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub auth: EtcdAuth,
}

// --- option groups shared by several commands

/// How to log in to etcd.
#[derive(Args, Clone)]
pub struct EtcdAuth {
    /// etcd user name (with --etcd-password).
    #[arg(long, value_name = "NAME", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// etcd password (with --etcd-user).
    #[arg(long, value_name = "PASSWORD", env = "ZTAGENT_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Speak TLS to etcd, trusting this CA (PEM) for the members' certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for members that require client certificates.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdAuth {
    /// The fleet at `url` (etcd://HOST:PORT[,HOST:PORT...]/PREFIX), logged in as these options say.
    pub fn target(self, url: &str) -> Result<ztagent::sources::etcd::Target, ztagent::sources::etcd::FleetError> {
        let tls = (self.etcd_cacert.is_some() || self.etcd_cert.is_some()).then(|| ztagent::sources::etcd::TlsFiles {
            ca: self.etcd_cacert,
            cert: self.etcd_cert.zip(self.etcd_key),
        });
        let user = self.etcd_user.zip(self.etcd_password);
        ztagent::sources::etcd::Target::parse(url, user, tls.as_ref())
    }
}

/// `-o text|json`, for the commands that print a report.
#[derive(Args)]
pub struct OutputArg {
    /// Output format: text, or json (its fields: docs/json.md).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `-o yaml|json`, for the commands that print a policy.
#[derive(Args)]
pub struct FormatArg {
    /// Output format of the policy: yaml, or json.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Yaml)]
    pub output: Format,
}

/// `--since DURATION`, for the commands that read the inventory.
#[derive(Args)]
pub struct Since {
    /// Only what was seen in this last while (90s, 15m, 2h, 1d).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    Yaml,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap's own checks of the definitions (ids that `requires` and `conflicts_with` name,
    /// flattened groups that clash, defaults that their parsers refuse), for every command.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
