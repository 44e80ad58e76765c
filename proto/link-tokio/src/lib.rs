//! The tokio adapter of `engram_proto::link`: moves bytes between a tokio socket and a
//! [`Link`] (or a server's [`FrameBuffer`]), and nothing else. The client, the control
//! plane and the tests use it; `engram-proto` itself links no runtime.
//!
//! [`TokioLink`] asks one question at a time, each exchange bounded by a timeout: the
//! control plane's calls to shard ports. A caller with many requests in flight (the
//! client) drives the link's parts itself with [`fill`] and [`handshake`].
//!
//! [`connect`] opens the stream a link runs over: plain TCP, or TLS (tokio-rustls) when
//! given a [`ClientTls`], checking the peer's certificate under the address's host.

use std::time::Duration;

use engram_proto::link::{resolve, CallError, StreamError};
use engram_proto::{FrameBuffer, FrameBufferSizes, HelloReply, Identity, Link, LinkError, LinkEvent, Protocol};
use engram_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A byte stream a link runs over: a TCP socket, or TLS over one.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// Connects to `address` within `timeout`, through a TLS handshake when `tls` is given
/// (in the same time).
pub async fn connect(
    address: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Box<dyn Transport>, CallError> {
    let socket_address = resolve(address)?;
    let connecting = async {
        let stream = TcpStream::connect(socket_address).await?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Box::new(stream) as Box<dyn Transport>);
        };
        let name = engram_tls::server_name(address).map_err(std::io::Error::other)?;
        let secured = tokio_rustls::TlsConnector::from(tls.config())
            .connect(name, stream)
            .await?;
        Ok(Box::new(secured) as Box<dyn Transport>)
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| timed_out(address, timeout))?
        .map_err(|source| CallError::Connect {
            address: address.to_string(),
            source,
        })
}

/// Reads once from `reader` into `buffer`; 0 at the end of the stream.
pub async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buffer: &mut FrameBuffer) -> std::io::Result<usize> {
    let read = reader.read(buffer.read_buffer()).await?;
    buffer.filled(read);
    Ok(read)
}

/// Writes everything the link has to send.
pub async fn flush<S: AsyncWrite + Unpin, P: Protocol, W>(
    writer: &mut S,
    link: &mut Link<P, W>,
) -> std::io::Result<()> {
    writer.write_all(link.output()).await?;
    // TLS holds back what the socket did not take; a plain socket has nothing to flush.
    writer.flush().await?;
    let written = link.output().len();
    link.written(written);
    Ok(())
}

/// Reads until the link has an event.
pub async fn next_event<R: AsyncRead + Unpin, P: Protocol, W>(
    reader: &mut R,
    link: &mut Link<P, W>,
) -> Result<LinkEvent<P::Response, W>, StreamError> {
    loop {
        if let Some(event) = link.next_event()? {
            return Ok(event);
        }
        if fill(reader, link.input()).await? == 0 {
            return Err(link.end_of_stream().into());
        }
    }
}

/// Sends the link's Hello and waits for the reply; requests sent meanwhile are in the
/// link's output once it returns.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin, P: Protocol, W>(
    stream: &mut S,
    link: &mut Link<P, W>,
) -> Result<HelloReply, StreamError> {
    flush(stream, link).await?;
    match next_event(stream, link).await? {
        LinkEvent::Ready(reply) => Ok(reply),
        // A link answers nothing before it is ready.
        LinkEvent::Answer { request_id, .. } => Err(LinkError::AnsweredBeforeHelloReply { request_id }.into()),
    }
}

/// One question at a time to one address.
pub struct TokioLink<P: Protocol> {
    address: String,
    stream: Box<dyn Transport>,
    link: Link<P>,
}

impl<P: Protocol> TokioLink<P> {
    /// Connects (over TLS with `tls`) and shakes hands as `identity`, each within
    /// `timeout`.
    pub async fn connect(
        address: &str,
        identity: Identity<'_>,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<TokioLink<P>, CallError> {
        let stream = connect(address, timeout, tls).await?;
        let link = Link::new(identity, FrameBufferSizes::LINK).map_err(|error| StreamError::from(error).at(address))?;
        let mut link = TokioLink {
            address: address.to_string(),
            stream,
            link,
        };
        let shaken = tokio::time::timeout(timeout, handshake(&mut link.stream, &mut link.link)).await;
        shaken
            .map_err(|_| timed_out(address, timeout))?
            .map_err(|error| error.at(address))?;
        Ok(link)
    }

