//! Executing one keyed command: argument checks first, then the command goes to its
//! object family, one method per family (bytes values, counters, locks, semaphores,
//! barriers, latches, futures, maps, queues), each of which runs it on its object.

use engram_proto::limits::{
    KEY_BYTES_MAX, LEASE_MS_MAX, OWNER_BYTES_MAX, PARTIES_MAX, POP_KEYS_MAX, SCAN_PATTERN_BYTES_MAX, TTL_MS_MAX,
    VALUE_BYTES_MAX, WAIT_MS_MAX,
};
use engram_proto::{Command, ErrorCode, Response};

use super::bytes::Replace;
use super::keys::{slot_of_stored_key, STORED_KEY_BYTES_MAX};
use super::scan::ScanFilter;
use super::{
    barrier, error, future, key_too_large, latch, lock, map, queue, semaphore, value_too_large, Constructor, Effects,
    Object, Origin, Outcome, Store,
};
use engram_proto::{
    BarrierCommand, BytesCommand, CounterCommand, DataCommand, FutureCommand, KeyCommand, LatchCommand, LockCommand,
    MapCommand, QueueCommand, SemaphoreCommand,
};

/// A coordination object's state as [`Object`] holds it: how a first use creates its
/// object, and how to find it inside an object of its type.
pub(super) trait ObjectState: Sized {
    const CREATE: Constructor;

    fn within(object: &mut Object) -> Option<&mut Self>;
}

macro_rules! object_states {
    ($($variant:ident($state:ty)),* $(,)?) => {$(
        impl ObjectState for $state {
            const CREATE: Constructor = <$state>::create;

            fn within(object: &mut Object) -> Option<&mut $state> {
                match object {
                    Object::$variant(state) => Some(&mut **state),
                    _ => None,
                }
            }
        }
    )*};
}

object_states!(
    Lock(lock::LockState),
    Semaphore(semaphore::SemaphoreState),
    Barrier(barrier::BarrierState),
    Latch(latch::LatchState),
    Future(future::FutureState),
    Map(map::MapState),
    Queue(queue::QueueState),
);

type Lock = lock::LockState;
type Semaphore = semaphore::SemaphoreState;
type Barrier = barrier::BarrierState;
type Latch = latch::LatchState;
type Future = future::FutureState;
type Map = map::MapState;
type Queue = queue::QueueState;

