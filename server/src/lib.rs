//! engramd: Engram's data node. One executor per core, each a shard that owns
//! its slots' objects outright, so every object is linearizable without locks. The
//! binary is [`node::run`]; [`node::start`] runs the same node inside the calling process
//! (as tests do), from listeners it is given, until a [`shutdown::Shutdown`] stops it.
//!
//! Layout:
//! - [`config`]: flags and `ENGRAM_*` environment variables.
//! - [`error`]: why a node could not start or keep running.
//! - [`events`]: what the node's main thread hears: shards starting, stopping, failing.
//! - [`node`]: a node's start and stop: in-process from given listeners and a shutdown
//!   signal ([`node::start`]), or as engramd with its ports, signals and ready line ([`node::run`]).
//! - [`shutdown`]: the signal that stops a node, triggered by its owner from any thread.
//! - [`place`]: where a node stands before it serves: alone, or joined to a cluster.
//! - [`host`]: what the machine gives a node: io_uring, CPUs, listening ports.
//! - [`heartbeat`]: a cluster node's reports to the control plane, and the maps it brings back.
//! - [`given_credentials`]: credentials a node takes from its control plane, kept in step by the heartbeat.
//! - [`peering`]: the credentials and TLS of the node's blocking links (join, heartbeats).
//! - [`runtime`]: the seam to the async runtime: executors, the shard mesh, sockets, timers.
//! - [`launch`]: a shard's thread from start to stop: mesh, accept loops, timekeeping.
//! - [`shard`]: a shard's request path: store, routing, answer delivery, peers, maintenance,
//!   and its side of live slot migration (freeze, copy, commit or abort).
//! - [`connection`]: one client connection: handshake, batched read/answer/write loop, backpressure.
//! - [`refusal`]: connections turned away before they are served (too many, too slow to
//!   authenticate, a bad Hello), counted and logged without flooding the log.
//! - [`dispatch`]: where a connection's keyed request goes: this shard, another over the
//!   mesh, or another node through the connection's proxy links.
//! - [`outbox`]: where answers go: a connection's queue of answers, or a forwarding shard.
//! - [`replication`]: sans-I/O synchronous replication: a primary's streams to its
//!   backups, held answers, and a backup's checks before it applies a batch.
//! - [`resp`]: the Redis-protocol door: its connections, Redis commands as native
//!   requests (sans I/O) and native answers as Redis replies.
//! - [`store`]: the sans-I/O keyspace state machine (bytes, counters, TTL, memory, exactly-once records).
//! - [`cluster`]: the node's slot map and routing.
//! - [`link`]: the shards' adapter of proto's sans-I/O link, and the one-question peer link.
//! - [`proxy`]: front-port forwarding to other nodes' shards, over links that speak for the client.
//! - [`stream`]: a connection's byte stream, plain TCP or TLS over it.
//! - [`tls`]: TLS on the node's ports: a plain client told so, a handshake within the
//!   handshake timeout.
//! - [`throttle`]: a warning that repeats while its cause lasts, logged once per interval.
//! - [`stats`]: per-shard figures published for INFO and metrics.
//! - [`metrics`]: Prometheus families, per-shard counting handles, the `/metrics` endpoint.
pub mod cluster;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod given_credentials;
pub mod heartbeat;
pub mod host;
pub mod launch;
pub mod link;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod outbox;
pub mod peering;
pub mod place;
pub mod proxy;
pub mod refusal;
pub mod replication;
pub mod resp;
pub mod runtime;
pub mod shard;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod stream;
pub mod throttle;
pub mod tls;
