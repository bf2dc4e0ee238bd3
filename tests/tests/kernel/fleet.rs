//! Fleet distribution over etcd against the real kernel and a real etcd: three host namespaces,
//! each running an agent with `--policy-source etcd://...` on its data interface, reach etcd
//! over a management network (see [`Mgmt`]); a client namespace probes real TCP traffic.
//! Pushed revisions are enforced everywhere, broken ones refused (by `fleet push`) or rejected
//! (by every agent, which keeps enforcing), cut-off agents keep their policy and catch up to the
//! newest revision, and two pushes from the same base cannot both win.
use std::{
    process::Output,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, ETCD_ADDR, Etcd, EtcdCerts, Lan, Mgmt, Servers, TempDir, broken_ports_policy, fleet_lan, json_of as json,
    ports_policy, tcp_ok, unique, wait_for,
};

/// Frontend may reach payments (10.20.2.0/24, the three hosts) on these ports.
fn policy(ports: &[u16]) -> String {
    ports_policy("10.20.2.0/24", ports)
}

const PORTS: [u16; 4] = [443, 8443, 9443, 10443];

/// A client, three enforced hosts with servers on [`PORTS`], the management network, etcd.
struct Fleet {
    lan: Lan,
    mgmt: Mgmt,
    etcd: Etcd,
    url: String,
    agents: Vec<Option<Agent>>,
    _servers: Vec<Servers>,
    files: TempDir,
}

impl Fleet {
    fn new(etcd_members: usize) -> Fleet {
        Self::with(|mgmt| Etcd::start(mgmt, etcd_members), &[])
    }

    /// The fleet around the etcd `start` starts; `creds`: the flags its clients need.
    fn with(start: impl FnOnce(&Mgmt) -> Etcd, creds: &[&str]) -> Fleet {
        let (lan, mgmt) = fleet_lan();
        let etcd = start(&mgmt);
        let url = etcd.url(&unique("ztagent/t"));
        let servers = lan.hosts[1..].iter().map(|h| Servers::start(&h.ns, &PORTS, &[])).collect();
        let f =
            Fleet { lan, mgmt, etcd, url, agents: vec![None, None, None], _servers: servers, files: TempDir::new() };
        let up = wait_for(Duration::from_secs(30), || {
            f.cli(&[&["fleet", "status", "-o", "json"][..], creds].concat()).status.success()
        });
        assert!(up.is_some(), "etcd did not come up:\n{}", f.etcd.log());
        f
    }

    /// Starts the agent of host `i` (0..3) against the fleet.
    fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// As [`Fleet::start_agent`], with more `ztagent run` flags.
    fn start_agent_with(&mut self, i: usize, more: &[&str]) {
        let h = &self.lan.hosts[i + 1];
        let name = format!("host{i}");
        let args = [&["--policy-source", &self.url, "--fleet-host", &name], more].concat();
        self.agents[i] = Some(Agent::start_with(&h.ns, &[&h.iface], None, &args));
    }

    fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().unwrap()
    }

    /// `ztagent ARGS... --etcd URL` from the management namespace.
    fn cli(&self, args: &[&str]) -> Output {
        self.mgmt.ztagent(&[args, &["--etcd", &self.url]].concat())
    }

    fn push_text(&self, text: &str, extra: &[&str]) -> Output {
        let file = self.files.file(&unique("p"), text);
        self.cli(&[&["fleet", "push", file.to_str().unwrap()], extra].concat())
    }

    /// Pushes `ports`; returns the fleet revision.
    fn push(&self, ports: &[u16]) -> i64 {
        let out = self.push_text(&policy(ports), &[]);
        assert!(out.status.success(), "fleet push failed: {}", String::from_utf8_lossy(&out.stderr));
        self.revision()
    }

    fn status(&self) -> serde_json::Value {
        json(&self.cli(&["fleet", "status", "-o", "json"]))
    }

    fn revision(&self) -> i64 {
        self.status()["revision"].as_i64().unwrap()
    }

    fn reach(&self, i: usize, port: u16) -> bool {
        tcp_ok(&self.lan.hosts[0].ns, self.lan.hosts[i + 1].v4, port)
    }

    /// Host `i` admits exactly `open` of [`PORTS`].
    fn enforces(&self, i: usize, open: &[u16]) -> bool {
        PORTS.iter().all(|p| self.reach(i, *p) == open.contains(p))
    }

    /// Polls until host `i` admits `port`; how long it took.
    fn opens(&self, i: usize, port: u16, within: Duration) -> Duration {
        wait_for(within, || self.reach(i, port))
            .unwrap_or_else(|| panic!("host{i} did not open {port} within {within:?}:\n{}", self.agent(i).log()))
    }

    /// The agent's own view of its fleet source (`ztagent status`).
    fn source(&self, i: usize) -> serde_json::Value {
        json(&self.agent(i).cli(&["status", "-o", "json"]))["policy_source"].clone()
    }

    /// `fleet status`'s entry for host `i`.
    fn host(&self, i: usize) -> serde_json::Value {
        let s = self.status();
        let name = format!("host{i}");
        assert!(s["hosts"].is_object(), "`hosts` is not an object keyed by host: {s}");
        s["hosts"][name.as_str()].clone()
    }

    /// Writes `text` straight to PREFIX/policy through etcd's JSON gateway (past validation).
    fn force(&self, text: &str) {
        let prefix = self.url.rsplit_once("2379/").map(|(_, p)| p).unwrap().to_string();
        let b64 = |s: &str| integration_tests::sh(&["sh", "-c", &format!("printf %s '{s}' | base64 -w0")]);
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&format!("/{prefix}/policy")), b64(text));
        let out = self.mgmt.ns.exec(&[
            "curl",
            "-sf",
            "-X",
            "POST",
            "-d",
            &body,
            &format!("http://{ETCD_ADDR}:2379/v3/kv/put"),
        ]);
        assert!(out.status.success(), "curl put failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn pushed_revisions_reach_every_host_and_broken_ones_are_refused_or_rejected() {
    let mut f = Fleet::new(1);
    let r1 = f.push(&[443]);
    f.start_agent(0);
    f.start_agent(1);
    // Room for two CIDRs per policy (half of 4): the fleet's policies fit, one more does not.
    f.start_agent_with(2, &["--max-cidrs", "4"]);
    for i in 0..3 {
        assert!(f.enforces(i, &[443]), "host{i} does not enforce revision {r1}:\n{}", f.agent(i).log());
        assert_eq!(f.source(i)["fleet_revision"].as_i64(), Some(r1));
        assert_eq!(f.source(i)["connected"].as_bool(), Some(true));
    }
    let ok = wait_for(Duration::from_secs(10), || (0..3).all(|i| f.host(i)["state"] == "up to date"));
    assert!(ok.is_some(), "fleet status: {}", f.status());

    // A new revision, enforced on real traffic at all three hosts.
    let start = Instant::now();
    let r2 = f.push(&[443, 8443]);
    for i in 0..3 {
        f.opens(i, 8443, Duration::from_secs(5));
    }
    eprintln!("revision {r2} enforced at all three hosts {:?} after the push", start.elapsed());
    let ok = wait_for(Duration::from_secs(10), || (0..3).all(|i| f.host(i)["revision"].as_i64() == Some(r2)));
    assert!(ok.is_some(), "fleet status: {}", f.status());

    // A broken revision is refused by `fleet push`, with its position; nothing is written.
    let out = f.push_text(&broken_ports_policy("10.20.2.0/24"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(":6:71:"), "{err}");
    assert_eq!(f.revision(), r2);

    // Forced past validation: every agent rejects it, says so, and keeps enforcing r2.
    f.force(&broken_ports_policy("10.20.2.0/24"));
    let r3 = f.revision();
    assert!(r3 > r2);
    let rejected = wait_for(Duration::from_secs(10), || (0..3).all(|i| f.host(i)["state"] == "rejected"));
    assert!(rejected.is_some(), "not rejected by every host: {}", f.status());
    for i in 0..3 {
        let h = f.host(i);
        assert_eq!((h["revision"].as_i64(), h["rejected"]["revision"].as_i64()), (Some(r2), Some(r3)), "{h}");
        assert!(h["rejected"]["message"].as_str().unwrap().contains(":6:71:"), "{h}");
        assert!(f.source(i)["last_rejection"]["message"].as_str().unwrap().contains("8443/tpc"));
        assert!(f.enforces(i, &[443, 8443]), "host{i} stopped enforcing revision {r2}");
    }
    // The table names them too.
    let table = String::from_utf8_lossy(&f.cli(&["fleet", "status"]).stdout).into_owned();
    assert_eq!(table.matches("rejected").count(), 3, "{table}");

    // A revision too big for host2's maps: applied by the others, rejected by host2 only.
    let big = policy(&[443, 9443]).replace("rules:", "  batch: { cidrs: [10.20.3.0/24] }\nrules:");
    let out = f.push_text(&big, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r4 = f.revision();
    for i in 0..2 {
        f.opens(i, 9443, Duration::from_secs(5));
    }
    let rejected = wait_for(Duration::from_secs(10), || f.host(2)["rejected"]["revision"].as_i64() == Some(r4));
    assert!(rejected.is_some(), "host2 did not reject revision {r4}: {}", f.status());
    assert!(f.host(2)["rejected"]["message"].as_str().unwrap().contains("--max-cidrs"), "{}", f.host(2));
    assert!(f.enforces(2, &[443, 8443]), "host2 stopped enforcing revision {r2}");
    let ok = wait_for(Duration::from_secs(10), || (0..2).all(|i| f.host(i)["state"] == "up to date"));
    assert!(ok.is_some(), "fleet status: {}", f.status());

    // A host that dies leaves the fleet view (its status key's lease runs out).
    f.agents[2] = None;
    let gone = wait_for(Duration::from_secs(30), || f.host(2).is_null());
    assert!(gone.is_some(), "host2 is still listed: {}", f.status());
}

#[test]
fn cut_off_agents_keep_enforcing_and_catch_up_to_the_newest_revision() {
    let mut f = Fleet::new(1);
    f.push(&[443]);
    for i in 0..3 {
        f.start_agent(i);
    }
    let agent_rev =
        |f: &Fleet, i: usize| json(&f.agent(i).cli(&["status", "-o", "json"]))["revision"].as_u64().unwrap();

    // host0 is cut off from etcd (its management link down); two revisions go by.
    let (ns0, link0) = f.mgmt.links[0].clone();
    let cut = |up: &str| integration_tests::sh(&["ip", "-n", &ns0, "link", "set", &link0, up]);
    let before = agent_rev(&f, 0);
    cut("down");
    let down = wait_for(Duration::from_secs(20), || f.source(0)["connected"] == false);
    assert!(down.is_some(), "host0 does not say it is disconnected:\n{}", f.agent(0).log());
    f.push(&[443, 8443]);
    let newest = f.push(&[443, 9443]);
    f.opens(1, 9443, Duration::from_secs(5));
    assert!(f.enforces(0, &[443]), "host0, cut off, does not keep its policy");
    // Back: it converges on the newest revision, in one install (not every intermediate one).
    cut("up");
    f.opens(0, 9443, Duration::from_secs(30));
    assert!(f.enforces(0, &[443, 9443]));
    assert_eq!(f.source(0)["fleet_revision"].as_i64(), Some(newest));
    assert_eq!(agent_rev(&f, 0), before + 1, "host0 installed intermediate revisions:\n{}", f.agent(0).log());

    // etcd stopped: every agent keeps enforcing and says it is disconnected.
    f.etcd.stop();
    for i in 0..3 {
        let down = wait_for(Duration::from_secs(20), || f.source(i)["connected"] == false);
        assert!(down.is_some(), "host{i} does not say it is disconnected:\n{}", f.agent(i).log());
        assert!(f.enforces(i, &[443, 9443]), "host{i} changed enforcement without etcd");
    }
    // An agent restarted while etcd is down starts from its last-known-good.
    let a = f.agents[1].take().unwrap();
    let h = &f.lan.hosts[2];
    let args = ["--policy-source", &f.url, "--fleet-host", "host1"];
    let restarted = a.crash_and_restart_with(&h.ns, &[&h.iface], &args);
    f.agents[1] = Some(restarted);
    assert!(
        f.enforces(1, &[443, 9443]),
        "restarted without etcd, host1 does not enforce its last-known-good:\n{}",
        f.agent(1).log()
    );
    assert_eq!(f.source(1)["connected"].as_bool(), Some(false));

    // etcd back: every agent reconnects and converges on the next push.
    f.etcd.restart();
    let back = wait_for(Duration::from_secs(60), || (0..3).all(|i| f.source(i)["connected"] == true));
    assert!(back.is_some(), "agents did not reconnect:\n{}\n{}", f.agent(1).log(), f.etcd.log());
    let last = f.push(&[10443]);
    for i in 0..3 {
        f.opens(i, 10443, Duration::from_secs(10));
        assert!(!f.reach(i, 443), "host{i} still admits 443");
    }
    let ok = wait_for(Duration::from_secs(10), || (0..3).all(|i| f.host(i)["revision"].as_i64() == Some(last)));
    assert!(ok.is_some(), "fleet status: {}", f.status());
}

#[test]
fn two_pushes_from_the_same_base_cannot_both_win() {
    let f = Fleet::new(1);
    let base = f.push(&[443]);
    let base_s = base.to_string();
    let (a, b) = (policy(&[8443]), policy(&[9443]));
    let (ta, tb) = std::thread::scope(|s| {
        let ta = s.spawn(|| f.push_text(&a, &["--base", &base_s]));
        let tb = s.spawn(|| f.push_text(&b, &["--base", &base_s]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let wins = [&ta, &tb].iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 1, "{:?} / {:?}", String::from_utf8_lossy(&ta.stderr), String::from_utf8_lossy(&tb.stderr));
    let loser = if ta.status.success() { &tb } else { &ta };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("changed since revision {base}")), "{err}");
    let now = f.revision();
    assert!(now > base);
    // A push from a stale base is refused too, and one from the newest is taken.
    assert!(!f.push_text(&a, &["--base", &base_s]).status.success());
    assert!(f.push_text(&a, &["--base", &now.to_string()]).status.success());
}

#[test]
fn a_three_member_cluster_keeps_the_fleet_going_when_a_member_dies() {
    let mut f = Fleet::new(3);
    f.push(&[443]);
    for i in 0..3 {
        f.start_agent(i);
    }
    for i in 0..3 {
        assert!(f.enforces(i, &[443]), "host{i}:\n{}", f.agent(i).log());
    }
    // The first member (the one clients try first) dies.
    f.etcd.kill_member(0);
    let r = wait_for(Duration::from_secs(30), || f.push_text(&policy(&[443, 8443]), &[]).status.success());
    assert!(r.is_some(), "no push through the two members left:\n{}", f.etcd.log());
    for i in 0..3 {
        f.opens(i, 8443, Duration::from_secs(30));
    }
    let newest = f.revision();
    let ok = wait_for(Duration::from_secs(20), || (0..3).all(|i| f.host(i)["revision"].as_i64() == Some(newest)));
    assert!(ok.is_some(), "fleet status: {}", f.status());
}

#[test]
fn with_etcd_authentication_on_the_fleet_takes_a_user_and_password() {
    let mut f = Fleet::new(1);
    // root user and role, then authentication on (etcd's JSON gateway, as etcdctl would).
    for (path, body) in [
        ("auth/role/add", r#"{"name":"root"}"#),
        ("auth/user/add", r#"{"name":"root","password":"s3cret"}"#),
        ("auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("auth/enable", "{}"),
    ] {
        let out =
            f.mgmt.ns.exec(&["curl", "-sf", "-X", "POST", "-d", body, &format!("http://{ETCD_ADDR}:2379/v3/{path}")]);
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let creds = ["--etcd-user", "root", "--etcd-password", "s3cret"];
    refused_without_and_served_with(&mut f, &[&[]], &creds);
}

/// Pushes with each of `without` are refused in one sentence; with `creds` a push, an agent
/// and `fleet status` work.
fn refused_without_and_served_with(f: &mut Fleet, without: &[&[&str]], creds: &[&str]) {
    for flags in without {
        let out = f.push_text(&policy(&[443]), flags);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.trim().lines().count() == 1, "pushed with {flags:?}: {err}");
    }
    let out = f.push_text(&policy(&[443]), creds);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    f.start_agent_with(0, creds);
    assert!(f.enforces(0, &[443]), "host0:\n{}", f.agent(0).log());
    let s = json(&f.cli(&[&["fleet", "status", "-o", "json"][..], creds].concat()));
    assert_eq!(s["hosts"]["host0"]["state"], "up to date", "{s}");
}

#[test]
fn over_tls_with_client_certificates_the_fleet_takes_the_certificate_flags() {
    let certs = EtcdCerts::new();
    let (ca, cert, key) = (certs.path("ca.pem"), certs.path("client.pem"), certs.path("client-key.pem"));
    let creds = ["--etcd-cacert", ca.as_str(), "--etcd-cert", cert.as_str(), "--etcd-key", key.as_str()];
    let mut f = Fleet::with(|mgmt| Etcd::start_tls(mgmt, &certs), &creds);
    // Plain text, or TLS without a client certificate, is refused.
    refused_without_and_served_with(&mut f, &[&[], &creds[..2]], &creds);
}
