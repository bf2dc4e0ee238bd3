//! Time-bound grants against the real kernel, from a segment and from an address block: a
//! grant opens a denied flow, and its deadline is the kernel's to keep: with the agent
//! SIGKILLed before the grant ends, the connection it allowed is cut within a second of the end
//! and new ones are denied again; a restarted agent lists the grants still running, reports the
//! one that ended, and a grant revoked early ends at once. A grant from an address block opens
//! the flow for the block's addresses only, which keep their identity.
use std::time::Duration;

use integration_tests::{Agent, ECHO, Lan, NO_ECHO, Servers, TempDir, WEB_POLICY, echoes, hold_tcp, tcp_ok};
use serde_json::Value;

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// `ztagent grants -o json | jq .grants`: the grants in force, keyed by id.
fn grants(agent: &Agent) -> serde_json::Map<String, Value> {
    let out = agent.cli(&["grants", "-o", "json"]);
    assert!(out.status.success(), "grants: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["grants"].as_object().unwrap_or_else(|| panic!("no object `grants` in {v}")).clone()
}

/// An RFC 3339 time of `grants -o json` (with its offset), in Unix seconds.
fn unix_of(time: &Value) -> f64 {
    let text = time.as_str().unwrap_or_else(|| panic!("{time} is not a string"));
    assert!(text.ends_with('Z') || text.contains('+'), "{text} has no offset");
    ztagent::clock::parse_rfc3339(text).unwrap_or_else(|| panic!("{text} is not RFC 3339")) as f64 / 1e9
}

/// What a test grants: `from` (as given and as listed) for 8080 to `client`, then `again` (as
/// given and as listed) for 9090, while `outsider` (if any) stays denied; `identity` is the
/// segment the client's flows are named by.
struct Case<'a> {
    from: (&'a str, &'a str),
    again: (&'a str, &'a str),
    client: usize,
    outsider: Option<usize>,
    identity: &'a str,
}

