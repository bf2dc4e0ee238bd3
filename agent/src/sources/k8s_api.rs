//! The Kubernetes API as a source of the inventory and the NetworkPolicies (`ztagent run
//! --k8s-api [--kubeconfig PATH]`): kube-rs watchers on Pods, Namespaces and NetworkPolicies
//! (networking.k8s.io/v1) of all namespaces, each kept in a reflector store.
//!
//! Only the watch is specific to the API. Each snapshot of the three stores is written out as
//! JSON, one text per object, and read by the same reader as the `--k8s-objects` directory's
//! files ([`crate::k8s::parse_objects`]): the same checks, the same warnings, the same
//! [`Objects`]. A diagnostic names the object as `api:<resource>/<namespace>/<name>` with the
//! line and column in its JSON, pretty-printed with two-space indentation.
//!
//! **When a snapshot is sent.** Not before all three resources have been listed once (a
//! snapshot with the pods but not yet the policies would lift isolation for a moment). Then
//! after every change: the first event after a quiet spell opens a [`DEBOUNCE`] window, and
//! the snapshot taken at its end carries every event of the window, so a burst of pod events is
//! one reconcile and a change is sent within [`DEBOUNCE`] of its event. A snapshot that reads
//! the same as the last one sent (a pod's status conditions changed, not its labels, addresses
//! or ports) is not sent again.
//!
//! **Failures.** Watch errors (the API server unreachable, a 403 for a missing RBAC rule, an
//! expired resource version) are logged; the watcher retries with kube-rs' default backoff
//! (exponential, 0.8 s up to 30 s, with jitter) and relists when it must, while the stores
//! keep what they had: the agent keeps enforcing the last snapshot. A relist replaces a
//! store's contents at once, after the whole list (never half a list).
//!
//! **Memory.** Stores hold whole objects, less their `managedFields` and annotations (the
//! reader reads neither; `kubectl apply` keeps a copy of the whole object in an annotation).
use std::{fmt::Debug, path::PathBuf, sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::mpsc, time::Instant};

use crate::k8s::Objects;
use crate::{
    policy::Diagnostics,
    sources::k8s_versions::{K8sReport, K8sVersions, Reconciled},
};

/// One read of the stores: what the reconcile is handed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The objects, or why they cannot be used (then the state in force stays): what the
    /// `--k8s-objects` directory's files give ([`crate::k8s::load_objects`]).
    pub objects: Result<Objects, Diagnostics>,
    /// SHA-256 over every object's origin, a NUL and its JSON text: names the version in `status`.
    pub sha256: String,
    /// How many objects were read.
    pub inputs: usize,
}

