//! Bytes objects: get, set (ttl, if-absent, if-version), append, and reads and writes
//! of a range.

use std::ops::Range;

use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{ErrorCode, Response, SetCondition};

use super::{
    compact_refusal, entry_bytes, error, expiry_bytes, value_too_large, wrong_type, CompactEntry, Contents, KeyEntry,
    Store,
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
        self.write_bytes(key, value, Expiry::AfterMs(ttl_ms), condition, now_ms)
    }

    fn write_bytes(
        &mut self,
        key: &[u8],
        value: &[u8],
        expiry: Expiry,
        condition: SetCondition,
        now_ms: u64,
    ) -> Response {
        // Also the only check for an append that creates its value (`validate` checks
        // requests; this keeps the store from ever holding more, whoever calls).
        if value.len() > VALUE_BYTES_MAX {
            return value_too_large(value.len());
        }
        let position = self.live_position(key, now_ms);
        // (version, memory charged, expiry) of the current value.
        let current = match position.and_then(|position| self.entries.at(position)) {
            None => None,
            Some(entry @ KeyEntry::Compact(compact)) if matches!(compact.contents(), Contents::Bytes(_)) => {
                Some((compact.version(), entry.charged_bytes(), compact.expires_at_ms()))
            }
            // Coordination objects are never clobbered by a plain write.
            Some(_) => return wrong_type(key, "bytes value"),
        };
        let current_version = current.map(|(version, _, _)| version);
        let condition_holds = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => current_version.is_none(),
            SetCondition::IfVersion(expected) => current_version == Some(expected),
            SetCondition::IfPresent => current_version.is_some(),
        };
        if !condition_holds {
            return Response::Conflict {
                current_version: current_version.unwrap_or(0),
            };
        }
        let old_bytes = current.map_or(0, |(_, charged, _)| charged);
        let expires_at_ms = match expiry {
            Expiry::AfterMs(0) => 0,
            Expiry::AfterMs(ttl_ms) => now_ms.saturating_add(ttl_ms),
            Expiry::Keep => current.map_or(0, |(_, _, expires_at_ms)| expires_at_ms),
        };
        let new_bytes = entry_bytes(key, value.len() as u64) + if expires_at_ms != 0 { expiry_bytes(key) } else { 0 };
        if let Err(refusal) = self.admit_growth(old_bytes, new_bytes) {
            return refusal;
        }
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

    pub(crate) fn bytes_get_range(&mut self, key: &[u8], start: i64, end: i64, now_ms: u64) -> Response {
        match self.live_entry(key, now_ms) {
            None => Response::Missing,
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) => Response::Value {
                    value: value[redis_range(value.len(), start, end)].to_vec(),
                    version: compact.version(),
                },
                Contents::Counter(_) => wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => wrong_type(key, "bytes value"),
        }
    }

    /// Writes `patch` at `offset`. The value is rebuilt and written whole (a range write
    /// is rare next to sets and appends, and so it is charged exactly like a set).
    pub(crate) fn bytes_set_range(&mut self, key: &[u8], offset: u64, patch: &[u8], now_ms: u64) -> Response {
        let end = match usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(patch.len()))
        {
            Some(end) if end <= VALUE_BYTES_MAX => end,
            _ => {
                return value_too_large(
                    usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .saturating_add(patch.len()),
                )
            }
        };
        let mut value = match self.live_entry(key, now_ms) {
            // Nothing to write creates nothing, as in Redis.
            None if patch.is_empty() => return Response::Missing,
            None => Vec::with_capacity(end),
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) if patch.is_empty() => {
                    return Response::RangeWritten {
                        version: compact.version(),
                        length: value.len() as u64,
                    }
                }
                Contents::Bytes(value) => value.to_vec(),
                Contents::Counter(_) => return wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => return wrong_type(key, "bytes value"),
        };
        if value.len() < end {
            value.resize(end, 0);
        }
        value[end - patch.len()..end].copy_from_slice(patch);
        match self.write_bytes(key, &value, Expiry::Keep, SetCondition::Always, now_ms) {
            Response::Written { version } => Response::RangeWritten {
                version,
                length: value.len() as u64,
            },
            refusal => refusal,
        }
    }

    pub(crate) fn bytes_add_integer(&mut self, key: &[u8], delta: i64, now_ms: u64) -> Response {
        let current = match self.live_entry(key, now_ms) {
            None => 0,
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) => match decimal_integer(value) {
                    Some(current) => current,
                    None => return error(ErrorCode::InvalidArgument, NOT_AN_INTEGER),
                },
                Contents::Counter(_) => return wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => return wrong_type(key, "bytes value"),
        };
        let Some(value) = current.checked_add(delta) else {
            return error(ErrorCode::Overflow, "increment or decrement would overflow");
        };
        match self.write_bytes(
            key,
            value.to_string().as_bytes(),
            Expiry::Keep,
            SetCondition::Always,
            now_ms,
        ) {
            Response::Written { .. } => Response::Counter { value },
            refusal => refusal,
        }
    }

    pub(crate) fn bytes_replace(&mut self, key: &[u8], replace: Replace<'_>, now_ms: u64) -> Response {
        let old = match self.live_entry(key, now_ms) {
            None => None,
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) => Some(value.to_vec()),
                Contents::Counter(_) => return wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => return wrong_type(key, "bytes value"),
        };
        let answer = |written| Response::Replaced {
            old: old.clone(),
            written,
        };
        let Some(value) = replace.value else {
            if old.is_some() {
                self.delete(key, now_ms);
            }
            return answer(old.is_some());
        };
        let expiry = if replace.keep_ttl {
            Expiry::Keep
        } else {
            Expiry::AfterMs(replace.ttl_ms)
        };
        match self.write_bytes(key, value, expiry, replace.condition, now_ms) {
            Response::Written { .. } => answer(true),
            Response::Conflict { .. } => answer(false),
            refusal => refusal,
        }
    }

    pub(crate) fn bytes_len(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.live_entry(key, now_ms) {
            None => Response::Missing,
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Bytes(value) => Response::ValueLength {
                    length: value.len() as u64,
                },
                Contents::Counter(_) => wrong_type(key, "bytes value"),
            },
            Some(KeyEntry::Object(_)) => wrong_type(key, "bytes value"),
        }
    }
}

