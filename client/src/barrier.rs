//! The barrier handle: a cyclic meeting point for `parties` callers across processes.
//!
//! Each generation releases when its last party arrives. If one party's wait runs out
//! first, that party gets a server `Timeout` and every other party of the generation
//! gets `BarrierBroken`; the next arrival starts a fresh generation.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::arguments::wait_ms;
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::BarrierCommand;

/// A barrier, from [`Client::barrier`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Barrier {
    object: Object,
    parties: u32,
}

/// One caller's pass through a barrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierPassage {
    /// The generation passed; it increases by one per released (or broken) generation.
    pub generation: u64,
    /// The caller's arrival order within the generation, from 0; `parties - 1` arrived
    /// last (and released the others).
    pub arrival_index: u32,
}

impl BarrierPassage {
    /// Whether this caller arrived first, handy to pick one party for once-per-round work.
    pub fn is_leader(&self) -> bool {
        self.arrival_index == 0
    }
}

impl Client {
    /// A cyclic barrier handle for `parties` callers.
    pub fn barrier(&self, key: impl Into<Vec<u8>>, parties: u32) -> Barrier {
        Barrier::new(self.clone(), key.into(), parties)
    }
}

impl Barrier {
    pub(crate) fn new(client: Client, key: Vec<u8>, parties: u32) -> Barrier {
        Barrier {
            object: Object::new(client, key),
            parties,
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default (a
    /// wait is added to it).
    pub fn timeout(&self, timeout: Duration) -> Barrier {
        Barrier {
            object: self.object.with_timeout(timeout),
            ..self.clone()
        }
    }

    /// Arrives and waits up to `timeout` for the rest of the generation. Errors: a server
    /// `Timeout` when this caller's wait ran out (which breaks the generation for the
    /// others), `BarrierBroken` when another party's did, `InvalidArgument` when the
    /// generation waits for a different number of parties. A zero `timeout` passes only
    /// if this arrival completes the generation, and breaks it otherwise.
    pub async fn wait(&self, timeout: Duration) -> Result<BarrierPassage, Error> {
        let command = Command::from(BarrierCommand::Wait {
            key: self.object.key_vec(),
            parties: self.parties,
            timeout_ms: wait_ms(timeout)?,
        });
        match self.object.call(command).await? {
            Response::BarrierPassed {
                generation,
                arrival_index,
            } => Ok(BarrierPassage {
                generation,
                arrival_index,
            }),
            other => Err(unexpected("barrier_wait", &other)),
        }
    }
}
