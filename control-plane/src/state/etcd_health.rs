//! How each etcd endpoint answers, for `engram cluster status`: the leader asks every
//! endpoint given with `--etcd` for its maintenance status, all at once, each within
//! [`ETCD_HEALTH_TIMEOUT_MS`].
//!
//! The election and the writer talk to etcd through one client balanced over every
//! endpoint, which says nothing of any one of them; so each endpoint gets a client of its
//! own here, made at its first probe and kept (a status then costs one request on an open
//! connection, not a connect).

use std::time::Duration;

use engram_proto::{EtcdEndpointStatus, StateStoreStatus};
use etcd_client::{Client, ConnectOptions, StatusResponse};
use tokio::sync::OnceCell;

/// Longest one endpoint's status may take (connect included) before it counts as
/// unhealthy, so a status answer waits at most this long for etcd.
pub const ETCD_HEALTH_TIMEOUT_MS: u64 = 1_000;

/// The etcd endpoints of this control plane, each with its own client.
pub struct EtcdHealth {
    prefix: String,
    endpoints: Vec<(String, OnceCell<Client>)>,
}

impl EtcdHealth {
    pub fn new(prefix: &str, endpoints: &[String]) -> EtcdHealth {
        EtcdHealth {
            prefix: prefix.to_string(),
            endpoints: endpoints
                .iter()
                .map(|endpoint| (endpoint.clone(), OnceCell::new()))
                .collect(),
        }
    }

    /// Every endpoint's status, in the order given.
    pub async fn probe(&self) -> StateStoreStatus {
        let probes = self
            .endpoints
            .iter()
            .map(|(endpoint, client)| probe_one(endpoint, client));
        StateStoreStatus::Etcd {
            prefix: self.prefix.clone(),
            endpoints: futures::future::join_all(probes).await,
        }
    }
}

async fn probe_one(endpoint: &str, client: &OnceCell<Client>) -> EtcdEndpointStatus {
    let limit = Duration::from_millis(ETCD_HEALTH_TIMEOUT_MS);
    let call = async {
        let options = ConnectOptions::new().with_connect_timeout(limit).with_timeout(limit);
        let client = client
            .get_or_try_init(|| Client::connect([endpoint], Some(options)))
            .await?;
        client.clone().status().await
    };
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(status)) => endpoint_status(endpoint, &status),
        Ok(Err(error)) => unhealthy(endpoint, error.to_string()),
        Err(_) => unhealthy(
            endpoint,
            format!("no answer within {ETCD_HEALTH_TIMEOUT_MS} ms (etcd_health_timeout_ms)"),
        ),
    }
}

/// Healthy: it answered, knows a raft leader and reports no error.
fn endpoint_status(endpoint: &str, status: &StatusResponse) -> EtcdEndpointStatus {
    let member = status.header().map_or(0, |header| header.member_id());
    let error = match (status.leader(), status.errors()) {
        (0, _) => "no raft leader".to_string(),
        (_, []) => String::new(),
        (_, errors) => errors.join("; "),
    };
    EtcdEndpointStatus {
        endpoint: endpoint.to_string(),
        healthy: error.is_empty(),
        error,
        version: status.version().to_string(),
        db_size_bytes: u64::try_from(status.db_size()).unwrap_or(0),
        raft_leader: member != 0 && status.leader() == member,
        raft_term: status.raft_term(),
    }
}

fn unhealthy(endpoint: &str, error: String) -> EtcdEndpointStatus {
    EtcdEndpointStatus {
        endpoint: endpoint.to_string(),
        healthy: false,
        error,
        version: String::new(),
        db_size_bytes: 0,
        raft_leader: false,
        raft_term: 0,
    }
}
