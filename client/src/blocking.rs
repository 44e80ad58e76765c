//! Synchronous facade: the same client and handles, driven by a small runtime the facade
//! owns. For code without an async runtime; calling it from inside one panics (tokio
//! refuses to block a runtime thread), so async code uses [`crate::Client`] directly.
//!
//! Each coordination object's blocking handle lives in a submodule named like its async
//! one (`blocking/lock.rs` wraps `lock.rs`, and so on); all are re-exported here.

mod barrier;
mod future;
mod latch;
mod lock;
mod map;
mod queue;
mod semaphore;

pub use barrier::Barrier;
pub use future::RemoteFuture;
pub use latch::Latch;
pub use lock::{Lock, LockGuard};
pub use map::Map;
pub use queue::Queue;
pub use semaphore::{Permit, Semaphore};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use engram_proto::{Command, NodeInfo, Response, SlotMap};
use tokio::runtime::Runtime;

use crate::builder::ClientBuilder;
use crate::bytes::{SetOptions, SetOutcome, Versioned};
use crate::counter::CasOutcome;
use crate::error::Error;

/// A blocking client. Clones share the runtime, connections and slot map.
#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<Runtime>,
}

impl Client {
    /// Connects like [`ClientBuilder::connect`], on a runtime with one worker thread: the
    /// connections' reader and writer tasks keep running between calls, so responses and
    /// failures are noticed even while the caller is not in a call.
    pub fn connect(builder: ClientBuilder) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("engram-client")
            .enable_all()
            .build()
            .map_err(|error| Error::Config(format!("cannot start the client runtime: {error}")))?;
        let inner = runtime.block_on(builder.connect())?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// The async client this one drives, sharing its connections.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    pub fn bytes(&self, key: impl Into<Vec<u8>>) -> Bytes {
        Bytes {
            inner: self.inner.bytes(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn counter(&self, key: impl Into<Vec<u8>>) -> Counter {
        Counter {
            inner: self.inner.counter(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn lock(&self, key: impl Into<Vec<u8>>) -> Lock {
        Lock {
            inner: self.inner.lock(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn semaphore(&self, key: impl Into<Vec<u8>>, capacity: u32) -> Semaphore {
        Semaphore {
            inner: self.inner.semaphore(key, capacity),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn barrier(&self, key: impl Into<Vec<u8>>, parties: u32) -> Barrier {
        Barrier {
            inner: self.inner.barrier(key, parties),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn latch(&self, key: impl Into<Vec<u8>>) -> Latch {
        Latch {
            inner: self.inner.latch(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn future(&self, key: impl Into<Vec<u8>>) -> RemoteFuture {
        RemoteFuture {
            inner: self.inner.future(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn map(&self, key: impl Into<Vec<u8>>) -> Map {
        Map {
            inner: self.inner.map(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn queue(&self, key: impl Into<Vec<u8>>) -> Queue {
        Queue {
            inner: self.inner.queue(key),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn ping(&self) -> Result<(), Error> {
        self.block_on(self.inner.ping())
    }

    pub fn info(&self) -> Result<NodeInfo, Error> {
        self.block_on(self.inner.info())
    }

    pub fn slot_map(&self) -> Result<SlotMap, Error> {
        self.block_on(self.inner.slot_map())
    }

    /// See [`crate::Client::call_with`].
    pub fn call(
        &self,
        key: Option<&[u8]>,
        command: Command,
        mutation: bool,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        self.block_on(self.inner.call_with(key, command, mutation, timeout))
    }

    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }
}

/// Blocking [`crate::Bytes`].
#[derive(Clone, Debug)]
pub struct Bytes {
    inner: crate::Bytes,
    runtime: Arc<Runtime>,
}

impl Bytes {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Bytes {
        Bytes {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn get(&self) -> Result<Option<Versioned>, Error> {
        self.runtime.block_on(self.inner.get())
    }

    pub fn set(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.set(value))
    }

    pub fn set_with(&self, value: impl Into<Vec<u8>>, options: SetOptions) -> Result<SetOutcome, Error> {
        self.runtime.block_on(self.inner.set_with(value, options))
    }

    pub fn set_if_absent(&self, value: impl Into<Vec<u8>>) -> Result<SetOutcome, Error> {
        self.runtime.block_on(self.inner.set_if_absent(value))
    }

    pub fn del(&self) -> Result<bool, Error> {
        self.runtime.block_on(self.inner.del())
    }

    pub fn append(&self, value: impl Into<Vec<u8>>) -> Result<(u64, u64), Error> {
        self.runtime.block_on(self.inner.append(value))
    }
}

/// Blocking [`crate::Counter`].
#[derive(Clone, Debug)]
pub struct Counter {
    inner: crate::Counter,
    runtime: Arc<Runtime>,
}

impl Counter {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Counter {
        Counter {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn get(&self) -> Result<i64, Error> {
        self.runtime.block_on(self.inner.get())
    }

    pub fn add(&self, delta: i64) -> Result<i64, Error> {
        self.runtime.block_on(self.inner.add(delta))
    }

    pub fn incr(&self) -> Result<i64, Error> {
        self.runtime.block_on(self.inner.incr())
    }

    pub fn set(&self, value: i64) -> Result<(), Error> {
        self.runtime.block_on(self.inner.set(value))
    }

    pub fn compare_and_set(&self, expected: i64, new: i64) -> Result<CasOutcome, Error> {
        self.runtime.block_on(self.inner.compare_and_set(expected, new))
    }
}
