//! The table of calls waiting for a response on one connection, keyed by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engram_proto::Response;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

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
    waiting: HashMap<u64, oneshot::Sender<Reply>, foldhash::fast::RandomState>,
    /// Set once the connection failed; later registrations fail with it at once.
    failure: Option<ConnectionError>,
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
        state.waiting.insert(request_id, sender);
        Ok(Registration {
            table: Arc::clone(self),
            request_id,
            receiver,
            settled: false,
        })
    }

    /// Delivers a response; returns whether a caller was still waiting for it.
    pub fn answer(&self, request_id: u64, response: Response) -> bool {
        let sender = self.lock().waiting.remove(&request_id);
        match sender {
            Some(sender) => sender.send(Ok(response)).is_ok(),
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
        for sender in waiting.into_values() {
            let _ = sender.send(Err(failure.clone()));
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
}
