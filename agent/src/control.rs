//! The control socket: a Unix stream socket carrying one JSON request line and JSON reply
//! lines. The daemon serves it; the CLI is its client.
use std::{io, net::IpAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

pub const DEFAULT_SOCKET: &str = "/run/ztagent/ztagent.sock";
/// The largest request the daemon reads (a policy of ~100,000 CIDRs is a few MB).
pub const MAX_REQUEST: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Validate and install a policy file's text; `origin` names it in messages.
    Push { origin: String, source: String },
    /// The policy in force.
    Get,
    /// The verdict for one flow under the policy in force.
    Check(Flow),
    Status,
    /// Recent events matching the filter (one JSON line each), then, following, the live
    /// ones; `{"missed": N}` when the client fell behind.
    Events {
        follow: bool,
        #[serde(default)]
        filter: crate::events::EventFilter,
    },
    /// A time-bound allow (see `grants`).
    Grant { from: String, to: String, ports: Vec<String>, seconds: u64, reason: String },
    /// The grants in force.
    Grants,
    /// Ends a grant now.
    Revoke { id: u32 },
    /// What has been seen talking to what (since `since`, unix seconds; all without).
    Inventory {
        #[serde(default)]
        since: Option<f64>,
    },
}

/// Told to an events client that fell behind the stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct Missed {
    pub missed: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp).
    pub proto: u8,
    /// Destination port; for ICMP the type (8 = echo request).
    pub port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pushed(PushResult),
    Policy { revision: u32, policy: serde_json::Value },
    Check(CheckResult),
    Status(Box<Status>),
    /// A grant given (and the revision that holds it) or ended early.
    Granted { grant: crate::grants::Grant, revision: u32 },
    Grants { grants: Vec<crate::grants::Grant> },
    Revoked { grant: crate::grants::Grant, revision: u32 },
    Inventory(crate::inventory::Listing),
    Error { message: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PushResult {
    pub revision: u32,
    pub segments: usize,
    pub rules: usize,
    /// Map entries written into the kernel.
    pub entries: usize,
}

/// A verdict and what decided it (`ztagent check -o json` prints this object).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    /// "allow" or "deny".
    pub verdict: String,
    /// The deciding rule's name, or null when the default action decided.
    pub rule: Option<String>,
    pub src_segment: String,
    pub dst_segment: String,
    /// With `--k8s-objects` (live checks): the pod (`namespace/name`) at the source or
    /// destination address, as the inventory in force names it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub src_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dst_pod: Option<String>,
    /// The rate limit the flow's packets count against, if any (allowed flows only).
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// The policy revision judged against (live checks only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub revision: Option<u32>,
    /// "enforce", or "audit": then a "deny" passes, reported as would-deny.
    #[serde(default)]
    pub mode: String,
    /// A "deny" that passes, reported as would-deny: the policy, the deciding rule, or one of
    /// the two segments is in audit mode.
    #[serde(default)]
    pub audit: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub revision: u32,
    /// "enforce" or "audit" (the policy in force; "enforce" before any).
    #[serde(default)]
    pub mode: String,
    pub pin_path: String,
    pub interfaces: Vec<Interface>,
    /// Packets by outcome since the maps were created.
    pub counters: Vec<(String, u64)>,
    /// The rate limits in force.
    #[serde(default)]
    pub limits: Vec<LimitStatus>,
    /// Fill of the state maps (conntrack, event aggregation, fragments, address buckets).
    #[serde(default)]
    pub maps: Vec<MapStatus>,
    /// The XDP attach mode asked for: "auto" (the kernel's choice), "native" or "generic".
    #[serde(default)]
    pub xdp_mode: String,
    /// `run --policy-dir`: the directory and what became of its versions (null without it).
    #[serde(default)]
    pub policy_source: Option<PolicySource>,
    /// `run --k8s-objects`: the directory of Kubernetes objects and what became of its
    /// versions (null without it).
    #[serde(default)]
    pub k8s_source: Option<K8sSource>,
}

