//! The table of calls waiting for a response on one connection, keyed by request id,
//! and the connection's reaper, which ends the single calls whose deadline passed.
//!
//! Answers are matched with proto's [`Outstanding`]: an answer to a request id that is
//! not outstanding breaks the connection. A call that stops waiting (its deadline
//! passed, or it was dropped) abandons its id, whose late answer is then recognised and
//! dropped; a connection with too many abandoned ids unanswered is failed.
//!
//! A call's deadline is kept in its table entry rather than in a timer of its own: the
//! reaper sleeps until the earliest deadline it knows of, and a registration only
//! wakes it when it brings an earlier one. Calls of one client mostly share a timeout,
//! so deadlines arrive in order and the reaper wakes about once per timeout period,
//! where a timer per call would be registered and cancelled on every call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engram_proto::link::Outstanding;
use engram_proto::{LinkError, Response};
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::error::ConnectionError;

pub type Reply = Result<Response, ConnectionError>;

/// How a single call ends: its reply, or its deadline passing first.
#[derive(Debug)]
pub enum Settled {
    Reply(Reply),
    Overdue,
}

/// Shared between the callers (who register) and the connection's reader (who answers).
/// Entries leave by whichever comes first: the answer, the caller giving up (its
/// [`Registration`] drops, abandoning the id), or the connection failing.
#[derive(Default)]
pub struct PendingTable {
    state: Mutex<State>,
    /// Mirrors `State::failure.is_some()`, so the per-call usability check takes no lock.
    failed: AtomicBool,
    /// Wakes the reaper for a deadline earlier than the one it sleeps until.
    reaper: Notify,
}

#[derive(Default)]
struct State {
    waiting: Outstanding<Waiter>,
    /// Set once the connection failed; later registrations fail with it at once.
    failure: Option<ConnectionError>,
    /// When the reaper looks next: no later than the earliest deadline in `waiting`
    /// (earlier once that call is answered, which only costs an early look). `None`:
    /// it sleeps until a registration wakes it.
    reaper_wake: Option<Instant>,
}

/// Who waits for one request id: a single call, or one entry of a batch (whose caller
/// bounds the whole batch's wait itself).
enum Waiter {
    Single {
        sender: oneshot::Sender<Settled>,
        deadline: Instant,
    },
    Batch {
        batch: Arc<BatchSlots>,
        index: usize,
    },
}

impl Waiter {
    fn deliver(self, reply: Reply) -> bool {
        match self {
            Waiter::Single { sender, .. } => sender.send(Settled::Reply(reply)).is_ok(),
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
            self.table.abandon(self.first_request_id..self.first_request_id + count);
        }
    }
}

/// A caller's claim on one request id; dropping it abandons the id, so an answer that
/// arrives after the caller left is discarded.
pub struct Registration {
    table: Arc<PendingTable>,
    request_id: u64,
    receiver: oneshot::Receiver<Settled>,
    /// Set once the receiver yielded: whoever sent (the reader, or `fail_all`) removed
    /// the entry already, so dropping need not lock the table again.
    settled: bool,
}

