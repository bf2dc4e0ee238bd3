//! `ztagent fleet push|status`: policy for a fleet of agents, through etcd.
use std::process::ExitCode;

use anyhow::anyhow;
use ztagent::policy;

use crate::args::{FleetPushArgs, FleetStatusArgs, Output};

/// `fleet push FILE`: validated here, then written as the fleet's next revision.
pub async fn push(args: FleetPushArgs) -> anyhow::Result<ExitCode> {
    let FleetPushArgs { file, etcd, base, auth } = args;
    if let Err(d) = policy::load(&file) {
        eprintln!("{d}");
        return Ok(ExitCode::FAILURE);
    }
    let text = std::fs::read_to_string(&file).map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
    let target = auth.target(&etcd)?;
    let revision = ztagent::sources::etcd::push(&target, &text, base).await?;
    println!("fleet revision {revision} pushed to {}", target.policy_key());
    Ok(ExitCode::SUCCESS)
}

/// `fleet status`: every host's applied revision, and its state against the newest.
pub async fn status(args: FleetStatusArgs) -> anyhow::Result<ExitCode> {
    let target = args.auth.target(&args.etcd)?;
    let s = ztagent::sources::etcd::status(&target).await?;
    if args.output.output == Output::Json {
        // Keyed by host name (`jq '.hosts.node1.state'`); serde_json's map orders them by name.
        let hosts: serde_json::Map<String, serde_json::Value> = s
            .hosts
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).unwrap_or_default();
                v["state"] = s.state(h).into();
                (h.host.clone(), v)
            })
            .collect();
        let v = serde_json::json!({ "revision": s.revision, "sha256": s.sha256, "hosts": hosts });
        println!("{v}");
    } else {
        println!(
            "fleet revision {} (sha256 {}), {} hosts",
            s.revision,
            s.sha256.as_deref().unwrap_or("-"),
            s.hosts.len()
        );
        println!("{:<24} {:>9} {:<11} {:<20} REJECTED", "HOST", "REVISION", "STATE", "SINCE");
        for h in &s.hosts {
            let rejected = h
                .rejected
                .as_ref()
                .map_or("-".into(), |r| format!("{}: {}", r.revision, r.message.lines().next().unwrap_or("")));
            let rev = h.revision.map_or("-".into(), |r| r.to_string());
            println!(
                "{:<24} {:>9} {:<11} {:<20} {rejected}",
                h.host,
                rev,
                s.state(h),
                h.time.get(..19).unwrap_or(&h.time)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
