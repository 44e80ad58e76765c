//! The shard's keyspace as a sans-I/O state machine: `apply(client, request, now_ms)`
//! returns the response, and time only enters through `now_ms`, so tests drive it with
//! a virtual clock and get the same answers as the server.
//!
//! Invariants:
//! - `memory_used_bytes` equals the sum of what each live entry is charged
//!   ([`entry_bytes`] for bytes values and counters, [`object_entry_bytes`] for
//!   coordination objects) plus the expiry index and the operation records; writes that
//!   would push it past the limit are refused, shrinking writes and deletes never are.
//! - A key with a deadline `<= now_ms` is never returned: reads expire it lazily, and
//!   [`Store::expire_due`] removes the rest in bounded steps.
//! - Versions come from one per-shard counter, so a key's version never repeats, even
//!   across delete and re-create (a stale `IfVersion` can never match by accident).

/// The effects of one operation at `$now_ms` on behalf of `$origin`, borrowing only the
/// store's waiting, records and version fields (a macro, not a method, so the caller
/// keeps using the store's other fields alongside).
macro_rules! store_effects {
    ($store:ident, $now_ms:expr, $origin:expr) => {
        Effects::new(
            $now_ms,
            $origin,
            &mut $store.waiting,
            &mut $store.operations,
            &mut $store.last_version,
        )
    };
}

mod barrier;
mod bytes;
mod counter;
mod execute;
mod future;
mod key;
mod keys;
mod latch;
mod lock;
mod map;
mod migration;
mod operations;
mod queue;
mod replica;
mod scan;
mod semaphore;
mod table;
mod validation;
mod waiting;

pub(crate) use table::PREFETCH_KEYS_MAX;

use std::collections::BTreeSet;

use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{DataRequest, ErrorCode, ErrorReply, Response};

use keys::client_key;
pub use keys::{slot_of_stored_key, STORED_KEY_BYTES_MAX};
pub use migration::ImportError;
pub use operations::Origin;
use operations::{Lookup, Record, RECORD_OVERHEAD_BYTES};
pub use operations::{OperationLog, OPERATION_RECORDS_MAX, SESSION_IDLE_MS_MAX};
pub use replica::ReplicaChanges;
use table::{CompactEntry, CompactError, Contents, KeyEntry, KeyTable, Position};
pub use waiting::{Completion, STORE_CLOCK_STEP_MS};
pub(crate) use waiting::{Effects, Revert, Waiting};

/// Bookkeeping charged per bytes value or counter on top of its key and value bytes. An
/// estimate, deliberately not low: its 16-byte table element and control byte at the
/// table's sparsest (7/16 full, just after it doubled: 17 x 16/7 = 39 bytes), the
/// compact entry's header (19 bytes; 23 once an append made room; 27 for a counter,
/// whose value is not charged otherwise) and glibc's 8-byte chunk header with up to 15
/// bytes of rounding: 89 at most, rounded up to the allocator's 16-byte granularity.
pub const ENTRY_OVERHEAD_BYTES: u64 = 96;
/// Bookkeeping charged per coordination object on top of its key and payload bytes, an
/// estimate in the same spirit: the table as above (39), the 48-byte object entry (a
/// 64-byte chunk), the key's own allocation (up to 23 bytes of chunk header and
/// rounding) and the boxed state (at most 80 bytes, a 96-byte chunk): 222, rounded up
/// likewise.
pub const OBJECT_ENTRY_OVERHEAD_BYTES: u64 = 224;
// The sizes OBJECT_ENTRY_OVERHEAD_BYTES counts on.
const _: () = assert!(std::mem::size_of::<table::ObjectEntry>() <= 48);
const _: () = assert!(
    std::mem::size_of::<lock::LockState>() <= 80
        && std::mem::size_of::<semaphore::SemaphoreState>() <= 80
        && std::mem::size_of::<barrier::BarrierState>() <= 80
        && std::mem::size_of::<latch::LatchState>() <= 80
        && std::mem::size_of::<future::FutureState>() <= 80
        && std::mem::size_of::<map::MapState>() <= 80
        && std::mem::size_of::<queue::QueueState>() <= 80
);
/// Charged per key in the expiry index on top of a copy of the key.
pub const EXPIRY_OVERHEAD_BYTES: u64 = 48;

