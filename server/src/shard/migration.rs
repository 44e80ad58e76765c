//! The shard's side of live slot migration, driven by the control plane.
//!
//! A migration is a two-phase hand-over with the control plane as coordinator:
//! 1. `MigrateOut` to the source shard: it freezes the slots (requests for them get
//!    `TryAgain`), answers the requests parked on them `TryAgain` too (their clients
//!    re-send them with the same operation id, and once the hand-over ends the map sends
//!    them to the new owner), copies the slots' objects and
//!    exactly-once records to the target with `MigrateIn`, and answers `MigrationPrepared`.
//!    The target keeps what it received without serving it.
//! 2. The control plane commits by persisting a map that gives the slots to the target
//!    and installing it. A shard that sees that map serves (target) or drops its frozen
//!    copy (source). On failure the control plane sends `MigrateAbort` instead: the
//!    source unfreezes with its state untouched, the target drops its copy.
//!
//! Nothing in flight is lost: a frozen slot's requests are refused before they are
//! applied, and the source's copy is only dropped once a committed map names the target.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use engram_proto::limits::SLOT_COUNT;
use engram_proto::migration::{decode_batch, encode_batch};
use engram_proto::{ErrorCode, MigrateIn, MigrateOut, PeerProtocol, PeerRequest, PeerResponse, SlotMap};

use super::Shard;
use crate::cluster::{Owner, Routing};
use crate::link::PeerLink;
use crate::store::slot_of_stored_key;

/// Encoded size of one `MigrateIn` batch: well below the frame payload limit, and small
/// enough that the target applies one without stalling its other work.
pub const MIGRATION_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// How long the source waits for the target at each exchange (connect, each batch)
/// before it gives up and unfreezes. After `MigrationPrepared` the freeze lasts until
/// the control plane decides; heartbeats settle a decision that did not arrive.
pub const MIGRATION_PEER_TIMEOUT_MS: u64 = 5_000;
/// Uncommitted incoming migrations one shard holds at most.
pub const INCOMING_MIGRATIONS_MAX: usize = 64;
/// Aborted migration ids a shard remembers, so a late batch of one is refused rather
/// than imported into a migration that no longer exists.
pub const ABORTED_MIGRATIONS_REMEMBERED_MAX: usize = 1024;

/// The migration taking slots off this shard.
pub struct Outgoing {
    pub migration_id: u64,
    /// Slot-indexed: whether the slot is frozen.
    frozen: Vec<bool>,
    slots: Vec<u32>,
}

/// Migrations into this shard that no map has committed yet.
#[derive(Default)]
pub struct Incoming {
    open: foldhash::HashMap<u64, IncomingMigration>,
    /// Recently aborted ids, oldest first.
    aborted: VecDeque<u64>,
}

impl Incoming {
    /// Checks a batch's place in its migration. Batch 0 opens the migration and gives
    /// back the slots (slot-indexed) whose leftovers of earlier, unfinished attempts the
    /// shard must drop; later batches must follow in order and give back nothing.
    pub fn admit(&mut self, order: &MigrateIn) -> Result<Option<Vec<bool>>, String> {
        let id = order.migration_id;
        if self.aborted.contains(&id) {
            return Err(format!("migration {id} was aborted"));
        }
        if let Some(open) = self.open.get(&id) {
            if open.slots != order.slots {
                return Err(format!(
                    "batch of migration {id} names other slots than its first batch"
                ));
            }
            if open.next_batch_index != order.batch_index {
                return Err(format!(
                    "batch {} of migration {id} arrived, expected batch {}",
                    order.batch_index, open.next_batch_index
                ));
            }
            return Ok(None);
        }
        if order.batch_index != 0 {
            return Err(format!(
                "batch {} of migration {id}, which is not open here",
                order.batch_index
            ));
        }
        if self.open.len() >= INCOMING_MIGRATIONS_MAX {
            return Err(format!(
                "shard holds incoming_migrations_max ({INCOMING_MIGRATIONS_MAX}) uncommitted migrations"
            ));
        }
        let mut stale = slot_set(&order.slots);
        self.open.retain(|_, open| {
            let overlaps = open.slots.iter().any(|&slot| stale[slot as usize]);
            if overlaps {
                for &slot in &open.slots {
                    stale[slot as usize] = true;
                }
            }
            !overlaps
        });
        self.open.insert(
            id,
            IncomingMigration {
                slots: order.slots.clone(),
                next_batch_index: 0,
            },
        );
        Ok(Some(stale))
    }

    /// Whether an open migration brings `slot` here.
    pub fn imports(&self, slot: u32) -> bool {
        self.open.values().any(|open| open.slots.contains(&slot))
    }

