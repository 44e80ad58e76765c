//! What a primary shard ships to each backup of its slots, and what the backup answers.
//!
//! A primary keeps one *stream* per backup shard. A stream carries, in order, full
//! images of the keys that changed (never the requests that changed them), so applying
//! a batch twice, or an image older than one already applied, is the only thing a
//! backup must refuse, and it does so by sequence number. A stream opens with a
//! snapshot of every key of the slots it covers, sent in batches while the primary
//! keeps serving; the keys written meanwhile follow as images too, so when the last
//! snapshot batch is applied the backup holds the primary's state.
//!
//! Images are the answer-deciding state as a migration moves it ([`MigratedEntry`]):
//! values, TTLs, versions, lock holders and fences, permits and leases, barrier
//! generations, queue contents; with them travel the exactly-once records of the
//! operations that made them and each client's acknowledgement mark, so a retry
//! after a failover finds its first answer at the new primary.
//!
//! Compatibility rule (as in `message`): variants and fields are only ever appended.

use rkyv::{Archive, Deserialize, Serialize};

use crate::migration::{MigratedEntry, MigratedRecord};

/// Who sends a stream, and which opening of it. A backup follows one stream per primary
/// shard, the newest by `(opened_epoch, incarnation, opening)`: a batch of an older one comes from
/// a process or a configuration that no longer leads the slots, and is refused.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaStreamId {
    pub primary_node: u64,
    pub primary_shard: u16,
    /// The incarnation of the primary's process: a restarted process opens new streams.
    pub incarnation: u64,
    /// The epoch of the map the primary opened the stream under.
    pub opened_epoch: u64,
    /// The incarnation of the backup's process the stream is for: a backup that
    /// restarted (empty) refuses what was meant for its predecessor.
    pub backup_incarnation: u64,
    /// Counts the primary's openings, so two under one epoch differ too.
    pub opening: u64,
}

impl ReplicaStreamId {
    /// The order in which openings of one primary shard's streams supersede each other.
    pub fn rank(&self) -> (u64, u64, u64) {
        (self.opened_epoch, self.incarnation, self.opening)
    }
}

/// One shipment of a stream. Batch 1 opens the stream and lists the slots it covers;
/// every later batch continues it with the next sequence number.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReplicaBatch {
    pub stream: ReplicaStreamId,
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Batch 1: the slots the stream covers, as inclusive ranges. The backup keeps
    /// what it already holds of them until the snapshot ends (it may be the only other
    /// copy), then drops the keys the snapshot did not name. A later batch carries them
    /// only when the stream narrowed (its primary gave slots away): from that batch on,
    /// the backup follows only these. Empty otherwise.
    pub covered: Vec<(u32, u32)>,
    /// The current image of each key that changed (or, during the snapshot, of each key
    /// in the snapshot's next part).
    pub entries: Vec<MigratedEntry>,
    /// Keys that no longer exist at the primary.
    pub removed_keys: Vec<Vec<u8>>,
    pub records: Vec<MigratedRecord>,
    /// `(client_id, completed_below_op_id)` of the clients whose records are in the
    /// batch: the backup drops the records they acknowledged, as the primary did.
    pub acknowledged: Vec<(u64, u64)>,
    /// The primary's version counter: a promoted backup draws above it.
    pub last_version: u64,
    /// This batch ends the snapshot: the backup now holds every key of the covered slots.
    pub snapshot_done: bool,
}

/// A backup's answer to one batch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// Every batch of the stream up to `seq` is applied.
    Applied { stream: ReplicaStreamId, seq: u64 },
    /// The batch was not applied; see [`ReplicaRefusal`].
    Refused {
        stream: ReplicaStreamId,
        seq: u64,
        refusal: ReplicaRefusal,
    },
}

/// Why a backup did not apply a batch, and what the primary does about it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ReplicaRefusal {
    /// The backup's map is older than the stream's: resend once it has caught up.
    MapBehind { backup_epoch: u64 },
    /// The backup's map (at `backup_epoch`) does not name the sender primary of the
    /// stream's slots: the sender is deposed and must stop serving them.
    NotPrimary { backup_epoch: u64 },
    /// A newer stream from the same primary shard superseded this one.
    Superseded,
    /// A gap: resend from `expected`.
    OutOfOrder { expected: u64 },
    /// The batch is malformed or does not fit (memory, records): named in `reason`.
    Invalid { reason: String },
    /// The stream is for another process at this address (`incarnation` is this one's):
    /// the backup restarted, empty, and the control plane will replace it.
    NotThisProcess { incarnation: u64 },
}
