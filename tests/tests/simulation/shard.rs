//! A model shard: the real sans-I/O store (`engram_server::store::Store`) for its data
//! and exactly-once records, and the shard side of migration as `server/src/shard/migration.rs`
//! does it: freeze and export on `MigrateOut`, keep `MigrateIn` batches unserved, commit
//! on a map that gives the frozen slots away, abort with the epoch check, and drop the
//! copy of every slot a map gives to another shard.

use std::collections::{BTreeSet, VecDeque};

use engram_proto::limits::SLOT_COUNT;
use engram_proto::migration::{decode_batch, encode_batch};
use engram_proto::{DataRequest, ErrorCode, ErrorReply, MigrateIn, PeerResponse, Response, SlotMap, LOST_SHARD_INDEX};
use engram_server::shard::Incoming;
use engram_server::store::{slot_of_stored_key, Outcome, Store};

use crate::Bug;

pub use engram_server::shard::{MIGRATION_BATCH_BYTES_MAX, MIGRATION_PEER_TIMEOUT_MS};
/// Slots compared at once when a shard looks for what a new map changed.
const CHUNK_SLOTS: u32 = 256;
/// Memory a model shard may use: far above what a run stores.
const STORE_MEMORY_BYTES: u64 = 64 << 20;

/// Who owns a slot, from one node's point of view (as `engram_server::cluster::Owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Local(u16),
    Remote(u32),
    Lost,
}

/// A map turned into a slot-indexed owner table for one node.
pub struct Routing {
    pub map: SlotMap,
    owner_index: Vec<u32>,
    /// Per shard of the map: its shard id when it is one of this node's.
    local: Vec<Option<u16>>,
}

impl Routing {
    pub fn new(map: SlotMap, node_id: u64) -> Routing {
        let local = map
            .shards
            .iter()
            .map(|shard| (shard.node_id == node_id).then_some(shard.shard_id))
            .collect();
        Routing {
            owner_index: map.owner_table(),
            map,
            local,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    pub fn owner(&self, slot: u32) -> Owner {
        match self.owner_index.get(slot as usize).copied() {
            None | Some(LOST_SHARD_INDEX) => Owner::Lost,
            Some(index) => match self.local.get(index as usize).copied().flatten() {
                Some(shard) => Owner::Local(shard),
                None => Owner::Remote(index),
            },
        }
    }
}

/// A refusal of a peer's request, as a shard sends it.
pub fn peer_error(code: ErrorCode, message: impl Into<String>) -> PeerResponse {
    PeerResponse::Error(ErrorReply {
        code: code.as_u16(),
        message: message.into(),
        map_epoch: 0,
    })
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        code: code.as_u16(),
        message: message.into(),
        map_epoch: 0,
    })
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

struct Outgoing {
    migration_id: u64,
    frozen: Vec<bool>,
    slots: Vec<u32>,
}

/// A copy the source is sending, batch by batch (it outlives an abort, as the real
/// shard's shipping task does, and then fails at its end).
pub struct Shipment {
    pub migration_id: u64,
    pub slots: Vec<u32>,
    pub target_address: String,
    pub batches: VecDeque<Vec<u8>>,
    pub next_index: u32,
    pub entries: u64,
    pub bytes: u64,
    pub exported_at_ms: u64,
}

pub struct Shard {
    pub id: u16,
    pub store: Store,
    outgoing: Option<Outgoing>,
    incoming: Incoming,
    /// Slot-indexed: whether this shard owned the slot before a map marked it lost
    /// (its copy is kept, since the same process may get the slot back).
    stranded: Vec<bool>,
    bug: Option<Bug>,
}

impl Shard {
    pub fn new(id: u16, hash_seed: u64, bug: Option<Bug>) -> Shard {
        Shard {
            id,
            store: Store::new(STORE_MEMORY_BYTES, hash_seed),
            outgoing: None,
            incoming: Incoming::default(),
            stranded: vec![false; SLOT_COUNT as usize],
            bug,
        }
    }

    pub fn is_frozen(&self, slot: u32) -> bool {
        self.outgoing
            .as_ref()
            .is_some_and(|outgoing| outgoing.frozen.get(slot as usize).copied().unwrap_or(false))
    }

    /// Whether this shard applies requests for `slot` under `routing`.
    pub fn serves(&self, slot: u32, routing: &Routing) -> bool {
        let frozen = self.is_frozen(slot) && self.bug != Some(Bug::ServeFrozenSlots);
        routing.owner(slot) == Owner::Local(self.id) && !frozen
    }

    /// The migrations this shard holds open, for the heartbeat.
    pub fn open_migrations(&self) -> Vec<u64> {
        let mut open = self.incoming.open_ids();
        open.extend(self.outgoing.as_ref().map(|outgoing| outgoing.migration_id));
        open
    }

