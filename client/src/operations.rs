//! Operation ids of one client: allocation, and the "every id below this is done" mark
//! the server uses to forget exactly-once records.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
pub struct OperationIds {
    state: Arc<Mutex<State>>,
}

struct State {
    /// Next id to hand out; ids start at 1 because 0 means "no operation id".
    next: u64,
    /// Ids handed out whose call has not finished; a retry may still resend them.
    in_flight: BTreeSet<u64>,
}

impl Default for State {
    fn default() -> Self {
        State {
            next: 1,
            in_flight: BTreeSet::new(),
        }
    }
}

/// One mutation's id, in flight until dropped (answered, failed, or abandoned: in every
/// case the client will not resend it).
pub struct Operation {
    state: Arc<Mutex<State>>,
    id: u64,
}

impl Operation {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        lock(&self.state).in_flight.remove(&self.id);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Each critical section is one counter bump plus one set update, done before any
    // code that could panic, so a poisoned lock still holds a consistent state.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl OperationIds {
    /// Allocates the next id. Allocation and registration happen under one lock so that
    /// [`OperationIds::completed_below`] never passes an id that is about to be sent.
    pub fn begin(&self) -> Operation {
        let mut state = lock(&self.state);
        let id = state.next;
        state.next += 1;
        state.in_flight.insert(id);
        Operation {
            state: Arc::clone(&self.state),
            id,
        }
    }

    /// Every id below this has been finished by the client: the lowest id in flight, or
    /// the next id when none is.
    pub fn completed_below(&self) -> u64 {
        let state = lock(&self.state);
        state.in_flight.first().copied().unwrap_or(state.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_the_mark_trails_the_oldest_in_flight() {
        let ids = OperationIds::default();
        assert_eq!(ids.completed_below(), 1);
        let first = ids.begin();
        let second = ids.begin();
        let third = ids.begin();
        assert_eq!((first.id(), second.id(), third.id()), (1, 2, 3));
        assert_eq!(ids.completed_below(), 1);
        drop(second);
        assert_eq!(ids.completed_below(), 1, "1 is still in flight");
        drop(first);
        assert_eq!(ids.completed_below(), 3);
        drop(third);
        assert_eq!(ids.completed_below(), 4);
    }
}
