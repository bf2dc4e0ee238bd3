//! `/metrics` over HTTP/1.1: an axum router served connection by connection by hyper, with a
//! bound on the connections served at once and on the time a client may take to send a
//! request head.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

use super::{Exporter, Format};

/// The longest a client may take to send a request head (also the idle time of a kept-alive
/// connection before its next request).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read; requests are a line and a few headers (hyper answers 431
/// past it).
const MAX_HEAD: usize = 8192;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;

/// Binds the metrics listener (before anything else is set up, so a bad address fails early).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) {
    let app = router(exporter);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(REQUEST_TIMEOUT)
                        .max_buf_size(MAX_HEAD)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(%peer, "metrics client: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `GET`/`HEAD /metrics`; another method there is 405 (with `Allow`), another path 404.
fn router(exporter: Arc<Exporter>) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(exporter)
}

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let accept: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let format = Format::negotiate((!accept.is_empty()).then(|| accept.join(",")).as_deref());
    match tokio::task::spawn_blocking(move || exporter.render(format)).await {
        Ok(Ok(body)) => {
            ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], body).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!("metrics: scrape failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("the scrape failed: {e}\n")).into_response(),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n")
}
