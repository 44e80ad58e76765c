//! The wire protocol by hand, over a blocking `std::net::TcpStream` with read and write
//! timeouts (so a silent server fails the test instead of hanging it). Frames are sent as
//! they are, malformed ones included; what comes back is cut into frames by proto's
//! `FrameBuffer`, and the handshake's reply checked as a link checks it.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use engram_proto::limits::PROTOCOL_VERSION;
use engram_proto::link::accept_hello_reply;
use engram_proto::link::blocking::fill;
use engram_proto::{
    decode_payload, encode_message, Command, ErrorCode, FrameBuffer, FrameBufferSizes, FrameHeader, FrameKind, Hello,
    HelloReply, Request, Response,
};

use crate::STEP_TIMEOUT;

/// One frame as received.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

impl RawReply {
    /// The payload as a [`Response`]; panics if the frame is not a valid one.
    pub fn response(&self) -> Response {
        assert_eq!(self.header.kind, FrameKind::Response, "frame kind");
        decode_payload::<Response>(&self.payload).expect("valid Response payload")
    }

    /// The error code when the frame is an error response.
    pub fn error_code(&self) -> Option<ErrorCode> {
        if self.header.kind != FrameKind::Response {
            return None;
        }
        match decode_payload::<Response>(&self.payload) {
            Ok(Response::Error(reply)) => ErrorCode::from_u16(reply.code),
            _ => None,
        }
    }
}

/// What a connection ended with, after [`RawConnection::read_until_closed`].
#[derive(Debug)]
pub struct Closed {
    /// Frames received before the end.
    pub frames: Vec<RawReply>,
    /// Bytes after the last whole frame (a truncated frame, which a server must not send).
    pub trailing_bytes: usize,
    /// The end was a reset (ECONNRESET/EPIPE) rather than an orderly EOF. A server that
    /// closes with unread input in its socket makes the kernel send a reset, so both count
    /// as "closed"; the reset may also swallow an error frame that was sent before it.
    pub reset: bool,
}

/// A hand-driven connection.
pub struct RawConnection {
    stream: TcpStream,
    input: FrameBuffer,
    next_request_id: u64,
}

/// A `Request` with no operation id (reads, or tests that do not need deduplication).
pub fn request(command: Command) -> Request {
    Request {
        op_id: 0,
        completed_below_op_id: 0,
        command,
    }
}

/// Encodes a `Hello` frame.
pub fn hello_frame(request_id: u64, hello: &Hello) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(FrameKind::Hello, request_id, 0, hello, &mut out).expect("encode Hello frame");
    out
}

/// Encodes a `Request` frame.
pub fn request_frame(request_id: u64, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(FrameKind::Request, request_id, 0, request, &mut out).expect("encode Request frame");
    out
}

/// A client's `Hello` for the current protocol version.
pub fn hello(client_id: u64, namespace: &[u8], credentials: &[u8]) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id,
        namespace: namespace.to_vec(),
        credentials: credentials.to_vec(),
        family: engram_proto::Family::Client,
    }
}

impl RawConnection {
    pub fn connect(address: SocketAddr) -> RawConnection {
        let stream = TcpStream::connect_timeout(&address, STEP_TIMEOUT)
            .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
        stream.set_read_timeout(Some(STEP_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(STEP_TIMEOUT)).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConnection {
            stream,
            input: FrameBuffer::new(FrameBufferSizes::LINK),
            next_request_id: 1,
        }
    }

    /// Connects and completes a handshake in namespace "default" without credentials.
    pub fn handshaken(address: SocketAddr, client_id: u64) -> RawConnection {
        let mut connection = RawConnection::connect(address);
        connection.handshake(&hello(client_id, b"default", b""));
        connection
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `hello` and returns the server's `HelloReply`; panics on anything else.
    pub fn handshake(&mut self, hello: &Hello) -> HelloReply {
        self.send_raw(&hello_frame(0, hello));
        let peer = self
            .stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |address| address.to_string());
        let reply = match self.read_frame() {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("{peer} closed the connection instead of answering the Hello"),
            Err(error) => panic!("no HelloReply from {peer} within {STEP_TIMEOUT:?}: {error}"),
        };
        accept_hello_reply(&reply.header, &reply.payload)
            .unwrap_or_else(|error| panic!("expected a HelloReply from {peer}: {error}"))
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Writes bytes, tolerating a server that already closed (reset or broken pipe).
    pub fn send_raw_lenient(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Closes the sending half, so the server sees EOF after what was sent.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Sends a request frame with an explicit request id.
    pub fn send_request(&mut self, request_id: u64, request: &Request) {
        self.send_raw(&request_frame(request_id, request));
    }

    /// Sends `request` and reads the response, checking it answers this request id.
    pub fn call(&mut self, request: &Request) -> Response {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.send_request(request_id, request);
        let reply = match self.read_frame() {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("connection closed instead of answering {}", request.command.name()),
            Err(error) => panic!(
                "no answer to {} within {STEP_TIMEOUT:?}: {error}",
                request.command.name()
            ),
        };
        assert_eq!(reply.header.request_id, request_id, "response echoes the request id");
        reply.response()
    }

    /// Sends `command` (no operation id) and reads the response.
    pub fn command(&mut self, command: Command) -> Response {
        self.call(&request(command))
    }

    /// Reads one whole frame; `Ok(None)` on EOF at a frame boundary. Panics on a
    /// malformed frame from the server or a truncated one.
    pub fn read_frame(&mut self) -> std::io::Result<Option<RawReply>> {
        loop {
            match self.input.next_frame() {
                Ok(Some((header, payload))) => {
                    let payload = payload.to_vec();
                    return Ok(Some(RawReply { header, payload }));
                }
                Ok(None) => {}
                Err(error) => panic!("server sent a malformed frame: {error}"),
            }
            if fill(&mut self.stream, &mut self.input)? == 0 {
                assert_eq!(self.input.buffered_bytes(), 0, "server closed in the middle of a frame");
                return Ok(None);
            }
        }
    }

    /// Reads until the server closes the connection. Panics if it does not close within
    /// the read timeout ([`STEP_TIMEOUT`]).
    pub fn read_until_closed(mut self) -> Closed {
        let mut frames = Vec::new();
        let reset = loop {
            match fill(&mut self.stream, &mut self.input) {
                Ok(0) => break false,
                Ok(_) => {}
                Err(error) if matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => break true,
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("server did not close the connection within {STEP_TIMEOUT:?}")
                }
                Err(error) => panic!("read failed: {error}"),
            }
            while let Ok(Some((header, payload))) = self.input.next_frame() {
                let payload = payload.to_vec();
                frames.push(RawReply { header, payload });
            }
        };
        Closed {
            frames,
            trailing_bytes: self.input.buffered_bytes(),
            reset,
        }
    }

    /// Sets a shorter read timeout (e.g. to check that nothing arrives).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}
