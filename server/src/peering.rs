//! How this node reaches the control plane and other nodes from a plain thread (its
//! join, its heartbeats, the settling of migrations): the credentials its Hellos carry
//! and, in a cluster served over TLS, the TLS it connects with (the cluster's CA, and
//! the node's own certificate for peers that ask for one). The shards' own links to
//! other nodes are `link.rs`'s.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use engram_proto::link::blocking::BlockingLink;
use engram_proto::link::CallError;
use engram_proto::{Identity, Protocol};
use engram_tls::rustls::ClientConnection;
use engram_tls::{ClientTls, SyncStream};

/// The credentials and TLS of this node's links.
#[derive(Clone, Default)]
pub struct Peering {
    credentials: Vec<u8>,
    tls: Option<ClientTls>,
}

/// A blocking link's stream: the socket, or TLS over it.
pub type BlockingStream = SyncStream<ClientConnection>;

/// A link to a control-plane process.
pub type ControlLink = BlockingLink<engram_proto::ControlProtocol, BlockingStream>;

impl Peering {
    pub fn new(credentials: Vec<u8>, tls: Option<ClientTls>) -> Peering {
        Peering { credentials, tls }
    }

    pub fn credentials(&self) -> &[u8] {
        &self.credentials
    }

    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// Connects to `address` and shakes hands as this node, each step within `timeout`.
    pub fn connect<P: Protocol>(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<BlockingLink<P, BlockingStream>, CallError> {
        let identity = Identity::node(&self.credentials);
        BlockingLink::connect_over(address, identity, timeout, |socket| self.secure(address, socket))
    }

    /// TLS over `socket` when the cluster speaks it; its handshake happens with the
    /// first bytes written, under the socket's timeouts.
    fn secure(&self, address: &str, socket: TcpStream) -> io::Result<BlockingStream> {
        let Some(tls) = &self.tls else {
            return Ok(SyncStream::Plain(socket));
        };
        let name = engram_tls::server_name(address).map_err(io::Error::other)?;
        let connection = ClientConnection::new(tls.config(), name).map_err(io::Error::other)?;
        Ok(SyncStream::tls(connection, socket))
    }
}
