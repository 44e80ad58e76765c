//! The remote future handle: a write-once value that any process can wait for.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::arguments::real_wait_ms;
use crate::bytes::checked_value;
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::FutureCommand;

/// A write-once value, from [`Client::future`]: the first [`RemoteFuture::complete`]
/// sets it, later ones fail with `AlreadyCompleted`. Named so it does not shadow
/// `std::future::Future`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RemoteFuture {
    object: Object,
}

impl Client {
    /// A write-once value handle.
    pub fn future(&self, key: impl Into<Vec<u8>>) -> RemoteFuture {
        RemoteFuture::new(self.clone(), key.into())
    }
}

impl RemoteFuture {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> RemoteFuture {
        RemoteFuture {
            object: Object::new(client, key),
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default (a
    /// wait is added to it).
    pub fn timeout(&self, timeout: Duration) -> RemoteFuture {
        RemoteFuture {
            object: self.object.with_timeout(timeout),
        }
    }

    /// Sets the value and wakes every waiter. Fails with `AlreadyCompleted`
    /// ([`Error::is_server`]) when it was set before, even to the same value.
    pub async fn complete(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let command = Command::from(FutureCommand::Complete {
            key: self.object.key_vec(),
            value: checked_value(value.into())?,
        });
        match self.object.call(command).await? {
            Response::FutureCompleted => Ok(()),
            other => Err(unexpected("future_complete", &other)),
        }
    }

    /// The value, waiting up to `timeout` for it to be set; a wait that runs out fails
    /// with a server `Timeout` ([`Error::is_wait_timeout`]). A zero `timeout` waits 1 ms;
    /// use [`RemoteFuture::try_get`] not to wait.
    pub async fn get(&self, timeout: Duration) -> Result<Vec<u8>, Error> {
        let command = Command::from(FutureCommand::Get {
            key: self.object.key_vec(),
            timeout_ms: real_wait_ms(timeout)?,
        });
        match self.object.call(command).await? {
            Response::Value { value, .. } => Ok(value),
            other => Err(unexpected("future_get", &other)),
        }
    }

    /// The value if it is set; `None` otherwise, without waiting.
    pub async fn try_get(&self) -> Result<Option<Vec<u8>>, Error> {
        let command = Command::from(FutureCommand::Get {
            key: self.object.key_vec(),
            timeout_ms: 0,
        });
        match self.object.call(command).await? {
            Response::Value { value, .. } => Ok(Some(value)),
            Response::Missing => Ok(None),
            other => Err(unexpected("future_get", &other)),
        }
    }
}
