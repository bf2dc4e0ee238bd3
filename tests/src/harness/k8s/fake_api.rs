//! A fake Kubernetes API server on loopback, for `--k8s-api` and `ztagent::k8s::api`: plain
//! HTTP/1.1 answering the list and watch requests kube-rs' watchers make for pods, namespaces
//! and networking.k8s.io/v1 networkpolicies of all namespaces, as the API server answers them:
//! lists carry a resourceVersion (items without apiVersion and kind); a watch from a
//! resourceVersion replays the later events, then streams new ones as WatchEvent JSON lines
//! (chunked) until the fake ends it; a watch from before a compaction gets a 410 Gone error
//! event; lists may be refused with 403 a given number of times. Every request is recorded
//! with its Authorization header. It is no API server: no RBAC, no validation, no field or
//! label selectors, no pagination, no bookmarks.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
};

use serde_json::{Value, json};

/// The bearer token of [`FakeApi::kubeconfig`], which the fake records per request.
pub const TOKEN: &str = "fake-token-for-the-test";

/// The resources the fake serves: (name, list path, apiVersion, kind).
pub const RESOURCES: [(&str, &str, &str, &str); 3] = [
    ("namespaces", "/api/v1/namespaces", "v1", "Namespace"),
    ("pods", "/api/v1/pods", "v1", "Pod"),
    ("networkpolicies", "/apis/networking.k8s.io/v1/networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"),
];

fn resource_of(kind: &str) -> &'static str {
    RESOURCES.iter().find(|r| r.3 == kind).map(|r| r.0).unwrap_or_else(|| panic!("the fake serves no kind {kind}"))
}

/// What the fake holds; change it with [`FakeApi::apply`], [`FakeApi::delete`] or, for
/// several changes no watch may see one by one, [`FakeApi::while_disconnected`].
#[derive(Default)]
pub struct FakeState {
    /// The last resourceVersion given out.
    rv: u64,
    /// Watches from before this resourceVersion are answered 410 Gone (compacted history).
    oldest: u64,
    /// (resource, namespace, name) -> the object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Every event: (resourceVersion, resource, the WatchEvent line).
    log: Vec<(u64, &'static str, String)>,
    watches: Vec<(&'static str, mpsc::Sender<String>)>,
    /// Every request: "PATH?QUERY" and its Authorization header.
    requests: Vec<(String, Option<String>)>,
    /// Lists of these resources are answered 403 Forbidden this many more times.
    forbid: HashMap<&'static str, usize>,
}

impl FakeState {
    /// Creates or replaces an object (ADDED or MODIFIED to the watches).
    pub fn apply(&mut self, mut obj: Value) {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let resource = resource_of(obj["kind"].as_str().expect("an object with a kind"));
        let key = key_of(resource, &obj);
        let kind = if self.objects.insert(key, obj.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        self.event(rv, resource, kind, obj);
    }

    /// Deletes an object (DELETED to the watches).
    pub fn delete(&mut self, resource: &'static str, namespace: &str, name: &str) {
        let mut obj =
            self.objects.remove(&(resource, namespace.to_owned(), name.to_owned())).expect("an object the fake has");
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.event(rv, resource, "DELETED", obj);
    }

    /// Forgets the history up to now: a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&mut self) {
        self.oldest = self.rv + 1;
    }

    /// Refuses the next `times` lists of `resource` with 403 Forbidden.
    pub fn forbid(&mut self, resource: &'static str, times: usize) {
        self.forbid.insert(resource, times);
    }

    fn event(&mut self, rv: u64, resource: &'static str, kind: &str, obj: Value) {
        let line = json!({ "type": kind, "object": obj }).to_string();
        self.log.push((rv, resource, line.clone()));
        self.watches.retain(|(r, tx)| *r != resource || tx.send(line.clone()).is_ok());
    }
}

fn key_of(resource: &'static str, obj: &Value) -> (&'static str, String, String) {
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
    (resource, ns, meta["name"].as_str().expect("an object with a name").to_owned())
}

/// The fake API server: a thread accepting connections on its listener, a thread per
/// connection. Dropped, it ends every watch (its connection threads end with their clients).
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.lock().watches.clear();
    }
}

impl FakeApi {
    /// Serves `objects` on 127.0.0.1 (a free port).
    pub fn start(objects: &[Value]) -> FakeApi {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind the fake API server"), objects)
    }

