//! From observe to enforce: inventory, suggest, enforce with alerts, a grant that ends.

use super::{Agent, BATCH, Duration, FRONTEND, Lan, PAYMENTS, Probe, Result, Style, TempDir, bail, check_live, step};

/// The zero-trust rollout on payments: what the agent saw (`ztagent inventory`), the least
/// policy that allows exactly that (`ztagent policy suggest`), enforced with deviation alerts;
/// then an exception for a few seconds from one address (`ztagent grant --from ADDRESS`) that
/// ends by itself, and the alert about what it let through.
pub(crate) fn observe_to_enforce(
    lan: &Lan,
    agent: &Agent,
    dir: &TempDir,
    st: Style,
    problems: &mut Vec<String>,
) -> Result<()> {
    let (payments, frontend, batch) = (&lan.hosts[PAYMENTS], &lan.hosts[FRONTEND], &lan.hosts[BATCH]);
    let inv = agent.cli(&["inventory"]);
    let text = String::from_utf8_lossy(&inv.stdout).into_owned();
    println!(
        "  ztagent inventory (what payments saw during the steps above; packets and bytes of the allowed flows, both ways):"
    );
    for l in text.lines().filter(|l| l.starts_with("from") || l.contains("payments")).take(12) {
        println!("    {l}");
    }
    let out = agent.cli(&["policy", "suggest"]);
    if !out.status.success() {
        bail!("ztagent policy suggest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("\n  ztagent policy suggest: the least policy that allows exactly what was seen allowed (or would-deny):");
    for l in
        suggested.lines().filter(|l| l.starts_with("# Compared") || l.starts_with("# The base") || l.contains("name:"))
    {
        println!("    {l}");
    }
    // With deviation alerts: their baseline is learned for 3 s from this push on.
    let alerted = if suggested.contains("\nalerts:") {
        suggested.clone()
    } else {
        format!("{suggested}alerts: {{ learnSeconds: 3 }}\n")
    };
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
        problems.push(format!(
            "the suggested policy: frontend tcp/443 reached {reached}, tcp/8099 allowed {}",
            unused.allow
        ));
    }
    step()?;
    // From batch's one address (an address block): batch keeps its identity.
    let from = batch.v4.to_string();
    // Past the alerts' learning period: what the grant lets batch do is new.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(learning.elapsed()));
    let grant = agent.cli(&[
        "grant",
        "--from",
        &from,
        "--to",
        "payments",
        "--port",
        "443/tcp",
        "--for",
        "4s",
        "--reason",
        "demo: a short exception",
    ]);
    if !grant.status.success() {
        bail!("ztagent grant failed: {}", String::from_utf8_lossy(&grant.stderr));
    }
    println!(
        "  ztagent grant --from {from} --to payments --port 443/tcp --for 4s --reason ...   (one address of batch)"
    );
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
        println!(
            "    {} ({}): {}",
            a["reason"].as_str().unwrap_or("?"),
            a["severity"].as_str().unwrap_or("?"),
            a["note"].as_str().unwrap_or("")
        );
    }
    if !alerts.iter().any(|a| a["src_segment"] == "batch") {
        problems.push(format!("no alert about batch's new flow under the grant: {alerts:?}"));
    }
    Ok(())
}
