//! `cargo xtask demo`: a throw-away topology of network namespaces (a `payments` server and
//! `frontend`, `batch` and `attacker` clients on one bridge), the agent on the server with the
//! example policy, real traffic, and for every attempt what the kernel did and why
//! (`ztagent check`). Then two clients pinging as fast as each other, one of them held to its
//! rate limit, a policy push that revokes an open connection, the agent's counters, and agents
//! on the clients stopping lateral movement, audit mode, the rollout from observe to enforce,
//! and Kubernetes (pods and a NetworkPolicy as objects in a directory, verdicts out, a label
//! change taking effect without a push). Everything it creates is removed on
//! exit (the harness guards), also when it fails or is interrupted with Ctrl-C.
//!
//! Usage (as root): `ztdemo [POLICY]` (default: examples/policy.yaml). Exit status 0 when the
//! kernel did exactly what the policy says, 1 otherwise.
use std::{
    fs,
    io::{IsTerminal, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use integration_tests::{
    Agent, Lan, Netns, Probe, SHOP_POLICIES, Servers, TempDir, Why, bin, check_args, check_file, parse_check, shop_pods, tcp_ok, wait_for,
};

/// The hosts, in `Lan` order: name, IPv4, IPv6. The first one is the server.
const HOSTS: [(&str, &str, &str); 4] = [
    ("payments", "10.20.2.10", "fd20:2::10"),
    ("frontend", "10.20.1.2", "fd20:1::2"),
    ("batch", "10.20.3.2", "fd20:3::2"),
    ("attacker", "10.20.9.2", "fd20:9::2"),
];
const PAYMENTS: usize = 0;
const FRONTEND: usize = 1;
const BATCH: usize = 2;
const ATTACKER: usize = 3;

const SERVER_TCP: &[u16] = &[443, 8080, 8081, 22];
const SERVER_UDP: &[u16] = &[53];

/// How often the long-lived connection of the push section exchanges a line.
const TALK_PERIOD: Duration = Duration::from_millis(100);
/// An open connection must be cut within this long after a push that revokes it.
const REVOKE_LIMIT: Duration = Duration::from_secs(1);

/// The rate-limit section: echo requests each client sends, one every `FLOOD_INTERVAL`.
const FLOOD_COUNT: usize = 200;
const FLOOD_INTERVAL: Duration = Duration::from_millis(5);
/// How long a client waits for replies after its last request.
const FLOOD_LINGER: Duration = Duration::from_millis(300);
/// How far the limited client's answered pings may be from the bucket's tokens plus the rate
/// times the sending time (timer and clock granularity).
const FLOOD_SLACK: f64 = 2.0;

/// The push section's second policy, used only if the given policy is not the example (the
/// range to remove is not found in it).
const POLICY_V2_FALLBACK: &str = r#"# The demo policy with frontend's 8000-8099/tcp removed.
version: 1
defaultAction: deny
segments:
  frontend: { cidrs: [10.20.1.0/24, "fd20:1::/64"] }
  payments: { cidrs: [10.20.2.10/32, "fd20:2::10/128"] }
  batch:    { cidrs: [10.20.3.0/24, "fd20:3::/64"] }
rules:
  - name: frontend-calls-payments
    from: [frontend]
    to: [payments]
    ports: ["443/tcp", "53/udp", "icmp"]
    action: allow
  - name: batch-pings-payments
    from: [batch]
    to: [payments]
    ports: ["icmp"]
    action: allow
  - name: nobody-reaches-admin-port
    from: ["*"]
    to: [payments]
    ports: ["8081/tcp"]
    action: deny
"#;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (or SIGTERM) stops the demo at the next step, so that the guards still clean up.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn step() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    let policy = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("ztdemo: must run as root (it creates network namespaces and loads BPF programs)");
        return ExitCode::from(2);
    }
    catch_signals();
    let st = Style(std::io::stdout().is_terminal());
    let started = Instant::now();
    // Every guard lives inside `demo`, so all of them are dropped before the check below.
    let result = demo(&policy, st);
    let leftovers = leftovers();
    let mut failed = false;
    match result {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => {
            failed = true;
            println!("\n{}", st.alarm("!!! THE KERNEL AND THE POLICY DISAGREE !!!"));
            for p in &problems {
                println!("{}", st.alarm(&format!("!!! {p}")));
            }
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            failed = true;
            println!("\n{}", st.alarm("!!! interrupted"));
        }
        Err(e) => {
            failed = true;
            println!("\n{}", st.alarm(&format!("!!! the demo stopped: {e:#}")));
        }
    }
    println!("\n{}", st.bold("== Clean-up =="));
    if leftovers.is_empty() {
        println!("  namespaces, agents, BPF pins and temporary files removed; nothing left behind");
    } else {
        failed = true;
        println!("{}", st.alarm(&format!("!!! left behind: {}", leftovers.join(", "))));
    }
    println!("  demo took {:.1} s", started.elapsed().as_secs_f64());
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn demo(policy: &Path, st: Style) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let policy = fs::canonicalize(policy).with_context(|| format!("cannot open the policy {}", policy.display()))?;
    let valid = Command::new(bin("ztagent")).args(["policy", "validate"]).arg(&policy).output()?;
    if !valid.status.success() {
        bail!("the policy is invalid:\n{}", String::from_utf8_lossy(&valid.stderr));
    }

    // ---- 1. Topology ------------------------------------------------------------------
    header(st, 1, "Topology: four hosts (network namespaces) on one bridge");
    let lan = Lan::new(&HOSTS.map(|(_, v4, v6)| (v4, v6)));
    let payments = &lan.hosts[PAYMENTS];
    let _servers = Servers::start(&payments.ns, SERVER_TCP, SERVER_UDP);
    for (i, h) in lan.hosts.iter().enumerate() {
        let segment = if i == PAYMENTS {
            check_file(&policy, lan.hosts[FRONTEND].v4, h.v4, Probe::Icmp)?.dst_segment
        } else {
            check_file(&policy, h.v4, payments.v4, Probe::Icmp)?.src_segment
        };
        let role = if i == PAYMENTS {
            let ports: Vec<String> = SERVER_TCP
                .iter()
                .map(|p| format!("tcp/{p}"))
                .chain(SERVER_UDP.iter().map(|p| format!("udp/{p}")))
                .collect();
            format!("server: {}", ports.join(" "))
        } else {
            "client".to_string()
        };
        println!("  {:<8}  {:<10}  {:<10}  segment {segment:<8}  {role}", HOSTS[i].0, h.v4, h.v6);
    }
    println!("  policy: {}", String::from_utf8_lossy(&valid.stdout).trim());
    step()?;
    let t = Instant::now();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(&policy));
    println!(
        "  ztagent run --iface {} --policy {} on payments: enforcing (XDP ingress + TC egress) after {:.1} s",
        payments.iface,
        policy.file_name().unwrap_or_default().to_string_lossy(),
        t.elapsed().as_secs_f64()
    );
    step()?;

    // ---- 2. Traffic -------------------------------------------------------------------
    header(st, 2, "Traffic to payments: what the kernel did, and why (ztagent check)");
    use Probe::*;
    let plan: &[(usize, bool, &[Probe])] = &[
        (FRONTEND, false, &[Tcp(443), Tcp(8080), Tcp(8081), Tcp(22), Udp(53), Icmp]),
        (FRONTEND, true, &[Tcp(443), Tcp(8081)]),
        (BATCH, false, &[Tcp(443), Tcp(8080), Udp(53), Icmp]),
        (BATCH, true, &[Icmp]),
        (ATTACKER, false, &[Tcp(443), Tcp(8080), Tcp(22), Udp(53), Icmp]),
        (ATTACKER, true, &[Tcp(443)]),
    ];
    let mut cases = Vec::new();
    for &(client, v6, probes) in plan {
        for &p in probes {
            cases.push((client, v6, p));
        }
    }
    // What an operator tailing the event stream sees meanwhile.
    let tail = Tail::start(&agent)?;
    // All probes at once (a denied one waits for its timeout); printed in order.
    let attempts: Vec<Result<Attempt>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(client, v6, probe)| {
                let (lan, policy) = (&lan, &policy);
                s.spawn(move || {
                    Attempt::run(lan, client, PAYMENTS, v6, probe, |src, dst| check_file(policy, src, dst, probe))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
    });
    let (mut allowed, mut denied) = (0, 0);
    let mut last_client = usize::MAX;
    for a in attempts {
        let a = a?;
        if a.from != last_client && last_client != usize::MAX {
            println!();
        }
        last_client = a.from;
        if a.why.allow {
            allowed += 1
        } else {
            denied += 1
        }
        a.print(st, &mut problems, "");
    }
    let verdict = if problems.is_empty() {
        st.green("the kernel did what `ztagent check` said every time")
    } else {
        st.alarm(&format!("{} DISAGREEMENTS between the kernel and `ztagent check`", problems.len()))
    };
    println!("  {} attempts: {allowed} allowed, {denied} denied; {verdict}", allowed + denied);
    // The agent reports what it aggregated within a second; then stop tailing.
    std::thread::sleep(Duration::from_millis(1200));
    let lines = tail.stop();
    println!("\n  meanwhile, `ztagent events -f` (the kernel's event stream) showed {} events:", lines.len());
    for l in &lines {
        println!("    {l}");
    }
    if lines.is_empty() {
        problems.push("the event stream showed nothing during the traffic".into());
    }
    step()?;

    // ---- 3. Rate limits -----------------------------------------------------------------
    header(st, 3, "Rate limits: one identity throttled, another not");
    rate_limits(&lan, &agent, &policy, st, &mut problems)?;
    step()?;

    // ---- 4. Policy push and revocation --------------------------------------------------
    header(st, 4, "Policy push: revoke frontend -> payments:8080 while a connection is open");
    let dir = TempDir::new();
    let source = fs::read_to_string(&policy)?;
    let removed = "\"8000-8099/tcp\", ";
    let v2_text = if source.contains(removed) {
        source.replace(removed, "")
    } else {
        println!("  ({} has no {removed:?}: using the built-in second policy)", policy.display());
        POLICY_V2_FALLBACK.to_string()
    };
    let v2 = dir.file("policy-v2.yaml", &v2_text);
    println!("  new policy {}: frontend-calls-payments loses 8000-8099/tcp, keeps 443/tcp, 53/udp, icmp", v2.display());
    revocation(&lan, &agent, &v2, st, &mut problems)?;
    step()?;
    for probe in [Tcp(8080), Tcp(443)] {
        let live = |src, dst| check_live(&agent, src, dst, probe);
        Attempt::run(&lan, FRONTEND, PAYMENTS, false, probe, live)?.print(st, &mut problems, "");
    }
    println!("\n  ztagent status:");
    let status = agent.cli(&["status"]);
    if !status.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&status.stderr));
    }
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("    {line}");
    }
    step()?;

    // ---- 5. Lateral movement ------------------------------------------------------------
    header(st, 5, "Lateral movement: agents on frontend and batch too (the attacker runs none)");
    // Back to the example policy everywhere.
    agent.push(&policy);
    let client_agents: Vec<Agent> = std::thread::scope(|s| {
        let handles: Vec<_> = [FRONTEND, BATCH]
            .iter()
            .map(|&i| {
                let (h, policy) = (&lan.hosts[i], &policy);
                s.spawn(move || Agent::start(&h.ns, &[&h.iface], Some(policy)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("agent start thread")).collect()
    });
    println!("  ztagent run on frontend and batch with {} (payments back on it too)", policy.display());
    let frontend = &lan.hosts[FRONTEND];
    let _frontend_servers = Servers::start(&frontend.ns, &[443, 8080], &[]);
    println!("  frontend serves tcp/443 and tcp/8080");
    let agents: [(usize, &Agent); 3] = [(PAYMENTS, &agent), (FRONTEND, &client_agents[0]), (BATCH, &client_agents[1])];
    let lateral: &[(usize, usize, bool, Probe)] = &[
        (ATTACKER, FRONTEND, false, Tcp(8080)),
        (ATTACKER, FRONTEND, true, Icmp),
        (BATCH, FRONTEND, false, Tcp(443)),
        (BATCH, FRONTEND, true, Tcp(8080)),
        (FRONTEND, PAYMENTS, true, Tcp(443)),
    ];
    // One at a time, so that the agents' drop counters tell which one dropped it.
    for &(from, to, v6, probe) in lateral {
        step()?;
        let before: Vec<u64> = agents.iter().map(|(_, a)| drops(a)).collect::<Result<_>>()?;
        let a = Attempt::run(&lan, from, to, v6, probe, |src, dst| check_file(&policy, src, dst, probe))?;
        let after: Vec<u64> = agents.iter().map(|(_, a)| drops(a)).collect::<Result<_>>()?;
        let by: Vec<String> = agents
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a > b)
            .map(|((i, _), _)| {
                let side = if *i == to {
                    "ingress"
                } else if *i == from {
                    "egress"
                } else {
                    "?"
                };
                format!("{} agent ({side})", possessive(HOSTS[*i].0))
            })
            .collect();
        let note = if !by.is_empty() {
            format!("  dropped by {}", by.join(", "))
        } else if a.got_through {
            let managed = |i: usize| agents.iter().any(|(j, _)| *j == i);
            let mut passed = Vec::new();
            if managed(from) {
                passed.push(format!("{} egress", possessive(HOSTS[from].0)));
            }
            if managed(to) {
                passed.push(format!("{} ingress", possessive(HOSTS[to].0)));
            }
            format!("  passed {}", passed.join(" and "))
        } else {
            String::new()
        };
        a.print(st, &mut problems, &note);
    }
    step()?;

    // ---- 6. Audit mode ------------------------------------------------------------------
    header(st, 6, "Audit mode: a stricter policy tried out before it is enforced");
    let audit = dir.file("policy-v2-audit.yaml", &format!("mode: audit\n{v2_text}"));
    agent.push(&audit);
    println!("  pushed the policy of step 4 (no 8000-8099/tcp for frontend) with `mode: audit` to payments");
    let tail = Tail::start(&agent)?;
    let passed = integration_tests::tcp_ok(&frontend.ns, payments.v4, 8080);
    let why = check_live(&agent, frontend.v4, payments.v4, Tcp(8080))?;
    let rule = why.rule.as_deref().unwrap_or("default action");
    println!(
        "  frontend -> payments tcp/8080: {}; `ztagent check`: deny by {rule}, in audit mode",
        if passed { "connected" } else { "no answer" }
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = tail.stop();
    let would: Vec<&String> = lines.iter().filter(|l| l.contains("would-deny")).collect();
    for l in &would {
        println!("    {l}");
    }
    let counted = counters(&agent, &["audit_deny"])?;
    println!("  audit_deny counter: {counted} packets passed that enforcing would have dropped");
    if !passed || why.allow || would.is_empty() || counted == 0 {
        problems.push(format!(
            "audit mode: frontend -> payments:8080 passed {passed}, check allow {}, would-deny events {}, audit_deny {counted}",
            why.allow,
            would.len()
        ));
    }
    step()?;

    // ---- 7. From observe to enforce -----------------------------------------------------
    header(st, 7, "From observe to enforce: inventory, the least policy, a time-bound grant, an alert");
    // Payments alone from here: its own policy decides.
    drop(client_agents);
    observe_to_enforce(&lan, &agent, &dir, st, &mut problems)?;
    step()?;

    // ---- 8. Kubernetes --------------------------------------------------------------------
    header(st, 8, "Kubernetes: pods and a NetworkPolicy in, verdicts out; a label change, no push");
    drop(agent);
    kubernetes(&lan, st, &mut problems)?;
    Ok(problems)
}

/// How long the agent may take to enforce a change of its objects directory: a protocol
/// bound (inotify at once, a second or so of settling), generous so that "never" stands out.
const PICKED_UP: Duration = Duration::from_secs(15);

/// Kubernetes on the same hosts: they are the pods of a namespace `shop` (the objects as
/// `kubectl get -o yaml` prints them), and a NetworkPolicy isolates payments and admits the
/// pods labelled `app: frontend` on its port named `https`. A new agent on payments reads them
/// from a directory, with no native policy; then a label change in that directory, and no push,
/// moves the verdicts.
fn kubernetes(lan: &Lan, st: Style, problems: &mut Vec<String>) -> Result<()> {
    use Probe::*;
    let (payments, batch) = (&lan.hosts[PAYMENTS], &lan.hosts[BATCH]);
    let objects = TempDir::new();
    let pods = objects.file("pods.yaml", &shop_pods("frontend", "batch"));
    let policies = objects.file("policies.yaml", SHOP_POLICIES);
    println!("  {}: a v1 List of the pods payments-0, frontend-0 and batch-0 in namespace shop", pods.display());
    println!("    (labels app: payments / frontend / batch, the hosts' addresses; payments names port 443 `https`)");
    println!("  {}: namespace shop, NetworkPolicy payments-from-frontend", policies.display());
    println!("    (pods app=payments admit pods app=frontend on port `https`; the attacker is no pod)");
    let out = Command::new(bin("ztagent")).args(["k8s", "translate"]).arg(&pods).arg(&policies).output()?;
    if !out.status.success() {
        bail!("ztagent k8s translate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let native = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("  ztagent k8s translate pods.yaml policies.yaml (the native policy the agent enforces; its rules):");
    for l in native.lines().filter(|l| l.trim_start().starts_with("- name:") || l.contains("defaultAction")) {
        println!("    {}", l.trim());
    }
    step()?;
    let t = Instant::now();
    let dir = objects.0.to_string_lossy().into_owned();
    let agent = Agent::start_with(&payments.ns, &[&payments.iface], None, &["--k8s-objects", &dir]);
    println!(
        "  ztagent run --iface {} --k8s-objects {dir} on payments (no native policy): enforcing after {:.1} s",
        payments.iface,
        t.elapsed().as_secs_f64()
    );
    // Each printed with the pods `check` names; returned for what the step expects of them.
    let probe_all = |cases: &[(usize, bool, Probe)], problems: &mut Vec<String>| -> Result<Vec<Attempt>> {
        let mut attempts = Vec::new();
        for &(from, v6, probe) in cases {
            let a = Attempt::run(lan, from, PAYMENTS, v6, probe, |s, d| check_live(&agent, s, d, probe))?;
            let pods = format!(
                "  [{} -> {}]",
                a.why.src_pod.as_deref().unwrap_or("no pod"),
                a.why.dst_pod.as_deref().unwrap_or("no pod")
            );
            a.print(st, problems, &pods);
            attempts.push(a);
        }
        Ok(attempts)
    };
    let first = [(FRONTEND, false, Tcp(443)), (FRONTEND, true, Tcp(443)), (FRONTEND, false, Tcp(8080)), (BATCH, false, Tcp(443)), (ATTACKER, false, Tcp(443))];
    probe_all(&first, problems)?;
    step()?;
    objects.file("pods.yaml", &shop_pods("legacy", "frontend"));
    match wait_for(PICKED_UP, || tcp_ok(&batch.ns, payments.v4, 443)) {
        Some(d) => println!(
            "\n  pods.yaml rewritten (frontend-0 now app: legacy, batch-0 app: frontend), nothing pushed: enforced {:.1} s after the write",
            d.as_secs_f64()
        ),
        None => problems.push(format!("the label change was not enforced within {} s", PICKED_UP.as_secs())),
    }
    let after = probe_all(&[(BATCH, false, Tcp(443)), (FRONTEND, false, Tcp(443))], problems)?;
    if after[1].got_through {
        problems.push("after the label change the old frontend still reaches payments".into());
    }
    Ok(())
}

/// The zero-trust rollout on payments: what the agent saw (`ztagent inventory`), the least
/// policy that allows exactly that (`ztagent policy suggest`), enforced with deviation alerts;
/// then an exception for a few seconds from one address (`ztagent grant --from ADDRESS`) that
/// ends by itself, and the alert about what it let through.
fn observe_to_enforce(lan: &Lan, agent: &Agent, dir: &TempDir, st: Style, problems: &mut Vec<String>) -> Result<()> {
    let (payments, frontend, batch) = (&lan.hosts[PAYMENTS], &lan.hosts[FRONTEND], &lan.hosts[BATCH]);
    let inv = agent.cli(&["inventory"]);
    let text = String::from_utf8_lossy(&inv.stdout).into_owned();
    println!("  ztagent inventory (what payments saw during the steps above; packets and bytes of the allowed flows, both ways):");
    for l in text.lines().filter(|l| l.starts_with("from") || l.contains("payments")).take(12) {
        println!("    {l}");
    }
    let out = agent.cli(&["policy", "suggest"]);
    if !out.status.success() {
        bail!("ztagent policy suggest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("\n  ztagent policy suggest: the least policy that allows exactly what was seen allowed (or would-deny):");
    for l in suggested.lines().filter(|l| l.starts_with("# Compared") || l.starts_with("# The base") || l.contains("name:")) {
        println!("    {l}");
    }
    // With deviation alerts: their baseline is learned for 3 s from this push on.
    let alerted = if suggested.contains("\nalerts:") { suggested.clone() } else { format!("{suggested}alerts: {{ learnSeconds: 3 }}\n") };
    let least = dir.file("least.yaml", &alerted);
    agent.push(&least);
    let learning = std::time::Instant::now();
    step()?;
    let web = check_live(agent, frontend.v4, payments.v4, Probe::Tcp(443))?;
    let unused = check_live(agent, frontend.v4, payments.v4, Probe::Tcp(8099))?;
    let reached = integration_tests::tcp_ok(&frontend.ns, payments.v4, 443);
    println!(
        "  pushed it: frontend -> payments tcp/443 {} ({}); tcp/8099, allowed before but never used: {}",
        if reached { st.green("connected") } else { st.alarm("no answer") },
        web.rule.as_deref().unwrap_or("default"),
        if unused.allow { st.alarm("still allowed") } else { st.green("now denied") },
    );
    if !reached || unused.allow {
        problems.push(format!("the suggested policy: frontend tcp/443 reached {reached}, tcp/8099 allowed {}", unused.allow));
    }
    step()?;
    // From batch's one address (an address block): batch keeps its identity.
    let from = batch.v4.to_string();
    // Past the alerts' learning period: what the grant lets batch do is new.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(learning.elapsed()));
    let grant = agent.cli(&["grant", "--from", &from, "--to", "payments", "--port", "443/tcp", "--for", "4s", "--reason", "demo: a short exception"]);
    if !grant.status.success() {
        bail!("ztagent grant failed: {}", String::from_utf8_lossy(&grant.stderr));
    }
    println!("  ztagent grant --from {from} --to payments --port 443/tcp --for 4s --reason ...   (one address of batch)");
    println!("    {}", String::from_utf8_lossy(&grant.stdout).trim());
    let during = integration_tests::tcp_ok(&batch.ns, payments.v4, 443);
    std::thread::sleep(Duration::from_secs(5));
    let after = integration_tests::tcp_ok(&batch.ns, payments.v4, 443);
    println!(
        "  batch -> payments tcp/443 during the grant: {}; after it ended (in the kernel, no push): {}",
        if during { st.green("connected") } else { st.alarm("no answer") },
        if after { st.alarm("still connected") } else { st.green("denied again") },
    );
    if !during || after {
        problems.push(format!("the grant: batch tcp/443 during {during}, after {after}"));
    }
    // The deviation the grant made, as an alert (published within a second or so).
    let mut alerts = Vec::new();
    for _ in 0..50 {
        alerts = agent.events(&["--verdict", "anomaly"]);
        if alerts.iter().any(|a| a["src_segment"] == "batch") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("  ztagent events --verdict anomaly (the least policy with `alerts: {{ learnSeconds: 3 }}`):");
    for a in &alerts {
        println!("    {} ({}): {}", a["reason"].as_str().unwrap_or("?"), a["severity"].as_str().unwrap_or("?"), a["note"].as_str().unwrap_or(""));
    }
    if !alerts.iter().any(|a| a["src_segment"] == "batch") {
        problems.push(format!("no alert about batch's new flow under the grant: {alerts:?}"));
    }
    Ok(())
}

/// The rate-limit section: frontend and batch ping payments equally hard at the same time; the
/// policy limits one of them (in the example, batch) and not the other. What each saw, what
/// the policy says, and what the agent counted must agree.
fn rate_limits(lan: &Lan, agent: &Agent, policy: &Path, st: Style, problems: &mut Vec<String>) -> Result<()> {
    let payments = &lan.hosts[PAYMENTS];
    let IpAddr::V4(dst) = payments.v4 else { bail!("payments has no IPv4 address") };
    // What the policy in force says about each client's pings.
    let mut checks = Vec::new();
    for client in [FRONTEND, BATCH] {
        let args = check_args(lan.hosts[client].v4, payments.v4, Probe::Icmp);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent.cli(&args);
        if !out.status.success() {
            bail!("ztagent check failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ztagent check -o json")?;
        checks.push((client, v));
    }
    let limits: Vec<(usize, &str)> =
        checks.iter().filter_map(|(c, v)| v["rate_limit"].as_str().map(|l| (*c, l))).collect();
    let all_allowed = checks.iter().all(|(_, v)| v["verdict"] == "allow");
    let [(limited, name)] = limits[..] else {
        println!("  (the policy does not rate limit exactly one of frontend's and batch's pings: nothing to compare)");
        return Ok(());
    };
    let parsed = ztagent::policy::load(policy).map_err(|d| anyhow::anyhow!("{d}"))?;
    let spec = parsed.rate_limits.iter().find(|l| l.name == name).and_then(|l| l.packets.map(|p| (p, l.scope)));
    let (Some((spec, scope)), true) = (spec, all_allowed) else {
        println!("  (the rate limit {name} has no packets bucket, or a ping is denied: nothing to compare)");
        return Ok(());
    };
    let per_second = spec.rate as f64 / spec.per.seconds() as f64;
    for (client, v) in &checks {
        let by = v["rule"].as_str().map_or("default allow".to_string(), |r| format!("rule {r}"));
        let limit = match v["rate_limit"].as_str() {
            Some(l) => format!(
                "rate limit {l}: {}/{}, burst {} (scope {})",
                spec.rate,
                spec.per.as_str(),
                spec.burst,
                if scope == ztagent::policy::LimitScope::Address { "address" } else { "segment" }
            ),
            None => "no rate limit".to_string(),
        };
        let revision = v["revision"].as_u64().map(|r| format!(" [revision {r}]")).unwrap_or_default();
        println!(
            "  {:<8} -> {:<8} {:<10}  {:<9}  {}  {by}, {limit}{revision}",
            HOSTS[*client].0,
            HOSTS[PAYMENTS].0,
            payments.v4,
            Probe::Icmp.label(),
            st.green("ALLOW")
        );
    }
    let before = limit_status(agent, name)?;
    let drops_before = counters(agent, &["drop_rate_limit"])?;
    // Address scope has no shared bucket to read: it starts full for a quiet address.
    let tokens = before["packet_tokens"].as_f64().unwrap_or(spec.burst as f64);
    let span = (FLOOD_INTERVAL * (FLOOD_COUNT as u32 - 1)).as_secs_f64();
    if tokens + per_second * span >= FLOOD_COUNT as f64 {
        println!(
            "  ({name} admits {FLOOD_COUNT} pings in {span:.1} s: the flood would stay within it, nothing to compare)"
        );
        return Ok(());
    }
    println!(
        "  both send {FLOOD_COUNT} echo requests at once, one every {} ms; {name} holds {tokens:.1} tokens now",
        FLOOD_INTERVAL.as_millis()
    );
    let clients = [FRONTEND, BATCH];
    let sockets = clients.iter().map(|&c| raw_icmp(&lan.hosts[c].ns)).collect::<Result<Vec<_>>>()?;
    let start = Instant::now() + Duration::from_millis(50);
    let floods: Vec<Flood> = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .zip(clients)
            .map(|(fd, c)| {
                let id = (std::process::id() as u16).wrapping_add(c as u16);
                s.spawn(move || flood(fd, dst, id, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ping thread")).collect::<std::io::Result<_>>()
    })?;
    let after = limit_status(agent, name)?;
    let drops_after = counters(agent, &["drop_rate_limit"])?;
    let mut expected = 0.0;
    for (&client, f) in clients.iter().zip(&floods) {
        let secs = f.took.as_secs_f64();
        let note = if client == limited {
            // One packet per whole token: what the bucket held, plus what the rate refilled.
            expected = (tokens + per_second * secs).floor().min(f.sent as f64);
            format!("rate limit {name}: {expected} expected ({tokens:.1} tokens + {per_second}/s x {secs:.3} s)")
        } else {
            format!("no rate limit: all {} expected", f.sent)
        };
        println!(
            "  {:<8} -> {:<8} {:<10}  {:<9}  sent {} in {secs:.2} s, answered {:>3}  {note}",
            HOSTS[client].0,
            HOSTS[PAYMENTS].0,
            payments.v4,
            Probe::Icmp.label(),
            f.sent,
            f.answered
        );
    }
    println!("\n  ztagent status:");
    let status = agent.cli(&["status"]);
    if !status.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&status.stderr));
    }
    let text = String::from_utf8_lossy(&status.stdout);
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&format!("rate limit {name} ")));
    if let Some(first) = lines.next() {
        println!("    {first}");
        for l in lines.take_while(|l| l.starts_with("  ")) {
            println!("    {l}");
        }
    }
    let delta = |k: &str| after[k].as_u64().unwrap_or(0).saturating_sub(before[k].as_u64().unwrap_or(0));
    let (admitted, dropped) = (delta("packets_passed"), delta("packets_dropped"));
    let drop_counter = drops_after.saturating_sub(drops_before);
    println!("  during the flood: {admitted} admitted, {dropped} dropped by {name}; drop_rate_limit +{drop_counter}");

    let (held, free) = if limited == clients[0] { (0, 1) } else { (1, 0) };
    let (held_name, free_name) = (HOSTS[clients[held]].0, HOSTS[clients[free]].0);
    let (held, free) = (&floods[held], &floods[free]);
    let mut msgs = Vec::new();
    if free.answered != free.sent {
        msgs.push(format!(
            "{free_name} has no rate limit but only {} of its {} pings were answered",
            free.answered, free.sent
        ));
    }
    if held.answered >= held.sent || dropped == 0 {
        msgs.push(format!(
            "{held_name} was NOT limited by {name}: {} of {} pings answered, {dropped} dropped",
            held.answered, held.sent
        ));
    } else if (held.answered as f64 - expected).abs() > FLOOD_SLACK {
        msgs.push(format!(
            "{name} let {} of {held_name}'s pings through, the limit allows {expected} (+/- {FLOOD_SLACK})",
            held.answered
        ));
    }
    if admitted != held.answered as u64 || dropped != (held.sent - held.answered) as u64 || drop_counter != dropped {
        msgs.push(format!(
            "the agent counted {admitted} admitted and {dropped} dropped (drop_rate_limit +{drop_counter}), {held_name} saw {} of {} answered",
            held.answered, held.sent
        ));
    }
    if msgs.is_empty() {
        println!(
            "  => {} {held_name} got {} of {} through ({tokens:.0} tokens, then {per_second}/s for {:.1} s); {free_name}, not limited, {} of {}",
            st.green("THROTTLED:"),
            held.answered,
            held.sent,
            held.took.as_secs_f64(),
            free.answered,
            free.sent
        );
    }
    for m in msgs {
        println!("  {}", st.alarm(&format!("!!! {m}")));
        problems.push(m);
    }
    Ok(())
}

/// A rate limit's entry in `ztagent status -o json`.
fn limit_status(agent: &Agent, name: &str) -> Result<serde_json::Value> {
    let out = agent.cli(&["status", "-o", "json"]);
    if !out.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let limits = v["limits"].as_array().context("no limits in ztagent status")?;
    limits
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .with_context(|| format!("no rate limit {name} in ztagent status"))
}

/// A raw ICMP socket opened in `ns` (it stays there whichever thread uses it).
fn raw_icmp(ns: &Netns) -> Result<OwnedFd> {
    ns.run(|| {
        // SAFETY: socket has no preconditions; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
    })
    .context("cannot open a raw ICMP socket")
}

/// What one client's flood of pings saw.
struct Flood {
    sent: usize,
    answered: usize,
    /// From the first request to the last.
    took: Duration,
}

/// Sends `FLOOD_COUNT` echo requests (ICMP id `id`) to `dst`, the first at `start`, then one
/// every `FLOOD_INTERVAL`, and counts the distinct replies until `FLOOD_LINGER` after the last.
fn flood(fd: &OwnedFd, dst: Ipv4Addr, id: u16, start: Instant) -> std::io::Result<Flood> {
    let mut answered = [false; FLOOD_COUNT];
    let (mut sent, mut first, mut last) = (0usize, start, start);
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
        sin_zero: [0; 8],
    };
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if sent < FLOOD_COUNT && now >= start + FLOOD_INTERVAL * sent as u32 {
            let mut pkt = [0u8; 64];
            pkt[0] = 8; // echo request
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
            pkt[8..16].copy_from_slice(b"ztdemo!!");
            let sum = icmp_checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: pkt and to outlive the call; the lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if sent == 0 {
                first = now;
            }
            last = now;
            sent += 1;
            continue;
        }
        let done = sent == FLOOD_COUNT;
        if done && answered.iter().all(|a| *a) {
            break;
        }
        let deadline = if done { last + FLOOD_LINGER } else { start + FLOOD_INTERVAL * sent as u32 };
        if now >= deadline {
            if done {
                break;
            }
            continue;
        }
        let wait = (deadline - now).as_micros().div_ceil(1000) as libc::c_int;
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait) };
        loop {
            // SAFETY: buf outlives the call; its length is given.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            // An IPv4 packet: header, then the ICMP echo reply (type 0) with our id.
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl + 8 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_ICMP as u8 || p[12..16] != dst.octets() {
                continue;
            }
            let icmp = &p[ihl..];
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && seq < FLOOD_COUNT {
                answered[seq] = true;
            }
        }
    }
    Ok(Flood { sent, answered: answered.iter().filter(|a| **a).count(), took: last - first })
}

/// The Internet checksum of an ICMP message (its checksum field zero).
fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The push section's measured part: an open connection, the push, and when it was cut.
fn revocation(lan: &Lan, agent: &Agent, v2: &Path, st: Style, problems: &mut Vec<String>) -> Result<()> {
    let (frontend, payments) = (&lan.hosts[FRONTEND], &lan.hosts[PAYMENTS]);
    let dst = SocketAddr::new(payments.v4, 8080);
    // A socket opened in the frontend namespace stays there whichever thread uses it.
    let mut stream = frontend
        .ns
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(1)))
        .context("frontend cannot connect to payments:8080 under the first policy")?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut hi = [0u8; 3];
    stream.read_exact(&mut hi).context("no greeting from payments:8080")?;
    let log = Arc::new(Mutex::new(Talk::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || talk(stream, &stop, &log))
    };
    let echoed = |log: &Mutex<Talk>| log.lock().unwrap().echoed.iter().flatten().count();
    let deadline = Instant::now() + Duration::from_secs(3);
    while echoed(&log) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sent, ok) = {
        let l = log.lock().unwrap();
        (l.sent.len(), l.echoed.iter().flatten().count())
    };
    println!(
        "  frontend -> payments {dst}: connected; a line every {} ms, {ok} of {sent} echoed so far",
        TALK_PERIOD.as_millis()
    );
    let t0 = Instant::now();
    let pushed = agent.push(v2);
    let push_took = t0.elapsed();
    println!("  ztagent policy push: {} ({} ms)", pushed.trim(), push_took.as_millis());
    std::thread::sleep(REVOKE_LIMIT + Duration::from_millis(600));
    stop.store(true, Ordering::SeqCst);
    let _ = talker.join();
    let end = Instant::now();
    let l = log.lock().unwrap();
    let ms = |t: Instant| -> i128 {
        if t >= t0 { t.duration_since(t0).as_millis() as i128 } else { -(t0.duration_since(t).as_millis() as i128) }
    };
    if ok == 0 {
        problems.push("the connection to payments:8080 exchanged nothing before the push".into());
        println!("  {}", st.alarm("!!! nothing was echoed before the push"));
        return Ok(());
    }
    // TCP delivers in order: every line after the last echoed one went unanswered.
    let last = l.echoed.iter().rposition(Option::is_some).unwrap_or(0);
    let first_lost = last + 1;
    let settled = end - Duration::from_millis(300); // lines younger than this may still be echoed
    match l.sent.get(first_lost) {
        Some(&t) if t <= settled => {
            let silent = end.duration_since(t);
            let unanswered = l.sent.len() - first_lost;
            let cut = ms(t);
            println!(
                "  last echo: line {last} (sent at {:+} ms); line {first_lost} (sent at {cut:+} ms) and all {} after it: no answer for {:.1} s",
                ms(l.sent[last]),
                unanswered - 1,
                silent.as_secs_f64()
            );
            if let Some(e) = &l.error {
                println!("  (the client socket reported: {e})");
            }
            if cut >= 0 && cut as u128 <= REVOKE_LIMIT.as_millis() {
                println!(
                    "  => {} the established connection was cut within {cut} ms of the push (limit {} ms); drop_revoked: {}",
                    st.green("REVOKED:"),
                    REVOKE_LIMIT.as_millis(),
                    counters(agent, &["drop_revoked"])?
                );
            } else {
                let msg = format!(
                    "the established connection was cut {cut} ms after the push (limit {} ms)",
                    REVOKE_LIMIT.as_millis()
                );
                println!("  {}", st.alarm(&format!("!!! {msg}")));
                problems.push(msg);
            }
        }
        _ => {
            let msg = format!(
                "the established connection to payments:8080 was NOT cut: line {last} (sent at {:+} ms after the push) was still echoed",
                ms(l.sent[last])
            );
            println!("  {}", st.alarm(&format!("!!! {msg}")));
            problems.push(msg);
        }
    }
    Ok(())
}