/// Payments (host 0) enforces `WEB_POLICY` (frontend may reach 443 only); frontend is host 1,
/// batch host 2 and the attacker host 3, both in no segment.
fn a_grant_ends_in_the_kernel_without_its_agent(case: &Case<'_>) {
    let lan = Lan::four_hosts();
    let payments = &lan.hosts[0];
    let client = &lan.hosts[case.client];
    let dir = TempDir::new();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&dir.file("p.yaml", WEB_POLICY)));
    let _srv = Servers::start(&payments.ns, &[443, 8080, 9090], &[]);
    assert!(!tcp_ok(&client.ns, payments.v4, 8080), "8080 is open before any grant");

    let grant = |from: &str, port: &str, d: &str, why: &str| {
        let out =
            agent.cli(&["grant", "--from", from, "--to", "payments", "--port", port, "--for", d, "--reason", why]);
        assert!(out.status.success(), "grant: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let given = grant(case.from.0, "8080/tcp", "5s", "debugging the alt port");
    let want = format!("grant 1: {} -> payments 8080/tcp until", case.from.1);
    assert!(given.starts_with(&want), "{given:?} is not {want:?}...");
    grant(case.again.0, "9090/tcp", "10m", "a longer exception");
    let listed = grants(&agent);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!((&listed["1"]["from"], &listed["2"]["from"]), (&case.from.1.into(), &case.again.1.into()), "{listed:?}");
    let ends = unix_of(&listed["1"]["expires_at"]);
    let made = unix_of(&listed["1"]["granted_at"]);
    assert!((ends - made - 5.0).abs() < 0.01, "a 5 s grant made at {made} ends at {ends}");
    // Open now, for the client only, and an established connection through it.
    assert!(tcp_ok(&client.ns, payments.v4, 8080), "the grant did not open 8080");
    if let Some(o) = case.outsider {
        assert!(!tcp_ok(&lan.hosts[o].ns, payments.v4, 8080), "the grant opened 8080 to an address outside its block");
    }
    let src = client.v4.to_string();
    let check = agent.cli(&["check", "--src", &src, "--dst", "10.20.2.10", "--port", "8080", "-o", "json"]);
    let v: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(
        (&v["verdict"], &v["rule"], &v["src_segment"]),
        (&"allow".into(), &"grant-1".into(), &case.identity.into()),
        "{v}"
    );
    let mut held = hold_tcp(&client.ns, payments.v4, 8080);
    assert!(echoes(&mut held, ECHO), "the granted connection does not flow");
    let events = agent.events(&["--verdict", "granted"]);
    assert!(events.iter().any(|e| e["rule"] == "grant-1" && e["note"] == "debugging the alt port"), "{events:?}");
    let allowed = agent.events(&["--verdict", "allowed", "--port", "8080"]);
    assert!(allowed.iter().all(|e| e["rule"] == "grant-1" && e["src_segment"] == case.identity), "{allowed:?}");

    // The agent dies before the grant ends: the kernel ends it alone.
    let mut agent = agent;
    agent.kill();
    assert!(unix_now() < ends, "the agent was killed only after the grant ended: inconclusive");
    assert!(echoes(&mut held, ECHO), "the granted connection stopped before its end");
    // Cut within a second of the end (the protocol's bound; the kernel's clock is checked per
    // packet, so the first packet after the end is the one cut).
    let wait = ends + 1.0 - unix_now();
    std::thread::sleep(Duration::from_secs_f64(wait.max(0.0)));
    assert!(!echoes(&mut held, NO_ECHO), "the granted connection still flows a second after the grant ended");
    assert!(!tcp_ok(&client.ns, payments.v4, 8080), "8080 is still open after the grant ended");
    assert!(tcp_ok(&client.ns, payments.v4, 9090), "the longer grant ended too");
    if case.client == 1 {
        assert!(tcp_ok(&client.ns, payments.v4, 443), "the policy's own allow is gone");
    }

    // A restarted agent: the ended grant is reported and gone, the other one listed.
    let agent = agent.crash_and_restart(&payments.ns, &[&payments.iface]);
    let mut left = grants(&agent);
    for _ in 0..50 {
        if left.len() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = grants(&agent);
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (&left["2"]["id"], &left["2"]["ports"][0], &left["2"]["from"]),
        (&2.into(), &"9090/tcp".into(), &case.again.1.into())
    );
    let ended = agent.events(&["--verdict", "grant-ended"]);
    assert!(ended.iter().any(|e| e["rule"] == "grant-1" && e["reason"] == "expired"), "{ended:?}");
    // The cut, reported by the kernel while no agent ran, named by the policy that allowed it.
    let cut = agent.events(&["--verdict", "denied"]);
    assert!(
        cut.iter().any(|e| e["reason"] == "grant-expired" && e["dport"] == 8080 && e["rule"] == "grant-1"),
        "{cut:?}"
    );
    assert!(tcp_ok(&client.ns, payments.v4, 9090), "the remaining grant does not apply after the restart");

    // Revoked early: ends at once.
    let out = agent.cli(&["grants", "--revoke", "2"]);
    assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!tcp_ok(&client.ns, payments.v4, 9090), "a revoked grant still allows");
    assert!(grants(&agent).is_empty());
    let out = agent.cli(&["grants", "--revoke", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "error: no grant 2 is in force");
    let out = agent.cli(&["grant", "--from", "nowhere", "--to", "payments", "--for", "1m", "--reason", "x"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown segment `nowhere`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent.cli(&["grant", "--from", "10.20.9.2/24", "--to", "payments", "--for", "1m", "--reason", "x"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: the address block 10.20.9.2/24 has host bits set: did you mean 10.20.9.0/24?"
    );
}

#[test]
fn a_grant_from_a_segment_ends_in_the_kernel_without_its_agent() {
    a_grant_ends_in_the_kernel_without_its_agent(&Case {
        from: ("frontend", "frontend"),
        again: ("frontend", "frontend"),
        client: 1,
        outsider: None,
        identity: "frontend",
    });
}

#[test]
fn a_grant_from_an_address_block_ends_in_the_kernel_without_its_agent() {
    // The attacker's /24 (in no segment); batch, also in no segment but outside it, stays
    // denied; the second grant names the attacker's one address.
    a_grant_ends_in_the_kernel_without_its_agent(&Case {
        from: ("10.20.9.0/24", "10.20.9.0/24"),
        again: ("10.20.9.2", "10.20.9.2/32"),
        client: 3,
        outsider: Some(2),
        identity: "world",
    });
}
