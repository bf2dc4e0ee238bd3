//! The Kubernetes API source (`ztagent run --k8s-api --kubeconfig PATH`) against a fake API
//! server on loopback (`integration_tests::fake_api`): kube-rs' real watchers over real HTTP,
//! lists and chunked watches as the API server serves them. No real API server can be
//! installed here: its exact behaviour and its RBAC enforcement are not tested.
//!
//! - The source (`ztagent::sources::k8s_api::run_api_source`): its snapshots are what the directory
//!   source reads from the same objects; watch events (labels changed, a policy deleted, pods
//!   and namespaces added and removed) give new snapshots, a burst of them few; an invisible
//!   change none; ended watches resume, a 410 Gone relists, a 403 at the start delays the
//!   first snapshot until every resource is listed; broken objects are diagnostics naming them.
//! - The agent: the test hosts are pods the fake serves; a NetworkPolicy isolates payments;
//!   real connections follow it, and follow the API's changes without a push.
use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, Lan, Servers, TempDir, assert_only_frontend_reaches_payments, bin,
    fake_api::{FakeApi, RESOURCES, TOKEN, namespace, network_policy, pod},
    shop_queries, tcp_ok, wait_for,
};
use serde_json::{Value, json};
use ztagent::k8s::Objects;
use ztagent::sources::k8s_api::{ApiConfig, DEBOUNCE, Snapshot, client, run_api_source};

/// A bound on waiting for a snapshot or for the agent to enforce a change: generous (the
/// source's own target is within 1 s of the event); it only tells "came" from "never".
const WAIT: Duration = Duration::from_secs(15);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn served() -> Vec<Value> {
    let ports = [(80, "serve-80-tcp", "TCP"), (80, "serve-80-udp", "UDP")];
    vec![
        namespace("x", json!({ "kubernetes.io/metadata.name": "x", "team": "pay" })),
        namespace("y", json!({ "kubernetes.io/metadata.name": "y" })),
        pod("x", "a", json!({ "pod": "a" }), &["10.0.1.1"], &ports),
        pod("x", "b", json!({ "pod": "b" }), &["10.0.1.2", "fd00::2"], &ports),
        pod("y", "a", json!({ "pod": "a" }), &["10.0.2.1"], &ports),
        network_policy("x", "deny-all", json!({ "podSelector": {}, "policyTypes": ["Ingress"] })),
        network_policy(
            "x",
            "allow-from-y",
            json!({ "podSelector": { "matchLabels": { "pod": "a" } },
            "ingress": [ { "from": [ { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "y" } } } ],
                           "ports": [ { "port": "serve-80-tcp" }, { "protocol": "UDP", "port": 80 } ] } ] }),
        ),
        network_policy(
            "y",
            "egress-ip",
            json!({ "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [ { "to": [ { "ipBlock": { "cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"] } } ],
                          "ports": [ { "port": 5000, "endPort": 5010 } ] } ] }),
        ),
    ]
}

/// What the directory source reads of the same objects written as one JSON file.
fn read_as_file(objects: &[Value]) -> Objects {
    let text = json!({ "apiVersion": "v1", "kind": "List", "items": objects }).to_string();
    ztagent::k8s::parse_objects(&[("objects.json", &text)]).expect("the served objects read as a file")
}

/// A running source against a fake, and its snapshots.
struct Source {
    rx: tokio::sync::mpsc::Receiver<Snapshot>,
    rt: tokio::runtime::Runtime,
    _dir: TempDir,
}

impl Source {
    fn start(fake: &FakeApi) -> Source {
        let dir = TempDir::new();
        let cfg = ApiConfig { kubeconfig: Some(fake.kubeconfig(&dir.0)) };
        let rt = runtime();
        let client = rt.block_on(client(&cfg)).expect("a client for the fake's kubeconfig");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        rt.spawn(run_api_source(client, tx));
        Source { rx, rt, _dir: dir }
    }