    /// Records that an admitted batch was imported.
    pub fn batch_applied(&mut self, migration_id: u64) {
        if let Some(open) = self.open.get_mut(&migration_id) {
            open.next_batch_index += 1;
        }
    }

    /// Forgets `migration_id` (0: every open migration) and remembers a named one as
    /// aborted, so a late batch of it is refused; gives back the slots they held.
    pub fn abort(&mut self, migration_id: u64) -> Vec<u32> {
        if migration_id != 0 {
            if self.aborted.len() >= ABORTED_MIGRATIONS_REMEMBERED_MAX {
                self.aborted.pop_front();
            }
            self.aborted.push_back(migration_id);
        }
        let ids: Vec<u64> = self
            .open_ids()
            .into_iter()
            .filter(|id| migration_id == 0 || *id == migration_id)
            .collect();
        ids.iter()
            .filter_map(|id| self.open.remove(id))
            .flat_map(|open| open.slots)
            .collect()
    }

    /// Forgets the migrations a map committed (every slot of theirs `served` here);
    /// gives back their ids.
    pub fn commit(&mut self, served: impl Fn(u32) -> bool) -> Vec<u64> {
        let committed: Vec<u64> = self
            .open_ids()
            .into_iter()
            .filter(|id| self.open[id].slots.iter().all(|&slot| served(slot)))
            .collect();
        for id in &committed {
            self.open.remove(id);
        }
        committed
    }

    /// The open migrations' ids, in order (so that a simulation replays alike).
    pub fn open_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.open.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// What a migration out copied to its target.
pub(super) struct Shipped {
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

struct IncomingMigration {
    slots: Vec<u32>,
    next_batch_index: u32,
}

fn slot_set(slots: &[u32]) -> Vec<bool> {
    let mut set = vec![false; SLOT_COUNT as usize];
    for &slot in slots {
        if let Some(member) = set.get_mut(slot as usize) {
            *member = true;
        }
    }
    set
}

impl Shard {
    pub fn is_frozen(&self, slot: u32) -> bool {
        self.outgoing
            .borrow()
            .as_ref()
            .is_some_and(|outgoing| outgoing.frozen.get(slot as usize).copied().unwrap_or(false))
    }

    /// Installs a map sent by the control plane (newer ones only) and applies it here at
    /// once; the node's other shards pick it up at their next request or tick.
    pub fn install_map(&self, map: SlotMap) -> PeerResponse {
        let epoch = map.epoch;
        match self.node_map.install(map) {
            Ok(_) => {
                self.routing();
                PeerResponse::Accepted
            }
            Err(reason) => self.peer_error(
                ErrorCode::InvalidArgument,
                format!("map of epoch {epoch} is invalid: {reason}"),
            ),
        }
    }

    /// Called when this shard starts routing with a new map: commits what it decides.
    pub(super) fn on_new_map(&self, previous: &Routing, routing: &Routing) {
        self.store.borrow_mut().raise_version_floor(routing.map.version_floor);
        self.drop_slots_given_away(previous, routing);
        let mine = |slot: u32| routing.owner(slot) == Owner::Local(self.shard_id as u16);
        // A slot lost meanwhile did not go to the target: that is no commit.
        let elsewhere = |slot: u32| !mine(slot) && routing.owner(slot) != Owner::Lost;
        let committed = self
            .outgoing
            .borrow()
            .as_ref()
            .filter(|outgoing| outgoing.slots.iter().all(|&slot| elsewhere(slot)))
            .map(|outgoing| (outgoing.migration_id, outgoing.frozen.clone()));
        if let Some((migration_id, frozen)) = committed {
            let now_ms = self.now_ms();
            // A hand-over's map names this shard a backup of the slots it handed over:
            // its frozen copy is their final state, which the new primary's stream
            // brings up to date.
            let dropped =
                |slot: u32| frozen.get(slot as usize).copied().unwrap_or(false) && !self.backs_up(routing, slot);
            self.store.borrow_mut().remove_slots(dropped, now_ms);
            *self.outgoing.borrow_mut() = None;
            // Anything still parked there was answered TryAgain by the removal.
            self.deliver_completions();
            self.node.metrics.record_migration("out", "committed");
            tracing::info!(shard = self.shard_id, migration_id, "migration out committed");
        }
        let committed = self.incoming.borrow_mut().commit(mine);
        for migration_id in committed {
            self.node.metrics.record_migration("in", "committed");
            tracing::info!(shard = self.shard_id, migration_id, "migration in committed");
        }
        self.drop_copies_no_longer_backed_up(previous, routing);
        self.configure_replication(routing);
        self.publish_slots_owned(routing);
        self.publish_migrations();
        self.publish_stats();
    }