/// What the talker thread saw: when each line was sent, and when its echo came back.
#[derive(Default)]
struct Talk {
    sent: Vec<Instant>,
    echoed: Vec<Option<Instant>>,
    error: Option<String>,
}

/// Sends "line N" every `TALK_PERIOD` and records the echoes, until `stop`.
fn talk(mut s: TcpStream, stop: &AtomicBool, log: &Mutex<Talk>) {
    let mut next = Instant::now();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next {
            let seq = log.lock().unwrap().sent.len();
            if let Err(e) = s.write_all(format!("line {seq}\n").as_bytes()) {
                log.lock().unwrap().error = Some(e.to_string());
                return;
            }
            let mut l = log.lock().unwrap();
            l.sent.push(now);
            l.echoed.push(None);
            next += TALK_PERIOD;
            continue;
        }
        let wait = (next - now).min(Duration::from_millis(50)).max(Duration::from_millis(1));
        let _ = s.set_read_timeout(Some(wait));
        match s.read(&mut chunk) {
            Ok(0) => {
                log.lock().unwrap().error = Some("closed by payments".into());
                return;
            }
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let seq = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|l| l.trim().strip_prefix("line "))
                        .and_then(|n| n.parse::<usize>().ok());
                    let mut l = log.lock().unwrap();
                    if let Some(slot) = seq.and_then(|n| l.echoed.get_mut(n)) {
                        *slot = Some(Instant::now());
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                log.lock().unwrap().error = Some(e.to_string());
                return;
            }
        }
    }
}

