//! The queue handle: a double-ended queue of byte values with blocking pops. A push
//! hands its value straight to the longest-waiting pop, if any.

use std::time::Duration;

use engram_proto::{Command, QueueEnd, Response};

use crate::arguments::wait_ms;
use crate::bytes::checked_value;
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::QueueCommand;

/// A queue, from [`Client::queue`]. A missing queue reads as empty. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    object: Object,
}

impl Client {
    /// A double-ended queue handle.
    pub fn queue(&self, key: impl Into<Vec<u8>>) -> Queue {
        Queue::new(self.clone(), key.into())
    }
}

impl Queue {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> Queue {
        Queue {
            object: Object::new(client, key),
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default (a
    /// pop's wait is added to it).
    pub fn timeout(&self, timeout: Duration) -> Queue {
        Queue {
            object: self.object.with_timeout(timeout),
        }
    }

    /// Appends at the back; returns the queue's length after the push (0 when the value
    /// went straight to a waiting pop).
    pub async fn push_back(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.push(value.into(), QueueEnd::Back).await
    }

    /// Prepends at the front; returns the length as [`Queue::push_back`] does.
    pub async fn push_front(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.push(value.into(), QueueEnd::Front).await
    }

    /// Takes the front value. With `timeout` `None` it answers at once; with `Some`, an
    /// empty queue is waited on for up to that long. `Ok(None)` in both cases means the
    /// queue was (and stayed) empty: a pop that times out is not an error.
    pub async fn pop_front(&self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        self.pop(QueueEnd::Front, timeout).await
    }

    /// Takes the back value; see [`Queue::pop_front`].
    pub async fn pop_back(&self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        self.pop(QueueEnd::Back, timeout).await
    }

    pub async fn len(&self) -> Result<u64, Error> {
        let command = Command::from(QueueCommand::Len {
            key: self.object.key_vec(),
        });
        match self.object.call(command).await? {
            Response::QueueLength { length } => Ok(length),
            other => Err(unexpected("queue_len", &other)),
        }
    }

    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    async fn push(&self, value: Vec<u8>, end: QueueEnd) -> Result<u64, Error> {
        let command = Command::from(QueueCommand::Push {
            key: self.object.key_vec(),
            value: checked_value(value)?,
            end,
        });
        match self.object.call(command).await? {
            Response::QueueLength { length } => Ok(length),
            other => Err(unexpected("queue_push", &other)),
        }
    }

    async fn pop(&self, end: QueueEnd, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        let command = Command::from(QueueCommand::Pop {
            key: self.object.key_vec(),
            end,
            timeout_ms: timeout.map_or(Ok(0), wait_ms)?,
        });
        match self.object.call(command).await {
            Ok(Response::Value { value, .. }) => Ok(Some(value)),
            Ok(Response::Missing) => Ok(None),
            Ok(other) => Err(unexpected("queue_pop", &other)),
            Err(error) if error.is_wait_timeout() => Ok(None),
            Err(error) => Err(error),
        }
    }
}
