//! The Redis protocol (RESP2 and RESP3), sans I/O, for a server that answers Redis
//! clients: requests parsed in place within limits, replies encoded into a buffer.
//!
//! A connection parses each command of what it read with its [`RequestParser`] (under
//! [`RequestLimits::UNAUTHENTICATED`] until it authenticates), reads the arguments as
//! slices of its buffer, and answers with a [`ReplyWriter`] in the [`RespVersion`] the
//! client asked for.
//!
//! - [`parse`]: requests (arrays of bulk strings, inline commands) into argument ranges.
//! - [`reply`]: replies, in either version.

pub mod parse;
pub mod reply;
#[cfg(test)]
mod tests;

pub use parse::{Arg, Limit, Parsed, RequestLimits, RequestParser, RespError};
pub use reply::{ReplyWriter, RespVersion};
