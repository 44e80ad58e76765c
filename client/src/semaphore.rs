//! The semaphore handle: up to `capacity` permits across processes, each grant leased
//! to an owner id so the permits of a holder that dies come back when its lease ends.
//!
//! The capacity is fixed by the semaphore's first use; every handle must name the same
//! one (another gets `InvalidArgument`). Waiters are served in arrival order.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::arguments::{lease_ms, owner as checked_owner, wait_ms};
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::SemaphoreCommand;

/// A semaphore, from [`Client::semaphore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Semaphore {
    object: Object,
    capacity: u32,
}

/// Permits held under one permit id. Like a [`crate::LockGuard`], **dropping it does not
/// return the permits** (the lease does); call [`Permit::release`] when done.
#[derive(Debug)]
#[must_use = "dropping a permit does not release it; call release() (or let the lease end)"]
pub struct Permit {
    semaphore: Semaphore,
    id: u64,
    permits: u32,
    lease: Duration,
}

impl Client {
    /// A semaphore handle of `capacity` permits (fixed by the semaphore's first use).
    pub fn semaphore(&self, key: impl Into<Vec<u8>>, capacity: u32) -> Semaphore {
        Semaphore::new(self.clone(), key.into(), capacity)
    }
}

impl Semaphore {
    pub(crate) fn new(client: Client, key: Vec<u8>, capacity: u32) -> Semaphore {
        Semaphore {
            object: Object::new(client, key),
            capacity,
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default (a
    /// wait is added to it).
    pub fn timeout(&self, timeout: Duration) -> Semaphore {
        Semaphore {
            object: self.object.with_timeout(timeout),
            ..self.clone()
        }
    }

    /// Takes `permits` permits for `owner` with a `lease`, waiting up to `wait` behind
    /// earlier waiters. A wait that runs out fails with a server `Timeout`
    /// ([`Error::is_wait_timeout`]).
    pub async fn acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        permits: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Permit, Error> {
        let command = Command::from(SemaphoreCommand::Acquire {
            key: self.object.key_vec(),
            owner: checked_owner(owner.into())?,
            capacity: self.capacity,
            permits,
            lease_ms: lease_ms(lease)?,
            wait_ms: wait_ms(wait)?,
        });
        let (id, permits, lease) = granted("semaphore_acquire", self.object.call(command).await?)?;
        Ok(Permit {
            semaphore: self.clone(),
            id,
            permits,
            lease,
        })
    }

    /// Takes `permits` permits if they are free now and nobody waits before us; `None`
    /// otherwise.
    pub async fn try_acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        permits: u32,
        lease: Duration,
    ) -> Result<Option<Permit>, Error> {
        match self.acquire(owner, permits, lease, Duration::ZERO).await {
            Ok(permit) => Ok(Some(permit)),
            Err(error) if error.is_wait_timeout() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Permits free now.
    pub async fn available(&self) -> Result<u32, Error> {
        let command = Command::from(SemaphoreCommand::Available {
            key: self.object.key_vec(),
            capacity: self.capacity,
        });
        match self.object.call(command).await? {
            Response::SemaphoreAvailable { available, .. } => Ok(available),
            other => Err(unexpected("semaphore_available", &other)),
        }
    }

    /// Returns the permits of `permit_id` without a [`Permit`] (for a caller that kept
    /// only the id). Fails with `NotHolder` when they were already returned.
    pub async fn release_with(&self, permit_id: u64) -> Result<(), Error> {
        let command = Command::from(SemaphoreCommand::Release {
            key: self.object.key_vec(),
            permit_id,
        });
        match self.object.call(command).await? {
            Response::Released => Ok(()),
            other => Err(unexpected("semaphore_release", &other)),
        }
    }

    /// Extends the lease of `permit_id` to `lease` from now; returns the lease granted.
    pub async fn renew_with(&self, permit_id: u64, lease: Duration) -> Result<Duration, Error> {
        let command = Command::from(SemaphoreCommand::Renew {
            key: self.object.key_vec(),
            permit_id,
            lease_ms: lease_ms(lease)?,
        });
        let (_, _, lease) = granted("semaphore_renew", self.object.call(command).await?)?;
        Ok(lease)
    }
}

impl Permit {
    /// The permit id, unique per semaphore.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How many permits this grant holds.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The lease of the last grant or renewal, counted from when the server made it.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn semaphore(&self) -> &Semaphore {
        &self.semaphore
    }

    /// Extends the lease to `lease` from now. Fails with `NotHolder` when the lease had
    /// already ended.
    pub async fn renew(&mut self, lease: Duration) -> Result<(), Error> {
        let lease = self.semaphore.renew_with(self.id, lease).await?;
        self.renewed(lease);
        Ok(())
    }

    /// Records a renewal made without borrowing the permit (the blocking facade's).
    pub(crate) fn renewed(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// Returns the permits. Fails with `NotHolder` when the lease had already ended.
    pub async fn release(self) -> Result<(), Error> {
        self.semaphore.release_with(self.id).await
    }
}

fn granted(command: &'static str, response: Response) -> Result<(u64, u32, Duration), Error> {
    match response {
        Response::SemaphoreGranted {
            permit_id,
            permits,
            lease_ms,
        } => Ok((permit_id, permits, Duration::from_millis(lease_ms))),
        other => Err(unexpected(command, &other)),
    }
}
