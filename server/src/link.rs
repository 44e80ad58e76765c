//! The shards' adapter of `engram_proto::link`: moves bytes between a socket of the
//! runtime (through the futures `AsyncRead`/`AsyncWrite` traits `runtime.rs`'s sockets
//! implement) and a [`Link`], and nothing else.
//!
//! The link sits in a `RefCell`, borrowed only between awaits, so the tasks of one link
//! (a proxy link's reader, writer and the connection queueing requests) share it on
//! their shard's thread. [`PeerLink`] asks one question at a time, each step bounded by
//! a timeout: a migration's batches to the target shard.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use engram_proto::link::{resolve, CallError, StreamError};
use engram_proto::{FrameBufferSizes, HelloReply, Identity, Link, LinkError, LinkEvent, Protocol};
use engram_tls::ClientTls;
use futures::future::Either;
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::runtime::{self, TcpStream};
use crate::stream::Stream;

/// Reads once from `reader` into the link's buffer; 0 at the end of the stream.
pub async fn receive<R: AsyncRead + Unpin, P: Protocol, W>(
    reader: &mut R,
    link: &RefCell<Link<P, W>>,
) -> std::io::Result<usize> {
    // The borrow lasts one poll: the runtime's reads are readiness-based, so a pending
    // read holds on to no buffer in between.
    let read = std::future::poll_fn(|context| {
        let mut link = link.borrow_mut();
        Pin::new(&mut *reader).poll_read(context, link.input().read_buffer())
    })
    .await?;
    link.borrow_mut().input().filled(read);
    Ok(read)
}

/// Writes everything the link has to send, through `spare`, which it swaps with the
/// link's output so requests queued meanwhile wait behind the write.
pub async fn send_output<S: AsyncWrite + Unpin, P: Protocol, W>(
    writer: &mut S,
    link: &RefCell<Link<P, W>>,
    spare: &mut Vec<u8>,
) -> std::io::Result<()> {
    link.borrow_mut().take_output(spare);
    let written = writer.write_all(spare).await;
    spare.clear();
    written?;
    // TLS may hold back what the socket did not take; a plain socket has nothing to flush.
    writer.flush().await
}

/// Reads until the link has an event.
pub async fn next_event<R: AsyncRead + Unpin, P: Protocol, W>(
    reader: &mut R,
    link: &RefCell<Link<P, W>>,
) -> Result<LinkEvent<P::Response, W>, StreamError> {
    loop {
        if let Some(event) = link.borrow_mut().next_event()? {
            return Ok(event);
        }
        if receive(reader, link).await? == 0 {
            return Err(link.borrow().end_of_stream().into());
        }
    }
}

/// Sends the link's Hello and waits for the reply; requests sent meanwhile are in the
/// link's output once it returns.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin, P: Protocol, W>(
    stream: &mut S,
    link: &RefCell<Link<P, W>>,
) -> Result<HelloReply, StreamError> {
    send_output(stream, link, &mut Vec::new()).await?;
    match next_event(stream, link).await? {
        LinkEvent::Ready(reply) => Ok(reply),
        // A link answers nothing before it is ready.
        LinkEvent::Answer { request_id, .. } => Err(LinkError::AnsweredBeforeHelloReply { request_id }.into()),
    }
}

/// Connects to `address` within `timeout`, then, with `tls`, takes the connection
/// through a TLS handshake within `timeout` more.
pub async fn connect(address: &str, timeout: Duration, tls: Option<&ClientTls>) -> Result<Stream, CallError> {
    let failed = |source: std::io::Error| CallError::Connect {
        address: address.to_string(),
        source,
    };
    let socket = TcpStream::connect_timeout(resolve(address)?, timeout)
        .await
        .map_err(|error| failed(std::io::Error::other(error.to_string())))?;
    let _ = socket.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(socket));
    };
    let name = engram_tls::server_name(address).map_err(|error| failed(std::io::Error::other(error)))?;
    let handshake = async {
        let connector = futures_rustls::TlsConnector::from(tls.config());
        let secured = connector.connect(name, socket).await.map_err(StreamError::Io)?;
        Ok(Stream::Tls(Box::new(secured.into())))
    };
    within(address, timeout, handshake).await
}

/// Runs `step`, failing it with `TimedOut` once `timeout` passes.
pub async fn within<T>(
    address: &str,
    timeout: Duration,
    step: impl Future<Output = Result<T, StreamError>>,
) -> Result<T, CallError> {
    let sleep = runtime::sleep(timeout);
    match futures::future::select(std::pin::pin!(step), std::pin::pin!(sleep)).await {
        Either::Left((result, _)) => result.map_err(|error| error.at(address)),
        Either::Right(_) => Err(CallError::TimedOut {
            address: address.to_string(),
            after: timeout,
        }),
    }
}

/// A request/answer link from a shard to another node's shard, one question at a time;
/// every step is bounded by its timeout, so a stopped or dead peer cannot hold a frozen
/// slot forever.
pub struct PeerLink<P: Protocol> {
    address: String,
    stream: Stream,
    link: RefCell<Link<P>>,
    timeout: Duration,
}

impl<P: Protocol> PeerLink<P> {
    /// Connects (over TLS with `tls`) and shakes hands as this node (`credentials`),
    /// each within `timeout`.
    pub async fn connect(
        address: &str,
        credentials: &[u8],
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<PeerLink<P>, CallError> {
        let link = Link::new(Identity::node(credentials), FrameBufferSizes::LINK)
            .map_err(|error| StreamError::from(error).at(address))?;
        let mut peer = PeerLink {
            address: address.to_string(),
            stream: connect(address, timeout, tls).await?,
            link: RefCell::new(link),
            timeout,
        };
        within(address, timeout, handshake(&mut peer.stream, &peer.link)).await?;
        Ok(peer)
    }

    /// Asks `request` and waits for its answer. An answer to an earlier request whose
    /// call timed out is passed over.
    pub async fn call(&mut self, request: &P::Request) -> Result<P::Response, CallError> {
        let exchange = async {
            let asked = self.link.borrow_mut().send(request, 0, ())?;
            send_output(&mut self.stream, &self.link, &mut Vec::new()).await?;
            loop {
                if let LinkEvent::Answer {
                    request_id, response, ..
                } = next_event(&mut self.stream, &self.link).await?
                {
                    if request_id == asked {
                        return Ok(response);
                    }
                }
            }
        };
        within(&self.address, self.timeout, exchange).await
    }
}
