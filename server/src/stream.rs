//! A connection's byte stream: plain TCP, or TLS over it. Connections, the Redis door,
//! proxy links and peer links read and write through [`Stream`] and never ask which it
//! is, except where plain TCP allows a shortcut (the connection's spinning reads, which
//! go to the socket directly where the runtime does not receive through the ring).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};

use crate::runtime::TcpStream;

/// TLS over one of the runtime's sockets, either side of the handshake.
pub type TlsStream = futures_rustls::TlsStream<TcpStream>;

/// A socket, plain or under TLS. A read dropped before it completes loses no bytes
/// either way: what the socket's multishot receive delivered stays in its buffers
/// until a read takes it (where the kernel has none, reads are readiness-based), and
/// rustls keeps what it
/// decrypted in the stream until a read takes it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The socket under the stream.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.socket().peer_addr().ok()
    }

    pub fn set_nodelay(&self) {
        let _ = self.socket().set_nodelay(true);
    }

    /// Whether the stream's next bytes are the socket's: a read may then go to the
    /// socket. Not under TLS, where they are records for rustls, nor where the runtime
    /// receives through the ring, which takes bytes off the socket as they arrive.
    pub fn reads_from_socket(&self) -> bool {
        matches!(self, Stream::Plain(socket) if !socket.receives_through_ring())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket().as_raw_fd()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_read(context, buffer),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_write(context, bytes),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(context, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_flush(context),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(context),
        }
    }

    fn poll_close(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_close(context),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_close(context),
        }
    }
}
