//! Fleet policy distribution over etcd: `ztagent run --policy-source etcd://...` and the
//! `ztagent fleet push|status` commands.
//!
//! **Key layout** (one prefix per fleet, e.g. `etcd://10.0.0.5:2379/ztagent/prod`):
//! - `PREFIX/policy`: the policy text (YAML or JSON, as `policy push` takes it). Its etcd
//!   `mod_revision` is the *fleet revision*: one number every host reports.
//! - `PREFIX/hosts/HOST`: each agent's status as JSON ([`HostStatus`]), written under a lease of
//!   [`LEASE_TTL`] seconds that the agent keeps alive, so a host that dies leaves the fleet view.
//!
//! **Applying.** The agent watches `PREFIX/policy`; each new revision is validated and installed
//! exactly like a local push (atomically, under the state lock, saved as last-known-good). A
//! revision the host cannot apply (invalid, too big for its maps) is rejected there and reported
//! in its status key; the policy in force stays.
//!
//! **Cut off.** A failed connection or a broken watch leaves the policy in force untouched; the
//! agent retries with exponential backoff (0.5 s doubling to 10 s), shows `connected: false` in
//! `status`, and on reconnect reads the newest revision (a `get`, then a watch from there), so it
//! catches up to the newest revision, not every intermediate one.
//!
//! **Pushing.** `fleet push` validates locally, then writes in one transaction that compares
//! the policy key's `mod_revision` with the base revision (the one the admin read, or `--base`):
//! of two pushes from the same base, one wins and the other is refused.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::{
    api::{AppliedVersion, PolicySource, RejectedVersion},
    policy::{self, Policy},
    sources::{now, sha256_hex},
};

/// Seconds a host's status key outlives the host.
pub const LEASE_TTL: i64 = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the agent waits for etcd at startup before falling back to its last-known-good.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{url:?} is not an etcd policy source: {why} (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")]
    Url { url: String, why: &'static str },
    #[error("cannot read {path} (for TLS to etcd): {source}")]
    TlsFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Etcd { endpoints: String, source: etcd_client::Error },
    #[error(
        "the fleet policy changed since revision {base}: it is now revision {now}, pushed by someone else; review it and push again with --base {now}"
    )]
    Conflict { base: i64, now: i64 },
}

/// Where the fleet lives and how to log in.
#[derive(Clone, Debug)]
pub struct Target {
    /// As given (`etcd://...`), for messages.
    pub url: String,
    pub endpoints: Vec<String>,
    /// No trailing slash, e.g. `/ztagent/prod`.
    pub prefix: String,
    pub user: Option<(String, String)>,
    /// TLS to the members (https), when set.
    pub tls: Option<etcd_client::TlsOptions>,
}

