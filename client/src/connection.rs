//! One multiplexed connection to one server port: handshake, outgoing frames written by
//! their callers or, when the socket is busy, by a writer task that coalesces them
//! ([`crate::outbound`]), and a reader task that hands each response to the call waiting
//! for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, PROTOCOL_VERSION};
use engram_proto::{
    decode_payload, encode_message, Family, FrameKind, Hello, HelloReply, ProtocolError, Request, Response,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

use crate::error::{ConnectionError, Error};
use crate::framing::FrameReader;
use crate::limits::WRITE_BATCH_BYTES_MAX;
use crate::outbound::{write_queued, Outbound};
use crate::pending::{BatchRegistration, PendingTable, Reply, Settled};

/// First capacity of a request's frame, on top of its key: header, request fields and a
/// small value fit, so most frames are encoded with a single allocation.
const FRAME_BYTES_INITIAL: usize = 256;

/// What every connection of a client announces in its handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub client_id: u64,
    pub namespace: Vec<u8>,
    pub credentials: Vec<u8>,
    /// How long a call polls for its answer before parking (see `ClientBuilder::spin`).
    pub spin: Duration,
    /// The protocol the connection speaks: a client's, or the control plane's for admin.
    pub family: Family,
}

pub struct Connection {
    address: String,
    outbound: Arc<Outbound>,
    pending: Arc<PendingTable>,
    in_flight: Semaphore,
    /// 0 is the handshake's id, so calls start at 1.
    next_request_id: AtomicU64,
    /// How long a call polls for its answer before parking.
    spin: Duration,
    tasks: [AbortHandle; 3],
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Nobody can be waiting (a waiting call holds this connection), so stopping the
        // tasks loses nothing; without this a silent peer would keep the reader alive.
        for task in &self.tasks {
            task.abort();
        }
        self.pending.fail_all(ConnectionError::Closed);
    }
}

