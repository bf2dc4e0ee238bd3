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
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::fd::OwnedFd,
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
    Agent, Lan, Netns, Probe, SHOP_POLICIES, Servers, TempDir, Why, bin, check_args, check_file, parse_check,
    shop_pods, tcp_ok, wait_for,
};

mod attempt;
mod kubernetes;
mod rate_limits;
mod revocation;
mod rollout;
mod terminal;

use attempt::*;
use kubernetes::*;
use rate_limits::*;
use revocation::*;
use rollout::*;
use terminal::*;

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

    let (lan, _servers, agent) = topology(&policy, &String::from_utf8_lossy(&valid.stdout), st)?;
    traffic(&lan, &agent, &policy, st, &mut problems)?;

    // ---- 3. Rate limits -----------------------------------------------------------------
    header(st, 3, "Rate limits: one identity throttled, another not");
    rate_limits(&lan, &agent, &policy, st, &mut problems)?;
    step()?;

    let dir = TempDir::new();
    let v2_text = push(&lan, &agent, &policy, &dir, st, &mut problems)?;

    let (client_agents, _frontend_servers) = lateral(&lan, &agent, &policy, st, &mut problems)?;

    audit(&lan, &agent, &dir, &v2_text, st, &mut problems)?;

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

/// Step 1: the hosts, the server, the policy's segments, and the agent on payments (with the
/// servers, which must live as long as the demo).
fn topology(policy: &Path, validated: &str, st: Style) -> Result<(Lan, Servers, Agent)> {
    // ---- 1. Topology ------------------------------------------------------------------
    header(st, 1, "Topology: four hosts (network namespaces) on one bridge");
    let lan = Lan::new(&HOSTS.map(|(_, v4, v6)| (v4, v6)));
    let payments = &lan.hosts[PAYMENTS];
    let servers = Servers::start(&payments.ns, SERVER_TCP, SERVER_UDP);
    for (i, h) in lan.hosts.iter().enumerate() {
        let segment = if i == PAYMENTS {
            check_file(policy, lan.hosts[FRONTEND].v4, h.v4, Probe::Icmp)?.dst_segment
        } else {
            check_file(policy, h.v4, payments.v4, Probe::Icmp)?.src_segment
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
    println!("  policy: {}", validated.trim());
    step()?;
    let t = Instant::now();
    let agent = Agent::start(&payments.ns, &[&payments.iface], Some(policy));
    println!(
        "  ztagent run --iface {} --policy {} on payments: enforcing (XDP ingress + TC egress) after {:.1} s",
        payments.iface,
        policy.file_name().unwrap_or_default().to_string_lossy(),
        t.elapsed().as_secs_f64()
    );
    step()?;

    Ok((lan, servers, agent))
}

/// Step 2: traffic to payments from every client, each attempt judged by `ztagent check` too,
/// while the event stream is tailed.
fn traffic(lan: &Lan, agent: &Agent, policy: &Path, st: Style, problems: &mut Vec<String>) -> Result<()> {
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
    let tail = Tail::start(agent)?;
    // All probes at once (a denied one waits for its timeout); printed in order.
    let attempts: Vec<Result<Attempt>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(client, v6, probe)| {
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
        a.print(st, problems, "");
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

    Ok(())
}

/// Step 4: a push that revokes an open connection; returns the second policy's text.
fn push(
    lan: &Lan,
    agent: &Agent,
    policy: &Path,
    dir: &TempDir,
    st: Style,
    problems: &mut Vec<String>,
) -> Result<String> {
    use Probe::*;
    // ---- 4. Policy push and revocation --------------------------------------------------
    header(st, 4, "Policy push: revoke frontend -> payments:8080 while a connection is open");
    let source = fs::read_to_string(policy)?;
    let removed = "\"8000-8099/tcp\", ";
    let v2_text = if source.contains(removed) {
        source.replace(removed, "")
    } else {
        println!("  ({} has no {removed:?}: using the built-in second policy)", policy.display());
        POLICY_V2_FALLBACK.to_string()
    };
    let v2 = dir.file("policy-v2.yaml", &v2_text);
    println!("  new policy {}: frontend-calls-payments loses 8000-8099/tcp, keeps 443/tcp, 53/udp, icmp", v2.display());
    revocation(lan, agent, &v2, st, problems)?;
    step()?;
    for probe in [Tcp(8080), Tcp(443)] {
        let live = |src, dst| check_live(agent, src, dst, probe);
        Attempt::run(lan, FRONTEND, PAYMENTS, false, probe, live)?.print(st, problems, "");
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

    Ok(v2_text)
}

/// Step 5: agents on frontend and batch too; lateral attempts, and which agent dropped each.
/// Returns the client agents and frontend's servers, which live on for the later steps.
fn lateral(
    lan: &Lan,
    agent: &Agent,
    policy: &Path,
    st: Style,
    problems: &mut Vec<String>,
) -> Result<(Vec<Agent>, Servers)> {
    use Probe::*;
    // ---- 5. Lateral movement ------------------------------------------------------------
    header(st, 5, "Lateral movement: agents on frontend and batch too (the attacker runs none)");
    // Back to the example policy everywhere.
    agent.push(policy);
    let client_agents: Vec<Agent> = std::thread::scope(|s| {
        let handles: Vec<_> = [FRONTEND, BATCH]
            .iter()
            .map(|&i| {
                let h = &lan.hosts[i];
                s.spawn(move || Agent::start(&h.ns, &[&h.iface], Some(policy)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("agent start thread")).collect()
    });
    println!("  ztagent run on frontend and batch with {} (payments back on it too)", policy.display());
    let frontend = &lan.hosts[FRONTEND];
    let frontend_servers = Servers::start(&frontend.ns, &[443, 8080], &[]);
    println!("  frontend serves tcp/443 and tcp/8080");
    let agents: [(usize, &Agent); 3] = [(PAYMENTS, agent), (FRONTEND, &client_agents[0]), (BATCH, &client_agents[1])];
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
        let a = Attempt::run(lan, from, to, v6, probe, |src, dst| check_file(policy, src, dst, probe))?;
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
        a.print(st, problems, &note);
    }
    step()?;

    Ok((client_agents, frontend_servers))
}

/// Step 6: the second policy in audit mode: what it would deny passes, reported and counted.
fn audit(lan: &Lan, agent: &Agent, dir: &TempDir, v2_text: &str, st: Style, problems: &mut Vec<String>) -> Result<()> {
    use Probe::*;
    let (payments, frontend) = (&lan.hosts[PAYMENTS], &lan.hosts[FRONTEND]);
    // ---- 6. Audit mode ------------------------------------------------------------------
    header(st, 6, "Audit mode: a stricter policy tried out before it is enforced");
    let audit = dir.file("policy-v2-audit.yaml", &format!("mode: audit\n{v2_text}"));
    agent.push(&audit);
    println!("  pushed the policy of step 4 (no 8000-8099/tcp for frontend) with `mode: audit` to payments");
    let tail = Tail::start(agent)?;
    let passed = integration_tests::tcp_ok(&frontend.ns, payments.v4, 8080);
    let why = check_live(agent, frontend.v4, payments.v4, Tcp(8080))?;
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
    let counted = counters(agent, &["audit_deny"])?;
    println!("  audit_deny counter: {counted} packets passed that enforcing would have dropped");
    if !passed || why.allow || would.is_empty() || counted == 0 {
        problems.push(format!(
            "audit mode: frontend -> payments:8080 passed {passed}, check allow {}, would-deny events {}, audit_deny {counted}",
            why.allow,
            would.len()
        ));
    }
    step()?;

    Ok(())
}
