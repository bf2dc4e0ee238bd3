//! The connectivity matrix: three client segments (frontend, batch, and the world) against the
//! payments server, over TCP, UDP and ICMP, IPv4 and IPv6. The expected verdict of every case
//! comes from `ztagent check --policy FILE -o json`, so the test also proves that `check`
//! agrees with what the kernel does. Enforced once at the server's ingress, once at the
//! clients' egress.
use std::path::Path;

use integration_tests::{Agent, Lan, Probe, Servers, check_file};

const TCP: &[u16] = &[443, 8080, 8081, 22];
const UDP: &[u16] = &[53, 5353];

/// Probes every case in parallel and returns the mismatches between policy and kernel.
fn run_matrix(lan: &Lan, policy: &Path) -> (Vec<String>, usize, usize) {
    let server = &lan.hosts[0];
    let _servers = Servers::start(&server.ns, TCP, UDP);
    let mut cases = Vec::new();
    for client in &lan.hosts[1..] {
        for (src, dst) in [(client.v4, server.v4), (client.v6, server.v6)] {
            for p in TCP.iter().map(|p| Probe::Tcp(*p)).chain(UDP.iter().map(|p| Probe::Udp(*p))).chain([Probe::Icmp]) {
                cases.push((client, src, dst, p));
            }
        }
    }
    let results: Vec<(String, bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(client, src, dst, p)| {
                s.spawn(move || {
                    let want = check_file(policy, src, dst, p).expect("ztagent check").allow;
                    let got = p.observe(&client.ns, dst);
                    (format!("{src} -> {dst} {p:?}"), want, got)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let allowed = results.iter().filter(|r| r.1).count();
    let denied = results.len() - allowed;
    let mismatches = results
        .into_iter()
        .filter(|(_, want, got)| want != got)
        .map(|(case, want, got)| format!("{case}: policy says {}, kernel {}", verdict(want), verdict(got)))
        .collect();
    (mismatches, allowed, denied)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "allow" } else { "deny" }
}

fn policy_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml")
}

#[test]
fn matrix_ingress_on_the_server() {
    let lan = Lan::four_hosts();
    let policy = policy_path();
    let server = &lan.hosts[0];
    let agent = Agent::start(&server.ns, &[&server.iface], Some(&policy));
    let (mismatches, allowed, denied) = run_matrix(&lan, &policy);
    assert!(mismatches.is_empty(), "kernel and policy disagree:\n{}\n{}", mismatches.join("\n"), agent.log());
    // The matrix must exercise both outcomes, or it proves nothing.
    assert!(allowed >= 8 && denied >= 20, "allowed {allowed}, denied {denied}");
    assert!(agent.counter("drop_default") > 0 && agent.counter("drop_rule") > 0);
    assert!(agent.counter("pass_policy") >= allowed as u64);
}

#[test]
fn matrix_egress_on_the_clients() {
    let lan = Lan::four_hosts();
    let policy = policy_path();
    let agents: Vec<Agent> = lan.hosts[1..].iter().map(|h| Agent::start(&h.ns, &[&h.iface], Some(&policy))).collect();
    let (mismatches, allowed, denied) = run_matrix(&lan, &policy);
    let logs: String = agents.iter().map(Agent::log).collect();
    assert!(mismatches.is_empty(), "kernel and policy disagree:\n{}\n{logs}", mismatches.join("\n"));
    assert!(allowed >= 8 && denied >= 20, "allowed {allowed}, denied {denied}");
    let egress_drops: u64 = agents.iter().map(|a| a.counter("drop_default") + a.counter("drop_rule")).sum();
    assert!(egress_drops >= denied as u64, "only {egress_drops} drops for {denied} denied cases");
}
