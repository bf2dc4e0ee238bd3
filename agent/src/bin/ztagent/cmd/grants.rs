//! `ztagent grants`: the grants in force, or (--revoke) end one now.
use std::{path::Path, process::ExitCode};

use serde::{Serialize, Serializer, ser::SerializeMap};
use ztagent::api::{Grant, Reply, Request};

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
                output::json(&GrantsJson { grants: ById(&grants) })?;
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

/// `grants -o json`: `{"grants": {"ID": {...}}}`, keyed by id (what `--revoke` takes), in id
/// order, times in RFC 3339 (docs/json.md#grants).
#[derive(Serialize)]
struct GrantsJson<'a> {
    grants: ById<'a>,
}

struct ById<'a>(&'a [Grant]);

impl Serialize for ById<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<&Grant> = self.0.iter().collect();
        sorted.sort_by_key(|g| g.id);
        let mut map = s.serialize_map(Some(sorted.len()))?;
        for g in sorted {
            map.serialize_entry(&g.id.to_string(), &GrantJson::of(g))?;
        }
        map.end()
    }
}

/// One grant as `-o json` prints it.
#[derive(Serialize)]
struct GrantJson<'a> {
    id: u32,
    index: u32,
    from: &'a str,
    to: &'a str,
    ports: &'a [String],
    reason: &'a str,
    granted_at: String,
    expires_at: String,
}

impl<'a> GrantJson<'a> {
    fn of(g: &'a Grant) -> Self {
        GrantJson {
            id: g.id,
            index: g.index,
            from: &g.from,
            to: &g.to,
            ports: &g.ports,
            reason: &g.reason,
            granted_at: time_of(g.granted_at),
            expires_at: time_of(g.expires_at),
        }
    }
}
