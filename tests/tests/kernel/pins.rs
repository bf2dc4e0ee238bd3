//! The pin directory under a running agent (issue 23, defect 1): `ztagent uninstall` refuses
//! while the agent answers for it; pins removed anyway (by hand, or an uninstall that does not
//! reach the agent) are noticed, said in `status` and the log, and pinned again, so that
//! enforcement still outlives the agent; `uninstall --stop-agent` stops it, then removes them.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use integration_tests::{Agent, Lan, Servers, TempDir, bin, tcp_ok};

const POLICY: &str = r#"version: 1
segments:
  payments: { cidrs: [10.20.2.10/32, "fd20:2::10/128"] }
  frontend: { cidrs: [10.20.1.0/24] }
rules:
  - { name: web, from: [frontend], to: [payments], ports: ["443/tcp"], action: allow }
"#;

fn pins_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn status(agent: &Agent) -> serde_json::Value {
    let out = agent.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn uninstall_refuses_a_running_agent_and_vanished_pins_are_restored() {
    let lan = Lan::four_hosts();
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[3]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&pay.ns, &[443], &[]);
    let (maps, links) = (agent.pins.join("maps"), agent.pins.join("links"));
    let (n_maps, n_links) = (pins_in(&maps), pins_in(&links));
    assert!(n_maps > 0 && n_links == 2, "{n_maps} maps, {n_links} links pinned");

    // While the agent answers: refused, in one sentence, and nothing removed.
    let out = agent.cli(&["uninstall", "--pin-path", agent.pins.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "uninstall succeeded under a running agent: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("an agent is running") && err.lines().count() == 1, "{err}");
    assert_eq!((pins_in(&maps), pins_in(&links)), (n_maps, n_links), "uninstall removed pins while refusing");
    assert_eq!(status(&agent)["pins"]["intact"], true);

    // An uninstall that does not reach the agent (another socket) removes every pin.
    let out = std::process::Command::new(bin("ztagent"))
        .args(["--socket", "/nonexistent/ztagent.sock", "uninstall", "--pin-path"])
        .arg(&agent.pins)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The agent notices, says so, and pins them again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = status(&agent);
    while Instant::now() < deadline && s["pins"]["restored"].as_u64().unwrap_or(0) == 0 {
        std::thread::sleep(Duration::from_millis(100));
        s = status(&agent);
    }
    assert!(s["pins"]["restored"].as_u64().unwrap_or(0) >= (n_maps + n_links) as u64, "{}", s["pins"]);
    assert!(s["pins"]["last_restored"].is_string() && s["pins"]["intact"] == true, "{}", s["pins"]);
    assert_eq!((pins_in(&maps), pins_in(&links)), (n_maps, n_links), "not every pin is back");
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("were pinned again"), "{text}");
    assert!(agent.log().contains("vanished"), "the agent did not log it:\n{}", agent.log());

    // Enforcement is what the pins say, also once the agent is gone.
    assert!(tcp_ok(&front.ns, pay.v4, 443));
    assert!(!tcp_ok(&attacker.ns, pay.v4, 443));
    agent.kill();
    assert!(!tcp_ok(&attacker.ns, pay.v4, 443), "enforcement ended with the agent: its pins were not restored");
    assert!(tcp_ok(&front.ns, pay.v4, 443));
}

/// `uninstall --stop-agent`: the agent answering for the pin path is stopped through its socket
/// (its peer's pid), waited for, and only then are the pins removed: enforcement ends.
#[test]
fn uninstall_stop_agent_stops_the_agent_then_removes_the_pins() {
    let lan = Lan::four_hosts();
    let (pay, front, attacker) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[3]);
    let dir = TempDir::new();
    let mut agent = Agent::start(&pay.ns, &[&pay.iface], Some(&dir.file("p.yaml", POLICY)));
    let _srv = Servers::start(&pay.ns, &[443], &[]);
    assert!(!tcp_ok(&attacker.ns, pay.v4, 443), "not enforced before the uninstall");
    let (maps, links) = (agent.pins.join("maps"), agent.pins.join("links"));
    assert!(pins_in(&maps) > 0 && pins_in(&links) == 2);

    // Without the flag the refusal names it.
    let pin_path = agent.pins.to_str().unwrap().to_string();
    let out = agent.cli(&["uninstall", "--pin-path", &pin_path]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--stop-agent"));
    assert!(!agent.exited(), "a refused uninstall stopped the agent");

    let out = agent.cli(&["uninstall", "--stop-agent", "--pin-path", &pin_path]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "uninstall --stop-agent failed: {stderr}");
    assert!(stdout.contains(&format!("stopped the agent (pid {})", agent.pid())), "{stdout}");
    assert!(stdout.contains("enforcement detached"), "{stdout}");
    // The agent exited on its own (SIGTERM, its usual stop) before the pins went.
    assert!(agent.exited(), "the agent still runs after uninstall --stop-agent");
    assert!(agent.log().contains("stopping"), "{}", agent.log());
    assert_eq!((pins_in(&maps), pins_in(&links)), (0, 0), "pins left behind");
    assert!(!agent.socket.exists(), "the agent's socket is still there");
    // Nothing enforces any more: the attacker's connection, denied before, goes through (the
    // kernel releases a link whose last holder went in deferred work: polled).
    let open = integration_tests::wait_for(Duration::from_secs(10), || tcp_ok(&attacker.ns, pay.v4, 443));
    let links = pay.ns.exec(&["bpftool", "net", "show"]);
    assert!(open.is_some(), "still enforced after uninstall --stop-agent: {}", String::from_utf8_lossy(&links.stdout));
    assert!(tcp_ok(&front.ns, pay.v4, 443));
}
