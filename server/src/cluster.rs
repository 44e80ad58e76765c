//! The node's part in a cluster: the slot map every shard routes with, and the two links
//! a node opens itself (to the control plane, blocking, from a plain thread; and to
//! another node's shard, async, from a shard: a migration target, or the owner of a
//! front-port request, see `proxy.rs`).
//!
//! The map lives once per node ([`NodeMap`]); each shard keeps a [`Routing`] built from
//! it and rebuilds it when the node's epoch moves, which costs one relaxed load per
//! request while nothing changes.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::{TcpStream as StdStream, ToSocketAddrs};
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use engram_proto::limits::{FRAME_PAYLOAD_BYTES_MAX, PROTOCOL_VERSION};
use engram_proto::{
    decode_payload, encode_message, split_frame, Decode, Encode, Family, FrameKind, Hello, HelloReply, Protocol,
    ProtocolError, Response, SlotMap, Split, FRAME_HEADER_BYTES, LOST_SHARD_INDEX,
};

use crate::runtime::{self, TcpStream};

/// The node's current map. Written by whoever installs a newer one (the heartbeat
/// thread, or a shard handling `InstallMap`); read by every shard.
pub struct NodeMap {
    epoch: AtomicU64,
    map: RwLock<Arc<SlotMap>>,
    /// Until when (ms since the node started) shards may serve without the map being
    /// checked with the control plane again; `u64::MAX` for a node that runs alone.
    checked_until_ms: AtomicU64,
}

