//! `ztagent grant`: allow a flow for a while.
use std::{path::Path, process::ExitCode};

use ztagent::api::{Reply, Request};

use super::{call, unexpected};
use crate::{
    args::GrantArgs,
    output::{describe_grant, time_of},
};

/// Checked here first (duration, ports, address block), then asked of the agent.
pub async fn grant(socket: &Path, args: GrantArgs) -> anyhow::Result<ExitCode> {
    let GrantArgs { from, to, ports, duration, reason, socket: _ } = args;
    let d = ztagent::daemon::grants::parse_duration(&duration)?;
    ztagent::daemon::grants::ports(&ports)?;
    ztagent::daemon::grants::block(&from)?;
    let req = Request::Grant { from, to, ports, seconds: d.as_secs(), reason };
    match call(socket, &req).await? {
        Reply::Granted { grant, revision } => {
            println!(
                "grant {}: {} until {} (revision {revision})",
                grant.id,
                describe_grant(&grant),
                time_of(grant.expires_at)
            );
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}
