//! Wire error codes and the protocol-layer error.
//!
//! Codes are part of the protocol: a code's number and meaning never change once
//! released; new codes take new numbers. Clients sort them into retryable and final with
//! [`ErrorCode::is_retryable`]. The table is mirrored in `ARCHITECTURE.md`.

use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, HELLO_PAYLOAD_BYTES_MAX, PROTOCOL_VERSION};

/// Stable numeric error codes carried in [`crate::ErrorReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame or payload could not be decoded or validated; the connection is closed.
    Malformed = 1,
    /// The peer speaks another protocol version.
    UnsupportedVersion = 2,
    /// The handshake credentials were refused.
    Unauthorized = 3,
    /// The first frame of a connection was not a handshake, or a handshake came twice.
    HandshakeRequired = 4,
    /// The handshake asked for a protocol family this port does not serve (a peer on a
    /// node's front port, the control protocol on a node); the message says where to go.
    FamilyNotServed = 5,
    /// The port speaks TLS and the connection opened in plain TCP: connect with a
    /// `tls://` address and the CA of the server's certificate. Sent in plain text, the
    /// only frame such a connection gets.
    TlsRequired = 6,
    /// The credentials were accepted but do not carry what was asked: the right a command
    /// needs (read, write, coordinate, admin, node), or the namespace named. Final; on a
    /// request the connection stays open, on a handshake it closes.
    Forbidden = 7,
    /// The key's slot is not owned by this shard under the map epoch carried in the reply.
    /// Retryable: refresh the slot map and resend.
    WrongShard = 10,
    /// The key's slot is moving or has moved; retryable after a map refresh.
    Moved = 11,
    /// A transient condition (for example a cut-over in progress); retryable as is.
    TryAgain = 12,
    /// The shard is overloaded; retryable with backoff.
    Busy = 13,
    /// The key holds an object of another type.
    WrongType = 20,
    /// The shard is over its memory limit; reads and deletes still work.
    OutOfMemory = 21,
    /// An arithmetic result would not fit (counters never wrap).
    Overflow = 22,
    /// The key is longer than `KEY_BYTES_MAX`.
    KeyTooLarge = 23,
    /// The value is longer than `VALUE_BYTES_MAX` (appends included).
    ValueTooLarge = 24,
    /// A wait ran out of time.
    Timeout = 25,
    /// An argument is out of its documented range (for example a TTL above `TTL_MS_MAX`).
    InvalidArgument = 26,
    /// The namespace is longer than `NAMESPACE_BYTES_MAX`.
    NamespaceTooLarge = 27,
    /// The keys of one request do not share a slot (give them one `{hash tag}`).
    CrossSlot = 28,
    /// The owner and fence (or permit id) do not name the current holder: the lease
    /// ended, or the caller never held it.
    NotHolder = 40,
    /// The barrier generation the caller waited in was broken by another party's
    /// timeout; the next wait starts a new generation.
    BarrierBroken = 41,
    /// The future was already completed; it is write-once.
    AlreadyCompleted = 42,
    /// The object was deleted while the caller waited on it.
    ObjectDeleted = 43,
    /// The server is shutting down; retryable against another owner after a map refresh.
    ShuttingDown = 30,
    /// A server bug; the message says more.
    Internal = 31,
    /// Every copy of the key's slot is gone (its node died or restarted with empty
    /// memory): the slot answers this to every operation, rather than serving it empty,
    /// until an operator reclaims it (`engram cluster reclaim`).
    SlotLost = 32,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::Malformed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unauthorized,
        ErrorCode::HandshakeRequired,
        ErrorCode::FamilyNotServed,
        ErrorCode::TlsRequired,
        ErrorCode::Forbidden,
        ErrorCode::WrongShard,
        ErrorCode::Moved,
        ErrorCode::TryAgain,
        ErrorCode::Busy,
        ErrorCode::WrongType,
        ErrorCode::OutOfMemory,
        ErrorCode::Overflow,
        ErrorCode::KeyTooLarge,
        ErrorCode::ValueTooLarge,
        ErrorCode::Timeout,
        ErrorCode::InvalidArgument,
        ErrorCode::NamespaceTooLarge,
        ErrorCode::CrossSlot,
        ErrorCode::NotHolder,
        ErrorCode::BarrierBroken,
        ErrorCode::AlreadyCompleted,
        ErrorCode::ObjectDeleted,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::SlotLost,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number; `None` for a number this build does not know (a newer
    /// server), which a client must treat as final.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_u16() == code)
    }

    /// Whether resending the same operation (same operation id) can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::WrongShard | ErrorCode::Moved | ErrorCode::TryAgain | ErrorCode::Busy | ErrorCode::ShuttingDown
        )
    }

    /// Whether the client must refresh its slot map before retrying.
    pub fn needs_map_refresh(self) -> bool {
        matches!(self, ErrorCode::WrongShard | ErrorCode::Moved | ErrorCode::ShuttingDown)
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "Malformed",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::HandshakeRequired => "HandshakeRequired",
            ErrorCode::FamilyNotServed => "FamilyNotServed",
            ErrorCode::TlsRequired => "TlsRequired",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::WrongShard => "WrongShard",
            ErrorCode::Moved => "Moved",
            ErrorCode::TryAgain => "TryAgain",
            ErrorCode::Busy => "Busy",
            ErrorCode::WrongType => "WrongType",
            ErrorCode::OutOfMemory => "OutOfMemory",
            ErrorCode::Overflow => "Overflow",
            ErrorCode::KeyTooLarge => "KeyTooLarge",
            ErrorCode::ValueTooLarge => "ValueTooLarge",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::NamespaceTooLarge => "NamespaceTooLarge",
            ErrorCode::CrossSlot => "CrossSlot",
            ErrorCode::NotHolder => "NotHolder",
            ErrorCode::BarrierBroken => "BarrierBroken",
            ErrorCode::AlreadyCompleted => "AlreadyCompleted",
            ErrorCode::ObjectDeleted => "ObjectDeleted",
            ErrorCode::ShuttingDown => "ShuttingDown",
            ErrorCode::Internal => "Internal",
            ErrorCode::SlotLost => "SlotLost",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes from the network were refused. Every variant maps to
/// [`ErrorCode::Malformed`] (or `UnsupportedVersion`) on the wire, after which the
/// connection is closed: once framing is lost, nothing later on the stream can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad frame magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unknown frame kind {found}")]
    UnknownKind { found: u8 },
    #[error("reserved frame flags {found:#06x} must be zero")]
    ReservedFlags { found: u16 },
    #[error("frame payload of {length} bytes exceeds frame_payload_bytes_max ({FRAME_PAYLOAD_BYTES_MAX})")]
    FrameTooLarge { length: u64 },
    #[error("frame payload of {length} bytes before the handshake exceeds hello_payload_bytes_max ({HELLO_PAYLOAD_BYTES_MAX})")]
    HelloTooLarge { length: u64 },
    #[error("invalid payload: {reason}")]
    InvalidPayload { reason: String },
    #[error("unexpected frame kind {found:?} (expected {expected:?})")]
    UnexpectedKind {
        found: crate::FrameKind,
        expected: crate::FrameKind,
    },
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u16()), "duplicate number for {code}");
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(9999), None);
    }

    #[test]
    fn released_numbers_are_stable() {
        // These numbers are on the wire; changing one breaks deployed clients.
        assert_eq!(ErrorCode::Malformed.as_u16(), 1);
        assert_eq!(ErrorCode::WrongShard.as_u16(), 10);
        assert_eq!(ErrorCode::WrongType.as_u16(), 20);
        assert_eq!(ErrorCode::OutOfMemory.as_u16(), 21);
        assert_eq!(ErrorCode::Timeout.as_u16(), 25);
        assert_eq!(ErrorCode::Internal.as_u16(), 31);
        assert_eq!(ErrorCode::SlotLost.as_u16(), 32);
    }

    #[test]
    fn retryable_split() {
        assert!(ErrorCode::WrongShard.is_retryable());
        assert!(ErrorCode::Busy.is_retryable());
        assert!(!ErrorCode::WrongType.is_retryable());
        assert!(!ErrorCode::OutOfMemory.is_retryable());
        assert!(!ErrorCode::Malformed.is_retryable());
        assert!(!ErrorCode::SlotLost.is_retryable());
    }
}
