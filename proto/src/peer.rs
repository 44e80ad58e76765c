//! The peer family: what the control plane tells a node's shards (serve this map, move
//! these slots, forget that migration) and what one shard ships to another (migration
//! batches; replication streams). Same compatibility rule as [`crate::message`]: fields and
//! variants are only ever appended.

use rkyv::{Archive, Deserialize, Serialize};

use crate::cluster::ShardProcessRef;
use crate::message::{ErrorReply, SlotMap};
use crate::replication::{ReplicaAnswer, ReplicaBatch};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    /// Serve under this map from now on; ignored unless newer than the node's.
    InstallMap(SlotMap),
    MigrateOut(MigrateOut),
    MigrateIn(MigrateIn),
    /// Forget the migration (0: any migration not committed by the node's map). Refused
    /// by a shard whose map is older than `map_epoch`: the abort was decided under that
    /// map, and a shard behind it may not know the migration committed.
    MigrateAbort {
        migration_id: u64,
        map_epoch: u64,
    },
    /// Primary shard to backup shard: the next batch of a replication stream.
    /// (Appended last.)
    Replicate(ReplicaBatch),
    /// A migration onto an in-sync backup of the slots: no copy, only a hand-over.
    /// (Appended last.)
    HandOver(HandOver),
}

impl PeerRequest {
    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            PeerRequest::InstallMap(_) => "install_map",
            PeerRequest::MigrateOut(_) => "migrate_out",
            PeerRequest::MigrateIn(_) => "migrate_in",
            PeerRequest::MigrateAbort { .. } => "migrate_abort",
            PeerRequest::Replicate(_) => "replicate",
            PeerRequest::HandOver(_) => "hand_over",
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PeerResponse {
    /// Done, with nothing to report.
    Accepted,
    /// The source copied the slots to the target and holds them frozen.
    MigrationPrepared {
        entries: u64,
        bytes: u64,
    },
    Error(ErrorReply),
    /// A backup's answer to [`PeerRequest::Replicate`]. (Appended last.)
    Replicated(ReplicaAnswer),
}

impl PeerResponse {
    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            PeerResponse::Accepted => "accepted",
            PeerResponse::MigrationPrepared { .. } => "migration_prepared",
            PeerResponse::Error(_) => "error",
            PeerResponse::Replicated(_) => "replicated",
        }
    }
}

/// Control plane to the source shard: hand `slots` over to `target_address`. The source
/// freezes them, redirects their parked requests, copies their state to the target and
/// answers [`PeerResponse::MigrationPrepared`]; it keeps them frozen until a map that
/// gives them away (commit) or a [`PeerRequest::MigrateAbort`] arrives.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigrateOut {
    pub migration_id: u64,
    pub slots: Vec<u32>,
    /// The target shard's own port.
    pub target_address: String,
}

/// Control plane to the source shard: hand `slots` to `target`, which the source's map
/// names an in-sync backup of each of them, so it holds them already. The source
/// freezes them, redirects their parked requests, waits until its stream to the target
/// has applied every change of theirs, and answers [`PeerResponse::MigrationPrepared`];
/// from there on as [`MigrateOut`]. The committed map names the source a backup of the
/// slots in the target's place: its frozen copy is the slots' final state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HandOver {
    pub migration_id: u64,
    pub slots: Vec<u32>,
    pub target: ShardProcessRef,
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
