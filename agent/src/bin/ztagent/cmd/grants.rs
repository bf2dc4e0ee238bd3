//! `ztagent grants`: the grants in force, or (--revoke) end one now.
use std::{path::Path, process::ExitCode};

use ztagent::api::{Reply, Request};

use super::{call, unexpected};
use crate::{
    args::{GrantsArgs, Output},
    output::{self, describe_grant, time_of},
};

pub async fn grants(socket: &Path, args: GrantsArgs) -> anyhow::Result<ExitCode> {
    match args.revoke {
        Some(id) => revoke(socket, id).await,
        None => list(socket, args.output.output).await,
    }
}

async fn revoke(socket: &Path, id: u32) -> anyhow::Result<ExitCode> {
    match call(socket, &Request::Revoke { id }).await? {
        Reply::Revoked { grant, revision } => {
            println!("grant {} revoked: {} (revision {revision})", grant.id, describe_grant(&grant));
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}

async fn list(socket: &Path, out: Output) -> anyhow::Result<ExitCode> {
    match call(socket, &Request::Grants).await? {
        Reply::Grants { grants } => {
            if out == Output::Json {
                output::json(&grants)?;
            } else if grants.is_empty() {
                println!("no grants in force");
            } else {
                for g in &grants {
                    println!("grant {:<4} {} until {} ({})", g.id, describe_grant(g), time_of(g.expires_at), g.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}
