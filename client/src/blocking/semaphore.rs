//! Blocking [`crate::Semaphore`] and [`crate::Permit`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::error::Error;

/// Blocking [`crate::Semaphore`].
#[derive(Clone, Debug)]
pub struct Semaphore {
    pub(super) inner: crate::Semaphore,
    pub(super) driver: Arc<Driver>,
}

/// Blocking [`crate::Permit`]: as there, **dropping it does not return the permits**;
/// the lease does, or [`Permit::release`].
#[derive(Debug)]
#[must_use = "dropping a permit does not release it; call release() (or let the lease end)"]
pub struct Permit {
    inner: crate::Permit,
    driver: Arc<Driver>,
}

impl Semaphore {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn capacity(&self) -> u32 {
        self.inner.capacity()
    }

    pub fn timeout(&self, timeout: Duration) -> Semaphore {
        Semaphore {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        permits: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Permit, Error> {
        let owner = owner.into();
        let inner = self.driver.call(&self.inner, |semaphore| async move {
            semaphore.acquire(owner, permits, lease, wait).await
        })?;
        Ok(self.permit(inner))
    }

    pub fn try_acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        permits: u32,
        lease: Duration,
    ) -> Result<Option<Permit>, Error> {
        let owner = owner.into();
        let inner = self.driver.call(&self.inner, |semaphore| async move {
            semaphore.try_acquire(owner, permits, lease).await
        })?;
        Ok(inner.map(|inner| self.permit(inner)))
    }

    pub fn available(&self) -> Result<u32, Error> {
        self.driver
            .call(&self.inner, |semaphore| async move { semaphore.available().await })
    }

    pub fn release_with(&self, permit_id: u64) -> Result<(), Error> {
        self.driver.call(&self.inner, |semaphore| async move {
            semaphore.release_with(permit_id).await
        })
    }

    pub fn renew_with(&self, permit_id: u64, lease: Duration) -> Result<Duration, Error> {
        self.driver.call(&self.inner, |semaphore| async move {
            semaphore.renew_with(permit_id, lease).await
        })
    }

    fn permit(&self, inner: crate::Permit) -> Permit {
        Permit {
            inner,
            driver: Arc::clone(&self.driver),
        }
    }
}

impl Permit {
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    pub fn permits(&self) -> u32 {
        self.inner.permits()
    }

    pub fn lease(&self) -> Duration {
        self.inner.lease()
    }

    pub fn renew(&mut self, lease: Duration) -> Result<(), Error> {
        let permit_id = self.inner.id();
        let granted = self.driver.call(self.inner.semaphore(), |semaphore| async move {
            semaphore.renew_with(permit_id, lease).await
        })?;
        self.inner.renewed(granted);
        Ok(())
    }

    pub fn release(self) -> Result<(), Error> {
        let Permit { inner, driver } = self;
        driver.run(inner.release())
    }
}
