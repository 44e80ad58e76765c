//! Bytes objects: get, set (ttl, if-absent, if-version), append.

use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{Response, SetCondition};

use super::{value_too_large, wrong_type, Object, Store};

impl Store {
    pub(crate) fn bytes_get(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.live_entry(key, now_ms) {
            None => Response::Missing,
            Some(entry) => match &entry.object {
                Object::Bytes(value) => Response::Value {
                    value: value.clone(),
                    version: entry.version,
                },
                _ => wrong_type(key, "bytes value"),
            },
        }
    }

    pub(crate) fn bytes_set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl_ms: u64,
        condition: SetCondition,
        now_ms: u64,
    ) -> Response {
        let current_version = match self.live_entry(key, now_ms) {
            None => None,
            Some(entry) if matches!(entry.object, Object::Bytes(_)) => Some(entry.version),
            // Coordination objects are never clobbered by a plain write.
            Some(_) => return wrong_type(key, "bytes value"),
        };
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
        let (old_bytes, new_bytes) = self.charge(key, value.len() as u64, ttl_ms != 0);
        if let Err(refusal) = self.admit_growth(old_bytes, new_bytes) {
            return refusal;
        }
        let expires_at_ms = if ttl_ms == 0 { 0 } else { now_ms.saturating_add(ttl_ms) };
        let version = self.put(key, Object::Bytes(value.to_vec()), expires_at_ms);
        Response::Written { version }
    }

    pub(crate) fn bytes_append(&mut self, key: &[u8], suffix: &[u8], now_ms: u64) -> Response {
        let current = match self.live_entry(key, now_ms) {
            None => None,
            Some(entry) => match &entry.object {
                Object::Bytes(value) => Some((value.len(), value.capacity())),
                _ => return wrong_type(key, "bytes value"),
            },
        };
        let Some((current_length, current_capacity)) = current else {
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
        let Some(entry) = self.entries.get_mut(key) else {
            unreachable!("live_entry just found the key");
        };
        let Object::Bytes(value) = &mut entry.object else {
            unreachable!("type checked above")
        };
        value.reserve_exact(new_capacity - value.len());
        value.extend_from_slice(suffix);
        let old_capacity = current_capacity as u64;
        let charged_capacity = value.capacity() as u64;
        entry.version = version;
        self.data_bytes = self.data_bytes - old_capacity + charged_capacity;
        Response::Appended {
            version,
            length: new_length as u64,
        }
    }
}
