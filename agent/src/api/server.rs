//! The daemon's side of the control socket: one request line in, JSON lines out.
use std::io;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{MAX_REQUEST, Reply, Request};

/// A request the daemon cannot read: what it answers the client with.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read the request: {0}")]
    Read(io::Error),
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(serde_json::Error),
}

/// Reads one request line of at most [`MAX_REQUEST`] bytes.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(reader: R) -> Result<Request, RequestError> {
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST + 1));
    let mut buf = Vec::new();
    let n = limited.read_until(b'\n', &mut buf).await.map_err(RequestError::Read)?;
    if n as u64 > MAX_REQUEST {
        return Err(RequestError::TooLarge);
    }
    serde_json::from_slice(&buf).map_err(RequestError::Malformed)
}

pub async fn write_reply<W: tokio::io::AsyncWrite + Unpin>(mut w: W, reply: &Reply) -> io::Result<()> {
    write_line(&mut w, reply).await
}

/// Writes one value as a JSON line.
pub async fn write_line<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}
