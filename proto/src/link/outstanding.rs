//! The requests a link has sent and not yet had answered, by request id, each with what
//! waits for its answer: how answers are matched to requests, pipelined.
//!
//! An answer is taken once; an answer to an id that is not outstanding (never sent, or
//! answered already) is a protocol error, since the stream is then out of step. A caller
//! that stops waiting abandons its id, which stays expected until its answer comes and
//! is then dropped, so a late answer is recognised rather than refused. Both are
//! bounded: `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX` waiting (what a server holds per
//! connection) and `ABANDONED_REQUESTS_PER_CONNECTION_MAX` abandoned.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use crate::limits::{ABANDONED_REQUESTS_PER_CONNECTION_MAX, IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX};
use crate::link::{LinkError, HANDSHAKE_REQUEST_ID};

/// Keyed by ids this side picks, so a fast hash is safe here.
type Hasher = foldhash::fast::RandomState;

/// Request ids to what waits for their answers.
pub struct Outstanding<W> {
    waiting: HashMap<u64, W, Hasher>,
    /// Ids whose callers stopped waiting; their answers are dropped when they come.
    abandoned: HashSet<u64, Hasher>,
    /// The last id [`Outstanding::issue`] gave.
    last_id: u64,
}

impl<W> Default for Outstanding<W> {
    fn default() -> Self {
        Outstanding {
            waiting: HashMap::default(),
            abandoned: HashSet::default(),
            last_id: HANDSHAKE_REQUEST_ID,
        }
    }
}

impl<W> Outstanding<W> {
    /// Gives the next request id (from 1: 0 is the handshake's) to `waiter`.
    pub fn issue(&mut self, waiter: W) -> Result<u64, LinkError> {
        self.check_room()?;
        self.last_id += 1;
        self.waiting.insert(self.last_id, waiter);
        Ok(self.last_id)
    }

    /// Registers `request_id`, chosen by the caller (a client that numbers requests from
    /// many tasks, from 1), for `waiter`.
    pub fn insert(&mut self, request_id: u64, waiter: W) -> Result<(), LinkError> {
        self.check_room()?;
        match self.waiting.entry(request_id) {
            Entry::Occupied(_) => Err(LinkError::AlreadyOutstanding { request_id }),
            Entry::Vacant(entry) => {
                entry.insert(waiter);
                Ok(())
            }
        }
    }

    /// Room for `additional` more entries, so a batch registers without rehashing.
    pub fn reserve(&mut self, additional: usize) {
        self.waiting.reserve(additional);
    }

    /// Takes the waiter of an answered request; `None` for an abandoned one.
    pub fn answer(&mut self, request_id: u64) -> Result<Option<W>, LinkError> {
        if let Some(waiter) = self.waiting.remove(&request_id) {
            return Ok(Some(waiter));
        }
        if self.abandoned.remove(&request_id) {
            return Ok(None);
        }
        Err(LinkError::NotOutstanding { request_id })
    }

    /// Stops waiting for `request_id`'s answer, still expected; gives back its waiter
    /// (`None` if it was answered meanwhile). Fails when too many are abandoned.
    pub fn abandon(&mut self, request_id: u64) -> Result<Option<W>, LinkError> {
        let Some(waiter) = self.waiting.remove(&request_id) else {
            return Ok(None);
        };
        if self.abandoned.len() >= ABANDONED_REQUESTS_PER_CONNECTION_MAX {
            return Err(LinkError::TooManyAbandoned);
        }
        self.abandoned.insert(request_id);
        Ok(Some(waiter))
    }

    /// Takes back a request that was never sent (its frame could not be encoded).
    pub fn withdraw(&mut self, request_id: u64) -> Option<W> {
        self.waiting.remove(&request_id)
    }

    pub fn get(&self, request_id: u64) -> Option<&W> {
        self.waiting.get(&request_id)
    }

    /// The requests waited for, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &W)> {
        self.waiting.iter().map(|(&request_id, waiter)| (request_id, waiter))
    }

    /// Takes every outstanding request (the link failed: none will be answered).
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, W)> + '_ {
        self.abandoned.clear();
        self.waiting.drain()
    }

    /// Requests waited for (abandoned ones not counted).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Requests abandoned and not answered yet.
    pub fn abandoned(&self) -> usize {
        self.abandoned.len()
    }

    fn check_room(&self) -> Result<(), LinkError> {
        if self.waiting.len() >= IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX {
            return Err(LinkError::TooManyOutstanding);
        }
        Ok(())
    }
}
