//! Addresses as users write them: `host:port` for plain TCP, `tls://host:port` for TLS.

/// The prefix of an address reached over TLS.
pub const TLS_SCHEME: &str = "tls://";

/// An address with how to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// `host:port`, without the scheme.
    pub address: &'a str,
    pub tls: bool,
}

impl<'a> Endpoint<'a> {
    /// Reads `tls://host:port` as a TLS endpoint and anything else as plain TCP.
    pub fn parse(written: &'a str) -> Endpoint<'a> {
        match written.strip_prefix(TLS_SCHEME) {
            Some(address) => Endpoint { address, tls: true },
            None => Endpoint {
                address: written,
                tls: false,
            },
        }
    }
}
