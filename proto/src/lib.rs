//! Engram wire protocol. Pure data and functions, no runtime: the only I/O is the
//! blocking adapter of [`link`], over `std::net`, for plain threads.
//!
//! The `serde` feature derives `Serialize`/`Deserialize` on the types tools show as JSON:
//! [`NodeInfo`], [`ShardInfo`], [`ClusterStatus`] and what they contain, and [`SlotMap`].
//!
//! Layout:
//! - [`limits`]: every size and count limit of the protocol, as named constants.
//! - [`frame`]: the fixed 28-byte little-endian frame header, its encoder and its validating decoder.
//! - [`message`]: the handshake, the client family's requests and responses (admin
//!   commands and [`data`] commands), slot map, node info.
//! - [`data`]: the data family, one command enum per object.
//! - [`cluster`]: the control family (join, heartbeat, status, rebalance, where the state lives).
//! - [`control_addresses`]: which of several control-plane addresses to ask next (the leader
//!   learned, standbys' `NotLeader`), sans I/O, for nodes and operators alike.
//! - [`peer`]: the peer family (maps, migration orders and batches).
//! - [`protocol`]: the families as types ([`Protocol`]), which links are typed by.
//! - [`codec`]: frame + payload together: encode a message into a buffer, decode a validated one.
//! - [`read_path`]: a `Get` and its answer read and written by hand, pinned to rkyv's format
//!   (reads are most requests, and rkyv's serializer and validator most of their cost).
//! - [`link`]: one link to a server, sans I/O (handshake, request ids, answers matched to
//!   requests, the frame read buffer servers share), and its blocking adapter.
//! - [`resp`]: the Redis protocol (RESP2, RESP3), sans I/O: requests parsed in place within limits, replies.
//! - [`handshake`]: the server side of the handshake: whether a Hello is admitted.
//! - [`rights`]: the rights a credential may hold (read, write, coordinate, admin, node), which commands name.
//! - [`credentials`]: credentials per tenant and role (a file of hashed tokens, rights,
//!   namespaces), the gate a handshake passes and the grant its requests are checked against.
//! - [`error`]: stable numeric wire error codes and the protocol-layer error enum.
//! - [`slot`]: key to slot hashing with `{hashtag}` support (xxh3).
//! - [`embedded_map`]: the map of a node serving every slot alone, before (or without) a control plane.
//! - [`migration`]: the state of migrating slots, as shipped between shards, and its codec.
//! - [`replication`]: what a primary shard ships to its backups (streams of key images) and
//!   what they answer.

pub mod cluster;
pub mod codec;
pub mod control_addresses;
pub mod credentials;
pub mod data;
pub mod embedded_map;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod link;
pub mod message;
pub mod migration;
pub mod peer;
pub mod protocol;
pub mod read_path;
pub mod replication;
pub mod resp;
pub mod rights;
pub mod slot;

pub use cluster::*;
pub use codec::{access_payload, decode_payload, deserialize_payload, encode_message, split_frame, Split};
pub use control_addresses::{ControlAddresses, ControlAddressesError};
pub use credentials::{constant_time_equal, Denial, Gate, Gatekeeper, Grant};
pub use data::{
    glob_matches, ArchivedBarrierCommand, ArchivedBytesCommand, ArchivedCounterCommand, ArchivedDataCommand,
    ArchivedFutureCommand, ArchivedLatchCommand, ArchivedLockCommand, ArchivedMapCommand, ArchivedQueueCommand,
    ArchivedSemaphoreCommand, BarrierCommand, BytesCommand, CounterCommand, FutureCommand, LatchCommand, LockCommand,
    MapCommand, QueueCommand, SemaphoreCommand,
};
pub use embedded_map::{embedded_map, EMBEDDED_MAP_EPOCH};
pub use error::{ErrorCode, ProtocolError};
pub use frame::{FrameHeader, FrameKind, FRAME_HEADER_BYTES};
pub use handshake::{admit, Admitted, Port, Refusal};
pub use link::{FrameBuffer, FrameBufferSizes, Identity, Link, LinkError, LinkEvent};
pub use message::*;
pub use migration::{
    decode_batch, encode_batch, MigratedCompletion, MigratedEntry, MigratedLockHolder, MigratedObject, MigratedPermit,
    MigratedRecord, SlotBatch,
};
pub use peer::*;
pub use protocol::{ClientProtocol, ControlProtocol, Decode, Encode, PeerProtocol, Protocol};
pub use read_path::{encode_request, encode_response, parse_read_answer, ReadObject, ReadRequest};
pub use replication::{ReplicaAnswer, ReplicaBatch, ReplicaRefusal, ReplicaStreamId};
pub use rights::{Right, Rights};
pub use slot::{format_slot_ranges, hashtag, slot_ranges, SlotHasher};
