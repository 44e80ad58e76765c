//! One link to a server, sans I/O: bytes in, events and bytes out. Every place that asks
//! another process something over frames (clients, the control plane to nodes, nodes to
//! the control plane and to each other, tests) drives a [`Link`] through an adapter that
//! only moves bytes between a socket and it: [`blocking`] here (std sockets), the tokio
//! one in `engram-link-tokio`, the glommio one in the server.
//!
//! A link owns the handshake (its Hello is queued when it is made; the HelloReply is
//! checked, and an answer before it is refused; requests sent meanwhile wait until the
//! peer accepted, so a refusal is never lost to a reset of unread input), numbers
//! requests, matches answers to the
//! requests outstanding ([`Outstanding`], pipelined and bounded) and reads frames into a
//! [`FrameBuffer`], which allocates no more than a validated header asks for.
//!
//! - [`buffer`]: the read buffer cut into validated frames, shared with servers.
//! - [`outstanding`]: request ids to their waiters.
//! - [`error`]: the link's errors, the stream's, and a call's.
//! - [`blocking`]: the adapter over `std::net`.

pub mod blocking;
pub mod buffer;
pub mod error;
pub mod outstanding;
#[cfg(test)]
mod tests;

use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};

pub use buffer::{FrameBuffer, FrameBufferSizes};
pub use error::{CallError, LinkError, StreamError};
pub use outstanding::Outstanding;

use crate::error::ProtocolError;
use crate::frame::{FrameHeader, FrameKind};
use crate::limits::PROTOCOL_VERSION;
use crate::message::{Hello, HelloReply, Response};
use crate::protocol::{Decode, Encode, Protocol};

/// The request id of the handshake, and of a server's parting error; requests count from 1.
pub const HANDSHAKE_REQUEST_ID: u64 = 0;

/// Who a link speaks as: its Hello, but for the version and family, which the link sets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity<'a> {
    /// 0 for a node or the control plane speaking for itself.
    pub client_id: u64,
    pub namespace: &'a [u8],
    pub credentials: &'a [u8],
}

impl<'a> Identity<'a> {
    /// A process speaking for itself, with `credentials`.
    pub fn node(credentials: &'a [u8]) -> Identity<'a> {
        Identity {
            client_id: 0,
            namespace: &[],
            credentials,
        }
    }
}

/// What a link received.
#[derive(Debug)]
pub enum LinkEvent<R, W> {
    /// The peer accepted the handshake.
    Ready(HelloReply),
    /// The answer to an outstanding request, with what waited for it.
    Answer {
        request_id: u64,
        /// The slot-map epoch the peer answered under.
        map_epoch: u64,
        response: R,
        waiter: W,
    },
}

/// A link speaking family `P`, each outstanding request waited for by a `W`.
pub struct Link<P: Protocol, W = ()> {
    ready: bool,
    input: FrameBuffer,
    output: Vec<u8>,
    /// Requests sent before the peer accepted the handshake.
    held: Vec<u8>,
    outstanding: Outstanding<W>,
    family: PhantomData<fn() -> P>,
}

impl<P: Protocol, W> Link<P, W> {
    /// A link whose Hello, speaking as `identity`, is the first thing it sends.
    pub fn new(identity: Identity<'_>, sizes: FrameBufferSizes) -> Result<Link<P, W>, LinkError> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: identity.client_id,
            namespace: identity.namespace.to_vec(),
            credentials: identity.credentials.to_vec(),
            family: P::FAMILY,
        };
        let mut output = Vec::new();
        hello.encode_frame(FrameKind::Hello, HANDSHAKE_REQUEST_ID, 0, &mut output)?;
        Ok(Link {
            ready: false,
            input: FrameBuffer::new(sizes),
            output,
            held: Vec::new(),
            outstanding: Outstanding::default(),
            family: PhantomData,
        })
    }

    /// Queues `request` (held until the peer accepts the handshake) and returns its
    /// request id. Fails, sending nothing, when the request cannot be encoded or too
    /// many are outstanding.
    pub fn send(&mut self, request: &P::Request, map_epoch: u64, waiter: W) -> Result<u64, LinkError> {
        let request_id = self.outstanding.issue(waiter)?;
        let queue = if self.ready { &mut self.output } else { &mut self.held };
        if let Err(error) = request.encode_frame(FrameKind::Request, request_id, map_epoch, queue) {
            self.outstanding.withdraw(request_id);
            return Err(error.into());
        }
        Ok(request_id)
    }

