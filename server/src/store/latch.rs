//! Count-down latches: set a count once (only while it is zero), count down, and wait
//! until it reaches zero.

use engram_proto::{ErrorCode, MigratedObject, Response};

use super::{error, Effects, Object, Outcome, WaiterId};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LatchState {
    count: u64,
    waiters: Vec<WaiterId>,
}

impl LatchState {
    pub fn create() -> Object {
        Object::Latch(Box::default())
    }

    pub fn is_idle(&self) -> bool {
        self.count == 0 && self.waiters.is_empty()
    }

    pub fn take_waiters(&mut self) -> Vec<WaiterId> {
        std::mem::take(&mut self.waiters)
    }

    /// The latch as it travels to another shard; waiters stay behind (answered `TryAgain`).
    pub fn export(&self) -> MigratedObject {
        MigratedObject::Latch { count: self.count }
    }

    pub fn import(count: u64) -> LatchState {
        LatchState {
            count,
            waiters: Vec::new(),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn try_set_count(&mut self, count: u64) -> Response {
        if self.count != 0 {
            return Response::LatchSet {
                set: false,
                count: self.count,
            };
        }
        self.count = count;
        Response::LatchSet { set: true, count }
    }

    pub fn count_down(&mut self, effects: &mut Effects<'_>) -> Response {
        if self.count > 0 {
            self.count -= 1;
            if self.count == 0 {
                for waiter in std::mem::take(&mut self.waiters) {
                    effects.complete(waiter, Response::LatchOpen);
                }
            }
        }
        Response::LatchCount { count: self.count }
    }

    pub fn wait(&mut self, key: &[u8], timeout_ms: u64, effects: &mut Effects<'_>) -> Outcome {
        if self.count == 0 {
            return Outcome::Ready(Response::LatchOpen);
        }
        if timeout_ms == 0 {
            return Outcome::Ready(error(ErrorCode::Timeout, format!("latch is at {}", self.count)));
        }
        let waiter = effects.park(key, timeout_ms);
        self.waiters.push(waiter);
        Outcome::Parked(waiter)
    }

    pub fn cancel(&mut self, waiter: WaiterId) {
        self.waiters.retain(|candidate| *candidate != waiter);
    }

    pub fn time_out(&mut self, _key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        if let Some(position) = self.waiters.iter().position(|candidate| *candidate == waiter) {
            self.waiters.remove(position);
            effects.complete(
                waiter,
                error(ErrorCode::Timeout, format!("latch wait timed out at {}", self.count)),
            );
        }
    }
}
