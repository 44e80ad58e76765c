//! The store's part of replication: images of changed keys at the primary, and their
//! application at a backup.
//!
//! A backup's store is an ordinary store that nobody asks: it receives the primary's
//! current image of each key that changed and replaces its own with it. Its timers run
//! (a lease that ends at the backup ends at the primary too, give or take the network's
//! delay, and the next image settles it), but no request parks there, so promoting it
//! needs nothing but routing requests to it.

use std::collections::HashSet;

use engram_proto::{MigratedEntry, MigratedRecord};

use super::keys::slot_of_stored_key;
use super::migration::{export_entry, Existing};
use super::{ImportError, KeyEntry, Store};

/// What changed at the primary, as a backup applies it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplicaChanges {
    pub entries: Vec<MigratedEntry>,
    pub removed_keys: Vec<Vec<u8>>,
    pub records: Vec<MigratedRecord>,
    /// `(client_id, completed_below_op_id)`.
    pub acknowledged: Vec<(u64, u64)>,
    pub last_version: u64,
}

impl Store {
    /// The current image of each key: an entry for a live key, a removal for one that
    /// is absent or expired. Keys come out in the order given.
    pub fn export_keys<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>, now_ms: u64) -> ReplicaChanges {
        let mut changes = ReplicaChanges {
            last_version: self.last_version,
            ..ReplicaChanges::default()
        };
        for key in keys {
            match self.entries.get(key).filter(|entry| !entry.is_expired(now_ms)) {
                Some(entry) => changes.entries.push(export_entry(entry, now_ms)),
                None => changes.removed_keys.push(key.to_vec()),
            }
        }
        changes
    }

    /// About what `key`'s image takes in a batch (0 for a key that is gone), so a batch
    /// can be cut before it grows past its bound.
    pub fn image_bytes(&self, key: &[u8], now_ms: u64) -> usize {
        match self.entries.get(key).filter(|entry| !entry.is_expired(now_ms)) {
            Some(entry) => key.len() + entry.charged_bytes() as usize,
            None => key.len(),
        }
    }

    /// The recorded first answer of an operation, if it was answered (a parked
    /// operation has none yet), and its client's acknowledgement mark.
    pub fn export_operation(&self, client_id: u64, op_id: u64) -> (Option<MigratedRecord>, u64) {
        (
            self.operations.export_record(client_id, op_id),
            self.operations.completed_below(client_id),
        )
    }

    /// Every key of the slots `in_slot` accepts, sorted: what a snapshot walks through.
    pub fn keys_in_slots(&self, in_slot: impl Fn(u32) -> bool) -> Vec<Box<[u8]>> {
        let mut keys: Vec<Box<[u8]>> = self
            .entries
            .iter()
            .map(KeyEntry::key)
            .filter(|key| slot_of_stored_key(key).is_some_and(&in_slot))
            .map(Box::from)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Every answered record of the slots `in_slot` accepts, for a snapshot.
    pub fn records_in_slots(&self, in_slot: impl Fn(u32) -> bool) -> Vec<MigratedRecord> {
        self.operations.export_slots(&in_slot)
    }

    /// Applies a primary's changes: each image replaces the key's entry, each removal
    /// drops it, records join the log and acknowledgement marks drop what they cover.
    /// Everything is checked before anything changes, so a refused batch leaves the
    /// store as it was.
    pub fn apply_replica(&mut self, changes: ReplicaChanges, now_ms: u64) -> Result<(), ImportError> {
        let ReplicaChanges {
            entries,
            removed_keys,
            records,
            acknowledged,
            last_version,
        } = changes;
        // An idle image (a lock nobody holds) builds to nothing; the key still goes.
        let image_keys: Vec<Vec<u8>> = entries.iter().map(|entry| entry.key.clone()).collect();
        let built = self.build_entries(entries, now_ms, last_version, Existing::Replace)?;
        let taken = self.records_to_take(records)?;
        let replaced_bytes: u64 = built
            .iter()
            .filter_map(|entry| self.entries.get(entry.key()))
            .map(KeyEntry::charged_bytes)
            .sum();
        let needed_bytes: u64 = built.iter().map(KeyEntry::charged_bytes).sum();
        let used_bytes = self.memory_used_bytes();
        if used_bytes.saturating_sub(replaced_bytes).saturating_add(needed_bytes) > self.memory_limit_bytes {
            return Err(ImportError::OutOfMemory {
                needed_bytes,
                used_bytes,
                limit_bytes: self.memory_limit_bytes,
            });
        }
        for key in removed_keys.iter().chain(&image_keys) {
            self.remove(key, now_ms);
        }
        for entry in built {
            self.insert_imported(entry, now_ms);
        }
        for record in taken {
            let slot = Some(record.slot);
            self.operations
                .import(record.client_id, record.op_id, slot, record.response, now_ms);
        }
        for (client_id, completed_below_op_id) in acknowledged {
            self.operations.acknowledge(client_id, completed_below_op_id);
        }
        self.last_version = self.last_version.max(last_version);
        Ok(())
    }

    /// Drops every key of the slots `in_slot` accepts that `kept` does not name: what a
    /// backup held from before a snapshot that the primary no longer has.
    pub fn remove_keys_except(&mut self, in_slot: impl Fn(u32) -> bool, kept: &HashSet<Box<[u8]>>, now_ms: u64) {
        for key in self.keys_in_slots(in_slot) {
            if !kept.contains(&key) {
                self.remove(&key, now_ms);
            }
        }
    }
}
