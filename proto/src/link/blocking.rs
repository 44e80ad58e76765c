//! The blocking adapter: a [`Link`] over a `std::net::TcpStream` with read and write
//! timeouts, for plain threads (a node's heartbeat and join), or over a stream its
//! caller wraps that socket in (TLS). It only moves bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::link::{resolve, CallError, FrameBuffer, FrameBufferSizes, Identity, Link, LinkEvent, StreamError};
use crate::message::HelloReply;
use crate::protocol::Protocol;

/// Reads once from `reader` into `buffer`; 0 at the end of the stream. A read that a
/// signal interrupted before any byte came is made again (a process that runs nodes
/// in-process gets signals its runtime's threads send), as `write_all` does for writes.
pub fn fill(reader: &mut impl Read, buffer: &mut FrameBuffer) -> std::io::Result<usize> {
    let read = loop {
        match reader.read(buffer.read_buffer()) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            result => break result?,
        }
    };
    buffer.filled(read);
    Ok(read)
}

/// Writes everything the link has to send.
pub fn flush<P: Protocol, W>(writer: &mut impl Write, link: &mut Link<P, W>) -> std::io::Result<()> {
    writer.write_all(link.output())?;
    // TLS may hold back what the socket did not take; a plain socket has nothing to flush.
    writer.flush()?;
    let written = link.output().len();
    link.written(written);
    Ok(())
}

/// Reads until the link has an event.
pub fn next_event<P: Protocol, W>(
    reader: &mut impl Read,
    link: &mut Link<P, W>,
) -> Result<LinkEvent<P::Response, W>, StreamError> {
    loop {
        if let Some(event) = link.next_event()? {
            return Ok(event);
        }
        if fill(reader, link.input())? == 0 {
            return Err(link.end_of_stream().into());
        }
    }
}

/// Sends the link's Hello and waits for the reply; requests sent meanwhile are in the
/// link's output once it returns.
pub fn handshake<P: Protocol, W>(
    stream: &mut (impl Read + Write),
    link: &mut Link<P, W>,
) -> Result<HelloReply, StreamError> {
    flush(stream, link)?;
    match next_event(stream, link)? {
        LinkEvent::Ready(reply) => Ok(reply),
        // A link answers nothing before it is ready.
        LinkEvent::Answer { request_id, .. } => {
            Err(crate::link::LinkError::AnsweredBeforeHelloReply { request_id }.into())
        }
    }
}

/// One question at a time to one address, each exchange bounded by the timeout given
/// at connection.
pub struct BlockingLink<P: Protocol, S: Read + Write = TcpStream> {
    address: String,
    stream: S,
    timeout: Duration,
    link: Link<P>,
}

impl<P: Protocol> BlockingLink<P> {
    /// Connects and shakes hands as `identity`, each step within `timeout`.
    pub fn connect(address: &str, identity: Identity<'_>, timeout: Duration) -> Result<BlockingLink<P>, CallError> {
        BlockingLink::connect_over(address, identity, timeout, Ok)
    }
}

impl<P: Protocol, S: Read + Write> BlockingLink<P, S> {
    /// Connects, wraps the socket (its read and write timeouts set) with `wrap`, and
    /// shakes hands as `identity` over what it made, each step within `timeout`.
    pub fn connect_over(
        address: &str,
        identity: Identity<'_>,
        timeout: Duration,
        wrap: impl FnOnce(TcpStream) -> std::io::Result<S>,
    ) -> Result<BlockingLink<P, S>, CallError> {
        let connect_error = |source| CallError::Connect {
            address: address.to_string(),
            source,
        };
        let stream = TcpStream::connect_timeout(&resolve(address)?, timeout).map_err(connect_error)?;
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(timeout)).map_err(connect_error)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect_error)?;
        let stream = wrap(stream).map_err(connect_error)?;
        let link = Link::new(identity, FrameBufferSizes::LINK).map_err(|source| CallError::Link {
            address: address.to_string(),
            source,
        })?;
        let mut link = BlockingLink {
            address: address.to_string(),
            stream,
            timeout,
            link,
        };
        let shaken = handshake(&mut link.stream, &mut link.link);
        shaken.map_err(|error| link.failed(error))?;
        Ok(link)
    }

    /// Asks `request` and waits for its answer. An answer to an earlier request whose
    /// call failed (it timed out) is passed over.
    pub fn call(&mut self, request: P::Request) -> Result<P::Response, CallError> {
        let asked = self
            .link
            .send(&request, 0, ())
            .map_err(|error| self.failed(error.into()))?;
        flush(&mut self.stream, &mut self.link).map_err(|error| self.failed(error.into()))?;
        loop {
            let event = next_event(&mut self.stream, &mut self.link).map_err(|error| self.failed(error))?;
            if let LinkEvent::Answer {
                request_id, response, ..
            } = event
            {
                if request_id == asked {
                    return Ok(response);
                }
            }
        }
    }

    fn failed(&self, error: StreamError) -> CallError {
        match error {
            StreamError::Io(source) if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                CallError::TimedOut {
                    address: self.address.clone(),
                    after: self.timeout,
                }
            }
            error => error.at(&self.address),
        }
    }
}
