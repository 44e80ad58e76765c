//! The latch handle: a count-down latch across processes. Set a count (only while the
//! latch is open, at zero), count it down, wait until it reaches zero.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::arguments::wait_ms;
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::LatchCommand;

/// A latch, from [`Client::latch`]. A latch never set is open (count 0). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Latch {
    object: Object,
}

impl Client {
    /// A count-down latch handle.
    pub fn latch(&self, key: impl Into<Vec<u8>>) -> Latch {
        Latch::new(self.clone(), key.into())
    }
}

impl Latch {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> Latch {
        Latch {
            object: Object::new(client, key),
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default (a
    /// wait is added to it).
    pub fn timeout(&self, timeout: Duration) -> Latch {
        Latch {
            object: self.object.with_timeout(timeout),
        }
    }

    /// Sets the count to `count` if the latch is open (at zero); `false` when it is still
    /// counting down, which leaves its count unchanged. Lets every worker call it and
    /// exactly the first one set the count.
    pub async fn try_set_count(&self, count: u64) -> Result<bool, Error> {
        let command = Command::from(LatchCommand::TrySetCount {
            key: self.object.key_vec(),
            count,
        });
        match self.object.call(command).await? {
            Response::LatchSet { set, .. } => Ok(set),
            other => Err(unexpected("latch_try_set_count", &other)),
        }
    }

    /// Counts down by one (an open latch stays at zero); returns the count after it.
    pub async fn count_down(&self) -> Result<u64, Error> {
        let command = Command::from(LatchCommand::CountDown {
            key: self.object.key_vec(),
        });
        self.count_of("latch_count_down", command).await
    }

    pub async fn count(&self) -> Result<u64, Error> {
        let command = Command::from(LatchCommand::Count {
            key: self.object.key_vec(),
        });
        self.count_of("latch_count", command).await
    }

    /// Waits up to `timeout` for the count to reach zero; a wait that runs out fails with
    /// a server `Timeout` ([`Error::is_wait_timeout`]). A zero `timeout` checks without
    /// waiting.
    pub async fn wait(&self, timeout: Duration) -> Result<(), Error> {
        let command = Command::from(LatchCommand::Wait {
            key: self.object.key_vec(),
            timeout_ms: wait_ms(timeout)?,
        });
        match self.object.call(command).await? {
            Response::LatchOpen => Ok(()),
            other => Err(unexpected("latch_wait", &other)),
        }
    }

    async fn count_of(&self, name: &'static str, command: Command) -> Result<u64, Error> {
        match self.object.call(command).await? {
            Response::LatchCount { count } => Ok(count),
            other => Err(unexpected(name, &other)),
        }
    }
}
