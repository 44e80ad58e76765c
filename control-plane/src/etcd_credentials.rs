//! Credentials kept in etcd (`--credentials-etcd`): the credentials file's text under
//! `{prefix}/credentials`, read by every control-plane process at start and followed with
//! a watch, so one `etcdctl put` changes who may connect to the control plane and to every
//! node that takes its credentials from it (nodes started with `--node-token` alone: the
//! leader hands the text over at the join and whenever a heartbeat shows it changed).
//!
//! A value that does not parse, a deleted key, or credentials that would refuse this
//! process's own node token leave the previous credentials admitting, with an error in the
//! log: a typo in etcd must not lock every operator and node out. Starting is stricter:
//! without credentials that parse, the process does not start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_proto::credentials::{shared_digest, Credentials, CredentialsError, Denial};
use engram_proto::Gatekeeper;
use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};

use crate::leadership::ETCD_CALL_TIMEOUT_MS;

/// How long a starting control plane waits for etcd to answer and the key to hold
/// credentials, so control planes may start before the operator puts them.
pub const CREDENTIALS_WAIT_MS: u64 = 30_000;
/// Pause between reads of the key while waiting for it, and the first before a broken
/// watch is made again.
pub const CREDENTIALS_RETRY_INTERVAL_MS: u64 = 500;
/// Longest pause before a broken watch is made again: the pause doubles from
/// `CREDENTIALS_RETRY_INTERVAL_MS` while etcd cannot be reached.
pub const CREDENTIALS_BACKOFF_MS_MAX: u64 = 30_000;
/// How often the key is read besides the watch, so a change reaches this process within
/// this long even if its watch stalled without breaking.
pub const CREDENTIALS_RESYNC_INTERVAL_MS: u64 = 30_000;
/// How often an idle connection to etcd is pinged, so a dead one is noticed.
const ETCD_KEEP_ALIVE_INTERVAL_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum EtcdCredentialsError {
    #[error(
        "etcd key {key} held no credentials within credentials_wait_ms ({CREDENTIALS_WAIT_MS} ms): {reason}; \
         put the credentials file's text there (etcdctl put {key} \"$(cat credentials)\")"
    )]
    Missing { key: String, reason: String },
    #[error("etcd key {key} is not UTF-8 text, as a credentials file is")]
    NotText { key: String },
    #[error(transparent)]
    Parse(#[from] CredentialsError),
    #[error("--node-token is not admitted as a node by etcd key {key}: {denial}")]
    NodeTokenRefused { key: String, denial: Denial },
}

/// Where the credentials live and whose token they must keep admitting.
#[derive(Clone)]
pub struct CredentialsKey {
    pub endpoints: Vec<String>,
    pub key: String,
    /// The token this process presents to nodes.
    pub node_token: Vec<u8>,
}

/// A gatekeeper holding the key's credentials, and the revision they were read at (for
/// [`follow`]). Waits up to [`CREDENTIALS_WAIT_MS`] for etcd and for the key.
pub async fn load(source: &CredentialsKey) -> Result<(Gatekeeper, i64), EtcdCredentialsError> {
    let deadline = Instant::now() + Duration::from_millis(CREDENTIALS_WAIT_MS);
    let mut waiting_logged = false;
    let (value, revision) = loop {
        let reason = match read(source).await {
            Ok((Some(value), revision)) => break (value, revision),
            Ok((None, _)) => "the key does not exist".to_string(),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(EtcdCredentialsError::Missing {
                key: source.key.clone(),
                reason,
            });
        }
        if !waiting_logged {
            tracing::warn!(key = %source.key, %reason, "waiting for credentials in etcd");
            waiting_logged = true;
        }
        tokio::time::sleep(Duration::from_millis(CREDENTIALS_RETRY_INTERVAL_MS)).await;
    };
    let text = String::from_utf8(value).map_err(|_| EtcdCredentialsError::NotText {
        key: source.key.clone(),
    })?;
    let credentials = Credentials::parse(&text, &origin(&source.key))?;
    let gatekeeper = Gatekeeper::given(credentials);
    gatekeeper
        .gate()
        .admit_node(&source.node_token)
        .map_err(|denial| EtcdCredentialsError::NodeTokenRefused {
            key: source.key.clone(),
            denial,
        })?;
    Ok((gatekeeper, revision))
}

