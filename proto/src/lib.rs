//! Engram wire protocol. Pure data and functions: no I/O, no runtime.
//!
//! The `serde` feature derives `Serialize`/`Deserialize` on the types tools show as JSON:
//! [`NodeInfo`], [`ShardInfo`], [`ClusterStatus`] and what they contain, and [`SlotMap`].
//!
//! Layout:
//! - [`limits`]: every size and count limit of the protocol, as named constants.
//! - [`frame`]: the fixed 32-byte little-endian frame header, its encoder and its validating decoder.
//! - [`message`]: the rkyv payloads (handshake, requests, responses, slot map, node info).
//! - [`cluster`]: cluster administration payloads (join, heartbeat, migration, status).
//! - [`codec`]: frame + payload together: encode a message into a buffer, decode a validated one.
//! - [`error`]: stable numeric wire error codes and the protocol-layer error enum.
//! - [`slot`]: key to slot hashing with `{hashtag}` support (xxh3).
//! - [`embedded_map`]: the map of a node serving every slot alone, before (or without) a control plane.
//! - [`migration`]: the state of migrating slots, as shipped between shards, and its codec.

pub mod cluster;
pub mod codec;
pub mod embedded_map;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod migration;
pub mod slot;

pub use cluster::*;
pub use codec::{access_payload, decode_payload, deserialize_payload, encode_message, split_frame, Split};
pub use embedded_map::{embedded_map, EMBEDDED_MAP_EPOCH};
pub use error::{ErrorCode, ProtocolError};
pub use frame::{FrameHeader, FrameKind, FRAME_HEADER_BYTES};
pub use message::*;
pub use migration::{
    decode_batch, encode_batch, MigratedCompletion, MigratedEntry, MigratedLockHolder, MigratedObject, MigratedPermit,
    MigratedRecord, SlotBatch,
};
pub use slot::{format_slot_ranges, hashtag, SlotHasher};
