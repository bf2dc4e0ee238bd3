//! `events`: the recent events, then (following) the live ones.
use crate::{
    api::{EventFilter, server},
    events::{EventHub, Subscription},
};

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
