//! Handing slots over to another shard, as the store's part of it.
//!
//! The shell drives the protocol: it freezes the slots (applies nothing to them), calls
//! [`Store::bounce_waiters`] so every request parked there is answered `TryAgain` and
//! re-sent by its client to the new owner, ships [`Store::export_slots`] to the target,
//! which applies each batch with [`Store::import_batch`], and once the control plane
//! commits, calls [`Store::remove_slots`] on the source. An abort needs nothing from the
//! store: export copies, so the source just unfreezes. The target must not serve the
//! slots before the commit, and drops what it imported (`remove_slots`) on an abort.
//!
//! Why parked requests are bounced rather than shipped: a waiter is a promise to answer
//! on one connection or forwarding channel of this node, which the target cannot keep.
//! Bouncing forgets the request's operation record, so the retry applies afresh at
//! the target, and since it was granted nothing here, it is applied exactly once.

use std::collections::HashSet;

use engram_proto::limits::{SLOT_COUNT, TTL_MS_MAX, VALUE_BYTES_MAX};
use engram_proto::migration::BATCH_FIXED_BYTES;
use engram_proto::{decode_batch, ErrorCode, MigratedEntry, MigratedObject, MigratedRecord, ProtocolError, SlotBatch};

use super::keys::{client_key, slot_of_stored_key, STORED_KEY_BYTES_MAX};
use super::operations::{done_record_bytes, OPERATION_RECORDS_MAX};
use super::validation::check_minted;
use super::waiting::copied_deadline_ms;
use super::{
    barrier, error, future, latch, lock, map, queue, semaphore, CompactEntry, CompactError, Contents, Effects, Entry,
    KeyEntry, Object, Store,
};

/// Why a batch was refused. A refused batch changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("batch is malformed: {0}")]
    Malformed(#[from] ProtocolError),
    #[error("migrated key of {length} bytes exceeds stored_key_bytes_max ({STORED_KEY_BYTES_MAX})")]
    KeyTooLarge { length: usize },
    #[error("key {key:?} already exists on this shard or twice in the batch")]
    DuplicateKey { key: String },
    #[error("migrated entry at key {key:?} is invalid: {reason}")]
    InvalidEntry { key: String, reason: String },
    #[error("operation {op_id} of client {client_id} appears twice in the batch")]
    DuplicateRecord { client_id: u64, op_id: u64 },
    #[error("record of operation {op_id} of client {client_id} names slot {slot}, outside slot_count ({SLOT_COUNT})")]
    InvalidRecordSlot { client_id: u64, op_id: u64, slot: u32 },
    #[error("batch needs {needed_bytes} bytes; shard holds {used_bytes} of memory_limit_bytes ({limit_bytes})")]
    OutOfMemory {
        needed_bytes: u64,
        used_bytes: u64,
        limit_bytes: u64,
    },
    #[error("batch brings {incoming} records; shard holds {held} of operation_records_max ({OPERATION_RECORDS_MAX})")]
    TooManyRecords { incoming: usize, held: usize },
}

