//! Engram client on tokio: built once, cloned freely, routes each key to its shard.
//!
//! Layout:
//! - [`client`]: `Client`: slot routing, the retrying call path, node commands (ping, info, slot map).
//! - [`builder`]: `ClientBuilder`: address, namespace, credentials, timeout, direct routing; validation.
//! - `config`: the validated settings a client runs with, and the cap on call timeouts.
//! - [`bytes`]: the bytes object handle (get, set with ttl/conditions, del, append).
//! - [`counter`]: the counter handle (get, add, incr, set, compare-and-set).
//! - [`lock`]: the lock handle (acquire with lease and wait, try, holder) and its guard
//!   (fence, renew, release).
//! - [`semaphore`]: the semaphore handle (acquire permits, try, available) and its permit.
//! - [`barrier`]: the cyclic barrier handle (wait: generation and arrival index).
//! - [`latch`]: the count-down latch handle (try-set count, count down, count, wait).
//! - [`future`]: the write-once value handle (complete, get with wait, try-get).
//! - [`map`]: the map handle (get, set, del, get-all, incr of fields).
//! - [`queue`]: the double-ended queue handle (push, blocking pop at either end, len).
//! - [`admin`]: cluster administration calls to engram-control (status, rebalance, drain,
//!   reclaim), one exchange each, with their own error enum.
//! - [`blocking`]: synchronous facade over the same client and handles, on a runtime it owns,
//!   usable from plain threads and from inside a tokio runtime (one submodule per
//!   coordination object, mirroring the async ones).
//! - [`error`]: the client error enum and its retryable/final classification (a lost slot
//!   and an unreachable node end a call early).
//! - [`limits`]: client-side limits and tunables (timeouts, backoff, connection attempts to
//!   an unreachable node, queue sizes).
//! - `connection`: one multiplexed connection: handshake, in-flight places, dispatching reader.
//! - `outbound`: a connection's outgoing frames: written inline by callers when the socket
//!   is free, else queued for the coalescing writer task.
//! - `pending`: request id to waiting call table of one connection, matched with proto's
//!   `Outstanding`, and the in-flight places each outstanding request holds.
//! - `pool`: one lazily opened, reopened-on-failure connection per server address.
//! - `route`: slot map to routing table (owner per slot, resolved shard addresses).
//! - `tls`: the TLS handshake of a connection, and its failures in words.
//! - `object`: what every coordination handle holds, and how it sends a command.
//! - `arguments`: waits, leases and owner ids in wire form, checked against the limits.
//! - `operations`: operation-id allocation and the completed-below mark.
//! - `backoff`: exponential retry delays with jitter.
//!
//! ```no_run
//! # use std::time::Duration;
//! # async fn example() -> Result<(), engram_client::Error> {
//! let client = engram_client::Client::builder("127.0.0.1:7400").connect().await?;
//! let jobs = client.counter("jobs").add(1).await?;
//! client.bytes("greeting").set("hello").await?;
//! let lock = client.lock("db");
//! let guard = lock.acquire("worker-7", Duration::from_secs(10), Duration::from_secs(2)).await?;
//! // ... pass guard.fence() to whatever the lock protects ...
//! guard.release().await?;
//! let passage = client.barrier("phase", 4).wait(Duration::from_secs(5)).await?;
//! # let _ = (jobs, passage);
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod barrier;
pub mod blocking;
pub mod builder;
pub mod bytes;
pub mod client;
pub mod counter;
pub mod error;
pub mod future;
pub mod latch;
pub mod limits;
pub mod lock;
pub mod map;
pub mod queue;
pub mod semaphore;

mod arguments;
mod backoff;
mod config;
mod connection;
mod object;
mod operations;
mod outbound;
mod pending;
mod pool;
mod route;
mod tls;

#[cfg(test)]
mod tests;

pub use barrier::{Barrier, BarrierPassage};
pub use builder::{ClientBuilder, SPIN_MAX};
pub use bytes::{Bytes, SetOptions, SetOutcome, Versioned};
pub use client::Client;
pub use counter::{CasOutcome, Counter};
pub use engram_proto::{Command, ErrorCode, NodeInfo, Response, SetCondition, ShardInfo, SlotMap};
pub use engram_tls::ClientTls;
pub use error::{ConnectionError, Error, ServerCode};
pub use future::RemoteFuture;
pub use latch::Latch;
pub use lock::{Lock, LockGuard, LockHolder};
pub use map::Map;
pub use queue::Queue;
pub use semaphore::{Permit, Semaphore};

/// The README's client example, compiled by `cargo test --doc` so it cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
