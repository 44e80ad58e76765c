//! Blocking [`crate::RemoteFuture`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::error::Error;

/// Blocking [`crate::RemoteFuture`].
#[derive(Clone, Debug)]
pub struct RemoteFuture {
    pub(super) inner: crate::RemoteFuture,
    pub(super) runtime: Arc<Runtime>,
}

impl RemoteFuture {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> RemoteFuture {
        RemoteFuture {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn complete(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.runtime.block_on(self.inner.complete(value))
    }

    pub fn get(&self, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.runtime.block_on(self.inner.get(timeout))
    }

    pub fn try_get(&self) -> Result<Option<Vec<u8>>, Error> {
        self.runtime.block_on(self.inner.try_get())
    }
}