    /// A client's keyed request (the shard's `admit`, then the store).
    pub fn serve(&mut self, client_id: u64, request: &DataRequest, routing: &Routing, now_ms: u64) -> Response {
        let Some(slot) = slot_of_stored_key(request.command.key()) else {
            return error(ErrorCode::InvalidArgument, "no key");
        };
        match routing.owner(slot) {
            Owner::Lost => return error(ErrorCode::SlotLost, format!("slot {slot} is lost")),
            Owner::Local(owner) if owner == self.id => {}
            _ => return error(ErrorCode::Moved, format!("slot {slot} is served elsewhere")),
        }
        if !self.serves(slot, routing) {
            return error(ErrorCode::TryAgain, format!("slot {slot} is migrating; retry shortly"));
        }
        self.store.expire_due(now_ms, usize::MAX);
        match self.store.apply(client_id, request, now_ms) {
            Outcome::Ready(response) => response,
            Outcome::Parked(_) => error(ErrorCode::Internal, "a counter write parked"),
        }
    }

    /// Phase one at the source: freeze and export; the caller ships the batches.
    pub fn migrate_out(
        &mut self,
        migration_id: u64,
        slots: &[u32],
        target_address: &str,
        routing: &Routing,
        now_ms: u64,
    ) -> Result<Shipment, PeerResponse> {
        if slots.is_empty() {
            return Err(peer_error(
                ErrorCode::InvalidArgument,
                "a migration moves at least one slot",
            ));
        }
        if let Some(&slot) = slots
            .iter()
            .find(|&&slot| slot >= SLOT_COUNT || routing.owner(slot) != Owner::Local(self.id))
        {
            return Err(peer_error(
                ErrorCode::WrongShard,
                format!(
                    "slot {slot} is not served by this shard under map epoch {}",
                    routing.epoch()
                ),
            ));
        }
        if let Some(outgoing) = &self.outgoing {
            return Err(peer_error(
                ErrorCode::Busy,
                format!("migration {} is still in progress on this shard", outgoing.migration_id),
            ));
        }
        let frozen = slot_set(slots);
        let in_slot = |slot: u32| frozen.get(slot as usize).copied().unwrap_or(false);
        self.store.bounce_waiters(in_slot, now_ms);
        let batches = self.store.export_slots(in_slot, now_ms, MIGRATION_BATCH_BYTES_MAX);
        let mut shipment = Shipment {
            migration_id,
            slots: slots.to_vec(),
            target_address: target_address.to_string(),
            batches: VecDeque::new(),
            next_index: 0,
            entries: 0,
            bytes: 0,
            exported_at_ms: now_ms,
        };
        for batch in batches {
            shipment.entries += batch.entries.len() as u64;
            let encoded =
                encode_batch(&batch).map_err(|error| self::peer_error(ErrorCode::Internal, error.to_string()))?;
            shipment.bytes += encoded.len() as u64;
            shipment.batches.push_back(encoded);
        }
        self.outgoing = Some(Outgoing {
            migration_id,
            frozen,
            slots: slots.to_vec(),
        });
        Ok(shipment)
    }

    /// The end of a shipment: prepared only if no abort reached this shard meanwhile.
    pub fn shipped(&mut self, shipment: &Shipment, failure: Option<String>) -> PeerResponse {
        let still_ours = self
            .outgoing
            .as_ref()
            .is_some_and(|outgoing| outgoing.migration_id == shipment.migration_id);
        let failure = match failure {
            None if !still_ours => Some("the migration was aborted while its batches travelled".to_string()),
            other => other,
        };
        match failure {
            None => PeerResponse::MigrationPrepared {
                entries: shipment.entries,
                bytes: shipment.bytes,
            },
            Some(reason) => {
                if still_ours {
                    self.outgoing = None;
                }
                peer_error(
                    ErrorCode::TryAgain,
                    format!("migration {} failed: {reason}", shipment.migration_id),
                )
            }
        }
    }

    /// At the target: keeps one batch of an incoming migration, unserved until committed.
    pub fn migrate_in(&mut self, order: &MigrateIn, routing: &Routing, now_ms: u64) -> PeerResponse {
        let mine = Owner::Local(self.id);
        if let Some(&slot) = order
            .slots
            .iter()
            .find(|&&slot| slot >= SLOT_COUNT || routing.owner(slot) == mine)
        {
            return peer_error(
                ErrorCode::InvalidArgument,
                format!("slot {slot} cannot migrate into a shard that already serves it"),
            );
        }
        let batch = match decode_batch(&order.batch) {
            Ok(batch) => batch,
            Err(problem) => return peer_error(ErrorCode::Malformed, format!("migration batch: {problem}")),
        };
        let slots = slot_set(&order.slots);
        let stray = batch.entries.iter().any(|entry| {
            slot_of_stored_key(&entry.key).is_none_or(|slot| !slots.get(slot as usize).copied().unwrap_or(false))
        });
        if stray {
            return peer_error(
                ErrorCode::InvalidArgument,
                "migration batch holds a key outside its slots",
            );
        }
        if let Err(refusal) = self.admit_batch(order, routing, now_ms) {
            return peer_error(ErrorCode::InvalidArgument, refusal);
        }
        let exported_at_ms = now_ms.saturating_sub(order.age_ms);
        if let Err(problem) = self.store.import_batch(batch, exported_at_ms) {
            return peer_error(ErrorCode::InvalidArgument, problem.to_string());
        }
        self.incoming.batch_applied(order.migration_id);
        PeerResponse::Accepted
    }

