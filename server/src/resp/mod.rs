//! The Redis-protocol door: Redis commands translated into Engram's native requests,
//! sent where their keys live, and native answers written as Redis replies.
//!
//! - [`command`]: a command's arguments into requests (or what the door answers itself).
//! - [`reply`]: each request's answer as (part of) the Redis reply.
//! - [`connection`]: one client connection: parse, answer or send, reply in order.
//! - [`order`]: replies in the order their commands came, whatever order answers come in.
//! - [`scan`]: `SCAN` and `DBSIZE` across the shards of a cluster.

pub mod command;
pub mod connection;
pub mod order;
pub mod reply;
pub mod scan;
#[cfg(test)]
mod tests;
