//! The deployment files start a working agent. The Kubernetes DaemonSet's command line and the
//! systemd unit's are run as they are written, with only the host paths moved under the test's
//! own directories, in a network namespace whose interface is called `eth0`: the ConfigMap's
//! policy (laid out as the kubelet lays it out) is enforced on real traffic, the liveness
//! probe's command succeeds, the metrics port answers. The Kubernetes manifests pass the
//! Kubernetes schemas (offline, `kubernetes-validate --strict`) and grant exactly the RBAC the
//! agent needs.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use integration_tests::{Agent, ConfigMap, Host, Lan, Servers, TempDir, bin, get_metrics, k8s, tcp_ok, unique};

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where the deployment's host paths go in this test.
struct Paths {
    dir: TempDir,
    pins: PathBuf,
}

impl Paths {
    fn new() -> Paths {
        let dir = TempDir::new();
        for sub in ["run", "state"] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        }
        Paths { dir, pins: PathBuf::from("/sys/fs/bpf").join(unique("zt-deploy-")) }
    }
    fn socket(&self) -> PathBuf {
        self.dir.0.join("run/ztagent.sock")
    }
    fn state(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    /// `arg` with the deployment's host paths replaced by this test's; an absolute path the
    /// test does not know fails the test (it would touch the host).
    fn map(&self, arg: &str, policy_dir: &Path) -> String {
        let replaced = match arg {
            "/usr/local/bin/ztagent" => bin("ztagent"),
            "/run/ztagent/ztagent.sock" => self.socket(),
            "/etc/ztagent/policy" => policy_dir.to_path_buf(),
            "/sys/fs/bpf/ztagent" => self.pins.clone(),
            "/var/lib/ztagent" => self.state(),
            other => {
                assert!(!other.starts_with('/'), "the deployment uses a host path the test does not map: {other}");
                return other.to_string();
            }
        };
        replaced.to_string_lossy().into_owned()
    }
}

/// A LAN of payments (where the agent runs, its interface renamed `eth0`), frontend and an
/// outsider, with the addresses of the deployment's example policy.
fn lan() -> Lan {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let payments = &lan.hosts[0];
    payments.ns.ip(&["link", "set", &payments.iface, "down"]);
    payments.ns.ip(&["link", "set", &payments.iface, "name", "eth0"]);
    payments.ns.ip(&["link", "set", "eth0", "up"]);
    payments.ns.ip(&["link", "set", "lo", "up"]);
    lan
}

fn enforces_example_policy(agent: &Agent, lan: &Lan) {
    let (payments, frontend, outsider): (&Host, &Host, &Host) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let _srv = Servers::start(&payments.ns, &[443], &[]);
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "frontend cannot reach payments:443\n{}", agent.log());
    assert!(!tcp_ok(&outsider.ns, payments.v4, 443), "the outsider reached payments:443");
}

#[test]
fn the_daemonset_starts_an_agent_that_enforces_its_configmap() {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&repo_file("deploy/kubernetes/ztagent.yaml")).expect("the manifest is YAML");
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k} in the manifest"));
    let (ds, cm) = (kind("DaemonSet"), kind("ConfigMap"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "the agent must see the node's interfaces");
    let container = &pod["containers"][0];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().expect("a list").iter().map(|s| s.as_str().expect("a string").to_string()).collect()
    };
    // The ConfigMap's volume is mounted where --policy-dir points.
    let policy_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == m["name"] && v["configMap"]["name"] == cm["metadata"]["name"])
        })
        .expect("the ConfigMap is mounted");
    let args = strings(&container["args"]);
    let policy_flag = args.iter().position(|a| a == "--policy-dir").expect("--policy-dir");
    assert_eq!(args[policy_flag + 1], policy_mount["mountPath"].as_str().unwrap());

    let lan = lan();
    let configmap = ConfigMap::new(cm["data"]["policy.yaml"].as_str().expect("policy.yaml in the ConfigMap"));
    let paths = Paths::new();
    let command = strings(&container["command"]);
    assert_eq!(command, ["/usr/local/bin/ztagent"]);
    let argv: Vec<String> = args.iter().map(|a| paths.map(a, configmap.path())).collect();
    let agent = Agent::start_args(&lan.hosts[0].ns, &argv, &paths.socket(), &paths.pins, &paths.state());

    let status = agent.cli(&["status", "-o", "json"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["revision"], 1, "{st}");
    assert_eq!(st["policy_source"]["up_to_date"], true, "{st}");
    enforces_example_policy(&agent, &lan);

    // The liveness probe, as the kubelet would run it (inside the pod's network namespace).
    let probe: Vec<String> = strings(&container["livenessProbe"]["exec"]["command"])
        .iter()
        .map(|a| paths.map(a, configmap.path()))
        .collect();
    let out = lan.hosts[0].ns.exec(&probe.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "the liveness probe fails: {}", String::from_utf8_lossy(&out.stderr));

    // The metrics port the pod declares answers with the agent's metrics.
    let port = container["ports"][0]["containerPort"].as_u64().expect("a metrics port") as u16;
    assert!(args.iter().any(|a| a.ends_with(&format!(":{port}"))), "--metrics-addr is not on the declared port");
    assert_eq!(ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"], port.to_string());
    let body = get_metrics(&lan.hosts[0].ns, port).expect("scrape the declared metrics port");
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("ztagent_packets_total"), "{body}");
}