impl Registration {
    /// Waits for the answer, first polling for it for up to `spin` (yielding to the
    /// runtime between polls, so the connection's reader keeps running) before parking.
    /// Cancel-safe: dropping this future (or the registration) leaves the table
    /// consistent.
    pub async fn reply(&mut self, spin: Duration) -> Settled {
        if !spin.is_zero() {
            let started = std::time::Instant::now();
            loop {
                match self.receiver.try_recv() {
                    Ok(settled) => {
                        self.settled = true;
                        return settled;
                    }
                    Err(TryRecvError::Closed) => {
                        self.settled = true;
                        return Settled::Reply(Err(ConnectionError::Closed));
                    }
                    Err(TryRecvError::Empty) if started.elapsed() >= spin => break,
                    Err(TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        let settled = match (&mut self.receiver).await {
            Ok(settled) => settled,
            // The sender only vanishes unanswered if the connection's reader is gone.
            Err(_) => Settled::Reply(Err(ConnectionError::Closed)),
        };
        self.settled = true;
        settled
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.settled {
            self.table.abandon(self.request_id..self.request_id + 1);
        }
    }
}

impl PendingTable {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (each
        // operation is one insert or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a single call, which the reaper ends with [`Settled::Overdue`] once
    /// `deadline` passes unanswered.
    pub fn register(self: &Arc<Self>, request_id: u64, deadline: Instant) -> Result<Registration, ConnectionError> {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        state.waiting.insert(request_id, Waiter::Single { sender, deadline })?;
        let sooner = state.reaper_wake.is_none_or(|wake| deadline < wake);
        if sooner {
            state.reaper_wake = Some(deadline);
        }
        drop(state);
        if sooner {
            // Leaves a permit if the reaper is between looking and sleeping, so the
            // earlier deadline is not missed.
            self.reaper.notify_one();
        }
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
            let request_id = first_request_id + index as u64;
            if let Err(error) = state.waiting.insert(request_id, Waiter::Batch { batch, index }) {
                // The batch goes whole or not at all.
                for registered in first_request_id..request_id {
                    state.waiting.withdraw(registered);
                }
                return Err(error.into());
            }
        }
        drop(state);
        Ok(BatchRegistration {
            table: Arc::clone(self),
            first_request_id,
            slots,
        })
    }

    /// Delivers a response; returns whether a caller was still waiting for it. An
    /// answer to a request id not outstanding is the peer out of step.
    pub fn answer(&self, request_id: u64, response: Response) -> Result<bool, LinkError> {
        let waiter = self.lock().waiting.answer(request_id)?;
        Ok(waiter.is_some_and(|waiter| waiter.deliver(Ok(response))))
    }

    /// Stops waiting for the answers of `request_ids` (those still unanswered); fails
    /// the connection once it has too many abandoned ids unanswered.
    fn abandon(&self, mut request_ids: std::ops::Range<u64>) {
        let abandoned = {
            let mut state = self.lock();
            request_ids.try_for_each(|request_id| state.waiting.abandon(request_id).map(drop))
        };
        if let Err(error) = abandoned {
            self.fail_all(error.into());
        }
    }

    /// Fails every waiting call and every later registration with `failure`.
    pub fn fail_all(&self, failure: ConnectionError) {
        let mut waiting = {
            let mut state = self.lock();
            state.failure.get_or_insert(failure.clone());
            self.failed.store(true, Ordering::Release);
            std::mem::take(&mut state.waiting)
        };
        for (_, waiter) in waiting.drain() {
            let _ = waiter.deliver(Err(failure.clone()));
        }
    }

    /// Ends the single calls whose deadline passed, for as long as the table lives
    /// (the connection aborts this task when it closes).
    pub async fn reap_overdue(self: Arc<Self>) {
        loop {
            let wake = self.lock().reaper_wake;
            match wake {
                None => self.reaper.notified().await,
                Some(wake) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => {}
                        () = self.reaper.notified() => {}
                    }
                }
            }
            self.end_overdue(Instant::now());
        }
    }

    /// Ends the single calls whose deadline is `now` or earlier, and plans the reaper's
    /// next look for the earliest deadline left.
    fn end_overdue(&self, now: Instant) {
        let (overdue, abandoned) = {
            let mut state = self.lock();
            let due: Vec<u64> = state
                .waiting
                .iter()
                .filter(|(_, waiter)| matches!(waiter, Waiter::Single { deadline, .. } if *deadline <= now))
                .map(|(request_id, _)| request_id)
                .collect();
            let mut overdue = Vec::with_capacity(due.len());
            let mut abandoned = Ok(());
            for request_id in due {
                match state.waiting.abandon(request_id) {
                    Ok(waiter) => overdue.extend(waiter),
                    Err(error) => abandoned = Err(error),
                }
            }
            state.reaper_wake = state
                .waiting
                .iter()
                .filter_map(|(_, waiter)| match waiter {
                    Waiter::Single { deadline, .. } => Some(*deadline),
                    Waiter::Batch { .. } => None,
                })
                .min();
            (overdue, abandoned)
        };
        for waiter in overdue {
            if let Waiter::Single { sender, .. } = waiter {
                let _ = sender.send(Settled::Overdue);
            }
        }
        if let Err(error) = abandoned {
            self.fail_all(error.into());
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

    #[cfg(test)]
    pub fn abandoned(&self) -> usize {
        self.lock().waiting.abandoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::limits::ABANDONED_REQUESTS_PER_CONNECTION_MAX;

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn answers_reach_their_caller_and_late_answers_are_dropped() {
        let table = Arc::new(PendingTable::default());
        let first = table.register(1, far()).unwrap();
        let mut second = table.register(2, far()).unwrap();
        assert_eq!(table.waiting(), 2);
        assert_eq!(table.answer(2, Response::Pong), Ok(true));
        assert!(matches!(
            second.reply(Duration::ZERO).await,
            Settled::Reply(Ok(Response::Pong))
        ));
        drop(first);
        assert_eq!(table.waiting(), 0);
        assert_eq!(table.abandoned(), 1);
        assert_eq!(
            table.answer(1, Response::Missing),
            Ok(false),
            "a caller that left gets nothing"
        );
        assert_eq!(table.abandoned(), 0);
        assert_eq!(
            table.answer(77, Response::Missing),
            Err(LinkError::NotOutstanding { request_id: 77 }),
            "an id never sent is the peer out of step"
        );
        assert_eq!(
            table.answer(2, Response::Missing),
            Err(LinkError::NotOutstanding { request_id: 2 }),
            "an id is answered once"
        );
    }

    #[tokio::test]
    async fn a_connection_with_too_many_abandoned_requests_unanswered_fails() {
        let table = Arc::new(PendingTable::default());
        for request_id in 1..=ABANDONED_REQUESTS_PER_CONNECTION_MAX as u64 {
            drop(table.register(request_id, far()).unwrap());
        }
        assert!(!table.has_failed(), "up to the limit, late answers are still expected");
        let mut waiting = table.register(9_999, far()).unwrap();
        drop(table.register(10_000, far()).unwrap());
        assert!(matches!(
            waiting.reply(Duration::ZERO).await,
            Settled::Reply(Err(ConnectionError::Link(LinkError::TooManyAbandoned)))
        ));
        assert!(table.has_failed());
    }

    #[tokio::test]
    async fn failure_reaches_every_waiter_and_later_registrations() {
        let table = Arc::new(PendingTable::default());
        let mut waiting = table.register(1, far()).unwrap();
        table.fail_all(ConnectionError::Closed);
        assert!(matches!(
            waiting.reply(Duration::ZERO).await,
            Settled::Reply(Err(ConnectionError::Closed))
        ));
        assert!(table.failure().is_some() && table.has_failed());
        assert!(matches!(table.register(2, far()), Err(ConnectionError::Closed)));
    }

    #[tokio::test]
    async fn a_spinning_caller_gets_its_answer_and_leaves_the_table_empty() {
        let table = Arc::new(PendingTable::default());
        let mut spinning = table.register(1, far()).unwrap();
        let answerer = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { assert_eq!(table.answer(1, Response::Pong), Ok(true)) })
        };
        let reply = spinning.reply(Duration::from_secs(5)).await;
        assert!(matches!(reply, Settled::Reply(Ok(Response::Pong))));
        answerer.await.unwrap();
        drop(spinning);
        assert_eq!(table.waiting(), 0);
        // A spin that runs out parks, and the answer still arrives.
        let mut parked = table.register(2, far()).unwrap();
        let answerer = {
            let table = Arc::clone(&table);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                table.answer(2, Response::Missing)
            })
        };
        assert!(matches!(
            parked.reply(Duration::from_micros(50)).await,
            Settled::Reply(Ok(Response::Missing))
        ));
        assert_eq!(answerer.await.unwrap(), Ok(true));
    }

    #[tokio::test]
    async fn a_batch_gets_its_answers_in_order_and_a_dropped_batch_leaves_nothing() {
        let table = Arc::new(PendingTable::default());
        let mut batch = table.register_batch(10, 3).unwrap();
        assert_eq!(table.waiting(), 3);
        assert_eq!(table.answer(12, Response::Missing), Ok(true));
        assert_eq!(table.answer(10, Response::Pong), Ok(true));
        assert_eq!(table.answer(11, Response::Deleted { existed: true }), Ok(true));
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
        assert_eq!(table.answer(21, Response::Pong), Ok(true));
        assert!(matches!(
            dropped.answered().as_slice(),
            [None, Some(Ok(Response::Pong))]
        ));
        drop(dropped);
        assert_eq!(table.waiting(), 0);
        assert_eq!(
            table.answer(20, Response::Pong),
            Ok(false),
            "a batch that left gets nothing"
        );
        let mut failing = table.register_batch(30, 2).unwrap();
        assert_eq!(table.answer(30, Response::Pong), Ok(true));
        table.fail_all(ConnectionError::Closed);
        failing.complete(Duration::from_micros(10)).await;
        assert!(matches!(
            failing.answered().as_slice(),
            [Some(Ok(Response::Pong)), Some(Err(ConnectionError::Closed))]
        ));
        assert!(matches!(table.register_batch(40, 1), Err(ConnectionError::Closed)));
    }

    /// Paused time: the reaper's sleep ends exactly when the clock is advanced past it.
    #[tokio::test(start_paused = true)]
    async fn the_reaper_ends_overdue_calls_and_only_those() {
        let table = Arc::new(PendingTable::default());
        let reaper = tokio::spawn(Arc::clone(&table).reap_overdue());
        let start = Instant::now();
        let mut late = table.register(1, start + Duration::from_secs(10)).unwrap();
        let mut answered = table.register(2, start + Duration::from_secs(10)).unwrap();
        let mut later = table.register(3, start + Duration::from_secs(30)).unwrap();
        let mut batch = table.register_batch(4, 1).unwrap();
        // A registration with an earlier deadline than the reaper sleeps until wakes it.
        let mut soon = table.register(5, start + Duration::from_secs(1)).unwrap();
        assert_eq!(table.answer(2, Response::Pong), Ok(true));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(matches!(soon.reply(Duration::ZERO).await, Settled::Overdue));
        assert_eq!(table.waiting(), 3, "only the call due at 1 s ended");
        tokio::time::sleep_until(start + Duration::from_secs(11)).await;
        assert!(matches!(late.reply(Duration::ZERO).await, Settled::Overdue));
        assert!(matches!(
            answered.reply(Duration::ZERO).await,
            Settled::Reply(Ok(Response::Pong))
        ));
        assert_eq!(table.waiting(), 2, "the call due at 30 s and the batch wait on");
        assert_eq!(
            table.answer(1, Response::Pong),
            Ok(false),
            "an overdue call's late answer is dropped"
        );
        assert_eq!(table.answer(3, Response::Missing), Ok(true));
        assert!(matches!(
            later.reply(Duration::ZERO).await,
            Settled::Reply(Ok(Response::Missing))
        ));
        // Batches bound their own wait: the reaper leaves them alone.
        tokio::time::sleep_until(start + Duration::from_secs(60)).await;
        assert_eq!(table.waiting(), 1);
        assert_eq!(table.answer(4, Response::Pong), Ok(true));
        batch.complete(Duration::ZERO).await;
        // An empty table parks the reaper until the next registration.
        let mut next = table.register(6, Instant::now() + Duration::from_secs(2)).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(matches!(next.reply(Duration::ZERO).await, Settled::Overdue));
        assert_eq!(table.waiting(), 0);
        reaper.abort();
    }
}