/// TLS files as `etcdctl` takes them: `--cacert` (the CA that signed the members'
/// certificates: this build trusts no system roots), `--cert` and `--key` (this client's
/// certificate, for members that require client certificates).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsFiles {
    fn options(&self) -> Result<etcd_client::TlsOptions, FleetError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| FleetError::TlsFile { path: path.to_path_buf(), source })
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.cert {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

impl Target {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`; with `tls`, the members are spoken to
    /// over https.
    pub fn parse(url: &str, user: Option<(String, String)>, tls: Option<&TlsFiles>) -> Result<Target, FleetError> {
        let err = |why| FleetError::Url { url: url.to_string(), why };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let rest = url.strip_prefix("etcd://").ok_or_else(|| err("it must start with etcd://"))?;
        let (hosts, prefix) = rest.split_once('/').ok_or_else(|| err("the key prefix is missing"))?;
        let prefix = format!("/{}", prefix.trim_matches('/'));
        if prefix == "/" {
            return Err(err("the key prefix is empty"));
        }
        let endpoints: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{h}")).collect();
        if endpoints.is_empty()
            || hosts.split(',').any(|h| h.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()))
        {
            return Err(err("every member must be HOST:PORT"));
        }
        let tls = tls.map(TlsFiles::options).transpose()?;
        Ok(Target { url: url.to_string(), endpoints, prefix, user, tls })
    }

    pub fn policy_key(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    pub fn hosts_prefix(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }

    /// A client of the first member that answers, trying them in turn: a balanced channel over
    /// all members would send some requests to a dead one and fail them.
    pub async fn connect(&self) -> Result<Client, FleetError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.connect_to(endpoint).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(endpoint, "etcd member does not answer: {e}");
                    last = Some(e);
                }
            }
        }
        Err(self.etcd(last.unwrap_or(etcd_client::Error::InvalidArgs("no etcd member given".into()))))
    }

    async fn connect_to(&self, endpoint: &str) -> Result<Client, etcd_client::Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            // HTTP/2 pings: a dead member is noticed within seconds, not at the next request.
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        if let Some((name, password)) = &self.user {
            opts = opts.with_user(name.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls.clone());
        }
        let mut client = Client::connect([endpoint], Some(opts)).await?;
        client.status().await?;
        Ok(client)
    }

    fn etcd(&self, source: etcd_client::Error) -> FleetError {
        FleetError::Etcd { endpoints: self.endpoints.join(","), source }
    }
}

/// What an agent writes under `PREFIX/hosts/HOST` (and `fleet status -o json` lists).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    /// The fleet revision in force on this host (null before any was applied from etcd).
    pub revision: Option<i64>,
    /// SHA-256 of that revision's text.
    pub sha256: Option<String>,
    /// The agent's own policy revision (`ztagent status`).
    pub agent_revision: Option<u32>,
    /// The last fleet revision this host rejected, and why.
    pub rejected: Option<Rejection>,
    /// RFC 3339, UTC, when this key was written.
    pub time: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rejection {
    pub revision: i64,
    pub sha256: String,
    pub message: String,
}

/// The etcd source inside `ztagent run`.
pub struct Source {
    target: Target,
    host: String,
    report: Arc<Mutex<PolicySource>>,
    status: HostStatus,
    /// A revision fetched at startup, waiting for the daemon to install it.
    pending: Option<(i64, String)>,
}

/// Installs a validated policy like a push; returns the agent's revision.
pub type Apply = Arc<dyn Fn(Policy) -> Result<u32, super::Refused> + Send + Sync>;

impl Source {
    pub fn new(target: Target, host: String) -> Source {
        let report = Arc::new(Mutex::new(PolicySource {
            dir: target.url.clone(),
            connected: Some(false),
            ..PolicySource::default()
        }));
        let status = HostStatus { host: host.clone(), ..HostStatus::default() };
        Source { target, host, report, status, pending: None }
    }

    pub fn report(&self) -> Arc<Mutex<PolicySource>> {
        self.report.clone()
    }

    /// The fleet's policy at startup, validated, if etcd answers within a few seconds; None
    /// otherwise (the daemon then starts from its last-known-good, and the watch catches up).
    pub async fn initial(&mut self) -> Option<Policy> {
        let fetch = async {
            let mut client = self.target.connect().await?;
            client.get(self.target.policy_key(), None).await.map_err(|e| self.target.etcd(e))
        };
        let resp = match tokio::time::timeout(STARTUP_WAIT, fetch).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::warn!("fleet: {e}; starting from the last-known-good policy, retrying in the background");
                return None;
            }
            Err(_) => {
                tracing::warn!(url = %self.target.url, "fleet: etcd did not answer within {STARTUP_WAIT:?}; starting from the last-known-good policy, retrying in the background");
                return None;
            }
        };
        let kv = resp.kvs().first()?;
        match self.parse(kv.value(), kv.mod_revision()) {
            Ok(p) => {
                self.pending = Some((kv.mod_revision(), sha256_hex(kv.value())));
                Some(p)
            }
            Err(message) => {
                self.reject(kv.mod_revision(), kv.value(), message);
                None
            }
        }
    }

    /// The policy [`Source::initial`] returned is in force as `agent_revision`.
    pub fn installed(&mut self, agent_revision: u32) {
        if let Some((revision, sha256)) = self.pending.take() {
            self.accept(revision, sha256, agent_revision);
        }
    }

    /// Follows the fleet for the rest of the process's life.
    pub fn spawn(self, apply: Apply) {
        tokio::spawn(self.follow(apply));
    }

    async fn follow(mut self, apply: Apply) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let e = self.session(&apply, &mut backoff).await;
            let connected = self.lock().connected == Some(true);
            self.lock().connected = Some(false);
            if connected {
                tracing::warn!("fleet: lost etcd ({e}); the policy in force stays, reconnecting");
            } else {
                tracing::debug!("fleet: {e}; retrying in {backoff:?}");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: catch up to the newest revision, then watch. Returns why it ended.
    async fn session(&mut self, apply: &Apply, backoff: &mut Duration) -> FleetError {
        let t = self.target.clone();
        let key = t.policy_key();
        let mut client = match t.connect().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let setup = async {
            let lease = client.lease_grant(LEASE_TTL, None).await?.id();
            let keep = client.lease_keep_alive(lease).await?;
            let resp = client.get(key.clone(), None).await?;
            Ok::<_, etcd_client::Error>((lease, keep, resp))
        };
        let (lease, (mut keeper, mut acks), resp) = match setup.await {
            Ok(s) => s,
            Err(e) => return t.etcd(e),
        };
        self.lock().connected = Some(true);
        *backoff = BACKOFF_MIN;
        tracing::info!(url = %t.url, "fleet: connected to etcd");
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        if let Some(kv) = resp.kvs().first() {
            self.consider(kv.value(), kv.mod_revision(), apply).await;
        }
        if let Err(e) = self.publish(&mut client, lease).await {
            return e;
        }
        let mut stream = match client.watch(key, Some(WatchOptions::new().with_start_revision(from))).await {
            Ok(s) => s,
            Err(e) => return t.etcd(e),
        };
        let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3).max(1) as u64));
        loop {
            tokio::select! {
                _ = tick.tick() => if let Err(e) = keeper.keep_alive().await {
                    return t.etcd(e);
                },
                ack = acks.message() => match ack {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    Ok(_) => return t.etcd(etcd_client::Error::LeaseKeepAliveError("the status lease expired".into())),
                    Err(e) => return t.etcd(e),
                },
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(r)) if !r.canceled() => r,
                        Ok(_) => return t.etcd(etcd_client::Error::WatchError("the watch was cancelled".into())),
                        Err(e) => return t.etcd(e),
                    };
                    // Several revisions in one response: only the newest matters.
                    let newest = resp.events().iter().rev().find(|e| e.event_type() == EventType::Put).and_then(|e| e.kv());
                    if let Some(kv) = newest {
                        self.consider(kv.value(), kv.mod_revision(), apply).await;
                        if let Err(e) = self.publish(&mut client, lease).await {
                            return e;
                        }
                    }
                }
            }
        }
    }

    /// Applies fleet revision `revision` unless it is already in force or already rejected.
    async fn consider(&mut self, text: &[u8], revision: i64, apply: &Apply) {
        if self.status.revision == Some(revision)
            || self.status.rejected.as_ref().is_some_and(|r| r.revision == revision)
        {
            return;
        }
        let parsed = match self.parse(text, revision) {
            Ok(p) => p,
            Err(message) => return self.reject(revision, text, message),
        };
        let apply = apply.clone();
        let result =
            tokio::task::spawn_blocking(move || apply(parsed)).await.unwrap_or_else(|e| Err(super::Refused::new(e)));
        match result {
            Ok(agent_revision) => self.accept(revision, sha256_hex(text), agent_revision),
            Err(e) => self.reject(revision, text, e.to_string()),
        }
    }

    fn parse(&self, text: &[u8], revision: i64) -> Result<Policy, String> {
        let origin = format!("{}@{revision}", self.target.policy_key());
        let text = std::str::from_utf8(text).map_err(|e| format!("{origin}: the policy is not valid UTF-8 ({e})"))?;
        policy::parse(text, &origin).map_err(|d| d.to_string())
    }

    fn accept(&mut self, revision: i64, sha256: String, agent_revision: u32) {
        tracing::info!(revision, agent_revision, sha256 = %sha256, "fleet: revision {revision} installed");
        self.status.revision = Some(revision);
        self.status.sha256 = Some(sha256.clone());
        self.status.agent_revision = Some(agent_revision);
        let mut r = self.lock();
        r.up_to_date = true;
        r.file = Some(format!("{}@{revision}", self.target.policy_key()));
        r.fleet_revision = Some(revision);
        r.last_applied = Some(AppliedVersion { sha256, revision: agent_revision, time: now() });
    }

    fn reject(&mut self, revision: i64, text: &[u8], message: String) {
        let sha256 = sha256_hex(text);
        tracing::warn!(revision, sha256 = %sha256, "fleet: revision {revision} is rejected; the policy in force stays:\n{message}");
        self.status.rejected = Some(Rejection { revision, sha256: sha256.clone(), message: message.clone() });
        let mut r = self.lock();
        r.up_to_date = false;
        r.file = Some(format!("{}@{revision}", self.target.policy_key()));
        r.last_rejection = Some(RejectedVersion { sha256: Some(sha256), message, time: now() });
    }

    /// Writes this host's status key under the lease.
    async fn publish(&mut self, client: &mut Client, lease: i64) -> Result<(), FleetError> {
        self.status.time = now();
        let value = serde_json::to_vec(&self.status).unwrap_or_default();
        let key = format!("{}{}", self.target.hosts_prefix(), self.host);
        client.put(key, value, Some(PutOptions::new().with_lease(lease))).await.map_err(|e| self.target.etcd(e))?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PolicySource> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `fleet push`: writes `text` as the next fleet revision if the policy key is still at `base`
/// (the current one when None). Returns the new fleet revision.
pub async fn push(target: &Target, text: &str, base: Option<i64>) -> Result<i64, FleetError> {
    let mut client = target.connect().await?;
    let key = target.policy_key();
    let base = match base {
        Some(b) => b,
        None => current(&mut client, target).await?.0,
    };
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(key.clone(), CompareOp::Equal, base)])
        .and_then(vec![TxnOp::put(key, text, None)]);
    let resp = client.txn(txn).await.map_err(|e| target.etcd(e))?;
    if !resp.succeeded() {
        let now = current(&mut client, target).await?.0;
        return Err(FleetError::Conflict { base, now });
    }
    Ok(resp.header().map_or(0, |h| h.revision()))
}

/// The fleet revision (0 when nothing was pushed yet) and the policy's sha256.
async fn current(client: &mut Client, target: &Target) -> Result<(i64, Option<String>), FleetError> {
    let resp = client.get(target.policy_key(), None).await.map_err(|e| target.etcd(e))?;
    Ok(resp.kvs().first().map_or((0, None), |kv| (kv.mod_revision(), Some(sha256_hex(kv.value())))))
}

/// `fleet status -o json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The newest fleet revision (0 when none was pushed).
    pub revision: i64,
    pub sha256: Option<String>,
    pub hosts: Vec<HostStatus>,
}

impl FleetStatus {
    /// "up to date", "behind", or "rejected": where a host stands against the newest revision.
    pub fn state(&self, h: &HostStatus) -> &'static str {
        if h.revision == Some(self.revision) {
            "up to date"
        } else if h.rejected.as_ref().is_some_and(|r| r.revision == self.revision) {
            "rejected"
        } else {
            "behind"
        }
    }
}

