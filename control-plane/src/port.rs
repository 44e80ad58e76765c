//! The control plane's port: accepting connections within `CONNECTIONS_MAX`, TLS, the
//! Hello (by the same gate and limits as a node's ports, within one deadline with the TLS
//! handshake), and answering each admitted connection's requests in order, each checked
//! against what its credentials were granted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_link_tokio::{fill, Transport};
use engram_proto::{
    admit, decode_payload, encode_message, Admitted, ControlRequest, ControlResponse, Denial, ErrorCode, Family,
    FrameBuffer, FrameBufferSizes, FrameHeader, FrameKind, Grant, HelloReply, Port, Refusal, Response, FRONT_SHARD_ID,
};
use engram_tls::{opens_tls_handshake, ServerTls, PLAIN_AT_TLS_PORT, PLAIN_REQUEST_BYTES_DRAINED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::service::{error_reply, error_response, Controller};

/// How long a new connection has for its TLS handshake and its Hello, together (a node's
/// ports give the same by default).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default of `--max-connections`, the most connections served at once: a cluster's
/// nodes hold one or two each (heartbeats, a join) and operators a few; past it a new
/// one is closed at once, so strangers cannot make the process hold descriptors and
/// buffers without bound.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// Most connections whose Hello is not admitted yet, out of the whole: strangers holding
/// their 10 s each cannot take the room the cluster's nodes need to reconnect.
pub const UNADMITTED_CONNECTIONS_MAX: usize = 256;
/// Shortest time between two warnings of connections refused, so a flood of strangers
/// cannot flood the log.
pub const REFUSAL_WARNING_INTERVAL_MS: u64 = 1_000;

/// Refusals, each counted in metrics by reason, and warned of at most once per
/// `REFUSAL_WARNING_INTERVAL_MS`, each warning saying how many went unlogged since the last.
#[derive(Default)]
struct RefusalLog {
    last: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// `reason` is one of [`crate::metrics::REFUSAL_REASONS`].
    fn refused(&self, reason: &str, peer: SocketAddr, detail: &str) {
        crate::metrics::record_refused(reason);
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let interval = Duration::from_millis(REFUSAL_WARNING_INTERVAL_MS);
        if last.0.is_some_and(|at| at.elapsed() < interval) {
            last.1 += 1;
            return;
        }
        let unlogged = std::mem::replace(&mut *last, (Some(Instant::now()), 0)).1;
        tracing::warn!(%peer, reason, unlogged, "connection refused: {detail}");
    }
}

/// What a connection's task knows of it from its accept.
struct Accepted {
    peer: SocketAddr,
    /// By when its TLS handshake and its Hello must be done.
    deadline: tokio::time::Instant,
    refusals: Arc<RefusalLog>,
}

impl Accepted {
    fn refused(&self, reason: &str, detail: &str) {
        self.refusals.refused(reason, self.peer, detail);
    }
}

const PORT: Port<'static, Family> = Port {
    name: "engram-control",
    families: &[Family::Control],
    takes_forwarded: false,
};

