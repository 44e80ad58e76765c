//! The TLS flags the CLI and the bench share: the CA that signed the servers'
//! certificates, and for mutual TLS this side's certificate and key.

use std::path::PathBuf;

use clap::Args;
use engram_client::ClientTls;

#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// CA certificates (PEM) that signed the servers' certificates: connect over TLS.
    /// Needed by a tls:// address (engrams:// for the bench).
    #[arg(long, global = true, env = "ENGRAM_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Certificate (PEM) to show servers that require one (mutual TLS); needs --tls-key.
    #[arg(long, global = true, env = "ENGRAM_CLIENT_TLS_CERT", value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "ENGRAM_CLIENT_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client TLS configuration the flags describe; `None` without --tls-ca.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, String> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => ClientTls::with_identity(ca, cert, key),
            _ => ClientTls::trusting(ca),
        };
        tls.map(Some).map_err(|error| error.to_string())
    }
}