/// Judged by the running agent, against the policy in force.
fn check_live(agent: &Agent, src: IpAddr, dst: IpAddr, probe: Probe) -> Result<Why> {
    let args = check_args(src, dst, probe);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    parse_check(agent.cli(&args))
}

/// One attempt: the policy's word and the kernel's deed.
struct Attempt {
    from: usize,
    to: usize,
    dst: IpAddr,
    probe: Probe,
    why: Why,
    got_through: bool,
}

impl Attempt {
    fn run(
        lan: &Lan,
        from: usize,
        to: usize,
        v6: bool,
        probe: Probe,
        check: impl FnOnce(IpAddr, IpAddr) -> Result<Why>,
    ) -> Result<Attempt> {
        let (src, dst) = (&lan.hosts[from], &lan.hosts[to]);
        let (s, d) = if v6 { (src.v6, dst.v6) } else { (src.v4, dst.v4) };
        let why = check(s, d)?;
        let got_through = probe.observe(&src.ns, d);
        Ok(Attempt { from, to, dst: d, probe, why, got_through })
    }

    fn print(&self, st: Style, problems: &mut Vec<String>, note: &str) {
        let observed = match (self.got_through, self.probe) {
            (false, _) => "no answer",
            (true, Probe::Tcp(_)) => "connected",
            (true, _) => "answered",
        };
        let verdict = if self.why.allow { st.green("ALLOW") } else { st.red("DENY ") };
        let by = match (&self.why.rule, self.why.allow) {
            (Some(r), _) => format!("rule {r}"),
            (None, true) => "default allow".into(),
            (None, false) => "default deny".into(),
        };
        let revision = self.why.revision.map(|r| format!(" [revision {r}]")).unwrap_or_default();
        println!(
            "  {:<8} -> {:<8} {:<10}  {:<9}  {observed:<9}  {verdict}  {by} ({} -> {}){revision}{note}",
            HOSTS[self.from].0,
            HOSTS[self.to].0,
            self.dst,
            self.probe.label(),
            self.why.src_segment,
            self.why.dst_segment,
        );
        if self.got_through != self.why.allow {
            let msg = format!(
                "MISMATCH: {} -> {} {} {}: the kernel {}, `ztagent check` says {}",
                HOSTS[self.from].0,
                HOSTS[self.to].0,
                self.dst,
                self.probe.label(),
                if self.got_through { "let it through" } else { "dropped it" },
                if self.why.allow { "allow" } else { "deny" },
            );
            println!("  {}", st.alarm(&format!("!!! {msg} !!!")));
            problems.push(msg);
        }
    }
}

