//! `ztagent check`: the verdict for a flow, and the rule that decides it.
use std::{net::IpAddr, process::ExitCode};

use anyhow::{anyhow, bail};
use ztagent::{
    api::{CheckResult, Flow, Reply, Request},
    daemon, policy,
};

use super::{call, unexpected};
use crate::{
    args::{CheckArgs, Output, Proto},
    output,
};

/// Exit status: 0 allow, 1 deny (an audited denial included: the flow is dropped once the
/// policy is enforced); errors are 2 (in `main`), so that `check` can gate CI.
pub async fn check(socket: &std::path::Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let CheckArgs { src, dst, port, proto, policy: file, output: out, socket: _ } = args;
    let (proto, port) = match (proto, port) {
        (Proto::Icmp, _) => (agent_common::PROTO_ICMP, agent_common::ICMP_ECHO_REQUEST),
        (Proto::Tcp, Some(p)) => (agent_common::PROTO_TCP, p),
        (Proto::Udp, Some(p)) => (agent_common::PROTO_UDP, p),
        (_, None) => bail!("--port is required for tcp and udp"),
    };
    let addresses = (src.parse::<IpAddr>(), dst.parse::<IpAddr>());
    if let (Ok(s), Ok(d)) = addresses
        && s.is_ipv4() != d.is_ipv4()
    {
        bail!("--src and --dst must be of the same address family");
    }
    let result = match file {
        Some(path) => {
            let p = policy::load(&path).map_err(|d| anyhow!("the policy is invalid:\n{d}"))?;
            let compiled = policy::compile(&p);
            let (src, dst) = daemon::resolve(&compiled, None, &src, &dst)?;
            daemon::check(&compiled, &Flow { src, dst, proto, port })
        }
        None => {
            let req = match addresses {
                (Ok(src), Ok(dst)) => Request::Check(Flow { src, dst, proto, port }),
                _ => Request::CheckNamed { src, dst, proto, port },
            };
            match call(socket, &req).await? {
                Reply::Check(r) => r,
                other => return unexpected(other),
            }
        }
    };
    if out.output == Output::Json {
        output::json(&result)?;
    } else {
        println!("{}", check_line(&result, output::colour()));
    }
    Ok(if result.verdict == "allow" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `allow (frontend -> payments) by rule web`, the verdict coloured on a terminal.
fn check_line(r: &CheckResult, colour: bool) -> String {
    let by = r.rule.as_deref().map_or("default action".to_string(), |n| format!("rule {n}"));
    let verdict = match (colour, r.verdict.as_str()) {
        (true, "allow") => output::paint(32, "allow"),
        (true, _) => output::paint(31, "deny"),
        (false, v) => v.to_string(),
    };
    let limit = r.rate_limit.as_deref().map_or(String::new(), |l| format!(", rate limit {l}"));
    let audit = match (r.audit, r.mode.as_str()) {
        (_, "audit") => " [audit mode: not enforced, reported]",
        (true, _) => " [audited: not enforced, reported as would-deny]",
        _ => "",
    };
    let side = |segment: &str, pod: &Option<String>| match pod {
        Some(p) => format!("{segment} {p}"),
        None => segment.to_string(),
    };
    format!(
        "{verdict} ({} -> {}) by {by}{limit}{audit}",
        side(&r.src_segment, &r.src_pod),
        side(&r.dst_segment, &r.dst_pod)
    )
}
