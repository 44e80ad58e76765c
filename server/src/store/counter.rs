//! Counters: signed 64-bit, created at 0 on first use; overflow is an error, never a wrap.

use engram_proto::{ErrorCode, Response};

use super::{compact_refusal, entry_bytes, error, wrong_type, CompactEntry, Contents, KeyEntry, Position, Store};

impl Store {
    /// The live counter at `key` (where it sits and its value), `None` for a missing key,
    /// or the WrongType refusal.
    fn counter_value(&mut self, key: &[u8], now_ms: u64) -> Result<Option<(Position, i64)>, Response> {
        let Some(position) = self.live_position(key, now_ms) else {
            return Ok(None);
        };
        match self.entries.at(position) {
            Some(KeyEntry::Compact(compact)) => match compact.contents() {
                Contents::Counter(value) => Ok(Some((position, value))),
                Contents::Bytes(_) => Err(wrong_type(key, "counter")),
            },
            _ => Err(wrong_type(key, "counter")),
        }
    }

    /// Stores `value` into the existing counter at `position` in place, or creates it.
    /// `position` must come from [`Store::counter_value`]; anything but a counter there
    /// is a bug, answered `Internal` rather than reported as stored.
    fn counter_store(&mut self, key: &[u8], position: Option<Position>, value: i64) -> Result<(), Response> {
        if let Some(position) = position {
            let version = self.next_version();
            return match self.entries.at_mut(position) {
                Some(KeyEntry::Compact(compact)) => compact.set_counter_value(value, version).map_err(compact_refusal),
                _ => Err(error(
                    ErrorCode::Internal,
                    "the counter to store into is no longer where it was found",
                )),
            };
        }
        let new_bytes = entry_bytes(key, 0);
        self.admit_growth(0, new_bytes)?;
        let version = self.next_version();
        let entry = CompactEntry::counter(key, value, version, 0).map_err(compact_refusal)?;
        self.entries.insert_new(KeyEntry::Compact(entry));
        self.data_bytes += new_bytes;
        Ok(())
    }

    pub(crate) fn counter_get(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.counter_value(key, now_ms) {
            Ok(current) => Response::Counter {
                value: current.map_or(0, |(_, value)| value),
            },
            Err(refusal) => refusal,
        }
    }

    pub(crate) fn counter_add(&mut self, key: &[u8], delta: i64, now_ms: u64) -> Response {
        let (position, current) = match self.counter_value(key, now_ms) {
            Ok(current) => (
                current.map(|(position, _)| position),
                current.map_or(0, |(_, value)| value),
            ),
            Err(refusal) => return refusal,
        };
        let Some(value) = current.checked_add(delta) else {
            return error(
                ErrorCode::Overflow,
                format!("counter {current} + {delta} does not fit in i64"),
            );
        };
        match self.counter_store(key, position, value) {
            Ok(()) => Response::Counter { value },
            Err(refusal) => refusal,
        }
    }

    pub(crate) fn counter_set(&mut self, key: &[u8], value: i64, now_ms: u64) -> Response {
        let position = match self.counter_value(key, now_ms) {
            Ok(current) => current.map(|(position, _)| position),
            Err(refusal) => return refusal,
        };
        match self.counter_store(key, position, value) {
            Ok(()) => Response::Counter { value },
            Err(refusal) => refusal,
        }
    }

    pub(crate) fn counter_cas(&mut self, key: &[u8], expected: i64, new: i64, now_ms: u64) -> Response {
        let (position, current) = match self.counter_value(key, now_ms) {
            Ok(current) => (
                current.map(|(position, _)| position),
                current.map_or(0, |(_, value)| value),
            ),
            Err(refusal) => return refusal,
        };
        if current != expected {
            return Response::CounterCas {
                swapped: false,
                current,
            };
        }
        match self.counter_store(key, position, new) {
            Ok(()) => Response::CounterCas {
                swapped: true,
                current: new,
            },
            Err(refusal) => refusal,
        }
    }
}

#[cfg(test)]
mod tests {
    use engram_proto::{ErrorCode, Response};

    use super::super::{CompactEntry, KeyEntry, Store};

    #[test]
    fn storing_a_counter_into_a_bytes_value_is_an_internal_error() {
        let mut store = Store::new(u64::MAX / 2, 1);
        let entry = CompactEntry::bytes(b"k", b"abc", 1, 0).unwrap();
        let position = store.entries.insert_new(KeyEntry::Compact(entry));
        let Err(Response::Error(reply)) = store.counter_store(b"k", Some(position), 5) else {
            panic!("a counter was reported stored into a bytes value")
        };
        assert_eq!(reply.code, ErrorCode::Internal.as_u16());
        assert_eq!(
            store.bytes_get(b"k", 0),
            Response::Value {
                value: b"abc".to_vec(),
                version: 1
            }
        );
    }
}
