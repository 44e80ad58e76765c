//! Blocking [`crate::Queue`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::error::Error;

/// Blocking [`crate::Queue`].
#[derive(Clone, Debug)]
pub struct Queue {
    pub(super) inner: crate::Queue,
    pub(super) runtime: Arc<Runtime>,
}

impl Queue {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Queue {
        Queue {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn push_back(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.push_back(value))
    }

    pub fn push_front(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.push_front(value))
    }

    pub fn pop_front(&self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        self.runtime.block_on(self.inner.pop_front(timeout))
    }

    pub fn pop_back(&self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        self.runtime.block_on(self.inner.pop_back(timeout))
    }

    pub fn len(&self) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.len())
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        self.runtime.block_on(self.inner.is_empty())
    }
}
