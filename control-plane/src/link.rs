//! Framed request/answer over tokio TCP, both ways: the control plane's server side
//! (read a frame, write an answer) and its client side to nodes ([`NodeLink`]).

use std::time::Duration;

use engram_proto::limits::{FRAME_PAYLOAD_BYTES_MAX, PROTOCOL_VERSION};
use engram_proto::{
    decode_payload, encode_message, split_frame, Family, FrameHeader, FrameKind, Hello, HelloReply, PeerRequest,
    PeerResponse, ProtocolError, Response, Split, FRAME_HEADER_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_BYTES: usize = 64 * 1024;
const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{address}: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("{address} broke the protocol: {source}")]
    Protocol { address: String, source: ProtocolError },
    #[error("{address} refused the handshake: {answer}")]
    Refused { address: String, answer: String },
    #[error("{address} timed out after {after:?}")]
    TimedOut { address: String, after: Duration },
    #[error("{address} answered {answer}")]
    Unexpected { address: String, answer: String },
}

/// Reads one whole frame, growing `buffer` only as bytes arrive. `Ok(None)` at a clean
/// end of stream.
pub async fn read_frame(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<(FrameHeader, Vec<u8>)>, ProtocolError> {
    loop {
        if let Split::Frame { header, payload } = split_frame(buffer)? {
            let bytes = buffer[payload.clone()].to_vec();
            buffer.drain(..payload.end);
            return Ok(Some((header, bytes)));
        }
        let filled = buffer.len();
        if filled >= FRAME_BYTES_MAX {
            return Ok(None);
        }
        buffer.resize(filled + READ_BYTES, 0);
        let read = stream.read(&mut buffer[filled..]).await.unwrap_or(0);
        buffer.truncate(filled + read);
        if read == 0 {
            return Ok(None);
        }
    }
}

/// A connection from the control plane to one shard port, speaking the peer family.
pub struct NodeLink {
    address: String,
    stream: TcpStream,
    buffer: Vec<u8>,
    next_request_id: u64,
}

impl NodeLink {
    pub async fn connect(address: &str, credentials: &[u8], timeout: Duration) -> Result<NodeLink, LinkError> {
        let io = |source| LinkError::Io {
            address: address.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| LinkError::TimedOut {
                address: address.to_string(),
                after: timeout,
            })?
            .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let mut link = NodeLink {
            address: address.to_string(),
            stream,
            buffer: Vec::new(),
            next_request_id: 1,
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: 0,
            namespace: Vec::new(),
            credentials: credentials.to_vec(),
            family: Family::Peer,
        };
        let mut out = Vec::new();
        encode_message(FrameKind::Hello, 0, 0, &hello, &mut out).map_err(|source| link.protocol(source))?;
        let (header, payload) = link.exchange(&out, timeout).await?;
        if header.kind != FrameKind::HelloReply {
            let answer = decode_payload::<Response>(&payload)
                .map_or_else(|error| error.to_string(), |answer| format!("{answer:?}"));
            return Err(LinkError::Refused {
                address: address.to_string(),
                answer,
            });
        }
        decode_payload::<HelloReply>(&payload).map_err(|source| link.protocol(source))?;
        Ok(link)
    }

    pub async fn call(&mut self, request: PeerRequest, timeout: Duration) -> Result<PeerResponse, LinkError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut out = Vec::new();
        encode_message(FrameKind::Request, request_id, 0, &request, &mut out)
            .map_err(|source| self.protocol(source))?;
        let (header, payload) = self.exchange(&out, timeout).await?;
        // One question at a time: an answer to another request means the stream is out
        // of step, and nothing read from it can be trusted to belong to this call.
        if header.request_id != request_id {
            return Err(LinkError::Unexpected {
                address: self.address.clone(),
                answer: format!(
                    "an answer to request {} when request {request_id} was asked",
                    header.request_id
                ),
            });
        }
        decode_payload::<PeerResponse>(&payload).map_err(|source| self.protocol(source))
    }

    async fn exchange(&mut self, out: &[u8], timeout: Duration) -> Result<(FrameHeader, Vec<u8>), LinkError> {
        let address = self.address.clone();
        let exchange = async {
            self.stream.write_all(out).await.map_err(|source| LinkError::Io {
                address: address.clone(),
                source,
            })?;
            match read_frame(&mut self.stream, &mut self.buffer).await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => Err(LinkError::Io {
                    address: address.clone(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                }),
                Err(source) => Err(LinkError::Protocol {
                    address: address.clone(),
                    source,
                }),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| LinkError::TimedOut {
                address: self.address.clone(),
                after: timeout,
            })?
    }

    fn protocol(&self, source: ProtocolError) -> LinkError {
        LinkError::Protocol {
            address: self.address.clone(),
            source,
        }
    }
}

/// One call on a fresh connection: connect, handshake, ask, close.
pub async fn call_once(
    address: &str,
    credentials: &[u8],
    command: PeerRequest,
    timeout: Duration,
) -> Result<PeerResponse, LinkError> {
    let mut link = NodeLink::connect(address, credentials, timeout).await?;
    link.call(command, timeout).await
}