    fn next(&mut self) -> Snapshot {
        let rx = &mut self.rx;
        match self.rt.block_on(async { tokio::time::timeout(WAIT, rx.recv()).await }) {
            Ok(Some(s)) => s,
            Ok(None) => panic!("the source ended"),
            Err(_) => panic!("no snapshot within {WAIT:?}"),
        }
    }

    fn next_ok(&mut self) -> Objects {
        self.next().objects.unwrap_or_else(|d| panic!("the snapshot has errors:\n{d}"))
    }

    /// Snapshots until one satisfies `done`; returns it and how many came.
    fn until(&mut self, done: impl Fn(&Objects) -> bool) -> (Objects, usize) {
        let mut n = 0;
        loop {
            let o = self.next_ok();
            n += 1;
            if done(&o) {
                return (o, n);
            }
        }
    }
}

fn labels(o: &Objects, id: &str) -> Vec<(String, String)> {
    let pod = o.cluster.pods.iter().find(|p| p.id() == id).unwrap_or_else(|| panic!("no pod {id}"));
    pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn label(o: &Objects, id: &str, key: &str) -> Option<String> {
    labels(o, id).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn policy_ids(o: &Objects) -> Vec<String> {
    o.policies.iter().map(|p| p.id()).collect()
}

fn pod_ids(o: &Objects) -> Vec<String> {
    o.cluster.pods.iter().map(|p| p.id()).collect()
}

#[test]
fn snapshots_follow_the_api_server() {
    let objects = served();
    let fake = FakeApi::start(&objects);
    let mut source = Source::start(&fake);

    // The first snapshot: exactly what the directory source reads of the same objects.
    let first = source.next_ok();
    let want = read_as_file(&objects);
    assert_eq!(first.cluster, want.cluster);
    assert_eq!(first.policies, want.policies);
    assert_eq!(policy_ids(&first), ["x/allow-from-y", "x/deny-all", "y/egress-ip"]);
    assert_eq!(pod_ids(&first), ["x/a", "x/b", "y/a"]);
    assert_eq!(first.cluster.namespaces["x"].labels["team"], "pay");
    // The watchers' lists of all namespaces, each with the kubeconfig's token.
    for (resource, ..) in RESOURCES {
        assert!(fake.lists(resource) >= 1, "no list of {resource}: {:?}", fake.requests());
    }
    let requests = fake.requests();
    assert!(requests.iter().all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))), "{requests:?}");

    // A pod's labels change: a new snapshot with them, soon.
    let ports = [(80, "serve-80-tcp", "TCP")];
    let changed = Instant::now();
    fake.apply(pod("x", "b", json!({ "pod": "b", "tier": "api" }), &["10.0.1.2"], &ports));
    let o = source.next_ok();
    eprintln!("a label change: its snapshot {:?} after the event", changed.elapsed());
    assert_eq!(label(&o, "x/b", "tier").as_deref(), Some("api"));
    assert_eq!(o.cluster.pods[1].ports.len(), 1, "the pod's new ports");

    // A burst of changes: fewer snapshots than events, the last with the final state.
    const BURST: usize = 40;
    fake.with(|s| {
        for i in 0..BURST {
            s.apply(pod("y", "a", json!({ "pod": "a", "n": i.to_string() }), &["10.0.2.1"], &ports));
        }
    });
    let last = (BURST - 1).to_string();
    let (o, n) = source.until(|o| label(o, "y/a", "n").as_deref() == Some(last.as_str()));
    eprintln!("a burst of {BURST} events: {n} snapshots");
    assert!(n < BURST, "{n} snapshots for a burst of {BURST} events");
    assert_eq!(o.cluster.pods.len(), 3);

    // A change the reader does not see (a status condition): no snapshot. The next snapshot
    // is the next real change, a policy deleted.
    let mut p = pod(
        "x",
        "a",
        json!({ "pod": "a" }),
        &["10.0.1.1"],
        &[(80, "serve-80-tcp", "TCP"), (80, "serve-80-udp", "UDP")],
    );
    p["status"]["conditions"][0]["status"] = json!("False");
    fake.apply(p);
    std::thread::sleep(DEBOUNCE * 5);
    fake.delete("networkpolicies", "x", "deny-all");
    let o = source.next_ok();
    assert_eq!(policy_ids(&o), ["x/allow-from-y", "y/egress-ip"]);

    // A pod appears, one goes away, a namespace's labels change.
    fake.apply(pod("y", "new", json!({ "pod": "new" }), &["10.0.2.9"], &[]));
    fake.delete("pods", "x", "a");
    fake.apply(namespace("y", json!({ "kubernetes.io/metadata.name": "y", "env": "prod" })));
    let (o, _) = source.until(|o| o.cluster.namespaces["y"].labels.contains_key("env"));
    assert_eq!(pod_ids(&o), ["x/b", "y/a", "y/new"]);
    assert_eq!(o.cluster.pods[2].ips, ["10.0.2.9".parse::<std::net::IpAddr>().unwrap()]);

    // The API server ends the watches: they resume where they were, nothing lost.
    let lists = fake.lists("pods");
    fake.end_watches();
    fake.apply(network_policy("y", "late", json!({ "podSelector": {} })));
    let (o, _) = source.until(|o| policy_ids(o).contains(&"y/late".to_owned()));
    assert_eq!(policy_ids(&o), ["x/allow-from-y", "y/egress-ip", "y/late"]);
    assert_eq!(fake.lists("pods"), lists, "a resumed watch listed again");

    // Changes while the watches are down, and the history compacted: the resumed watch gets
    // 410 Gone, the watcher lists again and has them.
    fake.while_disconnected(|s| {
        s.apply(pod("x", "b", json!({ "pod": "b", "tier": "db" }), &["10.0.1.2"], &ports));
        s.compact();
    });
    let (o, _) = source.until(|o| label(o, "x/b", "tier").as_deref() == Some("db"));
    assert_eq!(o.cluster.pods.len(), 3);
    assert!(fake.lists("pods") > lists, "the pods were not listed again after 410 Gone");

    // What the reader cannot accept is a snapshot of diagnostics naming the object; removed,
    // the objects again.
    fake.apply(pod("y", "bad", json!({}), &["10.0.2.300"], &[]));
    let e = source.next().objects.expect_err("a pod with a broken address").to_string();
    assert!(e.starts_with("api:pods/y/bad:") && e.ends_with(": error: `10.0.2.300` is not an IP address"), "{e}");
    fake.delete("pods", "y", "bad");
    let o = source.next_ok();
    assert_eq!(o.cluster.pods.len(), 3);

    // After all that, the snapshot is what the directory source reads of the objects the fake
    // holds now.
    let want = read_as_file(&fake.objects());
    assert_eq!((o.cluster, o.policies), (want.cluster, want.policies));
}

