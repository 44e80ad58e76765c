//! Parked requests and timers: the part of the store that makes blocking operations
//! wait without polling. A parked request has a deadline in one ordered timer index
//! (with lease ends), and its answer is queued as a completion when the object's
//! condition holds or the deadline passes, whichever comes first.

use std::collections::BTreeSet;

use engram_proto::{QueueEnd, Response};

use super::keys::slot_of_stored_key;
use super::operations::{OperationLog, Origin, Record};
use super::{out_of_memory, WaiterId};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// A parked request's deadline.
    Waiter(WaiterId),
    /// The end of a lock's lease (`lease_id` = fence) or a semaphore permit's
    /// (`lease_id` = permit id).
    Lease { key: Box<[u8]>, lease_id: u64 },
}

/// How to take back what a completed request was given, when its answer cannot be
/// delivered (its connection closed): the popped value goes back, the granted lock or
/// permit is released. Without this a dead waiter would swallow a queue item or sit on
/// a lock for a whole lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revert {
    QueueValue { end: QueueEnd },
    LockGrant { owner: Vec<u8>, fence: u64 },
    Permit { permit_id: u64 },
}

/// The answer of a parked request, ready to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub waiter: WaiterId,
    pub response: Response,
    pub(super) key: Box<[u8]>,
    pub(super) origin: Option<Origin>,
    pub(super) revert: Option<Revert>,
}

impl Completion {
    /// The key of the object the request waited on.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The recorded operation it answers.
    pub fn origin(&self) -> Option<Origin> {
        self.origin
    }
}

struct Parked {
    key: Box<[u8]>,
    /// A pop of several keys waits in each one's queue; the first is `key`.
    more_keys: Vec<Box<[u8]>>,
    deadline_ms: u64,
    /// A recorded mutation's, whose record turns from parked to done with the answer,
    /// so a retry after a lost answer still gets it.
    origin: Option<Origin>,
}

/// Which of the keys a parked request waits on a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitedKey {
    /// The request waits on that key alone.
    Only,
    /// The request waits on several keys; this one is at that index.
    Among(u32),
}

#[derive(Default)]
pub struct Waiting {
    last_waiter: WaiterId,
    parked: foldhash::HashMap<WaiterId, Parked>,
    timers: BTreeSet<(u64, Timer)>,
    completions: Vec<Completion>,
    /// Requests that waited on several keys and no longer do, with those keys: the
    /// store takes them out of every key's queue (the one that answered them, or timed
    /// them out, took them out of its own only).
    ended_multi_waits: Vec<(WaiterId, Vec<Box<[u8]>>)>,
}

impl Waiting {
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    pub fn key_of(&self, waiter: WaiterId) -> Option<&[u8]> {
        self.parked.get(&waiter).map(|parked| &*parked.key)
    }

    /// Every parked request whose key `in_key` accepts, oldest first.
    pub fn parked_on(&self, in_key: impl Fn(&[u8]) -> bool) -> Vec<(WaiterId, Box<[u8]>)> {
        let mut found: Vec<(WaiterId, Box<[u8]>)> = self
            .parked
            .iter()
            .filter(|(_, parked)| in_key(&parked.key))
            .map(|(waiter, parked)| (*waiter, parked.key.clone()))
            .collect();
        found.sort_unstable_by_key(|(waiter, _)| *waiter);
        found
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.first().map(|(deadline, _)| *deadline)
    }

    pub fn pop_due_timer(&mut self, now_ms: u64) -> Option<Timer> {
        let (deadline, _) = self.timers.first()?;
        if *deadline > now_ms {
            return None;
        }
        self.timers.pop_first().map(|(_, timer)| timer)
    }

    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Forgets a parked request without answering it; returns its operation origin.
    pub fn cancel(&mut self, waiter: WaiterId) -> Option<Option<Origin>> {
        let parked = self.remove(waiter)?;
        Some(parked.origin)
    }

    /// Multi-key waits that ended since the last call, with their keys.
    pub fn take_ended_multi_waits(&mut self) -> Vec<(WaiterId, Vec<Box<[u8]>>)> {
        std::mem::take(&mut self.ended_multi_waits)
    }

