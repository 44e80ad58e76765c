//! A blocking socket, plain or under TLS, for the std threads that speak TLS (a node's
//! join and heartbeats, the `/metrics` responder). Timeouts stay the socket's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};

use rustls::{ConnectionCommon, SideData, StreamOwned};

/// A blocking socket, or TLS over it on either side (`C` is rustls'
/// `ClientConnection` or `ServerConnection`).
pub enum SyncStream<C> {
    Plain(TcpStream),
    Tls(Box<StreamOwned<C, TcpStream>>),
}

impl<C, S> SyncStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    /// TLS over `socket`; its handshake happens with the first read or write, under the
    /// socket's timeouts.
    pub fn tls(connection: C, socket: TcpStream) -> SyncStream<C> {
        SyncStream::Tls(Box::new(StreamOwned::new(connection, socket)))
    }
}

impl<C> SyncStream<C> {
    /// The socket under the stream, for its timeouts.
    pub fn socket(&self) -> &TcpStream {
        match self {
            SyncStream::Plain(socket) => socket,
            SyncStream::Tls(tls) => &tls.sock,
        }
    }
}

impl<C, S> Read for SyncStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Plain(socket) => socket.read(buffer),
            SyncStream::Tls(tls) => tls.read(buffer),
        }
    }
}

impl<C, S> Write for SyncStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Plain(socket) => socket.write(bytes),
            SyncStream::Tls(tls) => tls.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SyncStream::Plain(socket) => socket.flush(),
            SyncStream::Tls(tls) => tls.flush(),
        }
    }
}
