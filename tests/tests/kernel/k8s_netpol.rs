//! The upstream Kubernetes NetworkPolicy e2e cases (tests/data/k8s), run on the upstream 9-pod
//! model (tests/src/harness/k8s/): the agent enforces the node's pod interfaces, every step's objects
//! are put in force, and all 81 ordered pairs x {80, 81} x {TCP, UDP} are probed for real, in
//! parallel, until the observed truth tables are the case's (or a generous bound passes).
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, TempDir,
    k8s::{self, Case, Cluster, Matrix, ObjectsDir, Step, Topology},
};

// K8S-WIRING: this is the one place that decides how a case's objects are enforced.
//
// `WIRED = false` (the harness's first form, kept to run it without the Kubernetes features):
// the agent runs with `--iface` on each of the node's pod interfaces, and
// only the cases whose every step carries a hand-translated `native:` policy run: each step's
// native policy is pushed (`policy push`, which returns once it is installed). The harness still
// keeps the objects directory exactly as the wired agent will read it, for every case.
//
// `WIRED = true` (in force):
// - the agent starts in the node namespace with `--iface-pattern '<prefix>*'` (the topology's
//   pattern, matching exactly its nine node-side veths) and `--k8s-objects DIR`, DIR holding
//   `cluster.yaml` (the Namespaces and Pods, a `v1 List` as `kubectl get pods,namespaces -A -o
//   yaml` prints it) and `networkpolicy-<ns>-<name>.yaml` per policy (each case's text, copied
//   as written), plus `--policy` with an empty native policy (`version: 1`: pod traffic is
//   decided by NetworkPolicy alone);
// - every case runs (not only those with `native:`), and nothing is pushed: a step is put in
//   force by writing its files (policies created, replaced, removed; `cluster.yaml` rewritten
//   for a label change);
// - `settled()` gives the agent its promised reconcile time (1 s) before a matching round counts;
//   replace it by waiting for the agent's own acknowledgement once `status` reports the directory
//   version it applied (a label change may bump no policy revision).
const WIRED: bool = true;

/// The bound on a step's table: polled, never a figure the test judges (the promise is 1 s).
const WITHIN: Duration = Duration::from_secs(20);
/// What the wired agent promises: a directory change in force within 1 s (plus a margin).
const RECONCILE: Duration = Duration::from_millis(1500);

/// The native policy of a model with no NetworkPolicy: every pod reaches every pod.
const NO_NETWORKPOLICY: &str = "version: 1
segments:
  pods: { cidrs: [10.244.0.0/24] }
rules:
  - { name: pod-to-pod, from: [pods], to: [pods], action: allow }
";

/// The agent on the model's node, and the objects it enforces.
struct Enforcement<'t> {
    topo: &'t Topology,
    objects: ObjectsDir,
    cluster: Cluster,
    agent: Agent,
    scratch: TempDir,
}