/// Accepts connections forever, one task each; with `tls`, each goes through a TLS
/// handshake first.
pub async fn serve(controller: Arc<Controller>, listener: TcpListener, tls: Option<ServerTls>, connections_max: usize) {
    let room = Arc::new(tokio::sync::Semaphore::new(connections_max));
    let unadmitted_max = UNADMITTED_CONNECTIONS_MAX.min(connections_max);
    let unadmitted = Arc::new(tokio::sync::Semaphore::new(unadmitted_max));
    let refusals = Arc::new(RefusalLog::default());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = room.clone().try_acquire_owned() else {
                    let detail = format!("{connections_max} connections are open (--max-connections)");
                    refusals.refused("max_connections", peer, &detail);
                    continue;
                };
                let Ok(stranger) = unadmitted.clone().try_acquire_owned() else {
                    let detail = format!("{unadmitted_max} connections await their Hello (unadmitted_connections_max)");
                    refusals.refused("max_connections", peer, &detail);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let accepted = Accepted {
                    peer,
                    deadline: tokio::time::Instant::now() + Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    refusals: refusals.clone(),
                };
                let controller = controller.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Some(stream) = secure(stream, tls.as_ref(), &accepted).await {
                        serve_connection(controller, stream, &accepted, stranger).await;
                    }
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The connection's stream: the socket itself without TLS; with it, TLS once the
/// handshake completed by `deadline`, or `None` (a plain client is told `TlsRequired`
/// first, as a node's port tells it).
async fn secure(mut stream: TcpStream, tls: Option<&ServerTls>, accepted: &Accepted) -> Option<Box<dyn Transport>> {
    let deadline = accepted.deadline;
    let Some(tls) = tls else {
        return Some(Box::new(stream));
    };
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if opens_tls_handshake(first[0]) => {}
        Ok(Ok(1)) => {
            // Read what it sent: closing with unread bytes resets, which can drop the answer.
            let _ = stream.read(&mut vec![0; PLAIN_REQUEST_BYTES_DRAINED]).await;
            let refusal = Refusal {
                code: ErrorCode::TlsRequired,
                message: PLAIN_AT_TLS_PORT.to_string(),
            };
            let mut out = Vec::new();
            let _ = encode_refusal(false, 0, refusal, &mut out);
            let _ = stream.write_all(&out).await;
            accepted.refused("plain_at_tls_port", "a plain client at the TLS port");
            return None;
        }
        _ => return None,
    }
    let accept = tokio_rustls::TlsAcceptor::from(tls.config()).accept(stream);
    match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(secured)) => Some(Box::new(secured)),
        Ok(Err(error)) => {
            accepted.refused("tls_handshake", &format!("TLS handshake failed: {error}"));
            None
        }
        Err(_) => {
            accepted.refused("tls_handshake", &format!("no TLS handshake within {timeout:?}"));
            None
        }
    }
}

/// Answers a connection's frames in order, one at a time, until it closes or breaks
/// the protocol (which is answered with an error under request id 0 before closing).
/// Until its Hello is admitted, by `deadline`, it is read into a buffer of one small
/// frame, as a node's ports read theirs.
/// `stranger` holds its place among the unadmitted connections until the Hello is admitted.
async fn serve_connection(
    controller: Arc<Controller>,
    mut stream: Box<dyn Transport>,
    accepted: &Accepted,
    stranger: tokio::sync::OwnedSemaphorePermit,
) {
    let mut stranger = Some(stranger);
    let mut input = FrameBuffer::for_handshake();
    let mut out = Vec::new();
    let mut grant: Option<Grant> = None;
    // The credentials reloads the grant has seen.
    let mut generation = 0;
    loop {
        let greeted_before = grant.is_some();
        loop {
            let (header, payload) = match input.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    if grant.is_none() {
                        accepted.refused("bad_hello", &error.to_string());
                    }
                    let refusal = Refusal {
                        code: error.code(),
                        message: error.to_string(),
                    };
                    out.clear();
                    let _ = encode_refusal(grant.is_some(), 0, refusal, &mut out);
                    let _ = write_flushed(&mut stream, &out).await;
                    return;
                }
            };
            out.clear();
            let answered = match &mut grant {
                None => {
                    generation = controller.gate_generation();
                    grant = greet(&controller, &header, payload, accepted, &mut out);
                    grant.is_some()
                }
                Some(granted) => match regrant(&controller, granted, &mut generation) {
                    Ok(()) => answer(&controller, granted, &header, payload, &mut out).await,
                    Err(denial) => {
                        let message = format!("credentials revoked: {denial}");
                        accepted.refused("revoked", &message);
                        let refusal = Refusal {
                            code: denial.code(),
                            message,
                        };
                        let _ = encode_refusal(true, header.request_id, refusal, &mut out);
                        false
                    }
                },
            };
            if write_flushed(&mut stream, &out).await.is_err() || !answered {
                return;
            }
            if !greeted_before {
                break;
            }
        }
        if !greeted_before && grant.is_some() {
            // Admitted: the buffer opens to the protocol's frames, and what was read
            // after the Hello is answered before reading more.
            drop(stranger.take());
            input.open(FrameBufferSizes::LINK);
            continue;
        }
        let read = match grant {
            Some(_) => fill(&mut stream, &mut input).await,
            None => match tokio::time::timeout_at(accepted.deadline, fill(&mut stream, &mut input)).await {
                Ok(read) => read,
                Err(_) => {
                    accepted.refused(
                        "handshake_timeout",
                        &format!("no Hello within {HANDSHAKE_TIMEOUT_MS} ms"),
                    );
                    return;
                }
            },
        };
        if !matches!(read, Ok(read) if read > 0) {
            return;
        }
    }
}

