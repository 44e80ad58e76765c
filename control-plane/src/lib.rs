//! Engram control plane. It owns the slot map and is never on the data path: servers
//! and clients fetch the map, then talk to shards directly.
//!
//! Layout:
//! - [`metrics_http`]: the `GET /metrics` responder that engramd and engram-control serve Prometheus from.
//! - [`slot_map`]: building and querying slot maps (the embedded single-node map, owner lookup).
//! - [`planner`]: the rebalancing planner, pure functions from shards, load and owners to slot moves.
//!
//! Membership, the rebalancing planner, migration orchestration and the
//! `engram-control` process come with the elastic-cluster work.

pub mod metrics_http;
pub mod planner;
pub mod slot_map;

pub use slot_map::{embedded_map, EMBEDDED_MAP_EPOCH};
