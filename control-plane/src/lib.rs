//! Engram control plane. It owns the slot map and is never on the data path: servers
//! and clients fetch the map, then talk to shards directly.
//!
//! Layout:
//! - [`membership`]: the control plane's sans-I/O state: members, owners, map epochs, liveness, persistence.
//! - [`service`]: the `engram-control` process: the controller answering the control protocol, and the driver of the orchestrator over real links.
//! - [`port`]: the control plane's port: connection limit, TLS, the Hello within a deadline, requests checked against their credentials' grant.
//! - [`etcd_credentials`]: credentials kept in etcd (`--credentials-etcd`): read at start, followed with a watch, a broken put refused.
//! - [`election`]: the election's driver over etcd: performs the leadership state machine's outputs, and tells the controller when it leads.
//! - [`leadership`]: which of several control-plane processes leads (etcd lease and leader key), sans-I/O.
//! - [`metrics`]: the control plane's Prometheus families.
//! - [`state`]: where the state lives between runs (a locked file, or etcd under the leader's conditions), and what a failed write means.
//! - [`planner`]: the rebalancing planner, pure functions from shards, load and owners to slot moves.
//! - [`replicas`]: replica groups, pure functions: where each slot's backups go (nodes and zones apart, balanced, kept where they are), and which backup takes over a dead owner's slots.
//! - [`orchestrator`]: the migration orchestrator (plans, two-phase steps, the start-up reconcile), sans-I/O.
//!
//! The control plane is the coordinator of each migration's two-phase hand-over; its
//! commit point is the write of the new map to its state store.

pub mod election;
pub mod etcd_credentials;
pub mod leadership;
pub mod membership;
pub mod metrics;
pub mod orchestrator;
pub mod planner;
pub mod port;
pub mod replicas;
pub mod service;
pub mod state;
