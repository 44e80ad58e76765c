//! TLS for the client's connections: the handshake over a connected socket, checking
//! the server's certificate under the name of the address the socket was opened to.

use engram_tls::rustls::{self, InvalidMessage};
use engram_tls::{server_name, ClientTls};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// Takes `socket`, connected to `address`, through a TLS handshake.
pub async fn connect(address: &str, socket: TcpStream, tls: &ClientTls) -> Result<TlsStream<TcpStream>, Error> {
    let failed = |detail: String| Error::Tls {
        address: address.to_string(),
        detail,
    };
    let name = server_name(address).map_err(|error| failed(error.to_string()))?;
    TlsConnector::from(tls.config())
        .connect(name, socket)
        .await
        .map_err(|error| failed(describe(&error)))
}

/// The handshake's failure in words; a plain port's answer (an Engram frame, which
/// rustls reads as a record of no known type) is named for what it is.
fn describe(error: &std::io::Error) -> String {
    let cause = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match cause {
        Some(rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType)) => {
            format!("{error}: the port does not speak TLS (connect without tls://)")
        }
        _ => error.to_string(),
    }
}
