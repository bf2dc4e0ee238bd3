//! How fast Kubernetes objects become the policy the kernel enforces: `ztagent k8s translate`
//! of 1,000 pods in 20 namespaces and 200 NetworkPolicies of mixed shapes, end to end (process
//! start, reading the files, translating, compiling to check the result fits the maps, printing
//! it), median of several runs. Target (issue 9): under 1 s.
//!
//! The objects are written as `kubectl get -o yaml` prints them: the namespaces and pods as one
//! `v1 List` each, the policies as multi-document YAML. Every namespace has 50 pods of 10 apps
//! (5 replicas each) in three tiers, container ports named `http`, `metrics` and (for the api
//! tier) `grpc`, and the same ten policies: a default deny of ingress, then allows by
//! podSelector, by named port, by namespaceSelector AND podSelector, by namespaceSelector
//! alone, from an ipBlock with except, by matchExpressions with a port range, egress of the db
//! tier to an ipBlock and to DNS, egress of the web tier, and an OR of a peer in the next
//! namespace and an ipBlock.
use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, ensure};
use integration_tests::{TempDir, bin};

use crate::{median, verdict};

/// Issue 9: a translation of 1,000 pods and 200 policies takes under 1 s.
pub const MAX_TRANSLATE_SECONDS: f64 = 1.0;

pub const NAMESPACES: usize = 20;
pub const PODS_PER_NAMESPACE: usize = 50;
const APPS: usize = 10;

fn tier(app: usize) -> &'static str {
    ["web", "api", "db"][app % 3]
}

/// The objects: (namespaces and pods as kubectl lists, policies as multi-document YAML).
pub fn objects() -> (String, String, String) {
    let mut ns = String::from("apiVersion: v1\nitems:\n");
    let mut pods = String::from("apiVersion: v1\nitems:\n");
    let mut nps = String::new();
    for n in 0..NAMESPACES {
        let env = if n % 2 == 0 { "prod" } else { "dev" };
        let _ = write!(
            ns,
            "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    labels:\n      env: {env}\n      kubernetes.io/metadata.name: ns-{n}\n      team: team-{}\n    name: ns-{n}\n  spec:\n    finalizers:\n    - kubernetes\n  status:\n    phase: Active\n",
            n % 4
        );
        for p in 0..PODS_PER_NAMESPACE {
            let app = p % APPS;
            let grpc = if tier(app) == "api" {
                "      - containerPort: 50051\n        name: grpc\n        protocol: TCP\n"
            } else {
                ""
            };
            let _ = write!(
                pods,
                "- apiVersion: v1\n  kind: Pod\n  metadata:\n    creationTimestamp: \"2026-12-01T10:00:00Z\"\n    labels:\n      app: app-{app}\n      pod-template-hash: 7d4b9c{app}f\n      tier: {}\n      version: v{}\n    name: app-{app}-7d4b9c{app}f-{p:05}\n    namespace: ns-{n}\n    resourceVersion: \"{}\"\n    uid: 6f1c2a3b-0000-4000-8000-{:012}\n  spec:\n    containers:\n    - image: registry.example/app-{app}:1.{}\n      name: app\n      ports:\n      - containerPort: {}\n        name: http\n        protocol: TCP\n      - containerPort: 9090\n        name: metrics\n        protocol: TCP\n{grpc}    nodeName: node-{}\n    restartPolicy: Always\n  status:\n    hostIP: 192.168.0.{}\n    phase: Running\n    podIP: 10.{}.{}.{}\n    podIPs:\n    - ip: 10.{}.{}.{}\n",
                tier(app),
                p % 2 + 1,
                100_000 + n * 1000 + p,
                n * 1000 + p,
                p % 3,
                // Two apps serve `http` on another number: named ports resolve per pod.
                if app == 4 { 8081 } else { 8080 },
                p % 8,
                p % 8 + 1,
                100 + n / 4,
                n % 4 * 64 + p / 250,
                p % 250 + 1,
                100 + n / 4,
                n % 4 * 64 + p / 250,
                p % 250 + 1,
            );
        }
        let next = (n + 1) % NAMESPACES;
        let policy = |name: &str, spec: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: ns-{n}\nspec:\n{spec}"
            )
        };
        let specs = [
            ("default-deny", "  podSelector: {}\n  policyTypes:\n  - Ingress\n".to_string()),
            ("web-from-namespace", "  podSelector:\n    matchLabels:\n      tier: web\n  ingress:\n  - from:\n    - podSelector: {}\n".to_string()),
            ("api-from-web", "  podSelector:\n    matchLabels:\n      tier: api\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          tier: web\n    ports:\n    - port: http\n    - port: grpc\n".to_string()),
            (
                "db-from-team-api",
                format!("  podSelector:\n    matchLabels:\n      tier: db\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: team-{}\n      podSelector:\n        matchLabels:\n          tier: api\n    ports:\n    - port: 5432\n", n % 4),
            ),
            ("metrics-from-monitoring", "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: team-0\n    ports:\n    - port: metrics\n".to_string()),
            ("web-from-outside", "  podSelector:\n    matchLabels:\n      tier: web\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n        except:\n        - 10.0.0.0/8\n        - 192.168.0.0/16\n    ports:\n    - port: 443\n".to_string()),
            ("api-from-prod", "  podSelector:\n    matchExpressions:\n    - key: app\n      operator: NotIn\n      values:\n      - app-7\n    - key: tier\n      operator: In\n      values:\n      - api\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: env\n          operator: In\n          values:\n          - prod\n    ports:\n    - port: 8000\n      endPort: 8100\n".to_string()),
            (
                "db-egress",
                "  podSelector:\n    matchLabels:\n      tier: db\n  policyTypes:\n  - Egress\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.200.0.0/16\n    ports:\n    - port: 873\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: ns-0\n      podSelector:\n        matchLabels:\n          app: app-0\n    ports:\n    - port: 53\n      protocol: UDP\n    - port: 53\n".to_string(),
            ),
            (
                "web-egress",
                "  podSelector:\n    matchLabels:\n      tier: web\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          tier: api\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: ns-0\n    ports:\n    - port: 53\n      protocol: UDP\n".to_string(),
            ),
            (
                "app-3-from-neighbours",
                format!("  podSelector:\n    matchLabels:\n      app: app-3\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: ns-{next}\n      podSelector:\n        matchLabels:\n          app: app-3\n    - ipBlock:\n        cidr: 172.16.0.0/12\n        except:\n        - 172.16.{n}.0/24\n"),
            ),
        ];
        for (name, spec) in specs {
            nps.push_str(&policy(name, &spec));
        }
    }
    ns.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    pods.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    (ns, pods, nps)
}

