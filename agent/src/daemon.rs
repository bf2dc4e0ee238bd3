//! `ztagent run`: load the datapath, install the policy, attach to the interfaces, and serve
//! the control socket until told to stop. Enforcement does not stop with the daemon: programs,
//! links and maps stay pinned (`ztagent uninstall` removes them).
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::programs::xdp::XdpMode;
use tokio::net::UnixListener;

use agent_common::{AggKey, AggValue, BUCKET_PACKETS, DenyKey, DenyValue, Event, TICK_SHIFT, maps};
use aya::maps::{MapData, RingBuf};

use crate::{
    auth::Access,
    control::{self, CheckResult, Flow, Interface, LimitStatus, PushResult, Reply, Request, Status},
    datapath::{Datapath, Limits, PinLayout, error_chain},
    events::{EventFilter, EventHub, Subscription},
    mapwriter::MapWriter,
    metrics, sink,
    policy::{self, CompiledPolicy, Mode, Policy},
};

pub struct Config {
    pub ifaces: Vec<String>,
    /// Node mode: interfaces whose names match are enforced and guarded as they come and go.
    pub iface_patterns: Vec<crate::node::Pattern>,
    pub policy: Option<PathBuf>,
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
    pub metrics_addr: Option<SocketAddr>,
    /// Append every event record to this file as JSON lines.
    pub events_file: Option<PathBuf>,
    /// Rotate the events file when it would grow past this size.
    pub events_file_max_bytes: u64,
    // --- policy directory (see `watch`)
    /// Take the policy from this directory and apply each new version of it.
    pub policy_dir: Option<PathBuf>,
    // --- fleet (see `fleet`)
    /// Take the policy from etcd, as this host.
    pub fleet: Option<(crate::fleet::Target, String)>,
    // --- Kubernetes (see `k8s` and `watch::ObjectsDir`)
    /// Take the inventory and NetworkPolicies from this directory of Kubernetes objects.
    pub k8s_objects: Option<PathBuf>,
    /// Take them from the Kubernetes API (see `k8s::api`).
    pub k8s_api: Option<crate::k8s::api::ApiConfig>,
    // ---
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Write(#[from] crate::mapwriter::WriteError),
    #[error("the policy {0} is invalid:\n{1}")]
    Policy(String, policy::Diagnostics),
    #[error("another agent is running: it answers on {path} (stop it first, or give this one another --socket and --pin-path)")]
    Running { path: PathBuf },
    #[error("cannot serve the control socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the events file {path}: {source}")]
    EventsFile { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    PolicyDir(#[from] crate::watch::WatchError),
    #[error(transparent)]
    Grant(#[from] crate::grants::GrantError),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    FlowCount(#[from] crate::flowcount::FlowCountError),
    #[error(transparent)]
    Baseline(#[from] crate::alerts::BaselineError),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error(transparent)]
    Translate(#[from] crate::k8s::TranslateError),
    #[error(transparent)]
    K8sApi(#[from] crate::k8s::api::ApiError),
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
    interfaces: Vec<Interface>,
    hub: Arc<EventHub>,
    state_dir: PathBuf,
    gauges: Arc<crate::metrics::MapGauges>,
    xdp_mode: &'static str,
    /// `--policy-dir`: what `status` shows of it.
    policy_source: Option<crate::watch::Report>,
    /// The time-bound grants in force (kept in the state directory).
    grants: crate::grants::Store,
    /// What talks to what, fed by the event stream (its own lock: the hub's observer).
    inventory: Arc<Mutex<crate::inventory::Inventory>>,
    /// Deviation alerts, fed the same way.
    alerts: Arc<Mutex<crate::alerts::Engine>>,
    /// Reads the flows' packet and byte counters (for the inventory and the alerts' rates).
    flows: Arc<Mutex<crate::flowcount::FlowReader>>,
    /// Node mode (`--iface-pattern`): the interfaces it enforces and guards.
    node: Option<crate::node::Node>,
    /// `--k8s-objects`: the inventory and NetworkPolicies every policy is translated with
    /// (`None` without Kubernetes: policies are installed as they are), and what `status`
    /// shows of the source.
    k8s: Option<Arc<K8sView>>,
    k8s_source: Option<crate::watch::K8sReport>,
    /// The warnings of the last translation.
    last_k8s_warnings: Vec<String>,
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

/// How far behind the live stream a client may fall before it is told what it missed.
const CLIENT_LAG: usize = 16_384;

type Shared = Arc<Mutex<State>>;

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Socket { path: cfg.socket.clone(), source })?;
    if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
        return Err(DaemonError::Running { path: cfg.socket.clone() });
    }
    // --- metrics and event files: claimed first, so a bad address or path fails before
    // anything is loaded or attached.
    let metrics_listener = match cfg.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|source| DaemonError::Metrics { addr, source })?),
        None => None,
    };
    let events_file = match &cfg.events_file {
        Some(path) => Some(
            sink::EventFile::open(path, cfg.events_file_max_bytes)
                .map_err(|source| DaemonError::EventsFile { path: path.clone(), source })?,
        ),
        None => None,
    };
    // ---
    // --- policy directory: its policy is installed like --policy; when it is missing or
    // invalid (logged and reported), the last-known-good one below is taken instead.
    let mut policy_dir = cfg.policy_dir.as_deref().map(crate::watch::PolicyDir::open).transpose()?;
    let from_dir = policy_dir.as_mut().and_then(|d| d.initial());
    // ---
    // --- Kubernetes objects: read before the first install, which translates with them.
    let mut objects_dir = cfg.k8s_objects.as_deref().map(crate::watch::ObjectsDir::open).transpose()?;
    let initial_objects = objects_dir.as_mut().map(|d| d.initial().unwrap_or_default());
    // The Kubernetes API likewise: its first snapshot, waited for a while.
    let mut api = match &cfg.k8s_api {
        Some(c) => Some(crate::k8s::api::ApiSource::start(c).await?),
        None => None,
    };
    let initial_objects = match api.as_mut() {
        Some(a) => Some(a.initial(crate::k8s::api::START_WAIT).await.unwrap_or_default()),
        None => initial_objects,
    };
    // ---
    // --- fleet: the same, from etcd (a few seconds at most when etcd is unreachable).
    let mut fleet = cfg.fleet.clone().map(|(target, host)| crate::fleet::Source::new(target, host));
    let from_fleet = match fleet.as_mut() {
        Some(f) => f.initial().await,
        None => None,
    };
    // ---
    let mut datapath = Datapath::load(cfg.pins.clone(), &cfg.limits)?;
    let maps = MapWriter::new(&mut datapath.ebpf, &cfg.limits)
        .map_err(DaemonError::from)
        .and_then(|writer| Ok((writer, EventSources::take(&mut datapath.ebpf)?)));
    let (writer, sources) = match maps {
        Ok(maps) => maps,
        Err(e) => {
            datapath.rollback();
            return Err(e);
        }
    };
    let hub = Arc::new(EventHub::new(cfg.events_history, CLIENT_LAG));
    let grants = match crate::grants::Store::load(&cfg.state_dir) {
        Ok(g) => g,
        Err(e) => {
            datapath.rollback();
            return Err(e.into());
        }
    };
    let inventory = match crate::inventory::Inventory::load(&cfg.state_dir) {
        Ok(i) => Arc::new(Mutex::new(i)),
        Err(e) => {
            datapath.rollback();
            return Err(e.into());
        }
    };
    let alerts = match crate::alerts::Engine::load(&cfg.state_dir) {
        Ok(e) => Arc::new(Mutex::new(e)),
        Err(e) => {
            datapath.rollback();
            return Err(e.into());
        }
    };
    let flows = match crate::flowcount::FlowReader::open(&cfg.pins.maps()) {
        Ok(r) => Arc::new(Mutex::new(r)),
        Err(e) => {
            datapath.rollback();
            return Err(e.into());
        }
    };
    // --- node mode: subscribed to link and route changes before the first dump, so that no
    // change between that dump and the watch is missed.
    let node = match node_mode(&cfg, &mut datapath) {
        Ok(n) => n,
        Err(e) => {
            datapath.rollback();
            return Err(e);
        }
    };
    let (node, watch) = match node {
        Some((n, w)) => (Some(n), Some(w)),
        None => (None, None),
    };
    // ---
    let mut state = State {
        flows,
        node,
        grants,
        inventory: inventory.clone(),
        alerts: alerts.clone(),
        writer,
        datapath,
        installed: None,
        interfaces: Vec::new(),
        hub: hub.clone(),
        state_dir: cfg.state_dir.clone(),
        policy_source: None,
        k8s: initial_objects.map(|o| Arc::new(K8sView::new(o.cluster, o.policies))),
        k8s_source: objects_dir.as_ref().map(|d| d.report()).or_else(|| api.as_ref().map(|a| a.report())),
        last_k8s_warnings: Vec::new(),
        gauges: Arc::new(crate::metrics::MapGauges::open(&cfg.pins.maps())),
        xdp_mode: match cfg.xdp_mode {
            XdpMode::Driver => "native",
            XdpMode::Skb => "generic",
            _ => "auto",
        },
    };
    state.policy_source = policy_dir.as_ref().map(|d| d.report()).or_else(|| fleet.as_ref().map(|f| f.report()));

    // Everything from here to the commit below can fail; a failed start detaches and unpins
    // what it attached and pinned, so the host is left as it was found.
    let initial = match (from_dir, policy_dir.as_mut(), from_fleet, fleet.as_mut()) {
        (Some(p), Some(d), _, _) => Some((p, Initial::Dir(d))),
        (_, _, Some(p), Some(f)) => Some((p, Initial::Fleet(f))),
        _ => None,
    };
    let listener = match enforce(&mut state, &cfg, initial) {
        Ok(listener) => listener,
        Err(e) => {
            state.datapath.rollback();
            return Err(e);
        }
    };
    let reconciled = crate::watch::Reconciled { revision: state.writer.revision(), warnings: state.k8s_warnings() };
    if let Some(dir) = objects_dir.as_mut() {
        dir.installed(&reconciled);
    }
    if let Some(api) = api.as_mut() {
        api.installed(&reconciled);
    }

    // --- metrics and event files: subscribed before the reader starts, they miss nothing.
    let sink = events_file.map(|f| {
        tracing::info!(path = %f.path().display(), max_bytes = cfg.events_file_max_bytes, "writing events to a file");
        sink::Sink::start(f, &hub)
    });
    let event_counters = metrics_listener.as_ref().map(|_| metrics::EventCounters::start(&hub));
    {
        let (inventory, alerts) = (inventory.clone(), alerts.clone());
        hub.observe(move |r| {
            let now = unix_now();
            inventory.lock().unwrap_or_else(|p| p.into_inner()).record(r, now);
            alerts.lock().unwrap_or_else(|p| p.into_inner()).observe(r, now);
        });
    }
    let delivered = Arc::new(AtomicU64::new(0));
    // ---
    sources.spawn(hub.clone(), delivered.clone());
    let access = Arc::new(cfg.access.clone());
    tracing::info!(socket = %cfg.socket.display(), "control socket ready");
    let shared: Shared = Arc::new(Mutex::new(state));
    // --- metrics
    if let (Some(tcp), Some(counters)) = (metrics_listener, event_counters) {
        let (scraped, delivered) = (shared.clone(), delivered.clone());
        let gauges = shared.lock().unwrap_or_else(|p| p.into_inner()).gauges.clone();
        let exporter = metrics::Exporter::new(&counters, gauges, move || scrape(&scraped, &delivered));
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!("metrics at http://{addr}/metrics");
        }
        tokio::spawn(metrics::serve(tcp, Arc::new(exporter)));
    }
    // ---
    // --- policy directory: each new version is installed like a push, under the state lock.
    if let Some(dir) = policy_dir {
        let rollback = shared.clone();
        let shared = shared.clone();
        dir.spawn(move |parsed| {
            let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
            install(&mut state, parsed).map(|r| r.revision).map_err(|e| e.to_string())
        })
        .map_err(|source| watcher_failed(&rollback, cfg.policy_dir.as_deref(), &source))?;
    }
    // --- fleet: each new revision is installed like a push, under the state lock.
    if let Some(fleet) = fleet {
        let shared = shared.clone();
        fleet.spawn(Arc::new(move |parsed| {
            let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
            install(&mut state, parsed).map(|r| r.revision).map_err(|e| e.to_string())
        }));
    }
    // --- Kubernetes objects (a directory or the API): each new version is reconciled, under
    // the state lock.
    let reconciler = |shared: Shared| {
        move |objects: crate::k8s::Objects| {
            let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
            reconcile(&mut state, objects.cluster, objects.policies).map_err(|e| e.to_string())
        }
    };
    if let Some(dir) = objects_dir {
        dir.spawn(reconciler(shared.clone())).map_err(|source| watcher_failed(&shared, cfg.k8s_objects.as_deref(), &source))?;
    }
    if let Some(api) = api {
        api.spawn(reconciler(shared.clone()));
    }
    // ---
    // Every second: grants that end are taken out of the policy (the kernel has ended them
    // already), the flows' counters are read when due, the alerts' rate window is closed when
    // it ends and the alerts are published; what was learned is saved now and then.
    let housekeeping = shared.clone();
    let (saved, state_dir, engine, alert_hub) = (inventory.clone(), cfg.state_dir.clone(), alerts.clone(), hub.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut last_save = std::time::Instant::now();
        loop {
            tick.tick().await;
            let shared = housekeeping.clone();
            let _ = tokio::task::spawn_blocking(move || {
                expire_grants(&mut shared.lock().unwrap_or_else(|p| p.into_inner()));
                count_flows(&shared, false);
            })
            .await;
            // Published outside the engine's lock: the hub's observers take it.
            let raised = {
                let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
                engine.tick(unix_now());
                engine.take()
            };
            for a in raised {
                tracing::info!(kind = %a.reason, from = %a.src_segment, severity = a.severity.as_deref().unwrap_or(""), "{}", a.note.as_deref().unwrap_or(""));
                alert_hub.note(a);
            }
            if last_save.elapsed() >= crate::inventory::SAVE_INTERVAL {
                last_save = std::time::Instant::now();
                let (inv, engine, dir) = (saved.clone(), engine.clone(), state_dir.clone());
                let _ = tokio::task::spawn_blocking(move || save_learned(&inv, &engine, &dir)).await;
            }
        }
    });
    shared.lock().unwrap_or_else(|p| p.into_inner()).datapath.commit();
    // --- node mode: interfaces and routes followed from now on.
    if let Some(watch) = watch {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("node-watch".into())
            .spawn(move || follow_node(watch, &shared))
            .map_err(|e| DaemonError::Node(crate::node::NodeError::Watch(e)))?;
    }
    // ---
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (shared, access) = (shared.clone(), access.clone());
                    tokio::spawn(async move { serve(stream, shared, &access).await });
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = fs::remove_file(&cfg.socket);
    count_flows(&shared, true);
    save_learned(&inventory, &alerts, &cfg.state_dir);
    if let Some(sink) = sink {
        sink.finish().await;
    }
    tracing::info!(
        "stopping; enforcement stays in place (pinned under {}); `ztagent uninstall` removes it",
        cfg.pins.root.display()
    );
    Ok(())
}