impl Store {
    pub(super) fn execute(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        if let Some(key) = command.key() {
            if key.len() > STORED_KEY_BYTES_MAX {
                return Outcome::Ready(key_too_large(key.len()));
            }
        }
        if let Err(refusal) = validate(command) {
            return Outcome::Ready(refusal);
        }
        match command {
            Command::Data(DataCommand::Bytes(BytesCommand::Get { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::Set { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::Del { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::Append { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::GetRange { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::SetRange { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::Len { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::AddInteger { .. }))
            | Command::Data(DataCommand::Bytes(BytesCommand::Replace { .. })) => self.execute_bytes(command, now_ms),
            Command::Data(DataCommand::Counter(CounterCommand::Get { .. }))
            | Command::Data(DataCommand::Counter(CounterCommand::Add { .. }))
            | Command::Data(DataCommand::Counter(CounterCommand::Set { .. }))
            | Command::Data(DataCommand::Counter(CounterCommand::Cas { .. })) => self.execute_counter(command, now_ms),
            Command::Data(DataCommand::Lock(LockCommand::Acquire { .. }))
            | Command::Data(DataCommand::Lock(LockCommand::Release { .. }))
            | Command::Data(DataCommand::Lock(LockCommand::Renew { .. }))
            | Command::Data(DataCommand::Lock(LockCommand::Holder { .. })) => {
                self.execute_lock(command, now_ms, origin)
            }
            Command::Data(DataCommand::Semaphore(SemaphoreCommand::Acquire { .. }))
            | Command::Data(DataCommand::Semaphore(SemaphoreCommand::Release { .. }))
            | Command::Data(DataCommand::Semaphore(SemaphoreCommand::Renew { .. }))
            | Command::Data(DataCommand::Semaphore(SemaphoreCommand::Available { .. })) => {
                self.execute_semaphore(command, now_ms, origin)
            }
            Command::Data(DataCommand::Barrier(BarrierCommand::Wait { .. })) => {
                self.execute_barrier(command, now_ms, origin)
            }
            Command::Data(DataCommand::Latch(LatchCommand::TrySetCount { .. }))
            | Command::Data(DataCommand::Latch(LatchCommand::CountDown { .. }))
            | Command::Data(DataCommand::Latch(LatchCommand::Count { .. }))
            | Command::Data(DataCommand::Latch(LatchCommand::Wait { .. })) => {
                self.execute_latch(command, now_ms, origin)
            }
            Command::Data(DataCommand::Future(FutureCommand::Complete { .. }))
            | Command::Data(DataCommand::Future(FutureCommand::Get { .. })) => {
                self.execute_future(command, now_ms, origin)
            }
            Command::Data(DataCommand::Map(MapCommand::Get { .. }))
            | Command::Data(DataCommand::Map(MapCommand::Set { .. }))
            | Command::Data(DataCommand::Map(MapCommand::Del { .. }))
            | Command::Data(DataCommand::Map(MapCommand::GetAll { .. }))
            | Command::Data(DataCommand::Map(MapCommand::Incr { .. }))
            | Command::Data(DataCommand::Map(MapCommand::Put { .. })) => self.execute_map(command, now_ms, origin),
            Command::Data(DataCommand::Key(KeyCommand::Kind { key })) => Outcome::Ready(self.key_kind(key, now_ms)),
            Command::Data(DataCommand::Key(KeyCommand::Ttl { key })) => Outcome::Ready(self.key_ttl(key, now_ms)),
            Command::Data(DataCommand::Key(KeyCommand::Expire { key, ttl_ms, condition })) => {
                Outcome::Ready(self.key_expire(key, *ttl_ms, *condition, now_ms))
            }
            Command::Data(DataCommand::Key(KeyCommand::Persist { key })) => {
                Outcome::Ready(self.key_persist(key, now_ms))
            }
            Command::Data(DataCommand::Key(KeyCommand::Scan {
                key,
                cursor,
                count,
                pattern,
                kind,
            })) => {
                let filter = ScanFilter {
                    pattern: pattern.as_deref(),
                    kind: *kind,
                };
                Outcome::Ready(self.scan_keys(key, *cursor, *count, filter, now_ms))
            }
            Command::Data(DataCommand::Key(KeyCommand::Count { key })) => Outcome::Ready(self.count_keys(key)),
            Command::Data(DataCommand::Queue(QueueCommand::Push { .. }))
            | Command::Data(DataCommand::Queue(QueueCommand::Pop { .. }))
            | Command::Data(DataCommand::Queue(QueueCommand::PopAny { .. }))
            | Command::Data(DataCommand::Queue(QueueCommand::Len { .. })) => {
                self.execute_queue(command, now_ms, origin)
            }
            // Node, cluster and migration commands never reach the store.
            _ => Outcome::Ready(error(
                ErrorCode::Internal,
                format!("{} is a node command, not a keyed one", command.name()),
            )),
        }
    }

    fn execute_bytes(&mut self, command: &Command, now_ms: u64) -> Outcome {
        Outcome::Ready(match command {
            Command::Data(DataCommand::Bytes(BytesCommand::Get { key })) => self.bytes_get(key, now_ms),
            Command::Data(DataCommand::Bytes(BytesCommand::Set {
                key,
                value,
                ttl_ms,
                condition,
            })) => self.bytes_set(key, value, *ttl_ms, *condition, now_ms),
            Command::Data(DataCommand::Bytes(BytesCommand::Del { key })) => self.delete(key, now_ms),
            Command::Data(DataCommand::Bytes(BytesCommand::Append { key, value })) => {
                self.bytes_append(key, value, now_ms)
            }
            Command::Data(DataCommand::Bytes(BytesCommand::GetRange { key, start, end })) => {
                self.bytes_get_range(key, *start, *end, now_ms)
            }
            Command::Data(DataCommand::Bytes(BytesCommand::SetRange { key, offset, value })) => {
                self.bytes_set_range(key, *offset, value, now_ms)
            }
            Command::Data(DataCommand::Bytes(BytesCommand::Len { key })) => self.bytes_len(key, now_ms),
            Command::Data(DataCommand::Bytes(BytesCommand::AddInteger { key, delta })) => {
                self.bytes_add_integer(key, *delta, now_ms)
            }
            Command::Data(DataCommand::Bytes(BytesCommand::Replace {
                key,
                value,
                ttl_ms,
                keep_ttl,
                condition,
            })) => {
                let replace = Replace {
                    value: value.as_deref(),
                    ttl_ms: *ttl_ms,
                    keep_ttl: *keep_ttl,
                    condition: *condition,
                };
                self.bytes_replace(key, replace, now_ms)
            }
            other => misrouted(other, "bytes"),
        })
    }

    fn execute_counter(&mut self, command: &Command, now_ms: u64) -> Outcome {
        Outcome::Ready(match command {
            Command::Data(DataCommand::Counter(CounterCommand::Get { key })) => self.counter_get(key, now_ms),
            Command::Data(DataCommand::Counter(CounterCommand::Add { key, delta })) => {
                self.counter_add(key, *delta, now_ms)
            }
            Command::Data(DataCommand::Counter(CounterCommand::Set { key, value })) => {
                self.counter_set(key, *value, now_ms)
            }
            Command::Data(DataCommand::Counter(CounterCommand::Cas { key, expected, new })) => {
                self.counter_cas(key, *expected, *new, now_ms)
            }
            other => misrouted(other, "counter"),
        })
    }

    fn execute_lock(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Lock(LockCommand::Acquire {
                key,
                owner,
                lease_ms,
                wait_ms,
            })) => self.on::<Lock>(key, now_ms, origin, true, |lock, effects| {
                lock.acquire(key, owner, *lease_ms, *wait_ms, effects)
            }),
            Command::Data(DataCommand::Lock(LockCommand::Release { key, owner, fence })) => {
                self.on::<Lock>(key, now_ms, origin, false, |lock, effects| {
                    Outcome::Ready(lock.release(key, owner, *fence, effects))
                })
            }
            Command::Data(DataCommand::Lock(LockCommand::Renew {
                key,
                owner,
                fence,
                lease_ms,
            })) => self.on::<Lock>(key, now_ms, origin, false, |lock, effects| {
                Outcome::Ready(lock.renew(key, owner, *fence, *lease_ms, effects))
            }),
            Command::Data(DataCommand::Lock(LockCommand::Holder { key })) => {
                self.on::<Lock>(key, now_ms, origin, false, |lock, effects| {
                    Outcome::Ready(lock.holder(key, effects))
                })
            }
            other => Outcome::Ready(misrouted(other, "lock")),
        }
    }

    fn execute_semaphore(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Semaphore(SemaphoreCommand::Acquire {
                key,
                owner,
                capacity,
                permits,
                lease_ms,
                wait_ms,
            })) => self.on::<Semaphore>(key, now_ms, origin, true, |semaphore, effects| {
                semaphore.acquire(key, owner, *capacity, *permits, *lease_ms, *wait_ms, effects)
            }),
            Command::Data(DataCommand::Semaphore(SemaphoreCommand::Release { key, permit_id })) => self
                .on::<Semaphore>(key, now_ms, origin, false, |semaphore, effects| {
                    Outcome::Ready(semaphore.release(key, *permit_id, effects))
                }),
            Command::Data(DataCommand::Semaphore(SemaphoreCommand::Renew {
                key,
                permit_id,
                lease_ms,
            })) => self.on::<Semaphore>(key, now_ms, origin, false, |semaphore, effects| {
                Outcome::Ready(semaphore.renew(key, *permit_id, *lease_ms, effects))
            }),
            Command::Data(DataCommand::Semaphore(SemaphoreCommand::Available { key, capacity })) => self
                .on::<Semaphore>(key, now_ms, origin, false, |semaphore, effects| {
                    Outcome::Ready(semaphore.available(key, *capacity, effects))
                }),
            other => Outcome::Ready(misrouted(other, "semaphore")),
        }
    }

    fn execute_barrier(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Barrier(BarrierCommand::Wait {
                key,
                parties,
                timeout_ms,
            })) => self.on::<Barrier>(key, now_ms, origin, true, |barrier, effects| {
                barrier.wait(key, *parties, *timeout_ms, effects)
            }),
            other => Outcome::Ready(misrouted(other, "barrier")),
        }
    }

    fn execute_latch(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Latch(LatchCommand::TrySetCount { key, count })) => {
                self.on::<Latch>(key, now_ms, origin, true, |latch, _| {
                    Outcome::Ready(latch.try_set_count(*count))
                })
            }
            Command::Data(DataCommand::Latch(LatchCommand::CountDown { key })) => {
                self.on::<Latch>(key, now_ms, origin, false, |latch, effects| {
                    Outcome::Ready(latch.count_down(effects))
                })
            }
            Command::Data(DataCommand::Latch(LatchCommand::Count { key })) => {
                self.on::<Latch>(key, now_ms, origin, false, |latch, _| {
                    Outcome::Ready(Response::LatchCount { count: latch.count() })
                })
            }
            Command::Data(DataCommand::Latch(LatchCommand::Wait { key, timeout_ms })) => {
                self.on::<Latch>(key, now_ms, origin, false, |latch, effects| {
                    latch.wait(key, *timeout_ms, effects)
                })
            }
            other => Outcome::Ready(misrouted(other, "latch")),
        }
    }

    fn execute_future(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Future(FutureCommand::Complete { key, value })) => {
                self.on::<Future>(key, now_ms, origin, true, |future, effects| {
                    Outcome::Ready(future.complete(value, effects))
                })
            }
            // Only a get that may wait needs the future to exist.
            Command::Data(DataCommand::Future(FutureCommand::Get { key, timeout_ms })) => {
                self.on::<Future>(key, now_ms, origin, *timeout_ms > 0, |future, effects| {
                    future.get(key, *timeout_ms, effects)
                })
            }
            other => Outcome::Ready(misrouted(other, "future")),
        }
    }

    fn execute_map(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Map(MapCommand::Get { key, field })) => {
                self.on::<Map>(key, now_ms, origin, false, |map, _| Outcome::Ready(map.get(field)))
            }
            Command::Data(DataCommand::Map(MapCommand::Set { key, field, value })) => {
                self.on::<Map>(key, now_ms, origin, true, |map, effects| {
                    Outcome::Ready(map.set(field, value, effects))
                })
            }
            Command::Data(DataCommand::Map(MapCommand::Del { key, field })) => {
                self.on::<Map>(key, now_ms, origin, false, |map, _| Outcome::Ready(map.delete(field)))
            }
            Command::Data(DataCommand::Map(MapCommand::GetAll { key })) => {
                self.on::<Map>(key, now_ms, origin, false, |map, _| Outcome::Ready(map.get_all()))
            }
            Command::Data(DataCommand::Map(MapCommand::Incr { key, field, delta })) => {
                self.on::<Map>(key, now_ms, origin, true, |map, effects| {
                    Outcome::Ready(map.increment(field, *delta, effects))
                })
            }
            Command::Data(DataCommand::Map(MapCommand::Put { key, field, value })) => {
                self.on::<Map>(key, now_ms, origin, true, |map, effects| {
                    let created = map.get(field) == Response::Missing;
                    Outcome::Ready(match map.set(field, value, effects) {
                        Response::Written { .. } => Response::FieldStored { created },
                        refusal => refusal,
                    })
                })
            }
            other => Outcome::Ready(misrouted(other, "map")),
        }
    }

    fn execute_queue(&mut self, command: &Command, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            Command::Data(DataCommand::Queue(QueueCommand::Push { key, value, end })) => {
                self.on::<Queue>(key, now_ms, origin, true, |queue, effects| {
                    Outcome::Ready(queue.push(key, value, *end, effects))
                })
            }
            // Only a pop that may wait needs the queue to exist.
            Command::Data(DataCommand::Queue(QueueCommand::Pop { key, end, timeout_ms })) => {
                self.on::<Queue>(key, now_ms, origin, *timeout_ms > 0, |queue, effects| {
                    queue.pop(key, *end, *timeout_ms, effects)
                })
            }
            Command::Data(data @ DataCommand::Queue(QueueCommand::PopAny { end, timeout_ms, .. })) => {
                let keys: Vec<&[u8]> = data.keys().collect();
                self.pop_any(&keys, *end, *timeout_ms, now_ms, origin)
            }
            Command::Data(DataCommand::Queue(QueueCommand::Len { key })) => {
                self.on::<Queue>(key, now_ms, origin, false, |queue, _| {
                    Outcome::Ready(Response::QueueLength {
                        length: queue.len() as u64,
                    })
                })
            }
            other => Outcome::Ready(misrouted(other, "queue")),
        }
    }

    /// Runs `operation` on the `S` object at `key` (created when absent if `creates`),
    /// through [`Store::coordinate`].
    pub(super) fn on<S: ObjectState>(
        &mut self,
        key: &[u8],
        now_ms: u64,
        origin: Option<Origin>,
        creates: bool,
        operation: impl FnOnce(&mut S, &mut Effects<'_>) -> Outcome,
    ) -> Outcome {
        self.coordinate(key, now_ms, origin, S::CREATE, creates, |object, effects, _| {
            let Some(state) = S::within(object) else {
                unreachable!("coordinate checked the type")
            };
            operation(state, effects)
        })
    }
}

