//! The builder that validates a client's settings and connects.

use std::time::Duration;

use engram_proto::limits::{CREDENTIALS_BYTES_MAX, NAMESPACE_BYTES_MAX};
use engram_tls::{ClientTls, Endpoint};
use tokio::runtime::Handle;

use crate::client::Client;
use crate::config::{cap_timeout, Config};
use crate::connection::Handshake;
use crate::error::Error;
use crate::limits::CALL_TIMEOUT_MS_DEFAULT;
use crate::route::host_of;

/// Builds a [`Client`]; obtained from [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    address: String,
    namespace: Vec<u8>,
    credentials: Vec<u8>,
    timeout: Duration,
    direct: bool,
    spin: Duration,
    tls: Option<ClientTls>,
}

/// Longest client-side spin a builder accepts: past this, parking costs less than the
/// CPU burnt, whatever the latency.
pub const SPIN_MAX: Duration = Duration::from_millis(10);

impl Client {
    /// Starts configuring a client that first contacts `address` (`host:port`).
    pub fn builder(address: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(address)
    }
}

impl ClientBuilder {
    pub(crate) fn new(address: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            namespace: engram_proto::message::DEFAULT_NAMESPACE.to_vec(),
            credentials: Vec::new(),
            timeout: Duration::from_millis(CALL_TIMEOUT_MS_DEFAULT),
            direct: true,
            spin: Duration::ZERO,
            tls: None,
        }
    }

    /// The tenant every key of this client belongs to (default `"default"`).
    pub fn namespace(mut self, namespace: impl Into<Vec<u8>>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sent in every handshake; empty (the default) when the server has no authentication.
    pub fn credentials(mut self, credentials: impl Into<Vec<u8>>) -> Self {
        self.credentials = credentials.into();
        self
    }

    /// Default timeout of every call, retries included (default 5 s, capped at
    /// `CALL_TIMEOUT_MS_MAX`, one minute). A call that waits at the server (an acquire,
    /// a barrier, a blocking pop) gets its wait, up to `WAIT_MS_MAX`, on top.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `true` (default): route each key straight to its shard's port using the slot map.
    /// `false`: send everything to the given address (a front port forwards).
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// Poll for each answer this long before parking the calling task (default: zero,
    /// park at once). Between polls the task yields, so the runtime keeps checking its
    /// sockets without sleeping: an answer that arrives within the spin is taken without
    /// a wake-up, at the price of a busy core while a call waits. At most [`SPIN_MAX`].
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Speak TLS on every connection, checking servers' certificates against `tls`'s
    /// CAs (and showing its certificate, if it has one, to servers that ask). An address
    /// written `tls://host:port` asks for TLS too, and needs this.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Validates the settings, connects to the address and, when direct, fetches the slot
    /// map. A map that cannot be fetched is not fatal: calls then go to the given address
    /// until a later refresh succeeds. Must run inside a tokio runtime; the client's
    /// connection tasks are spawned on that runtime.
    pub async fn connect(self) -> Result<Client, Error> {
        let runtime = Handle::try_current()
            .map_err(|_| Error::Config("Client::connect must be called inside a tokio runtime".into()))?;
        let (config, handshake) = self.validate()?;
        Client::start(config, handshake, runtime).await
    }

    fn validate(self) -> Result<(Config, Handshake), Error> {
        let endpoint = Endpoint::parse(&self.address);
        if host_of(endpoint.address).is_none_or(str::is_empty) {
            return Err(Error::Config(format!("address {:?} is not host:port", self.address)));
        }
        if endpoint.tls && self.tls.is_none() {
            return Err(Error::Config(format!(
                "{:?} asks for TLS: give the CA that signed the server's certificate (ClientBuilder::tls)",
                self.address
            )));
        }
        let seed_address = endpoint.address.to_string();
        if self.namespace.len() > NAMESPACE_BYTES_MAX {
            return Err(Error::Config(format!(
                "namespace of {} bytes exceeds namespace_bytes_max ({NAMESPACE_BYTES_MAX})",
                self.namespace.len()
            )));
        }
        if self.credentials.len() > CREDENTIALS_BYTES_MAX {
            return Err(Error::Config(format!(
                "credentials of {} bytes exceed credentials_bytes_max ({CREDENTIALS_BYTES_MAX})",
                self.credentials.len()
            )));
        }
        if self.spin > SPIN_MAX {
            return Err(Error::Config(format!("spin of {:?} exceeds {SPIN_MAX:?}", self.spin)));
        }
        if self.timeout.is_zero() {
            return Err(Error::Config("timeout must be positive".into()));
        }
        let handshake = Handshake {
            // Zero is avoided so a server can use it to mean "no client id".
            client_id: rand::random::<u64>().max(1),
            namespace: self.namespace.clone(),
            credentials: self.credentials,
            spin: self.spin,
            tls: self.tls,
        };
        let config = Config {
            seed_address,
            namespace: self.namespace,
            timeout: cap_timeout(self.timeout),
            direct: self.direct,
        };
        Ok((config, handshake))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::limits::CALL_TIMEOUT_MS_MAX;

    #[test]
    fn settings_are_checked_against_the_limits() {
        let config = |builder: ClientBuilder| builder.validate().map(|(config, _)| config);
        assert!(matches!(config(ClientBuilder::new("nohost")), Err(Error::Config(_))));
        assert!(matches!(config(ClientBuilder::new(":7400")), Err(Error::Config(_))));
        let long = ClientBuilder::new("h:1").namespace(vec![b'n'; NAMESPACE_BYTES_MAX + 1]);
        assert!(matches!(config(long), Err(Error::Config(message)) if message.contains("namespace_bytes_max")));
        let long = ClientBuilder::new("h:1").credentials(vec![0; CREDENTIALS_BYTES_MAX + 1]);
        assert!(matches!(config(long), Err(Error::Config(message)) if message.contains("credentials_bytes_max")));
        assert!(config(ClientBuilder::new("h:1").timeout(Duration::ZERO)).is_err());
        assert!(config(ClientBuilder::new("h:1").spin(SPIN_MAX + Duration::from_micros(1))).is_err());
        assert!(config(ClientBuilder::new("h:1").spin(SPIN_MAX)).is_ok());
        let capped = config(ClientBuilder::new("h:1").timeout(Duration::from_secs(3_600))).unwrap();
        assert_eq!(capped.timeout, Duration::from_millis(CALL_TIMEOUT_MS_MAX));
        let defaults = config(ClientBuilder::new("h:1")).unwrap();
        assert_eq!(defaults.namespace, b"default");
        assert!(defaults.direct);
        let no_ca = config(ClientBuilder::new("tls://h:1")).unwrap_err();
        assert!(no_ca.to_string().contains("CA"), "{no_ca}");
        assert_eq!(defaults.timeout, Duration::from_millis(CALL_TIMEOUT_MS_DEFAULT));
    }
}
