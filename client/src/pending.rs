//! The table of calls waiting for a response on one connection, keyed by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engram_proto::Response;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{oneshot, Notify};

use crate::error::ConnectionError;

pub type Reply = Result<Response, ConnectionError>;

/// Shared between the callers (who register) and the connection's reader (who answers).
/// Entries are removed by whichever comes first: the answer, the caller giving up (its
/// [`Registration`] drops), or the connection failing.
#[derive(Default)]
pub struct PendingTable {
    state: Mutex<State>,
    /// Mirrors `State::failure.is_some()`, so the per-call usability check takes no lock.
    failed: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Keyed by request ids the client itself picks, so a fast hash is safe here.
    waiting: HashMap<u64, Waiter, foldhash::fast::RandomState>,
    /// Set once the connection failed; later registrations fail with it at once.
    failure: Option<ConnectionError>,
}

/// Who waits for one request id: a single call, or one entry of a batch.
enum Waiter {
    Single(oneshot::Sender<Reply>),
    Batch { batch: Arc<BatchSlots>, index: usize },
}

impl Waiter {
    fn deliver(self, reply: Reply) -> bool {
        match self {
            Waiter::Single(sender) => sender.send(reply).is_ok(),
            Waiter::Batch { batch, index } => {
                batch.deliver(index, reply);
                true
            }
        }
    }
}

/// The answers of one batch: filled by the reader (or `fail_all`), one wake-up for the
/// batch's caller once the last one lands, instead of a oneshot per request.
struct BatchSlots {
    replies: Mutex<Vec<Option<Reply>>>,
    remaining: AtomicUsize,
    done: Notify,
}

impl BatchSlots {
    fn deliver(&self, index: usize, reply: Reply) {
        // Each index is delivered at most once: its table entry is removed first.
        self.replies.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[index] = Some(reply);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit if the caller is not parked yet, so the wake-up is not lost.
            self.done.notify_one();
        }
    }

    fn is_complete(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }
}

/// A caller's claim on a run of consecutive request ids sent as one batch; dropping it
/// forgets the entries still unanswered, like [`Registration`].
pub struct BatchRegistration {
    table: Arc<PendingTable>,
    first_request_id: u64,
    slots: Arc<BatchSlots>,
}

impl BatchRegistration {
    /// Waits until every request of the batch is answered (or failed), first polling
    /// for up to `spin` before parking. Cancel-safe.
    pub async fn complete(&mut self, spin: Duration) {
        if !spin.is_zero() {
            let started = Instant::now();
            while !self.slots.is_complete() && started.elapsed() < spin {
                tokio::task::yield_now().await;
            }
        }
        while !self.slots.is_complete() {
            self.slots.done.notified().await;
        }
    }

    /// Takes the replies delivered so far, in the order of the request ids; `None` for
    /// one not answered yet (dropping the registration then forgets it).
    pub fn answered(&mut self) -> Vec<Option<Reply>> {
        let mut replies = self
            .slots
            .replies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = replies.len();
        std::mem::replace(&mut *replies, (0..count).map(|_| None).collect())
    }
}

impl Drop for BatchRegistration {
    fn drop(&mut self) {
        if !self.slots.is_complete() {
            let count = self
                .slots
                .replies
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .len() as u64;
            let mut state = self.table.lock();
            for request_id in self.first_request_id..self.first_request_id + count {
                state.waiting.remove(&request_id);
            }
        }
    }
}

/// A caller's claim on one request id; dropping it forgets the entry, so an answer that
/// arrives after the caller left is discarded instead of kept forever.
pub struct Registration {
    table: Arc<PendingTable>,
    request_id: u64,
    receiver: oneshot::Receiver<Reply>,
    /// Set once the receiver yielded: whoever sent (the reader, or `fail_all`) removed
    /// the entry already, so dropping need not lock the table again.
    settled: bool,
}