/// How long the agent's start waits for the first snapshot before it enforces without one.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// Events this close together make one snapshot.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How to reach the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// A kubeconfig file (its current context); `None`: the pod's service account
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT` and /var/run/secrets/kubernetes.io/serviceaccount).
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot use the in-cluster service account ({0}); outside a cluster, give --kubeconfig PATH")]
    InCluster(String),
    #[error("cannot use the kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("cannot make a Kubernetes API client: {0}")]
    Client(String),
}

/// A client for `cfg`. Nothing is sent to the API server yet.
pub async fn client(cfg: &ApiConfig) -> Result<Client, ApiError> {
    let config = config(cfg).await?;
    Client::try_from(config).map_err(|e| ApiError::Client(e.to_string()))
}

/// The client configuration `cfg` stands for.
async fn config(cfg: &ApiConfig) -> Result<kube::Config, ApiError> {
    Ok(match &cfg.kubeconfig {
        None => kube::Config::incluster().map_err(|e| ApiError::InCluster(e.to_string()))?,
        Some(path) => {
            let err =
                |e: kube::config::KubeconfigError| ApiError::Kubeconfig { path: path.clone(), message: e.to_string() };
            let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.map_err(err)?
        }
    })
}

/// Which of the three resources an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Namespaces,
    Pods,
    NetworkPolicies,
}

impl Kind {
    fn resource(self) -> &'static str {
        match self {
            Kind::Namespaces => "namespaces",
            Kind::Pods => "pods",
            Kind::NetworkPolicies => "networkpolicies",
        }
    }
}

/// What the merged watch streams tell the loop.
enum Signal {
    /// An object was added, changed or deleted (the store has it).
    Changed,
    /// The resource was (re)listed: its store holds the whole list.
    Listed(Kind),
    /// The resource's watch failed; it retries after a backoff.
    Failed(Kind, watcher::Error),
    /// Part of a list being read: nothing to do until it is complete.
    Nothing,
}

/// The three stores.
struct Stores {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
}

/// Watches the API through `client` and sends a [`Snapshot`] on `tx` after each change (see
/// the module's documentation for when). Returns when `tx`'s receiver is gone; never fails
/// otherwise (a watch error is logged and retried).
pub async fn run_api_source(client: Client, tx: mpsc::Sender<Snapshot>) {
    let (namespaces, ns_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (policies, np_writer) = reflector::store();
    let stores = Stores { namespaces, pods, policies };
    let mut signals = futures::stream::select_all([
        watch(Api::<Namespace>::all(client.clone()), Kind::Namespaces, ns_writer),
        watch(Api::<Pod>::all(client.clone()), Kind::Pods, pod_writer),
        watch(Api::<NetworkPolicy>::all(client), Kind::NetworkPolicies, np_writer),
    ]);
    let mut listed = [false; 3];
    // The end of the open debounce window.
    let mut due: Option<Instant> = None;
    let mut last: Option<Snapshot> = None;
    loop {
        let window = async move {
            match due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tx.closed() => return,
            signal = signals.next() => match signal {
                // The watch streams never end.
                None => return,
                Some(Signal::Nothing) => {}
                Some(Signal::Changed) => {
                    due.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                }
                Some(Signal::Listed(kind)) => {
                    listed[kind as usize] = true;
                    due.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                }
                Some(Signal::Failed(kind, e)) => {
                    tracing::warn!("Kubernetes API: the watch of {} failed (retrying): {e}", kind.resource());
                }
            },
            () = window => {
                due = None;
                if !listed.iter().all(|l| *l) {
                    continue;
                }
                let snapshot = stores.snapshot();
                if last.as_ref().is_some_and(|l| same(&l.objects, &snapshot.objects)) {
                    continue;
                }
                if tx.send(snapshot.clone()).await.is_err() {
                    return;
                }
                last = Some(snapshot);
            }
        }
    }
}

/// The watch of one resource, all namespaces, into `writer`'s store.
fn watch<K>(api: Api<K>, kind: Kind, writer: reflector::store::Writer<K>) -> BoxStream<'static, Signal>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| {
            o.managed_fields_mut().clear();
            o.annotations_mut().clear();
        })
        .reflect(writer)
        .map(move |event| match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed,
            Ok(watcher::Event::InitDone) => Signal::Listed(kind),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Signal::Nothing,
            Err(e) => Signal::Failed(kind, e),
        })
        .boxed()
}

impl Stores {
    /// The stores' objects through the objects reader, in a fixed order (resource, namespace,
    /// name), so the same objects always read the same.
    fn snapshot(&self) -> Snapshot {
        let mut texts = Vec::new();
        texts_of(&self.namespaces, Kind::Namespaces, &mut texts);
        texts_of(&self.pods, Kind::Pods, &mut texts);
        texts_of(&self.policies, Kind::NetworkPolicies, &mut texts);
        let inputs: Vec<(&str, &str)> = texts.iter().map(|(o, t)| (o.as_str(), t.as_str())).collect();
        let mut all = Vec::new();
        for (origin, text) in &inputs {
            all.extend_from_slice(origin.as_bytes());
            all.push(0);
            all.extend_from_slice(text.as_bytes());
        }
        Snapshot {
            objects: crate::k8s::parse_objects(&inputs),
            sha256: crate::sources::sha256_hex(&all),
            inputs: inputs.len(),
        }
    }
}

/// `(origin, JSON)` of every object of `store`, sorted by origin.
fn texts_of<K>(store: &Store<K>, kind: Kind, out: &mut Vec<(String, String)>)
where
    K: Resource<DynamicType = ()> + Clone + Serialize + 'static,
{
    let mut texts: Vec<(String, String)> = store
        .state()
        .iter()
        .filter_map(|o| {
            let origin = match o.namespace() {
                Some(ns) => format!("api:{}/{ns}/{}", kind.resource(), o.name_any()),
                None => format!("api:{}/{}", kind.resource(), o.name_any()),
            };
            let mut value = match serde_json::to_value(&**o) {
                Ok(v) => v,
                Err(e) => {
                    // k8s-openapi's types always serialize; say so rather than drop silently.
                    tracing::error!("Kubernetes API: {origin} cannot be written as JSON: {e}");
                    return None;
                }
            };
            if kind == Kind::NetworkPolicies {
                default_pod_selector(&mut value);
            }
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            Some((origin, text))
        })
        .collect();
    texts.sort();
    out.extend(texts);
}

/// The API server's meaning of an absent `spec.podSelector` (optional since Kubernetes 1.31
/// in the schema): every pod of the namespace, `{}`. A file must say it; the API may not.
fn default_pod_selector(np: &mut serde_json::Value) {
    if let Some(spec) = np.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.entry("podSelector").or_insert_with(|| serde_json::json!({}));
    }
}

/// Whether two snapshots read the same (then the second is not sent).
fn same(a: &Result<Objects, Diagnostics>, b: &Result<Objects, Diagnostics>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => same_objects(a, b),
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

fn same_objects(a: &Objects, b: &Objects) -> bool {
    a.cluster == b.cluster && a.policies == b.policies && a.warnings == b.warnings
}

/// `ztagent run --k8s-api`: the watch ([`run_api_source`]) feeding the daemon's reconcile,
/// its versions logged and reported in `status` (`k8s_source`, `source: api`) by the same code
/// as the objects directory's ([`K8sVersions`]).
pub struct ApiSource {
    rx: mpsc::Receiver<Snapshot>,
    versions: K8sVersions,
    /// The first snapshot, awaiting the first install.
    pending: Option<(String, usize, Objects)>,
    /// The objects in force from this source.
    applied: Option<Objects>,
}

impl ApiSource {
    /// Starts watching (in a task of its own, for the rest of the process's life). Fails only
    /// on a configuration that cannot be used; an unreachable API server is retried.
    pub async fn start(cfg: &ApiConfig) -> Result<ApiSource, ApiError> {
        let config = config(cfg).await?;
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| ApiError::Client(e.to_string()))?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_api_source(client, tx));
        tracing::info!("watching pods, namespaces and networkpolicies of all namespaces at the Kubernetes API {url}");
        Ok(ApiSource { rx, versions: K8sVersions::new("api", url), pending: None, applied: None })
    }

    pub fn report(&self) -> K8sReport {
        self.versions.report()
    }

    /// The first snapshot, for the daemon's first reconcile (then [`ApiSource::installed`]),
    /// waited for up to `wait`; None when it does not come in time or is broken (logged,
    /// reported): the agent starts without an inventory and reconciles when one comes.
    pub async fn initial(&mut self, wait: Duration) -> Option<Objects> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(Snapshot { objects: Ok(objects), sha256, inputs })) => {
                self.pending = Some((sha256, inputs, objects.clone()));
                Some(objects)
            }
            Ok(Some(Snapshot { objects: Err(d), sha256, .. })) => {
                self.versions.reject(Some(sha256), &d.to_string());
                None
            }
            Ok(None) => None,
            Err(_) => {
                tracing::warn!(
                    "no snapshot of the Kubernetes API within {wait:?}: starting without an inventory; it is reconciled when one comes"
                );
                None
            }
        }
    }

    /// The objects [`ApiSource::initial`] returned are in force.
    pub fn installed(&mut self, done: &Reconciled) {
        if let Some((sha256, inputs, objects)) = self.pending.take() {
            self.versions.accept(sha256, inputs, &objects, done);
            self.applied = Some(objects);
        }
    }

    /// Hands every snapshot to `reconcile` (on a blocking thread: it takes the daemon's state
    /// lock), for the rest of the process's life.
    pub fn spawn<F>(mut self, reconcile: F)
    where
        F: Fn(Objects) -> Result<Reconciled, super::Refused> + Send + Sync + 'static,
    {
        let reconcile = Arc::new(reconcile);
        tokio::spawn(async move {
            while let Some(snapshot) = self.rx.recv().await {
                let objects = match snapshot.objects {
                    Ok(o) => o,
                    Err(d) => {
                        self.versions.reject(Some(snapshot.sha256), &d.to_string());
                        continue;
                    }
                };
                if self.applied.as_ref().is_some_and(|a| same_objects(a, &objects)) {
                    // After a rejected snapshot, the objects in force again.
                    self.versions.back_to_applied();
                    continue;
                }
                let (r, o) = (reconcile.clone(), objects.clone());
                match tokio::task::spawn_blocking(move || r(o)).await {
                    Ok(Ok(done)) => {
                        self.versions.accept(snapshot.sha256, snapshot.inputs, &objects, &done);
                        self.applied = Some(objects);
                    }
                    Ok(Err(e)) => self.versions.reject(Some(snapshot.sha256), &e.to_string()),
                    Err(e) => self.versions.reject(Some(snapshot.sha256), &format!("the reconcile failed: {e}")),
                }
            }
        });
    }
}
