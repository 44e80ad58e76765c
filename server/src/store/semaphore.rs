//! Semaphores: `capacity` permits, fixed by the first use. An acquire takes one or more
//! permits under a permit id with a lease; permits of a holder that stops renewing come
//! back when the lease ends. Waiters are served strictly in arrival order, so a large
//! request is not starved by a stream of small ones.

use std::collections::{BTreeMap, VecDeque};

use engram_proto::limits::PARTIES_MAX;
use engram_proto::{ErrorCode, MigratedObject, MigratedPermit, Response};

use super::validation::{check_lease_ms, check_minted, check_owner};
use super::waiting::{copied_deadline_ms, lease_deadline_ms, Revert};
use super::{error, Effects, Object, Outcome, WaiterId};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Permit {
    owner: Vec<u8>,
    permits: u32,
    lease_deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiter {
    waiter: WaiterId,
    owner: Vec<u8>,
    permits: u32,
    lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SemaphoreState {
    /// 0 until the first acquire fixes it.
    capacity: u32,
    in_use: u32,
    held: BTreeMap<u64, Permit>,
    waiters: VecDeque<Waiter>,
}

impl SemaphoreState {
    pub fn create() -> Object {
        Object::Semaphore(Box::default())
    }

    pub fn payload_bytes(&self) -> u64 {
        let held: u64 = self.held.values().map(|permit| permit.owner.len() as u64 + 48).sum();
        held + self
            .waiters
            .iter()
            .map(|waiter| waiter.owner.len() as u64 + 40)
            .sum::<u64>()
    }

    pub fn is_idle(&self) -> bool {
        self.held.is_empty() && self.waiters.is_empty()
    }

    /// Drops the permits' lease timers, for an object being deleted.
    pub fn clear_leases(&self, key: &[u8], effects: &mut Effects<'_>) {
        for (permit_id, permit) in &self.held {
            effects.clear_lease(key, *permit_id, permit.lease_deadline_ms);
        }
    }

    pub fn take_waiters(&mut self) -> Vec<WaiterId> {
        self.waiters.drain(..).map(|waiter| waiter.waiter).collect()
    }

    /// The semaphore as it travels to another shard; waiters stay behind (answered
    /// `TryAgain`). Permit ids need no counter of their own: they come from the shard's
    /// version counter, which travels with the batch.
    pub fn export(&self, now_ms: u64) -> MigratedObject {
        MigratedObject::Semaphore {
            capacity: self.capacity,
            held: self
                .held
                .iter()
                .map(|(permit_id, permit)| MigratedPermit {
                    permit_id: *permit_id,
                    owner: permit.owner.clone(),
                    permits: permit.permits,
                    lease_remaining_ms: permit.lease_deadline_ms.saturating_sub(now_ms),
                })
                .collect(),
        }
    }

    /// Rebuilds a semaphore another shard shipped (network input: every field is
    /// checked, and the permits held must fit the capacity). Lease timers are set by
    /// [`SemaphoreState::set_leases`] once the import is admitted.
    pub fn import(
        capacity: u32,
        permits: Vec<MigratedPermit>,
        now_ms: u64,
        last_version: u64,
    ) -> Result<SemaphoreState, String> {
        if capacity == 0 || capacity > PARTIES_MAX {
            return Err(format!(
                "capacity {capacity} is outside 1..={PARTIES_MAX} (parties_max)"
            ));
        }
        let mut held = BTreeMap::new();
        let mut in_use: u64 = 0;
        for permit in permits {
            check_owner(&permit.owner)?;
            check_lease_ms("lease remaining", permit.lease_remaining_ms)?;
            check_minted("permit id", permit.permit_id, last_version)?;
            if permit.permits == 0 {
                return Err(format!("permit {} holds no permits", permit.permit_id));
            }
            in_use += u64::from(permit.permits);
            let restored = Permit {
                owner: permit.owner,
                permits: permit.permits,
                lease_deadline_ms: copied_deadline_ms(now_ms, permit.lease_remaining_ms),
            };
            if held.insert(permit.permit_id, restored).is_some() {
                return Err(format!("permit {} appears twice", permit.permit_id));
            }
        }
        if in_use > u64::from(capacity) {
            return Err(format!("{in_use} permits held over a capacity of {capacity}"));
        }
        Ok(SemaphoreState {
            capacity,
            in_use: in_use as u32,
            held,
            waiters: VecDeque::new(),
        })
    }

    /// Sets the permits' lease timers, for an object just imported.
    pub fn set_leases(&self, key: &[u8], effects: &mut Effects<'_>) {
        for (permit_id, permit) in &self.held {
            effects.set_lease(key, *permit_id, permit.lease_deadline_ms);
        }
    }

    /// Returns permits whose lease has run out but whose timer has not fired yet, so no
    /// operation ever counts a permit past its lease.
    /// Ends the leases that have run out but whose timers have not fired yet; returns
    /// the permit ids whose leases it ended.
    fn end_lapsed_leases(&mut self, key: &[u8], effects: &mut Effects<'_>) -> Vec<u64> {
        let lapsed: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, permit)| permit.lease_deadline_ms <= effects.now_ms)
            .map(|(permit_id, _)| *permit_id)
            .collect();
        for permit_id in &lapsed {
            if let Some(permit) = self.held.remove(permit_id) {
                effects.clear_lease(key, *permit_id, permit.lease_deadline_ms);
                self.in_use -= permit.permits;
            }
        }
        self.grant_waiting(key, effects);
        lapsed
    }

    fn check_capacity(&mut self, capacity: u32) -> Result<(), Response> {
        if self.capacity == 0 {
            self.capacity = capacity;
        }
        if self.capacity != capacity {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("semaphore has capacity {}, not {capacity}", self.capacity),
            ));
        }
        Ok(())
    }

    fn grant(
        &mut self,
        key: &[u8],
        owner: Vec<u8>,
        permits: u32,
        lease_ms: u64,
        effects: &mut Effects<'_>,
    ) -> Response {
        let permit_id = effects.next_version();
        let lease_deadline_ms = lease_deadline_ms(effects.now_ms, lease_ms);
        effects.set_lease(key, permit_id, lease_deadline_ms);
        self.in_use += permits;
        self.held.insert(
            permit_id,
            Permit {
                owner,
                permits,
                lease_deadline_ms,
            },
        );
        Response::SemaphoreGranted {
            permit_id,
            permits,
            lease_ms,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn acquire(
        &mut self,
        key: &[u8],
        owner: &[u8],
        capacity: u32,
        permits: u32,
        lease_ms: u64,
        wait_ms: u64,
        effects: &mut Effects<'_>,
    ) -> Outcome {
        self.end_lapsed_leases(key, effects);
        if let Err(refusal) = self.check_capacity(capacity) {
            return Outcome::Ready(refusal);
        }
        let available = self.capacity - self.in_use;
        if self.waiters.is_empty() && permits <= available {
            return Outcome::Ready(self.grant(key, owner.to_vec(), permits, lease_ms, effects));
        }
        if wait_ms == 0 {
            return Outcome::Ready(error(
                ErrorCode::Timeout,
                format!("{permits} permits requested, {available} available; try-acquire does not wait"),
            ));
        }
        let waiter = effects.park(key, wait_ms);
        self.waiters.push_back(Waiter {
            waiter,
            owner: owner.to_vec(),
            permits,
            lease_ms,
        });
        Outcome::Parked(waiter)
    }

    pub fn release(&mut self, key: &[u8], permit_id: u64, effects: &mut Effects<'_>) -> Response {
        let lapsed = self.end_lapsed_leases(key, effects);
        let Some(permit) = self.held.remove(&permit_id) else {
            return not_held(permit_id, &lapsed);
        };
        effects.clear_lease(key, permit_id, permit.lease_deadline_ms);
        self.in_use -= permit.permits;
        self.grant_waiting(key, effects);
        Response::Released
    }

    pub fn renew(&mut self, key: &[u8], permit_id: u64, lease_ms: u64, effects: &mut Effects<'_>) -> Response {
        let lapsed = self.end_lapsed_leases(key, effects);
        let Some(permit) = self.held.get_mut(&permit_id) else {
            return not_held(permit_id, &lapsed);
        };
        effects.clear_lease(key, permit_id, permit.lease_deadline_ms);
        permit.lease_deadline_ms = lease_deadline_ms(effects.now_ms, lease_ms);
        effects.set_lease(key, permit_id, permit.lease_deadline_ms);
        Response::SemaphoreGranted {
            permit_id,
            permits: permit.permits,
            lease_ms,
        }
    }

    pub fn available(&mut self, key: &[u8], capacity: u32, effects: &mut Effects<'_>) -> Response {
        self.end_lapsed_leases(key, effects);
        if self.capacity != 0 && self.capacity != capacity {
            return error(
                ErrorCode::InvalidArgument,
                format!("semaphore has capacity {}, not {capacity}", self.capacity),
            );
        }
        let capacity = if self.capacity == 0 { capacity } else { self.capacity };
        Response::SemaphoreAvailable {
            available: capacity - self.in_use,
            capacity,
        }
    }

    pub fn lease_ended(&mut self, key: &[u8], permit_id: u64, effects: &mut Effects<'_>) {
        let ended = self
            .held
            .get(&permit_id)
            .is_some_and(|permit| permit.lease_deadline_ms <= effects.now_ms);
        if ended {
            if let Some(permit) = self.held.remove(&permit_id) {
                self.in_use -= permit.permits;
            }
            self.grant_waiting(key, effects);
        }
    }

    pub fn cancel(&mut self, key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        self.waiters.retain(|candidate| candidate.waiter != waiter);
        self.grant_waiting(key, effects);
    }

    pub fn time_out(&mut self, key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        if let Some(position) = self.waiters.iter().position(|candidate| candidate.waiter == waiter) {
            self.waiters.remove(position);
            effects.complete(waiter, error(ErrorCode::Timeout, "semaphore wait timed out"));
            // A large request at the head may have been what held smaller ones back.
            self.grant_waiting(key, effects);
        }
    }

    fn grant_waiting(&mut self, key: &[u8], effects: &mut Effects<'_>) {
        while let Some(next) = self.waiters.front() {
            if next.permits > self.capacity - self.in_use {
                break;
            }
            let Some(next) = self.waiters.pop_front() else { break };
            let granted = self.grant(key, next.owner, next.permits, next.lease_ms, effects);
            let revert = match &granted {
                Response::SemaphoreGranted { permit_id, .. } => Some(Revert::Permit { permit_id: *permit_id }),
                _ => None,
            };
            effects.complete_revertible(next.waiter, granted, revert);
        }
    }
}

/// Why `permit_id` names no permits held; `lapsed` are the permits whose leases the
/// operation found run out.
fn not_held(permit_id: u64, lapsed: &[u64]) -> Response {
    let message = if lapsed.contains(&permit_id) {
        format!("permit {permit_id} is not held: its lease ended")
    } else {
        format!("permit {permit_id} is not held (released, lease ended, or never granted)")
    };
    error(ErrorCode::NotHolder, message)
}