impl Registration {
    /// Waits for the answer, first polling for it for up to `spin` (yielding to the
    /// runtime between polls, so the connection's reader keeps running) before parking.
    /// Cancel-safe: dropping this future (or the registration) leaves the table
    /// consistent.
    pub async fn reply(&mut self, spin: Duration) -> Reply {
        if !spin.is_zero() {
            let started = Instant::now();
            loop {
                match self.receiver.try_recv() {
                    Ok(reply) => {
                        self.settled = true;
                        return reply;
                    }
                    Err(TryRecvError::Closed) => {
                        self.settled = true;
                        return Err(ConnectionError::Closed);
                    }
                    Err(TryRecvError::Empty) if started.elapsed() >= spin => break,
                    Err(TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        let reply = match (&mut self.receiver).await {
            Ok(reply) => reply,
            // The sender only vanishes unanswered if the connection's reader is gone.
            Err(_) => Err(ConnectionError::Closed),
        };
        self.settled = true;
        reply
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.settled {
            self.table.lock().waiting.remove(&self.request_id);
        }
    }
}

impl PendingTable {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (each
        // operation is one insert or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(self: &Arc<Self>, request_id: u64) -> Result<Registration, ConnectionError> {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        state.waiting.insert(request_id, Waiter::Single(sender));
        Ok(Registration {
            table: Arc::clone(self),
            request_id,
            receiver,
            settled: false,
        })
    }

    /// Registers `count` consecutive request ids from `first_request_id` under one lock,
    /// answered together through one [`BatchRegistration`].
    pub fn register_batch(
        self: &Arc<Self>,
        first_request_id: u64,
        count: usize,
    ) -> Result<BatchRegistration, ConnectionError> {
        let slots = Arc::new(BatchSlots {
            replies: Mutex::new((0..count).map(|_| None).collect()),
            remaining: AtomicUsize::new(count),
            done: Notify::new(),
        });
        let mut state = self.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        state.waiting.reserve(count);
        for index in 0..count {
            let batch = Arc::clone(&slots);
            state
                .waiting
                .insert(first_request_id + index as u64, Waiter::Batch { batch, index });
        }
        drop(state);
        Ok(BatchRegistration {
            table: Arc::clone(self),
            first_request_id,
            slots,
        })
    }

    /// Delivers a response; returns whether a caller was still waiting for it.
    pub fn answer(&self, request_id: u64, response: Response) -> bool {
        let waiter = self.lock().waiting.remove(&request_id);
        match waiter {
            Some(waiter) => waiter.deliver(Ok(response)),
            None => false,
        }
    }

    /// Fails every waiting call and every later registration with `failure`.
    pub fn fail_all(&self, failure: ConnectionError) {
        let waiting = {
            let mut state = self.lock();
            state.failure.get_or_insert(failure.clone());
            self.failed.store(true, Ordering::Release);
            std::mem::take(&mut state.waiting)
        };
        for waiter in waiting.into_values() {
            let _ = waiter.deliver(Err(failure.clone()));
        }
    }

    /// Whether the connection failed; lock-free.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the connection failed, once it has.
    pub fn failure(&self) -> Option<ConnectionError> {
        self.lock().failure.clone()
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_their_caller_and_late_answers_are_dropped() {
        let table = Arc::new(PendingTable::default());
        let first = table.register(1).unwrap();
        let mut second = table.register(2).unwrap();
        assert_eq!(table.waiting(), 2);
        assert!(table.answer(2, Response::Pong));
        assert!(matches!(second.reply(Duration::ZERO).await, Ok(Response::Pong)));
        drop(first);
        assert_eq!(table.waiting(), 0);
        assert!(!table.answer(1, Response::Missing), "a caller that left gets nothing");
        assert!(!table.answer(77, Response::Missing), "an unknown id is ignored");
    }

    #[tokio::test]
    async fn failure_reaches_every_waiter_and_later_registrations() {
        let table = Arc::new(PendingTable::default());
        let mut waiting = table.register(1).unwrap();
        table.fail_all(ConnectionError::Closed);
        assert!(matches!(
            waiting.reply(Duration::ZERO).await,
            Err(ConnectionError::Closed)
        ));
        assert!(table.failure().is_some() && table.has_failed());
        assert!(matches!(table.register(2), Err(ConnectionError::Closed)));
    }

    #[tokio::test]
    async fn a_spinning_caller_gets_its_answer_and_leaves_the_table_empty() {
        let table = Arc::new(PendingTable::default());
        let mut spinning = table.register(1).unwrap();
        let answerer = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { assert!(table.answer(1, Response::Pong)) })
        };
        let reply = spinning.reply(Duration::from_secs(5)).await;
        assert!(matches!(reply, Ok(Response::Pong)));
        answerer.await.unwrap();
        drop(spinning);
        assert_eq!(table.waiting(), 0);
        // A spin that runs out parks, and the answer still arrives.
        let mut parked = table.register(2).unwrap();
        let answerer = {
            let table = Arc::clone(&table);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                table.answer(2, Response::Missing)
            })
        };
        assert!(matches!(
            parked.reply(Duration::from_micros(50)).await,
            Ok(Response::Missing)
        ));
        assert!(answerer.await.unwrap());
    }

    #[tokio::test]
    async fn a_batch_gets_its_answers_in_order_and_a_dropped_batch_leaves_nothing() {
        let table = Arc::new(PendingTable::default());
        let mut batch = table.register_batch(10, 3).unwrap();
        assert_eq!(table.waiting(), 3);
        assert!(table.answer(12, Response::Missing));
        assert!(table.answer(10, Response::Pong));
        assert!(table.answer(11, Response::Deleted { existed: true }));
        batch.complete(Duration::ZERO).await;
        assert!(matches!(
            batch.answered().as_slice(),
            [
                Some(Ok(Response::Pong)),
                Some(Ok(Response::Deleted { existed: true })),
                Some(Ok(Response::Missing))
            ]
        ));
        assert_eq!(table.waiting(), 0);
        let mut dropped = table.register_batch(20, 2).unwrap();
        assert!(table.answer(21, Response::Pong));
        assert!(matches!(
            dropped.answered().as_slice(),
            [None, Some(Ok(Response::Pong))]
        ));
        drop(dropped);
        assert_eq!(table.waiting(), 0);
        assert!(!table.answer(20, Response::Pong), "a batch that left gets nothing");
        let mut failing = table.register_batch(30, 2).unwrap();
        assert!(table.answer(30, Response::Pong));
        table.fail_all(ConnectionError::Closed);
        failing.complete(Duration::from_micros(10)).await;
        assert!(matches!(
            failing.answered().as_slice(),
            [Some(Ok(Response::Pong)), Some(Err(ConnectionError::Closed))]
        ));
        assert!(matches!(table.register_batch(40, 1), Err(ConnectionError::Closed)));
    }
}
