//! The API source against a fake API server on loopback: plain HTTP/1.1, answering the list
//! and watch requests kube-rs makes for pods, namespaces and networking.k8s.io/v1
//! networkpolicies as the API server does (lists with a resourceVersion; watches from a
//! resourceVersion streaming WatchEvent JSON lines, chunked; 410 Gone for a compacted one;
//! 403 when told to refuse), reached through a kubeconfig with a bearer token. No real API
//! server: neither its exact behaviour nor its RBAC enforcement is tested here.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};

use super::*;

/// A bound on waiting for a snapshot: generous, the source's own target is within 1 s.
const WAIT: Duration = Duration::from_secs(10);

const TOKEN: &str = "fake-token-for-the-test";

/// The resources the fake serves: (name, list path, apiVersion, kind).
const RESOURCES: [(&str, &str, &str, &str); 3] = [
    ("namespaces", "/api/v1/namespaces", "v1", "Namespace"),
    ("pods", "/api/v1/pods", "v1", "Pod"),
    ("networkpolicies", "/apis/networking.k8s.io/v1/networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"),
];

fn resource_of(kind: &str) -> &'static str {
    RESOURCES.iter().find(|r| r.3 == kind).map(|r| r.0).expect("a kind the fake serves")
}

#[derive(Default)]
struct FakeState {
    /// The last resourceVersion given out.
    rv: u64,
    /// Watches from before this resourceVersion are answered 410 Gone (compacted history).
    oldest: u64,
    /// (resource, namespace, name) -> the object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Every event: (resourceVersion, resource, the WatchEvent line).
    log: Vec<(u64, &'static str, String)>,
    watches: Vec<(&'static str, mpsc::UnboundedSender<String>)>,
    /// Requests seen: "PATH?QUERY" and the Authorization header.
    requests: Vec<(String, Option<String>)>,
    /// Lists of these resources answered 403 Forbidden, this many more times.
    forbid: HashMap<&'static str, usize>,
}

/// The fake API server; stops when dropped.
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    async fn start(objects: &[Value]) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        let fake = FakeApi { addr, state, task };
        for o in objects {
            fake.apply(o.clone());
        }
        fake
    }

    /// Creates or replaces an object (ADDED or MODIFIED to the watches).
    fn apply(&self, obj: Value) {
        self.state.lock().unwrap().apply(obj);
    }

    /// Deletes an object (DELETED to the watches).
    fn delete(&self, resource: &'static str, namespace: &str, name: &str) {
        self.state.lock().unwrap().delete(resource, namespace, name);
    }

