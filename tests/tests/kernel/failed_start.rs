//! A start that fails leaves the host as it found it, and an upgrade that changes a map's
//! layout replaces that map only: against the real kernel, in namespaces made by the test.
//!
//! - a fresh start that attaches to one interface and then fails (on a second interface that
//!   cannot take native XDP, or that does not exist), or fails to load, exits non-zero with one
//!   clear sentence and leaves no program attached and nothing pinned;
//! - a restart that fails keeps the enforcement an earlier agent left in place;
//! - a pinned map whose layout differs from this build's is replaced by an empty one, and the
//!   other maps keep their state.
use std::path::{Path, PathBuf};

use integration_tests::{Agent, Lan, Netns, Servers, TempDir, tcp_ok, unique};

const POLICY: &str = r#"
version: 1
segments:
  frontend: { cidrs: [10.30.1.0/24] }
  payments: { cidrs: [10.30.2.10/32] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
"#;

/// A pin directory for agents that may fail to start; removed with their state on drop.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Pins {
        Pins(PathBuf::from("/sys/fs/bpf").join(unique("zt-fail-")))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        integration_tests::uninstall(&self.0);
    }
}

/// Every file pinned under `dir`, recursively.
fn pinned_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { pinned_files(&e.path()) } else { vec![e.path()] }).collect()
}

/// Whether an XDP program is attached to `iface` in `ns`. (This bpftool does not list TCX
/// programs: the tests see the egress side by its pins and by the traffic it would judge.)
fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    let out = ns.exec(&["bpftool", "-j", "net", "show"]);
    assert!(out.status.success(), "bpftool net show: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v[0]["xdp"].as_array().into_iter().flatten().any(|e| e["devname"] == iface)
}

/// A clear one-sentence error, no panic, no backtrace.
fn assert_clear_failure(status: std::process::ExitStatus, out: &str, expect: &str) {
    assert!(!status.success(), "the agent exited successfully:\n{out}");
    assert!(out.contains(&format!("error: {expect}")), "expected `error: {expect}...`:\n{out}");
    assert!(!out.contains("panicked") && !out.contains("RUST_BACKTRACE"), "{out}");
}

#[test]
fn a_failed_fresh_start_leaves_nothing_attached_or_pinned() {
    let lan = Lan::new(&[("10.30.2.10", "fd30:2::10"), ("10.30.9.2", "fd30:9::2")]);
    let (payments, outsider) = (&lan.hosts[0], &lan.hosts[1]);
    payments.ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let _srv = Servers::start(&payments.ns, &[8080], &[]);
    // Unenforced, as found: the outsider reaches a port the policy would deny.
    assert!(tcp_ok(&outsider.ns, payments.v4, 8080));

    let cases: [(&[&str], &[&str], &str); 3] = [
        // The first interface is attached, then the second cannot take native XDP.
        (&[&payments.iface, "lo"], &["--xdp-mode", "native"], "cannot attach to lo"),
        // The first interface is attached, then the second does not exist.
        (&[&payments.iface, "zt-missing0"], &[], "interface zt-missing0 does not exist"),
        // The maps cannot all be created (a conntrack table of 2^32 entries): fails in the load.
        (&[&payments.iface], &["--max-conntrack", "4294967295"], "cannot load the eBPF programs"),
    ];
    for (ifaces, args, expect) in cases {
        let pins = Pins::new();
        let (status, out) = Agent::fail_to_start(&payments.ns, ifaces, Some(&policy), &pins.0, args);
        assert_clear_failure(status, &out, expect);
        assert!(!xdp_attached(&payments.ns, &payments.iface), "XDP left attached after:\n{out}");
        assert!(!pins.0.exists(), "left {:?} pinned after:\n{out}", pinned_files(&pins.0));
        // Nothing judges the traffic, at ingress or at egress (the replies).
        assert!(tcp_ok(&outsider.ns, payments.v4, 8080), "traffic is still judged after:\n{out}");
    }
}