impl NodeMap {
    pub fn new(map: SlotMap) -> NodeMap {
        NodeMap {
            epoch: AtomicU64::new(map.epoch),
            map: RwLock::new(Arc::new(map)),
            checked_until_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Lets shards serve until `until_ms` on the map they hold. Called after every
    /// exchange with the control plane has ended, so that a map it had made newer is
    /// installed before the shards hear of the check (Release, paired with
    /// [`NodeMap::checked_until_ms`]'s Acquire).
    pub fn mark_checked(&self, until_ms: u64) {
        self.checked_until_ms.store(until_ms, Release);
    }

    pub fn checked_until_ms(&self) -> u64 {
        self.checked_until_ms.load(Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }

    pub fn current(&self) -> Arc<SlotMap> {
        // Only ever replaced whole, so a poisoned lock still holds a valid map.
        self.map.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Installs `map` if it is valid and newer than the current one; returns whether it did.
    pub fn install(&self, map: SlotMap) -> Result<bool, String> {
        map.validate()?;
        let mut current = self.map.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.epoch <= current.epoch {
            return Ok(false);
        }
        self.epoch.store(map.epoch, Relaxed);
        *current = Arc::new(map);
        Ok(true)
    }
}

/// Who owns a slot, from one shard's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A shard of this node.
    Local(u16),
    /// Another node's shard: its index in `map.shards`.
    Remote(u32),
    /// Nobody: every copy of the slot is gone, until an operator reclaims it.
    Lost,
}

/// A map turned into a slot-indexed ownership table for this node.
pub struct Routing {
    pub map: Arc<SlotMap>,
    owner_index: Vec<u32>,
    /// Per shard of the map: its local shard id when it is one of ours.
    local_ids: Vec<Option<u16>>,
}

impl Routing {
    pub fn new(map: Arc<SlotMap>, node_id: u64) -> Routing {
        let owner_index = map.owner_table();
        let local_ids = map
            .shards
            .iter()
            .map(|shard| (shard.node_id == node_id).then_some(shard.shard_id))
            .collect();
        Routing {
            map,
            owner_index,
            local_ids,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// Slots the map gives to local shard `shard_id`.
    pub fn slots_of(&self, shard_id: u16) -> usize {
        self.owner_index
            .iter()
            .filter(|&&index| self.local_ids.get(index as usize).copied().flatten() == Some(shard_id))
            .count()
    }

    pub fn owner(&self, slot: u32) -> Owner {
        let index = self.owner_index.get(slot as usize).copied().unwrap_or(0);
        if index == LOST_SHARD_INDEX {
            return Owner::Lost;
        }
        match self.local_ids.get(index as usize).copied().flatten() {
            Some(local) => Owner::Local(local),
            None => Owner::Remote(index),
        }
    }

    /// The address of the shard at `index` in the map, for error messages.
    pub fn address(&self, index: u32) -> &str {
        self.map
            .shards
            .get(index as usize)
            .map_or("unknown", |shard| shard.address.as_str())
    }
}

/// Failures of a link to another process.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("link to {address} failed: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("{address} broke the protocol: {source}")]
    Protocol { address: String, source: ProtocolError },
    #[error("{address} answered the handshake with {answer}")]
    Refused { address: String, answer: String },
    #[error("{address} timed out after {after:?}")]
    TimedOut { address: String, after: Duration },
    #[error("{address} answered request {answered} when request {expected} was asked")]
    OutOfStep {
        address: String,
        expected: u64,
        answered: u64,
    },
}

/// The handshake of a link the node opens for itself, speaking `family`.
pub fn node_hello(credentials: &[u8], family: Family) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: 0,
        namespace: Vec::new(),
        credentials: credentials.to_vec(),
        family,
    }
}

/// One frame off the wire: its kind, the request id it answers, and its payload.
type Frame = (FrameKind, u64, Vec<u8>);

/// Pulls one whole frame off the front of `buffer`, if there is one.
fn take_frame(buffer: &mut Vec<u8>, address: &str) -> Result<Option<Frame>, LinkError> {
    let protocol = |source| LinkError::Protocol {
        address: address.to_string(),
        source,
    };
    match split_frame(buffer).map_err(protocol)? {
        Split::Incomplete { .. } => Ok(None),
        Split::Frame { header, payload } => {
            let bytes = buffer[payload.clone()].to_vec();
            buffer.drain(..payload.end);
            Ok(Some((header.kind, header.request_id, bytes)))
        }
    }
}

fn decode_answer<A: Decode>(kind: FrameKind, payload: &[u8], address: &str) -> Result<A, LinkError> {
    let protocol = |source| LinkError::Protocol {
        address: address.to_string(),
        source,
    };
    match kind {
        FrameKind::Response => A::decode(payload).map_err(protocol),
        found => Err(protocol(ProtocolError::UnexpectedKind {
            found,
            expected: FrameKind::Response,
        })),
    }
}

/// A link asks one question at a time, so an answer to any other request means the
/// stream is out of step (a late answer to a request that timed out, or a broken peer).
fn check_answers(request_id: u64, answered: u64, address: &str) -> Result<(), LinkError> {
    if answered == request_id {
        return Ok(());
    }
    Err(LinkError::OutOfStep {
        address: address.to_string(),
        expected: request_id,
        answered,
    })
}

/// A handshake answer other than a valid `HelloReply` is a refusal (bad credentials, an
/// unsupported version), reported with what the peer said.
fn check_hello_reply(kind: FrameKind, payload: &[u8], address: &str) -> Result<(), LinkError> {
    if kind != FrameKind::HelloReply {
        // Handshake refusals are client-family errors whatever the family asked for.
        let answer = decode_answer::<Response>(kind, payload, address)
            .map_or_else(|error| error.to_string(), |answer| format!("{answer:?}"));
        return Err(LinkError::Refused {
            address: address.to_string(),
            answer,
        });
    }
    decode_payload::<HelloReply>(payload).map_err(|source| LinkError::Protocol {
        address: address.to_string(),
        source,
    })?;
    Ok(())
}

fn encode_request(request_id: u64, request: &impl Encode, out: &mut Vec<u8>, address: &str) -> Result<(), LinkError> {
    request
        .encode_frame(FrameKind::Request, request_id, 0, out)
        .map_err(|source| LinkError::Protocol {
            address: address.to_string(),
            source,
        })
}

fn resolve(address: &str) -> Result<std::net::SocketAddr, LinkError> {
    let connect_error = |source| LinkError::Connect {
        address: address.to_string(),
        source,
    };
    address
        .to_socket_addrs()
        .map_err(connect_error)?
        .next()
        .ok_or_else(|| connect_error(std::io::Error::other("no address")))
}

const READ_BYTES: usize = 64 * 1024;
const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX;

/// A blocking request/answer link, for threads outside the shards (the heartbeat).
pub struct BlockingLink<P: Protocol> {
    family: PhantomData<P>,
    address: String,
    stream: StdStream,
    buffer: Vec<u8>,
    next_request_id: u64,
}

impl<P: Protocol> BlockingLink<P> {
    pub fn connect(address: &str, credentials: &[u8], timeout: Duration) -> Result<BlockingLink<P>, LinkError> {
        let connect_error = |source| LinkError::Connect {
            address: address.to_string(),
            source,
        };
        let socket_address = resolve(address)?;
        let stream = StdStream::connect_timeout(&socket_address, timeout).map_err(connect_error)?;
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(timeout)).map_err(connect_error)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect_error)?;
        let mut link = BlockingLink {
            family: PhantomData,
            address: address.to_string(),
            stream,
            buffer: Vec::new(),
            next_request_id: 1,
        };
        let mut out = Vec::new();
        let hello = node_hello(credentials, P::FAMILY);
        encode_message(FrameKind::Hello, 0, 0, &hello, &mut out).map_err(|source| LinkError::Protocol {
            address: address.to_string(),
            source,
        })?;
        link.write(&out)?;
        let (kind, _, payload) = link.read_frame()?;
        check_hello_reply(kind, &payload, address)?;
        Ok(link)
    }

