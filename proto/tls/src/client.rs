//! The connecting side: which CAs a server's certificate must chain to, and the
//! certificate this side shows when the server asks for one (a node to its peers and to
//! the control plane, under mutual TLS).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::{files, provider, TlsError};

/// A client's TLS configuration; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` and shows no certificate of its own.
    pub fn trusting(ca: &Path) -> Result<ClientTls, TlsError> {
        let roots = files::roots(ca)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Trusts the CA certificates in `ca` and shows the certificate in `cert` (with the
    /// key in `key`) to servers that ask for one.
    pub fn with_identity(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTls, TlsError> {
        let roots = files::roots(ca)?;
        let chain = files::certificates(cert)?;
        let private_key = files::private_key(key)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(|source| TlsError::Identity {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source,
            })?;
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ClientTls")
    }
}

/// The name a server at `address` (`host:port`, `[v6]:port`) must hold a certificate
/// for: its host name, or its IP address.
pub fn server_name(address: &str) -> Result<ServerName<'static>, TlsError> {
    let invalid = || TlsError::ServerName {
        address: address.to_string(),
    };
    let (host, _port) = address.rsplit_once(':').ok_or_else(invalid)?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| invalid())
}