impl Store {
    /// Answers every request parked on an object in the slots `in_slot` accepts with
    /// `TryAgain` (retryable; the slot is frozen, so the retry waits at the client until
    /// the hand-over ends and then follows the map), taking it out of its object as [`Store::cancel`] does: it is
    /// granted nothing, a barrier arrival no longer counts, and its operation record is
    /// forgotten, so the client's retry applies afresh at the new owner. The answers come
    /// out of [`Store::take_completions`].
    pub fn bounce_waiters(&mut self, in_slot: impl Fn(u32) -> bool, now_ms: u64) {
        let parked = self
            .waiting
            .parked_on(|key| slot_of_stored_key(key).is_some_and(&in_slot));
        if parked.is_empty() {
            return;
        }
        let moved = error(
            ErrorCode::TryAgain,
            "the key's slot is moving to another shard; retry shortly",
        );
        let mut keys: Vec<&[u8]> = parked.iter().map(|(_, key)| &**key).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            // All of an object's waiters at once, so none is granted what an earlier
            // one's departure freed (a semaphore would otherwise serve the next).
            self.with_existing(key, now_ms, |object, effects| {
                for waiter in object.take_waiters() {
                    effects.bounce(waiter, moved.clone());
                }
            });
        }
        // A request parked on an object that is gone still gets its answer.
        let mut effects = store_effects!(self, now_ms, None);
        for (waiter, _) in parked {
            effects.bounce(waiter, moved.clone());
        }
    }

    /// A copy of the slots `in_slot` accepts: every live entry and every answered
    /// operation record, in batches whose encoding stays within `batch_bytes_max` (an
    /// entry larger than that travels alone). Always at least one batch, so the version
    /// counter reaches the target even for empty slots: a lock re-created there must
    /// still get fences above every fence handed out here.
    ///
    /// Call after [`Store::bounce_waiters`]: parked requests are not part of the copy.
    pub fn export_slots(&self, in_slot: impl Fn(u32) -> bool, now_ms: u64, batch_bytes_max: usize) -> Vec<SlotBatch> {
        let mut live: Vec<&KeyEntry> = self
            .entries
            .iter()
            .filter(|entry| !entry.is_expired(now_ms))
            .filter(|entry| slot_of_stored_key(entry.key()).is_some_and(&in_slot))
            .collect();
        // Sorted so an export is reproducible whatever the hash seed.
        live.sort_unstable_by(|left, right| left.key().cmp(right.key()));
        let mut batches = Batches::new(batch_bytes_max, self.last_version);
        for entry in live {
            batches.add_entry(export_entry(entry, now_ms));
        }
        for record in self.operations.export_slots(&in_slot) {
            batches.add_record(record);
        }
        batches.finish()
    }

    /// Drops everything of the slots `in_slot` accepts: entries, their expiries and
    /// lease timers, and operation records, uncharging their memory. A request still
    /// parked there is answered `TryAgain` rather than left without an answer.
    pub fn remove_slots(&mut self, in_slot: impl Fn(u32) -> bool, now_ms: u64) {
        self.bounce_waiters(&in_slot, now_ms);
        for key in self.keys_in_slots(&in_slot) {
            self.remove(&key, now_ms);
        }
        self.operations.remove_slots(&in_slot);
    }

    /// Decodes (validating) and imports an encoded batch.
    pub fn import_encoded(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), ImportError> {
        let batch = decode_batch(bytes)?;
        self.import_batch(batch, now_ms)
    }

    /// Takes over a batch another shard exported. Everything is checked before anything
    /// is applied, so a refused batch leaves the store as it was. Deadlines restart from
    /// `now_ms` with the time that was left; the version counter rises to at least the
    /// batch's, so no version, fence or permit id handed out here repeats one of the
    /// source's. A record for an operation this shard already answered is not taken:
    /// its own answer stands.
    pub fn import_batch(&mut self, batch: SlotBatch, now_ms: u64) -> Result<(), ImportError> {
        let SlotBatch {
            entries,
            records,
            last_version,
        } = batch;
        let built = self.build_entries(entries, now_ms, last_version, Existing::Refuse)?;
        let taken = self.records_to_take(records)?;
        let entries_bytes = built.iter().map(KeyEntry::charged_bytes);
        let records_bytes = taken.iter().map(|record| done_record_bytes(&record.response));
        let needed_bytes = entries_bytes.chain(records_bytes).fold(0u64, u64::saturating_add);
        let used_bytes = self.memory_used_bytes();
        if used_bytes.saturating_add(needed_bytes) > self.memory_limit_bytes {
            return Err(ImportError::OutOfMemory {
                needed_bytes,
                used_bytes,
                limit_bytes: self.memory_limit_bytes,
            });
        }
        for entry in built {
            self.insert_imported(entry, now_ms);
        }
        for record in taken {
            self.operations.import(
                record.client_id,
                record.op_id,
                Some(record.slot),
                record.response,
                now_ms,
            );
        }
        self.last_version = self.last_version.max(last_version);
        Ok(())
    }

    /// The batch's entries rebuilt and checked, idle objects left out (a later use
    /// re-creates them identically), in key order.
    pub(super) fn build_entries(
        &self,
        entries: Vec<MigratedEntry>,
        now_ms: u64,
        last_version: u64,
        existing: Existing,
    ) -> Result<Vec<KeyEntry>, ImportError> {
        let mut built: Vec<KeyEntry> = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = self.build_entry(entry, now_ms, last_version, existing)?;
            if !entry.is_idle() {
                built.push(entry);
            }
        }
        built.sort_unstable_by(|left, right| left.key().cmp(right.key()));
        if let Some(pair) = built.windows(2).find(|pair| pair[0].key() == pair[1].key()) {
            return Err(ImportError::DuplicateKey {
                key: shown(pair[0].key()),
            });
        }
        Ok(built)
    }

    /// The batch's records this shard takes (not those of operations it answered
    /// itself), each checked, and within `OPERATION_RECORDS_MAX` with those it holds.
    pub(super) fn records_to_take(&self, records: Vec<MigratedRecord>) -> Result<Vec<MigratedRecord>, ImportError> {
        let mut seen_operations = HashSet::with_capacity(records.len());
        let mut taken = Vec::with_capacity(records.len());
        for record in records {
            if !seen_operations.insert((record.client_id, record.op_id)) {
                return Err(ImportError::DuplicateRecord {
                    client_id: record.client_id,
                    op_id: record.op_id,
                });
            }
            if record.slot >= SLOT_COUNT {
                return Err(ImportError::InvalidRecordSlot {
                    client_id: record.client_id,
                    op_id: record.op_id,
                    slot: record.slot,
                });
            }
            if self.operations.would_import(record.client_id, record.op_id) {
                taken.push(record);
            }
        }
        let held = self.operations.records();
        if held.saturating_add(taken.len()) > OPERATION_RECORDS_MAX {
            return Err(ImportError::TooManyRecords {
                incoming: taken.len(),
                held,
            });
        }
        Ok(taken)
    }

    /// Stores an imported entry, charging it and arming its expiry and lease timers.
    pub(super) fn insert_imported(&mut self, entry: KeyEntry, now_ms: u64) {
        let key = entry.key();
        self.data_bytes += entry.entry_bytes();
        self.move_deadline(key, 0, entry.expires_at_ms());
        if let KeyEntry::Object(object_entry) = &entry {
            let mut effects = store_effects!(self, now_ms, None);
            match &object_entry.entry.object {
                Object::Lock(lock) => lock.set_leases(key, &mut effects),
                Object::Semaphore(semaphore) => semaphore.set_leases(key, &mut effects),
                _ => {}
            }
        }
        self.entries.insert_new(entry);
    }

    /// Checks one migrated entry and rebuilds it, without touching the store.
    fn build_entry(
        &self,
        migrated: MigratedEntry,
        now_ms: u64,
        last_version: u64,
        existing: Existing,
    ) -> Result<KeyEntry, ImportError> {
        let MigratedEntry {
            key,
            version,
            ttl_remaining_ms,
            object,
        } = migrated;
        if key.len() > STORED_KEY_BYTES_MAX {
            return Err(ImportError::KeyTooLarge { length: key.len() });
        }
        if existing == Existing::Refuse && self.entries.get(&key).is_some() {
            // The target owned nothing in these slots: an existing key means the slot
            // was imported twice or is owned twice, and either would lose a write.
            return Err(ImportError::DuplicateKey { key: shown(&key) });
        }
        let invalid = |reason: String| ImportError::InvalidEntry {
            key: shown(&key),
            reason,
        };
        if ttl_remaining_ms > TTL_MS_MAX {
            return Err(invalid(format!(
                "ttl of {ttl_remaining_ms} ms exceeds ttl_ms_max ({TTL_MS_MAX})"
            )));
        }
        check_minted("version", version, last_version).map_err(invalid)?;
        // The checks above keep keys and values within what a compact entry's length
        // fields hold; a refusal from the table answers the same way should they not.
        let unencodable = |refusal: CompactError| match refusal {
            CompactError::KeyTooLong { length } => ImportError::KeyTooLarge { length },
            CompactError::ValueTooLong { length } => invalid(format!(
                "value of {length} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})"
            )),
            CompactError::WrongKind => invalid("the entry's kind does not match its contents".into()),
        };
        let expires_at_ms = if ttl_remaining_ms == 0 {
            0
        } else {
            copied_deadline_ms(now_ms, ttl_remaining_ms)
        };
        Ok(match object {
            MigratedObject::Bytes { value } => {
                if value.len() > VALUE_BYTES_MAX {
                    return Err(invalid(format!(
                        "value of {} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})",
                        value.len()
                    )));
                }
                KeyEntry::Compact(CompactEntry::bytes(&key, &value, version, expires_at_ms).map_err(unencodable)?)
            }
            MigratedObject::Counter { value } => {
                KeyEntry::Compact(CompactEntry::counter(&key, value, version, expires_at_ms).map_err(unencodable)?)
            }
            object => {
                let object = import_object(object, now_ms, last_version).map_err(invalid)?;
                let entry = Entry {
                    object,
                    version,
                    expires_at_ms,
                };
                KeyEntry::object(&key, entry)
            }
        })
    }
}