#[test]
fn nothing_is_sent_before_every_resource_is_listed() {
    let objects = served();
    let fake = FakeApi::start(&objects);
    // NetworkPolicies refused twice (a missing RBAC rule, then granted): the pods and
    // namespaces alone are never sent, which would lift every isolation for a while.
    fake.with(|s| s.forbid("networkpolicies", 2));
    let mut source = Source::start(&fake);
    let first = source.next_ok();
    assert_eq!(policy_ids(&first), ["x/allow-from-y", "x/deny-all", "y/egress-ip"]);
    assert!(
        fake.lists("networkpolicies") >= 3,
        "{} lists of networkpolicies, two refused",
        fake.lists("networkpolicies")
    );
}

#[test]
fn an_absent_pod_selector_is_every_pod() {
    // The schema lets the API omit `podSelector`; the API server means `{}`.
    let fake = FakeApi::start(&[network_policy("x", "all", json!({ "policyTypes": ["Ingress"] }))]);
    let mut source = Source::start(&fake);
    let o = source.next_ok();
    assert_eq!(o.policies[0].pod_selector, ztagent::policy::selector::LabelSelector::default());
    assert!(o.policies[0].ingress_type && o.policies[0].ingress.is_empty());
}

#[test]
fn client_configuration_errors_are_one_sentence() {
    let rt = runtime();
    let error = |cfg: ApiConfig| match rt.block_on(client(&cfg)) {
        Ok(_) => panic!("a client for {cfg:?}"),
        Err(e) => e.to_string(),
    };
    let e = error(ApiConfig { kubeconfig: Some("/nonexistent/kubeconfig".into()) });
    assert!(e.starts_with("cannot use the kubeconfig /nonexistent/kubeconfig: "), "{e}");
    let dir = TempDir::new();
    let bad = dir.file("kubeconfig", "apiVersion: v1\nkind: Config\nclusters: [\n");
    let e = error(ApiConfig { kubeconfig: Some(bad.clone()) });
    assert!(e.starts_with(&format!("cannot use the kubeconfig {}: ", bad.display())), "{e}");
    // The tests never run in a pod: there is no service account.
    assert!(std::env::var_os("KUBERNETES_SERVICE_HOST").is_none(), "the tests run in a pod");
    let e = error(ApiConfig { kubeconfig: None });
    assert!(
        e.starts_with("cannot use the in-cluster service account (")
            && e.ends_with("outside a cluster, give --kubeconfig PATH"),
        "{e}"
    );
}

