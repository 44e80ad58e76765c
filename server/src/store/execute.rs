//! Executing one keyed command: argument checks first, then the command goes to its
//! object family, one method per family (bytes values, counters, locks, semaphores,
//! barriers, latches, futures, maps, queues), each of which runs it on its object.

use engram_proto::limits::{
    KEY_BYTES_MAX, LEASE_MS_MAX, OWNER_BYTES_MAX, PARTIES_MAX, POP_KEYS_MAX, SCAN_PATTERN_BYTES_MAX, TTL_MS_MAX,
    VALUE_BYTES_MAX, WAIT_MS_MAX,
};
use engram_proto::{ErrorCode, Response};

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
    pub(super) fn execute(&mut self, command: &DataCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        let key = command.key();
        if key.len() > STORED_KEY_BYTES_MAX {
            return Outcome::Ready(key_too_large(key.len()));
        }
        if let Err(refusal) = validate(command) {
            return Outcome::Ready(refusal);
        }
        match command {
            DataCommand::Bytes(command) => self.execute_bytes(command, now_ms),
            DataCommand::Counter(command) => self.execute_counter(command, now_ms),
            DataCommand::Lock(command) => self.execute_lock(command, now_ms, origin),
            DataCommand::Semaphore(command) => self.execute_semaphore(command, now_ms, origin),
            DataCommand::Barrier(command) => self.execute_barrier(command, now_ms, origin),
            DataCommand::Latch(command) => self.execute_latch(command, now_ms, origin),
            DataCommand::Future(command) => self.execute_future(command, now_ms, origin),
            DataCommand::Map(command) => self.execute_map(command, now_ms, origin),
            DataCommand::Queue(command) => self.execute_queue(command, now_ms, origin),
            DataCommand::Key(command) => Outcome::Ready(self.execute_key(command, now_ms)),
        }
    }

    fn execute_key(&mut self, command: &KeyCommand, now_ms: u64) -> Response {
        match command {
            KeyCommand::Kind { key } => self.key_kind(key, now_ms),
            KeyCommand::Ttl { key } => self.key_ttl(key, now_ms),
            KeyCommand::Expire { key, ttl_ms, condition } => self.key_expire(key, *ttl_ms, *condition, now_ms),
            KeyCommand::Persist { key } => self.key_persist(key, now_ms),
            KeyCommand::Scan {
                key,
                cursor,
                count,
                pattern,
                kind,
            } => {
                let filter = ScanFilter {
                    pattern: pattern.as_deref(),
                    kind: *kind,
                };
                self.scan_keys(key, *cursor, *count, filter, now_ms)
            }
            KeyCommand::Count { key } => self.count_keys(key),
        }
    }

    fn execute_bytes(&mut self, command: &BytesCommand, now_ms: u64) -> Outcome {
        Outcome::Ready(match command {
            BytesCommand::Get { key } => self.bytes_get(key, now_ms),
            BytesCommand::Set {
                key,
                value,
                ttl_ms,
                condition,
            } => self.bytes_set(key, value, *ttl_ms, *condition, now_ms),
            BytesCommand::Del { key } => self.delete(key, now_ms),
            BytesCommand::Append { key, value } => self.bytes_append(key, value, now_ms),
            BytesCommand::GetRange { key, start, end } => self.bytes_get_range(key, *start, *end, now_ms),
            BytesCommand::SetRange { key, offset, value } => self.bytes_set_range(key, *offset, value, now_ms),
            BytesCommand::Len { key } => self.bytes_len(key, now_ms),
            BytesCommand::AddInteger { key, delta } => self.bytes_add_integer(key, *delta, now_ms),
            BytesCommand::Replace {
                key,
                value,
                ttl_ms,
                keep_ttl,
                condition,
            } => {
                let replace = Replace {
                    value: value.as_deref(),
                    ttl_ms: *ttl_ms,
                    keep_ttl: *keep_ttl,
                    condition: *condition,
                };
                self.bytes_replace(key, replace, now_ms)
            }
        })
    }

    fn execute_counter(&mut self, command: &CounterCommand, now_ms: u64) -> Outcome {
        Outcome::Ready(match command {
            CounterCommand::Get { key } => self.counter_get(key, now_ms),
            CounterCommand::Add { key, delta } => self.counter_add(key, *delta, now_ms),
            CounterCommand::Set { key, value } => self.counter_set(key, *value, now_ms),
            CounterCommand::Cas { key, expected, new } => self.counter_cas(key, *expected, *new, now_ms),
        })
    }

    fn execute_lock(&mut self, command: &LockCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            LockCommand::Acquire {
                key,
                owner,
                lease_ms,
                wait_ms,
            } => self.on::<Lock>(key, now_ms, origin, true, |lock, effects| {
                lock.acquire(key, owner, *lease_ms, *wait_ms, effects)
            }),
            LockCommand::Release { key, owner, fence } => {
                self.on::<Lock>(key, now_ms, origin, false, |lock, effects| {
                    Outcome::Ready(lock.release(key, owner, *fence, effects))
                })
            }
            LockCommand::Renew {
                key,
                owner,
                fence,
                lease_ms,
            } => self.on::<Lock>(key, now_ms, origin, false, |lock, effects| {
                Outcome::Ready(lock.renew(key, owner, *fence, *lease_ms, effects))
            }),
            LockCommand::Holder { key } => self.on::<Lock>(key, now_ms, origin, false, |lock, effects| {
                Outcome::Ready(lock.holder(key, effects))
            }),
        }
    }

    fn execute_semaphore(&mut self, command: &SemaphoreCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            SemaphoreCommand::Acquire {
                key,
                owner,
                capacity,
                permits,
                lease_ms,
                wait_ms,
            } => self.on::<Semaphore>(key, now_ms, origin, true, |semaphore, effects| {
                semaphore.acquire(key, owner, *capacity, *permits, *lease_ms, *wait_ms, effects)
            }),
            SemaphoreCommand::Release { key, permit_id } => {
                self.on::<Semaphore>(key, now_ms, origin, false, |semaphore, effects| {
                    Outcome::Ready(semaphore.release(key, *permit_id, effects))
                })
            }
            SemaphoreCommand::Renew {
                key,
                permit_id,
                lease_ms,
            } => self.on::<Semaphore>(key, now_ms, origin, false, |semaphore, effects| {
                Outcome::Ready(semaphore.renew(key, *permit_id, *lease_ms, effects))
            }),
            SemaphoreCommand::Available { key, capacity } => {
                self.on::<Semaphore>(key, now_ms, origin, false, |semaphore, effects| {
                    Outcome::Ready(semaphore.available(key, *capacity, effects))
                })
            }
        }
    }

    fn execute_barrier(&mut self, command: &BarrierCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            BarrierCommand::Wait {
                key,
                parties,
                timeout_ms,
            } => self.on::<Barrier>(key, now_ms, origin, true, |barrier, effects| {
                barrier.wait(key, *parties, *timeout_ms, effects)
            }),
        }
    }

    fn execute_latch(&mut self, command: &LatchCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            LatchCommand::TrySetCount { key, count } => self.on::<Latch>(key, now_ms, origin, true, |latch, _| {
                Outcome::Ready(latch.try_set_count(*count))
            }),
            LatchCommand::CountDown { key } => self.on::<Latch>(key, now_ms, origin, false, |latch, effects| {
                Outcome::Ready(latch.count_down(effects))
            }),
            LatchCommand::Count { key } => self.on::<Latch>(key, now_ms, origin, false, |latch, _| {
                Outcome::Ready(Response::LatchCount { count: latch.count() })
            }),
            LatchCommand::Wait { key, timeout_ms } => self.on::<Latch>(key, now_ms, origin, false, |latch, effects| {
                latch.wait(key, *timeout_ms, effects)
            }),
        }
    }

    fn execute_future(&mut self, command: &FutureCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            FutureCommand::Complete { key, value } => {
                self.on::<Future>(key, now_ms, origin, true, |future, effects| {
                    Outcome::Ready(future.complete(value, effects))
                })
            }
            // Only a get that may wait needs the future to exist.
            FutureCommand::Get { key, timeout_ms } => {
                self.on::<Future>(key, now_ms, origin, *timeout_ms > 0, |future, effects| {
                    future.get(key, *timeout_ms, effects)
                })
            }
        }
    }

    fn execute_map(&mut self, command: &MapCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            MapCommand::Get { key, field } => {
                self.on::<Map>(key, now_ms, origin, false, |map, _| Outcome::Ready(map.get(field)))
            }
            MapCommand::Set { key, field, value } => self.on::<Map>(key, now_ms, origin, true, |map, effects| {
                Outcome::Ready(map.set(field, value, effects))
            }),
            MapCommand::Del { key, field } => {
                self.on::<Map>(key, now_ms, origin, false, |map, _| Outcome::Ready(map.delete(field)))
            }
            MapCommand::GetAll { key } => {
                self.on::<Map>(key, now_ms, origin, false, |map, _| Outcome::Ready(map.get_all()))
            }
            MapCommand::Incr { key, field, delta } => self.on::<Map>(key, now_ms, origin, true, |map, effects| {
                Outcome::Ready(map.increment(field, *delta, effects))
            }),
            MapCommand::Put { key, field, value } => self.on::<Map>(key, now_ms, origin, true, |map, effects| {
                let created = map.get(field) == Response::Missing;
                Outcome::Ready(match map.set(field, value, effects) {
                    Response::Written { .. } => Response::FieldStored { created },
                    refusal => refusal,
                })
            }),
        }
    }

    fn execute_queue(&mut self, command: &QueueCommand, now_ms: u64, origin: Option<Origin>) -> Outcome {
        match command {
            QueueCommand::Push { key, value, end } => self.on::<Queue>(key, now_ms, origin, true, |queue, effects| {
                Outcome::Ready(queue.push(key, value, *end, effects))
            }),
            // Only a pop that may wait needs the queue to exist.
            QueueCommand::Pop { key, end, timeout_ms } => {
                self.on::<Queue>(key, now_ms, origin, *timeout_ms > 0, |queue, effects| {
                    queue.pop(key, *end, *timeout_ms, effects)
                })
            }
            QueueCommand::PopAny {
                key,
                more_keys,
                end,
                timeout_ms,
            } => {
                let keys: Vec<&[u8]> = std::iter::once(&key[..])
                    .chain(more_keys.iter().map(Vec::as_slice))
                    .collect();
                self.pop_any(&keys, *end, *timeout_ms, now_ms, origin)
            }
            QueueCommand::Len { key } => self.on::<Queue>(key, now_ms, origin, false, |queue, _| {
                Outcome::Ready(Response::QueueLength {
                    length: queue.len() as u64,
                })
            }),
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

/// Argument checks shared by every object, before anything is touched.
fn validate(command: &DataCommand) -> Result<(), Response> {
    check_waits_and_leases(command)?;
    check_sizes(command)
}

fn invalid(message: String) -> Result<(), Response> {
    Err(error(ErrorCode::InvalidArgument, message))
}

/// A wait, a lease and an owner id within the protocol's limits.
fn check_waits_and_leases(command: &DataCommand) -> Result<(), Response> {
    let wait_ms = command.wait_ms();
    if wait_ms > WAIT_MS_MAX {
        return invalid(format!("wait of {wait_ms} ms exceeds wait_ms_max ({WAIT_MS_MAX})"));
    }
    match command {
        DataCommand::Lock(LockCommand::Acquire { owner, lease_ms, .. })
        | DataCommand::Lock(LockCommand::Renew { owner, lease_ms, .. })
        | DataCommand::Semaphore(SemaphoreCommand::Acquire { owner, lease_ms, .. }) => {
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
        DataCommand::Semaphore(SemaphoreCommand::Renew { lease_ms, .. })
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
fn check_sizes(command: &DataCommand) -> Result<(), Response> {
    match command {
        DataCommand::Bytes(BytesCommand::Replace {
            value: Some(value),
            ttl_ms,
            ..
        })
        | DataCommand::Bytes(BytesCommand::Set { value, ttl_ms, .. }) => {
            if value.len() > VALUE_BYTES_MAX {
                return Err(value_too_large(value.len()));
            }
            if *ttl_ms > TTL_MS_MAX {
                return invalid(format!("ttl of {ttl_ms} ms exceeds ttl_ms_max ({TTL_MS_MAX})"));
            }
        }
        DataCommand::Semaphore(SemaphoreCommand::Acquire { capacity, permits, .. })
            if *capacity == 0 || *capacity > PARTIES_MAX || *permits == 0 || permits > capacity =>
        {
            return invalid(format!(
                "semaphore needs 1 <= permits ({permits}) <= capacity ({capacity}) <= parties_max ({PARTIES_MAX})"
            ));
        }
        DataCommand::Semaphore(SemaphoreCommand::Available { capacity, .. })
            if *capacity == 0 || *capacity > PARTIES_MAX =>
        {
            return invalid(format!(
                "semaphore capacity {capacity} is outside 1..={PARTIES_MAX} (parties_max)"
            ));
        }
        DataCommand::Barrier(BarrierCommand::Wait { parties, .. }) if *parties == 0 || *parties > PARTIES_MAX => {
            return invalid(format!(
                "barrier parties {parties} is outside 1..={PARTIES_MAX} (parties_max)"
            ));
        }
        DataCommand::Key(KeyCommand::Expire { ttl_ms, .. }) if *ttl_ms == 0 || *ttl_ms > TTL_MS_MAX => {
            return invalid(format!("ttl of {ttl_ms} ms is outside 1..={TTL_MS_MAX} (ttl_ms_max)"));
        }
        DataCommand::Queue(QueueCommand::PopAny { key, more_keys, .. }) => {
            return check_pop_keys(key, more_keys);
        }
        DataCommand::Key(KeyCommand::Scan {
            pattern: Some(pattern), ..
        }) if pattern.len() > SCAN_PATTERN_BYTES_MAX => {
            return invalid(format!(
                "scan pattern of {} bytes exceeds scan_pattern_bytes_max ({SCAN_PATTERN_BYTES_MAX})",
                pattern.len()
            ));
        }
        DataCommand::Bytes(BytesCommand::SetRange { offset, value, .. })
            if offset.saturating_add(value.len() as u64) > VALUE_BYTES_MAX as u64 =>
        {
            let end = usize::try_from(*offset)
                .unwrap_or(usize::MAX)
                .saturating_add(value.len());
            return Err(value_too_large(end));
        }
        // An append's suffix alone past the limit is refused here; one that would grow an
        // existing value past it is refused by `bytes_append`.
        DataCommand::Bytes(BytesCommand::Append { value, .. })
        | DataCommand::Future(FutureCommand::Complete { value, .. })
        | DataCommand::Queue(QueueCommand::Push { value, .. })
        | DataCommand::Map(MapCommand::Set { value, .. })
        | DataCommand::Map(MapCommand::Put { value, .. })
            if value.len() > VALUE_BYTES_MAX =>
        {
            return Err(value_too_large(value.len()));
        }
        DataCommand::Map(MapCommand::Get { field, .. })
        | DataCommand::Map(MapCommand::Put { field, .. })
        | DataCommand::Map(MapCommand::Set { field, .. })
        | DataCommand::Map(MapCommand::Del { field, .. })
        | DataCommand::Map(MapCommand::Incr { field, .. })
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