/// Identifies one parked request (a blocking wait) within a store.
pub type WaiterId = u64;

/// What applying a request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer, now.
    Ready(Response),
    /// The request waits at the shard; its answer will come out of
    /// [`Store::take_completions`] under this id, when the condition holds or its
    /// deadline passes.
    Parked(WaiterId),
}

/// A coordination object (bytes values and counters are [`CompactEntry`]s). Each state is
/// boxed so that an object entry is sized for a pointer rather than the largest state:
/// a latch or a barrier does not pay for a semaphore's or a queue's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Object {
    Lock(Box<lock::LockState>),
    Semaphore(Box<semaphore::SemaphoreState>),
    Barrier(Box<barrier::BarrierState>),
    Latch(Box<latch::LatchState>),
    Future(Box<future::FutureState>),
    Map(Box<map::MapState>),
    Queue(Box<queue::QueueState>),
}

const _: () = assert!(std::mem::size_of::<Object>() <= 16);

impl Object {
    fn payload_bytes(&self) -> u64 {
        match self {
            Object::Lock(lock) => lock.payload_bytes(),
            Object::Semaphore(semaphore) => semaphore.payload_bytes(),
            Object::Barrier(_) | Object::Latch(_) => 0,
            Object::Future(future) => future.payload_bytes(),
            Object::Map(map) => map.payload_bytes(),
            Object::Queue(queue) => queue.payload_bytes(),
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Object::Lock(_) => "lock",
            Object::Semaphore(_) => "semaphore",
            Object::Barrier(_) => "barrier",
            Object::Latch(_) => "latch",
            Object::Future(_) => "future",
            Object::Map(_) => "map",
            Object::Queue(_) => "queue",
        }
    }

    /// Whether the object holds nothing worth keeping, so its key can go: what a later
    /// use would re-create is indistinguishable from it. Barriers (their generation
    /// numbers) and futures (write-once) always matter, as do bytes values and counters.
    fn is_idle(&self) -> bool {
        match self {
            Object::Lock(lock) => lock.is_idle(),
            Object::Semaphore(semaphore) => semaphore.is_idle(),
            Object::Latch(latch) => latch.is_idle(),
            Object::Map(map) => map.is_idle(),
            Object::Queue(queue) => queue.is_idle(),
            Object::Barrier(_) | Object::Future(_) => false,
        }
    }

    /// Takes every request parked on the object out of it, granting none of them
    /// anything (a semaphore does not serve the next waiter, a barrier forgets the
    /// arrivals), oldest first.
    fn take_waiters(&mut self) -> Vec<WaiterId> {
        match self {
            Object::Lock(lock) => lock.take_waiters(),
            Object::Semaphore(semaphore) => semaphore.take_waiters(),
            Object::Barrier(barrier) => barrier.take_waiters(),
            Object::Latch(latch) => latch.take_waiters(),
            Object::Future(future) => future.take_waiters(),
            Object::Queue(queue) => queue.take_waiters(),
            Object::Map(_) => Vec::new(),
        }
    }

    /// Answers every request parked on the object with `error`, as when it is deleted.
    fn fail_waiters(&mut self, effects: &mut Effects<'_>, error: &Response) {
        for waiter in self.take_waiters() {
            effects.complete(waiter, error.clone());
        }
    }
}

/// A coordination object's entry (bytes values and counters keep these fields in their
/// [`CompactEntry`]).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) object: Object,
    pub(crate) version: u64,
    /// 0: no expiry.
    pub(crate) expires_at_ms: u64,
}

impl Entry {
    /// A coordination object as created: no version of its own (its fences and permit ids
    /// come from the version counter) and no expiry.
    fn new(object: Object) -> Entry {
        Entry {
            object,
            version: 0,
            expires_at_ms: 0,
        }
    }
}

/// Memory charged for a bytes value's or counter's entry (expiry index excluded).
pub fn entry_bytes(key: &[u8], payload_bytes: u64) -> u64 {
    key.len() as u64 + payload_bytes + ENTRY_OVERHEAD_BYTES
}

/// Memory charged for a coordination object's entry (expiry index excluded).
pub fn object_entry_bytes(key: &[u8], payload_bytes: u64) -> u64 {
    key.len() as u64 + payload_bytes + OBJECT_ENTRY_OVERHEAD_BYTES
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
    pub parked_requests: u64,
}