    /// Bytes to write, oldest first.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Bytes queued: to write, and held until the handshake is accepted.
    pub fn queued_bytes(&self) -> usize {
        self.output.len() + self.held.len()
    }

    /// Drops everything queued, freeing its memory (the link is given up).
    pub fn clear_queued(&mut self) {
        self.output = Vec::new();
        self.held = Vec::new();
    }

    /// Drops the first `bytes` of [`Link::output`], which were written.
    pub fn written(&mut self, bytes: usize) {
        if bytes >= self.output.len() {
            self.output.clear();
        } else {
            self.output.drain(..bytes);
        }
    }

    /// Swaps the bytes to write into `into` (which should be empty), keeping `into`'s
    /// buffer for what is sent next: a writer takes everything without a copy.
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        into.clear();
        std::mem::swap(&mut self.output, into);
    }

    /// The buffer the peer's bytes are read into.
    pub fn input(&mut self) -> &mut FrameBuffer {
        &mut self.input
    }

    /// The next event in what was read, or `None` until more bytes arrive. Answers to
    /// abandoned requests are dropped on the way.
    pub fn next_event(&mut self) -> Result<Option<LinkEvent<P::Response, W>>, LinkError> {
        while let Some((header, payload)) = self.input.next_frame()? {
            if !self.ready {
                let reply = accept_hello_reply(&header, payload)?;
                self.ready = true;
                if self.output.is_empty() {
                    std::mem::swap(&mut self.output, &mut self.held);
                } else {
                    self.output.append(&mut self.held);
                }
                return Ok(Some(LinkEvent::Ready(reply)));
            }
            let response = decode_answer::<P>(&header, payload)?;
            if let Some(waiter) = self.outstanding.answer(header.request_id)? {
                return Ok(Some(LinkEvent::Answer {
                    request_id: header.request_id,
                    map_epoch: header.map_epoch,
                    response,
                    waiter,
                }));
            }
        }
        Ok(None)
    }

    /// Why the stream's end ends the link.
    pub fn end_of_stream(&self) -> LinkError {
        self.input.end_of_stream()
    }

    /// Whether the peer accepted the handshake.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn outstanding(&self) -> &Outstanding<W> {
        &self.outstanding
    }

    pub fn outstanding_mut(&mut self) -> &mut Outstanding<W> {
        &mut self.outstanding
    }

    /// The read buffer, with whatever arrived after the handshake: for a caller that
    /// matches answers itself once the link is ready (a client's many tasks).
    pub fn into_input(self) -> FrameBuffer {
        self.input
    }
}

/// Checks the answer to a Hello. A refusal comes as a client-family error response
/// whatever family was asked for, since no family is agreed before the reply.
pub fn accept_hello_reply(header: &FrameHeader, payload: &[u8]) -> Result<HelloReply, LinkError> {
    match header.kind {
        FrameKind::HelloReply => Ok(HelloReply::decode(payload)?),
        FrameKind::Response => match Response::decode(payload)? {
            Response::Error(reply) => Err(LinkError::Refused(reply)),
            _ => Err(LinkError::AnsweredBeforeHelloReply {
                request_id: header.request_id,
            }),
        },
        found => Err(ProtocolError::UnexpectedKind {
            found,
            expected: FrameKind::HelloReply,
        }
        .into()),
    }
}

/// Decodes an answer of family `P`. An error under the handshake's request id is the
/// peer's parting word (its answer to a frame it could not take) and ends the link.
pub fn decode_answer<P: Protocol>(header: &FrameHeader, payload: &[u8]) -> Result<P::Response, LinkError> {
    if header.kind != FrameKind::Response {
        return Err(ProtocolError::UnexpectedKind {
            found: header.kind,
            expected: FrameKind::Response,
        }
        .into());
    }
    let response = P::Response::decode(payload)?;
    if header.request_id == HANDSHAKE_REQUEST_ID {
        return Err(match P::error_reply(&response) {
            Some(reply) => LinkError::Ended(reply.clone()),
            None => LinkError::NotOutstanding {
                request_id: HANDSHAKE_REQUEST_ID,
            },
        });
    }
    Ok(response)
}

/// The first socket address `address` (`host:port`) resolves to.
pub fn resolve(address: &str) -> Result<SocketAddr, CallError> {
    let connect_error = |source| CallError::Connect {
        address: address.to_string(),
        source,
    };
    address
        .to_socket_addrs()
        .map_err(connect_error)?
        .next()
        .ok_or_else(|| connect_error(std::io::Error::other("no address")))
}
