//! Blocking [`crate::Latch`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::error::Error;

/// Blocking [`crate::Latch`].
#[derive(Clone, Debug)]
pub struct Latch {
    pub(super) inner: crate::Latch,
    pub(super) driver: Arc<Driver>,
}

impl Latch {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Latch {
        Latch {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn try_set_count(&self, count: u64) -> Result<bool, Error> {
        self.driver
            .call(&self.inner, |latch| async move { latch.try_set_count(count).await })
    }

    pub fn count_down(&self) -> Result<u64, Error> {
        self.driver
            .call(&self.inner, |latch| async move { latch.count_down().await })
    }

    pub fn count(&self) -> Result<u64, Error> {
        self.driver
            .call(&self.inner, |latch| async move { latch.count().await })
    }

    pub fn wait(&self, timeout: Duration) -> Result<(), Error> {
        self.driver
            .call(&self.inner, |latch| async move { latch.wait(timeout).await })
    }
}
