//! `ztagent run --k8s-objects DIR` against the real kernel: the test hosts are pods of the
//! inventory (their addresses are the pods' IPs), a NetworkPolicy isolates payments and admits
//! frontend on 443; real connections are allowed and denied as it says, `check` and events name
//! the pods; a label change in the directory (no push) moves the verdicts; a broken file is
//! kept out, its error (with its position) in `status`, and what was in force stays. `events
//! --pod` / `--namespace` select live events by the pods they name.
use std::{fs, time::Duration};

use integration_tests::{
    Agent, Lan, SHOP_POLICIES as POLICIES, Servers, TempDir, assert_only_frontend_reaches_payments, shop_pods as pods,
    shop_queries, tcp_ok, wait_for,
};

/// The protocol property, not a speed figure: the agent takes a change of the directory up on
/// its own (inotify at once, a second or so of settling and translating at most; failing
/// inotify, the 5-s poll). The bound only has to tell "picked up" from "never".
const PICKED_UP: Duration = Duration::from_secs(15);

#[test]
fn network_policies_from_a_directory_are_enforced_and_follow_its_changes() {
    let lan = Lan::four_hosts();
    let (payments, frontend, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let objects = TempDir::new();
    objects.file("pods.yaml", &pods("frontend", "batch"));
    objects.file("policies.yaml", POLICIES);
    let dir = objects.0.to_str().unwrap().to_string();
    // No native policy: the NetworkPolicies alone.
    let agent = Agent::start_with(&payments.ns, &[&payments.iface], None, &["--k8s-objects", &dir]);
    let _srv = Servers::start(&payments.ns, &[443, 8443], &[]);
    let (status, check) = shop_queries(&agent);

    // Real traffic: frontend in, batch and the attacker (no pod) out; 8443 is not `https`.
    assert_only_frontend_reaches_payments(&lan, &agent);
    let k = status()["k8s_source"].clone();
    assert_eq!((k["dir"].as_str(), k["up_to_date"].as_bool()), (Some(dir.as_str()), Some(true)), "{k}");
    assert_eq!(
        (k["pods"].as_u64(), k["pod_addresses"].as_u64(), k["network_policies"].as_u64()),
        (Some(3), Some(6), Some(1)),
        "{k}"
    );

    // `check` and events name the pods beside the segments.
    let c = check("10.20.1.2");
    assert_eq!(
        (c["verdict"].as_str(), c["src_pod"].as_str(), c["dst_pod"].as_str()),
        (Some("allow"), Some("shop/frontend-0"), Some("shop/payments-0")),
        "{c}"
    );
    assert!(c["rule"].as_str().unwrap().contains("shop/payments-from-frontend"), "{c}");
    let c = check("10.20.9.2");
    assert_eq!((c["verdict"].as_str(), c["src_pod"].is_null()), (Some("deny"), true), "{c}");
    // A pod by name (`check --src ns/pod`): resolved by the agent to its address.
    let by_name = integration_tests::check_json_of(&agent.cli(&[
        "check",
        "--src",
        "shop/frontend-0",
        "--dst",
        "shop/payments-0",
        "--port",
        "443",
        "-o",
        "json",
    ]));
    assert_eq!(
        (by_name["verdict"].as_str(), by_name["src_pod"].as_str(), by_name["dst_pod"].as_str()),
        (Some("allow"), Some("shop/frontend-0"), Some("shop/payments-0")),
        "{by_name}"
    );
    let typo = agent.cli(&["check", "--src", "shop/frontend-O", "--dst", "10.20.2.10", "--port", "443"]);
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(typo.status.code() == Some(2) && said.contains("did you mean `shop/frontend-0`?"), "{said}");
    let allowed = wait_for(Duration::from_secs(5), || {
        agent
            .events(&["--verdict", "allowed"])
            .iter()
            .any(|e| e["src_pod"] == "shop/frontend-0" && e["dst_pod"] == "shop/payments-0")
    });
    assert!(allowed.is_some(), "no allowed event names the pods: {:?}", agent.events(&[]));
    let denied = agent.events(&["--verdict", "denied"]);
    assert!(
        denied
            .iter()
            .any(|e| e["src"] == "10.20.3.2" && e["src_pod"] == "shop/batch-0" && e["dst_pod"] == "shop/payments-0"),
        "{denied:?}"
    );
    let revision = status()["revision"].as_u64().unwrap();

    // Labels change in the directory, nothing is pushed: batch is the frontend now.
    objects.file("pods.yaml", &pods("legacy", "frontend"));
    let took = wait_for(PICKED_UP, || tcp_ok(&batch.ns, payments.v4, 443));
    assert!(took.is_some(), "the label change was not enforced within {PICKED_UP:?}:\n{}", agent.log());
    eprintln!("label change enforced {:?} after the write", took.unwrap());
    assert!(!tcp_ok(&frontend.ns, payments.v4, 443), "the old frontend is still allowed");
    assert_eq!(check("10.20.3.2")["verdict"], "allow");
    assert!(status()["revision"].as_u64().unwrap() > revision, "no new revision for the change");

    // A native push is translated with the inventory in force: its allow adds to the
    // NetworkPolicy (the attacker's network may reach 443), and the NetworkPolicy still holds.
    let native = objects.0.join("..native.yaml");
    fs::write(&native, "version: 1\nsegments:\n  scanners: { cidrs: [10.20.9.0/24] }\nrules:\n  - { name: scanners-https, from: [scanners], to: [\"*\"], ports: [\"443/tcp\"], action: allow }\n").unwrap();
    agent.push(&native);
    assert!(tcp_ok(&attacker.ns, payments.v4, 443), "the native allow is not in force");
    assert!(!tcp_ok(&attacker.ns, payments.v4, 8443));
    assert!(tcp_ok(&batch.ns, payments.v4, 443), "the push lost the NetworkPolicy");
    assert!(!tcp_ok(&frontend.ns, payments.v4, 443), "the push lost the isolation");

    // Time-bound grants under Kubernetes inputs: between segments they add up like a native
    // allow; from an address block they are refused, with the reason.
    let grant = |from: &str| {
        agent.cli(&["grant", "--from", from, "--to", "*", "--port", "8443/tcp", "--for", "5m", "--reason", "k8s test"])
    };
    let refused = grant("10.20.9.0/24");
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && message.contains("cannot apply while Kubernetes inputs are in force"),
        "{message}"
    );
    assert!(!tcp_ok(&attacker.ns, payments.v4, 8443));
    let given = grant("scanners");
    assert!(given.status.success(), "{}", String::from_utf8_lossy(&given.stderr));
    assert!(tcp_ok(&attacker.ns, payments.v4, 8443), "the grant between segments is not in force:\n{}", agent.log());
    assert!(!tcp_ok(&batch.ns, payments.v4, 8443), "the grant opened more than its segment");

    // A broken file is kept out: the error, with its position, in status; what is in force stays.
    let broken = objects.file("broken.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: deny-all, namespace: shop }\nspec:\n  podSelector: {}\n  policyTypes: [Ingres]\n");
    let rejected = wait_for(PICKED_UP, || status()["k8s_source"]["up_to_date"] == false);
    assert!(rejected.is_some(), "the broken file was not noticed:\n{}", agent.log());
    let k = status()["k8s_source"].clone();
    let message = k["last_rejection"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&format!("{}:6:17: error: unknown policy type `Ingres`", broken.display())), "{k}");
    assert!(tcp_ok(&batch.ns, payments.v4, 443), "the broken version changed what is enforced");
    assert!(!tcp_ok(&frontend.ns, payments.v4, 443));

    // Fixed (the file removed): up to date again, the same objects in force.
    fs::remove_file(&broken).unwrap();
    let fixed = wait_for(PICKED_UP, || status()["k8s_source"]["up_to_date"] == true);
    assert!(fixed.is_some(), "the directory did not come back:\n{}", agent.log());
    assert!(tcp_ok(&batch.ns, payments.v4, 443));
}