    /// Drops this shard's copy of every slot a map gives to another shard, and keeps
    /// the copy of slots a map marks lost. A lost slot's data is kept because this
    /// same process may get the slot back (it was only paused): nobody served it
    /// meanwhile, so the copy is current. A slot given to another shard (a committed
    /// migration, or a reclaim that restarted it there, empty, possibly while this
    /// node was paused and missed the maps in between) must never be served from here
    /// again. The outgoing migration's frozen slots are left to its commit.
    fn drop_slots_given_away(&self, previous: &Routing, routing: &Routing) {
        let me = Owner::Local(self.shard_id as u16);
        let frozen = self.outgoing.borrow().as_ref().map(|outgoing| outgoing.frozen.clone());
        let is_frozen = |slot: u32| {
            frozen
                .as_ref()
                .is_some_and(|frozen| frozen.get(slot as usize).copied().unwrap_or(false))
        };
        let mut stranded = self.stranded.borrow_mut();
        let mut given_away = std::collections::BTreeSet::new();
        for slot in 0..SLOT_COUNT {
            let (before, now) = (previous.owner(slot), routing.owner(slot));
            if now == Owner::Lost {
                if before == me {
                    stranded.insert(slot);
                }
            } else if now == me {
                stranded.remove(&slot);
            } else if (stranded.remove(&slot) || before == me) && !is_frozen(slot) {
                given_away.insert(slot);
            }
        }
        drop(stranded);
        if given_away.is_empty() {
            return;
        }
        let now_ms = self.now_ms();
        self.store
            .borrow_mut()
            .remove_slots(|slot| given_away.contains(&slot), now_ms);
        self.deliver_completions();
        tracing::info!(
            shard = self.shard_id,
            slots = given_away.len(),
            "dropped this shard's copy of slots the map gives to another shard"
        );
    }

    /// Makes the open migrations visible to the heartbeat.
    fn publish_migrations(&self) {
        let mut open = self.incoming.borrow().open_ids();
        open.extend(self.outgoing.borrow().as_ref().map(|outgoing| outgoing.migration_id));
        let mut published = self
            .own_stats()
            .migrations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *published = open;
    }

    /// Phase one at the source: freeze, redirect waiters, copy to the target.
    pub async fn migrate_out(self: Rc<Self>, order: MigrateOut) -> PeerResponse {
        if let Err(refusal) = self.check_migrate_out(&order.slots) {
            return refusal;
        }
        let frozen = self.freeze(order.migration_id, &order.slots);
        let in_slot = |slot: u32| frozen.get(slot as usize).copied().unwrap_or(false);
        let now_ms = self.now_ms();
        let exported = Instant::now();
        let batches = self
            .store
            .borrow()
            .export_slots(in_slot, now_ms, MIGRATION_BATCH_BYTES_MAX);
        let shipped = self.ship(&order, batches, exported).await;
        self.settle_out(order.migration_id, &order.slots, &order.target_address, shipped)
    }

    /// Freezes `slots` for migration `migration_id` and answers their parked requests
    /// `TryAgain`; gives back the frozen set (slot-indexed).
    pub(super) fn freeze(&self, migration_id: u64, slots: &[u32]) -> Vec<bool> {
        let frozen = slot_set(slots);
        *self.outgoing.borrow_mut() = Some(Outgoing {
            migration_id,
            frozen: frozen.clone(),
            slots: slots.to_vec(),
        });
        self.publish_migrations();
        let now_ms = self.now_ms();
        self.store
            .borrow_mut()
            .bounce_waiters(|slot| frozen.get(slot as usize).copied().unwrap_or(false), now_ms);
        self.deliver_completions();
        frozen
    }

    /// Whether migration `migration_id` is still this shard's migration out (not
    /// aborted, not ended).
    pub(super) fn migrating_out(&self, migration_id: u64) -> bool {
        self.outgoing
            .borrow()
            .as_ref()
            .is_some_and(|outgoing| outgoing.migration_id == migration_id)
    }

    /// Ends phase one: prepared if the target holds the slots and no abort came
    /// meanwhile (the slots would be unfrozen and may have taken writes since, so this
    /// copy must not be committed), else unfrozen.
    pub(super) fn settle_out(
        &self,
        migration_id: u64,
        slots: &[u32],
        target: &str,
        shipped: Result<Shipped, String>,
    ) -> PeerResponse {
        let shipped = match shipped {
            Ok(_) if !self.migrating_out(migration_id) => Err("the migration was aborted meanwhile".to_string()),
            other => other,
        };
        match shipped {
            Ok(shipped) => self.prepared(migration_id, slots, target, shipped),
            Err(reason) => self.failed_out(migration_id, &reason),
        }
    }

