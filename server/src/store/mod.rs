//! The shard's keyspace as a sans-I/O state machine: `apply(client, request, now_ms)`
//! returns the response, and time only enters through `now_ms`, so tests drive it with
//! a virtual clock and get the same answers as the server.
//!
//! Invariants:
//! - `memory_used_bytes` equals the sum of [`entry_bytes`] over live entries plus the
//!   expiry index and the operation records; writes that would push it past the limit
//!   are refused, shrinking writes and deletes never are.
//! - A key with a deadline `<= now_ms` is never returned: reads expire it lazily, and
//!   [`Store::expire_due`] removes the rest in bounded steps.
//! - Versions come from one per-shard counter, so a key's version never repeats, even
//!   across delete and re-create (a stale `IfVersion` can never match by accident).

mod bytes;
mod counter;
mod operations;

use std::collections::{BTreeSet, HashMap};

use engram_proto::limits::{KEY_BYTES_MAX, NAMESPACE_BYTES_MAX, TTL_MS_MAX, VALUE_BYTES_MAX};
use engram_proto::{Command, ErrorCode, ErrorReply, Request, Response};
use xxhash_rust::xxh3::Xxh3Builder;

pub use operations::{OperationLog, OPERATION_RECORDS_MAX, SESSION_IDLE_MS_MAX};

/// Bookkeeping charged per entry on top of key and value bytes: the hash table slot,
/// the entry header and the allocator's rounding. An estimate, deliberately not low.
pub const ENTRY_OVERHEAD_BYTES: u64 = 96;
/// Charged per key in the expiry index on top of a copy of the key.
pub const EXPIRY_OVERHEAD_BYTES: u64 = 48;
/// Longest stored key: a client key with its namespace prefix (one length byte and the
/// namespace), which the connection prepends after checking the client key itself.
pub const STORED_KEY_BYTES_MAX: usize = KEY_BYTES_MAX + 1 + NAMESPACE_BYTES_MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Object {
    Bytes(Vec<u8>),
    Counter(i64),
}

impl Object {
    fn payload_bytes(&self) -> u64 {
        match self {
            Object::Bytes(value) => value.capacity() as u64,
            Object::Counter(_) => 0,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) object: Object,
    pub(crate) version: u64,
    /// 0: no expiry.
    pub(crate) expires_at_ms: u64,
}

/// Memory charged for one entry (expiry index excluded).
pub fn entry_bytes(key: &[u8], object_payload_bytes: u64) -> u64 {
    key.len() as u64 + object_payload_bytes + ENTRY_OVERHEAD_BYTES
}

fn expiry_bytes(key: &[u8]) -> u64 {
    key.len() as u64 + EXPIRY_OVERHEAD_BYTES
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        code: code.as_u16(),
        message: message.into(),
        map_epoch: 0,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub keys: u64,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub operation_records: u64,
}

pub struct Store {
    entries: HashMap<Box<[u8]>, Entry, Xxh3Builder>,
    /// (deadline, key) for every key with a TTL, soonest first.
    expiries: BTreeSet<(u64, Box<[u8]>)>,
    operations: OperationLog,
    memory_used_bytes: u64,
    memory_limit_bytes: u64,
    last_version: u64,
}

impl Store {
    /// `hash_seed` should be random per process, so clients cannot pick keys that collide.
    pub fn new(memory_limit_bytes: u64, hash_seed: u64) -> Store {
        Store {
            entries: HashMap::with_hasher(Xxh3Builder::new().with_seed(hash_seed)),
            expiries: BTreeSet::new(),
            operations: OperationLog::default(),
            memory_used_bytes: 0,
            memory_limit_bytes,
            last_version: 0,
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.entries.len() as u64,
            memory_used_bytes: self.memory_used_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            operation_records: self.operations.records() as u64,
        }
    }

    /// Applies one keyed request from `client_id` at time `now_ms`. A mutation with an
    /// operation id is applied at most once: a retry gets the recorded first answer.
    pub fn apply(&mut self, client_id: u64, request: &Request, now_ms: u64) -> Response {
        let mutation = request.command.is_mutation() && request.op_id != 0;
        if mutation {
            match self
                .operations
                .lookup(client_id, request.op_id, request.completed_below_op_id, now_ms)
            {
                Ok(Some(first_answer)) => return first_answer,
                Ok(None) => {}
                Err(refusal) => return refusal,
            }
        }
        let before = self.operations.bytes();
        let response = self.execute(&request.command, now_ms);
        if mutation && !is_retryable_error(&response) {
            self.operations.record(client_id, request.op_id, response.clone());
        }
        self.memory_used_bytes = self.memory_used_bytes - before + self.operations.bytes();
        response
    }

