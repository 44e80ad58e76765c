//! The frame header: 28 bytes, little-endian, fixed layout.
//!
//! ```text
//! offset size field
//!      0    4 magic          "ENGR" read as a little-endian u32
//!      4    1 version        PROTOCOL_VERSION
//!      5    1 kind           FrameKind
//!      6    2 flags          reserved, must be zero
//!      8    8 request_id     chosen by the client, echoed in the response
//!     16    8 map_epoch      slot-map epoch the sender routed with (0: unknown)
//!     24    4 payload_bytes  length of the rkyv payload that follows
//! ```
//!
//! No checksum of the payload (protocol 9 and earlier had a CRC32), as in Redis's and
//! memcached's protocols. Over TLS (`--tls-cert`, every port and link) each record is
//! authenticated end to end, which a CRC only approximated. Over plain TCP what is left
//! is TCP's 16-bit checksum and the link layer's CRC per hop: a byte flipped in a host's
//! memory, a NIC or a middlebox that recomputes checksums can now reach the store if
//! the payload still validates (a key, a value or a number changed). That is the plain-
//! TCP trade: links that cross anything but a trusted rack should use TLS. The CRC cost
//! the server about 3% of its CPU at pipeline 16 (and the client as much), for every
//! request, to guard against those rare cases only on links without TLS.

use crate::error::ProtocolError;
use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, PROTOCOL_VERSION};

pub const FRAME_HEADER_BYTES: usize = 28;
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"ENGR");

/// What a frame's payload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client to server, first frame of a connection: [`crate::Hello`].
    Hello = 1,
    /// Server to client, answer to `Hello`: [`crate::HelloReply`].
    HelloReply = 2,
    /// Client to server: [`crate::Request`].
    Request = 3,
    /// Server to client: [`crate::Response`].
    Response = 4,
}

impl FrameKind {
    pub fn from_u8(kind: u8) -> Option<FrameKind> {
        match kind {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::HelloReply),
            3 => Some(FrameKind::Request),
            4 => Some(FrameKind::Response),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub request_id: u64,
    pub map_epoch: u64,
    pub payload_bytes: u32,
}

impl FrameHeader {
    /// The header of a frame whose payload is `payload_bytes` long, refused past
    /// `FRAME_PAYLOAD_BYTES_MAX` so no peer is sent a frame it must refuse.
    pub fn for_payload(
        kind: FrameKind,
        request_id: u64,
        map_epoch: u64,
        payload_bytes: usize,
    ) -> Result<FrameHeader, ProtocolError> {
        if payload_bytes > FRAME_PAYLOAD_BYTES_MAX {
            return Err(ProtocolError::FrameTooLarge {
                length: payload_bytes as u64,
            });
        }
        Ok(FrameHeader {
            kind,
            request_id,
            map_epoch,
            payload_bytes: payload_bytes as u32,
        })
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[4] = PROTOCOL_VERSION as u8;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&0u16.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.map_epoch.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_bytes.to_le_bytes());
        out
    }

    /// Parses and validates a header. The payload length is checked against
    /// `FRAME_PAYLOAD_BYTES_MAX` here, before any buffer is sized for it.
    pub fn decode(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, ProtocolError> {
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let magic = u32_at(0);
        if magic != FRAME_MAGIC {
            return Err(ProtocolError::BadMagic { found: magic });
        }
        if u16::from(bytes[4]) != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion { found: bytes[4] });
        }
        let kind = FrameKind::from_u8(bytes[5]).ok_or(ProtocolError::UnknownKind { found: bytes[5] })?;
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags != 0 {
            return Err(ProtocolError::ReservedFlags { found: flags });
        }
        let payload_bytes = u32_at(24);
        if payload_bytes as usize > FRAME_PAYLOAD_BYTES_MAX {
            return Err(ProtocolError::FrameTooLarge {
                length: u64::from(payload_bytes),
            });
        }
        Ok(FrameHeader {
            kind,
            request_id: u64_at(8),
            map_epoch: u64_at(16),
            payload_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_bytes: u32) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Request,
            request_id: 7,
            map_epoch: 3,
            payload_bytes,
        }
    }

    #[test]
    fn round_trip() {
        let h = header(100);
        assert_eq!(FrameHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn a_header_is_made_only_for_a_payload_within_the_limit() {
        let largest = FrameHeader::for_payload(FrameKind::Response, 1, 2, FRAME_PAYLOAD_BYTES_MAX).unwrap();
        assert_eq!(largest.payload_bytes as usize, FRAME_PAYLOAD_BYTES_MAX);
        assert_eq!(
            FrameHeader::for_payload(FrameKind::Response, 1, 2, FRAME_PAYLOAD_BYTES_MAX + 1),
            Err(ProtocolError::FrameTooLarge {
                length: FRAME_PAYLOAD_BYTES_MAX as u64 + 1
            })
        );
    }

    #[test]
    fn claimed_four_gib_is_refused_before_allocation() {
        let mut bytes = header(0).encode();
        bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            FrameHeader::decode(&bytes),
            Err(ProtocolError::FrameTooLarge {
                length: u64::from(u32::MAX)
            })
        );
    }

    #[test]
    fn bad_magic_version_kind_flags() {
        let good = header(1).encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(FrameHeader::decode(&b), Err(ProtocolError::BadMagic { .. })));
        let mut b = good;
        b[4] = 99;
        assert_eq!(
            FrameHeader::decode(&b),
            Err(ProtocolError::UnsupportedVersion { found: 99 })
        );
        let mut b = good;
        b[5] = 0;
        assert_eq!(FrameHeader::decode(&b), Err(ProtocolError::UnknownKind { found: 0 }));
        let mut b = good;
        b[7] = 1;
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(ProtocolError::ReservedFlags { .. })
        ));
    }
}
