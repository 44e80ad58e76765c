//! Blocking [`crate::Barrier`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::barrier::BarrierPassage;
use crate::error::Error;

/// Blocking [`crate::Barrier`].
#[derive(Clone, Debug)]
pub struct Barrier {
    pub(super) inner: crate::Barrier,
    pub(super) runtime: Arc<Runtime>,
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
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn wait(&self, timeout: Duration) -> Result<BarrierPassage, Error> {
        self.runtime.block_on(self.inner.wait(timeout))
    }
}
