//! `ztagent run --policy-dir DIR` against the real kernel, with DIR laid out and updated the
//! way the kubelet does a ConfigMap volume: each version is applied within seconds, a broken
//! one is rejected (the policy in force stays, `status` and the log say why, with positions),
//! and a broken directory at startup falls back to the last-known-good policy.
use std::{fs, path::Path, process::Output, time::Duration};

use integration_tests::{
    Agent, ConfigMap, Lan, Servers, broken_ports_policy, json_of as json, ports_policy, sh, tcp_ok, wait_for,
};

/// Version `n` of the policy: frontend may reach payments on these TCP ports.
fn policy(ports: &[u16]) -> String {
    ports_policy("10.20.2.10/32", ports)
}

/// The protocol property, not a speed figure: a new version of the directory is taken up by
/// the agent on its own (inotify at once; failing that, the 5-s poll). The bound only has to
/// tell "picked up" from "never": two polls and then some, so that a busy machine never fails
/// it. How long it took is printed.
const PICKED_UP: Duration = Duration::from_secs(15);

/// The revision `policy get` reports; None while the agent has no policy.
fn revision_of(out: &Output) -> Option<u64> {
    out.status.success().then(|| json(out)["revision"].as_u64()).flatten()
}

fn sha256sum(path: &Path) -> String {
    sh(&["sha256sum", path.to_str().unwrap()]).split_whitespace().next().unwrap().to_string()
}

#[test]
fn configmap_versions_are_applied_and_a_broken_one_is_rejected() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")]);
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let mut cm = ConfigMap::new(&policy(&[443]));
    let dir = cm.path().to_str().unwrap().to_string();
    let agent = Agent::start_with(&payments.ns, &[&payments.iface], None, &["--policy-dir", &dir]);
    let _srv = Servers::start(&payments.ns, &[443, 8443, 9443], &[]);
    let revision = || revision_of(&agent.cli(&["policy", "get", "-o", "json"]));
    let source = || json(&agent.cli(&["status", "-o", "json"]))["policy_source"].clone();
    let reach = |port| tcp_ok(&frontend.ns, payments.v4, port);

    // Version 1, installed at startup.
    assert_eq!(revision(), Some(1));
    assert!(reach(443) && !reach(8443), "version 1 is not what the kernel enforces");
    let s = source();
    assert_eq!(s["dir"], dir.as_str());
    assert_eq!((s["up_to_date"].as_bool(), s["last_applied"]["revision"].as_u64()), (Some(true), Some(1)));
    assert_eq!(s["last_applied"]["sha256"], sha256sum(&cm.path().join("policy.yaml")));
    assert!(s["file"].as_str().unwrap().contains("/..2026_11_28_10_01_00."), "{s}");
    assert!(s["last_rejection"].is_null(), "{s}");

    // Version 2 opens 8443: applied after the swap without anything else happening.
    cm.publish(&policy(&[443, 8443]));
    let took = wait_for(PICKED_UP, || revision() == Some(2));
    assert!(took.is_some(), "version 2 not applied within {PICKED_UP:?}:\n{}", agent.log());
    eprintln!("version 2 applied {:?} after the swap", took.unwrap());
    assert!(reach(8443) && reach(443) && !reach(9443), "version 2 is not what the kernel enforces");
    let v2_sha = sha256sum(&cm.path().join("policy.yaml"));
    assert_eq!(source()["last_applied"]["sha256"], v2_sha.as_str());

    // Version 3 is broken: rejected with its position, version 2 stays in force.
    cm.publish(&broken_ports_policy("10.20.2.10/32"));
    let v3_sha = sha256sum(&cm.path().join("policy.yaml"));
    let rejected = wait_for(PICKED_UP, || !source()["last_rejection"].is_null());
    assert!(rejected.is_some(), "version 3 not rejected within {PICKED_UP:?}:\n{}", agent.log());
    eprintln!("version 3 rejected {:?} after the swap", rejected.unwrap());
    let s = source();
    let expected = format!("{dir}/policy.yaml:6:71: invalid port spec `8443/tpc`: unknown protocol `tpc`");
    assert!(s["last_rejection"]["message"].as_str().unwrap().starts_with(&expected), "{s}");
    assert_eq!(s["last_rejection"]["sha256"], v3_sha.as_str());
    assert!(s["last_rejection"]["time"].as_str().unwrap().ends_with('Z'), "{s}");
    assert_eq!((s["up_to_date"].as_bool(), s["last_applied"]["revision"].as_u64()), (Some(false), Some(2)));
    assert_eq!(s["last_applied"]["sha256"], v2_sha.as_str());
    assert_eq!(revision(), Some(2));
    assert_eq!(json(&agent.cli(&["status", "-o", "json"]))["revision"], 2);
    assert!(reach(443) && reach(8443) && !reach(9443), "the broken version changed what is enforced");
    let log = agent.log();
    assert!(log.contains("WARN") && log.contains("is rejected") && log.contains(&expected), "{log}");
    let text = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("newest version rejected") && text.contains(&expected), "{text}");

    // Version 4 (443 and 9443, no 8443): applied; the rejection stays on record.
    cm.publish(&policy(&[443, 9443]));
    let took = wait_for(PICKED_UP, || revision() == Some(3));
    assert!(took.is_some(), "version 4 not applied within {PICKED_UP:?}:\n{}", agent.log());
    eprintln!("version 4 applied {:?} after the swap", took.unwrap());
    assert!(reach(9443) && reach(443) && !reach(8443), "version 4 is not what the kernel enforces");
    let s = source();
    assert_eq!((s["up_to_date"].as_bool(), s["last_applied"]["revision"].as_u64()), (Some(true), Some(3)));
    assert_eq!(s["last_rejection"]["sha256"], v3_sha.as_str());

    // The kubelet removed the old version directories: only ..data's target is left.
    let left: Vec<_> = fs::read_dir(cm.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 3, "{left:?}");
    // The same content again (a no-op ConfigMap update) is not a new revision.
    cm.publish(&policy(&[443, 9443]));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(revision(), Some(3));
}

