//! The cluster's objects (Namespaces and Pods) and the directory `--k8s-objects` reads.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use serde_json::{Value, json};

use super::kubectl_yaml::kubectl_yaml;
use super::model::{AGNHOST, NAMESPACES, NODE_IP, NODE_NAME, POD_NAMES, PODS, PROBES, pod_ip};
use crate::harness::util::TempDir;

pub type Labels = BTreeMap<String, String>;

/// The model's Namespaces and Pods as the API server holds them: labels that steps change, a
/// resourceVersion each bumps.
#[derive(Clone, Debug)]
pub struct Cluster {
    namespace_labels: [Labels; 3],
    pod_labels: [Labels; PODS],
    namespace_versions: [u64; 3],
    pod_versions: [u64; PODS],
    next_version: u64,
}

impl Cluster {
    /// The upstream model's labels: `kubernetes.io/metadata.name: <ns>` on namespaces,
    /// `pod: <name>` on pods.
    pub fn upstream() -> Cluster {
        let label = |k: &str, v: &str| Labels::from([(k.to_string(), v.to_string())]);
        Cluster {
            namespace_labels: NAMESPACES.map(|n| label("kubernetes.io/metadata.name", n)),
            pod_labels: std::array::from_fn(|i| label("pod", POD_NAMES[i % 3])),
            namespace_versions: std::array::from_fn(|i| 1000 + i as u64),
            pod_versions: std::array::from_fn(|i| 1100 + i as u64),
            next_version: 2000,
        }
    }

    /// A pod's labels replaced (as `kubectl label --overwrite` leaves them).
    pub fn set_pod_labels(&mut self, pod: usize, labels: Labels) {
        self.pod_labels[pod] = labels;
        self.next_version += 1;
        self.pod_versions[pod] = self.next_version;
    }

    pub fn set_namespace_labels(&mut self, ns: usize, labels: Labels) {
        self.namespace_labels[ns] = labels;
        self.next_version += 1;
        self.namespace_versions[ns] = self.next_version;
    }

    /// The `v1 List` of `kubectl get pods,namespaces -A`: pods by namespace and name, then namespaces.
    pub fn objects(&self) -> Value {
        let mut items: Vec<Value> = (0..PODS).map(|i| self.pod(i)).collect();
        items.extend((0..3).map(|n| self.namespace(n)));
        json!({ "apiVersion": "v1", "items": items, "kind": "List", "metadata": { "resourceVersion": "" } })
    }

    /// `kubectl get pods,namespaces -A -o yaml`.
    pub fn to_yaml(&self) -> String {
        kubectl_yaml(&self.objects())
    }

    /// The same objects as multi-document YAML (`---` between them), one object each.
    pub fn to_documents(&self) -> String {
        let objects = self.objects();
        let items = objects["items"].as_array().expect("items");
        items.iter().map(kubectl_yaml).collect::<Vec<_>>().join("---\n")
    }