/// `events --pod` and `--namespace` on live events named by the objects directory: a pod by
/// `namespace/name` or by name alone, a namespace, each as the source or the destination; OR
/// within a flag, AND across flags, `--not`.
#[test]
fn events_select_pods_and_namespaces() {
    let lan = Lan::four_hosts();
    let (payments, frontend, batch, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2], &lan.hosts[3]);
    let objects = TempDir::new();
    // frontend-0 in a namespace of its own (`web`): payments' NetworkPolicy selects pods of its
    // own namespace only, so frontend is denied too.
    let web = pods("frontend", "batch")
        .replace("name: frontend-0\n    namespace: shop", "name: frontend-0\n    namespace: web");
    assert!(web.contains("namespace: web"));
    objects.file("pods.yaml", &web);
    objects.file("policies.yaml", POLICIES);
    objects.file("web.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
    let dir = objects.0.to_str().unwrap().to_string();
    let agent = Agent::start_with(&payments.ns, &[&payments.iface], None, &["--k8s-objects", &dir]);
    let _srv = Servers::start(&payments.ns, &[443], &[]);
    for host in [frontend, batch, attacker] {
        assert!(!tcp_ok(&host.ns, payments.v4, 443), "{} reached payments", host.v4);
    }
    let src_pods = |args: &[&str]| {
        let mut v: Vec<String> =
            agent.events(args).iter().map(|e| e["src_pod"].as_str().unwrap_or("-").to_string()).collect();
        v.sort();
        v.dedup();
        v
    };
    let all = wait_for(Duration::from_secs(20), || src_pods(&[]).len() == 3);
    assert!(all.is_some(), "not every client's denial was reported: {:?}", agent.events(&[]));
    assert_eq!(src_pods(&[]), ["-", "shop/batch-0", "web/frontend-0"]);
    // A namespace: as the source (web) or the destination (shop: payments-0, for everyone).
    assert_eq!(src_pods(&["--namespace", "web"]), ["web/frontend-0"]);
    assert_eq!(src_pods(&["--namespace", "shop"]), ["-", "shop/batch-0", "web/frontend-0"]);
    assert!(src_pods(&["--namespace", "kube-system"]).is_empty());
    // A pod by name alone or with its namespace; OR within the flag, AND across flags, --not.
    assert_eq!(src_pods(&["--pod", "batch-0"]), ["shop/batch-0"]);
    assert_eq!(src_pods(&["--pod", "web/frontend-0", "--pod", "shop/batch-0"]), ["shop/batch-0", "web/frontend-0"]);
    assert!(src_pods(&["--pod", "shop/frontend-0"]).is_empty(), "frontend-0 is in web, not shop");
    assert!(src_pods(&["--pod", "batch-0", "--namespace", "web"]).is_empty());
    assert_eq!(src_pods(&["--not", "--namespace", "web", "--pod", "payments-0"]), ["-", "shop/batch-0"]);
    // Every event selected by a pod names it.
    let named = agent.events(&["--pod", "shop/payments-0"]);
    assert!(!named.is_empty() && named.iter().all(|e| e["dst_pod"] == "shop/payments-0"), "{named:?}");
}
