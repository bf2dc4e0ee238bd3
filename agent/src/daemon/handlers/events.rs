//! `events`: the recent events, then (following) the live ones.
use super::super::State;
use crate::{
    api::{EventFilter, server},
    events::{EventHub, Subscription},
    policy::source::diag::suggest,
};

/// A segment name in `filter` that the policy in force does not have (an address block, as
/// grants name their sources, `world` and `*` are always known): an error with the closest
/// name, rather than a stream that stays empty.
pub(super) fn unknown_segment(state: &State, filter: &EventFilter) -> Option<String> {
    let names: &[String] = state.installed.as_ref().map_or(&[], |i| &i.compiled.segment_names);
    if names.is_empty() {
        return None;
    }
    let known = |s: &str| s == "world" || s == "*" || names.iter().any(|n| n == s) || s.parse::<ipnet::IpNet>().is_ok();
    let (flag, name) = filter.segments().find(|(_, s)| !known(s))?;
    let hint = match suggest(name, names.iter().map(String::as_str)) {
        Some(close) => format!("; did you mean `{close}`?"),
        None => format!(" (segments: {})", names.join(", ")),
    };
    Some(format!("{flag}: the policy in force has no segment `{name}`{hint}"))
}

/// Sends the recent events matching `filter`, then (following) the live ones as they come. A
/// client that falls more than `CLIENT_LAG` events behind is told how many it missed and
/// carries on from the newest: it never holds up the reader or other clients.
pub(super) async fn stream_events(
    mut w: tokio::net::unix::OwnedWriteHalf,
    hub: &EventHub,
    follow: bool,
    filter: &EventFilter,
) -> std::io::Result<()> {
    use tokio::{io::AsyncWriteExt, sync::broadcast::error::RecvError};
    let Subscription { history, mut live } = hub.subscribe(filter);
    for r in history {
        server::write_line(&mut w, &*r).await?;
    }
    if !follow {
        return w.shutdown().await;
    }
    loop {
        match live.recv().await {
            Ok(r) if filter.matches(&r) => server::write_line(&mut w, &*r).await?,
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => server::write_line(&mut w, &crate::api::Missed { missed }).await?,
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
