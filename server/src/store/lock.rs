//! Locks: one holder at a time, named by an owner id, with a lease that releases the
//! lock if not renewed, a fencing token that strictly increases with every grant, and
//! FIFO waiters.
//!
//! Acquiring a lock the same owner already holds returns the current fence and
//! renews the lease (no hold count), so a retried or repeated acquire is harmless.

use std::collections::VecDeque;

use engram_proto::{ErrorCode, LockHolder, MigratedLockHolder, MigratedObject, Response};

use super::validation::{check_lease_ms, check_minted, check_owner};
use super::waiting::{copied_deadline_ms, lease_deadline_ms, Revert, STORE_CLOCK_STEP_MS};
use super::{error, Effects, Object, Outcome, WaiterId};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    owner: Vec<u8>,
    fence: u64,
    lease_ms: u64,
    lease_deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiter {
    waiter: WaiterId,
    owner: Vec<u8>,
    lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockState {
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

impl LockState {
    pub fn create() -> Object {
        Object::Lock(Box::default())
    }

    pub fn payload_bytes(&self) -> u64 {
        let holder = self.holder.as_ref().map_or(0, |holder| holder.owner.len() as u64);
        holder
            + self
                .waiters
                .iter()
                .map(|waiter| waiter.owner.len() as u64 + 32)
                .sum::<u64>()
    }

    pub fn is_idle(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty()
    }

    /// Drops the holder's lease timer, for an object being deleted.
    pub fn clear_leases(&self, key: &[u8], effects: &mut Effects<'_>) {
        if let Some(holder) = &self.holder {
            effects.clear_lease(key, holder.fence, holder.lease_deadline_ms);
        }
    }

    pub fn take_waiters(&mut self) -> Vec<WaiterId> {
        self.waiters.drain(..).map(|waiter| waiter.waiter).collect()
    }

    /// The lock as it travels to another shard. Waiters stay behind: they were
    /// answered `TryAgain` before the copy and re-queue at the new owner.
    pub fn export(&self, now_ms: u64) -> MigratedObject {
        MigratedObject::Lock {
            holder: self.holder.as_ref().map(|holder| MigratedLockHolder {
                owner: holder.owner.clone(),
                fence: holder.fence,
                lease_ms: holder.lease_ms,
                lease_remaining_ms: holder.lease_deadline_ms.saturating_sub(now_ms),
            }),
        }
    }

    /// Rebuilds a lock another shard shipped (network input: every field is checked).
    /// Its lease timer is set by [`LockState::set_leases`] once the import is admitted.
    pub fn import(holder: Option<MigratedLockHolder>, now_ms: u64, last_version: u64) -> Result<LockState, String> {
        let holder = match holder {
            None => None,
            Some(holder) => {
                check_owner(&holder.owner)?;
                check_lease_ms("lease", holder.lease_ms)?;
                check_lease_ms("lease remaining", holder.lease_remaining_ms)?;
                check_minted("fence", holder.fence, last_version)?;
                Some(Holder {
                    owner: holder.owner,
                    fence: holder.fence,
                    lease_ms: holder.lease_ms,
                    lease_deadline_ms: copied_deadline_ms(now_ms, holder.lease_remaining_ms),
                })
            }
        };
        Ok(LockState {
            holder,
            waiters: VecDeque::new(),
        })
    }

    /// Sets the holder's lease timer, for an object just imported.
    pub fn set_leases(&self, key: &[u8], effects: &mut Effects<'_>) {
        if let Some(holder) = &self.holder {
            effects.set_lease(key, holder.fence, holder.lease_deadline_ms);
        }
    }

    fn grant(&mut self, key: &[u8], owner: Vec<u8>, lease_ms: u64, effects: &mut Effects<'_>) -> Response {
        let fence = effects.next_version();
        let lease_deadline_ms = lease_deadline_ms(effects.now_ms, lease_ms);
        effects.set_lease(key, fence, lease_deadline_ms);
        self.holder = Some(Holder {
            owner,
            fence,
            lease_ms,
            lease_deadline_ms,
        });
        Response::LockGranted { fence, lease_ms }
    }

    /// Ends a lease that has run out but whose timer has not fired yet, so no operation
    /// ever sees a holder past its lease. Returns the fence of the grant it ended.
    fn end_lapsed_lease(&mut self, key: &[u8], effects: &mut Effects<'_>) -> Option<u64> {
        let holder = self.holder.as_ref()?;
        if holder.lease_deadline_ms > effects.now_ms {
            return None;
        }
        let fence = holder.fence;
        effects.clear_lease(key, fence, holder.lease_deadline_ms);
        self.lease_ended(key, fence, effects);
        Some(fence)
    }

    /// Why `owner` with `fence` is not the holder, naming what did not match; `lapsed`
    /// is the fence whose lease this operation found run out, if any.
    fn not_holder(&self, owner: &[u8], fence: u64, lapsed: Option<u64>) -> Response {
        let given = String::from_utf8_lossy(owner);
        let message = match &self.holder {
            _ if lapsed == Some(fence) => {
                let now = match &self.holder {
                    Some(holder) => format!(
                        "; owner {:?} holds it now, under fence {}",
                        String::from_utf8_lossy(&holder.owner),
                        holder.fence
                    ),
                    None => "; it is free".to_string(),
                };
                format!("fence {fence} no longer holds the lock: its lease ended{now}")
            }
            None => {
                format!("the lock is free: fence {fence} does not hold it (released, lease ended, or never granted)")
            }
            Some(holder) if holder.fence == fence => format!(
                "owner {given:?} does not hold the lock: fence {fence} is held by owner {:?}",
                String::from_utf8_lossy(&holder.owner)
            ),
            Some(holder) if holder.owner == owner => format!(
                "fence {fence} does not hold the lock: owner {given:?} holds it under fence {}",
                holder.fence
            ),
            Some(holder) => format!(
                "neither owner {given:?} nor fence {fence} holds the lock: owner {:?} holds it under fence {}",
                String::from_utf8_lossy(&holder.owner),
                holder.fence
            ),
        };
        error(ErrorCode::NotHolder, message)
    }

    pub fn acquire(
        &mut self,
        key: &[u8],
        owner: &[u8],
        lease_ms: u64,
        wait_ms: u64,
        effects: &mut Effects<'_>,
    ) -> Outcome {
        self.end_lapsed_lease(key, effects);
        match &self.holder {
            None => Outcome::Ready(self.grant(key, owner.to_vec(), lease_ms, effects)),
            Some(holder) if holder.owner == owner => {
                let fence = holder.fence;
                Outcome::Ready(self.renew(key, owner, fence, lease_ms, effects))
            }
            Some(holder) if wait_ms == 0 => Outcome::Ready(error(
                ErrorCode::Timeout,
                format!("lock is held (fence {}); try-acquire does not wait", holder.fence),
            )),
            Some(_) => {
                let waiter = effects.park(key, wait_ms);
                self.waiters.push_back(Waiter {
                    waiter,
                    owner: owner.to_vec(),
                    lease_ms,
                });
                Outcome::Parked(waiter)
            }
        }
    }

    pub fn release(&mut self, key: &[u8], owner: &[u8], fence: u64, effects: &mut Effects<'_>) -> Response {
        let lapsed = self.end_lapsed_lease(key, effects);
        match &self.holder {
            Some(holder) if holder.owner == owner && holder.fence == fence => {
                effects.clear_lease(key, fence, holder.lease_deadline_ms);
                self.holder = None;
                self.grant_next(key, effects);
                Response::Released
            }
            _ => self.not_holder(owner, fence, lapsed),
        }
    }

    pub fn renew(
        &mut self,
        key: &[u8],
        owner: &[u8],
        fence: u64,
        lease_ms: u64,
        effects: &mut Effects<'_>,
    ) -> Response {
        // A lease that ran out is over even if its timer has not fired: no revival.
        let lapsed = self.end_lapsed_lease(key, effects);
        match &mut self.holder {
            Some(holder) if holder.owner == owner && holder.fence == fence => {
                effects.clear_lease(key, fence, holder.lease_deadline_ms);
                holder.lease_ms = lease_ms;
                holder.lease_deadline_ms = lease_deadline_ms(effects.now_ms, lease_ms);
                effects.set_lease(key, fence, holder.lease_deadline_ms);
                Response::LockGranted { fence, lease_ms }
            }
            _ => self.not_holder(owner, fence, lapsed),
        }
    }

    pub fn holder(&mut self, key: &[u8], effects: &mut Effects<'_>) -> Response {
        self.end_lapsed_lease(key, effects);
        let now_ms = effects.now_ms;
        Response::LockHolder {
            holder: self.holder.as_ref().map(|holder| LockHolder {
                owner: holder.owner.clone(),
                fence: holder.fence,
                // How much longer it is held: through the deadline's clock step.
                lease_remaining_ms: holder
                    .lease_deadline_ms
                    .saturating_sub(now_ms)
                    .saturating_sub(STORE_CLOCK_STEP_MS),
            }),
        }
    }

    /// The lease with this fence ran out: the lock goes to the next waiter.
    pub fn lease_ended(&mut self, key: &[u8], fence: u64, effects: &mut Effects<'_>) {
        let ended = self
            .holder
            .as_ref()
            .is_some_and(|holder| holder.fence == fence && holder.lease_deadline_ms <= effects.now_ms);
        if ended {
            self.holder = None;
            self.grant_next(key, effects);
        }
    }

    pub fn cancel(&mut self, waiter: WaiterId) {
        self.waiters.retain(|candidate| candidate.waiter != waiter);
    }

    pub fn time_out(&mut self, _key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        if let Some(position) = self.waiters.iter().position(|candidate| candidate.waiter == waiter) {
            self.waiters.remove(position);
            effects.complete(waiter, error(ErrorCode::Timeout, "lock wait timed out"));
        }
    }

    fn grant_next(&mut self, key: &[u8], effects: &mut Effects<'_>) {
        if let Some(next) = self.waiters.pop_front() {
            let owner = next.owner.clone();
            let granted = self.grant(key, next.owner, next.lease_ms, effects);
            let revert = match &granted {
                Response::LockGranted { fence, .. } => Some(Revert::LockGrant { owner, fence: *fence }),
                _ => None,
            };
            effects.complete_revertible(next.waiter, granted, revert);
        }
    }
}