    /// Asks `request` and waits up to `timeout` for its answer. An answer to an earlier
    /// request whose call timed out is passed over.
    pub async fn call(&mut self, request: &P::Request, timeout: Duration) -> Result<P::Response, CallError> {
        let exchange = async {
            let asked = self.link.send(request, 0, ())?;
            flush(&mut self.stream, &mut self.link).await?;
            loop {
                if let LinkEvent::Answer {
                    request_id, response, ..
                } = next_event(&mut self.stream, &mut self.link).await?
                {
                    if request_id == asked {
                        return Ok(response);
                    }
                }
            }
        };
        let answered: Result<Result<P::Response, StreamError>, _> = tokio::time::timeout(timeout, exchange).await;
        answered
            .map_err(|_| timed_out(&self.address, timeout))?
            .map_err(|error| error.at(&self.address))
    }
}

/// One call on a fresh connection: connect, handshake, ask, close; all within `timeout`
/// each.
pub async fn call_once<P: Protocol>(
    address: &str,
    identity: Identity<'_>,
    request: &P::Request,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<P::Response, CallError> {
    TokioLink::<P>::connect(address, identity, timeout, tls)
        .await?
        .call(request, timeout)
        .await
}

fn timed_out(address: &str, after: Duration) -> CallError {
    CallError::TimedOut {
        address: address.to_string(),
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::{
        admit, ControlProtocol, ControlRequest, ControlResponse, Encode, Family, FrameKind, Port, Response,
    };
    use tokio::net::TcpListener;

    fn frame(kind: FrameKind, request_id: u64, message: &impl Encode) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode_frame(kind, request_id, 0, &mut out).unwrap();
        out
    }

    /// A control plane that admits one connection, answers its first request with
    /// `Rebalance` started, and leaves its second unanswered.
    async fn control_plane(listener: TcpListener) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut input = FrameBuffer::new(FrameBufferSizes::LINK);
        let port = Port {
            name: "engram-control",
            families: &[Family::Control],
            takes_forwarded: false,
        };
        let mut greeted = false;
        loop {
            while let Some((header, payload)) = input.next_frame().unwrap() {
                if !greeted {
                    admit(header.kind, payload, &port, &engram_proto::Gate::Open).unwrap();
                    greeted = true;
                    let reply = HelloReply {
                        node_id: 0,
                        shard_id: 0,
                        shard_count: 0,
                        map_epoch: 1,
                        server_version: "test".into(),
                    };
                    stream
                        .write_all(&frame(FrameKind::HelloReply, 0, &reply))
                        .await
                        .unwrap();
                } else if header.request_id == 1 {
                    let answer = ControlResponse::RebalanceStarted { slots_to_move: 3 };
                    stream.write_all(&frame(FrameKind::Response, 1, &answer)).await.unwrap();
                }
            }
            if fill(&mut stream, &mut input).await.unwrap() == 0 {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_link_calls_and_a_silent_peer_times_it_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let peer = tokio::spawn(control_plane(listener));
        let timeout = Duration::from_secs(10);
        let mut link = TokioLink::<ControlProtocol>::connect(&address, Identity::node(b""), timeout, None)
            .await
            .unwrap();
        let answer = link.call(&ControlRequest::Rebalance, timeout).await.unwrap();
        assert_eq!(answer, ControlResponse::RebalanceStarted { slots_to_move: 3 });
        let silent = link.call(&ControlRequest::Status, Duration::from_millis(50)).await;
        assert!(matches!(silent, Err(CallError::TimedOut { .. })), "{silent:?}");
        drop(link);
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_handshake_is_a_link_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let refusal = Response::Error(engram_proto::ErrorReply {
                code: engram_proto::ErrorCode::Unauthorized.as_u16(),
                message: "credentials refused".into(),
                map_epoch: 0,
            });
            stream
                .write_all(&frame(FrameKind::Response, 0, &refusal))
                .await
                .unwrap();
        });
        let refused =
            TokioLink::<ControlProtocol>::connect(&address, Identity::node(b"wrong"), Duration::from_secs(10), None)
                .await;
        let Err(CallError::Link {
            address: named,
            source: LinkError::Refused(reply),
        }) = refused
        else {
            panic!("not a refusal");
        };
        assert_eq!((named, reply.message.as_str()), (address, "credentials refused"));
    }
}
