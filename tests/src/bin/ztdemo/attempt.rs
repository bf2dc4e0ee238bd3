//! One attempt: the policy's word (`ztagent check`) and the kernel's deed (real traffic).

use super::{Agent, HOSTS, IpAddr, Lan, Probe, Result, Style, Why, bail, check_args, parse_check};
use anyhow::Context as _;

/// Judged by the running agent, against the policy in force.
pub(crate) fn check_live(agent: &Agent, src: IpAddr, dst: IpAddr, probe: Probe) -> Result<Why> {
    let args = check_args(src, dst, probe);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    parse_check(agent.cli(&args))
}

/// One attempt: the policy's word and the kernel's deed.
pub(crate) struct Attempt {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) dst: IpAddr,
    pub(crate) probe: Probe,
    pub(crate) why: Why,
    pub(crate) got_through: bool,
}

impl Attempt {
    pub(crate) fn run(
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

    pub(crate) fn print(&self, st: Style, problems: &mut Vec<String>, note: &str) {
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
pub(crate) fn counters(agent: &Agent, names: &[&str]) -> Result<u64> {
    let out = agent.cli(&["status", "-o", "json"]);
    if !out.status.success() {
        bail!("ztagent status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let all = v["counters"].as_object().context("no counters in ztagent status")?;
    Ok(names.iter().filter_map(|n| all.get(*n)?.as_u64()).sum())
}

/// Packets an agent has dropped for any reason a policy gives.
pub(crate) fn drops(agent: &Agent) -> Result<u64> {
    counters(agent, &["drop_rule", "drop_default", "drop_revoked"])
}
