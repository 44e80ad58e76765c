//! The Redis-protocol door, sans I/O so far: Redis commands translated into Engram's
//! native requests, and native answers written as Redis replies.
//!
//! - [`command`]: a command's arguments into requests (or what the door answers itself).
//! - [`reply`]: each request's answer as (part of) the Redis reply.

pub mod command;
pub mod reply;
#[cfg(test)]
mod tests;