/// Redis's words for a value `INCR` cannot read, which Redis clients show as they are.
pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";

/// The integer a value holds in canonical decimal form (what Redis's `INCR` accepts:
/// no sign but a leading `-`, no leading zeros, no spaces, within i64).
fn decimal_integer(value: &[u8]) -> Option<i64> {
    let parsed: i64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    (parsed.to_string().as_bytes() == value).then_some(parsed)
}

/// What a `Replace` writes.
pub(crate) struct Replace<'a> {
    pub value: Option<&'a [u8]>,
    pub ttl_ms: u64,
    pub keep_ttl: bool,
    pub condition: SetCondition,
}

/// When a written value expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// After this many milliseconds; 0: never.
    AfterMs(u64),
    /// When the value it replaces would have (never, if there was none).
    Keep,
}

/// The bytes of a value of `length` that Redis's `GETRANGE start end` returns: both ends
/// included, negative ones counted from the end, cut to the value.
pub(crate) fn redis_range(length: usize, start: i64, end: i64) -> Range<usize> {
    let length = length as i64;
    if length == 0 || (start < 0 && end < 0 && start > end) {
        return 0..0;
    }
    let from_end = |index: i64| {
        if index < 0 {
            length.saturating_add(index).max(0)
        } else {
            index
        }
    };
    let (start, end) = (from_end(start), from_end(end).min(length - 1));
    if start > end {
        return 0..0;
    }
    start as usize..end as usize + 1
}
