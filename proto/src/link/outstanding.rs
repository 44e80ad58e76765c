//! The requests a link has sent and not yet had answered, by request id, each with what
//! waits for its answer: how answers are matched to requests, pipelined.
//!
//! An answer is taken once; an answer to an id that is not outstanding (never sent, or
//! answered already) is a protocol error, since the stream is then out of step. A caller
//! that stops waiting keeps its id outstanding until the answer comes (its waiter says
//! nobody listens), so a late answer is recognised rather than refused. The table is
//! bounded by `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`, what a server holds per connection.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::limits::IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;
use crate::link::{LinkError, HANDSHAKE_REQUEST_ID};

/// Request ids to what waits for their answers.
pub struct Outstanding<W> {
    /// Keyed by ids this side picks, so a fast hash is safe here.
    waiting: HashMap<u64, W, foldhash::fast::RandomState>,
    /// The last id [`Outstanding::issue`] gave.
    last_id: u64,
}

impl<W> Default for Outstanding<W> {
    fn default() -> Self {
        Outstanding {
            waiting: HashMap::default(),
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

    /// Takes the waiter of an answered request.
    pub fn answer(&mut self, request_id: u64) -> Result<W, LinkError> {
        self.waiting
            .remove(&request_id)
            .ok_or(LinkError::NotOutstanding { request_id })
    }

    /// Takes back a request that was never sent (its frame could not be encoded).
    pub fn withdraw(&mut self, request_id: u64) -> Option<W> {
        self.waiting.remove(&request_id)
    }

    pub fn get(&self, request_id: u64) -> Option<&W> {
        self.waiting.get(&request_id)
    }

    pub fn get_mut(&mut self, request_id: u64) -> Option<&mut W> {
        self.waiting.get_mut(&request_id)
    }

    pub fn values(&self) -> impl Iterator<Item = &W> {
        self.waiting.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut W> {
        self.waiting.values_mut()
    }

    /// Takes every outstanding request (the link failed: none will be answered).
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, W)> + '_ {
        self.waiting.drain()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn check_room(&self) -> Result<(), LinkError> {
        if self.waiting.len() >= IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX {
            return Err(LinkError::TooManyOutstanding);
        }
        Ok(())
    }
}
