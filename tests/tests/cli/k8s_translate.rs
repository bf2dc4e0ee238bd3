//! `ztagent k8s translate` as a user meets it: Kubernetes objects in (a kubectl list, multi-
//! document YAML, JSON), the flattened native policy out, deterministic and valid; broken
//! objects refused with FILE:LINE:COL diagnostics and nothing printed; warnings on stderr.
use std::process::Command;

use integration_tests::{TempDir, build_bin};

fn ztagent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(build_bin("ztagent", "ztagent")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pods of namespace prod as `kubectl get pods -n prod -o yaml` prints them.
const PODS: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app: web
    name: web-1
    namespace: prod
  spec:
    containers:
    - name: web
      ports:
      - containerPort: 8080
        name: http
        protocol: TCP
  status:
    phase: Running
    podIP: 10.1.0.5
    podIPs:
    - ip: 10.1.0.5
- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app: client
    name: client-1
    namespace: prod
  status:
    phase: Running
    podIP: 10.1.0.6
kind: List
metadata:
  resourceVersion: ""
"#;

const POLICIES: &str = r#"---
apiVersion: v1
kind: Namespace
metadata:
  name: prod
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: prod
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: client
    ports:
    - port: http
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: prod
"#;

const NATIVE: &str = "version: 1\nsegments:\n  nodes: { cidrs: [192.168.0.0/24] }\nrules:\n  - { name: nodes, from: [nodes], to: [nodes], action: allow }\n";

fn verdict(policy: &str, src: &str, dst: &str, port: &str) -> String {
    let out = std::process::Command::new(integration_tests::build_bin("ztagent", "ztagent"))
        .args(["check", "--policy", policy, "--src", src, "--dst", dst, "--port", port, "-o", "json"])
        .output()
        .unwrap();
    integration_tests::check_json_of(&out)["verdict"].as_str().unwrap().to_string()
}

#[test]
fn objects_translate_to_a_valid_deterministic_policy() {
    let dir = TempDir::new();
    let pods = dir.file("pods.yaml", PODS);
    let policies = dir.file("policies.yaml", POLICIES);
    let native = dir.file("native.yaml", NATIVE);
    let (pods, policies, native) = (pods.to_str().unwrap(), policies.to_str().unwrap(), native.to_str().unwrap());
    let (ok, out, err) = ztagent(&["k8s", "translate", pods, policies, "--policy", native]);
    assert!(ok, "{err}");
    // The Service is skipped, with its position, on stderr.
    assert!(err.lines().any(|l| l.starts_with(&format!("{policies}:25:7: warning: skipped: kind `Service`"))), "{err}");
    assert!(err.contains("translated 2 pods (2 addresses) and 1 NetworkPolicies"), "{err}");
    // The same output whatever the order of the files, and as JSON.
    let (ok, again, _) = ztagent(&["k8s", "translate", policies, pods, "--policy", native]);
    assert!(ok);
    assert_eq!(again, out, "the output depends on the order of the files");
    let (ok, json, _) = ztagent(&["k8s", "translate", pods, policies, "--policy", native, "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["segments"]["nodes"]["cidrs"][0] == "192.168.0.0/24", "{json}");
    // The output is a policy: it validates, and judges as the NetworkPolicy says.
    let translated = dir.file("translated.yaml", &out);
    let translated = translated.to_str().unwrap();
    let (ok, _, err) = ztagent(&["policy", "validate", translated]);
    assert!(ok, "{err}\n{out}");
    assert_eq!(verdict(translated, "10.1.0.6", "10.1.0.5", "8080"), "allow", "{out}");
    assert_eq!(verdict(translated, "10.1.0.6", "10.1.0.5", "80"), "deny", "named port: only 8080 is `http`");
    assert_eq!(verdict(translated, "192.168.0.9", "10.1.0.5", "8080"), "deny", "web is isolated");
    assert_eq!(verdict(translated, "10.1.0.5", "10.1.0.6", "22"), "allow", "client is not isolated");
    assert_eq!(verdict(translated, "192.168.0.9", "192.168.0.8", "22"), "allow", "the native rule");
    // A directory stands for its *.yaml, *.yml and *.json files.
    let objects = TempDir::new();
    objects.file("a.yml", PODS);
    objects.file("b.yaml", POLICIES);
    objects.file("README.md", "not an object");
    let (ok, from_dir, err) = ztagent(&["k8s", "translate", objects.0.to_str().unwrap(), "--policy", native]);
    assert!(ok, "{err}");
    assert_eq!(from_dir, out);
}

#[test]
fn broken_objects_are_refused_with_positions_and_nothing_is_printed() {
    let dir = TempDir::new();
    let pods = dir.file("pods.yaml", &PODS.replace("10.1.0.6", "10.1.0.600"));
    let broken = POLICIES
        .replace("    - port: http", "    - port: http\n      endPort: 9000")
        .replace("podSelector:\n    matchLabels", "podSelecter:\n    matchLabels");
    let policies = dir.file("policies.yaml", &broken);
    let (pods, policies) = (pods.to_str().unwrap(), policies.to_str().unwrap());
    let (ok, out, err) = ztagent(&["k8s", "translate", pods, policies]);
    assert!(!ok, "broken objects were accepted:\n{out}");
    assert!(out.is_empty(), "something was printed: {out}");
    for want in [
        format!("{pods}:31:12: error: `10.1.0.600` is not an IP address"),
        format!(
            "{policies}:13:3: error: unknown field `podSelecter` in a NetworkPolicy's `spec`; did you mean `podSelector`?"
        ),
        format!("{policies}:23:16: error: `endPort` needs a numeric `port`"),
    ] {
        assert!(err.lines().any(|l| l.starts_with(&want)), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    // A broken native policy: its own diagnostics.
    let native = dir.file("native.yaml", "version: 1\nsegments:\n  web: { selector: { labels: { app: 1 } } }\n");
    let (ok, out, err) = ztagent(&[
        "k8s",
        "translate",
        dir.file("ok.yaml", PODS).to_str().unwrap(),
        "--policy",
        native.to_str().unwrap(),
    ]);
    assert!(!ok && out.is_empty());
    assert!(
        err.starts_with(&format!("{}:3:", native.display())) && err.contains("label `app` must be a string"),
        "{err}"
    );
    // NetworkPolicies with a native `defaultAction: allow`: one sentence.
    let allow = dir.file("allow.yaml", "version: 1\ndefaultAction: allow\n");
    let (ok, out, err) = ztagent(&[
        "k8s",
        "translate",
        dir.file("np.yaml", POLICIES).to_str().unwrap(),
        "--policy",
        allow.to_str().unwrap(),
    ]);
    assert!(!ok && out.is_empty());
    assert!(
        err.contains("defaultAction: allow") && err.lines().filter(|l| l.starts_with("error")).count() == 1,
        "{err}"
    );
    // A file that is not there.
    let (ok, _, err) = ztagent(&["k8s", "translate", "/nonexistent/objects.yaml"]);
    assert!(!ok && err.starts_with("/nonexistent/objects.yaml:1:1: error: cannot read the file"), "{err}");
}
