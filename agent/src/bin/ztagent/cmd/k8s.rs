//! `ztagent k8s translate`: Kubernetes objects -> the native policy the agent would enforce.
use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;
use ztagent::{k8s, kernel::datapath::Limits, policy};

use crate::args::{Format, TranslateArgs};

/// The flattened policy on stdout, warnings and a summary on stderr; diagnostics and a
/// failure when anything cannot be accepted (then nothing on stdout).
pub fn translate(args: &TranslateArgs) -> anyhow::Result<ExitCode> {
    let native = match &args.policy {
        Some(path) => match policy::load(path) {
            Ok(p) => p,
            Err(d) => {
                eprintln!("{d}");
                return Ok(ExitCode::FAILURE);
            }
        },
        None => policy::Policy::default(),
    };
    let objects = match k8s::load_objects(&expand_dirs(&args.files)?) {
        Ok(o) => o,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &objects.warnings {
        eprintln!("{w}");
    }
    let t = k8s::translate(&native, &objects.cluster, &objects.policies)?;
    for w in &t.warnings {
        eprintln!("warning: {w}");
    }
    let summary = policy::compile(&t.policy).summary();
    check_fits(&summary)?;
    let text = match args.output.output {
        Format::Yaml => t.policy.to_yaml(),
        Format::Json => t.policy.to_json(),
    };
    println!("{}", text.trim_end());
    eprintln!(
        "translated {} pods ({} addresses) and {} NetworkPolicies: {summary}",
        objects.cluster.pods.len(),
        t.pod_addresses,
        objects.policies.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The files named, a directory standing for its *.yaml, *.yml and *.json files.
fn expand_dirs(files: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for f in files {
        if f.is_dir() {
            paths.extend(k8s::load_dir(f)?);
        } else {
            paths.push(f.clone());
        }
    }
    Ok(paths)
}

/// Refuses a translated policy that the kernel maps, at their default sizes, cannot hold.
fn check_fits(summary: &policy::Summary) -> anyhow::Result<()> {
    // Each kernel map holds two policies (the one in force and the next).
    let limits = Limits::default();
    let per_slot = [
        ("segment pairs", summary.pairs, limits.pairs / 2, "--max-pairs"),
        ("port entries", summary.port_entries, limits.ports / 2, "--max-port-entries"),
        ("CIDRs", summary.cidrs, limits.cidrs / 2, "--max-cidrs"),
        ("host addresses", summary.hosts, limits.hosts / 2, "--max-cidrs"),
    ];
    for (what, n, max, flag) in per_slot {
        if n > max as usize {
            bail!(
                "the translated policy needs {n} {what}; the kernel maps hold {max} per policy by default (`ztagent run {flag}` sets twice that)"
            );
        }
    }
    if summary.rate_limits > agent_common::MAX_LIMITS as usize {
        bail!(
            "the translated policy needs {} rate limits (one per class of addresses of each limited segment), at most {}",
            summary.rate_limits,
            agent_common::MAX_LIMITS
        );
    }
    Ok(())
}