    fn execute(&mut self, command: &Command, now_ms: u64) -> Response {
        if let Some(key) = command.key() {
            if key.len() > STORED_KEY_BYTES_MAX {
                return error(
                    ErrorCode::KeyTooLarge,
                    format!(
                        "stored key of {} bytes exceeds stored_key_bytes_max ({STORED_KEY_BYTES_MAX})",
                        key.len()
                    ),
                );
            }
        }
        match command {
            Command::Get { key } => self.bytes_get(key, now_ms),
            Command::Set {
                key,
                value,
                ttl_ms,
                condition,
            } => {
                if value.len() > VALUE_BYTES_MAX {
                    return value_too_large(value.len());
                }
                if *ttl_ms > TTL_MS_MAX {
                    return error(
                        ErrorCode::InvalidArgument,
                        format!("ttl of {ttl_ms} ms exceeds ttl_ms_max ({TTL_MS_MAX})"),
                    );
                }
                self.bytes_set(key, value, *ttl_ms, *condition, now_ms)
            }
            Command::Del { key } => {
                let existed = self.live_entry(key, now_ms).is_some();
                if existed {
                    self.remove(key);
                }
                Response::Deleted { existed }
            }
            Command::Append { key, value } => self.bytes_append(key, value, now_ms),
            Command::CounterGet { key } => self.counter_get(key, now_ms),
            Command::CounterAdd { key, delta } => self.counter_add(key, *delta, now_ms),
            Command::CounterSet { key, value } => self.counter_set(key, *value, now_ms),
            Command::CounterCas { key, expected, new } => self.counter_cas(key, *expected, *new, now_ms),
            Command::Ping | Command::Info | Command::GetSlotMap => error(
                ErrorCode::Internal,
                format!("{} is a node command, not a keyed one", command.name()),
            ),
        }
    }

    /// Removes up to `budget` keys whose deadline has passed and forgets client sessions
    /// idle for longer than `SESSION_IDLE_MS_MAX`. Returns the number of keys removed;
    /// the budget keeps one call short so the shard's other work is not starved.
    pub fn expire_due(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            let Some((deadline, key)) = self.expiries.first() else {
                break;
            };
            if *deadline > now_ms {
                break;
            }
            let key = key.clone();
            self.remove(&key);
            removed += 1;
        }
        let before = self.operations.bytes();
        self.operations.forget_idle(now_ms);
        self.memory_used_bytes = self.memory_used_bytes - before + self.operations.bytes();
        removed
    }

    /// The entry for `key` unless it is absent or expired (an expired one is removed).
    pub(crate) fn live_entry(&mut self, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(entry) => entry.expires_at_ms != 0 && entry.expires_at_ms <= now_ms,
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get_mut(key)
    }

    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    /// Refuses growth past the memory limit. Only growth is checked, so a full shard
    /// still accepts deletes and writes that shrink what it holds.
    fn admit_growth(&self, old_bytes: u64, new_bytes: u64) -> Result<(), Response> {
        if new_bytes <= old_bytes {
            return Ok(());
        }
        let after = self.memory_used_bytes - old_bytes + new_bytes;
        if after > self.memory_limit_bytes {
            return Err(error(
                ErrorCode::OutOfMemory,
                format!(
                    "write needs {} bytes; shard holds {} of memory_limit_bytes ({})",
                    new_bytes - old_bytes,
                    self.memory_used_bytes,
                    self.memory_limit_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Inserts or replaces `key` (a live or absent one: callers have expired it), with
    /// `expires_at_ms` 0 for no expiry. Memory must have been admitted by the caller.
    fn put(&mut self, key: &[u8], object: Object, expires_at_ms: u64) -> u64 {
        let version = self.next_version();
        let new_payload = object.payload_bytes();
        let entry = Entry {
            object,
            version,
            expires_at_ms,
        };
        match self.entries.get_mut(key) {
            Some(existing) => {
                let old_payload = existing.object.payload_bytes();
                let old_deadline = existing.expires_at_ms;
                *existing = entry;
                self.memory_used_bytes = self.memory_used_bytes - old_payload + new_payload;
                self.move_deadline(key, old_deadline, expires_at_ms);
            }
            None => {
                self.entries.insert(key.into(), entry);
                self.memory_used_bytes += entry_bytes(key, new_payload);
                self.move_deadline(key, 0, expires_at_ms);
            }
        }
        version
    }

    fn move_deadline(&mut self, key: &[u8], old: u64, new: u64) {
        if old == new {
            return;
        }
        if old != 0 {
            self.expiries.remove(&(old, Box::<[u8]>::from(key)));
            self.memory_used_bytes -= expiry_bytes(key);
        }
        if new != 0 {
            self.expiries.insert((new, key.into()));
            self.memory_used_bytes += expiry_bytes(key);
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.remove(key) {
            self.memory_used_bytes -= entry_bytes(key, entry.object.payload_bytes());
            self.move_deadline(key, entry.expires_at_ms, 0);
        }
    }

    /// Memory an entry would be charged with a payload of `payload_bytes`, and what the
    /// current live entry (if any) is charged, for admission checks.
    fn charge(&self, key: &[u8], payload_bytes: u64, expires: bool) -> (u64, u64) {
        let old = self.entries.get(key).map_or(0, |entry| {
            entry_bytes(key, entry.object.payload_bytes())
                + if entry.expires_at_ms != 0 { expiry_bytes(key) } else { 0 }
        });
        let new = entry_bytes(key, payload_bytes) + if expires { expiry_bytes(key) } else { 0 };
        (old, new)
    }
}

fn value_too_large(bytes: usize) -> Response {
    error(
        ErrorCode::ValueTooLarge,
        format!("value of {bytes} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})"),
    )
}

fn wrong_type(key: &[u8], expected: &str) -> Response {
    error(
        ErrorCode::WrongType,
        format!("key {:?} does not hold a {expected}", String::from_utf8_lossy(key)),
    )
}

fn is_retryable_error(response: &Response) -> bool {
    match response {
        Response::Error(reply) => ErrorCode::from_u16(reply.code).is_some_and(ErrorCode::is_retryable),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