impl Connection {
    /// Connects, sets TCP_NODELAY (requests are small and latency-bound), performs the
    /// handshake and starts the connection's tasks on `runtime`.
    pub async fn open(address: &str, handshake: &Handshake, runtime: &Handle) -> Result<Arc<Connection>, Error> {
        let failed = |source: ConnectionError| Error::Connection {
            address: address.to_string(),
            source,
        };
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|error| failed(error.into()))?;
        stream.set_nodelay(true).map_err(|error| failed(error.into()))?;
        let mut reader = FrameReader::default();
        exchange_hello(&mut stream, &mut reader, handshake)
            .await
            .map_err(|failure| match failure {
                HandshakeFailure::Refused(error) => error,
                HandshakeFailure::Connection(source) => failed(source),
            })?;
        let (read_half, write_half) = stream.into_split();
        let pending = Arc::new(PendingTable::default());
        let outbound = Arc::new(Outbound::new(write_half));
        let writer = runtime.spawn(write_queued(Arc::clone(&outbound), Arc::clone(&pending)));
        let reader = runtime.spawn(read_responses(read_half, reader, Arc::clone(&pending)));
        let reaper = runtime.spawn(Arc::clone(&pending).reap_overdue());
        Ok(Arc::new(Connection {
            address: address.to_string(),
            outbound,
            pending,
            in_flight: Semaphore::new(IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX),
            next_request_id: AtomicU64::new(1),
            spin: handshake.spin,
            tasks: [writer.abort_handle(), reader.abort_handle(), reaper.abort_handle()],
        }))
    }

    /// False once the connection has failed; the pool then opens a new one.
    pub fn is_usable(&self) -> bool {
        !self.pending.has_failed()
    }

    /// Sends one request and waits for its response until `deadline`, which ends the
    /// call with [`Error::Timeout`] (its `after` is left for the caller to fill in).
    /// Cancel-safe: a dropped call leaves either nothing or one whole frame in the write
    /// queue, and its late response is discarded by the reader.
    pub async fn call(&self, request: &Request, map_epoch: u64, deadline: Instant) -> Result<Response, Error> {
        let _permit = match self.in_flight.try_acquire() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(self.failed(ConnectionError::Closed)),
            // Every place is taken: wait for one, with a timer, which only this rare
            // path pays for.
            Err(TryAcquireError::NoPermits) => match Box::pin(timeout_at(deadline, self.in_flight.acquire())).await {
                Err(_) => return Err(Error::deadline_passed()),
                Ok(Err(_)) => return Err(self.failed(ConnectionError::Closed)),
                Ok(Ok(permit)) => permit,
            },
        };
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        // Sized for the whole frame of a small request, so encoding allocates once.
        let mut frame = Vec::with_capacity(FRAME_BYTES_INITIAL + request.command.key().map_or(0, <[u8]>::len));
        encode_message(FrameKind::Request, request_id, map_epoch, request, &mut frame)?;
        let mut registration = self
            .pending
            .register(request_id, deadline)
            .map_err(|source| self.failed(source))?;
        self.outbound
            .send(frame, &self.pending)
            .map_err(|source| self.failed(source))?;
        match registration.reply(self.spin).await {
            Settled::Reply(reply) => reply.map_err(|source| self.failed(source)),
            Settled::Overdue => Err(Error::deadline_passed()),
        }
    }

    /// Reserves `count` (at most `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`) in-flight
    /// places for a batch if they are free now.
    pub fn try_reserve(self: &Arc<Self>, count: usize) -> Option<Reservation> {
        let permits = self.in_flight.try_acquire_many(batch_permits(count)).ok()?;
        permits.forget();
        Some(Reservation {
            connection: Arc::clone(self),
            count,
        })
    }

    /// Reserves `count` (at most `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`) in-flight
    /// places for a batch, waiting for them. A caller must not wait here while it holds
    /// another reservation, or two batches could each hold what the other waits for.
    pub async fn reserve(self: &Arc<Self>, count: usize) -> Result<Reservation, Error> {
        let permits = self
            .in_flight
            .acquire_many(batch_permits(count))
            .await
            .map_err(|_| self.failed(ConnectionError::Closed))?;
        permits.forget();
        Ok(Reservation {
            connection: Arc::clone(self),
            count,
        })
    }

    /// Sends `requests` (as many as `reservation` holds places for) as one batch: their
    /// frames encoded into one buffer (cut at `WRITE_BATCH_BYTES_MAX`) handed to the
    /// writer at once, and one registration for all their answers, which
    /// [`SentBatch::replies`] then awaits in the calling task. Cancel-safe like
    /// [`Connection::call`].
    pub async fn send_batch(
        &self,
        reservation: Reservation,
        requests: &[&Request],
        map_epoch: u64,
    ) -> Result<SentBatch, Error> {
        let count = requests.len();
        assert!(
            count == reservation.count && std::ptr::eq(self, &*reservation.connection),
            "a batch is sent with its own connection's reservation"
        );
        let first_request_id = self.next_request_id.fetch_add(count as u64, Ordering::Relaxed);
        let mut buffers = Vec::with_capacity(1);
        let mut buffer = Vec::with_capacity((count * FRAME_BYTES_INITIAL).min(WRITE_BATCH_BYTES_MAX));
        // Each frame is encoded on its own (its payload's alignment is relative to its
        // own start) and then appended.
        let mut frame = Vec::with_capacity(FRAME_BYTES_INITIAL);
        for (index, request) in requests.iter().enumerate() {
            if buffer.len() >= WRITE_BATCH_BYTES_MAX {
                buffers.push(std::mem::take(&mut buffer));
            }
            frame.clear();
            encode_message(
                FrameKind::Request,
                first_request_id + index as u64,
                map_epoch,
                *request,
                &mut frame,
            )?;
            buffer.extend_from_slice(&frame);
        }
        buffers.push(buffer);
        let registration = self
            .pending
            .register_batch(first_request_id, count)
            .map_err(|source| self.failed(source))?;
        for buffer in buffers {
            self.outbound
                .send(buffer, &self.pending)
                .map_err(|source| self.failed(source))?;
        }
        Ok(SentBatch {
            registration,
            spin: self.spin,
            _reservation: reservation,
        })
    }

    pub(crate) fn failed(&self, source: ConnectionError) -> Error {
        Error::Connection {
            address: self.address.clone(),
            source,
        }
    }
}

