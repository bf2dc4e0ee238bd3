//! The Kubernetes step: the hosts as pods of a namespace, a NetworkPolicy read from a
//! directory, a label change enforced without a push.

use super::{
    ATTACKER, Agent, Attempt, BATCH, Command, Duration, FRONTEND, Instant, Lan, PAYMENTS, Probe, Result, SHOP_POLICIES,
    Style, TempDir, bail, bin, check_live, shop_pods, step, tcp_ok, wait_for,
};

/// How long the agent may take to enforce a change of its objects directory: a protocol
/// bound (inotify at once, a second or so of settling), generous so that "never" stands out.
pub(crate) const PICKED_UP: Duration = Duration::from_secs(15);

/// Kubernetes on the same hosts: they are the pods of a namespace `shop` (the objects as
/// `kubectl get -o yaml` prints them), and a NetworkPolicy isolates payments and admits the
/// pods labelled `app: frontend` on its port named `https`. A new agent on payments reads them
/// from a directory, with no native policy; then a label change in that directory, and no push,
/// moves the verdicts.
pub(crate) fn kubernetes(lan: &Lan, st: Style, problems: &mut Vec<String>) -> Result<()> {
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
    let first = [
        (FRONTEND, false, Tcp(443)),
        (FRONTEND, true, Tcp(443)),
        (FRONTEND, false, Tcp(8080)),
        (BATCH, false, Tcp(443)),
        (ATTACKER, false, Tcp(443)),
    ];
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