/// Writes `bytes` and flushes what TLS may hold back.
async fn write_flushed(stream: &mut Box<dyn Transport>, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// After a credentials reload, takes the connection's credential again from the new
/// gate: an error when it was revoked. One atomic load while nothing was reloaded.
fn regrant(controller: &Controller, grant: &mut Grant, generation: &mut u64) -> Result<(), Denial> {
    let now = controller.gate_generation();
    if now != *generation {
        *grant = controller.gate().regrant(grant, Family::Control, &[], false)?;
        *generation = now;
    }
    Ok(())
}

/// Encodes the answer to the first frame: a HelloReply, or the refusal; what the
/// credentials were granted, `None` when the connection ends with the refusal.
fn greet(
    controller: &Controller,
    header: &FrameHeader,
    payload: &[u8],
    accepted: &Accepted,
    out: &mut Vec<u8>,
) -> Option<Grant> {
    match admit(header.kind, payload, &PORT, &controller.gate()) {
        Ok(Admitted { grant, .. }) => {
            let reply = HelloReply {
                node_id: 0,
                shard_id: FRONT_SHARD_ID,
                shard_count: 0,
                map_epoch: controller.epoch(),
                server_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            encode_message(FrameKind::HelloReply, header.request_id, 0, &reply, out)
                .is_ok()
                .then_some(grant)
        }
        Err(refusal) => {
            let reason = match refusal.code {
                ErrorCode::Unauthorized => "unauthorized",
                ErrorCode::Forbidden => "forbidden",
                _ => "bad_hello",
            };
            accepted.refused(reason, &format!("{}: {}", refusal.code, refusal.message));
            let _ = encode_refusal(false, header.request_id, refusal, out);
            None
        }
    }
}

/// Encodes the answer to a request of an admitted connection, whose credentials were
/// granted `grant`.
async fn answer(
    controller: &Arc<Controller>,
    grant: &Grant,
    header: &FrameHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let answer = if header.kind != FrameKind::Request {
        error_response(ErrorCode::Malformed, "expected a request frame")
    } else {
        match decode_payload::<ControlRequest>(payload) {
            Ok(request) => match request.right().map(|right| grant.require(right, request.name())) {
                Some(Err(denial)) => {
                    tracing::warn!(credential = grant.name(), "request refused: {denial}");
                    error_response(denial.code(), denial.to_string())
                }
                Some(Ok(())) | None => controller.handle(request).await,
            },
            Err(error) => error_response(error.code(), error.to_string()),
        }
    };
    let epoch = controller.epoch();
    encode_message(FrameKind::Response, header.request_id, epoch, &answer, out).is_ok()
}

/// A refusal in the family the connection speaks: a client-family error until the Hello
/// is accepted, since no family is agreed before that.
fn encode_refusal(
    greeted: bool,
    request_id: u64,
    refusal: Refusal,
    out: &mut Vec<u8>,
) -> Result<(), engram_proto::ProtocolError> {
    let reply = error_reply(refusal.code, refusal.message);
    match greeted {
        true => encode_message(FrameKind::Response, request_id, 0, &ControlResponse::Error(reply), out),
        false => encode_message(FrameKind::Response, request_id, 0, &Response::Error(reply), out),
    }
}