#[test]
fn the_systemd_unit_starts_an_agent_with_its_default_arguments() {
    let unit = repo_file("deploy/systemd/ztagent.service");
    let defaults = repo_file("deploy/systemd/ztagent.default");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    assert!(unit.lines().any(|l| l == "EnvironmentFile=-/etc/default/ztagent"), "the unit reads /etc/default/ztagent");
    let args = defaults
        .lines()
        .find_map(|l| l.strip_prefix("ZTAGENT_ARGS="))
        .expect("ZTAGENT_ARGS")
        .trim_matches('"')
        .to_string();

    let lan = lan();
    let dir = TempDir::new();
    let policy_dir = dir.0.join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    // The example policy, as the unit's comments install it.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml"),
        policy_dir.join("policy.yaml"),
    )
    .unwrap();
    let paths = Paths::new();
    let expanded = exec.replace("$ZTAGENT_ARGS", &args);
    let mut argv: Vec<String> = expanded.split_whitespace().map(|a| paths.map(a, &policy_dir)).collect();
    assert_eq!(argv.remove(0), bin("ztagent").to_string_lossy());
    // The unit leaves the socket, pins and state at their defaults (/run/ztagent,
    // /sys/fs/bpf/ztagent, /var/lib/ztagent: its RuntimeDirectory and StateDirectory): here
    // they are the test's own.
    let mut full = vec!["--socket".to_string(), paths.socket().to_string_lossy().into_owned()];
    full.append(&mut argv);
    full.extend(["--pin-path".into(), paths.pins.to_string_lossy().into_owned()]);
    full.extend(["--state-dir".into(), paths.state().to_string_lossy().into_owned()]);
    let agent = Agent::start_args(&lan.hosts[0].ns, &full, &paths.socket(), &paths.pins, &paths.state());
    for (key, want) in [("StateDirectory", "ztagent"), ("RuntimeDirectory", "ztagent")] {
        assert!(unit.lines().any(|l| l == format!("{key}={want}")), "the unit lacks {key}={want}");
    }
    enforces_example_policy(&agent, &lan);
}

#[test]
fn the_kubernetes_manifests_pass_offline_schema_validation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in {}", dir.display());
    if let Err(report) = k8s::validate_manifests(&files) {
        panic!("kubernetes-validate --strict refused the manifests:\n{report}");
    }
    // And it refuses what is wrong: the check is not vacuous.
    let bad = TempDir::new();
    let misspelt = bad.file(
        "bad.yaml",
        &repo_file("deploy/kubernetes/ztagent.yaml").replace("serviceAccountName:", "serviceAcountName:"),
    );
    assert!(k8s::validate_manifests(&[misspelt]).is_err(), "a misspelt DaemonSet field passed the validation");
}

#[test]
fn the_daemonset_runs_as_a_service_account_with_read_only_rbac_on_pods_namespaces_and_networkpolicies() {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&repo_file("deploy/kubernetes/ztagent.yaml")).expect("the manifest is YAML");
    let all = |k: &str| docs.iter().filter(|d| d["kind"] == k).collect::<Vec<_>>();
    let one = |k: &str| {
        let v = all(k);
        assert_eq!(v.len(), 1, "one {k} in the manifest");
        v[0]
    };
    let (sa, role, binding, ds) =
        (one("ServiceAccount"), one("ClusterRole"), one("ClusterRoleBinding"), one("DaemonSet"));
    assert!(all("Role").is_empty() && all("RoleBinding").is_empty(), "no namespaced grants beside the ClusterRole");
    // The DaemonSet's pods run as the ServiceAccount.
    assert_eq!(ds["spec"]["template"]["spec"]["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(ds["metadata"]["namespace"], sa["metadata"]["namespace"]);
    // The binding gives that ServiceAccount, and only it, the ClusterRole.
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"] })
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{ "kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"] }])
    );
    // Exactly get, list and watch on pods and namespaces (core) and networkpolicies: no other
    // verb, resource or group, no resourceNames, no non-resource URLs.
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let keys: BTreeSet<&str> = rule.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["apiGroups", "resources", "verbs"]), "{rule}");
        let strs =
            |k: &str| rule[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
        for group in strs("apiGroups") {
            for resource in strs("resources") {
                for verb in strs("verbs") {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for (group, resource) in [("", "pods"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies")] {
        for verb in ["get", "list", "watch"] {
            wanted.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, wanted);
}
