//! `ztagent run`: load the datapath, install the policy, attach to the interfaces, and serve
//! the control socket until told to stop. Enforcement does not stop with the daemon: programs,
//! links and maps stay pinned (`ztagent uninstall` removes them).
//!
//! The composition root: the only module (with the binary) that imports across both flows.
//! - [`startup`]: the outputs claimed first, the sources' first versions, the datapath and the
//!   stores loaded, the first policy installed, interfaces attached, the socket bound.
//! - [`reconcile`]: the one way a policy gets into the kernel (a push, a source's new version,
//!   new Kubernetes objects, a grant given or ended).
//! - [`handlers`]: one handler per control request.
//! - [`tasks`]: what runs in the background (sources, housekeeping, metrics, node mode).
//! - [`grants`]: the time-bound grants, state the daemon applies to the policy.
use std::{
    fs,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
};

use crate::{
    api::{Interface, auth::Access},
    events::EventHub,
    kernel::datapath::{Datapath, Limits, PinLayout, XdpMode},
    kernel::mapwriter::MapWriter,
    policy::{self, CompiledPolicy, Policy},
};

pub mod grants;
mod handlers;
mod reconcile;
mod startup;
mod tasks;

pub use handlers::check::{ResolveError, check, check_with_pods, resolve};

pub struct Config {
    pub ifaces: Vec<String>,
    /// Node mode: interfaces whose names match are enforced and guarded as they come and go.
    pub iface_patterns: Vec<crate::kernel::node::Pattern>,
    pub policy: Option<PathBuf>,
    /// Install `policy` at start even over a newer policy pushed since.
    pub policy_overrides_pushed: bool,
    pub socket: PathBuf,
    pub pins: PinLayout,
    pub xdp_mode: XdpMode,
    pub limits: Limits,
    /// Recent events kept for `ztagent events`.
    pub events_history: usize,
    /// Who may use the control socket.
    pub access: Access,
    /// Where the last-known-good policy is kept.
    pub state_dir: PathBuf,
    // --- metrics and event files (see `metrics` and `sink`) ---
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Append every event record to this file as JSON lines.
    pub events_file: Option<PathBuf>,
    /// Rotate the events file when it would grow past this size.
    pub events_file_max_bytes: u64,
    // --- policy directory (see `watch`)
    /// Take the policy from this directory and apply each new version of it.
    pub policy_dir: Option<PathBuf>,
    // --- fleet (see `fleet`)
    /// Take the policy from etcd, as this host.
    pub fleet: Option<(crate::sources::etcd::Target, String)>,
    // --- Kubernetes (see `k8s` and `watch::ObjectsDir`)
    /// Take the inventory and NetworkPolicies from this directory of Kubernetes objects.
    pub k8s_objects: Option<PathBuf>,
    /// Take them from the Kubernetes API (see `k8s::api`).
    pub k8s_api: Option<crate::sources::k8s_api::ApiConfig>,
    // ---
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] crate::kernel::datapath::DatapathError),
    #[error(transparent)]
    Write(#[from] crate::kernel::mapwriter::WriteError),
    #[error("the policy {0} is invalid:\n{1}")]
    Policy(String, policy::Diagnostics),
    #[error(
        "another agent is running: it answers on {path} (stop it first, or give this one another --socket and --pin-path)"
    )]
    Running { path: PathBuf },
    #[error("cannot serve the control socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Auth(#[from] crate::api::auth::AuthError),
    #[error(transparent)]
    State(#[from] crate::store::StateError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot open the events file {path}: {source}")]
    EventsFile { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    PolicyDir(#[from] crate::sources::WatchError),
    #[error(transparent)]
    Grant(#[from] crate::daemon::grants::GrantError),
    #[error(transparent)]
    Inventory(#[from] crate::observe::inventory::InventoryError),
    #[error(transparent)]
    ApiInventory(#[from] crate::observe::apis::ApiInventoryError),
    #[error(transparent)]
    FlowCount(#[from] crate::kernel::flowcount::FlowCountError),
    #[error(transparent)]
    Baseline(#[from] crate::observe::alerts::BaselineError),
    #[error(transparent)]
    Node(#[from] crate::kernel::node::NodeError),
    #[error(transparent)]
    Translate(#[from] crate::k8s::TranslateError),
    #[error(transparent)]
    K8sApi(#[from] crate::sources::k8s_api::ApiError),
}

/// The policy in force, as the agent knows it.
struct Installed {
    revision: u32,
    policy: Policy,
    compiled: Arc<CompiledPolicy>,
    /// Unix time (seconds) it was installed.
    installed_at: f64,
}

struct State {
    writer: MapWriter,
    datapath: Datapath,
    installed: Option<Installed>,
    /// The origin of the policy in force when it was pushed (`policy push`), kept with it as
    /// the last-known-good; None when it came from `--policy`, a directory or etcd.
    pushed_from: Option<String>,
    interfaces: Vec<Interface>,
    hub: Arc<EventHub>,
    state_dir: PathBuf,
    gauges: Arc<crate::kernel::counters::MapGauges>,
    xdp_mode: &'static str,
    /// `--policy-dir`: what `status` shows of it.
    policy_source: Option<crate::sources::policy_dir::Report>,
    /// The time-bound grants in force (kept in the state directory).
    grants: crate::daemon::grants::Store,
    /// What talks to what, fed by the event stream (its own lock: the hub's observer).
    inventory: Arc<Mutex<crate::observe::inventory::Inventory>>,
    /// The HTTP endpoints seen on declared ports, fed the same way.
    apis: Arc<Mutex<crate::observe::apis::ApiInventory>>,
    /// Deviation alerts, fed the same way.
    alerts: Arc<Mutex<crate::observe::alerts::Engine>>,
    /// Reads the flows' packet and byte counters (for the inventory and the alerts' rates).
    flows: Arc<Mutex<crate::kernel::flowcount::FlowReader>>,
    /// Node mode (`--iface-pattern`): the interfaces it enforces and guards.
    node: Option<crate::kernel::node::Node>,
    /// `--k8s-objects`: the inventory and NetworkPolicies every policy is translated with
    /// (`None` without Kubernetes: policies are installed as they are), and what `status`
    /// shows of the source.
    k8s: Option<Arc<K8sView>>,
    k8s_source: Option<crate::sources::k8s_versions::K8sReport>,
    /// The warnings of the last translation.
    last_k8s_warnings: Vec<String>,
    /// The pin directory's last check (`status`).
    pins: crate::api::PinsStatus,
}

impl State {
    fn k8s_warnings(&self) -> Vec<String> {
        self.last_k8s_warnings.clone()
    }
}

/// The Kubernetes inputs in force: what every native policy is translated with.
#[derive(Default)]
pub struct K8sView {
    pub cluster: crate::k8s::Cluster,
    pub policies: Vec<crate::k8s::NetworkPolicy>,
    /// The cluster's pod addresses, to name them (`ns/pod`) in `check` and events.
    pub inventory: Arc<crate::k8s::Inventory>,
}

impl K8sView {
    pub fn new(cluster: crate::k8s::Cluster, policies: Vec<crate::k8s::NetworkPolicy>) -> K8sView {
        K8sView { inventory: Arc::new(crate::k8s::Inventory::of(&cluster)), cluster, policies }
    }
}

type Shared = Arc<Mutex<State>>;

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Socket { path: cfg.socket.clone(), source })?;
    if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
        return Err(DaemonError::Running { path: cfg.socket.clone() });
    }
    // Claimed first, so a bad address or path fails before anything is loaded or attached.
    let outputs = startup::Outputs::claim(&cfg).await?;
    let mut inputs = startup::Inputs::open(&cfg).await?;
    let (mut state, events, watch) = startup::load(&cfg, &mut inputs)?;
    // Everything from here to the commit below can fail; a failed start detaches and unpins
    // what it attached and pinned, so the host is left as it was found.
    let listener = match startup::start_enforcing(&mut state, &cfg, &mut inputs) {
        Ok(listener) => listener,
        Err(e) => {
            state.datapath.rollback();
            return Err(e);
        }
    };
    let (hub, alerts) = (state.hub.clone(), state.alerts.clone());
    let learned = tasks::Learned { inventory: state.inventory.clone(), apis: state.apis.clone() };
    // --- metrics and event files: subscribed before the reader starts, they miss nothing.
    let sink = outputs.events_file.map(|f| {
        tracing::info!(path = %f.path().display(), max_bytes = cfg.events_file_max_bytes, "writing events to a file");
        crate::observe::sink::Sink::start(f, &hub)
    });
    let event_counters = outputs.metrics.as_ref().map(|_| crate::observe::metrics::EventCounters::start(&hub));
    tasks::observe_events(&hub, &learned, &alerts);
    let delivered = Arc::new(AtomicU64::new(0));
    tasks::spawn_event_reader(events, hub.clone(), delivered.clone());
    let access = Arc::new(cfg.access.clone());
    tracing::info!(socket = %cfg.socket.display(), "control socket ready");
    let shared: Shared = Arc::new(Mutex::new(state));
    if let (Some(tcp), Some(counters)) = (outputs.metrics, event_counters) {
        tasks::spawn_metrics(tcp, &counters, &shared, &delivered);
    }
    tasks::spawn_sources(inputs, &shared, &cfg)?;
    tasks::spawn_housekeeping(&shared, &cfg.state_dir);
    lock(&shared).datapath.commit();
    if let Some(watch) = watch {
        tasks::spawn_node_watch(watch, &shared)?;
    }
    handlers::accept_until_stopped(&listener, &shared, &access, &mut term).await;
    let _ = fs::remove_file(&cfg.socket);
    tasks::count_flows(&shared, true);
    tasks::save_learned(&learned, &alerts, &cfg.state_dir);
    if let Some(sink) = sink {
        sink.finish().await;
    }
    let pins = {
        let mut state = lock(&shared);
        tasks::check_pins(&mut state);
        state.pins.clone()
    };
    if pins.intact {
        tracing::info!(
            "stopping; enforcement stays in place (pinned under {}); `ztagent uninstall` removes it",
            cfg.pins.root.display()
        );
    } else {
        tracing::error!(
            "stopping; enforcement does NOT stay in place: pins missing under {} ({}); what they held ends \
             with this process",
            cfg.pins.root.display(),
            pins.missing.join("; ")
        );
    }
    Ok(())
}

/// The state, also when a thread panicked holding it (every change to it is complete or
/// rolled back before anything can panic).
fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