/// A directory watcher that could not start: the start fails, leaving nothing attached.
fn watcher_failed(shared: &Shared, dir: Option<&Path>, source: &std::io::Error) -> DaemonError {
    shared.lock().unwrap_or_else(|p| p.into_inner()).datapath.rollback();
    DaemonError::PolicyDir(crate::watch::WatchError::Dir {
        path: dir.map(Path::to_path_buf).unwrap_or_default(),
        message: format!("cannot start its watcher: {source}"),
    })
}

/// Installs the policy the agent starts with, attaches to every interface, then serves the
/// control socket: the interfaces are never enforced with an empty policy (which would drop
/// everything) when a policy was given.
fn enforce(state: &mut State, cfg: &Config, initial: Option<(Policy, Initial<'_>)>) -> Result<UnixListener, DaemonError> {
    if let Some(path) = &cfg.policy {
        let parsed = policy::load(path).map_err(|d| DaemonError::Policy(path.display().to_string(), d))?;
        let r = install(state, parsed)?;
        tracing::info!(revision = r.revision, entries = r.entries, "policy {} installed", path.display());
    } else if let Some((parsed, source)) = initial {
        let r = install(state, parsed)?;
        match source {
            Initial::Dir(dir) => dir.installed(r.revision),
            Initial::Fleet(fleet) => fleet.installed(r.revision),
        }
    } else if let Some((revision, saved)) = crate::state::load(&state.state_dir)? {
        // With Kubernetes objects the kernel's policy was translated with an inventory that
        // may be gone: translate and install afresh.
        if state.k8s.is_none() && state.writer.active_slot().is_some() && state.writer.revision() == revision {
            // The pinned maps hold exactly the last-known-good policy (and its grants, whose
            // deadlines the kernel keeps): keep them as they are.
            let compiled = compile_with(&saved, &state.grants.grants, None)?.0;
            state.hub.policy(revision, compiled.clone());
            state.alerts.lock().unwrap_or_else(|p| p.into_inner()).configure(saved.alerts.clone(), unix_now());
            state.installed = Some(Installed { revision, policy: saved, compiled, installed_at: unix_now() });
            tracing::info!(revision, "the pinned policy matches the last-known-good one: adopted as it is");
        } else {
            let r = install(state, saved)?;
            tracing::info!(revision = r.revision, "the last-known-good policy (revision {revision}) installed again");
        }
    } else if state.k8s.is_some() {
        // No native policy: the NetworkPolicies alone (with `version: 1`, nothing else allowed).
        let r = install(state, Policy::default())?;
        tracing::info!(revision = r.revision, "no native policy given: the NetworkPolicies alone installed");
    } else if state.writer.active_slot().is_some() {
        tracing::info!(revision = state.writer.revision(), "keeping the policy already in the kernel");
    } else {
        tracing::warn!("no policy given: every IP packet on the enforced interfaces is dropped until one is pushed");
    }
    for iface in &cfg.ifaces {
        let [ingress, egress] = state.datapath.attach(iface, cfg.xdp_mode, false)?;
        tracing::info!(iface = %iface, ?ingress, ?egress, "enforcing");
        state.interfaces.push(Interface { name: iface.clone(), ingress, egress, ..Interface::default() });
    }
    // --- node mode: the interfaces the patterns match now (an earlier agent's links adopted),
    // then the pins of interfaces that went away while no agent ran.
    let links = match state.node.as_mut() {
        Some(node) => {
            let (links, routes) = crate::node::Node::read()?;
            node.reconcile(&mut state.datapath, &links, &routes);
            Some(links)
        }
        None => None,
    };
    let exists = |name: &str| match &links {
        Some(links) => links.iter().any(|l| l.name == name),
        None => std::ffi::CString::new(name).is_ok_and(|c| {
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
        }),
    };
    for iface in state.datapath.remove_vanished(exists) {
        tracing::info!(iface = %iface, "removed the pins of an interface that is gone");
    }
    // ---
    // Last: clients take the socket as the sign that the agent enforces.
    bind(&cfg.socket, &cfg.access)
}

/// Node mode's state and its watch, when `--iface-pattern` is given.
fn node_mode(cfg: &Config, datapath: &mut Datapath) -> Result<Option<(crate::node::Node, crate::node::Watch)>, DaemonError> {
    if cfg.iface_patterns.is_empty() {
        return Ok(None);
    }
    let watch = crate::node::Watch::subscribe().map_err(crate::node::NodeError::Watch)?;
    let node = crate::node::Node::new(cfg.iface_patterns.clone(), cfg.ifaces.clone(), cfg.xdp_mode, &mut datapath.ebpf)?;
    Ok(Some((node, watch)))
}

/// How long node mode waits for more changes after one, so that a burst (a CNI creating a
/// veth, bringing it up, adding its routes) is read once.
const NODE_SETTLE: std::time::Duration = std::time::Duration::from_millis(20);
/// Node mode reads links and routes again at least this often, changes or not.
const NODE_RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// Node mode's watch: after every change of links or routes (and every `NODE_RESYNC`), the
/// dumps are read outside the state lock and the kernel brought in line under it.
fn follow_node(watch: crate::node::Watch, shared: &Shared) {
    let mut failing = false;
    loop {
        if watch.wait(NODE_RESYNC) {
            std::thread::sleep(NODE_SETTLE);
            watch.drain();
        }
        let (links, routes) = match crate::node::Node::read() {
            Ok(r) => r,
            Err(e) => {
                if !failing {
                    tracing::warn!("{e}; trying again at the next change");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        let State { node, datapath, .. } = &mut *state;
        if let Some(node) = node {
            node.reconcile(datapath, &links, &routes);
        }
    }
}

/// The source a policy found at startup came from, told once it is installed.
enum Initial<'a> {
    Dir(&'a mut crate::watch::PolicyDir),
    Fleet(&'a mut crate::fleet::Source),
}

fn bind(path: &Path, access: &Access) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket { path: path.into(), source };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a dead agent is in the way; a live agent would still answer.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    access.secure(path).map_err(DaemonError::Auth)?;
    Ok(listener)
}

fn install(state: &mut State, parsed: Policy) -> Result<PushResult, DaemonError> {
    let (compiled, warnings) = compile_with(&parsed, &state.grants.grants, state.k8s.as_deref())?;
    state.last_k8s_warnings = warnings;
    install_compiled(state, parsed, compiled)
}

/// What the kernel gets of `parsed`: the policy and the rules of the grants in force, translated
/// with the Kubernetes inputs when there are any; and the translation's warnings.
fn compile_with(
    parsed: &Policy,
    grants: &[crate::grants::Grant],
    k8s: Option<&K8sView>,
) -> Result<(Arc<CompiledPolicy>, Vec<String>), DaemonError> {
    // Under Kubernetes inputs only grants between segments apply (see `with_grants`).
    let (with, skipped) = crate::grants::with_grants(parsed, grants, k8s.is_none());
    for (id, e) in skipped {
        tracing::warn!("grant {id} does not apply to this policy: {e}");
    }
    match k8s {
        None => Ok((Arc::new(policy::compile(&with)), Vec::new())),
        Some(view) => {
            let t = crate::k8s::translate(&with, &view.cluster, &view.policies)?;
            Ok((Arc::new(policy::compile(&t.policy)), t.warnings))
        }
    }
}

/// The one entry point of every Kubernetes source (today the `--k8s-objects` directory; an
/// API watcher would call it the same way): the inventory and the NetworkPolicies are now
/// `cluster` and `policies`. The native policy in force (or `version: 1` if none) is translated
/// with them, compiled and installed like a push (atomically, a new revision). On failure
/// (a translation the native policy refuses, full maps) nothing changes.
fn reconcile(
    state: &mut State,
    cluster: crate::k8s::Cluster,
    policies: Vec<crate::k8s::NetworkPolicy>,
) -> Result<crate::watch::Reconciled, DaemonError> {
    let old = state.k8s.replace(Arc::new(K8sView::new(cluster, policies)));
    let native = state.installed.as_ref().map_or_else(Policy::default, |i| i.policy.clone());
    match install(state, native) {
        Ok(r) => Ok(crate::watch::Reconciled { revision: r.revision, warnings: state.k8s_warnings() }),
        Err(e) => {
            state.k8s = old;
            Err(e)
        }
    }
}

/// The policy in force installed again, with the grants as they are now (a new revision, so
/// every tracked flow is judged again at its next packet).
fn reinstall(state: &mut State) -> Result<PushResult, DaemonError> {
    let parsed = match &state.installed {
        Some(i) => i.policy.clone(),
        None => return Err(crate::grants::GrantError::NoPolicy.into()),
    };
    install(state, parsed)
}

/// As [`install`], with the policy already compiled (with the grants of `state`).
fn install_compiled(state: &mut State, parsed: Policy, compiled: Arc<CompiledPolicy>) -> Result<PushResult, DaemonError> {
    // The deadlines first: a grant's rule must never be in force without its own.
    let (unix, mono) = (unix_now(), crate::mapwriter::monotonic_ns());
    for g in &state.grants.grants {
        state.writer.set_grant(g.index, crate::grants::deadline_ns(g.expires_at, unix, mono))?;
    }
    // Events of the new revision may arrive as soon as it is in force: name them first.
    let revision = state.writer.revision().wrapping_add(1).max(1);
    state.hub.policy(revision, compiled.clone());
    if let Some(view) = &state.k8s {
        state.hub.pods(view.inventory.clone());
    }
    let written = state.writer.apply(&compiled)?;
    let result = PushResult {
        revision: written.revision,
        segments: parsed.segments.len(),
        rules: parsed.rules.len(),
        entries: written.entries,
    };
    state.alerts.lock().unwrap_or_else(|p| p.into_inner()).configure(parsed.alerts.clone(), unix_now());
    // Acknowledged only once the state directory holds it too.
    crate::state::save(&state.state_dir, written.revision, &parsed)?;
    state.installed = Some(Installed { revision: written.revision, policy: parsed, compiled, installed_at: unix_now() });
    Ok(result)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

async fn serve(stream: tokio::net::UnixStream, shared: Shared, access: &Access) {
    if let Err(message) = access.check(&stream) {
        tracing::warn!("refused a control connection: {message}");
        let _ = control::write_reply(stream, &Reply::Error { message }).await;
        return;
    }
    let (read, write) = stream.into_split();
    let reply = match control::read_request(read).await {
        Ok(Request::Events { follow, filter }) => {
            let hub = match shared.lock() {
                Ok(s) => s.hub.clone(),
                Err(p) => p.into_inner().hub.clone(),
            };
            if let Err(e) = stream_events(write, &hub, follow, &filter).await {
                tracing::debug!("events client went away: {e}");
            }
            return;
        }
        Ok(req) => {
            let shared = shared.clone();
            let large = matches!(&req, Request::Push { source, .. } if source.len() > LARGE_REQUEST);
            // Map writes are blocking syscalls: keep them off the async workers.
            let reply = tokio::task::spawn_blocking(move || handle(req, &shared))
                .await
                .unwrap_or_else(|e| Reply::Error { message: format!("internal error: {e}") });
            if large {
                release_memory();
            }
            reply
        }
        Err(message) => {
            // Possibly a request over the size limit, read up to it.
            release_memory();
            Reply::Error { message }
        }
    };
    if let Err(e) = control::write_reply(write, &reply).await {
        tracing::debug!("client went away: {e}");
    }
}

/// A push this large leaves freed memory behind worth giving back (see [`release_memory`]).
const LARGE_REQUEST: usize = 1 << 20;

/// Gives the memory a large request used back to the system. Parsing a 20 MB policy takes a
/// few hundred MB, and glibc keeps what is freed in its heaps otherwise: measured, 258 MB kept
/// after the hostile-input corpus.
fn release_memory() {
    // SAFETY: malloc_trim only returns the allocator's own free memory to the system.
    unsafe { libc::malloc_trim(0) };
}

fn handle(req: Request, shared: &Shared) -> Reply {
    // The inventory as of now: the flows' counters read first (outside the state lock).
    if matches!(req, Request::Inventory { .. }) {
        count_flows(shared, true);
    }
    // A push is parsed and compiled before taking the state lock: a large policy must not keep
    // `status` and other clients waiting.
    let pushed = match &req {
        Request::Push { origin, source } => match policy::parse(source, origin) {
            Err(d) => return Reply::Error { message: format!("the policy is invalid:\n{d}") },
            Ok(parsed) => {
                let (grants, k8s) = {
                    let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                    (s.grants.grants.clone(), s.k8s.clone())
                };
                match compile_with(&parsed, &grants, k8s.as_deref()) {
                    Ok((compiled, warnings)) => Some((parsed, compiled, warnings, grants, k8s)),
                    Err(e) => return Reply::Error { message: e.to_string() },
                }
            }
        },
        _ => None,
    };
    let mut state = match shared.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    match req {
        Request::Push { origin, .. } => match pushed {
            None => Reply::Error { message: "internal error: a push without a policy".into() },
            Some((parsed, mut compiled, mut warnings, grants, k8s)) => {
                // A grant given or ended, or new Kubernetes objects, while this push was compiled.
                let same_k8s = match (&k8s, &state.k8s) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if grants != state.grants.grants || !same_k8s {
                    match compile_with(&parsed, &state.grants.grants, state.k8s.as_deref()) {
                        Ok((c, w)) => (compiled, warnings) = (c, w),
                        Err(e) => return Reply::Error { message: e.to_string() },
                    }
                }
                state.last_k8s_warnings = warnings;
                match install_compiled(&mut state, parsed, compiled) {
                    Ok(r) => {
                        tracing::info!(revision = r.revision, entries = r.entries, "policy {origin} pushed");
                        Reply::Pushed(r)
                    }
                    Err(e) => Reply::Error { message: e.to_string() },
                }
            }
        },
        Request::Grant { from, to, ports, seconds, reason } => match grant(&mut state, from, to, ports, seconds, reason) {
            Ok((grant, revision)) => Reply::Granted { grant, revision },
            Err(e) => Reply::Error { message: e.to_string() },
        },
        Request::Grants => Reply::Grants { grants: state.grants.grants.clone() },
        Request::Inventory { since } => Reply::Inventory(state.inventory.lock().unwrap_or_else(|p| p.into_inner()).list(since)),
        Request::Revoke { id } => match end_grant(&mut state, id) {
            Ok((grant, revision)) => Reply::Revoked { grant, revision },
            Err(e) => Reply::Error { message: e.to_string() },
        },
        Request::Get => match &state.installed {
            Some(i) => match serde_json::from_str(&i.policy.to_json()) {
                Ok(policy) => Reply::Policy { revision: i.revision, policy },
                Err(e) => Reply::Error { message: format!("internal error: {e}") },
            },
            None => Reply::Error { message: "this agent has not been given a policy yet; push one with `ztagent policy push FILE`".into() },
        },
        Request::Check(flow) => match &state.installed {
            Some(i) => {
                let mut r = check_with_pods(&i.compiled, &flow, state.k8s.as_ref().map(|v| &*v.inventory));
                r.revision = Some(i.revision);
                Reply::Check(r)
            }
            None => Reply::Error { message: "this agent has no policy yet: every IP packet is dropped".into() },
        },
        Request::Events { .. } => Reply::Error { message: "internal error: events are streamed".into() },
        Request::Status => {
            let counters = match state.datapath.counters() {
                Ok(c) => c.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                Err(e) => return Reply::Error { message: error_chain(&e) },
            };
            let limits = state.installed.as_ref().map_or_else(Vec::new, |i| limit_status(&state.writer, &i.compiled));
            Reply::Status(Box::new(Status {
                limits,
                revision: state.writer.revision(),
                mode: state.installed.as_ref().map_or(Mode::Enforce, |i| i.compiled.mode).as_str().into(),
                pin_path: state.datapath.pins.root.display().to_string(),
                interfaces: state
                    .interfaces
                    .iter()
                    .map(|i| Interface { name: i.name.clone(), ingress: i.ingress, egress: i.egress, ..Interface::default() })
                    .chain(state.node.iter().flat_map(|n| n.status()).map(|p| Interface {
                        name: p.pod.name,
                        ingress: p.pod.ingress,
                        egress: p.pod.egress,
                        pattern: Some(p.pod.pattern),
                        ifindex: Some(p.pod.ifindex),
                        guarded: true,
                        sources: p.sources,
                    }))
                    .collect(),
                counters,
                policy_source: state.policy_source.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()),
                k8s_source: state.k8s_source.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()),
                maps: state
                    .gauges
                    .fill()
                    .into_iter()
                    .map(|m| control::MapStatus { map: m.map.into(), entries: m.entries, capacity: m.capacity })
                    .collect(),
                xdp_mode: state.xdp_mode.into(),
            }))
        }
    }
}

/// Gives a time-bound grant: checked against the policy in force, kept in the state directory,
/// its deadline in the kernel, then its rule installed with the policy (a new revision).
fn grant(
    state: &mut State,
    from: String,
    to: String,
    ports: Vec<String>,
    seconds: u64,
    reason: String,
) -> Result<(crate::grants::Grant, u32), DaemonError> {
    use crate::grants::{GrantError, check_duration};
    let d = check_duration(std::time::Duration::from_secs(seconds))?;
    let Some(installed) = &state.installed else {
        return Err(GrantError::NoPolicy.into());
    };
    // An address block as its network (`10.20.9.7` is `10.20.9.7/32`).
    let from = match crate::grants::block(&from)? {
        Some(net) if state.k8s.is_some() => return Err(GrantError::BlockUnderKubernetes(net.to_string()).into()),
        Some(net) => net.to_string(),
        None => from,
    };
    let g = state.grants.add(from, to, ports, reason, unix_now(), d)?;
    if let Err(e) = crate::grants::check(&installed.policy, &g) {
        let _ = state.grants.remove(g.id);
        return Err(e.into());
    }
    let installed = reinstall(state).and_then(|r| Ok((r, state.grants.save(&state.state_dir)?)));
    match installed {
        Ok((r, ())) => {
            tracing::info!(id = g.id, from = %g.from, to = %g.to, seconds, reason = %g.reason, revision = r.revision, "grant given");
            note_grant(state, &g, "granted", "grant", r.revision);
            Ok((g, r.revision))
        }
        Err(e) => {
            // Not in force: take it back out (the kernel's old policy never held its rule).
            let _ = state.grants.remove(g.id);
            let _ = state.writer.set_grant(g.index, 0);
            Err(e)
        }
    }
}

/// Ends grant `id` now: its deadline first (the kernel cuts its flows at their next packet),
/// then the policy without its rule.
fn end_grant(state: &mut State, id: u32) -> Result<(crate::grants::Grant, u32), DaemonError> {
    let g = state.grants.remove(id)?;
    state.writer.set_grant(g.index, 0)?;
    state.grants.save(&state.state_dir)?;
    let r = reinstall(state)?;
    tracing::info!(id, revision = r.revision, "grant revoked");
    note_grant(state, &g, "grant-ended", "revoked", r.revision);
    Ok((g, r.revision))
}

/// Removes the grants that have ended (the kernel enforced their deadlines already) and
/// installs the policy without their rules; reported as `grant-ended` events.
fn expire_grants(state: &mut State) {
    let ended = state.grants.take_ended(unix_now());
    if ended.is_empty() {
        return;
    }
    if let Err(e) = state.grants.save(&state.state_dir) {
        tracing::warn!("{e}");
    }
    let revision = match reinstall(state) {
        Ok(r) => r.revision,
        Err(e) => {
            tracing::warn!("cannot install the policy without the ended grants: {e}");
            state.writer.revision()
        }
    };
    for g in &ended {
        tracing::info!(id = g.id, revision, "grant ended");
        note_grant(state, g, "grant-ended", "expired", revision);
    }
}

/// Reads the flows' packet and byte counters into the inventory and the alerts' rates: now
/// (`now`), or when a periodic read is due.
fn count_flows(shared: &Shared, now: bool) {
    let (reader, compiled, inventory, alerts) = {
        let st = shared.lock().unwrap_or_else(|p| p.into_inner());
        (st.flows.clone(), st.installed.as_ref().map(|i| i.compiled.clone()), st.inventory.clone(), st.alerts.clone())
    };
    // Held from the read to the count: two reads counted in the wrong order would count twice.
    let mut reader = reader.lock().unwrap_or_else(|p| p.into_inner());
    if !now && !reader.due() {
        return;
    }
    let started = std::time::Instant::now();
    let entries = reader.read();
    let Some(compiled) = compiled else { return };
    let mut lookup = None;
    let counted = inventory.lock().unwrap_or_else(|p| p.into_inner()).count_flows(
        &entries,
        |k, v| Some(crate::flowcount::key_of(&compiled, lookup.get_or_insert_with(|| compiled.index()), k, v)),
        unix_now(),
    );
    reader.took(started.elapsed());
    drop(reader);
    alerts.lock().unwrap_or_else(|p| p.into_inner()).traffic(counted);
}

/// Saves what the agent learned: the inventory and the alerts' baseline.
fn save_learned(inventory: &Mutex<crate::inventory::Inventory>, alerts: &Mutex<crate::alerts::Engine>, dir: &Path) {
    if let Err(e) = inventory.lock().unwrap_or_else(|p| p.into_inner()).save(dir) {
        tracing::warn!("{e}");
    }
    if let Err(e) = alerts.lock().unwrap_or_else(|p| p.into_inner()).save(dir) {
        tracing::warn!("{e}");
    }
}

/// An event of the agent's own about grant `g`.
fn note_grant(state: &State, g: &crate::grants::Grant, verdict: &str, reason: &str, revision: u32) {
    state.hub.note(crate::events::EventRecord {
        rule: Some(format!("grant-{}", g.id)),
        proto: g.ports.join(","),
        revision,
        note: Some(g.reason.clone()),
        ..crate::events::EventRecord::own(verdict, reason, &g.from, &g.to)
    });
}

/// The verdict the datapath gives `flow` under `compiled`, with names.
pub fn check(compiled: &CompiledPolicy, flow: &Flow) -> CheckResult {
    check_with_pods(compiled, flow, None)
}

/// As [`check`], also naming the pods (of the inventory `pods`) at either end.
pub fn check_with_pods(compiled: &CompiledPolicy, flow: &Flow, pods: Option<&crate::k8s::Inventory>) -> CheckResult {
    let d = compiled.lookup(flow.src, flow.dst, flow.proto, flow.port);
    let pod = |ip| pods.and_then(|p| p.pod(ip)).map(str::to_string);
    CheckResult {
        src_pod: pod(flow.src),
        dst_pod: pod(flow.dst),
        verdict: if d.action == agent_common::ACTION_ALLOW { "allow" } else { "deny" }.into(),
        rule: compiled.rule_name(d.rule).map(str::to_string),
        src_segment: compiled.segment_name(d.src_segment).unwrap_or("?").to_string(),
        dst_segment: compiled.segment_name(d.dst_segment).unwrap_or("?").to_string(),
        rate_limit: compiled.limit_name(d.limit).map(str::to_string),
        revision: None,
        mode: compiled.mode.as_str().into(),
        audit: d.audit,
    }
}

/// What the metrics endpoint reads of the agent at a scrape: a few map lookups under the lock.
fn scrape(shared: &Shared, delivered: &AtomicU64) -> Result<metrics::Scrape, String> {
    let state = shared.lock().unwrap_or_else(|p| p.into_inner());
    let counters = state.datapath.counters().map_err(|e| error_chain(&e))?;
    let limits = state.installed.as_ref().map_or_else(Vec::new, |i| {
        i.compiled
            .limits
            .iter()
            .enumerate()
            .map(|(j, l)| {
                let (_, stats) = state.writer.limit_stats(j).unwrap_or_default();
                metrics::LimitCounts {
                    name: l.name.clone(),
                    packets_passed: stats.packets_passed,
                    packets_dropped: stats.packets_dropped,
                }
            })
            .collect()
    });
    let segments = match &state.installed {
        Some(i) => {
            let names = &i.compiled.segment_names;
            let counts = state.datapath.segment_counters(names.len()).map_err(|e| error_chain(&e))?;
            names.iter().cloned().zip(counts).collect()
        }
        None => Vec::new(),
    };
    Ok(metrics::Scrape {
        counters,
        events_delivered: delivered.load(Ordering::Relaxed),
        limits,
        revision: state.writer.revision(),
        last_push: state.installed.as_ref().map(|i| i.installed_at),
        segments,
        inventory: state.inventory.lock().unwrap_or_else(|p| p.into_inner()).size(),
        grants: state.grants.grants.len() as u64,
        fleet: state.policy_source.as_ref().and_then(|r| {
            let r = r.lock().unwrap_or_else(|p| p.into_inner());
            r.connected.map(|c| (c, r.fleet_revision.unwrap_or(0)))
        }),
    })
}

/// The state of every rate limit in force, read from the kernel.
fn limit_status(writer: &MapWriter, compiled: &CompiledPolicy) -> Vec<LimitStatus> {
    let describe = |b: &Option<policy::Bucket>| {
        b.as_ref().map(|b| {
            let per = match b.per_seconds {
                1 => "second",
                60 => "minute",
                _ => "hour",
            };
            format!("{}/{per}, burst {}", b.rate, b.burst)
        })
    };
    let now = crate::mapwriter::monotonic_ns() << TICK_SHIFT;
    compiled
        .limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (cfg, stats) = writer.limit_stats(i).unwrap_or_default();
            let (tat, live) = writer.bucket_state(l.fingerprint, BUCKET_PACKETS);
            let packets = cfg.buckets[BUCKET_PACKETS];
            // GCRA: the bucket's clock runs ahead of now by what has been spent.
            let packet_tokens = (!l.per_address && packets.cost != 0).then(|| {
                let spent = tat.map_or(0, |t| (t.wrapping_sub(now) as i64).max(0) as u64);
                packets.tolerance.saturating_sub(spent) as f64 / packets.cost as f64
            });
            LimitStatus {
                name: l.name.clone(),
                scope: if l.per_address { "address" } else { "segment" }.into(),
                packets: describe(&l.packets),
                connections: describe(&l.connections),
                bytes: describe(&l.bytes),
                packet_tokens,
                address_buckets: live,
                evicted: stats.buckets_created.saturating_sub(live as u64),
                packets_passed: stats.packets_passed,
                packets_dropped: stats.packets_dropped,
                connections_passed: stats.connections_passed,
                connections_dropped: stats.connections_dropped,
                bytes_passed: stats.bytes_passed,
                bytes_dropped: stats.bytes_dropped,
            }
        })
        .collect()
}

/// Sends the recent events matching `filter`, then (following) the live ones as they come. A
/// client that falls more than `CLIENT_LAG` events behind is told how many it missed and
/// carries on from the newest: it never holds up the reader or other clients.
async fn stream_events(
    mut w: tokio::net::unix::OwnedWriteHalf,
    hub: &EventHub,
    follow: bool,
    filter: &EventFilter,
) -> std::io::Result<()> {
    use tokio::{io::AsyncWriteExt, sync::broadcast::error::RecvError};
    let Subscription { history, mut live } = hub.subscribe(filter);
    for r in history {
        control::write_line(&mut w, &*r).await?;
    }
    if !follow {
        return w.shutdown().await;
    }
    loop {
        match live.recv().await {
            Ok(r) if filter.matches(&r) => control::write_line(&mut w, &*r).await?,
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => control::write_line(&mut w, &control::Missed { missed }).await?,
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// The kernel maps events come from: the ring buffer, and the aggregation maps the sweep reads.
struct EventSources {
    ring: RingBuf<MapData>,
    denied: aya::maps::HashMap<MapData, DenyKey, DenyValue>,
    dropped: aya::maps::HashMap<MapData, AggKey, AggValue>,
}

impl EventSources {
    fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DaemonError> {
        let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| {
                DaemonError::Datapath(crate::datapath::DatapathError::Map { name, message: "missing".into() })
            })
        };
        let err = |name: &'static str| {
            move |e: aya::maps::MapError| {
                DaemonError::Datapath(crate::datapath::DatapathError::Map { name, message: e.to_string() })
            }
        };
        Ok(EventSources {
            ring: RingBuf::try_from(take(ebpf, maps::EVENTS)?).map_err(err(maps::EVENTS))?,
            denied: aya::maps::HashMap::try_from(take(ebpf, maps::DENIED)?).map_err(err(maps::DENIED))?,
            dropped: aya::maps::HashMap::try_from(take(ebpf, maps::AGG)?).map_err(err(maps::AGG))?,
        })
    }

    /// The reader (woken by the ring buffer) and the sweep (once an interval). `delivered`
    /// counts the events read.
    fn spawn(self, hub: Arc<EventHub>, delivered: Arc<AtomicU64>) {
        let EventSources { ring, denied, dropped } = self;
        let reader_hub = hub.clone();
        tokio::spawn(async move {
            // SAFETY: the RingBuf owns its map fd, which stays open and the same while the
            // AsyncFd owns the RingBuf.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
            };
            let mut fd = match registered {
                Ok(fd) => fd,
                Err(e) => return tracing::error!("cannot watch the event ring buffer: {e}"),
            };
            let mut batch: Vec<Event> = Vec::with_capacity(4096);
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => return tracing::error!("event ring buffer: {e}"),
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<Event>() {
                        // SAFETY: the kernel wrote an Event (plain data) at the start of the item.
                        batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
                    }
                }
                guard.clear_ready();
                delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                reader_hub.publish(&batch);
                batch.clear();
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_nanos(agent_common::EVENT_INTERVAL_NS));
            loop {
                tick.tick().await;
                let d = denied.iter().filter_map(Result::ok);
                let a = dropped.iter().filter_map(Result::ok);
                hub.sweep(d, a);
            }
        });
    }
}