pub async fn status(target: &Target) -> Result<FleetStatus, FleetError> {
    let mut client = target.connect().await?;
    let (revision, sha256) = current(&mut client, target).await?;
    let resp =
        client.get(target.hosts_prefix(), Some(GetOptions::new().with_prefix())).await.map_err(|e| target.etcd(e))?;
    let mut hosts: Vec<HostStatus> =
        resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(FleetStatus { revision, sha256, hosts })
}

/// This machine's host name, the default name of its status key.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc == 0 && end > 0 { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "localhost".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_and_a_prefix() {
        let t = Target::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/ztagent/prod/", None, None).unwrap();
        assert_eq!(t.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(
            (t.policy_key().as_str(), t.hosts_prefix().as_str()),
            ("/ztagent/prod/policy", "/ztagent/prod/hosts/")
        );
        for bad in ["http://a:1/p", "etcd://a:1", "etcd://a:1/", "etcd://a/p", "etcd://a:x/p"] {
            assert!(matches!(Target::parse(bad, None, None), Err(FleetError::Url { .. })), "{bad}");
        }
        let tls = TlsFiles { ca: Some("/nonexistent/ca.pem".into()), cert: None };
        assert!(matches!(Target::parse("etcd://a:1/p", None, Some(&tls)), Err(FleetError::TlsFile { .. })));
        let t = Target::parse("etcd://a:1/p", None, Some(&TlsFiles::default())).unwrap();
        assert_eq!(t.endpoints, ["https://a:1"]);
    }
}
