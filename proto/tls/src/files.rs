//! PEM files into rustls' types. Every error names the file and what was looked for in
//! it, since a wrong path is the usual mistake of a TLS set-up.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::TlsError;

/// The certificate chain in `path`, leaf first.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificates";
    let read = |detail: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| read(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read(error.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        detail: error.to_string(),
    })
}

/// The CA certificates in `path`, as roots to check a peer's certificate against.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|error| TlsError::Roots {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
    }
    Ok(roots)
}