fn batch_permits(count: usize) -> u32 {
    assert!(
        count <= IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX,
        "a batch is cut to the in-flight limit by its caller"
    );
    count as u32
}

/// In-flight places a batch holds on one connection, from before it is sent until its
/// answers are in (or it is dropped).
pub struct Reservation {
    connection: Arc<Connection>,
    count: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.connection.in_flight.add_permits(self.count);
    }
}

/// A batch whose frames are queued for writing; its answers are awaited with
/// [`SentBatch::replies`].
pub struct SentBatch {
    registration: BatchRegistration,
    spin: Duration,
    _reservation: Reservation,
}

impl SentBatch {
    /// Waits until every request of the batch is answered or failed.
    pub async fn complete(&mut self) {
        self.registration.complete(self.spin).await;
    }

    /// The replies in so far, in the order of the batch's requests (all of them after
    /// [`SentBatch::complete`]); `None` for a request still unanswered.
    pub fn answered(&mut self) -> Vec<Option<Reply>> {
        self.registration.answered()
    }
}

pub(crate) enum HandshakeFailure {
    /// The server answered with an error (bad credentials, version...): final.
    Refused(Error),
    Connection(ConnectionError),
}

impl From<ConnectionError> for HandshakeFailure {
    fn from(error: ConnectionError) -> Self {
        HandshakeFailure::Connection(error)
    }
}

impl From<std::io::Error> for HandshakeFailure {
    fn from(error: std::io::Error) -> Self {
        HandshakeFailure::Connection(error.into())
    }
}

pub(crate) async fn exchange_hello(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    handshake: &Handshake,
) -> Result<HelloReply, HandshakeFailure> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: handshake.client_id,
        namespace: handshake.namespace.clone(),
        credentials: handshake.credentials.clone(),
        family: handshake.family,
    };
    let mut frame = Vec::new();
    encode_message(FrameKind::Hello, 0, 0, &hello, &mut frame)
        .map_err(|error| HandshakeFailure::Refused(error.into()))?;
    stream.write_all(&frame).await?;
    let Some((header, payload)) = reader.next_frame(stream).await? else {
        return Err(ConnectionError::Closed.into());
    };
    let protocol = |error: ProtocolError| HandshakeFailure::Connection(ConnectionError::Protocol(error));
    match header.kind {
        FrameKind::HelloReply => decode_payload::<HelloReply>(payload).map_err(protocol),
        FrameKind::Response => match decode_payload::<Response>(payload).map_err(protocol)? {
            Response::Error(reply) => Err(HandshakeFailure::Refused(Error::from_reply(reply))),
            _ => Err(protocol(ProtocolError::UnexpectedKind {
                found: FrameKind::Response,
                expected: FrameKind::HelloReply,
            })),
        },
        found => Err(protocol(ProtocolError::UnexpectedKind {
            found,
            expected: FrameKind::HelloReply,
        })),
    }
}

/// Hands each response to its caller until the stream ends or breaks, then fails every
/// call still waiting (they retry on a new connection).
async fn read_responses(mut stream: OwnedReadHalf, mut reader: FrameReader, pending: Arc<PendingTable>) {
    let failure = loop {
        match reader.next_frame(&mut stream).await {
            Ok(Some((header, payload))) => {
                if header.kind != FrameKind::Response {
                    break ConnectionError::Protocol(ProtocolError::UnexpectedKind {
                        found: header.kind,
                        expected: FrameKind::Response,
                    });
                }
                // A payload that fails validation means the peer cannot be trusted any
                // more, so the whole connection goes, not only this call.
                match decode_payload::<Response>(payload) {
                    Ok(response) => {
                        // No taker means the caller gave up; the answer is dropped.
                        pending.answer(header.request_id, response);
                    }
                    Err(error) => break ConnectionError::Protocol(error),
                }
            }
            Ok(None) => break ConnectionError::Closed,
            Err(error) => break error,
        }
    };
    pending.fail_all(failure);
}
