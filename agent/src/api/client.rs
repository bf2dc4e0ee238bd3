//! The CLI's side of the control socket.
use std::{io, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("permission denied on {path}: only root or members of the agent's --socket-group may use it")]
    Denied { path: String },
    #[error("cannot reach the agent at {path}: {source} (is `ztagent run` running?)")]
    Connect { path: String, source: io::Error },
    #[error("the agent at {path} closed the connection without answering")]
    NoReply { path: String },
    #[error("the agent's answer could not be read: {0}")]
    Protocol(String),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
}

/// Sends one request and returns the first reply.
pub async fn call(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    let path = socket.display().to_string();
    let timeout = Duration::from_secs(60);
    let work = async {
        let mut stream = connect(socket).await?;
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        // An agent that refuses the caller answers before reading the request and closes:
        // the write may fail, the answer is still there to read.
        let written = stream.write_all(&line).await;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        let n = reader.read_line(&mut answer).await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        if n == 0 {
            return Err(match written {
                Err(e) => ClientError::Protocol(e.to_string()),
                Ok(()) => ClientError::NoReply { path: path.clone() },
            });
        }
        serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
}

async fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let path = socket.display().to_string();
    UnixStream::connect(socket).await.map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => ClientError::Denied { path },
        _ => ClientError::Connect { path, source },
    })
}

/// Sends `req` and returns the reply lines as they come (for streamed replies).
pub async fn stream(socket: &Path, req: &Request) -> Result<tokio::io::Lines<BufReader<UnixStream>>, ClientError> {
    let mut stream = connect(socket).await?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    // As in `call`: a refusal may arrive before the request is written; read it anyway.
    let _ = stream.write_all(&line).await;
    Ok(BufReader::new(stream).lines())
}
