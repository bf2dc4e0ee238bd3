//! Startup: the outputs claimed, the sources' first versions read, the datapath and the
//! stores loaded, then the first policy installed and the interfaces attached.
use std::{
    fs,
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::net::{TcpListener, UnixListener};

use super::reconcile::{compile_with, install};
use super::{Config, DaemonError, Installed, K8sView, State, unix_now};
use crate::{
    api::{Interface, auth::Access},
    events::EventHub,
    kernel::{
        datapath::{Datapath, XdpMode},
        mapwriter::MapWriter,
        ring::EventSources,
    },
    observe::{metrics, sink},
    policy::{self, Policy},
    sources::{etcd, k8s_api, objects_dir::ObjectsDir, policy_dir::PolicyDir},
};

/// How far behind the live stream a client may fall before it is told what it missed.
const CLIENT_LAG: usize = 16_384;

/// The outputs, claimed before anything is loaded or attached.
pub(super) struct Outputs {
    pub metrics: Option<TcpListener>,
    pub events_file: Option<sink::EventFile>,
}

impl Outputs {
    pub(super) async fn claim(cfg: &Config) -> Result<Outputs, DaemonError> {
        let metrics = match cfg.metrics_addr {
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
        Ok(Outputs { metrics, events_file })
    }
}

/// The sources, and what each had at startup.
pub(super) struct Inputs {
    pub policy_dir: Option<PolicyDir>,
    pub from_dir: Option<Policy>,
    pub objects_dir: Option<ObjectsDir>,
    pub api: Option<k8s_api::ApiSource>,
    pub initial_objects: Option<crate::k8s::Objects>,
    pub fleet: Option<etcd::Source>,
    pub from_fleet: Option<Policy>,
}

impl Inputs {
    pub(super) async fn open(cfg: &Config) -> Result<Inputs, DaemonError> {
        // The policy directory: its policy is installed like --policy; when it is missing or
        // invalid (logged and reported), the last-known-good one is taken instead.
        let mut policy_dir = cfg.policy_dir.as_deref().map(PolicyDir::open).transpose()?;
        let from_dir = policy_dir.as_mut().and_then(|d| d.initial());
        // Kubernetes objects: read before the first install, which translates with them.
        let mut objects_dir = cfg.k8s_objects.as_deref().map(ObjectsDir::open).transpose()?;
        let initial_objects = objects_dir.as_mut().map(|d| d.initial().unwrap_or_default());
        // The Kubernetes API likewise: its first snapshot, waited for a while.
        let mut api = match &cfg.k8s_api {
            Some(c) => Some(k8s_api::ApiSource::start(c).await?),
            None => None,
        };
        let initial_objects = match api.as_mut() {
            Some(a) => Some(a.initial(k8s_api::START_WAIT).await.unwrap_or_default()),
            None => initial_objects,
        };
        // The fleet: the same, from etcd (a few seconds at most when etcd is unreachable).
        let mut fleet = cfg.fleet.clone().map(|(target, host)| etcd::Source::new(target, host));
        let from_fleet = match fleet.as_mut() {
            Some(f) => f.initial().await,
            None => None,
        };
        Ok(Inputs { policy_dir, from_dir, objects_dir, api, initial_objects, fleet, from_fleet })
    }
}

/// What is opened once the datapath is loaded (a failure rolls the datapath back).
struct Opened {
    writer: MapWriter,
    events: EventSources,
    grants: super::grants::Store,
    inventory: crate::observe::inventory::Inventory,
    apis: crate::observe::apis::ApiInventory,
    alerts: crate::observe::alerts::Engine,
    flows: crate::kernel::flowcount::FlowReader,
    node: Option<(crate::kernel::node::Node, crate::kernel::node::Watch)>,
}

fn open(cfg: &Config, datapath: &mut Datapath) -> Result<Opened, DaemonError> {
    let writer = MapWriter::new(&mut datapath.ebpf, &cfg.limits)?;
    let events = EventSources::take(&mut datapath.ebpf)?;
    let grants = super::grants::Store::load(&cfg.state_dir)?;
    let inventory = crate::observe::inventory::Inventory::load(&cfg.state_dir)?;
    let alerts = crate::observe::alerts::Engine::load(&cfg.state_dir)?;
    let apis = crate::observe::apis::ApiInventory::load(&cfg.state_dir)?;
    let flows = crate::kernel::flowcount::FlowReader::open(&cfg.pins.maps())?;
    // Node mode: subscribed to link and route changes before the first dump, so that no
    // change between that dump and the watch is missed.
    let node = node_mode(cfg, datapath)?;
    Ok(Opened { writer, events, grants, inventory, apis, alerts, flows, node })
}

/// Loads the datapath and the stores: the agent's state, the kernel's event sources, and node
/// mode's watch.
pub(super) fn load(
    cfg: &Config,
    inputs: &mut Inputs,
) -> Result<(State, EventSources, Option<crate::kernel::node::Watch>), DaemonError> {
    let mut datapath = Datapath::load(cfg.pins.clone(), &cfg.limits)?;
    let o = match open(cfg, &mut datapath) {
        Ok(o) => o,
        Err(e) => {
            datapath.rollback();
            return Err(e);
        }
    };
    let (node, watch) = match o.node {
        Some((n, w)) => (Some(n), Some(w)),
        None => (None, None),
    };
    let state = State {
        flows: Arc::new(Mutex::new(o.flows)),
        node,
        grants: o.grants,
        inventory: Arc::new(Mutex::new(o.inventory)),
        apis: Arc::new(Mutex::new(o.apis)),
        alerts: Arc::new(Mutex::new(o.alerts)),
        writer: o.writer,
        datapath,
        installed: None,
        pushed_from: None,
        interfaces: Vec::new(),
        hub: Arc::new(EventHub::new(cfg.events_history, CLIENT_LAG)),
        state_dir: cfg.state_dir.clone(),
        policy_source: inputs
            .policy_dir
            .as_ref()
            .map(|d| d.report())
            .or_else(|| inputs.fleet.as_ref().map(|f| f.report())),
        k8s: inputs.initial_objects.take().map(|o| Arc::new(K8sView::new(o.cluster, o.policies))),
        k8s_source: inputs.objects_dir.as_ref().map(|d| d.report()).or_else(|| inputs.api.as_ref().map(|a| a.report())),
        last_k8s_warnings: Vec::new(),
        pins: crate::api::PinsStatus { intact: true, ..Default::default() },
        gauges: Arc::new(crate::kernel::counters::MapGauges::open(&cfg.pins.maps())),
        xdp_mode: match cfg.xdp_mode {
            XdpMode::Driver => "native",
            XdpMode::Skb => "generic",
            _ => "auto",
        },
    };
    Ok((state, o.events, watch))
}

/// Installs the first policy (the sources' own, told once installed), attaches, and binds the
/// control socket; the Kubernetes sources are told their objects are in force.
pub(super) fn start_enforcing(
    state: &mut State,
    cfg: &Config,
    inputs: &mut Inputs,
) -> Result<UnixListener, DaemonError> {
    let initial =
        match (inputs.from_dir.take(), inputs.policy_dir.as_mut(), inputs.from_fleet.take(), inputs.fleet.as_mut()) {
            (Some(p), Some(d), _, _) => Some((p, Initial::Dir(d))),
            (_, _, Some(p), Some(f)) => Some((p, Initial::Fleet(f))),
            _ => None,
        };
    let listener = enforce(state, cfg, initial)?;
    let reconciled =
        crate::sources::k8s_versions::Reconciled { revision: state.writer.revision(), warnings: state.k8s_warnings() };
    if let Some(dir) = inputs.objects_dir.as_mut() {
        dir.installed(&reconciled);
    }
    if let Some(api) = inputs.api.as_mut() {
        api.installed(&reconciled);
    }
    Ok(listener)
}

/// Installs the policy the agent starts with, attaches to every interface, then serves the
/// control socket: the interfaces are never enforced with an empty policy (which would drop
/// everything) when a policy was given.
fn enforce(
    state: &mut State,
    cfg: &Config,
    initial: Option<(Policy, Initial<'_>)>,
) -> Result<UnixListener, DaemonError> {
    let last_known_good = crate::store::load_last_known_good(&state.state_dir)?;
    if let Some((path, parsed)) = from_file(cfg, last_known_good.as_ref())? {
        state.pushed_from = None;
        let r = install(state, parsed)?;
        tracing::info!(revision = r.revision, entries = r.entries, "policy {} installed", path.display());
    } else if let Some((parsed, source)) = initial {
        let r = install(state, parsed)?;
        match source {
            Initial::Dir(dir) => dir.installed(r.revision),
            Initial::Fleet(fleet) => fleet.installed(r.revision),
        }
    } else if let Some(crate::store::LastKnownGood { revision, policy: saved, pushed }) = last_known_good {
        state.pushed_from = pushed;
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
            let (links, routes) = crate::kernel::node::Node::read()?;
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

/// `--policy FILE` to install at start, or None: without `--policy`, and when a policy pushed
/// since the agent last took FILE is newer (the last-known-good, a `policy push` that differs
/// from FILE): that one stays in force, loudly, unless `--policy-overrides-pushed`.
fn from_file<'a>(
    cfg: &'a Config,
    last_known_good: Option<&crate::store::LastKnownGood>,
) -> Result<Option<(&'a Path, Policy)>, DaemonError> {
    let Some(path) = cfg.policy.as_deref() else { return Ok(None) };
    let parsed = policy::load(path).map_err(|d| DaemonError::Policy(path.display().to_string(), d))?;
    let pushed = last_known_good.and_then(|l| Some((l.revision, l.pushed.as_deref()?, &l.policy)));
    match pushed {
        Some((revision, origin, pushed)) if *pushed != parsed => {
            if cfg.policy_overrides_pushed {
                tracing::warn!(
                    "--policy-overrides-pushed: {} replaces the newer policy pushed since (revision {revision}, from {origin})",
                    path.display()
                );
                Ok(Some((path, parsed)))
            } else {
                tracing::warn!(
                    "{} was NOT installed: a policy pushed since (revision {revision}, from {origin}) is newer and stays in force; push the file, or restart with --policy-overrides-pushed, to enforce it",
                    path.display()
                );
                Ok(None)
            }
        }
        _ => Ok(Some((path, parsed))),
    }
}

/// Node mode's state and its watch, when `--iface-pattern` is given.
fn node_mode(
    cfg: &Config,
    datapath: &mut Datapath,
) -> Result<Option<(crate::kernel::node::Node, crate::kernel::node::Watch)>, DaemonError> {
    if cfg.iface_patterns.is_empty() {
        return Ok(None);
    }
    let watch = crate::kernel::node::Watch::subscribe().map_err(crate::kernel::node::NodeError::Watch)?;
    let node = crate::kernel::node::Node::new(
        cfg.iface_patterns.clone(),
        cfg.ifaces.clone(),
        cfg.xdp_mode,
        &mut datapath.ebpf,
    )?;
    Ok(Some((node, watch)))
}

/// The source a policy found at startup came from, told once it is installed.
enum Initial<'a> {
    Dir(&'a mut PolicyDir),
    Fleet(&'a mut etcd::Source),
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