impl<'t> Enforcement<'t> {
    fn start(topo: &'t Topology) -> Enforcement<'t> {
        let cluster = Cluster::upstream();
        let objects = ObjectsDir::new(&cluster);
        let scratch = TempDir::new();
        let agent = if WIRED {
            let native = scratch.file("native.yaml", "version: 1\n");
            let dir = objects.path().to_str().expect("a UTF-8 path").to_string();
            Agent::start_with(
                &topo.node,
                &[],
                Some(native.as_path()),
                &["--iface-pattern", &topo.iface_pattern(), "--k8s-objects", &dir],
            )
        } else {
            let native = scratch.file("native.yaml", NO_NETWORKPOLICY);
            Agent::start(&topo.node, &topo.node_ifaces(), Some(native.as_path()))
        };
        Enforcement { topo, objects, cluster, agent, scratch }
    }

    /// Whether `case` runs in this configuration.
    fn runs(case: &Case) -> bool {
        WIRED || case.has_native()
    }

    /// Back to the model without NetworkPolicies and with upstream's labels; returns when a
    /// matching observation may count.
    fn reset(&mut self) -> Instant {
        for f in self.objects.policy_files() {
            self.objects.remove(&f);
        }
        self.cluster = Cluster::upstream();
        self.objects.write_cluster(&self.cluster);
        if WIRED { self.settled() } else { self.push(NO_NETWORKPOLICY) }
    }

    /// Puts `step` in force; returns when a matching observation may count.
    fn apply(&mut self, step: &Step) -> Instant {
        step.apply(&self.objects, &mut self.cluster);
        if WIRED { self.settled() } else { self.push(step.native.as_deref().expect("a native policy (see `runs`)")) }
    }

    fn settled(&self) -> Instant {
        Instant::now() + RECONCILE
    }

    fn push(&self, policy: &str) -> Instant {
        let path: PathBuf = self.scratch.file("step.yaml", policy);
        self.agent.push(&path);
        Instant::now()
    }

    /// Every step of `case`, each table awaited; the first table that does not come is the error.
    fn run(&mut self, case: &Case) -> Result<(), String> {
        let not_before = self.reset();
        self.topo
            .await_matrix(&Matrix::all_allowed(), not_before, WITHIN)
            .map_err(|e| format!("{}: before its first step, the model without policies:\n{e}", case.name))?;
        for (n, step) in case.steps.iter().enumerate() {
            let not_before = self.apply(step);
            match self.topo.await_matrix(&step.expect, not_before, WITHIN) {
                Ok(took) => println!("{} step {}: the tables held after {:.1} s", case.name, n + 1, took.as_secs_f64()),
                Err(e) => {
                    let note = if step.note.is_empty() { String::new() } else { format!(" ({})", step.note) };
                    return Err(format!("{} ({:?}) step {}{note}:\n{e}", case.name, case.upstream, n + 1));
                }
            }
        }
        Ok(())
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn cases() -> Vec<Case> {
    let cases = k8s::load_cases(&k8s::cases_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(cases.len() >= 18, "at least 18 upstream cases, found {}", cases.len());
    cases
}

#[test]
fn upstream_networkpolicy_cases_hold_on_the_nine_pod_model() {
    let cases = cases();
    let topo = Topology::new();
    let mut enforcement = Enforcement::start(&topo);
    let runnable: Vec<&Case> = cases.iter().filter(|c| Enforcement::runs(c)).collect();
    // Unwired, the hand-translated cases: one denies a whole namespace, one a single pair, two
    // tell ports and protocols apart (81/tcp allowed where 80/tcp and UDP are denied; 81/udp
    // allowed where 81/tcp is denied), one of them in two steps; wired, every case.
    assert!(runnable.len() >= if WIRED { cases.len() } else { 4 }, "only {} cases can run", runnable.len());
    let mut failures = Vec::new();
    for case in &runnable {
        if let Err(e) = enforcement.run(case) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}\nthe agent log's last lines:\n{}",
        failures.len(),
        runnable.len(),
        failures.join("\n"),
        last_lines(&enforcement.agent.log(), 60)
    );
}

#[test]
fn the_case_files_and_the_cluster_objects_pass_schema_validation() {
    // Every NetworkPolicy of every case, and the cluster objects the harness writes (before
    // and after label changes), against the Kubernetes schemas, offline: what the agent will be
    // fed is what a real API server would hold.
    let dir = TempDir::new();
    let mut files = Vec::new();
    for case in cases() {
        for (n, step) in case.steps.iter().enumerate() {
            for change in &step.changes {
                if let k8s::Change::Create(p) | k8s::Change::Update(p) = change {
                    files.push(dir.file(&format!("{}-{}-{}", case.name, n + 1, p.file_name()), &p.text));
                }
            }
        }
    }
    // kubernetes-validate has no schema for a `v1 List`: its items go one document each.
    let mut cluster = Cluster::upstream();
    files.push(dir.file("cluster.yaml", &cluster.to_documents()));
    cluster
        .set_pod_labels(1, [("pod".to_string(), "b".to_string()), ("pod2".to_string(), "updated".to_string())].into());
    cluster.set_namespace_labels(
        1,
        [("kubernetes.io/metadata.name".into(), "y".into()), ("ns2".into(), "updated".into())].into(),
    );
    files.push(dir.file("cluster-relabelled.yaml", &cluster.to_documents()));
    assert!(files.len() > 44, "{} files", files.len());
    if let Err(report) = k8s::validate_manifests(&files) {
        panic!("kubernetes-validate --strict refused the case objects:\n{report}");
    }
}

#[test]
fn the_cluster_objects_read_back_as_kubectl_prints_them() {
    // The emitter's output is YAML that reads back to the very objects (no string turned into a
    // number or a boolean, e.g. the namespace `y` or a resourceVersion), with the pods' IPs,
    // labels and named container ports where a NetworkPolicy reader looks for them.
    let cluster = Cluster::upstream();
    let text = cluster.to_yaml();
    let read: serde_json::Value = serde_saphyr::from_str(&text).expect("the objects are YAML");
    assert_eq!(read, cluster.objects(), "{text}");
    assert!(text.starts_with("apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n"), "{text}");
    assert!(text.ends_with("kind: List\nmetadata:\n  resourceVersion: \"\"\n"), "{text}");
    let items = read["items"].as_array().unwrap();
    assert_eq!(items.len(), 12);
    for (i, pod) in items[..9].iter().enumerate() {
        let name = k8s::pod_name(i);
        assert_eq!(
            format!("{}/{}", pod["metadata"]["namespace"].as_str().unwrap(), pod["metadata"]["name"].as_str().unwrap()),
            name
        );
        assert_eq!(pod["status"]["podIP"], k8s::pod_ip(i).to_string());
        assert_eq!(pod["status"]["podIPs"][0]["ip"], k8s::pod_ip(i).to_string());
        assert_eq!(pod["metadata"]["labels"]["pod"], name.split('/').nth(1).unwrap());
        let ports: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let p = &c["ports"][0];
                format!("{}={}/{}", p["name"].as_str().unwrap(), p["containerPort"], p["protocol"].as_str().unwrap())
            })
            .collect();
        assert_eq!(ports, ["serve-80-tcp=80/TCP", "serve-81-tcp=81/TCP", "serve-80-udp=80/UDP", "serve-81-udp=81/UDP"]);
    }
    for (n, ns) in items[9..].iter().enumerate() {
        assert_eq!(ns["kind"], "Namespace");
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], k8s::NAMESPACES[n]);
    }
    assert!(
        text.contains("kubernetes.io/metadata.name: \"y\"\n"),
        "YAML 1.1's boolean `y` is quoted, as kubectl quotes it"
    );
}
