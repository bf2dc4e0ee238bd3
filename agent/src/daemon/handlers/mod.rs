//! The control socket's requests, one handler each: [`push`], [`grant`] (grant, revoke, and
//! the grants that end by themselves), [`status`], [`check`] (and `get`), [`events`]
//! (streamed); `grants` and `inventory` are one line each.
use std::sync::Arc;

use tokio::net::UnixListener;

use super::{Shared, lock};
use crate::api::{Reply, Request, auth::Access, server};

pub(super) mod check;
mod events;
pub(super) mod grant;
mod push;
mod status;

/// Serves the control socket until SIGINT or SIGTERM.
pub(super) async fn accept_until_stopped(
    listener: &UnixListener,
    shared: &Shared,
    access: &Arc<Access>,
    term: &mut tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (shared, access) = (shared.clone(), access.clone());
                    tokio::spawn(async move { serve(stream, shared, &access).await });
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
}

async fn serve(stream: tokio::net::UnixStream, shared: Shared, access: &Access) {
    if let Err(e) = access.check(&stream) {
        tracing::warn!("refused a control connection: {e}");
        let _ = server::write_reply(stream, &Reply::Error { message: e.to_string() }).await;
        return;
    }
    let (read, write) = stream.into_split();
    let reply = match server::read_request(read).await {
        Ok(Request::Events { follow, filter }) => {
            let (hub, unknown) = {
                let state = lock(&shared);
                (state.hub.clone(), events::unknown_segment(&state, &filter))
            };
            if let Some(message) = unknown {
                let _ = server::write_reply(write, &Reply::Error { message }).await;
                return;
            }
            if let Err(e) = events::stream_events(write, &hub, follow, &filter).await {
                tracing::debug!("events client went away: {e}");
            }
            return;
        }
        Ok(req) => {
            let shared = shared.clone();
            let large = matches!(&req, Request::Push { source, .. } if source.len() > LARGE_REQUEST);
            // Map writes are blocking syscalls: keep them off the async workers.
            let reply = tokio::task::spawn_blocking(move || handle(req, &shared))
                .await
                .unwrap_or_else(|e| Reply::Error { message: format!("internal error: {e}") });
            if large {
                release_memory();
            }
            reply
        }
        Err(e) => {
            // Possibly a request over the size limit, read up to it.
            release_memory();
            Reply::Error { message: e.to_string() }
        }
    };
    if let Err(e) = server::write_reply(write, &reply).await {
        tracing::debug!("client went away: {e}");
    }
}

/// A push this large leaves freed memory behind worth giving back (see [`release_memory`]).
const LARGE_REQUEST: usize = 1 << 20;

/// Gives the memory a large request used back to the system. Parsing a 20 MB policy takes a
/// few hundred MB, and glibc keeps what is freed in its heaps otherwise: measured, 258 MB kept
/// after the hostile-input corpus.
fn release_memory() {
    // SAFETY: malloc_trim only returns the allocator's own free memory to the system.
    unsafe { libc::malloc_trim(0) };
}

fn handle(req: Request, shared: &Shared) -> Reply {
    match req {
        // Parsed and compiled before taking the state lock: a large policy must not keep
        // `status` and other clients waiting.
        Request::Push { origin, source } => push::push(shared, &origin, &source),
        Request::Inventory { since } => {
            // The inventory as of now: the flows' counters read first (outside the state lock).
            super::tasks::count_flows(shared, true);
            let state = lock(shared);
            Reply::Inventory(state.inventory.lock().unwrap_or_else(|p| p.into_inner()).list(since))
        }
        req => {
            let mut state = lock(shared);
            match req {
                Request::Grant { from, to, ports, seconds, reason } => {
                    grant::give(&mut state, from, to, ports, seconds, reason)
                }
                Request::Grants => Reply::Grants { grants: state.grants.grants.clone() },
                Request::Revoke { id } => grant::revoke(&mut state, id),
                Request::Get => check::get(&state),
                Request::Check(flow) => check::live(&state, flow),
                Request::CheckNamed { src, dst, proto, port } => check::live_named(&state, &src, &dst, proto, port),
                Request::Status => status::status(&state),
                Request::ApiInventory => {
                    Reply::ApiInventory(state.apis.lock().unwrap_or_else(|p| p.into_inner()).list())
                }
                Request::Events { .. } => Reply::Error { message: "internal error: events are streamed".into() },
                Request::Push { .. } | Request::Inventory { .. } => {
                    Reply::Error { message: "internal error: handled above".into() }
                }
            }
        }
    }
}