/// Makes a fresh coordination object of the type a command works on.
type Constructor = fn() -> Object;

pub struct Store {
    entries: KeyTable,
    /// (deadline, key) for every key with a TTL, soonest first.
    expiries: BTreeSet<(u64, Box<[u8]>)>,
    operations: OperationLog,
    waiting: Waiting,
    /// Memory charged for entries and the expiry index (operation records are added
    /// by [`Store::memory_used_bytes`]).
    data_bytes: u64,
    memory_limit_bytes: u64,
    last_version: u64,
    /// While a recorded mutation runs: the fixed bytes of its operation record, so a
    /// write that grows the data is checked with its record included (the record is
    /// added after the write). Writes that do not grow the data are not checked at
    /// all, so a full shard still takes deletes; their records can pass the limit by
    /// what clients hold unacknowledged.
    record_reserve_bytes: u64,
    /// The value buffer of the last value answered at once (a GET's, mostly), handed
    /// back by [`Store::recycle`]: the next GET copies its value into it rather than
    /// into a fresh allocation.
    spare_value: Vec<u8>,
}

/// The largest value buffer [`Store::recycle`] keeps for the next read; a larger one is
/// freed, so one big read does not pin its memory for the life of the shard.
pub(crate) const RECYCLED_VALUE_BYTES_MAX: usize = 64 * 1024;

impl Store {
    /// `hash_seed` should be random per process, so clients cannot pick keys that collide.
    pub fn new(memory_limit_bytes: u64, hash_seed: u64) -> Store {
        Store {
            entries: KeyTable::new(hash_seed),
            expiries: BTreeSet::new(),
            operations: OperationLog::default(),
            waiting: Waiting::default(),
            data_bytes: 0,
            memory_limit_bytes,
            last_version: 0,
            record_reserve_bytes: 0,
            spare_value: Vec::new(),
        }
    }

    /// Makes every later version, fence and permit id greater than `floor`: the floor
    /// of this process's incarnation at start, and a map's after a reclaim, so nothing
    /// an earlier process handed out is handed out again (see `ARCHITECTURE.md`).
    pub fn raise_version_floor(&mut self, floor: u64) {
        self.last_version = self.last_version.max(floor);
    }

    /// Takes back an answer once it has been copied out (into a connection's outbox),
    /// keeping its value buffer for the next read.
    pub fn recycle(&mut self, response: Response) {
        if let Response::Value { value, .. } = response {
            if value.capacity() <= RECYCLED_VALUE_BYTES_MAX {
                self.spare_value = value;
            }
        }
    }

    pub fn memory_used_bytes(&self) -> u64 {
        self.data_bytes + self.operations.bytes()
    }