/// The answer to a command that reached another family's method, which `execute`'s
/// routing rules out.
fn misrouted(command: &Command, family: &str) -> Response {
    error(
        ErrorCode::Internal,
        format!("{} reached the {family} commands", command.name()),
    )
}

/// Argument checks shared by every object, before anything is touched.
fn validate(command: &Command) -> Result<(), Response> {
    check_waits_and_leases(command)?;
    check_sizes(command)
}

fn invalid(message: String) -> Result<(), Response> {
    Err(error(ErrorCode::InvalidArgument, message))
}

/// A wait, a lease and an owner id within the protocol's limits.
fn check_waits_and_leases(command: &Command) -> Result<(), Response> {
    let wait_ms = command.wait_ms();
    if wait_ms > WAIT_MS_MAX {
        return invalid(format!("wait of {wait_ms} ms exceeds wait_ms_max ({WAIT_MS_MAX})"));
    }
    match command {
        Command::Data(DataCommand::Lock(LockCommand::Acquire { owner, lease_ms, .. }))
        | Command::Data(DataCommand::Lock(LockCommand::Renew { owner, lease_ms, .. }))
        | Command::Data(DataCommand::Semaphore(SemaphoreCommand::Acquire { owner, lease_ms, .. })) => {
            if owner.is_empty() || owner.len() > OWNER_BYTES_MAX {
                return invalid(format!(
                    "owner id must be 1..={OWNER_BYTES_MAX} bytes (owner_bytes_max)"
                ));
            }
            if *lease_ms == 0 || *lease_ms > LEASE_MS_MAX {
                return invalid(format!(
                    "lease of {lease_ms} ms is outside 1..={LEASE_MS_MAX} (lease_ms_max)"
                ));
            }
        }
        Command::Data(DataCommand::Semaphore(SemaphoreCommand::Renew { lease_ms, .. }))
            if *lease_ms == 0 || *lease_ms > LEASE_MS_MAX =>
        {
            return invalid(format!(
                "lease of {lease_ms} ms is outside 1..={LEASE_MS_MAX} (lease_ms_max)"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Values, fields, TTLs and party counts within the protocol's limits.
fn check_sizes(command: &Command) -> Result<(), Response> {
    match command {
        Command::Data(DataCommand::Bytes(BytesCommand::Replace {
            value: Some(value),
            ttl_ms,
            ..
        }))
        | Command::Data(DataCommand::Bytes(BytesCommand::Set { value, ttl_ms, .. })) => {
            if value.len() > VALUE_BYTES_MAX {
                return Err(value_too_large(value.len()));
            }
            if *ttl_ms > TTL_MS_MAX {
                return invalid(format!("ttl of {ttl_ms} ms exceeds ttl_ms_max ({TTL_MS_MAX})"));
            }
        }
        Command::Data(DataCommand::Semaphore(SemaphoreCommand::Acquire { capacity, permits, .. }))
            if *capacity == 0 || *capacity > PARTIES_MAX || *permits == 0 || permits > capacity =>
        {
            return invalid(format!(
                "semaphore needs 1 <= permits ({permits}) <= capacity ({capacity}) <= parties_max ({PARTIES_MAX})"
            ));
        }
        Command::Data(DataCommand::Semaphore(SemaphoreCommand::Available { capacity, .. }))
            if *capacity == 0 || *capacity > PARTIES_MAX =>
        {
            return invalid(format!(
                "semaphore capacity {capacity} is outside 1..={PARTIES_MAX} (parties_max)"
            ));
        }
        Command::Data(DataCommand::Barrier(BarrierCommand::Wait { parties, .. }))
            if *parties == 0 || *parties > PARTIES_MAX =>
        {
            return invalid(format!(
                "barrier parties {parties} is outside 1..={PARTIES_MAX} (parties_max)"
            ));
        }
        Command::Data(DataCommand::Key(KeyCommand::Expire { ttl_ms, .. })) if *ttl_ms == 0 || *ttl_ms > TTL_MS_MAX => {
            return invalid(format!("ttl of {ttl_ms} ms is outside 1..={TTL_MS_MAX} (ttl_ms_max)"));
        }
        Command::Data(DataCommand::Queue(QueueCommand::PopAny { key, more_keys, .. })) => {
            return check_pop_keys(key, more_keys);
        }
        Command::Data(DataCommand::Key(KeyCommand::Scan {
            pattern: Some(pattern), ..
        })) if pattern.len() > SCAN_PATTERN_BYTES_MAX => {
            return invalid(format!(
                "scan pattern of {} bytes exceeds scan_pattern_bytes_max ({SCAN_PATTERN_BYTES_MAX})",
                pattern.len()
            ));
        }
        Command::Data(DataCommand::Bytes(BytesCommand::SetRange { offset, value, .. }))
            if offset.saturating_add(value.len() as u64) > VALUE_BYTES_MAX as u64 =>
        {
            let end = usize::try_from(*offset)
                .unwrap_or(usize::MAX)
                .saturating_add(value.len());
            return Err(value_too_large(end));
        }
        // An append's suffix alone past the limit is refused here; one that would grow an
        // existing value past it is refused by `bytes_append`.
        Command::Data(DataCommand::Bytes(BytesCommand::Append { value, .. }))
        | Command::Data(DataCommand::Future(FutureCommand::Complete { value, .. }))
        | Command::Data(DataCommand::Queue(QueueCommand::Push { value, .. }))
        | Command::Data(DataCommand::Map(MapCommand::Set { value, .. }))
        | Command::Data(DataCommand::Map(MapCommand::Put { value, .. }))
            if value.len() > VALUE_BYTES_MAX =>
        {
            return Err(value_too_large(value.len()));
        }
        Command::Data(DataCommand::Map(MapCommand::Get { field, .. }))
        | Command::Data(DataCommand::Map(MapCommand::Put { field, .. }))
        | Command::Data(DataCommand::Map(MapCommand::Set { field, .. }))
        | Command::Data(DataCommand::Map(MapCommand::Del { field, .. }))
        | Command::Data(DataCommand::Map(MapCommand::Incr { field, .. }))
            if field.len() > KEY_BYTES_MAX =>
        {
            return Err(error(
                ErrorCode::KeyTooLarge,
                format!(
                    "map field of {} bytes exceeds key_bytes_max ({KEY_BYTES_MAX})",
                    field.len()
                ),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// A pop of several keys: few enough, each within the key limit, all of one slot (its
/// waiter sits in every key's queue, which must all move with the slot).
fn check_pop_keys(key: &[u8], more_keys: &[Vec<u8>]) -> Result<(), Response> {
    if more_keys.len() + 1 > POP_KEYS_MAX {
        return invalid(format!(
            "a pop of {} keys exceeds pop_keys_max ({POP_KEYS_MAX})",
            more_keys.len() + 1
        ));
    }
    if let Some(long) = more_keys.iter().find(|more| more.len() > STORED_KEY_BYTES_MAX) {
        return Err(key_too_large(long.len()));
    }
    let slot = slot_of_stored_key(key);
    if more_keys.iter().any(|more| slot_of_stored_key(more) != slot) {
        return Err(error(
            ErrorCode::CrossSlot,
            "the keys of one pop must share a slot (give them one {hash tag})",
        ));
    }
    Ok(())
}
