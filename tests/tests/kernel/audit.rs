//! Audit mode (`mode: audit`) against the real kernel: what the policy would deny passes,
//! counted (`audit_deny`) and reported (`would-deny` events naming the rule or the default);
//! pushing the same policy in enforce mode then cuts those flows and drops new ones. Over a
//! rate limit, packets pass as `would-rate-limit` (crafted frames, BPF_PROG_TEST_RUN).
use std::time::Duration;

use agent_common::programs::INGRESS;
use integration_tests::{
    Agent, ECHO, Lan, Loaded, NO_ECHO, Servers, TempDir, WEB_POLICY, echoes,
    frame::{ETH_IP, TCP_ACK, TCP_SYN, cat, eth, ipv4, tcp},
    hold_tcp, tcp_ok,
};
use serde_json::Value;
use ztagent::kernel::datapath::Limits;

/// The harness's web policy and a deny rule.
fn enforced() -> String {
    format!(
        "{WEB_POLICY}  - {{ name: no-admin, from: [\"*\"], to: [payments], ports: [\"8081/tcp\"], action: deny }}\n"
    )
}

fn audit(policy: &str) -> String {
    policy.replacen("version: 1\n", "version: 1\nmode: audit\n", 1)
}

#[test]
fn audit_mode_passes_and_reports_what_enforce_then_drops() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (payments, frontend, outsider) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let dir = TempDir::new();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("audit.yaml", &audit(&enforced()))));
    let _srv = Servers::start(&payments.ns, &[443, 8080, 8081], &[]);
    let st: Value = serde_json::from_slice(&agent.cli(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(st["mode"], "audit");

    // Everything passes: allowed, denied by default, denied by a rule.
    assert!(tcp_ok(&frontend.ns, payments.v4, 443));
    assert!(tcp_ok(&outsider.ns, payments.v4, 443), "audit mode dropped a default denial");
    assert!(tcp_ok(&frontend.ns, payments.v4, 8081), "audit mode dropped a rule's denial");
    // An established connection the policy would deny.
    let mut held = hold_tcp(&outsider.ns, payments.v4, 8080);
    assert!(echoes(&mut held, ECHO), "the would-deny connection does not flow");

    // Counted and reported, never dropped.
    assert_eq!(agent.counter("drop_default") + agent.counter("drop_rule"), 0);
    assert!(agent.counter("audit_deny") >= 6, "audit_deny {}", agent.counter("audit_deny"));
    let would = agent.events(&["--verdict", "would-deny"]);
    let find = |src: &str, port: u64| {
        would
            .iter()
            .find(|e| e["src"] == src && e["dport"] == port)
            .unwrap_or_else(|| panic!("no would-deny event for {src} -> {port}: {would:?}"))
    };
    let e = find("10.20.9.2", 443);
    assert_eq!(
        (&e["reason"], &e["src_segment"], &e["dst_segment"]),
        (&"default".into(), &"world".into(), &"payments".into())
    );
    let e = find("10.20.1.2", 8081);
    assert_eq!((&e["reason"], &e["rule"]), (&"rule".into(), &"no-admin".into()));
    assert!(agent.events(&["--verdict", "denied"]).is_empty(), "a packet was reported denied in audit mode");

    // The same policy, enforced: the would-deny connection is cut, new ones are dropped.
    let out = agent.cli(&["policy", "push", dir.file("enforce.yaml", &enforced()).to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!echoes(&mut held, NO_ECHO), "the would-deny connection still flows once enforced");
    assert!(agent.counter("drop_revoked") > 0);
    assert!(!tcp_ok(&outsider.ns, payments.v4, 443) && !tcp_ok(&frontend.ns, payments.v4, 8081));
    assert!(tcp_ok(&frontend.ns, payments.v4, 443));
}

#[test]
fn over_a_rate_limit_audit_mode_passes_and_counts() {
    let policy = format!(
        "{}rateLimits:\n  - {{ name: slow, from: frontend, packets: {{ rate: 1, per: second, burst: 5 }} }}\n",
        audit(&enforced())
    );
    let mut dp = Loaded::new(&Limits::default());
    dp.apply(&policy);
    let frame =
        |flags| cat(&[&eth(&[], ETH_IP), &ipv4([10, 20, 1, 5], [10, 20, 2, 10], 6, &[], 0, &tcp(40000, 443, flags))]);
    for i in 0..20 {
        assert_eq!(dp.run(INGRESS, &frame(if i == 0 { TCP_SYN } else { TCP_ACK })), 2, "packet {i} was dropped");
    }
    assert_eq!(dp.counter("drop_rate_limit"), 0);
    assert!((14..=15).contains(&dp.counter("audit_rate_limit")), "audit_rate_limit {}", dp.counter("audit_rate_limit"));
    // Enforced, the same limit drops.
    dp.apply(&policy.replacen("mode: audit\n", "", 1));
    let dropped = (0..20).filter(|_| dp.run(INGRESS, &frame(TCP_ACK)) == 1).count();
    assert!(dropped >= 19, "only {dropped} of 20 dropped once enforced");
}

/// One new restriction tried while the rest enforces: a deny rule in audit mode passes what it
/// would deny, reported as would-deny naming it, while another deny rule and the default
/// action still drop; a segment in audit mode does the same for every denial to or from it.
#[test]
fn a_rule_or_a_segment_in_audit_mode_passes_only_its_own_denials() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10"), ("10.20.1.2", "fd20:1::2"), ("10.20.9.2", "fd20:9::2")]);
    let (payments, frontend, outsider) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let policy = format!(
        "{}  - {{ name: try-no-alt, from: [\"*\"], to: [payments], ports: [\"8080/tcp\"], action: deny, mode: audit }}\n",
        enforced()
    );
    let dir = TempDir::new();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("rule.yaml", &policy)));
    let _srv = Servers::start(&payments.ns, &[443, 8080, 8081], &[]);
    let st: Value = serde_json::from_slice(&agent.cli(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(st["mode"], "enforce");

    // The audited rule's would-be denial passes, the enforced rule and the default drop.
    assert!(tcp_ok(&frontend.ns, payments.v4, 8080), "the audited rule dropped its denial");
    assert!(!tcp_ok(&frontend.ns, payments.v4, 8081), "the enforced deny rule let 8081 through");
    assert!(!tcp_ok(&outsider.ns, payments.v4, 443), "the default action let the outsider through");
    assert!(tcp_ok(&frontend.ns, payments.v4, 443));
    let would = agent.events(&["--verdict", "would-deny"]);
    assert!(
        would.iter().any(|e| e["dport"] == 8080 && e["rule"] == "try-no-alt" && e["reason"] == "rule"),
        "no would-deny event naming try-no-alt: {would:?}"
    );
    assert!(would.iter().all(|e| e["dport"] == 8080), "only the audited rule's flow is would-deny: {would:?}");
    let denied = agent.events(&["--verdict", "denied"]);
    assert!(denied.iter().any(|e| e["dport"] == 8081 && e["rule"] == "no-admin"), "no denial by no-admin: {denied:?}");
    assert!(
        denied.iter().any(|e| e["src"] == "10.20.9.2" && e["reason"] == "default"),
        "no default denial: {denied:?}"
    );
    assert!(agent.counter("audit_deny") > 0 && agent.counter("drop_rule") > 0 && agent.counter("drop_default") > 0);
    let check = agent.cli(&["check", "--src", "10.20.1.2", "--dst", "10.20.2.10", "--port", "8080", "-o", "json"]);
    let v: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!((&v["verdict"], &v["rule"], &v["audit"]), (&"deny".into(), &"try-no-alt".into(), &true.into()), "{v}");
    // An audited denial is still a denial for a CI gate: exit status 1 (docs/cli.md).
    assert_eq!(check.status.code(), Some(1), "{v}");

    // A segment in audit mode: the outsider's segment (its /24 named, in audit) may reach
    // payments on anything while frontend's denials are still dropped.
    let segment = format!(
        "{}  outsiders: {{ cidrs: [10.20.9.0/24], mode: audit }}\n",
        enforced().split("rules:").next().unwrap()
    ) + &format!("rules:{}", enforced().split("rules:").nth(1).unwrap());
    assert!(agent.push(&dir.file("segment.yaml", &segment)).starts_with("revision 2"));
    assert!(tcp_ok(&outsider.ns, payments.v4, 443), "the audited segment's default denial was dropped");
    assert!(tcp_ok(&outsider.ns, payments.v4, 8081), "the audited segment's rule denial was dropped");
    assert!(!tcp_ok(&frontend.ns, payments.v4, 8081), "frontend's denial passed: only the audited segment passes");
    let would = agent.events(&["--verdict", "would-deny", "--from", "outsiders"]);
    assert!(would.iter().any(|e| e["dport"] == 443 && e["reason"] == "default"), "{would:?}");
    assert!(would.iter().any(|e| e["dport"] == 8081 && e["rule"] == "no-admin"), "{would:?}");
}
