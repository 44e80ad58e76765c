//! The backup's side: which stream it follows from each primary shard, and whether a
//! batch may be applied.
//!
//! A batch is applied only if the backup's own map names its sender primary of every
//! slot the stream covers (checked when the stream opens) and of every slot the batch
//! changes, the stream is the newest opening from that primary shard, and the batch is
//! the next in sequence. At each new map a stream leaves the slots the map gives to
//! another primary, and a primary that gives slots away says so in its next batch, so
//! a stream narrows without a new opening (and without a new snapshot). The first rule
//! is what keeps a deposed primary out: once the backup has installed the map that
//! promoted it (or another backup), a change the old primary sends of those slots is
//! refused, so no write reaches it from both sides. Until it has installed that map it
//! is not serving, and what it applies is what the old primary did before its lease
//! ended.

use std::collections::{HashMap, HashSet};

use engram_proto::{ReplicaAnswer, ReplicaBatch, ReplicaRefusal, ReplicaStreamId};

use super::slots::SlotSet;
use super::ShardProcess;
use crate::store::{slot_of_stored_key, ReplicaChanges, Store};

/// What a backup needs to know of its map.
pub trait PrimaryView {
    fn epoch(&self) -> u64;
    /// The shard process that serves `slot` as primary, if any.
    fn primary_of(&self, slot: u32) -> Option<ShardProcess>;
}

#[derive(Debug)]
struct Following {
    id: ReplicaStreamId,
    slots: SlotSet,
    applied: u64,
    /// The map epoch at which the sender was last checked to be the slots' primary.
    checked_epoch: u64,
    /// Keys the snapshot named so far, until it ends.
    named: Option<HashSet<Box<[u8]>>>,
}

/// Every stream a backup shard follows, by primary shard.
#[derive(Debug)]
pub struct Backup {
    incarnation: u64,
    following: HashMap<(u64, u16), Following>,
    /// Slots late batches leave alone ([`Backup::set_aside`]).
    set_aside: SlotSet,
}

impl Backup {
    /// The backup side of a shard of the process of this incarnation.
    pub fn new(incarnation: u64) -> Backup {
        Backup {
            incarnation,
            following: HashMap::new(),
            set_aside: SlotSet::default(),
        }
    }

    /// Sets aside the slots `marked` (slot-indexed): this shard takes them in by
    /// migration, or dropped its copy since its map stopped naming it their backup, and
    /// a late batch of a stream that still covers them must neither lay an older image
    /// over the import nor bring the dropped copy back, so batches are applied without
    /// them from now on. A stream opened afresh (checked against the map, and starting
    /// with a snapshot) takes its slots back.
    pub fn set_aside(&mut self, marked: &[bool]) {
        for (slot, _) in marked.iter().enumerate().filter(|(_, &marked)| marked) {
            self.set_aside.insert(slot as u32);
        }
    }

    /// Checks and applies one batch; the answer goes back to the primary.
    pub fn receive(
        &mut self,
        batch: ReplicaBatch,
        map: &impl PrimaryView,
        store: &mut Store,
        now_ms: u64,
    ) -> ReplicaAnswer {
        let stream = batch.stream;
        let seq = batch.seq;
        match self.admit(&batch, map) {
            Ok(Some(applied)) => ReplicaAnswer::Applied { stream, seq: applied },
            Ok(None) => match self.apply(batch, map, store, now_ms) {
                Ok(()) => ReplicaAnswer::Applied { stream, seq },
                Err(refusal) => ReplicaAnswer::Refused { stream, seq, refusal },
            },
            Err(refusal) => ReplicaAnswer::Refused { stream, seq, refusal },
        }
    }

    /// Whether the stream's slots are (still) this backup's to hold for its sender.
    /// `Ok(Some(seq))`: a duplicate, already applied up to `seq`.
    fn admit(&mut self, batch: &ReplicaBatch, map: &impl PrimaryView) -> Result<Option<u64>, ReplicaRefusal> {
        let id = batch.stream;
        if id.backup_incarnation != self.incarnation {
            return Err(ReplicaRefusal::NotThisProcess {
                incarnation: self.incarnation,
            });
        }
        let sender = (id.primary_node, id.primary_shard);
        let backup_epoch = map.epoch();
        if backup_epoch < id.opened_epoch {
            return Err(ReplicaRefusal::MapBehind { backup_epoch });
        }
        let current = self.following.get(&sender);
        let newer = current.is_none_or(|following| id.rank() > following.id.rank());
        if current.is_some_and(|following| id.rank() < following.id.rank()) {
            return Err(ReplicaRefusal::Superseded);
        }
        if newer {
            if batch.seq != 1 {
                return Err(ReplicaRefusal::OutOfOrder { expected: 1 });
            }
            let slots = SlotSet::from_ranges(&batch.covered).ok_or_else(|| ReplicaRefusal::Invalid {
                reason: "a covered slot range is reversed or outside the slots".into(),
            })?;
            check_primary(&slots, &id, map)?;
            for slot in slots.iter() {
                self.set_aside.remove(slot);
            }
            self.following.insert(
                sender,
                Following {
                    id,
                    slots,
                    applied: 0,
                    checked_epoch: backup_epoch,
                    named: Some(HashSet::new()),
                },
            );
            return Ok(None);
        }
        let Some(following) = self.following.get_mut(&sender) else {
            return Err(ReplicaRefusal::OutOfOrder { expected: 1 });
        };
        if batch.seq <= following.applied {
            return Ok(Some(following.applied));
        }
        if batch.seq != following.applied + 1 {
            return Err(ReplicaRefusal::OutOfOrder {
                expected: following.applied + 1,
            });
        }
        if !batch.covered.is_empty() {
            let covered = SlotSet::from_ranges(&batch.covered).ok_or_else(|| ReplicaRefusal::Invalid {
                reason: "a covered slot range is reversed or outside the slots".into(),
            })?;
            // Intersected, not replaced: a stream only ever narrows without a new opening.
            following.slots = following.slots.intersection(&covered);
        }
        if following.checked_epoch != backup_epoch {
            following.leave_slots_led_by_others(&id, map);
            following.checked_epoch = backup_epoch;
        }
        Ok(None)
    }