    /// Ends every watch response (as the API server does at its timeout or a restart).
    fn end_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// Ends every watch, then does `f` before any watch can start again.
    fn while_disconnected(&self, f: impl FnOnce(&mut FakeState)) {
        let mut s = self.state.lock().unwrap();
        s.watches.clear();
        f(&mut s);
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: tester\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn key_of(resource: &'static str, obj: &Value) -> (&'static str, String, String) {
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
    (resource, ns, meta["name"].as_str().unwrap().to_owned())
}

impl FakeState {
    fn apply(&mut self, mut obj: Value) {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let resource = resource_of(obj["kind"].as_str().unwrap());
        let key = key_of(resource, &obj);
        let kind = if self.objects.insert(key, obj.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        self.event(rv, resource, kind, obj);
    }

    fn delete(&mut self, resource: &'static str, namespace: &str, name: &str) {
        let mut obj = self.objects.remove(&(resource, namespace.to_owned(), name.to_owned())).expect("an object the fake has");
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.event(rv, resource, "DELETED", obj);
    }

    /// Forgets the history up to now: a watch from an older resourceVersion gets 410 Gone.
    fn compact(&mut self) {
        self.oldest = self.rv + 1;
    }

    fn event(&mut self, rv: u64, resource: &'static str, kind: &str, obj: Value) {
        let line = json!({ "type": kind, "object": obj }).to_string();
        self.log.push((rv, resource, line.clone()));
        self.watches.retain(|(r, tx)| *r != resource || tx.send(line.clone()).is_ok());
    }
}

/// One connection: requests one after the other (kube-rs keeps connections alive); a watch
/// streams until the fake ends it, then the connection closes.
async fn serve(stream: TcpStream, state: Arc<Mutex<FakeState>>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut auth = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
            {
                auth = Some(value.trim().to_owned());
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query: HashMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
        state.lock().unwrap().requests.push((target.clone(), auth));
        let Some(&(resource, _, api_version, kind)) = RESOURCES.iter().find(|r| r.1 == path) else {
            respond(&mut w, 404, &status(404, "NotFound", "the fake serves pods, namespaces and networkpolicies")).await;
            continue;
        };
        if query.get("watch") == Some(&"true") {
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let gone = {
                let mut s = state.lock().unwrap();
                if from + 1 < s.oldest {
                    true
                } else {
                    for (_, _, line) in s.log.iter().filter(|(rv, r, _)| *rv > from && *r == resource) {
                        tx.send(line.clone()).unwrap();
                    }
                    s.watches.push((resource, tx));
                    false
                }
            };
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if w.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            if gone {
                let line = json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") }).to_string();
                let _ = w.write_all(chunk(&line).as_bytes()).await;
            } else {
                while let Some(line) = rx.recv().await {
                    if w.write_all(chunk(&line).as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
            let _ = w.write_all(b"0\r\n\r\n").await;
            return;
        }
        let body = {
            let mut s = state.lock().unwrap();
            match s.forbid.get_mut(resource) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    None
                }
                _ => {
                    // List items carry no apiVersion and kind, as the API server writes them.
                    let items: Vec<Value> = s
                        .objects
                        .iter()
                        .filter(|((r, _, _), _)| *r == resource)
                        .map(|(_, o)| {
                            let mut o = o.clone();
                            o.as_object_mut().unwrap().retain(|k, _| k != "apiVersion" && k != "kind");
                            o
                        })
                        .collect();
                    Some(json!({ "apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": { "resourceVersion": s.rv.to_string() }, "items": items }))
                }
            }
        };
        match body {
            Some(b) => respond(&mut w, 200, &b).await,
            None => respond(&mut w, 403, &status(403, "Forbidden", &format!("{resource} is forbidden: the test says no"))).await,
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

fn chunk(line: &str) -> String {
    format!("{:x}\r\n{line}\n\r\n", line.len() + 1)
}

async fn respond(w: &mut tokio::net::tcp::OwnedWriteHalf, code: u16, body: &Value) {
    let body = body.to_string();
    let head = format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let _ = w.write_all(format!("{head}{body}").as_bytes()).await;
}

// --- the objects served

fn namespace(name: &str, labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "uid": format!("uid-{name}"), "labels": labels,
                          "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{}" },
                          "managedFields": [ { "manager": "kubectl", "operation": "Apply" } ] },
            "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" } })
}

fn pod(ns: &str, name: &str, labels: Value, ip: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels },
            "spec": { "nodeName": "node-1", "containers": [ { "name": "serve", "image": "agnhost",
                "ports": [ { "containerPort": 80, "name": "serve-80-tcp", "protocol": "TCP" },
                           { "containerPort": 80, "name": "serve-80-udp", "protocol": "UDP" } ] } ] },
            "status": { "phase": "Running", "podIP": ip, "podIPs": [ { "ip": ip } ],
                        "conditions": [ { "type": "Ready", "status": "True" } ] } })
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": name, "namespace": ns, "generation": 1 }, "spec": spec })
}

fn served() -> Vec<Value> {
    vec![
        namespace("x", json!({ "kubernetes.io/metadata.name": "x", "team": "pay" })),
        namespace("y", json!({ "kubernetes.io/metadata.name": "y" })),
        pod("x", "a", json!({ "pod": "a" }), "10.0.1.1"),
        pod("x", "b", json!({ "pod": "b" }), "10.0.1.2"),
        pod("y", "a", json!({ "pod": "a" }), "10.0.2.1"),
        policy("x", "deny-all", json!({ "podSelector": {}, "policyTypes": ["Ingress"] })),
        policy("x", "allow-from-y", json!({ "podSelector": { "matchLabels": { "pod": "a" } },
            "ingress": [ { "from": [ { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "y" } } } ],
                           "ports": [ { "port": "serve-80-tcp" }, { "protocol": "UDP", "port": 80 } ] } ] })),
        policy("y", "egress-ip", json!({ "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [ { "to": [ { "ipBlock": { "cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"] } } ],
                          "ports": [ { "port": 5000, "endPort": 5010 } ] } ] })),
    ]
}

/// What the directory source reads from the same objects written as one JSON file.
fn read_as_file(objects: &[Value]) -> Objects {
    let text = json!({ "apiVersion": "v1", "kind": "List", "items": objects }).to_string();
    parse_objects_file(&text)
}

fn parse_objects_file(text: &str) -> Objects {
    super::super::parse_objects(&[("objects.json", text)]).expect("the served objects read as a file")
}

