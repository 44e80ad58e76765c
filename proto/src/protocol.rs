//! The three protocol families as types: what a caller of each sends and receives, so a
//! link is typed by its family and cannot send one family's request on another's
//! connection.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;

use crate::cluster::{ControlRequest, ControlResponse};
use crate::codec::{decode_payload, encode_message};
use crate::error::ProtocolError;
use crate::frame::FrameKind;
use crate::message::{ErrorReply, Family, Request, Response};
use crate::peer::{PeerRequest, PeerResponse};

/// A payload that can be framed.
pub trait Encode {
    fn encode_frame(
        &self,
        kind: FrameKind,
        request_id: u64,
        map_epoch: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError>;
}

impl<T> Encode for T
where
    T: for<'a> rkyv::Serialize<HighSerializer<Vec<u8>, ArenaHandle<'a>, rancor::Error>>,
{
    fn encode_frame(
        &self,
        kind: FrameKind,
        request_id: u64,
        map_epoch: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        encode_message(kind, request_id, map_epoch, self, out)
    }
}

/// A payload that can be validated and read back.
pub trait Decode: Sized {
    fn decode(payload: &[u8]) -> Result<Self, ProtocolError>;
}

impl<T> Decode for T
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        decode_payload::<T>(payload)
    }
}

/// One family: the requests its callers send and the responses they get.
pub trait Protocol {
    const FAMILY: Family;
    type Request: Encode;
    type Response: Decode + std::fmt::Debug;

    /// The error a response carries, if it is one (every family answers errors alike).
    fn error_reply(response: &Self::Response) -> Option<&ErrorReply>;
}

/// Clients (and a node's front port forwarding for them) to a node.
pub struct ClientProtocol;

impl Protocol for ClientProtocol {
    const FAMILY: Family = Family::Client;
    type Request = Request;
    type Response = Response;

    fn error_reply(response: &Response) -> Option<&ErrorReply> {
        match response {
            Response::Error(reply) => Some(reply),
            _ => None,
        }
    }
}

/// The control plane to a node's shards, and shard to shard.
pub struct PeerProtocol;

impl Protocol for PeerProtocol {
    const FAMILY: Family = Family::Peer;
    type Request = PeerRequest;
    type Response = PeerResponse;

    fn error_reply(response: &PeerResponse) -> Option<&ErrorReply> {
        match response {
            PeerResponse::Error(reply) => Some(reply),
            _ => None,
        }
    }
}

/// Nodes and operators to the control plane.
pub struct ControlProtocol;

impl Protocol for ControlProtocol {
    const FAMILY: Family = Family::Control;
    type Request = ControlRequest;
    type Response = ControlResponse;

    fn error_reply(response: &ControlResponse) -> Option<&ErrorReply> {
        match response {
            ControlResponse::Error(reply) => Some(reply),
            _ => None,
        }
    }
}