/// The native policy beside them: the nodes' network, and SSH denied everywhere.
const NATIVE: &str = "version: 1\nsegments:\n  nodes: { cidrs: [192.168.0.0/24] }\n  backup: { cidrs: [10.200.0.0/16] }\nrules:\n  - { name: no-ssh, from: [\"*\"], to: [\"*\"], ports: [\"22/tcp\"], action: deny }\n  - { name: nodes, from: [nodes], to: [\"*\"], action: allow }\n";

/// Times `ztagent k8s translate` `runs` times (after one unrecorded run); appends the section
/// to `text`; returns whether the target holds.
pub fn translate_time(text: &mut String, runs: usize) -> Result<bool> {
    let dir = TempDir::new();
    let (ns, pods, nps) = objects();
    let files = [dir.file("namespaces.yaml", &ns), dir.file("pods.yaml", &pods), dir.file("policies.yaml", &nps)];
    let native = dir.file("native.yaml", NATIVE);
    let bytes: usize = [&ns, &pods, &nps].iter().map(|t| t.len()).sum();
    let run = |out: &Path| -> Result<(f64, String)> {
        let start = Instant::now();
        let o = Command::new(bin("ztagent"))
            .args(["k8s", "translate"])
            .args(&files)
            .arg("--policy")
            .arg(&native)
            .output()
            .context("running ztagent k8s translate")?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(o.status.success(), "ztagent k8s translate failed: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(out, &o.stdout)?;
        Ok((secs, String::from_utf8_lossy(&o.stderr).into_owned()))
    };
    let first = dir.0.join("first.yaml");
    let (_, stderr) = run(&first)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let out = dir.0.join(format!("run{i}.yaml"));
        times.push(run(&out)?.0);
        ensure!(std::fs::read(&out)? == std::fs::read(&first)?, "two translations of the same objects differ");
    }
    let summary = stderr.lines().rev().find(|l| l.starts_with("translated ")).unwrap_or("").to_string();
    let policy =
        ztagent::policy::load(&first).map_err(|d| anyhow::anyhow!("the translated policy is invalid:\n{d}"))?;
    let c = ztagent::policy::compile(&policy);
    let s = c.summary();
    let max = times.iter().copied().fold(0.0, f64::max);
    let med = median(&mut times);
    let ok = med < MAX_TRANSLATE_SECONDS;
    let _ = write!(
        text,
        "\nKubernetes translation (`ztagent k8s translate`, {} pods in {NAMESPACES} namespaces, {} NetworkPolicies, {:.1} MB of objects; median of {runs} runs): **{:.0} ms** (max {:.0} ms).\n\
         Output: {} segments, {} rules; compiled: {} pairs, {} port entries, {} host addresses, {} CIDRs ({summary}).\n\n\
         - {}: median translation {:.0} ms < {:.0} ms\n",
        NAMESPACES * PODS_PER_NAMESPACE,
        NAMESPACES * 10,
        bytes as f64 / 1e6,
        med * 1e3,
        max * 1e3,
        s.segments,
        s.rules,
        s.pairs,
        s.port_entries,
        s.hosts,
        s.cidrs,
        verdict(ok),
        med * 1e3,
        MAX_TRANSLATE_SECONDS * 1e3,
    );
    Ok(ok)
}