#[test]
fn the_api_flags_are_checked() {
    let run = |args: &[&str]| std::process::Command::new(bin("ztagent")).args(args).output().unwrap();
    let out = run(&["run", "--iface", "lo", "--k8s-api", "--k8s-objects", "/tmp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'--k8s-api' cannot be used with '--k8s-objects <DIR>'"), "{err}");
    let out = run(&["run", "--iface", "lo", "--kubeconfig", "/tmp/k"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--k8s-api"), "{err}");
}

// --- the agent

/// The shop's pods at the test hosts' addresses: payments 10.20.2.10, frontend 10.20.1.2,
/// batch 10.20.3.2 (and their IPv6 addresses), labelled `app: <app>`.
fn shop_pod(name: &str, app: &str, v4: &str, v6: &str) -> Value {
    pod("shop", name, json!({ "app": app }), &[v4, v6], &[(443, "https", "TCP")])
}

/// Payments admits the pods labelled `app: frontend`, on its named port `https`.
fn payments_policy() -> Value {
    network_policy(
        "shop",
        "payments-from-frontend",
        json!({
        "podSelector": { "matchLabels": { "app": "payments" } },
        "ingress": [ { "from": [ { "podSelector": { "matchLabels": { "app": "frontend" } } } ], "ports": [ { "port": "https" } ] } ] }),
    )
}

#[test]
fn network_policies_from_the_api_are_enforced_and_follow_its_changes() {
    let lan = Lan::four_hosts();
    let (payments, frontend, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    // The API server on the loopback of the agent's namespace.
    let listener = payments.ns.run(|| TcpListener::bind("127.0.0.1:0").expect("bind in the agent's namespace"));
    let fake = FakeApi::serve(
        listener,
        &[
            namespace("shop", json!({ "kubernetes.io/metadata.name": "shop" })),
            shop_pod("payments-0", "payments", "10.20.2.10", "fd20:2::10"),
            shop_pod("frontend-0", "frontend", "10.20.1.2", "fd20:1::2"),
            shop_pod("batch-0", "batch", "10.20.3.2", "fd20:3::2"),
            payments_policy(),
        ],
    );
    let files = TempDir::new();
    let kubeconfig = fake.kubeconfig(&files.0);
    // No native policy: the NetworkPolicies alone.
    let agent = Agent::start_with(
        &payments.ns,
        &[&payments.iface],
        None,
        &["--k8s-api", "--kubeconfig", kubeconfig.to_str().unwrap()],
    );
    let _srv = Servers::start(&payments.ns, &[443, 8443], &[]);
    let (status, check) = shop_queries(&agent);

    // The first snapshot is in force from the start: frontend in, batch and the attacker out.
    assert_only_frontend_reaches_payments(&lan, &agent);
    let k = status()["k8s_source"].clone();
    assert_eq!((k["source"].as_str(), k["up_to_date"].as_bool()), (Some("api"), Some(true)), "{k}");
    assert_eq!(k["dir"].as_str(), Some(format!("http://{}/", fake.addr).as_str()), "{k}");
    assert_eq!(
        (k["files"].as_u64(), k["pods"].as_u64(), k["pod_addresses"].as_u64(), k["network_policies"].as_u64()),
        (Some(5), Some(3), Some(6), Some(1)),
        "{k}"
    );
    let c = check("10.20.1.2");
    assert_eq!(
        (c["verdict"].as_str(), c["src_pod"].as_str(), c["dst_pod"].as_str()),
        (Some("allow"), Some("shop/frontend-0"), Some("shop/payments-0")),
        "{c}"
    );
    let out = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("kubernetes objects from the API server http://{}/ (up to date): 5 objects, 1 namespaces, 3 pods (6 addresses), 1 NetworkPolicies", fake.addr)), "{text}");
    let revision = status()["revision"].as_u64().unwrap();

    // Labels change in the API, nothing is pushed: batch is the frontend now.
    fake.apply(shop_pod("frontend-0", "legacy", "10.20.1.2", "fd20:1::2"));
    fake.apply(shop_pod("batch-0", "frontend", "10.20.3.2", "fd20:3::2"));
    let took = wait_for(WAIT, || tcp_ok(&batch.ns, payments.v4, 443));
    assert!(took.is_some(), "the label change was not enforced within {WAIT:?}:\n{}", agent.log());
    eprintln!("label change enforced {:?} after the API's event", took.unwrap());
    assert!(!tcp_ok(&frontend.ns, payments.v4, 443), "the old frontend is still allowed");
    assert!(status()["revision"].as_u64().unwrap() > revision, "no new revision for the change");

    // The NetworkPolicy deleted: payments is isolated no more, the attacker gets in.
    fake.delete("networkpolicies", "shop", "payments-from-frontend");
    let took = wait_for(WAIT, || tcp_ok(&attacker.ns, payments.v4, 443));
    assert!(took.is_some(), "the deleted policy still isolates payments:\n{}", agent.log());
    assert!(tcp_ok(&frontend.ns, payments.v4, 8443));
    assert_eq!(status()["k8s_source"]["network_policies"].as_u64(), Some(0));

    // A broken object is kept out: its error, naming it, in status; what is in force stays.
    fake.apply(payments_policy());
    assert!(
        wait_for(WAIT, || !tcp_ok(&attacker.ns, payments.v4, 443)).is_some(),
        "the policy created again is not enforced"
    );
    fake.apply(pod("shop", "broken", json!({}), &["10.20.9.300"], &[]));
    let rejected = wait_for(WAIT, || status()["k8s_source"]["up_to_date"] == false);
    assert!(rejected.is_some(), "the broken object was not noticed:\n{}", agent.log());
    let message = status()["k8s_source"]["last_rejection"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.starts_with("api:pods/shop/broken:") && message.contains(": error: `10.20.9.300` is not an IP address"),
        "{message}"
    );
    assert!(tcp_ok(&batch.ns, payments.v4, 443), "the broken version changed what is enforced");
    assert!(!tcp_ok(&attacker.ns, payments.v4, 443));
    fake.delete("pods", "shop", "broken");
    let fixed = wait_for(WAIT, || status()["k8s_source"]["up_to_date"] == true);
    assert!(fixed.is_some(), "the API's objects did not come back:\n{}", agent.log());
    assert!(tcp_ok(&batch.ns, payments.v4, 443));
}
