//! Blocking [`crate::Queue`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::error::Error;

/// Blocking [`crate::Queue`].
#[derive(Clone, Debug)]
pub struct Queue {
    pub(super) inner: crate::Queue,
    pub(super) driver: Arc<Driver>,
}

impl Queue {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Queue {
        Queue {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn push_back(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |queue| async move { queue.push_back(value).await })
    }

    pub fn push_front(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |queue| async move { queue.push_front(value).await })
    }

    pub fn pop_front(&self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        self.driver
            .call(&self.inner, |queue| async move { queue.pop_front(timeout).await })
    }

    pub fn pop_back(&self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
        self.driver
            .call(&self.inner, |queue| async move { queue.pop_back(timeout).await })
    }

    pub fn len(&self) -> Result<u64, Error> {
        self.driver.call(&self.inner, |queue| async move { queue.len().await })
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        self.driver
            .call(&self.inner, |queue| async move { queue.is_empty().await })
    }
}
