//! The source's side of a hand-over: a migration onto a shard that the map names an
//! in-sync backup of every slot moved, so nothing is copied while the slots are frozen.
//!
//! The source freezes the slots as for a copy, then waits until its replication stream
//! to the target (and to every other backup) has applied every change of theirs (the
//! freeze means no change can follow), and answers `MigrationPrepared`. From there the two-phase hand-over goes on
//! as for a copy; the committed map names the source a backup of the slots in the
//! target's place, and the source keeps its frozen copy as that backup's (see
//! `on_new_map`). So a move onto a backup costs a round trip of the stream, not a copy,
//! and the slots keep their count of copies throughout.

use std::rc::Rc;
use std::time::{Duration, Instant};

use engram_proto::{ErrorCode, HandOver, PeerResponse};

use super::migration::Shipped;
use super::Shard;
use crate::replication::{ShardProcess, SlotSet};

/// How often a hand-over looks whether the target holds every change: it waits about one
/// round trip of the stream, and looking costs a few lookups, so polling beats a
/// wake-up path from the stream's link.
pub const HAND_OVER_POLL_MS: u64 = 1;

impl Shard {
    /// Phase one of a hand-over at the source: freeze, redirect waiters, wait until the
    /// target has applied everything of the slots.
    pub async fn hand_over(self: Rc<Self>, order: HandOver) -> PeerResponse {
        let target = ShardProcess {
            node_id: order.target.node_id,
            shard_id: order.target.shard_id,
            incarnation: order.target.incarnation,
        };
        if let Err(refusal) = self.check_migrate_out(&order.slots) {
            return refusal;
        }
        if let Err(refusal) = self.check_backed_up_by(target, &order.slots) {
            return refusal;
        }
        self.freeze(order.migration_id, &order.slots);
        let slots: SlotSet = order.slots.iter().copied().collect();
        let held = self
            .wait_until_ready_to_hand_over(order.migration_id, target, &slots)
            .await;
        let shipped = held.map(|entries| Shipped { entries, bytes: 0 });
        let described = format!("{target:?}");
        self.settle_out(order.migration_id, &order.slots, &described, shipped)
    }

    /// Refuses a hand-over to a shard process the map does not name an in-sync backup
    /// of every slot: only such a copy may lead them without a copy first.
    fn check_backed_up_by(&self, target: ShardProcess, slots: &[u32]) -> Result<(), PeerResponse> {
        let routing = self.routing();
        let named = |slot: u32| {
            routing
                .map
                .backups_of(slot)
                .iter()
                .any(|&index| routing.shard_process(index) == Some(target))
        };
        match slots.iter().find(|&&slot| !named(slot)) {
            Some(slot) => Err(self.peer_error(
                ErrorCode::InvalidArgument,
                format!(
                    "slot {slot} is not backed up by {target:?} under map epoch {}: hand it over by copy",
                    routing.epoch()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Waits until `target` (and every other backup) has applied every change of
    /// `slots`, at most `MIGRATION_PEER_TIMEOUT_MS`, or until the migration is aborted;
    /// gives back how many keys the slots hold.
    async fn wait_until_ready_to_hand_over(
        &self,
        migration_id: u64,
        target: ShardProcess,
        slots: &SlotSet,
    ) -> Result<u64, String> {
        let started = Instant::now();
        let timeout = Duration::from_millis(super::MIGRATION_PEER_TIMEOUT_MS);
        loop {
            if !self.migrating_out(migration_id) {
                return Err("the migration was aborted meanwhile".to_string());
            }
            if self.may_hand_over(target, slots) {
                let keys = self.store.borrow().keys_in_slots(|slot| slots.contains(slot)).len();
                return Ok(keys as u64);
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "the target did not apply every change of the slots within {} ms",
                    super::MIGRATION_PEER_TIMEOUT_MS
                ));
            }
            self.kick_replication();
            crate::runtime::sleep(Duration::from_millis(HAND_OVER_POLL_MS)).await;
        }
    }
}
