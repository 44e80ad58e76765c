//! Engram client on tokio: built once, cloned freely, routes each key to its shard.
//!
//! Layout:
//! - [`client`]: `Client`: slot routing, the retrying call path, node commands (ping, info, slot map).
//! - [`builder`]: `ClientBuilder`: address, namespace, credentials, timeout, direct routing; validation.
//! - [`bytes`]: the bytes object handle (get, set with ttl/conditions, del, append).
//! - [`counter`]: the counter handle (get, add, incr, set, compare-and-set).
//! - [`blocking`]: synchronous facade over the same client, on a runtime it owns.
//! - [`error`]: the client error enum and its retryable/final classification.
//! - [`limits`]: client-side limits and tunables (timeouts, backoff, queue sizes).
//! - `connection`: one multiplexed connection: handshake, coalescing writer, dispatching reader.
//! - `pending`: request id to waiting call table of one connection.
//! - `framing`: reads whole validated frames from a stream into one reusable buffer.
//! - `pool`: one lazily opened, reopened-on-failure connection per server address.
//! - `route`: slot map to routing table (owner per slot, resolved shard addresses).
//! - `operations`: operation-id allocation and the completed-below mark.
//! - `backoff`: exponential retry delays with jitter.
//!
//! ```no_run
//! # async fn example() -> Result<(), engram_client::Error> {
//! let client = engram_client::Client::builder("127.0.0.1:7400").connect().await?;
//! let jobs = client.counter("jobs").add(1).await?;
//! client.bytes("greeting").set("hello").await?;
//! # let _ = jobs;
//! # Ok(())
//! # }
//! ```

pub mod blocking;
pub mod builder;
pub mod bytes;
pub mod client;
pub mod counter;
pub mod error;
pub mod limits;

mod backoff;
mod connection;
mod framing;
mod operations;
mod pending;
mod pool;
mod route;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod fake_server;

pub use builder::ClientBuilder;
pub use bytes::{Bytes, SetOptions, SetOutcome, Versioned};
pub use client::Client;
pub use counter::{CasOutcome, Counter};
pub use engram_proto::{Command, ErrorCode, NodeInfo, Response, SetCondition, ShardInfo, SlotMap};
pub use error::{ConnectionError, Error, ServerCode};

/// The README's client example, compiled by `cargo test --doc` so it cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