    /// Batch 0 opens the migration and drops what earlier unfinished attempts left in
    /// its slots; later batches must follow in order.
    fn admit_batch(&mut self, order: &MigrateIn, routing: &Routing, now_ms: u64) -> Result<(), String> {
        let Some(stale) = self.incoming.admit(order)? else {
            return Ok(());
        };
        let mine = Owner::Local(self.id);
        self.store.remove_slots(
            |slot| stale.get(slot as usize).copied().unwrap_or(false) && routing.owner(slot) != mine,
            now_ms,
        );
        Ok(())
    }

    /// Forgets a migration that will not commit (0: every one the map did not commit),
    /// refused while this shard's map is older than the one the abort was decided under.
    pub fn migrate_abort(&mut self, migration_id: u64, map_epoch: u64, routing: &Routing, now_ms: u64) -> PeerResponse {
        if routing.epoch() < map_epoch {
            return peer_error(
                ErrorCode::TryAgain,
                format!(
                    "abort decided under map epoch {map_epoch}, this shard routes with epoch {}",
                    routing.epoch()
                ),
            );
        }
        if self
            .outgoing
            .as_ref()
            .is_some_and(|outgoing| migration_id == 0 || outgoing.migration_id == migration_id)
        {
            self.outgoing = None;
        }
        let aborted_in = self.incoming.abort(migration_id);
        if !aborted_in.is_empty() {
            let mine = Owner::Local(self.id);
            let slots = slot_set(&aborted_in);
            self.store.remove_slots(
                |slot| slots.get(slot as usize).copied().unwrap_or(false) && routing.owner(slot) != mine,
                now_ms,
            );
        }
        PeerResponse::Accepted
    }

    /// This shard starts routing with a new map: commits what it decides.
    pub fn on_new_map(&mut self, previous: Option<&Routing>, routing: &Routing, now_ms: u64) {
        self.store.raise_version_floor(routing.map.version_floor);
        self.drop_slots_given_away(previous, routing, now_ms);
        let mine = |slot: u32| routing.owner(slot) == Owner::Local(self.id);
        let elsewhere = |slot: u32| !mine(slot) && routing.owner(slot) != Owner::Lost;
        let committed = self
            .outgoing
            .as_ref()
            .is_some_and(|outgoing| outgoing.slots.iter().all(|&slot| elsewhere(slot)));
        if committed {
            if let Some(outgoing) = self.outgoing.take() {
                let frozen = outgoing.frozen;
                self.store
                    .remove_slots(|slot| frozen.get(slot as usize).copied().unwrap_or(false), now_ms);
            }
        }
        self.incoming.commit(mine);
    }

    /// Drops this shard's copy of every slot a map gives to another shard, keeps the
    /// copy of slots a map marks lost, and leaves the frozen slots to the commit.
    fn drop_slots_given_away(&mut self, previous: Option<&Routing>, routing: &Routing, now_ms: u64) {
        let me = Owner::Local(self.id);
        let same_shards = previous.is_some_and(|previous| previous.map.shards == routing.map.shards);
        let mut given_away = BTreeSet::new();
        for start in (0..SLOT_COUNT).step_by(CHUNK_SLOTS as usize) {
            if same_shards && self.unchanged(previous, routing, start) {
                continue;
            }
            for slot in start..start + CHUNK_SLOTS {
                let before = previous.map_or(Owner::Lost, |previous| previous.owner(slot));
                let now = routing.owner(slot);
                let stranded = &mut self.stranded[slot as usize];
                if now == Owner::Lost {
                    *stranded |= before == me;
                } else if now == me {
                    *stranded = false;
                } else if (std::mem::take(stranded) || before == me) && !self.is_frozen(slot) {
                    given_away.insert(slot);
                }
            }
        }
        if !given_away.is_empty() {
            self.store.remove_slots(|slot| given_away.contains(&slot), now_ms);
        }
    }

    /// Whether the `CHUNK_SLOTS` slots from `start` have the same owners in both maps
    /// (which list the same shards) and none is stranded here: then nothing changes for
    /// them (a shortcut that keeps a run fast, where the real shard looks at every slot).
    fn unchanged(&self, previous: Option<&Routing>, routing: &Routing, start: u32) -> bool {
        let Some(previous) = previous else { return false };
        let chunk = start as usize..(start + CHUNK_SLOTS) as usize;
        previous.owner_index[chunk.clone()] == routing.owner_index[chunk.clone()]
            && !self.stranded[chunk].contains(&true)
    }
}
