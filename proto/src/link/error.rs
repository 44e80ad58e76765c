//! What goes wrong on a link: in the state machine itself ([`LinkError`]), on the stream
//! an adapter drives it over ([`StreamError`]), and on a call to an address
//! ([`CallError`], what adapters report).

use std::time::Duration;

use crate::error::ProtocolError;
use crate::limits::{ABANDONED_REQUESTS_PER_CONNECTION_MAX, IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX};
use crate::message::ErrorReply;

/// Why a link cannot go on. Every variant is final for the link: once the stream is out
/// of step, nothing later on it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the peer broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the peer refused the handshake: {0}")]
    Refused(ErrorReply),
    #[error("the peer answered request {request_id} before it answered the handshake")]
    AnsweredBeforeHelloReply { request_id: u64 },
    #[error("the peer answered request {request_id}, which is not outstanding")]
    NotOutstanding { request_id: u64 },
    #[error("request {request_id} is outstanding already")]
    AlreadyOutstanding { request_id: u64 },
    #[error(
        "{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX} requests are outstanding on this link \
         (in_flight_requests_per_connection_max)"
    )]
    TooManyOutstanding,
    #[error(
        "{ABANDONED_REQUESTS_PER_CONNECTION_MAX} abandoned requests are unanswered on this link \
         (abandoned_requests_per_connection_max): the peer is stuck"
    )]
    TooManyAbandoned,
    /// The peer answered a frame it could not take with an error under the handshake's
    /// request id, and closes the connection.
    #[error("the peer ended the link: {0}")]
    Ended(ErrorReply),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer closed the connection {buffered_bytes} bytes into a frame")]
    Truncated { buffered_bytes: usize },
}

/// What an exchange over a stream ran into: the socket, or the link.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl StreamError {
    /// The error of a call to `address` that ran into this.
    pub fn at(self, address: &str) -> CallError {
        let address = address.to_string();
        match self {
            StreamError::Io(source) => CallError::Io { address, source },
            StreamError::Link(source) => CallError::Link { address, source },
        }
    }
}

/// Why a call over a link to `address` failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("link to {address} failed: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("{address} timed out after {after:?}")]
    TimedOut { address: String, after: Duration },
    #[error("{address}: {source}")]
    Link { address: String, source: LinkError },
}

impl CallError {
    pub fn address(&self) -> &str {
        match self {
            CallError::Connect { address, .. }
            | CallError::Io { address, .. }
            | CallError::TimedOut { address, .. }
            | CallError::Link { address, .. } => address,
        }
    }
}
