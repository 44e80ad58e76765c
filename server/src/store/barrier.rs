//! Cyclic barriers: `parties` callers meet; each learns the generation and its arrival
//! index. The last arrival releases the generation at once. If any waiter's timeout
//! fires first, the generation is broken: that waiter gets `Timeout`, every other
//! waiter of the generation `BarrierBroken`, and the next arrival starts a new one.

use engram_proto::limits::PARTIES_MAX;
use engram_proto::{ErrorCode, MigratedObject, Response};

use super::{error, Effects, Object, Outcome, WaiterId};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BarrierState {
    generation: u64,
    /// Parties of the current generation, fixed by its first arrival.
    parties: u32,
    arrived: Vec<WaiterId>,
}

impl BarrierState {
    pub fn create() -> Object {
        Object::Barrier(Box::default())
    }

    pub fn take_waiters(&mut self) -> Vec<WaiterId> {
        std::mem::take(&mut self.arrived)
    }

    /// The barrier as it travels to another shard. Arrivals are parked requests,
    /// answered `TryAgain` before the copy; they arrive again at the new owner, into the
    /// same generation, which no arrival completed or broke.
    pub fn export(&self) -> MigratedObject {
        MigratedObject::Barrier {
            generation: self.generation,
            parties: self.parties,
        }
    }

    pub fn import(generation: u64, parties: u32) -> Result<BarrierState, String> {
        if parties > PARTIES_MAX {
            return Err(format!("parties {parties} exceeds parties_max ({PARTIES_MAX})"));
        }
        Ok(BarrierState {
            generation,
            parties,
            arrived: Vec::new(),
        })
    }

    pub fn wait(&mut self, key: &[u8], parties: u32, timeout_ms: u64, effects: &mut Effects<'_>) -> Outcome {
        if self.arrived.is_empty() {
            self.parties = parties;
        } else if self.parties != parties {
            return Outcome::Ready(error(
                ErrorCode::InvalidArgument,
                format!(
                    "barrier generation {} waits for {} parties, not {parties}",
                    self.generation, self.parties
                ),
            ));
        }
        let arrival_index = self.arrived.len() as u32;
        let generation = self.generation;
        if arrival_index + 1 == self.parties {
            for (index, waiter) in std::mem::take(&mut self.arrived).into_iter().enumerate() {
                effects.complete(
                    waiter,
                    Response::BarrierPassed {
                        generation,
                        arrival_index: index as u32,
                    },
                );
            }
            self.generation += 1;
            return Outcome::Ready(Response::BarrierPassed {
                generation,
                arrival_index,
            });
        }
        if timeout_ms == 0 {
            self.break_generation(effects);
            return Outcome::Ready(error(
                ErrorCode::Timeout,
                format!("barrier generation {generation} was not full"),
            ));
        }
        let waiter = effects.park(key, timeout_ms);
        self.arrived.push(waiter);
        Outcome::Parked(waiter)
    }

    /// A party that left (its connection closed) no longer counts toward the generation.
    pub fn cancel(&mut self, waiter: WaiterId) {
        self.arrived.retain(|candidate| *candidate != waiter);
    }

    pub fn time_out(&mut self, _key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        if let Some(position) = self.arrived.iter().position(|candidate| *candidate == waiter) {
            self.arrived.remove(position);
            let generation = self.generation;
            effects.complete(
                waiter,
                error(ErrorCode::Timeout, format!("barrier generation {generation} timed out")),
            );
            self.break_generation(effects);
        }
    }

    fn break_generation(&mut self, effects: &mut Effects<'_>) {
        let generation = self.generation;
        for waiter in std::mem::take(&mut self.arrived) {
            let message = format!("barrier generation {generation} was broken by another party's timeout");
            effects.complete(waiter, error(ErrorCode::BarrierBroken, message));
        }
        self.generation += 1;
    }
}
