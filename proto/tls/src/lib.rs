//! TLS as every Engram process sets it up: engramd and engram-control accept with a
//! [`ServerTls`], and clients, the CLI, the bench, nodes and the control plane connect
//! with a [`ClientTls`]. No runtime: the glommio and tokio adapters (futures-rustls,
//! tokio-rustls) wrap their sockets with the configurations made here.
//!
//! Modules:
//! - `files`: PEM certificate chains, private keys and CA bundles read into rustls'
//!   types, each error naming the file.
//! - `server`: [`ServerTls`], an acceptor configuration built from its files and rebuilt
//!   from them on [`ServerTls::reload`] (engramd's SIGHUP); each accept takes the
//!   configuration current at that moment, so a reload reaches new connections only.
//! - `client`: [`ClientTls`], the roots a server's certificate is checked against (and
//!   the certificate a client shows, for mutual TLS), and the name an address is checked
//!   under.
//! - `endpoint`: the `tls://host:port` address form.
//! - `sniff`: whether the first byte a port received opens a TLS handshake, so a TLS
//!   port can tell a plain client, in its own protocol, why it is turned away.
//! - `flags` (feature `clap`): [`TlsFlags`], the TLS flags of engramd and engram-control.
//! - `sync_stream`: [`SyncStream`], a blocking socket plain or under TLS, for std threads.
//! - `test_ca` (feature `test-ca`): a certificate authority and node certificates made
//!   on the spot, for tests.
//!
//! The crypto provider is ring's (see `provider`), named in every builder rather than
//! installed process wide, so a library user's own choice of provider is not disturbed.

mod client;
mod endpoint;
mod error;
mod files;
#[cfg(feature = "clap")]
mod flags;
mod server;
mod sniff;
mod sync_stream;
#[cfg(any(test, feature = "test-ca"))]
pub mod test_ca;
#[cfg(test)]
mod tests;

pub use client::{server_name, ClientTls};
pub use endpoint::{Endpoint, TLS_SCHEME};
pub use error::TlsError;
#[cfg(feature = "clap")]
pub use flags::TlsFlags;
pub use server::{ServerTls, ServerTlsFiles};
pub use sniff::{opens_tls_handshake, PLAIN_AT_TLS_PORT, PLAIN_REQUEST_BYTES_DRAINED, TLS_HANDSHAKE_RECORD_TYPE};
pub use sync_stream::SyncStream;

/// rustls itself, so the runtime adapters use the very version these configurations are.
pub use rustls;

use std::sync::Arc;

/// The provider every configuration is built with: ring's. rustls deprecates it for
/// lacking post-quantum key exchange; aws-lc-rs has it, at the price of a C build with
/// cmake on every machine that builds Engram. Changing provider is this one line.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}
