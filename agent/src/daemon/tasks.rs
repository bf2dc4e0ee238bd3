//! What runs in the background: the event reader and the observers, the sources' watchers,
//! the housekeeping tick, the metrics endpoint, node mode's watch.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::TcpListener;

use super::reconcile::{install, reconcile};
use super::startup::Inputs;
use super::{Config, DaemonError, Shared, State, lock, unix_now};
use crate::{
    events::EventHub,
    kernel::ring::EventSources,
    observe::{alerts, apis::ApiInventory, inventory::Inventory, metrics},
    sources::Refused,
};

/// What the agent learns from the events and keeps in its state directory.
#[derive(Clone)]
pub(super) struct Learned {
    pub inventory: Arc<Mutex<Inventory>>,
    pub apis: Arc<Mutex<ApiInventory>>,
}

/// Every record published feeds the inventory, the API inventory and the alerts (each under
/// its own lock).
pub(super) fn observe_events(hub: &EventHub, learned: &Learned, alerts: &Arc<Mutex<alerts::Engine>>) {
    let (learned, alerts) = (learned.clone(), alerts.clone());
    hub.observe(move |r| {
        let now = unix_now();
        // A request event is not a flow: it feeds the API inventory and its alerts only (the
        // flow inventory and the flow alerts would count one flow per request).
        if r.http.is_some() {
            let novelty = learned.apis.lock().unwrap_or_else(|p| p.into_inner()).record(r, now);
            alerts.lock().unwrap_or_else(|p| p.into_inner()).observe_api(r, &novelty, now);
            return;
        }
        learned.inventory.lock().unwrap_or_else(|p| p.into_inner()).record(r, now);
        alerts.lock().unwrap_or_else(|p| p.into_inner()).observe(r, now);
    });
}

/// The kernel's events into the hub: the ring buffer's as they come, the sweep's once an
/// interval.
pub(super) fn spawn_event_reader(events: EventSources, hub: Arc<EventHub>, delivered: Arc<AtomicU64>) {
    let reader = hub.clone();
    events.spawn(
        move |batch, http| reader.publish(batch, http),
        move |denied, dropped, flood| hub.sweep(denied, dropped, flood),
        delivered,
    );
}