    pub fn call(&mut self, request: P::Request) -> Result<P::Response, LinkError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut out = Vec::new();
        encode_request(request_id, &request, &mut out, &self.address)?;
        self.write(&out)?;
        let (kind, answered, payload) = self.read_frame()?;
        check_answers(request_id, answered, &self.address)?;
        decode_answer(kind, &payload, &self.address)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.stream.write_all(bytes).map_err(|source| self.io_error(source))
    }

    fn read_frame(&mut self) -> Result<Frame, LinkError> {
        loop {
            if let Some(frame) = take_frame(&mut self.buffer, &self.address)? {
                return Ok(frame);
            }
            let filled = self.buffer.len();
            if filled >= FRAME_BYTES_MAX {
                return Err(self.io_error(std::io::Error::other("frame larger than frame_bytes_max")));
            }
            self.buffer.resize(filled + READ_BYTES, 0);
            let read = self.stream.read(&mut self.buffer[filled..]);
            let read = match read {
                Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                other => other,
            };
            match read {
                Ok(read) => self.buffer.truncate(filled + read),
                Err(source) => {
                    self.buffer.truncate(filled);
                    return Err(self.io_error(source));
                }
            }
        }
    }

    fn io_error(&self, source: std::io::Error) -> LinkError {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return LinkError::TimedOut {
                address: self.address.clone(),
                after: self.stream.read_timeout().ok().flatten().unwrap_or_default(),
            };
        }
        LinkError::Io {
            address: self.address.clone(),
            source,
        }
    }
}

/// An async request/answer link from a shard to another node's shard (migration; the
/// handshake of a front-port proxy link).
/// Every step is bounded by `timeout`, so a stopped or dead peer cannot hold a frozen
/// slot forever.
pub struct PeerLink<P: Protocol> {
    family: PhantomData<P>,
    address: String,
    stream: TcpStream,
    buffer: Vec<u8>,
    next_request_id: u64,
    timeout: Duration,
}

impl<P: Protocol> PeerLink<P> {
    pub async fn connect(address: &str, credentials: &[u8], timeout: Duration) -> Result<PeerLink<P>, LinkError> {
        PeerLink::connect_as(address, &node_hello(credentials, P::FAMILY), timeout).await
    }

    /// Connects and shakes hands with `hello`: a front connection's proxy link speaks for
    /// its client (the client's id and namespace), not for the node.
    pub async fn connect_as(address: &str, hello: &Hello, timeout: Duration) -> Result<PeerLink<P>, LinkError> {
        let connect_error = |source| LinkError::Connect {
            address: address.to_string(),
            source,
        };
        let socket_address = resolve(address)?;
        let stream = TcpStream::connect_timeout(socket_address, timeout)
            .await
            .map_err(|error| connect_error(std::io::Error::other(error.to_string())))?;
        let _ = stream.set_nodelay(true);
        let mut link = PeerLink {
            family: PhantomData,
            address: address.to_string(),
            stream,
            buffer: Vec::new(),
            next_request_id: 1,
            timeout,
        };
        let mut out = Vec::new();
        encode_message(FrameKind::Hello, 0, 0, hello, &mut out).map_err(|source| LinkError::Protocol {
            address: address.to_string(),
            source,
        })?;
        let (kind, _, payload) = link.exchange(&out).await?;
        check_hello_reply(kind, &payload, address)?;
        Ok(link)
    }

