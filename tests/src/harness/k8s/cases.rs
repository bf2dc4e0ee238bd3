//! The cases in tests/data/k8s and the schema validator.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;

use super::cluster::{Cluster, Labels, ObjectsDir};
use super::model::{Matrix, NAMESPACES, PROBES, Truth, pod_index, probe_name};

/// The case files' directory.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/k8s")
}

/// A NetworkPolicy object of a case, its text as written in the case file (kubectl's output).
#[derive(Clone, Debug)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub text: String,
}

impl NetworkPolicy {
    /// Its file in the [`ObjectsDir`].
    pub fn file_name(&self) -> String {
        policy_file(&self.namespace, &self.name)
    }
}

pub fn policy_file(namespace: &str, name: &str) -> String {
    format!("networkpolicy-{namespace}-{name}.yaml")
}

/// What a step changes in the cluster, in this order: created, updated and deleted policies,
/// then pods' and namespaces' labels.
#[derive(Clone, Debug)]
pub enum Change {
    Create(NetworkPolicy),
    Update(NetworkPolicy),
    Delete { namespace: String, name: String },
    PodLabels(usize, Labels),
    NamespaceLabels(usize, Labels),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub note: String,
    pub changes: Vec<Change>,
    /// The truth table of every probe once the changes are in force.
    pub expect: Matrix,
    /// The same verdicts as a native policy, hand-translated (a few cases have one).
    pub native: Option<String>,
}

