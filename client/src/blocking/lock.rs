//! Blocking [`crate::Lock`] and [`crate::LockGuard`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::error::Error;
use crate::lock::LockHolder;

/// Blocking [`crate::Lock`].
#[derive(Clone, Debug)]
pub struct Lock {
    pub(super) inner: crate::Lock,
    pub(super) runtime: Arc<Runtime>,
}

/// Blocking [`crate::LockGuard`]: as there, **dropping it does not release the lock**;
/// the lease does, or [`LockGuard::release`].
#[derive(Debug)]
#[must_use = "dropping a guard does not release the lock; call release() (or let the lease end)"]
pub struct LockGuard {
    inner: crate::LockGuard,
    runtime: Arc<Runtime>,
}

impl Lock {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Lock {
        Lock {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn acquire(&self, owner: impl Into<Vec<u8>>, lease: Duration, wait: Duration) -> Result<LockGuard, Error> {
        let inner = self.runtime.block_on(self.inner.acquire(owner, lease, wait))?;
        Ok(self.guard(inner))
    }

    pub fn try_acquire(&self, owner: impl Into<Vec<u8>>, lease: Duration) -> Result<Option<LockGuard>, Error> {
        let inner = self.runtime.block_on(self.inner.try_acquire(owner, lease))?;
        Ok(inner.map(|inner| self.guard(inner)))
    }

    pub fn holder(&self) -> Result<Option<LockHolder>, Error> {
        self.runtime.block_on(self.inner.holder())
    }

    pub fn release_with(&self, owner: impl AsRef<[u8]>, fence: u64) -> Result<(), Error> {
        self.runtime.block_on(self.inner.release_with(owner, fence))
    }

    pub fn renew_with(&self, owner: impl AsRef<[u8]>, fence: u64, lease: Duration) -> Result<Duration, Error> {
        self.runtime.block_on(self.inner.renew_with(owner, fence, lease))
    }

    fn guard(&self, inner: crate::LockGuard) -> LockGuard {
        LockGuard {
            inner,
            runtime: Arc::clone(&self.runtime),
        }
    }
}

impl LockGuard {
    pub fn fence(&self) -> u64 {
        self.inner.fence()
    }

    pub fn owner(&self) -> &[u8] {
        self.inner.owner()
    }

    pub fn lease(&self) -> Duration {
        self.inner.lease()
    }

    pub fn renew(&mut self, lease: Duration) -> Result<(), Error> {
        self.runtime.block_on(self.inner.renew(lease))
    }

    pub fn release(self) -> Result<(), Error> {
        self.runtime.block_on(self.inner.release())
    }
}