/// The sum of an agent's packet counters named in `names` (`ztagent status -o json`).
fn counters(agent: &Agent, names: &[&str]) -> Result<u64> {
    let out = agent.cli(&["status", "-o", "json"]);
    if !out.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let all = v["counters"].as_object().context("no counters in ztagent status")?;
    Ok(names.iter().filter_map(|n| all.get(*n)?.as_u64()).sum())
}

/// Packets an agent has dropped for any reason a policy gives.
fn drops(agent: &Agent) -> Result<u64> {
    counters(agent, &["drop_rule", "drop_default", "drop_revoked"])
}

/// What this process created and did not remove (names from `integration_tests::unique`).
fn leftovers() -> Vec<String> {
    let tag = format!("{}x", std::process::id() % 100_000);
    let mut left = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&netns).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("zs{tag}")) || name.starts_with(&format!("zh{tag}")) {
            left.push(format!("netns {name}"));
        }
    }
    for (dir, prefix) in [(PathBuf::from("/sys/fs/bpf"), "zt-test-"), (std::env::temp_dir(), "ztagent-test-")] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{prefix}{tag}")) {
                left.push(e.path().display().to_string());
            }
        }
    }
    left
}

fn possessive(name: &str) -> String {
    if name.ends_with('s') { format!("{name}'") } else { format!("{name}'s") }
}

fn header(st: Style, n: u32, title: &str) {
    println!("\n{}", st.bold(&format!("== {n}. {title} ==")));
}

/// ANSI colours, only when stdout is a terminal.
#[derive(Clone, Copy)]
struct Style(bool);

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.0 { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn green(self, s: &str) -> String {
        self.paint("32", s)
    }
    fn red(self, s: &str) -> String {
        self.paint("31", s)
    }
    fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }
    fn alarm(self, s: &str) -> String {
        self.paint("1;31", s)
    }
}

/// `ztagent events -f` in the background, as an operator would tail it. Killed (by its pid) and
/// reaped on stop or drop.
struct Tail {
    child: std::process::Child,
    reader: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Tail {
    fn start(agent: &Agent) -> Result<Tail> {
        let mut child = Command::new(bin("ztagent"))
            .arg("--socket")
            .arg(&agent.socket)
            .args(["events", "-f"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start ztagent events -f")?;
        let out = child.stdout.take().context("no stdout")?;
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out).lines().map_while(Result::ok).collect()
        });
        Ok(Tail { child, reader: Some(reader) })
    }

    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.take().and_then(|r| r.join().ok()).unwrap_or_default()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
