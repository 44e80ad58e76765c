//! A TLS connection opens with a handshake record, whose first byte is its content
//! type, 22. Neither of Engram's plain protocols starts that way (a frame opens with its
//! magic, a RESP command with `*` or a letter), so one peeked byte tells a TLS port that
//! a plain client knocked, and it can say so in that client's protocol before closing.

/// The content type of a TLS handshake record (RFC 8446, section 5.1).
pub const TLS_HANDSHAKE_RECORD_TYPE: u8 = 22;

/// Whether a connection whose first byte is `first_byte` is opening a TLS handshake.
pub fn opens_tls_handshake(first_byte: u8) -> bool {
    first_byte == TLS_HANDSHAKE_RECORD_TYPE
}

/// What a plain client at a TLS port is told, by a node's ports and engram-control's.
pub const PLAIN_AT_TLS_PORT: &str =
    "this port speaks TLS: connect with a tls:// address and the CA of the server's certificate";

/// Bytes a port reads of a plain client's first request before it answers
/// `TlsRequired` and closes: a socket closed with unread bytes is reset, and the reset
/// can overtake the answer. A Hello or a Redis command fits.
pub const PLAIN_REQUEST_BYTES_DRAINED: usize = 8 * 1024;
