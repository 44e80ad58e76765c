//! Double-ended queues with blocking pops. A push hands its value straight to the
//! longest-waiting pop, so a value is never both queued and awaited.

use std::collections::VecDeque;

use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{ErrorCode, MigratedObject, QueueEnd, Response};

use super::waiting::{Revert, WaitedKey};
use super::{error, Effects, Object, Origin, Outcome, Store, WaiterId};

/// Charged per item on top of its bytes.
const ITEM_OVERHEAD_BYTES: u64 = 32;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueState {
    items: VecDeque<Vec<u8>>,
    content_bytes: u64,
    waiters: VecDeque<(WaiterId, QueueEnd)>,
}

impl QueueState {
    pub fn create() -> Object {
        Object::Queue(Box::default())
    }

    pub fn payload_bytes(&self) -> u64 {
        self.content_bytes + self.items.len() as u64 * ITEM_OVERHEAD_BYTES + self.waiters.len() as u64 * 16
    }

    pub fn is_idle(&self) -> bool {
        self.items.is_empty() && self.waiters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn take_waiters(&mut self) -> Vec<WaiterId> {
        self.waiters.drain(..).map(|(waiter, _)| waiter).collect()
    }

    /// The queue as it travels to another shard; blocked pops stay behind (answered
    /// `TryAgain`), which is safe because a queue never holds items while pops wait.
    pub fn export(&self) -> MigratedObject {
        MigratedObject::Queue {
            items: self.items.iter().cloned().collect(),
        }
    }

    pub fn import(items: Vec<Vec<u8>>) -> Result<QueueState, String> {
        if let Some(item) = items.iter().find(|item| item.len() > VALUE_BYTES_MAX) {
            return Err(format!(
                "item of {} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})",
                item.len()
            ));
        }
        Ok(QueueState {
            content_bytes: items.iter().map(|item| item.len() as u64).sum(),
            items: items.into(),
            waiters: VecDeque::new(),
        })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8], end: QueueEnd, effects: &mut Effects<'_>) -> Response {
        while let Some((waiter, waiter_end)) = self.waiters.pop_front() {
            // A pop of several keys answered through another key no longer waits here.
            let Some(waited) = effects.waited_key(waiter, key) else {
                continue;
            };
            let version = effects.next_version();
            let value = value.to_vec();
            let response = match waited {
                WaitedKey::Only => Response::Value { value, version },
                WaitedKey::Among(key_index) => Response::Popped {
                    key_index,
                    value,
                    version,
                },
            };
            // Undelivered, the value goes back where that pop would have found it.
            let revert = Some(Revert::QueueValue { end: waiter_end });
            effects.complete_through(waiter, Some(key), response, revert);
            return Response::QueueLength {
                length: self.items.len() as u64,
            };
        }
        if let Err(refusal) = effects.admit(value.len() as u64 + ITEM_OVERHEAD_BYTES) {
            return refusal;
        }
        self.content_bytes += value.len() as u64;
        match end {
            QueueEnd::Front => self.items.push_front(value.to_vec()),
            QueueEnd::Back => self.items.push_back(value.to_vec()),
        }
        Response::QueueLength {
            length: self.items.len() as u64,
        }
    }

    pub fn pop(&mut self, key: &[u8], end: QueueEnd, timeout_ms: u64, effects: &mut Effects<'_>) -> Outcome {
        let item = match end {
            QueueEnd::Front => self.items.pop_front(),
            QueueEnd::Back => self.items.pop_back(),
        };
        if let Some(value) = item {
            self.content_bytes -= value.len() as u64;
            return Outcome::Ready(Response::Value {
                value,
                version: effects.next_version(),
            });
        }
        if timeout_ms == 0 {
            return Outcome::Ready(Response::Missing);
        }
        let waiter = effects.park(key, timeout_ms);
        self.wait(waiter, end);
        Outcome::Parked(waiter)
    }

    /// Lines up a parked pop (of this key or of several) for the next push.
    pub fn wait(&mut self, waiter: WaiterId, end: QueueEnd) {
        self.waiters.push_back((waiter, end));
    }

    /// Puts back a value whose pop could not be delivered, where that pop took it from
    /// (or hands it to the next waiting pop).
    pub fn give_back(&mut self, key: &[u8], value: &[u8], end: QueueEnd, effects: &mut Effects<'_>) {
        let _ = self.push(key, value, end, effects);
    }

    pub fn cancel(&mut self, waiter: WaiterId) {
        self.waiters.retain(|(candidate, _)| *candidate != waiter);
    }

    pub fn time_out(&mut self, _key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        if let Some(position) = self.waiters.iter().position(|(candidate, _)| *candidate == waiter) {
            self.waiters.remove(position);
            effects.complete(
                waiter,
                error(ErrorCode::Timeout, "queue stayed empty until the timeout"),
            );
        }
    }
}

impl Store {
    /// Pops from the first of `keys` holding an item, or parks one request waiting in
    /// every key's queue (created as needed) until a push to any of them, or
    /// `timeout_ms`. The keys share a slot (checked with the request's arguments).
    pub(super) fn pop_any(
        &mut self,
        keys: &[&[u8]],
        end: QueueEnd,
        timeout_ms: u64,
        now_ms: u64,
        origin: Option<Origin>,
    ) -> Outcome {
        for (key_index, key) in keys.iter().enumerate() {
            let popped = self.on::<QueueState>(key, now_ms, origin, false, |queue, effects| {
                queue.pop(key, end, 0, effects)
            });
            match popped {
                Outcome::Ready(Response::Missing) => {}
                Outcome::Ready(Response::Value { value, version }) => {
                    return Outcome::Ready(Response::Popped {
                        key_index: key_index as u32,
                        value,
                        version,
                    })
                }
                // A key of another type, or a refusal.
                other => return other,
            }
        }
        if timeout_ms == 0 {
            return Outcome::Ready(Response::Missing);
        }
        let (first, more) = (keys[0], &keys[1..]);
        let parked = self.on::<QueueState>(first, now_ms, origin, true, |queue, effects| {
            let waiter = effects.park_on_many(first, more, timeout_ms);
            queue.wait(waiter, end);
            Outcome::Parked(waiter)
        });
        let Outcome::Parked(waiter) = parked else {
            return parked;
        };
        for key in more {
            let joined = self.on::<QueueState>(key, now_ms, None, true, |queue, _| {
                queue.wait(waiter, end);
                Outcome::Parked(waiter)
            });
            if let Outcome::Ready(refusal) = joined {
                // No room for another queue: the pop does not wait at all.
                self.cancel(waiter, now_ms);
                return Outcome::Ready(refusal);
            }
        }
        Outcome::Parked(waiter)
    }

    /// Takes ended multi-key waits out of every queue they waited in, so no queue keeps
    /// a request that no longer waits (nor stays alive for one).
    pub(super) fn withdraw_ended_waits(&mut self, now_ms: u64) {
        loop {
            let ended = self.waiting.take_ended_multi_waits();
            if ended.is_empty() {
                return;
            }
            for (waiter, keys) in ended {
                for key in keys {
                    self.with_existing(&key, now_ms, |object, _| {
                        if let Object::Queue(queue) = object {
                            queue.cancel(waiter);
                        }
                    });
                }
            }
        }
    }
}
