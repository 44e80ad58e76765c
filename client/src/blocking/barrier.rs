//! Blocking [`crate::Barrier`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::barrier::BarrierPassage;
use crate::error::Error;

/// Blocking [`crate::Barrier`].
#[derive(Clone, Debug)]
pub struct Barrier {
    pub(super) inner: crate::Barrier,
    pub(super) driver: Arc<Driver>,
}

impl Barrier {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn parties(&self) -> u32 {
        self.inner.parties()
    }

    pub fn timeout(&self, timeout: Duration) -> Barrier {
        Barrier {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn wait(&self, timeout: Duration) -> Result<BarrierPassage, Error> {
        self.driver
            .call(&self.inner, |barrier| async move { barrier.wait(timeout).await })
    }
}
