//! TLS on a node's ports: a connection's first byte says whether it opens a TLS
//! handshake; one that does is served under TLS once the handshake completes, one that
//! does not is a plain client at a TLS port, which its door tells so in its own protocol
//! (`TlsRequired`) before closing. The handshake counts against the same
//! `--handshake-timeout-ms` as the Hello that follows it, so a stranger holds a
//! connection for at most twice that, and a stalled handshake is refused and logged like
//! a stalled Hello.

use engram_tls::{opens_tls_handshake, ServerTls, PLAIN_REQUEST_BYTES_DRAINED};
use futures::future::Either;
use futures_lite::AsyncReadExt;
use futures_rustls::TlsAcceptor;

use crate::refusal::Refused;
use crate::runtime::{self, TcpStream};
use crate::shard::Shard;
use crate::stream::Stream;

/// What became of a connection that reached a TLS port.
pub enum Accepted {
    /// Its TLS handshake completed.
    Tls(Stream),
    /// It spoke plain TCP: the socket, for its door to say why it is turned away.
    Plain(TcpStream),
    /// It went away, or its handshake failed or took too long (counted and logged).
    Failed,
}

/// Takes `socket` through a TLS handshake with the node's current certificate, within
/// the shard's handshake timeout.
pub async fn accept(shard: &Shard, socket: TcpStream, tls: &ServerTls) -> Accepted {
    let peer = socket.peer_addr().ok();
    let timeout = shard.admission().handshake_timeout;
    let handshake = async {
        let mut first = [0u8; 1];
        if !matches!(socket.peek(&mut first).await, Ok(1)) {
            return Ok(None);
        }
        if !opens_tls_handshake(first[0]) {
            let mut socket = socket;
            let _ = socket.read(&mut vec![0; PLAIN_REQUEST_BYTES_DRAINED]).await;
            return Ok(Some(Accepted::Plain(socket)));
        }
        let accepted = TlsAcceptor::from(tls.config()).accept(socket).await?;
        Ok(Some(Accepted::Tls(Stream::Tls(Box::new(accepted.into())))))
    };
    let expired = runtime::sleep(timeout);
    match futures::future::select(std::pin::pin!(handshake), std::pin::pin!(expired)).await {
        Either::Left((Ok(Some(accepted)), _)) => accepted,
        Either::Left((Ok(None), _)) => Accepted::Failed,
        Either::Left((Err(error), _)) => {
            let error: std::io::Error = error;
            shard.refused(Refused::TlsHandshake, peer, &format!("TLS handshake failed: {error}"));
            Accepted::Failed
        }
        Either::Right(_) => {
            let detail = format!("no TLS handshake within {timeout:?}");
            shard.refused(Refused::HandshakeTimeout, peer, &detail);
            Accepted::Failed
        }
    }
}
