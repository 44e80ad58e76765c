//! Synchronous facade: the same client and handles, driven by a small runtime the facade
//! owns, on a worker thread of its own. It works from any thread: a plain thread drives
//! each call itself, and code that runs inside a tokio runtime (an `async fn`, a Lambda
//! handler under the Rust runtime, a `#[tokio::test]`), where tokio forbids starting
//! another runtime's `block_on`, hands the call to the facade's worker and blocks on its
//! answer. Blocking there stalls that runtime's thread for the call, as any blocking call
//! does; async code that can await uses [`crate::Client`] directly.
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

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use engram_proto::{Command, NodeInfo, Response, SlotMap};
use futures::FutureExt;
use tokio::runtime::{Handle, Runtime};

use crate::builder::ClientBuilder;
use crate::bytes::{SetOptions, SetOutcome, Versioned};
use crate::counter::CasOutcome;
use crate::error::Error;

/// The runtime the facade owns, and how a call is driven on it from the caller's thread.
/// Shared by a client, its clones and their handles; the runtime stops with the last.
pub(crate) struct Driver {
    /// Always `Some` until dropped: `Drop` takes it to choose how it shuts down.
    runtime: Option<Runtime>,
}

impl Driver {
    /// A runtime with one worker thread: the connections' reader and writer tasks keep
    /// running between calls, so responses and failures are noticed even while the caller
    /// is not in a call.
    fn start() -> Result<Driver, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("engram-client")
            .enable_all()
            .build()
            .map_err(|error| Error::Config(format!("cannot start the client runtime: {error}")))?;
        Ok(Driver { runtime: Some(runtime) })
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime is only taken on drop")
    }

    /// Runs `call` to its end on the facade's runtime, blocking the calling thread.
    pub(crate) fn run<T: Send + 'static>(&self, call: impl Future<Output = T> + Send + 'static) -> T {
        let runtime = self.runtime();
        if Handle::try_current().is_err() {
            // A plain thread: it drives the call itself, with no hop to another thread.
            return runtime.block_on(call);
        }
        // Inside a runtime's context tokio refuses `block_on` (it would block that
        // runtime's thread from inside it). The call runs as a task on the facade's own
        // worker instead, and this thread waits for its answer on a plain channel, which
        // tokio does not police. A panic in the call is passed on to the caller.
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = answer.send(AssertUnwindSafe(call).catch_unwind().await);
        });
        match answered.recv() {
            Ok(Ok(output)) => output,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The task is only dropped unrun when the runtime shuts down, and this
            // driver keeps it running while it is borrowed.
            Err(_) => unreachable!("the engram client runtime dropped a call"),
        }
    }

    /// Runs the call `call` makes of a copy of `handle` (calls on the runtime must own
    /// what they use).
    pub(crate) fn call<H: Clone, F>(&self, handle: &H, call: impl FnOnce(H) -> F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.run(call(handle.clone()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if Handle::try_current().is_ok() {
                // A plain drop waits for the worker thread to stop, which tokio forbids
                // inside a runtime's context: let it stop on its own.
                runtime.shutdown_background();
            }
        }
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Driver").finish_non_exhaustive()
    }
}

/// A blocking client. Clones share the runtime, connections and slot map. Usable from
/// any thread, including one running async code (see the module documentation).
#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
    driver: Arc<Driver>,
}

impl Client {
    /// Connects like [`ClientBuilder::connect`], on a runtime of its own with one worker
    /// thread: the connections' reader and writer tasks keep running between calls, so
    /// responses and failures are noticed even while the caller is not in a call.
    pub fn connect(builder: ClientBuilder) -> Result<Client, Error> {
        let driver = Driver::start()?;
        let inner = driver.run(builder.connect())?;
        Ok(Client {
            inner,
            driver: Arc::new(driver),
        })
    }

