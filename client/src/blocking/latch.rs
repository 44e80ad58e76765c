//! Blocking [`crate::Latch`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::error::Error;

/// Blocking [`crate::Latch`].
#[derive(Clone, Debug)]
pub struct Latch {
    pub(super) inner: crate::Latch,
    pub(super) runtime: Arc<Runtime>,
}

impl Latch {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Latch {
        Latch {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn try_set_count(&self, count: u64) -> Result<bool, Error> {
        self.runtime.block_on(self.inner.try_set_count(count))
    }

    pub fn count_down(&self) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.count_down())
    }

    pub fn count(&self) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.count())
    }

    pub fn wait(&self, timeout: Duration) -> Result<(), Error> {
        self.runtime.block_on(self.inner.wait(timeout))
    }
}