/// `/metrics`, served on its own task.
pub(super) fn spawn_metrics(
    tcp: TcpListener,
    counters: &metrics::EventCounters,
    shared: &Shared,
    delivered: &Arc<AtomicU64>,
) {
    let (scraped, delivered) = (shared.clone(), delivered.clone());
    let gauges = lock(shared).gauges.clone();
    let exporter = metrics::Exporter::new(counters, move || gauges.fill(), move || scrape(&scraped, &delivered));
    if let Ok(addr) = tcp.local_addr() {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    tokio::spawn(metrics::serve(tcp, Arc::new(exporter)));
}

/// The sources' watchers: each new version is installed (a policy, like a push) or reconciled
/// (Kubernetes objects), under the state lock.
pub(super) fn spawn_sources(inputs: Inputs, shared: &Shared, cfg: &Config) -> Result<(), DaemonError> {
    if let Some(dir) = inputs.policy_dir {
        let rollback = shared.clone();
        let shared = shared.clone();
        dir.spawn(move |parsed| {
            let mut state = lock(&shared);
            state.pushed_from = None;
            install(&mut state, parsed).map(|r| r.revision).map_err(Refused::new)
        })
        .map_err(|source| watcher_failed(&rollback, cfg.policy_dir.as_deref(), &source))?;
    }
    if let Some(fleet) = inputs.fleet {
        let shared = shared.clone();
        fleet.spawn(Arc::new(move |parsed| {
            let mut state = lock(&shared);
            state.pushed_from = None;
            install(&mut state, parsed).map(|r| r.revision).map_err(Refused::new)
        }));
    }
    let reconciler = |shared: Shared| {
        move |objects: crate::k8s::Objects| {
            let mut state = lock(&shared);
            reconcile(&mut state, objects.cluster, objects.policies).map_err(Refused::new)
        }
    };
    if let Some(dir) = inputs.objects_dir {
        dir.spawn(reconciler(shared.clone()))
            .map_err(|source| watcher_failed(shared, cfg.k8s_objects.as_deref(), &source))?;
    }
    if let Some(api) = inputs.api {
        api.spawn(reconciler(shared.clone()));
    }
    Ok(())
}

/// A directory watcher that could not start: the start fails, leaving nothing attached.
fn watcher_failed(shared: &Shared, dir: Option<&Path>, source: &std::io::Error) -> DaemonError {
    lock(shared).datapath.rollback();
    DaemonError::PolicyDir(crate::sources::WatchError::Dir {
        path: dir.map(Path::to_path_buf).unwrap_or_default(),
        message: format!("cannot start its watcher: {source}"),
    })
}

/// Every second: grants that end are taken out of the policy (the kernel has ended them
/// already), the flows' counters are read when due, the alerts' rate window is closed when
/// it ends and the alerts are published; what was learned is saved now and then.
pub(super) fn spawn_housekeeping(shared: &Shared, state_dir: &Path) {
    let housekeeping = shared.clone();
    let (saved, engine, alert_hub) = {
        let s = lock(shared);
        (Learned { inventory: s.inventory.clone(), apis: s.apis.clone() }, s.alerts.clone(), s.hub.clone())
    };
    let state_dir: PathBuf = state_dir.to_path_buf();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut last_save = std::time::Instant::now();
        loop {
            tick.tick().await;
            let shared = housekeeping.clone();
            let _ = tokio::task::spawn_blocking(move || {
                check_pins(&mut lock(&shared));
                super::handlers::grant::expire_grants(&mut lock(&shared));
                count_flows(&shared, false);
            })
            .await;
            publish_alerts(&engine, &alert_hub);
            if last_save.elapsed() >= crate::observe::inventory::SAVE_INTERVAL {
                last_save = std::time::Instant::now();
                let (inv, engine, dir) = (saved.clone(), engine.clone(), state_dir.clone());
                let _ = tokio::task::spawn_blocking(move || save_learned(&inv, &engine, &dir)).await;
            }
        }
    });
}

/// Closes the alerts' rate window when it ends and publishes what was raised (outside the
/// engine's lock: the hub's observers take it).
fn publish_alerts(engine: &Mutex<alerts::Engine>, hub: &EventHub) {
    let raised = {
        let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        engine.tick(unix_now());
        engine.take()
    };
    for a in raised {
        tracing::info!(kind = %a.reason, from = %a.src_segment, severity = a.severity.as_deref().unwrap_or(""), "{}", a.note.as_deref().unwrap_or(""));
        hub.note(a);
    }
}

/// Node mode: interfaces and routes followed from now on, on a thread of its own.
pub(super) fn spawn_node_watch(watch: crate::kernel::node::Watch, shared: &Shared) -> Result<(), DaemonError> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("node-watch".into())
        .spawn(move || follow_node(watch, &shared))
        .map_err(|e| DaemonError::Node(crate::kernel::node::NodeError::Watch(e)))?;
    Ok(())
}

