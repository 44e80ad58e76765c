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
use etcd_client::{Client, EventType, WatchOptions};

use crate::leadership::ETCD_CALL_TIMEOUT_MS;

/// How long a starting control plane waits for etcd to answer and the key to hold
/// credentials, so control planes may start before the operator puts them.
pub const CREDENTIALS_WAIT_MS: u64 = 30_000;
/// Pause between reads of the key while waiting for it, and before a broken watch is
/// made again.
pub const CREDENTIALS_RETRY_INTERVAL_MS: u64 = 500;

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

/// Installs every change of the key after `revision` for the life of the process. A
/// broken or compacted watch is made again after a fresh read, which catches up on what
/// the watch missed.
pub async fn follow(source: CredentialsKey, gatekeeper: Arc<Gatekeeper>, mut revision: i64) {
    loop {
        if let Err(reason) = watch(&source, &gatekeeper, &mut revision).await {
            tracing::warn!(key = %source.key, %reason, "the credentials watch broke; reading the key again");
        }
        tokio::time::sleep(Duration::from_millis(CREDENTIALS_RETRY_INTERVAL_MS)).await;
        match read(&source).await {
            Ok((Some(value), read_at)) => {
                revision = read_at;
                let unchanged =
                    std::str::from_utf8(&value).is_ok_and(|text| shared_digest(text) == gatekeeper.shared_digest());
                if !unchanged {
                    apply(&source, &gatekeeper, &value);
                }
            }
            Ok((None, read_at)) => revision = read_at,
            Err(reason) => tracing::warn!(key = %source.key, %reason, "cannot read the credentials key"),
        }
    }
}

/// Follows the key from `revision` until the watch ends; `revision` advances past each
/// change seen.
async fn watch(source: &CredentialsKey, gatekeeper: &Gatekeeper, revision: &mut i64) -> Result<(), String> {
    let mut client = connect(source).await?;
    let options = WatchOptions::new().with_start_revision(*revision + 1);
    let mut stream = client
        .watch(source.key.as_str(), Some(options))
        .await
        .map_err(|error| error.to_string())?;
    while let Some(response) = stream.message().await.map_err(|error| error.to_string())? {
        if response.canceled() {
            return Err(format!("watch canceled: {}", response.cancel_reason()));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            *revision = (*revision).max(kv.mod_revision());
            match event.event_type() {
                EventType::Put => apply(source, gatekeeper, kv.value()),
                EventType::Delete => tracing::error!(
                    key = %source.key,
                    "the credentials key was deleted; the previous credentials still admit"
                ),
            }
        }
    }
    Err("the watch stream ended".to_string())
}

/// Parses and installs the key's `value`, or logs why the previous credentials stay.
fn apply(source: &CredentialsKey, gatekeeper: &Gatekeeper, value: &[u8]) {
    let installed = std::str::from_utf8(value)
        .map_err(|_| {
            EtcdCredentialsError::NotText {
                key: source.key.clone(),
            }
            .to_string()
        })
        .and_then(|text| Credentials::parse(text, &origin(&source.key)).map_err(|error| error.to_string()))
        .and_then(|credentials| {
            gatekeeper
                .install_admitting(credentials, &source.node_token)
                .map_err(|denial| format!("they do not admit --node-token as a node: {denial}"))
        });
    match installed {
        Ok(listed) => tracing::info!(key = %source.key, listed, "credentials changed in etcd; installed"),
        Err(reason) => tracing::error!(
            key = %source.key,
            %reason,
            "credentials in etcd refused; the previous credentials still admit"
        ),
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
    let revision = response.header().map_or(0, |header| header.revision());
    Ok((response.kvs().first().map(|kv| kv.value().to_vec()), revision))
}

async fn connect(source: &CredentialsKey) -> Result<Client, String> {
    tokio::time::timeout(
        Duration::from_millis(ETCD_CALL_TIMEOUT_MS),
        Client::connect(&source.endpoints, None),
    )
    .await
    .map_err(|_| format!("no etcd endpoint answered within etcd_call_timeout_ms ({ETCD_CALL_TIMEOUT_MS} ms)"))?
    .map_err(|error| format!("cannot reach etcd at {}: {error}", source.endpoints.join(",")))
}

/// How errors name the key.
fn origin(key: &str) -> String {
    format!("etcd key {key}")
}
