//! The accepting side: a node's or a control plane's certificate and key, and, for
//! mutual TLS, the CA its clients' certificates must chain to.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::{files, provider, TlsError};

/// Where a server's TLS material lives; read again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM).
    pub key: PathBuf,
    /// When set, every client must show a certificate that chains to these CAs.
    pub client_ca: Option<PathBuf>,
}

/// A server's TLS configuration, shared by every thread that accepts (clones share it).
/// A reload builds a new configuration from the files and swaps it in whole; one that
/// fails leaves the current one serving, so a half-copied certificate never takes a
/// node's ports down.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<ServerTlsFiles>,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Reads the files and builds the first configuration.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let config = build(&files)?;
        Ok(ServerTls {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(config)),
        })
    }

    /// Reads the files again; connections accepted from now on use what they hold.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }

    /// The configuration to accept the next connection with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Whether clients must show a certificate.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ServerTls").field("files", &self.files).finish()
    }
}

fn build(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = files::certificates(&files.cert)?;
    let key = files::private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let roots = Arc::new(files::roots(client_ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| TlsError::Roots {
                    path: client_ca.clone(),
                    detail: error.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    Ok(Arc::new(config))
}