    /// Refuses a migration out of no slots, of slots this shard does not serve, or while
    /// another migration out runs.
    pub(super) fn check_migrate_out(&self, slots: &[u32]) -> Result<(), PeerResponse> {
        let routing = self.routing();
        if slots.is_empty() {
            return Err(self.peer_error(ErrorCode::InvalidArgument, "a migration moves at least one slot"));
        }
        if let Some(&slot) = slots
            .iter()
            .find(|&&slot| slot >= SLOT_COUNT || routing.owner(slot) != Owner::Local(self.shard_id as u16))
        {
            return Err(self.peer_error(
                ErrorCode::WrongShard,
                format!(
                    "slot {slot} is not served by this shard under map epoch {}",
                    routing.epoch()
                ),
            ));
        }
        if let Some(outgoing) = self.outgoing.borrow().as_ref() {
            return Err(self.peer_error(
                ErrorCode::Busy,
                format!("migration {} is still in progress on this shard", outgoing.migration_id),
            ));
        }
        Ok(())
    }

    /// Phase one ended: the target holds the copy; the slots stay frozen until the
    /// control plane decides.
    fn prepared(&self, migration_id: u64, slots: &[u32], target: &str, shipped: Shipped) -> PeerResponse {
        let Shipped { entries, bytes } = shipped;
        tracing::info!(
            shard = self.shard_id,
            migration_id,
            slots = slots.len(),
            entries,
            bytes,
            %target,
            "migration out prepared"
        );
        PeerResponse::MigrationPrepared { entries, bytes }
    }

    /// Phase one failed: the slots unfreeze with their state untouched.
    fn failed_out(&self, migration_id: u64, reason: &str) -> PeerResponse {
        self.unfreeze(migration_id);
        self.node.metrics.record_migration("out", "failed");
        tracing::warn!(shard = self.shard_id, migration_id, %reason, "migration out failed");
        self.peer_error(
            ErrorCode::TryAgain,
            format!("migration {migration_id} failed: {reason}"),
        )
    }

    async fn ship(
        &self,
        order: &MigrateOut,
        batches: Vec<engram_proto::migration::SlotBatch>,
        exported: Instant,
    ) -> Result<Shipped, String> {
        // The export always yields a batch (it carries the version counter even for
        // empty slots), and the target must confirm it holds the migration before the
        // control plane may commit it.
        if batches.is_empty() {
            return Err("the export produced no batch".into());
        }
        let credentials = self.link_credentials();
        let timeout = Duration::from_millis(MIGRATION_PEER_TIMEOUT_MS);
        let mut link = PeerLink::<PeerProtocol>::connect(&order.target_address, credentials, timeout, self.peer_tls())
            .await
            .map_err(|error| error.to_string())?;
        let mut entries = 0u64;
        let mut bytes = 0u64;
        for (batch_index, batch) in batches.into_iter().enumerate() {
            entries += batch.entries.len() as u64;
            let encoded = encode_batch(&batch).map_err(|error| error.to_string())?;
            bytes += encoded.len() as u64;
            let command = PeerRequest::MigrateIn(MigrateIn {
                migration_id: order.migration_id,
                slots: order.slots.clone(),
                batch: encoded,
                batch_index: u32::try_from(batch_index).unwrap_or(u32::MAX),
                age_ms: exported.elapsed().as_millis() as u64,
            });
            match link.call(&command).await.map_err(|error| error.to_string())? {
                PeerResponse::Accepted => {}
                PeerResponse::Error(reply) => return Err(format!("target refused a batch: {}", reply.message)),
                other => return Err(format!("target answered {} to a batch", other.name())),
            }
        }
        Ok(Shipped { entries, bytes })
    }

    fn unfreeze(&self, migration_id: u64) {
        {
            let mut outgoing = self.outgoing.borrow_mut();
            if outgoing
                .as_ref()
                .is_some_and(|outgoing| outgoing.migration_id == migration_id)
            {
                *outgoing = None;
            }
        }
        self.publish_migrations();
    }