    fn namespace(&self, n: usize) -> Value {
        let name = NAMESPACES[n];
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "creationTimestamp": "2026-12-03T09:58:00Z",
                "labels": self.namespace_labels[n],
                "name": name,
                "resourceVersion": self.namespace_versions[n].to_string(),
                "uid": uid(&format!("namespace/{name}")),
            },
            "spec": { "finalizers": ["kubernetes"] },
            "status": { "phase": "Active" },
        })
    }

    /// A pod as upstream's model creates it: one agnhost container per port and protocol, its
    /// port named `serve-<port>-<proto>`; scheduled, running and ready on the node.
    fn pod(&self, i: usize) -> Value {
        let (ns, name) = (NAMESPACES[i / 3], POD_NAMES[i % 3]);
        let (created, started) = ("2026-12-03T09:59:00Z", "2026-12-03T09:59:04Z");
        let volume = format!("kube-api-access-{}", &hex(&format!("volume/{ns}/{name}"), 5));
        let containers: Vec<Value> = PROBES
            .iter()
            .map(|p| {
                let (proto, port) = p.proto_port();
                json!({
                    "command": ["/agnhost", "serve-hostname", format!("--{proto}"), "--http=false", "--port", port.to_string()],
                    "image": AGNHOST,
                    "imagePullPolicy": "IfNotPresent",
                    "name": format!("cont-{port}-{proto}"),
                    "ports": [{ "containerPort": port, "name": format!("serve-{port}-{proto}"), "protocol": proto.to_uppercase() }],
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "volumeMounts": [{ "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": volume, "readOnly": true }],
                })
            })
            .collect();
        let statuses: Vec<Value> = PROBES
            .iter()
            .map(|p| {
                let (proto, port) = p.proto_port();
                let cname = format!("cont-{port}-{proto}");
                json!({
                    "containerID": format!("containerd://{}", hex(&format!("container/{ns}/{name}/{cname}"), 64)),
                    "image": AGNHOST,
                    "imageID": format!("registry.k8s.io/e2e-test-images/agnhost@sha256:{}", hex("agnhost", 64)),
                    "lastState": {},
                    "name": cname,
                    "ready": true,
                    "restartCount": 0,
                    "started": true,
                    "state": { "running": { "startedAt": started } },
                })
            })
            .collect();
        let condition =
            |t: &str, at: &str| json!({ "lastProbeTime": null, "lastTransitionTime": at, "status": "True", "type": t });
        let ip = pod_ip(i).to_string();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "creationTimestamp": created,
                "labels": self.pod_labels[i],
                "name": name,
                "namespace": ns,
                "resourceVersion": self.pod_versions[i].to_string(),
                "uid": uid(&format!("pod/{ns}/{name}")),
            },
            "spec": {
                "containers": containers,
                "dnsPolicy": "ClusterFirst",
                "enableServiceLinks": true,
                "nodeName": NODE_NAME,
                "preemptionPolicy": "PreemptLowerPriority",
                "priority": 0,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "securityContext": {},
                "serviceAccount": "default",
                "serviceAccountName": "default",
                "terminationGracePeriodSeconds": 0,
                "tolerations": [
                    { "effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300 },
                    { "effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300 },
                ],
                "volumes": [{
                    "name": volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                            { "configMap": { "items": [{ "key": "ca.crt", "path": "ca.crt" }], "name": "kube-root-ca.crt" } },
                            { "downwardAPI": { "items": [{ "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" }, "path": "namespace" }] } },
                        ],
                    },
                }],
            },
            "status": {
                "conditions": [
                    condition("PodReadyToStartContainers", started),
                    condition("Initialized", created),
                    condition("Ready", started),
                    condition("ContainersReady", started),
                    condition("PodScheduled", created),
                ],
                "containerStatuses": statuses,
                "hostIP": NODE_IP,
                "hostIPs": [{ "ip": NODE_IP }],
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{ "ip": ip }],
                "qosClass": "BestEffort",
                "startTime": created,
            },
        })
    }
}

/// `n` hex digits determined by `seed` (FNV-1a, extended): ids that look real and never change.
fn hex(seed: &str, n: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    let mut round = 0u8;
    while out.len() < n {
        for b in seed.bytes().chain([round]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let _ = write!(out, "{h:016x}");
        round += 1;
    }
    out.truncate(n);
    out
}

/// A version-4-shaped UUID determined by `seed`.
fn uid(seed: &str) -> String {
    let h = hex(seed, 32);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// The directory the agent's `--k8s-objects` reads: `cluster.yaml` (the [`Cluster`]) and one
/// file per NetworkPolicy (`networkpolicy-<ns>-<name>.yaml`). Every write is atomic (a
/// dot-file renamed into place), so a reader never sees half a file.
pub struct ObjectsDir(TempDir);

pub const CLUSTER_FILE: &str = "cluster.yaml";

impl ObjectsDir {
    pub fn new(cluster: &Cluster) -> ObjectsDir {
        let d = ObjectsDir(TempDir::new());
        d.write_cluster(cluster);
        d
    }

    pub fn path(&self) -> &Path {
        &self.0.0
    }

    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.path().join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        fs::rename(&tmp, self.path().join(name))
            .unwrap_or_else(|e| panic!("rename into {}: {e}", self.path().display()));
    }

    pub fn write_cluster(&self, cluster: &Cluster) {
        self.write(CLUSTER_FILE, &cluster.to_yaml());
    }

    pub fn remove(&self, name: &str) {
        let p = self.path().join(name);
        fs::remove_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// The NetworkPolicy files in the directory.
    pub fn policy_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path())
            .expect("objects directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("networkpolicy-"))
            .collect();
        v.sort();
        v
    }
}