#[test]
fn a_failed_restart_keeps_the_enforcement_in_place() {
    let lan = Lan::new(&[("10.30.2.10", "fd30:2::10"), ("10.30.1.2", "fd30:1::2"), ("10.30.9.2", "fd30:9::2")]);
    let (payments, frontend, outsider) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    payments.ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&payments.ns, &[443], &[]);
    let before = pinned_files(&agent.pins);
    agent.kill();

    // The restart adopts the payments links, then fails on the second interface.
    let (status, out) =
        Agent::fail_to_start(&payments.ns, &[&payments.iface, "lo"], None, &agent.pins, &["--xdp-mode", "native"]);
    assert_clear_failure(status, &out, "cannot attach to lo");
    assert!(out.contains("Adopted"), "the restart did not adopt the links:\n{out}");
    let mut after = pinned_files(&agent.pins);
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before, "the failed restart changed the pins");
    assert!(xdp_attached(&payments.ns, &payments.iface), "ingress was detached");
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "allowed traffic stopped after a failed restart");
    assert!(!tcp_ok(&outsider.ns, payments.v4, 443), "denied traffic passed after a failed restart");

    // A good restart then takes over as usual.
    let restarted = Agent::start_with_pins(&payments.ns, &[&payments.iface], None, &agent.pins);
    let st: serde_json::Value = serde_json::from_slice(&restarted.cli(&["status", "-o", "json"]).stdout).unwrap();
    let ingress = st["interfaces"][&payments.iface]["ingress"].clone();
    assert_eq!((st["revision"].clone(), ingress), (1.into(), "adopted".into()), "{st}");
    assert!(tcp_ok(&frontend.ns, payments.v4, 443) && !tcp_ok(&outsider.ns, payments.v4, 443));
}

/// (value size, entries) of a pinned map.
fn map_shape(pin: &Path) -> (u64, u64) {
    let out = std::process::Command::new("bpftool").args(["-j", "map", "show", "pinned"]).arg(pin).output().unwrap();
    assert!(out.status.success(), "bpftool map show {}: {}", pin.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["bytes_value"].as_u64().unwrap(), v["max_entries"].as_u64().unwrap())
}

#[test]
fn an_upgrade_replaces_only_the_maps_whose_layout_changed() {
    let lan = Lan::new(&[("10.30.2.10", "fd30:2::10"), ("10.30.1.2", "fd30:1::2"), ("10.30.9.2", "fd30:9::2")]);
    let (payments, frontend, outsider) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&payments.ns, &[443], &[]);
    assert!(tcp_ok(&frontend.ns, payments.v4, 443) && !tcp_ok(&outsider.ns, payments.v4, 443));
    let denied = agent.counter("drop_default");
    assert!(denied > 0);
    let ct = agent.pins.join("maps/ZT_CT");
    let (value_size, entries) = map_shape(&ct);
    agent.kill();

    // An older agent's conntrack map: another value layout (the running programs keep using
    // the real one, which the pin no longer names).
    std::fs::remove_file(&ct).unwrap();
    let old = ct.to_str().unwrap();
    integration_tests::sh(&[
        "bpftool", "map", "create", old, "type", "lru_hash", "key", "40", "value", "8", "entries", "1024", "name",
        "ZT_CT",
    ]);
    assert_eq!(map_shape(&ct), (8, 1024));

    let upgraded = Agent::start_with_pins(&payments.ns, &[&payments.iface], None, &agent.pins);
    assert!(
        upgraded.log().contains("ZT_CT") && upgraded.log().contains("replaced by a new, empty one"),
        "{}",
        upgraded.log()
    );
    assert_eq!(map_shape(&ct), (value_size, entries), "the conntrack map has this build's layout again");
    assert_eq!(pinned_files(&agent.pins.join("replaced")), Vec::<PathBuf>::new(), "the old map is released");
    // Unchanged maps kept their state: the counters go on from where they were.
    assert!(upgraded.counter("drop_default") >= denied, "the counters were reset");
    // And the policy is enforced with the new conntrack map.
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "allowed traffic stopped after the upgrade");
    assert!(!tcp_ok(&outsider.ns, payments.v4, 443), "denied traffic passed after the upgrade");
    assert!(upgraded.counter("pass_tracked") > 0, "no flow was tracked in the new conntrack map");

    // A policy map of another layout: the policy maps are replaced together, and the
    // last-known-good policy is installed again into them.
    let mut upgraded = upgraded;
    upgraded.kill();
    let hosts = agent.pins.join("maps/ZT_HOSTS");
    std::fs::remove_file(&hosts).unwrap();
    integration_tests::sh(&[
        "bpftool",
        "map",
        "create",
        hosts.to_str().unwrap(),
        "type",
        "hash",
        "key",
        "20",
        "value",
        "4",
        "entries",
        "64",
        "name",
        "ZT_HOSTS",
    ]);
    let again = Agent::start_with_pins(&payments.ns, &[&payments.iface], None, &agent.pins);
    let log = again.log();
    assert!(log.contains("all of them are") && log.contains("installed again"), "{log}");
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "allowed traffic stopped after the policy maps were replaced");
    assert!(!tcp_ok(&outsider.ns, payments.v4, 443), "denied traffic passed after the policy maps were replaced");
}
