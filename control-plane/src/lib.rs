//! Engram control plane. It owns the slot map and is never on the data path: servers
//! and clients fetch the map, then talk to shards directly.
//!
//! Layout:
//! - [`membership`]: the control plane's sans-I/O state: members, owners, map epochs, liveness, persistence.
//! - [`service`]: the `engram-control` process: control protocol server, and the driver of the orchestrator over real links.
//! - [`metrics`]: the control plane's Prometheus families.
//! - [`planner`]: the rebalancing planner, pure functions from shards, load and owners to slot moves.
//! - [`orchestrator`]: the migration orchestrator (plans, two-phase steps, the start-up reconcile), sans-I/O.
//!
//! The control plane is the coordinator of each migration's two-phase hand-over; its
//! commit point is the write of the new map to its state file.

pub mod membership;
pub mod metrics;
pub mod orchestrator;
pub mod planner;
pub mod service;
