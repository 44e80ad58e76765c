//! The lock handle: fenced, leased, FIFO mutual exclusion across processes.
//!
//! A lock is held by an **owner id** the caller picks (one per worker or invocation), for
//! a **lease**: if the holder neither renews nor releases before the lease ends, the lock
//! goes to the next waiter. Every grant carries a **fencing token** that strictly
//! increases per lock; pass it to whatever the lock protects so a holder whose lease
//! already ended is refused there.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::arguments::{lease_ms, owner as checked_owner, wait_ms};
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::LockCommand;

/// A lock, from [`Client::lock`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lock {
    object: Object,
}

/// Who holds a lock, from [`Lock::holder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    pub owner: Vec<u8>,
    pub fence: u64,
    /// Time left on the holder's lease when the server answered.
    pub lease_remaining: Duration,
}

/// A held lock. It is a receipt, not a scope: **dropping a guard does not release the
/// lock** (a release is a network call, and `Drop` cannot await one), the lease does.
/// Call [`LockGuard::release`] when done so the next waiter need not wait for the lease.
#[derive(Debug)]
#[must_use = "dropping a guard does not release the lock; call release() (or let the lease end)"]
pub struct LockGuard {
    lock: Lock,
    owner: Vec<u8>,
    fence: u64,
    lease: Duration,
}

impl Client {
    /// A lock handle: fenced, leased, FIFO.
    pub fn lock(&self, key: impl Into<Vec<u8>>) -> Lock {
        Lock::new(self.clone(), key.into())
    }
}

impl Lock {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> Lock {
        Lock {
            object: Object::new(client, key),
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default (a
    /// wait is added to it).
    pub fn timeout(&self, timeout: Duration) -> Lock {
        Lock {
            object: self.object.with_timeout(timeout),
        }
    }

    /// Takes the lock for `owner` with a `lease`, waiting up to `wait` behind earlier
    /// waiters (FIFO). A wait that runs out fails with a server `Timeout`
    /// ([`Error::is_wait_timeout`]); `wait` is at most `WAIT_MS_MAX` (15 minutes), and the
    /// call's timeout is stretched by it. An owner that already holds the lock gets its
    /// current fence back with the lease renewed.
    pub async fn acquire(
        &self,
        owner: impl Into<Vec<u8>>,
        lease: Duration,
        wait: Duration,
    ) -> Result<LockGuard, Error> {
        let owner = checked_owner(owner.into())?;
        let command = Command::from(LockCommand::Acquire {
            key: self.object.key_vec(),
            owner: owner.clone(),
            lease_ms: lease_ms(lease)?,
            wait_ms: wait_ms(wait)?,
        });
        let (fence, lease) = granted("lock_acquire", self.object.call(command).await?)?;
        Ok(LockGuard {
            lock: self.clone(),
            owner,
            fence,
            lease,
        })
    }

    /// Takes the lock if it is free (or already held by `owner`); `None` when another
    /// owner holds it.
    pub async fn try_acquire(&self, owner: impl Into<Vec<u8>>, lease: Duration) -> Result<Option<LockGuard>, Error> {
        match self.acquire(owner, lease, Duration::ZERO).await {
            Ok(guard) => Ok(Some(guard)),
            Err(error) if error.is_wait_timeout() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The current holder, or `None` when the lock is free.
    pub async fn holder(&self) -> Result<Option<LockHolder>, Error> {
        let command = Command::from(LockCommand::Holder {
            key: self.object.key_vec(),
        });
        match self.object.call(command).await? {
            Response::LockHolder { holder } => Ok(holder.map(|holder| LockHolder {
                owner: holder.owner,
                fence: holder.fence,
                lease_remaining: Duration::from_millis(holder.lease_remaining_ms),
            })),
            other => Err(unexpected("lock_holder", &other)),
        }
    }

    /// Releases the lock held by `owner` under `fence`, without a guard (for a caller that
    /// kept only the token, such as a script). Fails with `NotHolder` when that grant is
    /// no longer the holder (its lease ended, or it was released).
    pub async fn release_with(&self, owner: impl AsRef<[u8]>, fence: u64) -> Result<(), Error> {
        let command = Command::from(LockCommand::Release {
            key: self.object.key_vec(),
            owner: owner.as_ref().to_vec(),
            fence,
        });
        match self.object.call(command).await? {
            Response::Released => Ok(()),
            other => Err(unexpected("lock_release", &other)),
        }
    }

    /// Extends the lease of the grant `owner`/`fence` to `lease` from now; returns the
    /// lease granted. Fails with `NotHolder` when that grant is no longer the holder.
    pub async fn renew_with(&self, owner: impl AsRef<[u8]>, fence: u64, lease: Duration) -> Result<Duration, Error> {
        let command = Command::from(LockCommand::Renew {
            key: self.object.key_vec(),
            owner: checked_owner(owner.as_ref().to_vec())?,
            fence,
            lease_ms: lease_ms(lease)?,
        });
        let (_, lease) = granted("lock_renew", self.object.call(command).await?)?;
        Ok(lease)
    }
}

impl LockGuard {
    /// The fencing token of this grant: strictly greater than every earlier grant's.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    pub fn owner(&self) -> &[u8] {
        &self.owner
    }

    /// The lease of the last grant or renewal, counted from when the server made it.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Extends the lease to `lease` from now. Fails with `NotHolder` when the lease had
    /// already ended (someone else may hold the lock now).
    pub async fn renew(&mut self, lease: Duration) -> Result<(), Error> {
        let lease = self.lock.renew_with(&self.owner, self.fence, lease).await?;
        self.renewed(lease);
        Ok(())
    }

    /// Records a renewal made without borrowing the guard (the blocking facade's).
    pub(crate) fn renewed(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// Releases the lock, handing it to the next waiter. Fails with `NotHolder` when the
    /// lease had already ended.
    pub async fn release(self) -> Result<(), Error> {
        self.lock.release_with(&self.owner, self.fence).await
    }
}

fn granted(command: &'static str, response: Response) -> Result<(u64, Duration), Error> {
    match response {
        Response::LockGranted { fence, lease_ms } => Ok((fence, Duration::from_millis(lease_ms))),
        other => Err(unexpected(command, &other)),
    }
}
