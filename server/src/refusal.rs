//! Connections turned away before they were served: why, and how an operator hears of
//! it. Each is counted in metrics; each is logged at warn with the peer's address, at
//! most once per `REFUSAL_LOG_INTERVAL_MS` per shard with the number left unlogged
//! since, so a flood of strangers cannot flood the log.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Shortest time between two refusal warnings of one shard.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 1_000;

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The node already serves `--max-connections`.
    MaxConnections,
    /// The handshake did not complete within `--handshake-timeout-ms`.
    HandshakeTimeout,
    /// The first frame was not an acceptable Hello (too large, malformed, another
    /// version or family).
    BadHello,
    /// The credentials were wrong.
    Unauthorized,
    /// The credentials were known but asked beyond their grant at the handshake: a
    /// namespace they may not use, the peer or control protocol without the right.
    Forbidden,
    /// An open connection's credential was revoked (or lost its namespace) by a reload.
    Revoked,
    /// A plain client at a TLS port.
    PlainAtTlsPort,
    /// The TLS handshake failed (an unknown CA, no client certificate where one is
    /// required, bytes that are not TLS).
    TlsHandshake,
}

impl Refused {
    pub const ALL: [Refused; 8] = [
        Refused::MaxConnections,
        Refused::HandshakeTimeout,
        Refused::BadHello,
        Refused::Unauthorized,
        Refused::Forbidden,
        Refused::Revoked,
        Refused::PlainAtTlsPort,
        Refused::TlsHandshake,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::HandshakeTimeout => "handshake_timeout",
            Refused::BadHello => "bad_hello",
            Refused::Unauthorized => "unauthorized",
            Refused::Forbidden => "forbidden",
            Refused::Revoked => "revoked",
            Refused::PlainAtTlsPort => "plain_at_tls_port",
            Refused::TlsHandshake => "tls_handshake",
        }
    }
}

/// One shard's refusal warnings, rate-limited.
#[derive(Default)]
pub struct RefusalLog {
    last_logged: Cell<Option<Instant>>,
    unlogged: Cell<u64>,
}

impl RefusalLog {
    /// Logs a refusal unless one was logged less than the interval ago.
    pub fn note(&self, shard: usize, reason: Refused, peer: Option<SocketAddr>, detail: &str) {
        let now = Instant::now();
        let interval = Duration::from_millis(REFUSAL_LOG_INTERVAL_MS);
        if self
            .last_logged
            .get()
            .is_some_and(|last| now.duration_since(last) < interval)
        {
            self.unlogged.set(self.unlogged.get() + 1);
            return;
        }
        self.last_logged.set(Some(now));
        let unlogged = self.unlogged.replace(0);
        let peer = peer.map_or_else(|| "unknown".to_string(), |peer| peer.to_string());
        tracing::warn!(shard, reason = reason.label(), %peer, unlogged, "connection refused: {detail}");
    }
}
