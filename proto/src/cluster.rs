//! Cluster administration payloads: what nodes tell the control plane, what the control
//! plane tells nodes, and what operators see. Same compatibility rule as [`crate::message`]:
//! fields and variants are only ever appended.

use rkyv::{Archive, Deserialize, Serialize};

use crate::message::SlotMap;

/// A node asking to join, or to rejoin after a restart (recognised by its advertised
/// front address).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The address clients and the control plane reach the node's front port at.
    pub front_address: String,
    /// One per shard, in shard order: the address of the shard's own port.
    pub shard_addresses: Vec<String>,
    /// Per shard; 0: unlimited.
    pub memory_limit_bytes: u64,
    /// Random per process start. A join repeated with the same boot id is a retry of the
    /// same process (its answer was lost) and gets the same incarnation; a new boot id at
    /// a known address is a restart with empty memory.
    pub boot_id: u64,
}

/// An operator returning lost slots to service, empty: the listed slots, and every lost
/// slot that `node_id` owned (0: none).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReclaimRequest {
    pub node_id: u64,
    pub slots: Vec<u32>,
}

/// What a node reports on every heartbeat.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: u64,
    pub map_epoch: u64,
    pub shards: Vec<ShardLoad>,
    /// Migrations the node's shards hold open (frozen outgoing, uncommitted incoming), so
    /// the control plane can settle those it is no longer running.
    pub migrations: Vec<u64>,
    /// The incarnation the node's join was given: a beat of a replaced process is refused.
    pub incarnation: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLoad {
    pub keys: u64,
    pub memory_used_bytes: u64,
    pub operations_total: u64,
}

/// Control plane to the source shard: hand `slots` over to `target_address`. The source
/// freezes them, redirects their parked requests, copies their state to the target and
/// answers [`crate::Response::MigrationPrepared`]; it keeps them frozen until a map that
/// gives them away (commit) or a [`crate::Command::MigrateAbort`] arrives.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigrateOut {
    pub migration_id: u64,
    pub slots: Vec<u32>,
    /// The target shard's own port.
    pub target_address: String,
}

/// Source shard to target shard: one batch of a migration's state (an encoded
/// `SlotBatch`), kept but not served until a map gives the target those slots.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigrateIn {
    pub migration_id: u64,
    pub slots: Vec<u32>,
    pub batch: Vec<u8>,
    /// 0, 1, 2, … in sending order: the target refuses a gap, and batch 0 starts the
    /// migration afresh (dropping leftovers of an earlier attempt at those slots).
    pub batch_index: u32,
    /// How long ago the batch was exported: the remaining lease and TTL times in it were
    /// taken then, so the target counts them from that moment, not from its import.
    pub age_ms: u64,
}

/// The cluster as the control plane sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClusterStatus {
    pub map: SlotMap,
    pub nodes: Vec<NodeStatus>,
    pub migrations: Vec<MigrationStatus>,
    pub migrations_completed: u64,
    pub slots_moved_total: u64,
    /// Encoded state shipped by migrations since the control plane started.
    pub bytes_moved_total: u64,
    /// Time migrations spent from freeze to commit since the control plane started.
    pub migration_milliseconds_total: u64,
    /// Why the last plan stopped early, if it did.
    pub last_error: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeStatus {
    pub node_id: u64,
    /// `address` in JSON, the name `engram cluster status --json` has always shown.
    #[cfg_attr(feature = "serde", serde(rename = "address"))]
    pub front_address: String,
    /// Heartbeats arrive; false when the last one is older than the control plane's
    /// liveness timeout.
    pub alive: bool,
    pub draining: bool,
    pub map_epoch: u64,
    pub shards: Vec<ShardStatus>,
    /// Which process of this node the control plane knows: a new one at every join.
    pub incarnation: u64,
    /// Slots this node owned that are lost (it died or restarted with empty memory).
    pub slots_lost: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ShardStatus {
    pub shard_id: u16,
    pub address: String,
    pub slots: u32,
    pub keys: u64,
    pub memory_used_bytes: u64,
    pub operations_total: u64,
    /// Over the last heartbeat interval.
    pub operations_per_second: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MigrationStatus {
    pub migration_id: u64,
    pub source: String,
    pub target: String,
    pub slots: u32,
}
