//! One file per command; here what the commands that talk to the agent share.
pub mod api;
pub mod check;
pub mod events;
pub mod fleet;
pub mod grant;
pub mod grants;
pub mod inventory;
pub mod k8s;
pub mod policy;
pub mod run;
pub mod status;
pub mod uninstall;

use std::path::Path;

use anyhow::anyhow;
use ztagent::api::{self as control, Reply, Request};

/// One request to the agent; its `Error` reply is an error here.
pub async fn call(socket: &Path, req: &Request) -> anyhow::Result<Reply> {
    match control::call(socket, req).await? {
        Reply::Error { message } => Err(anyhow::Error::msg(message)),
        r => Ok(r),
    }
}

/// A reply that does not answer the request.
pub fn unexpected<T>(r: Reply) -> anyhow::Result<T> {
    Err(anyhow!("the agent gave an unexpected answer: {r:?}"))
}

/// `--since DURATION` as the unix time it names.
pub fn since_of(since: Option<&str>) -> anyhow::Result<Option<f64>> {
    let Some(d) = since else { return Ok(None) };
    let d = ztagent::daemon::grants::parse_duration(d)
        .map_err(|_| anyhow!("--since takes a duration such as 90s, 15m, 2h or 1d (up to 7 days), not `{d}`"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(Some(now.saturating_sub(d).as_secs_f64()))
}