/// A running source against `fake`, and its snapshots.
struct Source {
    rx: mpsc::Receiver<Snapshot>,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    async fn start(fake: &FakeApi) -> Source {
        let dir = TempDir::new();
        let cfg = ApiConfig { kubeconfig: Some(fake.kubeconfig(&dir.0)) };
        let client = client(&cfg).await.expect("a client for the fake's kubeconfig");
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(run_api_source(client, tx));
        Source { rx, task, _dir: dir }
    }

    async fn next(&mut self) -> Snapshot {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("the source ended"),
            Err(_) => panic!("no snapshot within {WAIT:?}"),
        }
    }

    async fn next_ok(&mut self) -> Objects {
        self.next().await.unwrap_or_else(|d| panic!("the snapshot has errors:\n{d}"))
    }

    /// Snapshots until one satisfies `done`; returns it and how many came.
    async fn until(&mut self, done: impl Fn(&Objects) -> bool) -> (Objects, usize) {
        let mut n = 0;
        loop {
            let o = self.next_ok().await;
            n += 1;
            if done(&o) {
                return (o, n);
            }
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ztagent-k8s-api-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn labels(o: &Objects, id: &str) -> BTreeMap<String, String> {
    o.cluster.pods.iter().find(|p| p.id() == id).unwrap_or_else(|| panic!("no pod {id}")).labels.clone().into_iter().collect()
}

fn policy_ids(o: &Objects) -> Vec<String> {
    o.policies.iter().map(|p| p.id()).collect()
}

#[tokio::test]
async fn snapshots_follow_the_api_server() {
    let objects = served();
    let fake = FakeApi::start(&objects).await;
    let mut source = Source::start(&fake).await;

    // The first snapshot: exactly what the directory source reads from the same objects.
    let first = source.next_ok().await;
    let want = read_as_file(&objects);
    assert_eq!(first.cluster, want.cluster);
    assert_eq!(first.policies, want.policies);
    assert_eq!(policy_ids(&first), ["x/allow-from-y", "x/deny-all", "y/egress-ip"]);
    assert_eq!(first.cluster.pods.len(), 3);
    assert_eq!(first.cluster.namespaces["x"].labels["team"], "pay");
    // Every request: the watcher's lists and watches of all namespaces, with the kubeconfig's token.
    let requests = fake.requests();
    for (_, path, _, _) in RESOURCES {
        assert!(requests.iter().any(|(t, _)| t.starts_with(&format!("{path}?")) && !t.contains("watch=true")), "no list of {path}: {requests:?}");
    }
    assert!(requests.iter().all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))), "{requests:?}");

    // A pod's labels change: a new snapshot with them.
    fake.apply(pod("x", "b", json!({ "pod": "b", "tier": "api" }), "10.0.1.2"));
    let o = source.next_ok().await;
    assert_eq!(labels(&o, "x/b")["tier"], "api");

    // A burst of changes: fewer snapshots than events, the last one with the final state.
    const BURST: usize = 40;
    for i in 0..BURST {
        fake.apply(pod("y", "a", json!({ "pod": "a", "n": i.to_string() }), "10.0.2.1"));
    }
    let (o, n) = source.until(|o| labels(o, "y/a").get("n").map(String::as_str) == Some(&(BURST - 1).to_string())).await;
    assert!(n < BURST, "{n} snapshots for a burst of {BURST} events");
    assert_eq!(o.cluster.pods.len(), 3);

    // A change the reader does not see (a status condition): no snapshot. The next snapshot
    // is the next real change, a policy deleted.
    let mut p = pod("x", "a", json!({ "pod": "a" }), "10.0.1.1");
    p["status"]["conditions"][0]["status"] = json!("False");
    fake.apply(p);
    tokio::time::sleep(DEBOUNCE * 5).await;
    fake.delete("networkpolicies", "x", "deny-all");
    let o = source.next_ok().await;
    assert_eq!(policy_ids(&o), ["x/allow-from-y", "y/egress-ip"]);

    // A pod appears, one goes away, a namespace's labels change.
    fake.apply(pod("y", "new", json!({ "pod": "new" }), "10.0.2.9"));
    fake.delete("pods", "x", "a");
    fake.apply(namespace("y", json!({ "kubernetes.io/metadata.name": "y", "env": "prod" })));
    let (o, _) = source.until(|o| o.cluster.namespaces["y"].labels.contains_key("env")).await;
    let pods: Vec<String> = o.cluster.pods.iter().map(|p| p.id()).collect();
    assert_eq!(pods, ["x/b", "y/a", "y/new"]);
    assert_eq!(o.cluster.pods[2].ips, ["10.0.2.9".parse::<std::net::IpAddr>().unwrap()]);

    // The API server ends the watches: they resume from where they were, nothing lost.
    fake.end_watches();
    fake.apply(policy("y", "late", json!({ "podSelector": {} })));
    let (o, _) = source.until(|o| policy_ids(o).contains(&"y/late".to_owned())).await;
    assert_eq!(policy_ids(&o), ["x/allow-from-y", "y/egress-ip", "y/late"]);

    // Changes while the watches were down, and the history compacted: a resumed watch gets
    // 410 Gone, the watcher lists again.
    let lists_before = fake.requests().iter().filter(|(t, _)| t.starts_with("/api/v1/pods?") && !t.contains("watch=true")).count();
    fake.while_disconnected(|s| {
        s.apply(pod("x", "b", json!({ "pod": "b", "tier": "db" }), "10.0.1.2"));
        s.compact();
    });
    let (o, _) = source.until(|o| labels(o, "x/b").get("tier").map(String::as_str) == Some("db")).await;
    assert_eq!(o.cluster.pods.len(), 3);
    let lists_after = fake.requests().iter().filter(|(t, _)| t.starts_with("/api/v1/pods?") && !t.contains("watch=true")).count();
    assert!(lists_after > lists_before, "the pods were not listed again after 410 Gone");

    // What the reader cannot accept is a snapshot of diagnostics naming the object; fixed, the
    // objects again.
    fake.apply(pod("y", "bad", json!({}), "10.0.2.300"));
    let e = source.next().await.expect_err("a pod with a broken address");
    let text = e.to_string();
    assert!(text.starts_with("api:pods/y/bad:") && text.ends_with(": error: `10.0.2.300` is not an IP address"), "{text}");
    fake.delete("pods", "y", "bad");
    let o = source.next_ok().await;
    assert_eq!(o.cluster.pods.len(), 3);

    // Whatever happened, the last snapshot is what the directory source reads of the objects
    // the fake holds now.
    let now: Vec<Value> = fake.state.lock().unwrap().objects.values().cloned().collect();
    let want = read_as_file(&now);
    assert_eq!((o.cluster, o.policies), (want.cluster, want.policies));
}