impl Step {
    /// Puts the step's changes into the objects directory (policies) and `cluster` (labels,
    /// then `cluster.yaml` written again).
    pub fn apply(&self, objects: &ObjectsDir, cluster: &mut Cluster) {
        let mut labels_changed = false;
        for c in &self.changes {
            match c {
                Change::Create(p) | Change::Update(p) => objects.write(&p.file_name(), &p.text),
                Change::Delete { namespace, name } => objects.remove(&policy_file(namespace, name)),
                Change::PodLabels(i, l) => {
                    cluster.set_pod_labels(*i, l.clone());
                    labels_changed = true;
                }
                Change::NamespaceLabels(n, l) => {
                    cluster.set_namespace_labels(*n, l.clone());
                    labels_changed = true;
                }
            }
        }
        if labels_changed {
            objects.write_cluster(cluster);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    /// The file's stem, e.g. `01-default-deny-ingress`.
    pub name: String,
    /// The upstream test's title.
    pub upstream: String,
    pub note: String,
    pub steps: Vec<Step>,
}

impl Case {
    /// Every step has a native equivalent.
    pub fn has_native(&self) -> bool {
        self.steps.iter().all(|s| s.native.is_some())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    upstream: String,
    #[serde(default)]
    note: String,
    steps: Vec<StepDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StepDoc {
    #[serde(default)]
    note: String,
    #[serde(default)]
    create: Vec<String>,
    #[serde(default)]
    update: Vec<String>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    pod_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, Labels>,
    expect: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    native: Option<String>,
}

/// Every case of `dir` (`*.yaml`, by name), checked: policies are NetworkPolicy objects of the
/// model's namespaces, a policy is created once and updated or deleted only while it exists,
/// labels go to pods and namespaces of the model, every probe has exactly one table.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, String> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_case(p).map_err(|e| format!("{}: {e}", p.display()))).collect()
}

fn load_case(path: &Path) -> Result<Case, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let doc: CaseDoc = serde_saphyr::from_str(&text).map_err(|e| e.to_string())?;
    let mut live = BTreeSet::new();
    let mut steps = Vec::new();
    for (n, s) in doc.steps.into_iter().enumerate() {
        let step = load_step(s, &mut live).map_err(|e| format!("step {}: {e}", n + 1))?;
        steps.push(step);
    }
    if steps.is_empty() {
        return Err("a case has at least one step".into());
    }
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Case { name, upstream: doc.upstream, note: doc.note, steps })
}

fn load_step(s: StepDoc, live: &mut BTreeSet<(String, String)>) -> Result<Step, String> {
    let mut changes = Vec::new();
    for text in &s.create {
        let p = network_policy(text)?;
        if !live.insert((p.namespace.clone(), p.name.clone())) {
            return Err(format!("{}/{} is created twice", p.namespace, p.name));
        }
        changes.push(Change::Create(p));
    }
    for text in &s.update {
        let p = network_policy(text)?;
        if !live.contains(&(p.namespace.clone(), p.name.clone())) {
            return Err(format!("{}/{} is updated before it is created", p.namespace, p.name));
        }
        changes.push(Change::Update(p));
    }
    for d in &s.delete {
        let (ns, name) = d.split_once('/').ok_or(format!("delete {d:?}: not `namespace/name`"))?;
        if !live.remove(&(ns.to_string(), name.to_string())) {
            return Err(format!("{d} is deleted but does not exist"));
        }
        changes.push(Change::Delete { namespace: ns.into(), name: name.into() });
    }
    for (pod, labels) in s.pod_labels {
        let i = pod_index(&pod).ok_or(format!("podLabels: {pod:?} is no pod of the model"))?;
        changes.push(Change::PodLabels(i, labels));
    }
    for (ns, labels) in s.namespace_labels {
        let n = NAMESPACES
            .iter()
            .position(|x| *x == ns)
            .ok_or(format!("namespaceLabels: {ns:?} is no namespace of the model"))?;
        changes.push(Change::NamespaceLabels(n, labels));
    }
    let mut tables: [Option<Truth>; 4] = [None; 4];
    for (probes, lines) in &s.expect {
        let t = Truth::parse(lines).map_err(|e| format!("expect {probes}: {e}"))?;
        for name in probes.split_whitespace() {
            let k = PROBES
                .iter()
                .position(|p| probe_name(*p) == name)
                .ok_or(format!("expect: {name:?} is not one of the probes {}", PROBES.map(probe_name).join(", ")))?;
            if tables[k].replace(t).is_some() {
                return Err(format!("expect: {name} has two tables"));
            }
        }
    }
    let missing: Vec<String> = (0..4).filter(|k| tables[*k].is_none()).map(|k| probe_name(PROBES[k])).collect();
    if !missing.is_empty() {
        return Err(format!("expect: no table for {}", missing.join(", ")));
    }
    let expect = Matrix(tables.map(|t| t.expect("checked above")));
    Ok(Step { note: s.note, changes, expect, native: s.native })
}

fn network_policy(text: &str) -> Result<NetworkPolicy, String> {
    let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("a policy is not YAML: {e}"))?;
    let field = |f: &str| v.pointer(f).and_then(Value::as_str).map(String::from);
    if field("/apiVersion").as_deref() != Some("networking.k8s.io/v1")
        || field("/kind").as_deref() != Some("NetworkPolicy")
    {
        return Err(format!("not a networking.k8s.io/v1 NetworkPolicy:\n{text}"));
    }
    let (Some(namespace), Some(name)) = (field("/metadata/namespace"), field("/metadata/name")) else {
        return Err(format!("a policy needs metadata.namespace and metadata.name:\n{text}"));
    };
    if !NAMESPACES.contains(&namespace.as_str()) {
        return Err(format!("{namespace}/{name}: {namespace} is no namespace of the model"));
    }
    Ok(NetworkPolicy { namespace, name, text: text.to_string() })
}

/// The schema validator the bootstrap installs (`cargo xtask setup`: PyPI `kubernetes-validate`
/// in its own virtualenv, with the Kubernetes schemas it bundles, so it works offline): the path
/// in `ZTAGENT_KUBERNETES_VALIDATE` (set by `cargo xtask test`), else where the bootstrap puts
/// it. Panics, saying how to install it, when it is missing.
pub fn kubernetes_validate() -> PathBuf {
    let p = std::env::var_os("ZTAGENT_KUBERNETES_VALIDATE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".local/share/ztagent/kubernetes-validate/bin/kubernetes-validate")
    });
    assert!(
        p.exists(),
        "kubernetes-validate is not installed at {}: run `cargo xtask setup` (it installs PyPI kubernetes-validate)",
        p.display()
    );
    p
}

/// `kubernetes-validate --strict FILE...`: Ok, or its report. An object it has no schema for
/// (a `v1 List`, say: validate its items) is a failure, not a pass.
pub fn validate_manifests(files: &[PathBuf]) -> Result<(), String> {
    let out = std::process::Command::new(kubernetes_validate())
        .arg("--strict")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("run kubernetes-validate: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("ERROR") && !text.contains("Couldn't find schema") {
        Ok(())
    } else {
        Err(text)
    }
}
