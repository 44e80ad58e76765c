//! Blocking [`crate::Lock`] and [`crate::LockGuard`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::error::Error;
use crate::lock::LockHolder;

/// Blocking [`crate::Lock`].
#[derive(Clone, Debug)]
pub struct Lock {
    pub(super) inner: crate::Lock,
    pub(super) driver: Arc<Driver>,
}

/// Blocking [`crate::LockGuard`]: as there, **dropping it does not release the lock**;
/// the lease does, or [`LockGuard::release`].
#[derive(Debug)]
#[must_use = "dropping a guard does not release the lock; call release() (or let the lease end)"]
pub struct LockGuard {
    inner: crate::LockGuard,
    driver: Arc<Driver>,
}

impl Lock {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Lock {
        Lock {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn acquire(&self, owner: impl Into<Vec<u8>>, lease: Duration, wait: Duration) -> Result<LockGuard, Error> {
        let owner = owner.into();
        let inner = self.driver.call(
            &self.inner,
            |lock| async move { lock.acquire(owner, lease, wait).await },
        )?;
        Ok(self.guard(inner))
    }

    pub fn try_acquire(&self, owner: impl Into<Vec<u8>>, lease: Duration) -> Result<Option<LockGuard>, Error> {
        let owner = owner.into();
        let inner = self
            .driver
            .call(&self.inner, |lock| async move { lock.try_acquire(owner, lease).await })?;
        Ok(inner.map(|inner| self.guard(inner)))
    }

    pub fn holder(&self) -> Result<Option<LockHolder>, Error> {
        self.driver.call(&self.inner, |lock| async move { lock.holder().await })
    }

    pub fn release_with(&self, owner: impl AsRef<[u8]>, fence: u64) -> Result<(), Error> {
        let owner = owner.as_ref().to_vec();
        self.driver
            .call(&self.inner, |lock| async move { lock.release_with(owner, fence).await })
    }

    pub fn renew_with(&self, owner: impl AsRef<[u8]>, fence: u64, lease: Duration) -> Result<Duration, Error> {
        let owner = owner.as_ref().to_vec();
        self.driver.call(
            &self.inner,
            |lock| async move { lock.renew_with(owner, fence, lease).await },
        )
    }

    fn guard(&self, inner: crate::LockGuard) -> LockGuard {
        LockGuard {
            inner,
            driver: Arc::clone(&self.driver),
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
        let (owner, fence) = (self.inner.owner().to_vec(), self.inner.fence());
        let granted = self.driver.call(self.inner.lock(), |lock| async move {
            lock.renew_with(owner, fence, lease).await
        })?;
        self.inner.renewed(granted);
        Ok(())
    }

    pub fn release(self) -> Result<(), Error> {
        let LockGuard { inner, driver } = self;
        driver.run(inner.release())
    }
}