/// What an imported entry does to an entry already at its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    /// A migration's target owned nothing in the slots: an existing key is an error.
    Refuse,
    /// A backup's copy is replaced by the primary's newer image.
    Replace,
}

fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(client_key(key)).into_owned()
}

/// A live entry as it travels: times as what is left of them.
pub(super) fn export_entry(entry: &KeyEntry, now_ms: u64) -> MigratedEntry {
    let expires_at_ms = entry.expires_at_ms();
    MigratedEntry {
        key: entry.key().to_vec(),
        version: entry.version(),
        ttl_remaining_ms: if expires_at_ms == 0 { 0 } else { expires_at_ms - now_ms },
        object: export_object(entry, now_ms),
    }
}

fn export_object(entry: &KeyEntry, now_ms: u64) -> MigratedObject {
    let object = match entry {
        KeyEntry::Compact(compact) => {
            return match compact.contents() {
                Contents::Bytes(value) => MigratedObject::Bytes { value: value.to_vec() },
                Contents::Counter(value) => MigratedObject::Counter { value },
            };
        }
        KeyEntry::Object(object_entry) => &object_entry.entry.object,
    };
    match object {
        Object::Lock(lock) => lock.export(now_ms),
        Object::Semaphore(semaphore) => semaphore.export(now_ms),
        Object::Barrier(barrier) => barrier.export(),
        Object::Latch(latch) => latch.export(),
        Object::Future(future) => future.export(),
        Object::Map(map) => map.export(),
        Object::Queue(queue) => queue.export(),
    }
}

