//! Why a node could not start or keep running: the errors `engramd` reports before it
//! exits, and an in-process node's start or wait returns. Each names the limit or the
//! resource that was in the way.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("io_uring is unavailable ({source}): {hint}")]
    IoUringUnavailable { source: std::io::Error, hint: String },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("--cores {cores} is out of range (1..={shards_max})")]
    Cores { cores: usize, shards_max: usize },
    #[error("a node given {listeners} shard listeners cannot run: it runs 1..={shards_max} shards, one per listener")]
    ShardListeners { listeners: usize, shards_max: usize },
    #[error("ports {first}..={last} do not fit below 65536; choose a lower --port")]
    Ports { first: u32, last: u32 },
    #[error(
        "shard {shard} could not start: {reason}. io_uring needs locked memory: raise the memlock limit \
         (ulimit -l; in Docker --ulimit memlock=8388608, or -1 where the daemon's own limit allows it)"
    )]
    ShardStart { shard: usize, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] engram_tls::TlsError),
    #[error("--tls-cert with --control needs --tls-ca: the CA of the control plane's and the other nodes' certificates, which this node connects to over TLS")]
    TlsCaRequired,
    #[error("credentials: {0}")]
    Credentials(#[from] engram_proto::credentials::CredentialsError),
    #[error("--credentials-file with --control needs --node-token: the token of a credential with the node right, which this node presents to the control plane and the other nodes")]
    NodeTokenRequired,
    #[error(
        "--node-token needs --credentials-file, or --control without --auth-token to take the control plane's \
         credentials: with --auth-token alone, every link presents that token"
    )]
    NodeTokenWithoutCredentials,
    #[error("--node-token is not admitted as a node by {by}: {reason}")]
    NodeTokenRefused { by: String, reason: String },
    #[error(
        "the control plane shares no credentials (it has no --credentials-file or --credentials-etcd), \
         so a node with --node-token alone has none to admit by"
    )]
    NoSharedCredentials,
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("--bind {0} is unspecified: a cluster node needs --advertise with the host others reach it at")]
    AdvertiseRequired(IpAddr),
    #[error("could not join the cluster at {control} within {join_timeout_ms} ms (join_timeout_ms): {reason}")]
    Join {
        control: String,
        reason: String,
        join_timeout_ms: u64,
    },
    #[error(
        "the control plane at {address} refused this node's credentials (--node-token, else --auth-token): {reason}"
    )]
    JoinRefused { address: String, reason: String },
    /// A second SIGINT or SIGTERM arrived while the shards were stopping: the process
    /// exits at once, with the shell's code for an interrupt.
    #[error("interrupted twice: exiting without waiting for the shards")]
    Interrupted,
    /// The node was told to stop while it started (joining its cluster, or before every
    /// shard served): it stopped instead of serving.
    #[error("told to stop before the node served")]
    StoppedBeforeServing,
}