#[tokio::test]
async fn nothing_is_sent_before_every_resource_is_listed() {
    let objects = served();
    let fake = FakeApi::start(&objects).await;
    // NetworkPolicies refused twice (a missing RBAC rule, then fixed): the pods and namespaces
    // alone are never sent, which would lift every isolation for a while.
    fake.state.lock().unwrap().forbid.insert("networkpolicies", 2);
    let mut source = Source::start(&fake).await;
    let first = source.next_ok().await;
    assert_eq!(policy_ids(&first), ["x/allow-from-y", "x/deny-all", "y/egress-ip"]);
    let lists = fake.requests().iter().filter(|(t, _)| t.starts_with("/apis/networking.k8s.io/v1/networkpolicies?") && !t.contains("watch=true")).count();
    assert!(lists >= 3, "{lists} lists of networkpolicies (two refused)");
}

#[tokio::test]
async fn an_absent_pod_selector_is_every_pod() {
    // The schema lets the API omit `podSelector`; the API server means `{}`.
    let fake = FakeApi::start(&[policy("x", "all", json!({ "policyTypes": ["Ingress"] }))]).await;
    let mut source = Source::start(&fake).await;
    let o = source.next_ok().await;
    assert_eq!(o.policies[0].pod_selector, super::super::LabelSelector::default());
    assert!(o.policies[0].ingress_type && o.policies[0].ingress.is_empty());
}

/// The error `client` gives for `cfg`.
async fn client_error(cfg: ApiConfig) -> String {
    match client(&cfg).await {
        Ok(_) => panic!("a client for {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn client_configuration_errors_are_one_sentence() {
    let e = client_error(ApiConfig { kubeconfig: Some("/nonexistent/kubeconfig".into()) }).await;
    assert!(e.starts_with("cannot use the kubeconfig /nonexistent/kubeconfig: "), "{e}");
    let dir = TempDir::new();
    let bad = dir.0.join("kubeconfig");
    std::fs::write(&bad, "apiVersion: v1\nkind: Config\nclusters: [\n").unwrap();
    let e = client_error(ApiConfig { kubeconfig: Some(bad.clone()) }).await;
    assert!(e.starts_with(&format!("cannot use the kubeconfig {}: ", bad.display())), "{e}");
    // Outside a pod there is no service account (the tests never run in one).
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let e = client_error(ApiConfig { kubeconfig: None }).await;
        assert!(e.starts_with("cannot use the in-cluster service account (") && e.ends_with("outside a cluster, give --kubeconfig PATH"), "{e}");
    }
}
