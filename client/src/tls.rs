//! TLS for the client's connections: the handshake over a connected socket, checking
//! the server's certificate under the name of the address the socket was opened to.
//!
//! What TLS itself refuses (a certificate of an unknown CA or for another name, a
//! server that does not speak TLS, an alert refusing this client's certificate) is
//! final: retrying changes no certificate. A socket that closes or resets during the
//! handshake (a node full or restarting) is a connection failure like any other, and
//! retried as one.

use engram_tls::rustls::{self, InvalidMessage};
use engram_tls::{server_name, ClientTls};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{ConnectionError, Error};

/// Takes `socket`, connected to `address`, through a TLS handshake.
pub async fn connect(address: &str, socket: TcpStream, tls: &ClientTls) -> Result<TlsStream<TcpStream>, Error> {
    let name = server_name(address).map_err(|error| Error::Tls {
        address: address.to_string(),
        detail: error.to_string(),
    })?;
    TlsConnector::from(tls.config())
        .connect(name, socket)
        .await
        .map_err(|error| classify(address, error))
}

/// A failure of a TLS connection: [`Error::Tls`] when TLS refused it, a retryable
/// [`Error::Connection`] when the socket failed.
pub fn classify(address: &str, error: std::io::Error) -> Error {
    match refusal(&error) {
        Some(detail) => Error::Tls {
            address: address.to_string(),
            detail,
        },
        None => Error::Connection {
            address: address.to_string(),
            source: ConnectionError::from(error),
        },
    }
}

/// What TLS refused, in words, when `error` carries a refusal of rustls; a plain port's
/// answer (an Engram frame, which rustls reads as a record of no known type) is named
/// for what it is.
pub fn refusal(error: &std::io::Error) -> Option<String> {
    let cause = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match cause {
        rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
            format!("{error}: the port does not speak TLS (connect without tls://)")
        }
        _ => error.to_string(),
    })
}
