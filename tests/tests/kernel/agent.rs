//! The daemon's control plane against the real kernel: push, get and live check; a rejected
//! push changes nothing; SIGKILL leaves enforcement in place and a restart adopts it.
use integration_tests::{Agent, Lan, Servers, TempDir, check_json_of, tcp_ok};

const POLICY: &str = integration_tests::WEB_POLICY;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn push_get_check_and_rejected_pushes() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")]);
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&payments.ns, &[443, 8443], &[]);

    let got = json(&agent.cli(&["policy", "get", "-o", "json"]));
    assert_eq!(got["revision"], 1);
    assert_eq!(got["policy"]["rules"][0]["name"], "web");
    let yaml = agent.cli(&["policy", "get"]);
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("frontend"), "policy get (yaml) lacks the segments");

    // Live check agrees with the kernel, before and after a push.
    let live = |port: &str| {
        check_json_of(&agent.cli(&["check", "--src", "10.20.1.2", "--dst", "10.20.2.10", "--port", port, "-o", "json"]))
    };
    assert_eq!((live("443")["verdict"].as_str(), live("443")["revision"].as_u64()), (Some("allow"), Some(1)));
    assert_eq!(live("8443")["verdict"], "deny");
    assert!(tcp_ok(&frontend.ns, payments.v4, 443) && !tcp_ok(&frontend.ns, payments.v4, 8443));

    let more = dir.file("more.yaml", &POLICY.replace(r#"["443/tcp"]"#, r#"["443/tcp", "8443/tcp"]"#));
    let out = agent.push(&more);
    assert!(out.starts_with("revision 2:"), "{out}");
    assert_eq!(live("8443")["verdict"], "allow");
    assert!(tcp_ok(&frontend.ns, payments.v4, 8443));

    // Status: attach mode, and the fill of the state maps (the flows above are tracked).
    let status = json(&agent.cli(&["status", "-o", "json"]));
    assert_eq!(status["xdp_mode"], "auto");
    let ct = status["maps"].get("ZT_CT").expect("conntrack fill").clone();
    assert!(ct["entries"].as_u64().unwrap() >= 2 && ct["capacity"].as_u64().unwrap() > 0, "{ct}");

    // An invalid policy is refused with its positions; nothing changes.
    let bad = dir.file("bad.yaml", &POLICY.replace("10.20.2.10/32", "10.20.2.300/32"));
    let refused = agent.cli(&["policy", "push", bad.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("bad.yaml:5:"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(json(&agent.cli(&["policy", "get", "-o", "json"]))["revision"], 2);
    assert!(tcp_ok(&frontend.ns, payments.v4, 8443));
}

#[test]
fn sigkill_keeps_enforcement_and_a_restart_adopts_it() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (payments, frontend, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let policy = dir.file("p.yaml", POLICY);
    let mut agent = Agent::start(&payments.ns, &[&payments.iface], Some(&policy));
    let _srv = Servers::start(&payments.ns, &[443], &[]);
    assert!(tcp_ok(&frontend.ns, payments.v4, 443) && !tcp_ok(&attacker.ns, payments.v4, 443));

    agent.kill();
    // No daemon: the pinned programs still enforce the policy.
    assert!(tcp_ok(&frontend.ns, payments.v4, 443), "allowed traffic stopped with the daemon");
    assert!(!tcp_ok(&attacker.ns, payments.v4, 443), "denied traffic passed without the daemon");

    // A new daemon on the same pins, without a policy, keeps the one in the kernel and takes
    // over the links in place.
    let restarted = Agent::start_with_pins(&payments.ns, &[&payments.iface], None, &agent.pins);
    let status = json(&restarted.cli(&["status", "-o", "json"]));
    assert_eq!(status["revision"], 1);
    assert_eq!(status["interfaces"][&payments.iface]["ingress"], "adopted", "{status}");
    assert_eq!(status["interfaces"][&payments.iface]["egress"], "adopted", "{status}");
    assert!(tcp_ok(&frontend.ns, payments.v4, 443) && !tcp_ok(&attacker.ns, payments.v4, 443));
}

#[test]
fn a_restart_restores_the_last_known_good_policy() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")]);
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&payments.ns, &[443, 8443], &[]);
    agent.push(&dir.file("more.yaml", &POLICY.replace(r#"["443/tcp"]"#, r#"["443/tcp", "8443/tcp"]"#)));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state.join("policy.json")).unwrap()).unwrap();
    assert_eq!(saved["revision"], 2, "the push was acknowledged before the state directory held it");

    // Same pins, no --policy: the kernel still holds revision 2, which matches the saved one.
    agent.kill();
    let again = Agent::start_with_pins(&payments.ns, &[&payments.iface], None, &agent.pins);
    assert!(again.log().contains("adopted as it is"), "{}", again.log());
    let got = json(&again.cli(&["policy", "get", "-o", "json"]));
    assert_eq!((got["revision"].clone(), got["policy"]["rules"][0]["ports"][1].clone()), (2.into(), "8443/tcp".into()));
    drop(again);

    // The kernel state gone (uninstalled): the saved policy is installed again.
    let fresh_pins = agent.pins.clone();
    let _ = std::process::Command::new(integration_tests::bin("ztagent"))
        .args(["uninstall", "--pin-path"])
        .arg(&fresh_pins)
        .status();
    std::fs::create_dir_all(&agent.state).unwrap();
    std::fs::write(agent.state.join("policy.json"), serde_json::to_vec(&saved).unwrap()).unwrap();
    let restored = Agent::start_with_pins(&payments.ns, &[&payments.iface], None, &fresh_pins);
    assert!(restored.log().contains("installed again"), "{}", restored.log());
    assert!(tcp_ok(&frontend.ns, payments.v4, 8443), "the restored policy is not enforced");
}

#[test]
fn a_policy_larger_than_the_configured_maps_is_refused_up_front() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10")]);
    let h = &lan.hosts[0];
    let dir = TempDir::new();
    let agent = Agent::start_with(&h.ns, &[&h.iface], Some(&dir.file("p.yaml", POLICY)), &["--max-cidrs", "16"]);
    // 9 CIDRs fit in half of 16; 12 do not.
    let cidrs: Vec<String> = (0..12).map(|i| format!("10.{i}.0.0/16")).collect();
    let big = format!("version: 1\nsegments:\n  many: {{ cidrs: [{}] }}\nrules: []\n", cidrs.join(", "));
    let out = agent.cli(&["policy", "push", dir.file("big.yaml", &big).to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("12 CIDR entries") && err.contains("--max-cidrs") && err.contains("unchanged"), "{err}");
    assert_eq!(json(&agent.cli(&["policy", "get", "-o", "json"]))["revision"], 1);
}

/// `run --policy FILE` after a newer policy was pushed: a restart keeps the pushed one and says
/// so, loudly; `--policy-overrides-pushed` installs the file. A file equal to the pushed policy
/// is simply installed.
#[test]
fn a_restart_with_policy_keeps_a_newer_pushed_policy_unless_told() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2")]);
    let (payments, frontend) = (&lan.hosts[0], &lan.hosts[1]);
    let dir = TempDir::new();
    let file = dir.file("p.yaml", POLICY);
    let mut agent = Agent::start(&payments.ns, &[&payments.iface], Some(&file));
    let _srv = Servers::start(&payments.ns, &[443, 8443], &[]);
    agent.push(&dir.file("more.yaml", &POLICY.replace(r#"["443/tcp"]"#, r#"["443/tcp", "8443/tcp"]"#)));
    assert!(tcp_ok(&frontend.ns, payments.v4, 8443));
    let ports = |a: &Agent| {
        let got = json(&a.cli(&["policy", "get", "-o", "json"]));
        (got["revision"].as_u64(), got["policy"]["rules"][0]["ports"].as_array().map_or(0, Vec::len))
    };

    // The README's daemon line again, as a service manager restarts it: the push stays.
    agent.stop();
    agent.hand_over();
    let mut again = Agent::start_with_pins(&payments.ns, &[&payments.iface], Some(&file), &agent.pins);
    assert_eq!(ports(&again), (Some(2), 2), "the restart reinstalled the file over the pushed policy");
    let log = again.log();
    assert!(
        log.contains("WARN") && log.contains("p.yaml was NOT installed") && log.contains("--policy-overrides-pushed"),
        "{log}"
    );
    assert!(tcp_ok(&frontend.ns, payments.v4, 8443), "the pushed policy is not enforced after the restart");

    // Told otherwise: the file wins.
    again.stop();
    again.hand_over();
    let told = Agent::start_with_pins_args(
        &payments.ns,
        &[&payments.iface],
        Some(&file),
        &agent.pins,
        &["--policy-overrides-pushed"],
    );
    assert_eq!(ports(&told), (Some(3), 1));
    assert!(told.log().contains("replaces the newer policy pushed since"), "{}", told.log());
    assert!(!tcp_ok(&frontend.ns, payments.v4, 8443), "the file's policy is not enforced");
    // The file is now the policy in force (not a push): a plain restart installs it again,
    // without a warning.
    let mut told = told;
    told.stop();
    told.hand_over();
    let plain = Agent::start_with_pins(&payments.ns, &[&payments.iface], Some(&file), &agent.pins);
    assert_eq!(ports(&plain), (Some(4), 1));
    assert!(!plain.log().contains("NOT installed"), "{}", plain.log());
}

/// `status --offline`: with the agent stopped (enforcement pinned), the pins alone say what the
/// kernel enforces: the revision, each interface's links, the counters, in text and JSON.
#[test]
fn status_offline_reads_what_the_pins_enforce() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (payments, frontend, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&payments.ns, &[443], &[]);
    agent.push(&dir.file("more.yaml", &POLICY.replace(r#"["443/tcp"]"#, r#"["443/tcp", "8443/tcp"]"#)));
    assert!(tcp_ok(&frontend.ns, payments.v4, 443) && !tcp_ok(&attacker.ns, payments.v4, 443));
    let live = json(&agent.cli(&["status", "-o", "json"]));
    agent.stop();

    let pins = agent.pins.to_str().unwrap();
    let out = agent.cli(&["status", "--offline", "--pin-path", pins, "-o", "json"]);
    let s = json(&out);
    assert_eq!(
        (s["revision"].as_u64(), s["mode"].as_str(), s["pin_path"].as_str()),
        (Some(2), Some("enforce"), Some(pins))
    );
    let ifaces = s["interfaces"].as_object().unwrap();
    assert_eq!(ifaces.keys().collect::<Vec<_>>(), [&payments.iface], "{s}");
    // The interface's index in the agent's namespace (`ip -o link`: "N: name@peer: ...").
    let shown = payments.ns.ip(&["-o", "link", "show", &payments.iface]);
    let ifindex = shown.split(':').next().and_then(|n| n.trim().parse::<u64>().ok());
    assert!(ifindex.is_some(), "{shown}");
    for hook in ["ingress", "egress"] {
        let l = &ifaces[&payments.iface][hook];
        assert!(l["link_id"].as_u64().unwrap() > 0 && l["program_id"].as_u64().unwrap() > 0, "{hook}: {s}");
        assert_eq!(l["ifindex"].as_u64(), ifindex, "{hook}: {s}");
    }
    // The counters are the kernel's: what the live agent showed, and no less since.
    for name in ["pass_policy", "drop_default", "pass_tracked"] {
        let (then, now) = (live["counters"][name].as_u64().unwrap(), s["counters"][name].as_u64().unwrap());
        assert!(now >= then, "{name}: {then} live, {now} offline");
    }
    assert!(s["counters"]["drop_default"].as_u64().unwrap() > 0, "{s}");
    assert!(s["maps"]["ZT_CT"]["entries"].as_u64().is_some_and(|n| n > 0), "{s}");
    // Still enforced, with no agent; and the text says the same.
    assert!(!tcp_ok(&attacker.ns, payments.v4, 443));
    let text = agent.cli(&["status", "--offline", "--pin-path", pins]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("policy revision: 2 (enforce)"), "{text}");
    assert!(text.contains(&format!("interface {}: ingress link", payments.iface)), "{text}");
    // Nothing pinned there: one sentence, non-zero.
    let none = agent.cli(&["status", "--offline", "--pin-path", "/sys/fs/bpf/zt-nothing-here", "-o", "json"]);
    assert!(!none.status.success() && String::from_utf8_lossy(&none.stderr).contains("nothing of ztagent is pinned"));
}