    /// Takes a parked request out, with its timer; a multi-key wait is noted as ended.
    fn remove(&mut self, waiter: WaiterId) -> Option<Parked> {
        let mut parked = self.parked.remove(&waiter)?;
        self.timers.remove(&(parked.deadline_ms, Timer::Waiter(waiter)));
        if !parked.more_keys.is_empty() {
            let mut keys = std::mem::take(&mut parked.more_keys);
            keys.push(parked.key.clone());
            self.ended_multi_waits.push((waiter, keys));
        }
        Some(parked)
    }
}

/// The store's clock counts whole milliseconds, rounded down: when it reads `now_ms`
/// up to a millisecond more may really have passed, and another process's clock is
/// rounded at another phase. A lease deadline adds that step, so a lease never ends
/// before the holder's own reckoning (from when it sent the request); a copied deadline
/// (a lease or an expiry installed on another shard) adds it too, so a copy never ends
/// before its original.
pub const STORE_CLOCK_STEP_MS: u64 = 1;

/// When a lease of `lease_ms` taken at `now_ms` ends; see [`STORE_CLOCK_STEP_MS`].
pub fn lease_deadline_ms(now_ms: u64, lease_ms: u64) -> u64 {
    now_ms.saturating_add(lease_ms).saturating_add(STORE_CLOCK_STEP_MS)
}

/// When a copied lease or expiry with `remaining_ms` left, installed at `now_ms`, ends;
/// see [`STORE_CLOCK_STEP_MS`].
pub fn copied_deadline_ms(now_ms: u64, remaining_ms: u64) -> u64 {
    now_ms.saturating_add(remaining_ms).saturating_add(STORE_CLOCK_STEP_MS)
}

/// What an object operation may do beyond its own state: read the clock, draw a
/// version (fences), park the current request, answer parked ones, set lease timers.
pub struct Effects<'a> {
    pub now_ms: u64,
    origin: Option<Origin>,
    waiting: &'a mut Waiting,
    operations: &'a mut OperationLog,
    last_version: &'a mut u64,
    memory_used_bytes: u64,
    memory_limit_bytes: u64,
}