/// A coordination object (bytes values and counters become compact entries).
fn import_object(object: MigratedObject, now_ms: u64, last_version: u64) -> Result<Object, String> {
    Ok(match object {
        // build_entry makes these compact entries; they never reach here.
        MigratedObject::Bytes { .. } | MigratedObject::Counter { .. } => {
            return Err("a bytes value or counter is not a coordination object".into());
        }
        MigratedObject::Lock { holder } => {
            Object::Lock(Box::new(lock::LockState::import(holder, now_ms, last_version)?))
        }
        MigratedObject::Semaphore { capacity, held } => Object::Semaphore(Box::new(semaphore::SemaphoreState::import(
            capacity,
            held,
            now_ms,
            last_version,
        )?)),
        MigratedObject::Barrier { generation, parties } => {
            Object::Barrier(Box::new(barrier::BarrierState::import(generation, parties)?))
        }
        MigratedObject::Latch { count } => Object::Latch(Box::new(latch::LatchState::import(count))),
        MigratedObject::Future { completion } => {
            Object::Future(Box::new(future::FutureState::import(completion, last_version)?))
        }
        MigratedObject::Map { fields } => Object::Map(Box::new(map::MapState::import(fields)?)),
        MigratedObject::Queue { items } => Object::Queue(Box::new(queue::QueueState::import(items)?)),
    })
}

/// Splits an export into batches by their encoded size.
struct Batches {
    batch_bytes_max: usize,
    last_version: u64,
    done: Vec<SlotBatch>,
    current: SlotBatch,
    current_bytes: usize,
}

impl Batches {
    fn new(batch_bytes_max: usize, last_version: u64) -> Batches {
        Batches {
            batch_bytes_max,
            last_version,
            done: Vec::new(),
            current: Batches::empty(last_version),
            current_bytes: BATCH_FIXED_BYTES,
        }
    }

    fn empty(last_version: u64) -> SlotBatch {
        SlotBatch {
            entries: Vec::new(),
            records: Vec::new(),
            last_version,
        }
    }

    /// Starts a new batch when `bytes` more would not fit the current, non-empty one.
    fn make_room(&mut self, bytes: usize) {
        let empty = self.current.entries.is_empty() && self.current.records.is_empty();
        if !empty && self.current_bytes.saturating_add(bytes) > self.batch_bytes_max {
            let full = std::mem::replace(&mut self.current, Batches::empty(self.last_version));
            self.done.push(full);
            self.current_bytes = BATCH_FIXED_BYTES;
        }
        self.current_bytes = self.current_bytes.saturating_add(bytes);
    }

    fn add_entry(&mut self, entry: MigratedEntry) {
        self.make_room(entry.encoded_bytes_max());
        self.current.entries.push(entry);
    }

    fn add_record(&mut self, record: MigratedRecord) {
        self.make_room(record.encoded_bytes_max());
        self.current.records.push(record);
    }

    fn finish(mut self) -> Vec<SlotBatch> {
        let empty = self.current.entries.is_empty() && self.current.records.is_empty();
        if !empty || self.done.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}
