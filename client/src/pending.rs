//! The table of calls waiting for a response on one connection, keyed by request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use engram_proto::Response;
use tokio::sync::oneshot;

use crate::error::ConnectionError;

pub type Reply = Result<Response, ConnectionError>;

/// Shared between the callers (who register) and the connection's reader (who answers).
/// Entries are removed by whichever comes first: the answer, the caller giving up (its
/// [`Registration`] drops), or the connection failing.
#[derive(Default)]
pub struct PendingTable {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the connection failed; later registrations fail with it at once.
    failure: Option<ConnectionError>,
}

/// A caller's claim on one request id; dropping it forgets the entry, so an answer that
/// arrives after the caller left is discarded instead of kept forever.
pub struct Registration {
    table: Arc<PendingTable>,
    request_id: u64,
    receiver: oneshot::Receiver<Reply>,
}

impl Registration {
    /// Waits for the answer. Cancel-safe: dropping this future (or the registration)
    /// leaves the table consistent.
    pub async fn reply(&mut self) -> Reply {
        match (&mut self.receiver).await {
            Ok(reply) => reply,
            // The sender only vanishes unanswered if the connection's reader is gone.
            Err(_) => Err(ConnectionError::Closed),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().waiting.remove(&self.request_id);
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
            std::mem::take(&mut state.waiting)
        };
        for sender in waiting.into_values() {
            let _ = sender.send(Err(failure.clone()));
        }
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
        assert!(matches!(second.reply().await, Ok(Response::Pong)));
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
        assert!(matches!(waiting.reply().await, Err(ConnectionError::Closed)));
        assert!(table.failure().is_some());
        assert!(matches!(table.register(2), Err(ConnectionError::Closed)));
    }
}
