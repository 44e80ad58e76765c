use std::path::PathBuf;

/// Why TLS could not be set up; each names the file or the address at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} in {path}: {detail}")]
    Read {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} holds no {what} (PEM expected)")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the certificate in {cert} does not go with the key in {key}, or is not usable: {source}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the CA certificates in {path} cannot check certificates: {detail}")]
    Roots { path: PathBuf, detail: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
    #[error("`{address}` has no host name or IP address to check the server's certificate against")]
    ServerName { address: String },
    #[error("a tls:// address needs the CA that signed the server's certificate (--tls-ca)")]
    NoRoots,
}