/// How long node mode waits for more changes after one, so that a burst (a CNI creating a
/// veth, bringing it up, adding its routes) is read once.
const NODE_SETTLE: std::time::Duration = std::time::Duration::from_millis(20);
/// Node mode reads links and routes again at least this often, changes or not.
const NODE_RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// Node mode's watch: after every change of links or routes (and every `NODE_RESYNC`), the
/// dumps are read outside the state lock and the kernel brought in line under it.
fn follow_node(watch: crate::kernel::node::Watch, shared: &Shared) {
    let mut failing = false;
    loop {
        if watch.wait(NODE_RESYNC) {
            std::thread::sleep(NODE_SETTLE);
            watch.drain();
        }
        let (links, routes) = match crate::kernel::node::Node::read() {
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

/// Reads the flows' packet and byte counters into the inventory and the alerts' rates: now
/// (`now`), or when a periodic read is due.
pub(super) fn count_flows(shared: &Shared, now: bool) {
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
        |k, v| Some(crate::observe::inventory::key_of(&compiled, lookup.get_or_insert_with(|| compiled.index()), k, v)),
        unix_now(),
    );
    reader.took(started.elapsed());
    drop(reader);
    alerts.lock().unwrap_or_else(|p| p.into_inner()).traffic(counted);
}

/// Saves what the agent learned: the inventory and the alerts' baseline.
pub(super) fn save_learned(learned: &Learned, alerts: &Mutex<alerts::Engine>, dir: &Path) {
    if let Err(e) = learned.inventory.lock().unwrap_or_else(|p| p.into_inner()).save(dir) {
        tracing::warn!("{e}");
    }
    if let Err(e) = learned.apis.lock().unwrap_or_else(|p| p.into_inner()).save(dir) {
        tracing::warn!("{e}");
    }
    if let Err(e) = alerts.lock().unwrap_or_else(|p| p.into_inner()).save(dir) {
        tracing::warn!("{e}");
    }
}

/// What the metrics endpoint reads of the agent at a scrape: a few map lookups under the lock.
fn scrape(shared: &Shared, delivered: &AtomicU64) -> Result<metrics::Scrape, metrics::ReadError> {
    let state = shared.lock().unwrap_or_else(|p| p.into_inner());
    let counters = state.datapath.counters()?;
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
            let counts = state.datapath.segment_counters(names.len())?;
            names.iter().cloned().zip(counts).collect()
        }
        None => Vec::new(),
    };
    // One lock at a time: a guard taken in the literal below would live to its end.
    let (api_endpoints, api_requests) = {
        let apis = state.apis.lock().unwrap_or_else(|p| p.into_inner());
        (apis.size(), apis.metrics())
    };
    let inventory = state.inventory.lock().unwrap_or_else(|p| p.into_inner()).size();
    Ok(metrics::Scrape {
        counters,
        events_delivered: delivered.load(Ordering::Relaxed),
        limits,
        revision: state.writer.revision(),
        last_push: state.installed.as_ref().map(|i| i.installed_at),
        segments,
        inventory,
        api_endpoints,
        api_requests,
        grants: state.grants.grants.len() as u64,
        fleet: state.policy_source.as_ref().and_then(|r| {
            let r = r.lock().unwrap_or_else(|p| p.into_inner());
            r.connected.map(|c| (c, r.fleet_revision.unwrap_or(0)))
        }),
    })
}

/// Pins that vanished under the running agent are pinned again, loudly; `status` says so.
pub(super) fn check_pins(state: &mut State) {
    let r = state.datapath.repin();
    let root = state.datapath.pins.root.display().to_string();
    if !r.restored.is_empty() {
        let names: Vec<String> = r.restored.iter().map(|p| p.display().to_string()).collect();
        tracing::error!(
            "{} pins vanished from {root} while the agent runs (removed by hand, or `ztagent uninstall` against a \
             running agent): pinned again from what the agent holds, so enforcement outlives it as before: {}",
            names.len(),
            names.join(", ")
        );
        state.pins.restored += names.len() as u64;
        state.pins.last_restored = Some(crate::clock::rfc3339((unix_now() * 1e9) as u64));
    }
    for (pin, why) in &r.failed {
        tracing::error!(
            "the pin {} vanished and cannot be pinned again ({why}): it ends with this agent",
            pin.display()
        );
    }
    state.pins.missing = r.failed.iter().map(|(p, why)| format!("{}: {why}", p.display())).collect();
    state.pins.intact = r.failed.is_empty();
}
