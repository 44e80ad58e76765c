//! Blocking [`crate::RemoteFuture`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::error::Error;

/// Blocking [`crate::RemoteFuture`].
#[derive(Clone, Debug)]
pub struct RemoteFuture {
    pub(super) inner: crate::RemoteFuture,
    pub(super) driver: Arc<Driver>,
}

impl RemoteFuture {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> RemoteFuture {
        RemoteFuture {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn complete(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |future| async move { future.complete(value).await })
    }

    pub fn get(&self, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.driver
            .call(&self.inner, |future| async move { future.get(timeout).await })
    }

    pub fn try_get(&self) -> Result<Option<Vec<u8>>, Error> {
        self.driver
            .call(&self.inner, |future| async move { future.try_get().await })
    }
}