    /// At the target: keeps one batch of an incoming migration, unserved until committed.
    pub fn migrate_in(&self, order: &MigrateIn) -> PeerResponse {
        let routing = self.routing();
        let mine = Owner::Local(self.shard_id as u16);
        if let Some(&slot) = order
            .slots
            .iter()
            .find(|&&slot| slot >= SLOT_COUNT || routing.owner(slot) == mine)
        {
            return self.peer_error(
                ErrorCode::InvalidArgument,
                format!("slot {slot} cannot migrate into a shard that already serves it"),
            );
        }
        // Batch 0 drops what the target holds in the slots: a backup's copy, which its
        // primary counts on, must not go that way.
        if let Some(&slot) = order.slots.iter().find(|&&slot| self.backs_up(&routing, slot)) {
            return self.peer_error(
                ErrorCode::InvalidArgument,
                format!("slot {slot} cannot migrate into a shard that backs it up"),
            );
        }
        let batch = match decode_batch(&order.batch) {
            Ok(batch) => batch,
            Err(error) => return self.peer_error(ErrorCode::Malformed, format!("migration batch: {error}")),
        };
        let slots = slot_set(&order.slots);
        let stray = batch.entries.iter().find(|entry| {
            slot_of_stored_key(&entry.key).is_none_or(|slot| !slots.get(slot as usize).copied().unwrap_or(false))
        });
        if let Some(entry) = stray {
            return self.peer_error(
                ErrorCode::InvalidArgument,
                format!(
                    "migration batch holds a key of {} bytes outside its slots",
                    entry.key.len()
                ),
            );
        }
        if let Err(refusal) = self.admit_batch(order, &routing) {
            return self.peer_error(ErrorCode::InvalidArgument, refusal);
        }
        // Leases and TTLs in the batch were measured when it was exported.
        let exported_at_ms = self.now_ms().saturating_sub(order.age_ms);
        let imported = self.store.borrow_mut().import_batch(batch, exported_at_ms);
        if let Err(error) = imported {
            let code = match error {
                crate::store::ImportError::OutOfMemory { .. } => ErrorCode::OutOfMemory,
                _ => ErrorCode::InvalidArgument,
            };
            return self.peer_error(code, error.to_string());
        }
        self.incoming.borrow_mut().batch_applied(order.migration_id);
        self.publish_stats();
        PeerResponse::Accepted
    }

    /// Checks a batch's place in its migration. Batch 0 opens the migration and drops
    /// whatever earlier, unfinished attempts left in its slots (this shard does not serve
    /// them, so nothing there is live); later batches must follow in order.
    fn admit_batch(&self, order: &MigrateIn, routing: &Routing) -> Result<(), String> {
        let Some(stale) = self.incoming.borrow_mut().admit(order)? else {
            return Ok(());
        };
        self.set_aside_for_import(&stale);
        let mine = Owner::Local(self.shard_id as u16);
        let now_ms = self.now_ms();
        self.store.borrow_mut().remove_slots(
            |slot| stale.get(slot as usize).copied().unwrap_or(false) && routing.owner(slot) != mine,
            now_ms,
        );
        self.deliver_completions();
        self.publish_migrations();
        Ok(())
    }

    /// Forgets a migration that will not commit (0: every migration the current map did
    /// not commit). The source unfreezes; the target drops what it holds of slots it does
    /// not serve. Refused while this shard's map is older than the one the abort was
    /// decided under, since the migration may have committed in between.
    pub fn migrate_abort(&self, migration_id: u64, map_epoch: u64) -> PeerResponse {
        let routing = self.routing();
        if routing.epoch() < map_epoch {
            return self.peer_error(
                ErrorCode::TryAgain,
                format!(
                    "abort decided under map epoch {map_epoch}, this shard routes with epoch {}; retry once it catches up",
                    routing.epoch()
                ),
            );
        }
        let aborted_out = {
            let mut outgoing = self.outgoing.borrow_mut();
            let matches = outgoing
                .as_ref()
                .is_some_and(|outgoing| migration_id == 0 || outgoing.migration_id == migration_id);
            if matches {
                *outgoing = None;
            }
            matches
        };
        if aborted_out {
            self.node.metrics.record_migration("out", "aborted");
        }
        let aborted_in = self.incoming.borrow_mut().abort(migration_id);
        if !aborted_in.is_empty() {
            let mine = Owner::Local(self.shard_id as u16);
            let slots = slot_set(&aborted_in);
            let now_ms = self.now_ms();
            self.store.borrow_mut().remove_slots(
                |slot| slots.get(slot as usize).copied().unwrap_or(false) && routing.owner(slot) != mine,
                now_ms,
            );
            self.deliver_completions();
            self.node.metrics.record_migration("in", "aborted");
            self.publish_stats();
        }
        self.publish_migrations();
        tracing::info!(shard = self.shard_id, migration_id, aborted_out, "migration aborted");
        PeerResponse::Accepted
    }
}