impl<'a> Effects<'a> {
    pub fn new(
        now_ms: u64,
        origin: Option<Origin>,
        waiting: &'a mut Waiting,
        operations: &'a mut OperationLog,
        last_version: &'a mut u64,
    ) -> Effects<'a> {
        Effects {
            now_ms,
            origin,
            waiting,
            operations,
            last_version,
            memory_used_bytes: 0,
            memory_limit_bytes: u64::MAX,
        }
    }

    pub fn with_memory(mut self, memory_used_bytes: u64, memory_limit_bytes: u64) -> Effects<'a> {
        self.memory_used_bytes = memory_used_bytes;
        self.memory_limit_bytes = memory_limit_bytes;
        self
    }

    /// The same effects without a memory limit, for giving back what was admitted once.
    pub fn without_memory_limit(&mut self) -> Effects<'_> {
        Effects {
            now_ms: self.now_ms,
            origin: self.origin,
            waiting: self.waiting,
            operations: self.operations,
            last_version: self.last_version,
            memory_used_bytes: self.memory_used_bytes,
            memory_limit_bytes: u64::MAX,
        }
    }

    /// The next value of the shard-wide version counter. Fences are drawn from it, so
    /// they strictly increase per lock even when the lock's key is deleted and reused.
    pub fn next_version(&mut self) -> u64 {
        *self.last_version += 1;
        *self.last_version
    }

    /// Refuses an object's growth by `bytes` past the shard's memory limit.
    pub fn admit(&mut self, bytes: u64) -> Result<(), Response> {
        let after = self.memory_used_bytes.saturating_add(bytes);
        if after > self.memory_limit_bytes {
            return Err(out_of_memory(bytes, self.memory_used_bytes, self.memory_limit_bytes));
        }
        self.memory_used_bytes = after;
        Ok(())
    }

    /// Parks the current request until `timeout_ms` from now.
    pub fn park(&mut self, key: &[u8], timeout_ms: u64) -> WaiterId {
        self.park_on_many(key, &[], timeout_ms)
    }

    /// Parks the current request, waiting on `key` and `more_keys`, until `timeout_ms`
    /// from now.
    pub fn park_on_many(&mut self, key: &[u8], more_keys: &[&[u8]], timeout_ms: u64) -> WaiterId {
        self.waiting.last_waiter += 1;
        let waiter = self.waiting.last_waiter;
        let deadline_ms = self.now_ms.saturating_add(timeout_ms);
        self.waiting.parked.insert(
            waiter,
            Parked {
                key: key.into(),
                more_keys: more_keys.iter().map(|&key| key.into()).collect(),
                deadline_ms,
                origin: self.origin,
            },
        );
        self.waiting.timers.insert((deadline_ms, Timer::Waiter(waiter)));
        waiter
    }

    /// Which of a parked request's keys `key` is; `None` when it no longer waits (a
    /// multi-key wait answered through another of its keys).
    pub fn waited_key(&self, waiter: WaiterId, key: &[u8]) -> Option<WaitedKey> {
        let parked = self.waiting.parked.get(&waiter)?;
        if parked.more_keys.is_empty() {
            return Some(WaitedKey::Only);
        }
        let index = std::iter::once(&parked.key)
            .chain(&parked.more_keys)
            .position(|waited| **waited == *key)?;
        Some(WaitedKey::Among(index as u32))
    }

    /// Answers a parked request (once: a second answer for the same waiter is dropped).
    pub fn complete(&mut self, waiter: WaiterId, response: Response) {
        self.complete_revertible(waiter, response, None);
    }

    /// Answers a parked request with something that must be given back if the answer
    /// cannot be delivered.
    pub fn complete_revertible(&mut self, waiter: WaiterId, response: Response, revert: Option<Revert>) {
        self.complete_through(waiter, None, response, revert);
    }

    /// Answers a parked request through `through`, one of the keys it waits on (its
    /// first when `None`): the key whose change the answer reports, and where a revert
    /// gives back.
    pub fn complete_through(
        &mut self,
        waiter: WaiterId,
        through: Option<&[u8]>,
        response: Response,
        revert: Option<Revert>,
    ) {
        let Some(parked) = self.waiting.remove(waiter) else {
            return;
        };
        if let Some(Origin { client_id, op_id }) = parked.origin {
            let slot = slot_of_stored_key(&parked.key);
            self.operations
                .record(client_id, op_id, slot, Record::Done(response.clone()));
        }
        self.waiting.completions.push(Completion {
            waiter,
            response,
            key: through.map_or(parked.key, Box::from),
            origin: parked.origin,
            revert,
        });
    }

    /// Answers a parked request with a retryable refusal (its slot is moving) and
    /// forgets its operation record, as a cancel does: the client re-sends the same
    /// operation id to the new owner, where it must apply afresh, not replay this.
    /// The caller has taken the waiter out of its object, so it was granted nothing.
    pub fn bounce(&mut self, waiter: WaiterId, response: Response) {
        let Some(parked) = self.waiting.remove(waiter) else {
            return;
        };
        if let Some(Origin { client_id, op_id }) = parked.origin {
            self.operations.forget(client_id, op_id, Some(waiter));
        }
        self.waiting.completions.push(Completion {
            waiter,
            response,
            key: parked.key,
            origin: parked.origin,
            revert: None,
        });
    }

    pub fn set_lease(&mut self, key: &[u8], lease_id: u64, deadline_ms: u64) {
        self.waiting.timers.insert((
            deadline_ms,
            Timer::Lease {
                key: key.into(),
                lease_id,
            },
        ));
    }

    pub fn clear_lease(&mut self, key: &[u8], lease_id: u64, deadline_ms: u64) {
        self.waiting.timers.remove(&(
            deadline_ms,
            Timer::Lease {
                key: key.into(),
                lease_id,
            },
        ));
    }
}
