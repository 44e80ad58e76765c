//! Synchronous replication of a shard's slots to backup shards on other nodes, sans
//! I/O: the shard's shell moves the batches and answers over its links and feeds the
//! results back.
//!
//! - [`primary`]: one stream per backup, the changed keys each still has to ship,
//!   and the answers held until every required backup applied what decided them.
//! - [`backup`]: which stream a backup follows from each primary, and the checks
//!   (its own map, stream order, sequence) before a batch is applied to its store.
//! - [`slots`]: a set of slots as a bitmap.
//!
//! The unit of replication is the current image of a changed key (see
//! `engram_proto::replication`), batched per pair of shards: one batch carries every
//! key changed since the previous one, so a burst of writes costs one round trip.

pub mod backup;
pub mod primary;
pub mod slots;

#[cfg(test)]
mod tests;

pub use backup::{Backup, PrimaryView};
pub use primary::{Primary, PrimaryEvent, Ticket, Wanted};
pub use slots::SlotSet;

/// One process's shard: a map names the incarnation of each copy it counts on, so a
/// process that restarted empty at the same address is never taken for its predecessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardProcess {
    pub node_id: u64,
    pub shard_id: u16,
    pub incarnation: u64,
}