    /// Serves `objects` on `listener` (e.g. one bound in a test's network namespace).
    pub fn serve(listener: TcpListener, objects: &[Value]) -> FakeApi {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::downgrade(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                // The fake is gone: stop accepting.
                let Some(state) = shared.upgrade() else { return };
                if let Ok(stream) = stream {
                    std::thread::spawn(move || serve(stream, &state));
                }
            }
        });
        let fake = FakeApi { addr, state };
        for o in objects {
            fake.apply(o.clone());
        }
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (ADDED or MODIFIED to the watches).
    pub fn apply(&self, obj: Value) {
        self.lock().apply(obj);
    }

    /// Deletes an object (DELETED to the watches).
    pub fn delete(&self, resource: &'static str, namespace: &str, name: &str) {
        self.lock().delete(resource, namespace, name);
    }

    /// Does `f` with the state locked (no request is answered meanwhile).
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.lock())
    }

    /// Ends every watch response (as the API server does at its timeout or a restart).
    pub fn end_watches(&self) {
        self.lock().watches.clear();
    }

    /// Ends every watch, then does `f` before any watch can start again.
    pub fn while_disconnected(&self, f: impl FnOnce(&mut FakeState)) {
        let mut s = self.lock();
        s.watches.clear();
        f(&mut s);
    }

    /// Every object the fake holds now.
    pub fn objects(&self) -> Vec<Value> {
        self.lock().objects.values().cloned().collect()
    }

    /// Every request so far: "PATH?QUERY" and its Authorization header.
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.lock().requests.clone()
    }

    /// The lists (not watches) of `resource` requested so far.
    pub fn lists(&self, resource: &str) -> usize {
        let path = RESOURCES.iter().find(|r| r.0 == resource).expect("a resource the fake serves").1;
        self.requests().iter().filter(|(t, _)| t.starts_with(&format!("{path}?")) && !t.contains("watch=true")).count()
    }

    /// A kubeconfig file in `dir` whose current context is this server with [`TOKEN`].
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
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

/// One connection: requests one after the other (kube-rs keeps connections alive); a watch
/// streams until the fake ends it, then the connection closes.
fn serve(stream: TcpStream, state: &Mutex<FakeState>) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(mut w) = stream.try_clone() else { return };
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut auth = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
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
        lock().requests.push((target.clone(), auth));
        let Some(&(resource, _, api_version, kind)) = RESOURCES.iter().find(|r| r.1 == path) else {
            respond(&mut w, 404, &status(404, "NotFound", "the fake serves pods, namespaces and networkpolicies"));
            continue;
        };
        if query.get("watch") == Some(&"true") {
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let (tx, rx) = mpsc::channel();
            let gone = {
                let mut s = lock();
                if from + 1 < s.oldest {
                    true
                } else {
                    for (_, _, line) in s.log.iter().filter(|(rv, r, _)| *rv > from && *r == resource) {
                        let _ = tx.send(line.clone());
                    }
                    s.watches.push((resource, tx));
                    false
                }
            };
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            if gone {
                let line = json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") })
                    .to_string();
                let _ = w.write_all(chunk(&line).as_bytes());
            } else {
                // Until the fake drops the sender (end_watches, drop).
                while let Ok(line) = rx.recv() {
                    if w.write_all(chunk(&line).as_bytes()).is_err() {
                        return;
                    }
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
            return;
        }
        let body = {
            let mut s = lock();
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
                            if let Some(m) = o.as_object_mut() {
                                m.retain(|k, _| k != "apiVersion" && k != "kind");
                            }
                            o
                        })
                        .collect();
                    Some(json!({ "apiVersion": api_version, "kind": format!("{kind}List"),
                                 "metadata": { "resourceVersion": s.rv.to_string() }, "items": items }))
                }
            }
        };
        match body {
            Some(b) => respond(&mut w, 200, &b),
            None => {
                respond(&mut w, 403, &status(403, "Forbidden", &format!("{resource} is forbidden: the test says no")))
            }
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

fn respond(w: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let head = format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let _ = w.write_all(format!("{head}{body}").as_bytes());
}

// --- objects as the API server returns them

/// A Namespace with `labels`, and the fields a real one has that the agent does not read.
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "uid": format!("uid-{name}"), "labels": labels,
                          "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{}" },
                          "managedFields": [ { "manager": "kubectl", "operation": "Apply" } ] },
            "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" } })
}

/// A running Pod at `ips` (the first is `status.podIP`) with `labels` and `ports`
/// (containerPort, name, protocol).
pub fn pod(ns: &str, name: &str, labels: Value, ips: &[&str], ports: &[(u16, &str, &str)]) -> Value {
    let ports: Vec<Value> =
        ports.iter().map(|(p, n, proto)| json!({ "containerPort": p, "name": n, "protocol": proto })).collect();
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
    json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels },
            "spec": { "nodeName": "node-1", "containers": [ { "name": "main", "image": "agnhost", "ports": ports } ] },
            "status": { "phase": "Running", "podIP": ips.first(), "podIPs": pod_ips,
                        "conditions": [ { "type": "Ready", "status": "True" } ] } })
}

/// A NetworkPolicy with `spec`.
pub fn network_policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": name, "namespace": ns, "generation": 1 }, "spec": spec })
}
