//! The client's error enum and its retry classification.

use std::sync::Arc;
use std::time::Duration;

use engram_proto::limits::{KEY_BYTES_MAX, LEASE_MS_MAX, OWNER_BYTES_MAX, TTL_MS_MAX, VALUE_BYTES_MAX, WAIT_MS_MAX};
use engram_proto::link::StreamError;
use engram_proto::{ErrorCode, ErrorReply, LinkError, ProtocolError};

/// A server error code: one this build knows, or the raw number from a newer server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCode {
    Known(ErrorCode),
    /// Not known to this build; treated as final because its meaning is unknown.
    Unknown(u16),
}

impl ServerCode {
    pub fn from_u16(code: u16) -> ServerCode {
        ErrorCode::from_u16(code).map_or(ServerCode::Unknown(code), ServerCode::Known)
    }

    pub fn known(self) -> Option<ErrorCode> {
        match self {
            ServerCode::Known(code) => Some(code),
            ServerCode::Unknown(_) => None,
        }
    }
}

impl std::fmt::Display for ServerCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerCode::Known(code) => write!(formatter, "{code}"),
            ServerCode::Unknown(number) => write!(formatter, "unknown error code {number}"),
        }
    }
}

/// Why a connection could not be used. Cloneable because one failure is reported to
/// every call that was waiting on the connection.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0}")]
    Io(Arc<std::io::Error>),
    #[error("peer closed the connection")]
    Closed,
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("peer broke the protocol: {0}")]
    Protocol(ProtocolError),
    /// The peer's answers went out of step with the requests (an answer to a request
    /// not outstanding, one before the handshake's reply), or it ended the connection
    /// with an error.
    #[error("{0}")]
    Link(LinkError),
    #[error("address {0:?} is not host:port")]
    BadAddress(String),
}

impl From<std::io::Error> for ConnectionError {
    fn from(error: std::io::Error) -> Self {
        ConnectionError::Io(Arc::new(error))
    }
}

impl From<LinkError> for ConnectionError {
    fn from(error: LinkError) -> Self {
        match error {
            LinkError::Closed => ConnectionError::Closed,
            LinkError::Truncated { .. } => ConnectionError::Truncated,
            LinkError::Protocol(error) => ConnectionError::Protocol(error),
            error => ConnectionError::Link(error),
        }
    }
}