    fn apply(
        &mut self,
        mut batch: ReplicaBatch,
        map: &impl PrimaryView,
        store: &mut Store,
        now_ms: u64,
    ) -> Result<(), ReplicaRefusal> {
        let id = batch.stream;
        let Some(following) = self.following.get_mut(&(id.primary_node, id.primary_shard)) else {
            return Err(invalid("no stream followed from this primary".into()));
        };
        let set_aside = &self.set_aside;
        // Nearly always empty: then no key is hashed a second time.
        if !set_aside.is_empty() {
            let kept = |key: &[u8]| !slot_of_stored_key(key).is_some_and(|slot| set_aside.contains(slot));
            batch.entries.retain(|entry| kept(&entry.key));
            batch.removed_keys.retain(|key| kept(key));
            batch.records.retain(|record| !set_aside.contains(record.slot));
        }
        let slots = &following.slots;
        let key_slots = batch
            .entries
            .iter()
            .map(|entry| &entry.key)
            .chain(&batch.removed_keys)
            .map(|key| slot_of_stored_key(key).ok_or(key.as_slice()));
        let record_slots = batch.records.iter().map(|record| Ok(record.slot));
        for slot in key_slots.chain(record_slots) {
            match slot {
                Ok(slot) if slots.contains(slot) => {}
                Ok(slot) => return Err(outside_the_stream(slot, &id, map)),
                Err(key) => return Err(invalid(format!("key {:?} names no slot", String::from_utf8_lossy(key)))),
            }
        }
        let named_now: Vec<Box<[u8]>> = batch.entries.iter().map(|entry| entry.key.as_slice().into()).collect();
        let removed: Vec<Box<[u8]>> = batch.removed_keys.iter().map(|key| key.as_slice().into()).collect();
        let changes = ReplicaChanges {
            entries: batch.entries,
            removed_keys: batch.removed_keys,
            records: batch.records,
            acknowledged: batch.acknowledged,
            last_version: batch.last_version,
        };
        store
            .apply_replica(changes, now_ms)
            .map_err(|error| invalid(error.to_string()))?;
        following.applied = batch.seq;
        if let Some(named) = &mut following.named {
            named.extend(named_now);
            for key in &removed {
                named.remove(key);
            }
            if batch.snapshot_done {
                let slots = following.slots.clone();
                store.remove_keys_except(|slot| slots.contains(slot) && !set_aside.contains(slot), named, now_ms);
                following.named = None;
            }
        }
        Ok(())
    }
}

impl Following {
    /// Stops following the slots `map` names another primary of: the sender handed
    /// them over (its batches of them all arrived before) or was deposed. The stream
    /// goes on for the rest, so a late batch of the sender does not depose it for
    /// slots it gave away, and a change of a slot it left is refused, never dropped.
    fn leave_slots_led_by_others(&mut self, id: &ReplicaStreamId, map: &impl PrimaryView) {
        let sender = sender_of(id);
        let led_by_others: SlotSet = self
            .slots
            .iter()
            .filter(|&slot| map.primary_of(slot) != Some(sender))
            .collect();
        if !led_by_others.is_empty() {
            self.slots = self.slots.difference(&led_by_others);
        }
    }
}

/// The refusal of a change of `slot`, which the stream does not cover (any more): the
/// sender is deposed if the map names another primary of it, else the batch is wrong.
fn outside_the_stream(slot: u32, id: &ReplicaStreamId, map: &impl PrimaryView) -> ReplicaRefusal {
    if map.primary_of(slot) == Some(sender_of(id)) {
        invalid(format!("a change of slot {slot} is outside the stream's slots"))
    } else {
        ReplicaRefusal::NotPrimary {
            backup_epoch: map.epoch(),
        }
    }
}

fn invalid(reason: String) -> ReplicaRefusal {
    ReplicaRefusal::Invalid { reason }
}

fn sender_of(id: &ReplicaStreamId) -> ShardProcess {
    ShardProcess {
        node_id: id.primary_node,
        shard_id: id.primary_shard,
        incarnation: id.incarnation,
    }
}

fn check_primary(slots: &SlotSet, id: &ReplicaStreamId, map: &impl PrimaryView) -> Result<(), ReplicaRefusal> {
    let sender = sender_of(id);
    if slots.iter().all(|slot| map.primary_of(slot) == Some(sender)) {
        Ok(())
    } else {
        Err(ReplicaRefusal::NotPrimary {
            backup_epoch: map.epoch(),
        })
    }
}