#[test]
fn a_broken_directory_at_startup_is_reported_and_the_last_known_good_policy_kept() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")]);
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let _srv = Servers::start(&payments.ns, &[443, 8443], &[]);
    let reach = |port| tcp_ok(&frontend.ns, payments.v4, port);
    let mut cm = ConfigMap::new(&broken_ports_policy("10.20.2.10/32"));
    let dir = cm.path().to_str().unwrap().to_string();

    // Broken from the start, nothing to fall back on: the agent runs, fails closed, says why,
    // and takes the first valid version.
    let agent = Agent::start_with(&payments.ns, &[&payments.iface], None, &["--policy-dir", &dir]);
    let status = json(&agent.cli(&["status", "-o", "json"]));
    assert_eq!(status["revision"], 0);
    let s = &status["policy_source"];
    assert_eq!((s["up_to_date"].as_bool(), s["last_applied"].is_null()), (Some(false), true), "{s}");
    assert!(s["last_rejection"]["message"].as_str().unwrap().starts_with(&format!("{dir}/policy.yaml:6:71: ")), "{s}");
    assert!(agent.log().contains("at startup is rejected"), "{}", agent.log());
    assert!(!reach(443), "traffic passed with no valid policy");
    cm.publish(&policy(&[443]));
    let applied = wait_for(PICKED_UP, || revision_of(&agent.cli(&["policy", "get", "-o", "json"])) == Some(1));
    assert!(applied.is_some(), "the first valid version was not applied:\n{}", agent.log());
    assert!(reach(443) && !reach(8443));

    // Killed; the directory turns broken; a new agent on the same pins and state directory
    // keeps the last-known-good policy (revision 1) and reports the rejection.
    cm.publish(&broken_ports_policy("10.20.2.10/32"));
    let again = agent.crash_and_restart_with(&payments.ns, &[&payments.iface], &["--policy-dir", &dir]);
    let log = again.log();
    assert!(log.contains("at startup is rejected") && log.contains("adopted as it is"), "{log}");
    let status = json(&again.cli(&["status", "-o", "json"]));
    assert_eq!(status["revision"], 1);
    let s = &status["policy_source"];
    assert_eq!(s["up_to_date"], false, "{s}");
    assert!(s["last_rejection"]["message"].as_str().unwrap().contains("policy.yaml:6:71: invalid port spec"), "{s}");
    assert!(reach(443) && !reach(8443), "the last-known-good policy is not enforced");

    // And the next valid version is applied.
    cm.publish(&policy(&[443, 8443]));
    let applied = wait_for(PICKED_UP, || revision_of(&again.cli(&["policy", "get", "-o", "json"])) == Some(2));
    assert!(applied.is_some(), "version not applied after the fallback:\n{}", again.log());
    assert!(reach(8443));
    drop(again);
}