impl From<StreamError> for ConnectionError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::Io(error) => error.into(),
            StreamError::Link(error) => error.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error code. A blocking operation whose wait ran out
    /// at the server comes back as this with code `Timeout` (see [`Error::is_wait_timeout`]).
    #[error("server error {code}: {message}")]
    Server {
        code: ServerCode,
        message: String,
        /// Epoch of the map the server routed with.
        map_epoch: u64,
    },
    /// The call's timeout ran out (retries included) before the server answered. For a
    /// blocking operation the call's timeout is its wait plus the call timeout, so this
    /// means the server could not be reached, not that the wait ran out.
    #[error("call timed out after {after:?} (call timeout){}", last_error_suffix(last_error))]
    Timeout {
        after: Duration,
        /// The retryable failure that was being retried when time ran out, if any.
        last_error: Option<Box<Error>>,
    },
    /// TLS could not be set up with `address`: its certificate is not signed by a
    /// trusted CA or not for its name, the port does not speak TLS, or the address has
    /// no name to check. Final: retrying does not change certificates.
    #[error("TLS with {address}: {detail}")]
    Tls { address: String, detail: String },
    /// A connection could not be opened, or died with the call in flight.
    #[error("connection to {address}: {source}")]
    Connection {
        address: String,
        #[source]
        source: ConnectionError,
    },
    /// Connecting to `address` failed `attempts` times in a row (refused, or closed
    /// during the handshake), with a map refresh before each new try when routing
    /// directly. The call stops after `UNREACHABLE_ATTEMPTS_MAX` of these instead of
    /// waiting out its timeout: a node that refuses connections is down or restarting,
    /// and a restarted node comes back without its data. Nothing was sent on these
    /// attempts; as after [`Error::Timeout`], a mutation whose earlier attempt went out
    /// on a connection that then died may or may not have been applied.
    #[error("{address} is unreachable ({attempts} connection attempts): {source}")]
    Unreachable {
        address: String,
        attempts: u32,
        #[source]
        source: ConnectionError,
    },
    /// Every copy of the key's slot is gone: its node died or restarted with empty
    /// memory. Final: the slot fails every operation, rather than serving it empty,
    /// until an operator reclaims it (`engram cluster reclaim`), after which it serves
    /// again, empty. Either the server answered `SlotLost`, or the client's own map
    /// (still, after a refresh) marks the slot lost and nothing was sent.
    ///
    /// The text leaves `message` out: the code says it all, and servers tend to repeat
    /// what it says.
    #[error(
        "slot {slot} is lost (map epoch {map_epoch}): every copy of its data is gone, and it fails every \
         operation until an operator reclaims it"
    )]
    SlotLost {
        slot: u32,
        /// The server's account, or the client's when its map said so.
        message: String,
        /// Epoch of the map that says so (the server's, or the client's).
        map_epoch: u64,
    },
    /// A request could not be encoded (for example it exceeds frame_payload_bytes_max).
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with a response that does not fit the command.
    #[error("unexpected {response} response to {command}")]
    UnexpectedResponse {
        command: &'static str,
        response: &'static str,
    },
    #[error("key of {length} bytes exceeds key_bytes_max ({KEY_BYTES_MAX})")]
    KeyTooLarge { length: usize },
    #[error("value of {length} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})")]
    ValueTooLarge { length: usize },
    #[error("time to live of {ttl:?} exceeds ttl_ms_max ({TTL_MS_MAX} ms)")]
    TtlTooLong { ttl: Duration },
    #[error("wait of {wait:?} exceeds wait_ms_max ({WAIT_MS_MAX} ms, 15 minutes); wait again to wait longer")]
    WaitTooLong { wait: Duration },
    #[error("lease of {lease:?} exceeds lease_ms_max ({LEASE_MS_MAX} ms); renew a shorter lease instead")]
    LeaseTooLong { lease: Duration },
    #[error("owner id of {length} bytes is outside 1..={OWNER_BYTES_MAX} (owner_bytes_max)")]
    InvalidOwner { length: usize },
    /// A node served a slot map that breaks the map's invariants.
    #[error("invalid slot map: {reason}")]
    InvalidSlotMap { reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn last_error_suffix(last_error: &Option<Box<Error>>) -> String {
    match last_error {
        Some(error) => format!("; last error: {error}"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn from_reply(reply: ErrorReply) -> Error {
        Error::Server {
            code: ServerCode::from_u16(reply.code),
            message: reply.message,
            map_epoch: reply.map_epoch,
        }
    }

    /// The error for `slot`, which the client's map at `map_epoch` marks lost.
    pub(crate) fn slot_lost_in_map(slot: u32, map_epoch: u64) -> Error {
        Error::SlotLost {
            slot,
            message: format!("the client's slot map at epoch {map_epoch} marks it lost"),
            map_epoch,
        }
    }

    /// A server's `SlotLost` answer as [`Error::SlotLost`] naming `slot` (the reply does
    /// not carry it: the caller knows the key); other errors unchanged.
    pub(crate) fn at_slot(self, slot: u32) -> Error {
        match self {
            Error::Server {
                code: ServerCode::Known(ErrorCode::SlotLost),
                message,
                map_epoch,
            } => Error::SlotLost {
                slot,
                message,
                map_epoch,
            },
            error => error,
        }
    }

    /// A failure to open a connection as one of a series of [`Error::Unreachable`];
    /// other errors unchanged.
    pub(crate) fn unreachable(self) -> Error {
        match self {
            Error::Connection { address, source } => Error::Unreachable {
                address,
                attempts: 1,
                source,
            },
            error => error,
        }
    }

    /// Counts this error into a run of `before` connection failures in a row: the new
    /// length of the run (recorded in an [`Error::Unreachable`]), or 0 for any other error.
    pub(crate) fn extend_unreachable_run(&mut self, before: u32) -> u32 {
        match self {
            Error::Unreachable { attempts, .. } => {
                *attempts = before.saturating_add(1);
                *attempts
            }
            _ => 0,
        }
    }

    /// What a step of a call returns once the call's deadline passed: the retry loop
    /// stops on it and reports the call's own [`Error::Timeout`] (with its `after`).
    pub(crate) fn deadline_passed() -> Error {
        Error::Timeout {
            after: Duration::ZERO,
            last_error: None,
        }
    }

    /// Whether resending the same operation (same operation id) may succeed. The call
    /// path already retries these until the call's timeout, except connection attempts,
    /// which it stops after `UNREACHABLE_ATTEMPTS_MAX` failures in a row
    /// ([`Error::Unreachable`]); a caller that sees one has run out of time or of
    /// reachable nodes, not of options.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.known().is_some_and(ErrorCode::is_retryable),
            Error::Connection { .. } | Error::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// Whether the key's slot is lost ([`Error::SlotLost`], or a `SlotLost` answer to a
    /// command without a key): final until an operator reclaims the slot.
    pub fn is_slot_lost(&self) -> bool {
        self.is_server(ErrorCode::SlotLost)
    }

    /// Whether the call gave up on an address that refused its connections
    /// ([`Error::Unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// Whether the slot map must be refreshed before a retry can succeed.
    pub fn needs_map_refresh(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.known().is_some_and(ErrorCode::needs_map_refresh),
            _ => false,
        }
    }

    /// Whether the server answered that a blocking operation's wait ran out (code
    /// `Timeout`): the lock or permits stayed taken, the barrier did not fill, the latch
    /// did not open, the future was not completed. Final, never retried: waiting longer
    /// is the caller's decision. Distinct from [`Error::Timeout`], the client giving up.
    pub fn is_wait_timeout(&self) -> bool {
        self.is_server(ErrorCode::Timeout)
    }

    /// Whether the server answered with `code`.
    pub fn is_server(&self, code: ErrorCode) -> bool {
        self.code() == Some(ServerCode::Known(code))
    }

    /// The server's error code, when the server answered with one; `SlotLost` for
    /// [`Error::SlotLost`], whether the server or the client's map said so.
    pub fn code(&self) -> Option<ServerCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::SlotLost { .. } => Some(ServerCode::Known(ErrorCode::SlotLost)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> Error {
        Error::from_reply(ErrorReply {
            code,
            message: "m".into(),
            map_epoch: 3,
        })
    }

    #[test]
    fn server_codes_follow_the_protocol_split() {
        for code in ErrorCode::ALL {
            let error = server(code.as_u16());
            assert_eq!(error.is_retryable(), code.is_retryable(), "{code}");
            assert_eq!(error.needs_map_refresh(), code.needs_map_refresh(), "{code}");
            assert_eq!(error.code(), Some(ServerCode::Known(code)));
        }
    }

    #[test]
    fn unknown_codes_are_final() {
        let error = server(9_999);
        assert_eq!(error.code(), Some(ServerCode::Unknown(9_999)));
        assert!(!error.is_retryable());
        assert!(!error.needs_map_refresh());
    }

    #[test]
    fn connection_failures_retry_and_local_errors_do_not() {
        let connection = Error::Connection {
            address: "127.0.0.1:1".into(),
            source: ConnectionError::Closed,
        };
        assert!(connection.is_retryable());
        let timeout = Error::Timeout {
            after: Duration::from_secs(1),
            last_error: Some(Box::new(connection)),
        };
        assert!(!timeout.is_retryable());
        assert!(timeout.to_string().contains("last error: connection to 127.0.0.1:1"));
        assert!(!Error::KeyTooLarge { length: 1 }.is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
    }

    #[test]
    fn a_wait_timeout_is_final_and_told_apart_from_a_call_timeout() {
        let wait = server(ErrorCode::Timeout.as_u16());
        assert!(wait.is_wait_timeout());
        assert!(!wait.is_retryable());
        let call = Error::Timeout {
            after: Duration::from_secs(1),
            last_error: None,
        };
        assert!(!call.is_wait_timeout());
        assert!(!server(ErrorCode::BarrierBroken.as_u16()).is_wait_timeout());
        assert!(server(ErrorCode::NotHolder.as_u16()).is_server(ErrorCode::NotHolder));
    }

    #[test]
    fn a_lost_slot_is_final_matchable_and_named() {
        let answered = server(ErrorCode::SlotLost.as_u16());
        assert!(answered.is_slot_lost() && !answered.is_retryable());
        let located = answered.at_slot(77);
        assert!(
            matches!(&located, Error::SlotLost { slot: 77, map_epoch: 3, message } if message == "m"),
            "{located:?}"
        );
        assert!(located.is_slot_lost() && !located.is_retryable() && !located.needs_map_refresh());
        assert_eq!(located.code(), Some(ServerCode::Known(ErrorCode::SlotLost)));
        assert!(located.to_string().starts_with("slot 77 is lost"), "{located}");
        let mapped = Error::slot_lost_in_map(5, 9);
        assert!(
            mapped.is_slot_lost() && mapped.to_string().contains("epoch 9"),
            "{mapped}"
        );
        // Other answers keep their shape.
        assert!(matches!(
            server(ErrorCode::Busy.as_u16()).at_slot(1),
            Error::Server { .. }
        ));
    }

    #[test]
    fn failed_connects_count_into_a_run_that_other_errors_end() {
        let refused = || {
            Error::Connection {
                address: "127.0.0.1:1".into(),
                source: ConnectionError::Closed,
            }
            .unreachable()
        };
        let mut error = refused();
        assert!(error.is_unreachable() && error.is_retryable());
        assert_eq!(error.extend_unreachable_run(2), 3);
        assert!(
            error
                .to_string()
                .contains("127.0.0.1:1 is unreachable (3 connection attempts)"),
            "{error}"
        );
        assert_eq!(server(ErrorCode::TryAgain.as_u16()).extend_unreachable_run(2), 0);
        assert!(!Error::Config("x".into()).unreachable().is_unreachable());
    }

    #[test]
    fn limit_errors_name_the_limit() {
        assert!(Error::KeyTooLarge { length: 99_999 }
            .to_string()
            .contains("key_bytes_max"));
        assert!(Error::ValueTooLarge { length: 1 }
            .to_string()
            .contains("value_bytes_max"));
        assert!(Error::TtlTooLong { ttl: Duration::MAX }
            .to_string()
            .contains("ttl_ms_max"));
        assert!(Error::WaitTooLong { wait: Duration::MAX }
            .to_string()
            .contains("wait_ms_max"));
        assert!(Error::LeaseTooLong { lease: Duration::MAX }
            .to_string()
            .contains("lease_ms_max"));
        assert!(Error::InvalidOwner { length: 0 }
            .to_string()
            .contains("owner_bytes_max"));
    }
}
