//! Bytes objects: get, set (ttl, if-absent, if-version), append.

use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{Response, SetCondition};

use super::{
    compact_refusal, entry_bytes, expiry_bytes, value_too_large, wrong_type, CompactEntry, Contents, KeyEntry, Store,
};

impl Store {
    pub(crate) fn bytes_get(&mut self, key: &[u8], now_ms: u64) -> Response {
        // The value goes out in the last read's buffer (see `Store::recycle`).
        let mut buffer = std::mem::take(&mut self.spare_value);
        let refusal = match self.live_entry(key, now_ms) {
            None => Response::Missing,
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) => {
                    buffer.clear();
                    buffer.extend_from_slice(value);
                    return Response::Value {
                        value: buffer,
                        version: compact.version(),
                    };
                }
                Contents::Counter(_) => wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => wrong_type(key, "bytes value"),
        };
        self.spare_value = buffer;
        refusal
    }

    pub(crate) fn bytes_set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_ms: u64,
        condition: SetCondition,
        now_ms: u64,
    ) -> Response {
        // Also the only check for an append that creates its value (`validate` checks
        // requests; this keeps the store from ever holding more, whoever calls).
        if value.len() > VALUE_BYTES_MAX {
            return value_too_large(value.len());
        }
        let position = self.live_position(key, now_ms);
        // (version, memory charged) of the current value.
        let current = match position.and_then(|position| self.entries.at(position)) {
            None => None,
            Some(entry @ KeyEntry::Compact(compact)) if matches!(compact.contents(), Contents::Bytes(_)) => {
                Some((compact.version(), entry.charged_bytes()))
            }
            // Coordination objects are never clobbered by a plain write.
            Some(_) => return wrong_type(key, "bytes value"),
        };
        let current_version = current.map(|(version, _)| version);
        let condition_holds = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => current_version.is_none(),
            SetCondition::IfVersion(expected) => current_version == Some(expected),
        };
        if !condition_holds {
            return Response::Conflict {
                current_version: current_version.unwrap_or(0),
            };
        }
        let old_bytes = current.map_or(0, |(_, charged)| charged);
        let new_bytes = entry_bytes(key, value.len() as u64) + if ttl_ms != 0 { expiry_bytes(key) } else { 0 };
        if let Err(refusal) = self.admit_growth(old_bytes, new_bytes) {
            return refusal;
        }
        let expires_at_ms = if ttl_ms == 0 { 0 } else { now_ms.saturating_add(ttl_ms) };
        let version = self.next_version();
        let old_deadline = match position {
            Some(position) => {
                let Some(KeyEntry::Compact(compact)) = self.entries.at_mut(position) else {
                    unreachable!("live_position just found a bytes value there");
                };
                let old_deadline = compact.expires_at_ms();
                self.data_bytes -= compact.payload_bytes();
                compact.replace_value(value, version, expires_at_ms);
                self.data_bytes += value.len() as u64;
                old_deadline
            }
            None => {
                let entry = match CompactEntry::bytes(key, value, version, expires_at_ms) {
                    Ok(entry) => entry,
                    Err(refusal) => return compact_refusal(refusal),
                };
                self.entries.insert_new(KeyEntry::Compact(entry));
                self.data_bytes += entry_bytes(key, value.len() as u64);
                0
            }
        };
        self.move_deadline(key, old_deadline, expires_at_ms);
        Response::Written { version }
    }

    pub(crate) fn bytes_append(&mut self, key: &[u8], suffix: &[u8], now_ms: u64) -> Response {
        let position = self.live_position(key, now_ms);
        let current = match position.and_then(|position| self.entries.at(position)) {
            None => None,
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) => Some((value.len(), compact.capacity())),
                Contents::Counter(_) => return wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => return wrong_type(key, "bytes value"),
        };
        let (Some(position), Some((current_length, current_capacity))) = (position, current) else {
            // Appending to nothing creates the value, as in Redis.
            return self.bytes_set(key, suffix, 0, SetCondition::IfAbsent, now_ms);
        };
        let new_length = current_length.saturating_add(suffix.len());
        if new_length > VALUE_BYTES_MAX {
            return value_too_large(new_length);
        }
        // The buffer's growth is what memory is charged for, so it is chosen here and
        // admitted before it happens: doubling (amortized O(1) appends, as Redis's sds)
        // when that fits under the limit, else exactly what is needed.
        let new_capacity = if new_length <= current_capacity {
            current_capacity
        } else {
            let doubled = new_length.max(current_capacity.saturating_mul(2)).min(VALUE_BYTES_MAX);
            let growth = (doubled - current_capacity) as u64;
            if self.admit_growth(0, growth).is_ok() {
                doubled
            } else if let Err(refusal) = self.admit_growth(0, (new_length - current_capacity) as u64) {
                return refusal;
            } else {
                new_length
            }
        };
        let version = self.next_version();
        let Some(KeyEntry::Compact(compact)) = self.entries.at_mut(position) else {
            unreachable!("live_position just found a bytes value there");
        };
        if let Err(refusal) = compact.append(suffix, new_capacity, version) {
            return compact_refusal(refusal);
        }
        let charged_capacity = compact.capacity() as u64;
        self.data_bytes = self.data_bytes - current_capacity as u64 + charged_capacity;
        Response::Appended {
            version,
            length: new_length as u64,
        }
    }
}
