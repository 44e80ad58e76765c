//! Blocking [`crate::Semaphore`] and [`crate::Permit`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::error::Error;

/// Blocking [`crate::Semaphore`].
#[derive(Clone, Debug)]
pub struct Semaphore {
    pub(super) inner: crate::Semaphore,
    pub(super) runtime: Arc<Runtime>,
}

/// Blocking [`crate::Permit`]: as there, **dropping it does not return the permits**;
/// the lease does, or [`Permit::release`].
#[derive(Debug)]
#[must_use = "dropping a permit does not release it; call release() (or let the lease end)"]
pub struct Permit {
    inner: crate::Permit,
    runtime: Arc<Runtime>,
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
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        permits: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Permit, Error> {
        let inner = self.runtime.block_on(self.inner.acquire(owner, permits, lease, wait))?;
        Ok(self.permit(inner))
    }

    pub fn try_acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        permits: u32,
        lease: Duration,
    ) -> Result<Option<Permit>, Error> {
        let inner = self.runtime.block_on(self.inner.try_acquire(owner, permits, lease))?;
        Ok(inner.map(|inner| self.permit(inner)))
    }

    pub fn available(&self) -> Result<u32, Error> {
        self.runtime.block_on(self.inner.available())
    }

    pub fn release_with(&self, permit_id: u64) -> Result<(), Error> {
        self.runtime.block_on(self.inner.release_with(permit_id))
    }

    pub fn renew_with(&self, permit_id: u64, lease: Duration) -> Result<Duration, Error> {
        self.runtime.block_on(self.inner.renew_with(permit_id, lease))
    }

    fn permit(&self, inner: crate::Permit) -> Permit {
        Permit {
            inner,
            runtime: Arc::clone(&self.runtime),
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
        self.runtime.block_on(self.inner.renew(lease))
    }

    pub fn release(self) -> Result<(), Error> {
        self.runtime.block_on(self.inner.release())
    }
}