    /// The socket and whatever arrived after the handshake, for a caller that keeps many
    /// requests in flight instead of asking one question at a time.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buffer)
    }

    pub async fn call(&mut self, request: P::Request) -> Result<P::Response, LinkError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut out = Vec::new();
        encode_request(request_id, &request, &mut out, &self.address)?;
        let (kind, answered, payload) = self.exchange(&out).await?;
        check_answers(request_id, answered, &self.address)?;
        decode_answer(kind, &payload, &self.address)
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Frame, LinkError> {
        let timeout = self.timeout;
        let address = self.address.clone();
        let exchange = async {
            use futures_lite::{AsyncReadExt, AsyncWriteExt};
            let io_error = |source| LinkError::Io {
                address: self.address.clone(),
                source,
            };
            self.stream.write_all(request).await.map_err(io_error)?;
            loop {
                if let Some(frame) = take_frame(&mut self.buffer, &self.address)? {
                    return Ok(frame);
                }
                let filled = self.buffer.len();
                if filled >= FRAME_BYTES_MAX {
                    return Err(io_error(std::io::Error::other("frame larger than frame_bytes_max")));
                }
                self.buffer.resize(filled + READ_BYTES, 0);
                let read = self.stream.read(&mut self.buffer[filled..]).await;
                match read {
                    Ok(0) => {
                        self.buffer.truncate(filled);
                        return Err(io_error(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
                    }
                    Ok(read) => self.buffer.truncate(filled + read),
                    Err(source) => {
                        self.buffer.truncate(filled);
                        return Err(io_error(source));
                    }
                }
            }
        };
        let sleep = runtime::sleep(timeout);
        match futures::future::select(std::pin::pin!(exchange), std::pin::pin!(sleep)).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(_) => Err(LinkError::TimedOut {
                address,
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::{ShardAddress, SlotRange};

    /// Node 1 has shards 0 and 1, node 2 has shard 0; slots split in thirds.
    fn map(epoch: u64) -> SlotMap {
        let shard = |node_id, shard_id| ShardAddress {
            node_id,
            shard_id,
            address: format!("10.0.0.{node_id}:{}", 7401 + shard_id),
        };
        SlotMap {
            epoch,
            shards: vec![shard(1, 0), shard(1, 1), shard(2, 0)],
            ranges: vec![
                SlotRange {
                    start: 0,
                    end: 5_000,
                    shard_index: 0,
                },
                SlotRange {
                    start: 5_001,
                    end: 10_000,
                    shard_index: 1,
                },
                SlotRange {
                    start: 10_001,
                    end: engram_proto::limits::SLOT_COUNT - 1,
                    shard_index: 2,
                },
            ],
            version_floor: 0,
        }
    }

    #[test]
    fn routing_tells_local_shards_from_remote_ones() {
        let routing = Routing::new(Arc::new(map(3)), 1);
        assert_eq!(routing.owner(0), Owner::Local(0));
        assert_eq!(routing.owner(5_001), Owner::Local(1));
        assert_eq!(routing.owner(10_001), Owner::Remote(2));
        assert_eq!(routing.address(2), "10.0.0.2:7401");
        assert_eq!(routing.slots_of(0), 5_001);
        assert_eq!(routing.slots_of(1), 5_000);
        let other_node = Routing::new(Arc::new(map(3)), 2);
        assert_eq!(other_node.owner(0), Owner::Remote(0));
        assert_eq!(other_node.owner(16_000), Owner::Local(0));
    }

    #[test]
    fn a_node_map_only_moves_forward_and_refuses_invalid_maps() {
        let node_map = NodeMap::new(map(3));
        assert_eq!(node_map.install(map(2)), Ok(false));
        assert_eq!(node_map.install(map(3)), Ok(false));
        assert_eq!(node_map.epoch(), 3);
        let mut broken = map(9);
        broken.ranges.pop();
        assert!(node_map.install(broken).is_err());
        assert_eq!(node_map.install(map(4)), Ok(true));
        assert_eq!((node_map.epoch(), node_map.current().epoch), (4, 4));
    }
}