/// Installs every change of the key after `revision` for the life of the process. The
/// watch is the fast path; a read every [`CREDENTIALS_RESYNC_INTERVAL_MS`] catches what a
/// watch that stalled without breaking would miss, and a broken or compacted watch is
/// made again after a fresh read, backing off while etcd cannot be reached.
pub async fn follow(source: CredentialsKey, gatekeeper: Arc<Gatekeeper>, revision: i64) {
    let mut follower = Follower {
        source,
        gatekeeper,
        revision,
        refused_digest: 0,
    };
    let mut backoff_ms = CREDENTIALS_RETRY_INTERVAL_MS;
    let mut outage_logged = false;
    loop {
        let broken = follower.watch().await;
        let read = follower.resync().await;
        match (broken, read) {
            (Err(reason), _) | (_, Err(reason)) => {
                if !outage_logged {
                    tracing::warn!(key = %follower.source.key, %reason, "cannot follow the credentials in etcd; retrying");
                    outage_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(CREDENTIALS_BACKOFF_MS_MAX);
            }
            (Ok(()), Ok(())) => {
                if outage_logged {
                    tracing::info!(key = %follower.source.key, "following the credentials in etcd again");
                    outage_logged = false;
                }
                backoff_ms = CREDENTIALS_RETRY_INTERVAL_MS;
            }
        }
    }
}

struct Follower {
    source: CredentialsKey,
    gatekeeper: Arc<Gatekeeper>,
    /// The key's last revision seen: a new watch starts after it.
    revision: i64,
    /// The digest of the value last refused, so a resync does not log it again.
    refused_digest: u64,
}

impl Follower {
    /// Follows the key from `revision` until the watch breaks (`Err`) or a resync is due
    /// (`Ok`); `revision` advances past each change seen.
    async fn watch(&mut self) -> Result<(), String> {
        let mut client = connect(&self.source).await?;
        let options = WatchOptions::new().with_start_revision(self.revision + 1);
        let mut stream = client
            .watch(self.source.key.as_str(), Some(options))
            .await
            .map_err(|error| error.to_string())?;
        let resync = tokio::time::sleep(Duration::from_millis(CREDENTIALS_RESYNC_INTERVAL_MS));
        tokio::pin!(resync);
        loop {
            let response = tokio::select! {
                () = &mut resync => return Ok(()),
                message = stream.message() => message.map_err(|error| error.to_string())?,
            };
            let Some(response) = response else {
                return Err("the watch stream ended".to_string());
            };
            if response.canceled() {
                return Err(format!(
                    "watch canceled: {} (compacted up to revision {})",
                    response.cancel_reason(),
                    response.compact_revision()
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                self.revision = self.revision.max(kv.mod_revision());
                match event.event_type() {
                    EventType::Put => self.apply(kv.value()),
                    EventType::Delete => tracing::error!(
                        key = %self.source.key,
                        "the credentials key was deleted; the previous credentials still admit"
                    ),
                }
            }
        }
    }

    /// Reads the key and installs its value if it is neither the one installed nor one
    /// refused already.
    async fn resync(&mut self) -> Result<(), String> {
        let (value, revision) = read(&self.source).await?;
        self.revision = self.revision.max(revision);
        if let Some(value) = value {
            let digest = std::str::from_utf8(&value).map_or(0, shared_digest);
            if digest != self.gatekeeper.shared_digest() && digest != self.refused_digest {
                self.apply(&value);
            }
        }
        Ok(())
    }

    /// Parses and installs the key's `value`, or logs why the previous credentials stay.
    fn apply(&mut self, value: &[u8]) {
        let key = &self.source.key;
        let installed = std::str::from_utf8(value)
            .map_err(|_| EtcdCredentialsError::NotText { key: key.clone() }.to_string())
            .and_then(|text| Credentials::parse(text, &origin(key)).map_err(|error| error.to_string()))
            .and_then(|credentials| {
                self.gatekeeper
                    .install_admitting(credentials, &self.source.node_token)
                    .map_err(|denial| format!("they do not admit --node-token as a node: {denial}"))
            });
        match installed {
            Ok(listed) => tracing::info!(%key, listed, "credentials changed in etcd; installed"),
            Err(reason) => {
                self.refused_digest = std::str::from_utf8(value).map_or(0, shared_digest);
                tracing::error!(%key, %reason, "credentials in etcd refused; the previous credentials still admit");
            }
        }
    }
}

/// The key's value and the revision of the read, which a watch starts after.
async fn read(source: &CredentialsKey) -> Result<(Option<Vec<u8>>, i64), String> {
    let mut client = connect(source).await?;
    let response = tokio::time::timeout(
        Duration::from_millis(ETCD_CALL_TIMEOUT_MS),
        client.get(source.key.as_str(), None),
    )
    .await
    .map_err(|_| format!("etcd gave no answer within etcd_call_timeout_ms ({ETCD_CALL_TIMEOUT_MS} ms)"))?
    .map_err(|error| error.to_string())?;
    // Without the revision, a watch would start from the key's first and replay history.
    let revision = response
        .header()
        .map(|header| header.revision())
        .ok_or("etcd answered a read without its revision")?;
    Ok((response.kvs().first().map(|kv| kv.value().to_vec()), revision))
}

/// A client whose connection notices a dead peer (HTTP/2 pings) and whose watch is
/// refused by an etcd member cut off from its leader, so a stale member cannot keep the
/// watch quiet.
async fn connect(source: &CredentialsKey) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(ETCD_CALL_TIMEOUT_MS))
        .with_keep_alive(
            Duration::from_millis(ETCD_KEEP_ALIVE_INTERVAL_MS),
            Duration::from_millis(ETCD_CALL_TIMEOUT_MS),
        )
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    Client::connect(&source.endpoints, Some(options))
        .await
        .map_err(|error| format!("cannot reach etcd at {}: {error}", source.endpoints.join(",")))
}

/// How errors name the key.
fn origin(key: &str) -> String {
    format!("etcd key {key}")
}
