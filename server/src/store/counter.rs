//! Counters: signed 64-bit, created at 0 on first use; overflow is an error, never a wrap.

use engram_proto::{ErrorCode, Response};

use super::{error, wrong_type, Object, Store};

impl Store {
    /// The counter's value, 0 for a missing key, or the WrongType refusal.
    fn counter_value(&mut self, key: &[u8], now_ms: u64) -> Result<Option<i64>, Response> {
        match self.live_entry(key, now_ms) {
            None => Ok(None),
            Some(entry) => match entry.object {
                Object::Counter(value) => Ok(Some(value)),
                _ => Err(wrong_type(key, "counter")),
            },
        }
    }

    /// Stores `value` into an existing counter in place, or creates it.
    fn counter_store(&mut self, key: &[u8], exists: bool, value: i64) -> Result<(), Response> {
        if exists {
            let version = self.next_version();
            if let Some(entry) = self.entries.get_mut(key) {
                entry.object = Object::Counter(value);
                entry.version = version;
            }
            return Ok(());
        }
        let (old_bytes, new_bytes) = self.charge(key, 0, false);
        self.admit_growth(old_bytes, new_bytes)?;
        self.put(key, Object::Counter(value), 0);
        Ok(())
    }

    pub(crate) fn counter_get(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.counter_value(key, now_ms) {
            Ok(value) => Response::Counter {
                value: value.unwrap_or(0),
            },
            Err(refusal) => refusal,
        }
    }

    pub(crate) fn counter_add(&mut self, key: &[u8], delta: i64, now_ms: u64) -> Response {
        let current = match self.counter_value(key, now_ms) {
            Ok(current) => current,
            Err(refusal) => return refusal,
        };
        let Some(value) = current.unwrap_or(0).checked_add(delta) else {
            return error(
                ErrorCode::Overflow,
                format!("counter {} + {delta} does not fit in i64", current.unwrap_or(0)),
            );
        };
        match self.counter_store(key, current.is_some(), value) {
            Ok(()) => Response::Counter { value },
            Err(refusal) => refusal,
        }
    }

    pub(crate) fn counter_set(&mut self, key: &[u8], value: i64, now_ms: u64) -> Response {
        let current = match self.counter_value(key, now_ms) {
            Ok(current) => current,
            Err(refusal) => return refusal,
        };
        match self.counter_store(key, current.is_some(), value) {
            Ok(()) => Response::Counter { value },
            Err(refusal) => refusal,
        }
    }

    pub(crate) fn counter_cas(&mut self, key: &[u8], expected: i64, new: i64, now_ms: u64) -> Response {
        let current = match self.counter_value(key, now_ms) {
            Ok(current) => current,
            Err(refusal) => return refusal,
        };
        if current.unwrap_or(0) != expected {
            return Response::CounterCas {
                swapped: false,
                current: current.unwrap_or(0),
            };
        }
        match self.counter_store(key, current.is_some(), new) {
            Ok(()) => Response::CounterCas {
                swapped: true,
                current: new,
            },
            Err(refusal) => refusal,
        }
    }
}
