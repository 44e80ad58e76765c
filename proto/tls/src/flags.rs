//! The TLS flags engramd and engram-control share (feature `clap`): what a process
//! serves with, whom it trusts when it connects to its peers, and whom it asks for a
//! certificate.

use std::path::PathBuf;

use crate::{ClientTls, ServerTls, ServerTlsFiles, TlsError};

#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsFlags {
    /// Serve TLS on every port with this certificate chain (PEM, leaf first); read again
    /// on SIGHUP, for connections accepted afterwards. Also shown, as read at start, to
    /// the nodes and control plane this process connects to when they ask for one (a
    /// certificate for both server and client authentication, or none of either).
    #[arg(long, env = "ENGRAM_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); read again on SIGHUP.
    #[arg(long, env = "ENGRAM_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every client to show a certificate signed by one of these CAs (PEM):
    /// mutual TLS.
    #[arg(long, env = "ENGRAM_TLS_CLIENT_CA", value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// CAs (PEM) that signed the certificates of the nodes and control plane this
    /// process connects to: in a cluster served over TLS, every link speaks it.
    #[arg(long, env = "ENGRAM_TLS_CA", value_name = "PEM", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsFlags {
    /// What this process serves with; `None` without a certificate.
    pub fn server(&self) -> Result<Option<ServerTls>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        ServerTls::load(files).map(Some)
    }

    /// What this process connects to its peers with: their CA, and its own
    /// certificate; `None` without --tls-ca.
    pub fn peers(&self) -> Result<Option<ClientTls>, TlsError> {
        let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        ClientTls::with_identity(ca, cert, key).map(Some)
    }
}