    /// The async client this one drives, sharing its connections.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    pub fn bytes(&self, key: impl Into<Vec<u8>>) -> Bytes {
        Bytes {
            inner: self.inner.bytes(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn counter(&self, key: impl Into<Vec<u8>>) -> Counter {
        Counter {
            inner: self.inner.counter(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn lock(&self, key: impl Into<Vec<u8>>) -> Lock {
        Lock {
            inner: self.inner.lock(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn semaphore(&self, key: impl Into<Vec<u8>>, capacity: u32) -> Semaphore {
        Semaphore {
            inner: self.inner.semaphore(key, capacity),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn barrier(&self, key: impl Into<Vec<u8>>, parties: u32) -> Barrier {
        Barrier {
            inner: self.inner.barrier(key, parties),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn latch(&self, key: impl Into<Vec<u8>>) -> Latch {
        Latch {
            inner: self.inner.latch(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn future(&self, key: impl Into<Vec<u8>>) -> RemoteFuture {
        RemoteFuture {
            inner: self.inner.future(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn map(&self, key: impl Into<Vec<u8>>) -> Map {
        Map {
            inner: self.inner.map(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn queue(&self, key: impl Into<Vec<u8>>) -> Queue {
        Queue {
            inner: self.inner.queue(key),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn ping(&self) -> Result<(), Error> {
        self.driver
            .call(&self.inner, |client| async move { client.ping().await })
    }

    pub fn info(&self) -> Result<NodeInfo, Error> {
        self.driver
            .call(&self.inner, |client| async move { client.info().await })
    }

    pub fn slot_map(&self) -> Result<SlotMap, Error> {
        self.driver
            .call(&self.inner, |client| async move { client.slot_map().await })
    }

    /// See [`crate::Client::call_with`].
    pub fn call(
        &self,
        key: Option<&[u8]>,
        command: Command,
        mutation: bool,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        let key = key.map(<[u8]>::to_vec);
        self.driver.call(&self.inner, |client| async move {
            client.call_with(key.as_deref(), command, mutation, timeout).await
        })
    }
}

/// Blocking [`crate::Bytes`].
#[derive(Clone, Debug)]
pub struct Bytes {
    inner: crate::Bytes,
    driver: Arc<Driver>,
}

impl Bytes {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Bytes {
        Bytes {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn get(&self) -> Result<Option<Versioned>, Error> {
        self.driver
            .call(&self.inner, |handle| async move { handle.get().await })
    }

    pub fn set(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |bytes| async move { bytes.set(value).await })
    }

    pub fn set_with(&self, value: impl Into<Vec<u8>>, options: SetOptions) -> Result<SetOutcome, Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |bytes| async move { bytes.set_with(value, options).await })
    }

    pub fn set_if_absent(&self, value: impl Into<Vec<u8>>) -> Result<SetOutcome, Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |bytes| async move { bytes.set_if_absent(value).await })
    }

    pub fn del(&self) -> Result<bool, Error> {
        self.driver
            .call(&self.inner, |handle| async move { handle.del().await })
    }

    pub fn append(&self, value: impl Into<Vec<u8>>) -> Result<(u64, u64), Error> {
        let value = value.into();
        self.driver
            .call(&self.inner, |bytes| async move { bytes.append(value).await })
    }
}

/// Blocking [`crate::Counter`].
#[derive(Clone, Debug)]
pub struct Counter {
    inner: crate::Counter,
    driver: Arc<Driver>,
}

impl Counter {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Counter {
        Counter {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn get(&self) -> Result<i64, Error> {
        self.driver
            .call(&self.inner, |handle| async move { handle.get().await })
    }

    pub fn add(&self, delta: i64) -> Result<i64, Error> {
        self.driver
            .call(&self.inner, |counter| async move { counter.add(delta).await })
    }

    pub fn incr(&self) -> Result<i64, Error> {
        self.driver
            .call(&self.inner, |handle| async move { handle.incr().await })
    }

    pub fn set(&self, value: i64) -> Result<(), Error> {
        self.driver
            .call(&self.inner, |counter| async move { counter.set(value).await })
    }

    pub fn compare_and_set(&self, expected: i64, new: i64) -> Result<CasOutcome, Error> {
        self.driver.call(&self.inner, |counter| async move {
            counter.compare_and_set(expected, new).await
        })
    }
}
