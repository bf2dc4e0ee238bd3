//! The shop the Kubernetes tests and the demo run on [`Lan::four_hosts`](crate::Lan::four_hosts).

use crate::harness::agent::Agent;
use crate::harness::probes::tcp_ok;
use crate::harness::topology::Lan;

/// The Kubernetes tests' and the demo's shop on [`Lan::four_hosts`]: its pods as `kubectl get pods -n shop -o yaml` prints them: the test hosts'
/// addresses (payments 10.20.2.10, frontend 10.20.1.2, batch 10.20.3.2) with these `app`
/// labels.
pub fn shop_pods(frontend_app: &str, batch_app: &str) -> String {
    let pod = |name: &str, app: &str, v4: &str, v6: &str| {
        format!(
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    labels:\n      app: {app}\n    name: {name}\n    namespace: shop\n  spec:\n    containers:\n    - name: main\n      ports:\n      - containerPort: 443\n        name: https\n        protocol: TCP\n  status:\n    phase: Running\n    podIP: {v4}\n    podIPs:\n    - ip: {v4}\n    - ip: {v6}\n"
        )
    };
    format!(
        "apiVersion: v1\nitems:\n{}{}{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
        pod("payments-0", "payments", "10.20.2.10", "fd20:2::10"),
        pod("frontend-0", frontend_app, "10.20.1.2", "fd20:1::2"),
        pod("batch-0", batch_app, "10.20.3.2", "fd20:3::2"),
    )
}

/// Payments admits the pods labelled `app: frontend`, on its named port `https`.
pub const SHOP_POLICIES: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: payments-from-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: payments
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - port: https
"#;

/// The agent's `status -o json` and `check SRC -> payments:443/tcp -o json`: what the
/// Kubernetes tests (objects directory and API server alike) ask of the agent over the shop.
pub fn shop_queries(agent: &Agent) -> (impl Fn() -> serde_json::Value + '_, impl Fn(&str) -> serde_json::Value + '_) {
    let status = || crate::json_of(&agent.cli(&["status", "-o", "json"]));
    let check = |src: &str| {
        crate::check_json_of(&agent.cli(&["check", "--src", src, "--dst", "10.20.2.10", "--port", "443", "-o", "json"]))
    };
    (status, check)
}

/// The Kubernetes tests' shop on [`Lan::four_hosts`] as its first NetworkPolicy has it:
/// payments admits the pods labelled `app: frontend` on its port named `https` (443) only.
/// Checked with real connections: frontend in (IPv4 and IPv6) but not on 8443; batch and the
/// attacker (no pod) out.
pub fn assert_only_frontend_reaches_payments(lan: &Lan, agent: &Agent) {
    let (payments, frontend, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "frontend denied:\n{}", agent.log());
    assert!(tcp_ok(&frontend.ns, payments.v6, 443), "frontend denied over IPv6");
    assert!(!tcp_ok(&frontend.ns, payments.v4, 8443), "a port that is not the named one was allowed");
    assert!(!tcp_ok(&batch.ns, payments.v4, 443), "batch allowed");
    assert!(!tcp_ok(&attacker.ns, payments.v4, 443), "an address that is no pod was allowed");
}