    /// What the limit checks growth against: the memory used plus the record the
    /// running mutation will add.
    fn memory_committed_bytes(&self) -> u64 {
        self.memory_used_bytes() + self.record_reserve_bytes
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.entries.len() as u64,
            memory_used_bytes: self.memory_used_bytes(),
            memory_limit_bytes: self.memory_limit_bytes,
            operation_records: self.operations.records() as u64,
            parked_requests: self.waiting.parked() as u64,
        }
    }

    /// Applies one keyed request from `client_id` at time `now_ms`. A mutation with an
    /// operation id is applied at most once: a retry gets the recorded first answer, or
    /// re-attaches to the same parked wait.
    pub fn apply(&mut self, client_id: u64, request: &DataRequest, now_ms: u64) -> Outcome {
        let origin = Origin::of(client_id, request);
        let recorded = origin.is_some();
        if recorded {
            match self.operations.lookup(
                client_id,
                request.op_id,
                request.completed_below_op_id,
                now_ms,
                request.command.wait_ms(),
            ) {
                Lookup::Seen(Record::Done(first_answer)) => return Outcome::Ready(first_answer),
                Lookup::Seen(Record::Parked(waiter)) => return Outcome::Parked(waiter),
                Lookup::Refused(refusal) => return Outcome::Ready(refusal),
                Lookup::New => {}
            }
        }
        self.record_reserve_bytes = if recorded { RECORD_OVERHEAD_BYTES } else { 0 };
        let outcome = self.execute(&request.command, now_ms, origin);
        self.record_reserve_bytes = 0;
        self.withdraw_ended_waits(now_ms);
        if let Some(Origin { client_id, op_id }) = origin {
            // The record goes wherever its key's slot goes, so a retry after a
            // migration still finds it.
            let slot = slot_of_stored_key(request.command.key());
            match &outcome {
                Outcome::Ready(response) if is_recorded_answer(response) => {
                    self.operations
                        .record(client_id, op_id, slot, Record::Done(response.clone()))
                }
                Outcome::Ready(_) => {}
                Outcome::Parked(waiter) => self.operations.record(client_id, op_id, slot, Record::Parked(*waiter)),
            }
        }
        outcome
    }

    /// Answers of parked requests that completed since the last call, in completion order.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        self.waiting.take_completions()
    }

    /// A parked request's asker is gone (its connection closed): take it out of its
    /// object's queue without an answer, so it is granted nothing, and forget its
    /// operation record so a retry on a new connection starts afresh.
    pub fn cancel(&mut self, waiter: WaiterId, now_ms: u64) {
        let Some(key) = self.waiting.key_of(waiter).map(Box::<[u8]>::from) else {
            return;
        };
        if let Some(Some(Origin { client_id, op_id })) = self.waiting.cancel(waiter) {
            self.operations.forget(client_id, op_id, Some(waiter));
        }
        self.with_existing(&key, now_ms, |object, effects| match object {
            Object::Lock(lock) => lock.cancel(waiter),
            Object::Semaphore(semaphore) => semaphore.cancel(&key, waiter, effects),
            Object::Barrier(barrier) => barrier.cancel(waiter),
            Object::Latch(latch) => latch.cancel(waiter),
            Object::Future(future) => future.cancel(waiter),
            Object::Queue(queue) => queue.cancel(waiter),
            Object::Map(_) => {}
        });
        self.withdraw_ended_waits(now_ms);
    }

    /// A completion could not be delivered: give back what it took (a popped value, a
    /// granted lock or permit) and forget its record, so nothing is lost to a dead
    /// waiter and a retry applies afresh.
    pub fn undeliverable(&mut self, completion: Completion, now_ms: u64) {
        let Some(revert) = completion.revert else { return };
        if let Some(Origin { client_id, op_id }) = completion.origin {
            self.operations.forget(client_id, op_id, None);
        }
        let key = completion.key;
        match (revert, completion.response) {
            (Revert::QueueValue { end }, Response::Value { value, .. } | Response::Popped { value, .. }) => {
                // Given back even on a full shard: the value was admitted once already,
                // and the push that brought it was acknowledged.
                if !matches!(
                    self.live_entry(&key, now_ms).and_then(KeyEntry::object_mut),
                    Some(Object::Queue(_))
                ) {
                    if self.entries.get(&key).is_some() {
                        return; // Another type took the key meanwhile; nothing to put back into.
                    }
                    self.entries
                        .insert_new(KeyEntry::object(&key, Entry::new(queue::QueueState::create())));
                    self.data_bytes += object_entry_bytes(&key, 0);
                }
                self.with_existing(&key, now_ms, |object, effects| {
                    if let Object::Queue(queue) = object {
                        queue.give_back(&key, &value, end, &mut effects.without_memory_limit());
                    }
                });
            }
            (Revert::LockGrant { owner, fence }, _) => {
                let _ = self.coordinate(
                    &key,
                    now_ms,
                    None,
                    lock::LockState::create,
                    false,
                    |object, effects, key| {
                        let Object::Lock(lock) = object else { unreachable!() };
                        Outcome::Ready(lock.release(key, &owner, fence, effects))
                    },
                );
            }
            (Revert::Permit { permit_id }, _) => {
                let create = semaphore::SemaphoreState::create;
                let _ = self.coordinate(&key, now_ms, None, create, false, |object, effects, key| {
                    let Object::Semaphore(semaphore) = object else {
                        unreachable!()
                    };
                    Outcome::Ready(semaphore.release(key, permit_id, effects))
                });
            }
            (Revert::QueueValue { .. }, _) => {}
        }
        self.withdraw_ended_waits(now_ms);
    }

    /// The earliest moment something is due (a wait's deadline, a lease's end, a key's
    /// expiry), so the shell can sleep exactly until then instead of polling.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let timer = self.waiting.next_deadline_ms();
        let expiry = self.expiries.first().map(|(deadline, _)| *deadline);
        match (timer, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due wait deadlines and lease ends, then removes up to `budget` keys whose
    /// deadline has passed and forgets client sessions idle for longer than
    /// `SESSION_IDLE_MS_MAX`. Returns the number of keys removed; the budget keeps one
    /// call short so the shard's other work is not starved.
    pub fn expire_due(&mut self, now_ms: u64, budget: usize) -> usize {
        while let Some(timer) = self.waiting.pop_due_timer(now_ms) {
            self.fire(timer, now_ms);
        }
        self.withdraw_ended_waits(now_ms);
        let mut removed = 0;
        while removed < budget {
            let Some((deadline, key)) = self.expiries.first() else {
                break;
            };
            if *deadline > now_ms {
                break;
            }
            let key = key.clone();
            self.remove(&key, now_ms);
            removed += 1;
        }
        self.operations.forget_idle(now_ms);
        removed
    }

    fn fire(&mut self, timer: waiting::Timer, now_ms: u64) {
        let (key, action) = match timer {
            waiting::Timer::Waiter(waiter) => match self.waiting.key_of(waiter) {
                Some(key) => (Box::<[u8]>::from(key), waiting::Timer::Waiter(waiter)),
                None => return,
            },
            waiting::Timer::Lease { key, lease_id } => (key.clone(), waiting::Timer::Lease { key, lease_id }),
        };
        self.with_existing(&key, now_ms, |object, effects| match (&action, object) {
            (waiting::Timer::Waiter(waiter), Object::Lock(lock)) => lock.time_out(&key, *waiter, effects),
            (waiting::Timer::Waiter(waiter), Object::Semaphore(semaphore)) => {
                semaphore.time_out(&key, *waiter, effects)
            }
            (waiting::Timer::Waiter(waiter), Object::Barrier(barrier)) => barrier.time_out(&key, *waiter, effects),
            (waiting::Timer::Waiter(waiter), Object::Latch(latch)) => latch.time_out(&key, *waiter, effects),
            (waiting::Timer::Waiter(waiter), Object::Future(future)) => future.time_out(&key, *waiter, effects),
            (waiting::Timer::Waiter(waiter), Object::Queue(queue)) => queue.time_out(&key, *waiter, effects),
            (waiting::Timer::Lease { key, lease_id }, Object::Lock(lock)) => lock.lease_ended(key, *lease_id, effects),
            (waiting::Timer::Lease { key, lease_id }, Object::Semaphore(semaphore)) => {
                semaphore.lease_ended(key, *lease_id, effects)
            }
            _ => {}
        });
        // A waiter whose object vanished still gets an answer.
        if let waiting::Timer::Waiter(waiter) = action {
            let mut effects = store_effects!(self, now_ms, None);
            effects.complete(
                waiter,
                error(ErrorCode::ObjectDeleted, "the object was deleted while waiting"),
            );
        }
    }

    /// Runs `operation` on the coordination object at `key`, creating it with `create`
    /// when absent. Keeps memory accounting exact (the object's payload before and
    /// after), refuses a wrong type, and drops the key when the object went idle.
    fn coordinate(
        &mut self,
        key: &[u8],
        now_ms: u64,
        origin: Option<Origin>,
        create: Constructor,
        creates: bool,
        operation: impl FnOnce(&mut Object, &mut Effects<'_>, &[u8]) -> Outcome,
    ) -> Outcome {
        let position = match self.live_position(key, now_ms) {
            Some(position) => {
                let expected = create();
                let existing = self.entries.at_mut(position).and_then(KeyEntry::object_mut);
                if existing.is_none_or(|existing| std::mem::discriminant(existing) != std::mem::discriminant(&expected))
                {
                    return Outcome::Ready(wrong_type(key, expected.type_name()));
                }
                position
            }
            None if !creates => {
                // Reads and releases of an absent object answer as a fresh one would,
                // without storing it: they must work on a full shard, and leave nothing.
                let mut fresh = create();
                let mut effects = store_effects!(self, now_ms, origin);
                let outcome = operation(&mut fresh, &mut effects, key);
                debug_assert!(
                    matches!(outcome, Outcome::Ready(_)),
                    "only creating operations may park"
                );
                return outcome;
            }
            None => {
                let new_bytes = object_entry_bytes(key, 0);
                if let Err(refusal) = self.admit_growth(0, new_bytes) {
                    return Outcome::Ready(refusal);
                }
                self.data_bytes += new_bytes;
                self.entries.insert_new(KeyEntry::object(key, Entry::new(create())))
            }
        };
        let memory_committed_bytes = self.memory_committed_bytes();
        let mut effects =
            store_effects!(self, now_ms, origin).with_memory(memory_committed_bytes, self.memory_limit_bytes);
        let Some(object) = self.entries.at_mut(position).and_then(KeyEntry::object_mut) else {
            unreachable!("present or just created")
        };
        let before = object.payload_bytes();
        let outcome = operation(object, &mut effects, key);
        let after = object.payload_bytes();
        let idle = object.is_idle();
        self.data_bytes = self.data_bytes - before + after;
        if idle {
            self.remove(key, now_ms);
        }
        outcome
    }

    /// Like [`Store::coordinate`] for an object that must already exist; used by timers.
    fn with_existing(&mut self, key: &[u8], now_ms: u64, operation: impl FnOnce(&mut Object, &mut Effects<'_>)) {
        let mut effects = store_effects!(self, now_ms, None);
        let Some(object) = self.entries.get_mut(key).and_then(KeyEntry::object_mut) else {
            return;
        };
        let before = object.payload_bytes();
        operation(object, &mut effects);
        let after = object.payload_bytes();
        let idle = object.is_idle();
        self.data_bytes = self.data_bytes - before + after;
        if idle {
            self.remove(key, now_ms);
        }
    }

    fn delete(&mut self, key: &[u8], now_ms: u64) -> Response {
        let position = self.live_position(key, now_ms);
        if let Some(position) = position {
            self.remove_at(key, position, now_ms);
        }
        Response::Deleted {
            existed: position.is_some(),
        }
    }

    /// Starts loading the entries of `stored_keys` into the cache: see
    /// [`KeyTable::prefetch`].
    pub(crate) fn prefetch<'k>(&self, stored_keys: impl Iterator<Item = &'k [u8]>) {
        self.entries.prefetch(stored_keys);
    }

    /// Where `key`'s entry sits, unless it is absent or expired (an expired one is
    /// removed). One hash lookup; the position stays valid until a key is added or removed.
    pub(crate) fn live_position(&mut self, key: &[u8], now_ms: u64) -> Option<Position> {
        let position = self.entries.find(key)?;
        if self.entries.at(position)?.is_expired(now_ms) {
            self.remove_at(key, position, now_ms);
            return None;
        }
        Some(position)
    }

    /// The entry for `key` unless it is absent or expired (an expired one is removed).
    pub(crate) fn live_entry(&mut self, key: &[u8], now_ms: u64) -> Option<&mut KeyEntry> {
        let position = self.live_position(key, now_ms)?;
        self.entries.at_mut(position)
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
        let committed = self.memory_committed_bytes();
        if committed - old_bytes.min(committed) + new_bytes > self.memory_limit_bytes {
            let needed = new_bytes - old_bytes + self.record_reserve_bytes;
            return Err(out_of_memory(needed, self.memory_used_bytes(), self.memory_limit_bytes));
        }
        Ok(())
    }

    fn move_deadline(&mut self, key: &[u8], old: u64, new: u64) {
        if old == new {
            return;
        }
        if old != 0 {
            self.expiries.remove(&(old, Box::<[u8]>::from(key)));
            self.data_bytes -= expiry_bytes(key);
        }
        if new != 0 {
            self.expiries.insert((new, key.into()));
            self.data_bytes += expiry_bytes(key);
        }
    }

    /// Removes a key; requests parked on its object are answered `ObjectDeleted`.
    fn remove(&mut self, key: &[u8], now_ms: u64) {
        if let Some(position) = self.entries.find(key) {
            self.remove_at(key, position, now_ms);
        }
    }

    /// [`Store::remove`] of the entry at `position`, which holds `key`. The bookkeeping
    /// (leases, waiters, expiry index) follows the removed entry's own key, so it stays
    /// consistent with the table even if a caller's position were stale.
    fn remove_at(&mut self, key: &[u8], position: Position, now_ms: u64) {
        let Some(mut entry) = self.entries.remove_at(position) else {
            return;
        };
        debug_assert_eq!(entry.key(), key, "remove_at was given another key's position");
        // Uncharge what the entry was charged with before its waiters leave (which
        // shrinks its payload), or the difference would stay counted forever.
        let charged = entry.entry_bytes();
        let expires_at_ms = entry.expires_at_ms();
        if let KeyEntry::Object(object_entry) = &mut entry {
            let table::ObjectEntry { key, entry } = &mut **object_entry;
            let object = &mut entry.object;
            let mut effects = store_effects!(self, now_ms, None);
            match object {
                Object::Lock(lock) => lock.clear_leases(key, &mut effects),
                Object::Semaphore(semaphore) => semaphore.clear_leases(key, &mut effects),
                _ => {}
            }
            object.fail_waiters(&mut effects, &error(ErrorCode::ObjectDeleted, "the object was deleted"));
        }
        self.data_bytes -= charged;
        self.move_deadline(entry.key(), expires_at_ms, 0);
    }

    /// What `data_bytes` should be, recomputed from scratch: every entry's charge plus
    /// the expiry index's (from the index itself, not the entries' deadlines).
    #[cfg(test)]
    pub(crate) fn recomputed_data_bytes(&self) -> u64 {
        let entries: u64 = self.entries.iter().map(KeyEntry::entry_bytes).sum();
        let expiries: u64 = self.expiries.iter().map(|(_, key)| expiry_bytes(key)).sum();
        entries + expiries
    }

    /// The expiry index as the entries' deadlines say it should be.
    #[cfg(test)]
    pub(crate) fn expected_expiries(&self) -> BTreeSet<(u64, Box<[u8]>)> {
        self.entries
            .iter()
            .filter(|entry| entry.expires_at_ms() != 0)
            .map(|entry| (entry.expires_at_ms(), Box::from(entry.key())))
            .collect()
    }
}

pub(crate) fn out_of_memory(needed_bytes: u64, used_bytes: u64, limit_bytes: u64) -> Response {
    error(
        ErrorCode::OutOfMemory,
        format!("write needs {needed_bytes} bytes; shard holds {used_bytes} of memory_limit_bytes ({limit_bytes})"),
    )
}

fn key_too_large(bytes: usize) -> Response {
    error(
        ErrorCode::KeyTooLarge,
        format!("stored key of {bytes} bytes exceeds stored_key_bytes_max ({STORED_KEY_BYTES_MAX})"),
    )
}

/// The answer for a compact entry the table would not build or change. Lengths past its
/// fields are past the validated limits too (asserted where the fields are defined), so
/// they get the limits' refusals; a wrong kind means a caller skipped its type check.
fn compact_refusal(refusal: CompactError) -> Response {
    match refusal {
        CompactError::KeyTooLong { length } => key_too_large(length),
        CompactError::ValueTooLong { length } => value_too_large(length),
        CompactError::WrongKind => error(
            ErrorCode::Internal,
            "a counter operation reached a bytes value, or a bytes operation a counter",
        ),
    }
}

fn value_too_large(bytes: usize) -> Response {
    error(
        ErrorCode::ValueTooLarge,
        format!("value of {bytes} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})"),
    )
}

pub(crate) fn wrong_type(key: &[u8], expected: &str) -> Response {
    let shown = String::from_utf8_lossy(client_key(key));
    error(
        ErrorCode::WrongType,
        format!("key {shown:?} does not hold a {expected}"),
    )
}

/// Whether a recorded mutation's answer is kept for its retries. A retryable error
/// asks for the retry to run afresh. A refusal for memory changed nothing either, so
/// a retry may as well run afresh (and succeed once memory was freed); recording it
/// would take memory the shard was just found not to have.
fn is_recorded_answer(response: &Response) -> bool {
    match response {
        Response::Error(reply) => {
            ErrorCode::from_u16(reply.code).is_none_or(|code| !code.is_retryable() && code != ErrorCode::OutOfMemory)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests;
