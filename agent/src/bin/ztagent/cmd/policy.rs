//! `ztagent policy validate|push|get|suggest`: policy files and the policy in force.
use std::{path::Path, process::ExitCode};

use anyhow::anyhow;
use ztagent::{
    api::{Reply, Request},
    policy,
};

use super::{call, since_of, unexpected};
use crate::args::{Format, SuggestArgs};

/// `policy validate FILE`: offline; the problems as FILE:LINE:COL: message.
pub fn validate(file: &Path) -> anyhow::Result<ExitCode> {
    match policy::load(file) {
        Ok(p) => {
            let s = policy::compile(&p).summary();
            println!("{}: valid ({s})", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(d) => {
            eprintln!("{d}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `policy push FILE`: validated here, then installed by the agent.
pub async fn push(socket: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    // Validate locally first, exactly as `policy validate` does (positions relative to
    // the user's file, also for unreadable bytes); the agent validates again (it trusts
    // no client).
    if let Err(d) = policy::load(file) {
        eprintln!("{d}");
        return Ok(ExitCode::FAILURE);
    }
    let source = std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read {}: {e}", file.display()))?;
    let origin = file.display().to_string();
    match call(socket, &Request::Push { origin, source }).await? {
        Reply::Pushed(r) => {
            println!(
                "revision {}: {} segments, {} rules, {} map entries written",
                r.revision, r.segments, r.rules, r.entries
            );
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}

/// `policy get`: the policy in force, as YAML (with its revision as a comment) or JSON.
pub async fn get(socket: &Path, output: Format) -> anyhow::Result<ExitCode> {
    match call(socket, &Request::Get).await? {
        Reply::Policy { revision, policy } => {
            if output == Format::Json {
                println!("{}", serde_json::json!({ "revision": revision, "policy": policy }));
            } else {
                let p = from_agent(&policy.to_string())?;
                println!("# revision: {revision}\n{}", p.to_yaml());
            }
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}

/// `policy suggest`: the least policy allowing what the inventory saw, compared with a base.
pub async fn suggest(socket: &Path, args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let since = since_of(args.since.since.as_deref())?;
    let Reply::Inventory(inventory) = call(socket, &Request::Inventory { since }).await? else {
        return Err(anyhow!("the agent gave an unexpected answer to an inventory request"));
    };
    let base = match args.base {
        Some(path) => policy::load(&path).map_err(|d| anyhow!("the base policy is invalid:\n{d}"))?,
        None => match call(socket, &Request::Get).await? {
            Reply::Policy { policy, .. } => from_agent(&policy.to_string())?,
            other => return unexpected(other),
        },
    };
    let s = ztagent::observe::suggest::suggest(&base, &inventory.entries, args.min_flows);
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    println!("# Compared with the base policy: rules allowing what it denies: {}", list(&s.added));
    println!("# The base's allow rules that allowed nothing in the window: {}", list(&s.unused));
    println!("# The base's deny rules, kept as they are: {}", list(&s.kept_denies));
    for (rule, description) in &s.dropped_descriptions {
        println!("# Dropped with unused rule {rule}, its description: {description}");
    }
    print!("{}", s.text);
    // The HTTP endpoints seen, as comments (an agent without an API inventory has none).
    if let Ok(Reply::ApiInventory(apis)) = call(socket, &Request::ApiInventory).await {
        print!("{}", ztagent::observe::suggest::api_comments(&apis));
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy the agent sent (its JSON text), read as this CLI's model.
fn from_agent(text: &str) -> anyhow::Result<policy::Policy> {
    policy::parse(text, "agent").map_err(|d| anyhow!("the agent sent a policy this CLI cannot read:\n{d}"))
}