/// The Kubernetes objects source (`ztagent run --k8s-objects DIR`), as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct K8sSource {
    /// `dir` (`--k8s-objects`) or `api` (`--k8s-api`).
    #[serde(default)]
    pub source: String,
    /// The directory watched; with `api`, the API server's URL.
    pub dir: String,
    /// True when the directory's newest version is the one in force; false while it is
    /// rejected (the inventory and NetworkPolicies applied before stay in force).
    pub up_to_date: bool,
    /// What is in force: object files read (with `api`: objects), namespaces, pods (endpoint
    /// addresses among them), NetworkPolicies.
    pub files: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub pod_addresses: usize,
    pub network_policies: usize,
    /// The warnings of the version in force (skipped kinds, ...), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// `sha256`: of the object files (each file's name, a NUL, its bytes, in name order).
    pub last_applied: Option<AppliedVersion>,
    pub last_rejection: Option<RejectedVersion>,
}

/// The policy directory source (`ztagent run --policy-dir DIR`), as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicySource {
    /// The directory watched.
    pub dir: String,
    /// The policy file last read, through its symlinks (in a ConfigMap,
    /// `DIR/..2026_11_28_10_00_00.123/policy.yaml`); null before any was found.
    pub file: Option<String>,
    /// True when the directory's newest version is the one applied; false while it is
    /// rejected (the policy applied before stays in force).
    pub up_to_date: bool,
    pub last_applied: Option<AppliedVersion>,
    /// The last version rejected, also once a later one was applied (compare the times).
    pub last_rejection: Option<RejectedVersion>,
    // --- fleet (etcd) source: `dir` is its etcd:// URL, `file` PREFIX/policy@REVISION
    /// Whether the agent is connected to etcd now (null for a directory source).
    #[serde(default)]
    pub connected: Option<bool>,
    /// The fleet revision in force (etcd mod_revision of PREFIX/policy).
    #[serde(default)]
    pub fleet_revision: Option<i64>,
    // ---
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppliedVersion {
    /// SHA-256 of the file's bytes (hex, as `sha256sum` prints it).
    pub sha256: String,
    /// The policy revision it was installed as.
    pub revision: u32,
    /// RFC 3339, UTC.
    pub time: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RejectedVersion {
    /// SHA-256 of the file's bytes; null when there was no file to read.
    pub sha256: Option<String>,
    /// Why: the diagnostics (`DIR/NAME:LINE:COL: message`, one per line), or what is missing.
    pub message: String,
    /// RFC 3339, UTC.
    pub time: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MapStatus {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

/// One rate limit: configuration, state, and what it did since it was installed unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LimitStatus {
    pub name: String,
    /// "segment" or "address".
    pub scope: String,
    /// e.g. "2000/second, burst 400"; null when the limit has no such bucket.
    pub packets: Option<String>,
    pub connections: Option<String>,
    pub bytes: Option<String>,
    /// Packet tokens available now (segment scope, packets bucket); null otherwise.
    pub packet_tokens: Option<f64>,
    /// Live per-address buckets (address scope) and how many were evicted to make room.
    pub address_buckets: usize,
    pub evicted: u64,
    pub packets_passed: u64,
    pub packets_dropped: u64,
    pub connections_passed: u64,
    pub connections_dropped: u64,
    pub bytes_passed: u64,
    pub bytes_dropped: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub ingress: crate::datapath::Attachment,
    pub egress: crate::datapath::Attachment,
    /// Node mode: the `--iface-pattern` that matched it (null for an `--iface` interface).
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// Anti-spoofing on its ingress (node mode's interfaces).
    #[serde(default)]
    pub guarded: bool,
    /// The source prefixes a packet entering it may have (guarded interfaces).
    #[serde(default)]
    pub sources: Vec<String>,
}

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

/// Reads one request line of at most [`MAX_REQUEST`] bytes.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(reader: R) -> Result<Request, String> {
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST + 1));
    let mut buf = Vec::new();
    let n = limited.read_until(b'\n', &mut buf).await.map_err(|e| format!("cannot read the request: {e}"))?;
    if n as u64 > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}"))
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

/// Sends `req` and returns the reply lines as they come (for streamed replies).
pub async fn stream(socket: &Path, req: &Request) -> Result<tokio::io::Lines<BufReader<UnixStream>>, ClientError> {
    let mut stream = connect(socket).await?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    // As in `call`: a refusal may arrive before the request is written; read it anyway.
    let _ = stream.write_all(&line).await;
    Ok(BufReader::new(stream).lines())
}
