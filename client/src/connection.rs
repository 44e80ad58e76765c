//! One multiplexed connection to one server port: handshake (proto's [`Link`], over
//! the tokio adapter), outgoing frames written by their callers or, when the socket is
//! busy, by a writer task that coalesces them ([`crate::outbound`]), and a reader task
//! that cuts the stream into frames ([`FrameBuffer`]) and hands each response to the
//! call waiting for it ([`crate::pending`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engram_link_tokio::{fill, handshake};
use engram_proto::limits::IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;
use engram_proto::link::{decode_answer, StreamError, HANDSHAKE_REQUEST_ID};
use engram_proto::{
    encode_request, parse_read_answer, ClientProtocol, FrameBuffer, FrameBufferSizes, FrameKind, HelloReply, Identity,
    Link, LinkError, Protocol, Request, Response,
};
use engram_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

use crate::error::{ConnectionError, Error};
use crate::limits::WRITE_BATCH_BYTES_MAX;
use crate::outbound::{write_queued, Outbound, WriteSide};
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
    /// Every connection speaks TLS, checking servers against these roots.
    pub tls: Option<ClientTls>,
}

impl Handshake {
    pub fn identity(&self) -> Identity<'_> {
        Identity {
            client_id: self.client_id,
            namespace: &self.namespace,
            credentials: &self.credentials,
        }
    }
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
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| failed(error.into()))?;
        stream.set_nodelay(true).map_err(|error| failed(error.into()))?;
        let mut link = Link::<ClientProtocol>::new(handshake.identity(), FrameBufferSizes::LINK)
            .map_err(|error| failed(error.into()))?;
        let refused = |failure| match failure {
            HandshakeFailure::Refused(error) => error,
            HandshakeFailure::Connection(source) => failed(source),
        };
        let pending = Arc::new(PendingTable::default());
        let (outbound, reader) = match &handshake.tls {
            None => {
                let mut stream = stream;
                exchange_hello(&mut stream, &mut link).await.map_err(refused)?;
                let (read_half, write_half) = stream.into_split();
                let reader = read_responses(read_half, link.into_input(), Arc::clone(&pending));
                (Outbound::new(WriteSide::Plain(write_half)), runtime.spawn(reader))
            }
            Some(tls) => {
                let mut stream = crate::tls::connect(address, stream, tls).await?;
                // Under TLS 1.3 a server refuses this client's certificate only after
                // the handshake, with an alert the Hello's reply meets.
                let refused_by_tls = |failure| match failure {
                    HandshakeFailure::Connection(ConnectionError::Io(error)) => match crate::tls::refusal(&error) {
                        Some(detail) => Error::Tls {
                            address: address.to_string(),
                            detail,
                        },
                        None => failed(ConnectionError::Io(error)),
                    },
                    failure => refused(failure),
                };
                exchange_hello(&mut stream, &mut link).await.map_err(refused_by_tls)?;
                let (read_half, write_half) = tokio::io::split(stream);
                let reader = read_responses(read_half, link.into_input(), Arc::clone(&pending));
                let write_side = WriteSide::Tls(tokio::sync::Mutex::new(write_half));
                (Outbound::new(write_side), runtime.spawn(reader))
            }
        };
        let outbound = Arc::new(outbound);
        let writer = runtime.spawn(write_queued(Arc::clone(&outbound), Arc::clone(&pending)));
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
        encode_request(request_id, map_epoch, request, &mut frame)?;
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

    /// Reserves as many of `count` (at most `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`)
    /// in-flight places for a batch as are free now; `None` when none is. A batch takes
    /// what is free rather than waiting for all it wants: requests parked at the server (a
    /// lock or barrier wait) hold their places for as long as they wait, and may wait for
    /// a request that would queue behind the batch.
    pub fn try_reserve(self: &Arc<Self>, count: usize) -> Option<Reservation> {
        let free = self.in_flight.available_permits().min(count);
        if free == 0 {
            return None;
        }
        let permits = self.in_flight.try_acquire_many(batch_permits(free)).ok()?;
        permits.forget();
        Some(Reservation {
            connection: Arc::clone(self),
            count: free,
        })
    }

    /// Waits for one free in-flight place, then reserves as many more of `count` (at
    /// most `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`) as are free. A caller must not wait
    /// here while it holds another reservation, or two batches could each hold what the
    /// other waits for.
    pub async fn reserve(self: &Arc<Self>, count: usize) -> Result<Reservation, Error> {
        let first = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| self.failed(ConnectionError::Closed))?;
        first.forget();
        let mut reservation = Reservation {
            connection: Arc::clone(self),
            count: 1,
        };
        let more = self.in_flight.available_permits().min(count.saturating_sub(1));
        if let Ok(permits) = self.in_flight.try_acquire_many(batch_permits(more)) {
            permits.forget();
            reservation.count += more;
        }
        Ok(reservation)
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
            encode_request(first_request_id + index as u64, map_epoch, request, &mut frame)?;
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

impl Reservation {
    /// How many places it holds: how many requests may go out with it.
    pub fn count(&self) -> usize {
        self.count
    }
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

/// Sends `link`'s Hello and waits for the reply. A refusal is the server's final word
/// (credentials, version); anything else is the connection failing.
pub(crate) async fn exchange_hello<P: Protocol, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    link: &mut Link<P>,
) -> Result<HelloReply, HandshakeFailure> {
    handshake(stream, link).await.map_err(|error| match error {
        StreamError::Link(LinkError::Refused(reply)) => HandshakeFailure::Refused(Error::from_reply(reply)),
        error => HandshakeFailure::Connection(error.into()),
    })
}

/// Hands each response to its caller until the stream ends or breaks, then fails every
/// call still waiting (they retry on a new connection).
async fn read_responses(
    mut stream: impl AsyncRead + Unpin + Send + 'static,
    mut input: FrameBuffer,
    pending: Arc<PendingTable>,
) {
    let failure = loop {
        if let Err(error) = answer_frames(&mut input, &pending) {
            break error;
        }
        match fill(&mut stream, &mut input).await {
            Ok(0) => break input.end_of_stream().into(),
            Ok(_) => {}
            Err(error) => break error.into(),
        }
    };
    pending.fail_all(failure);
}

/// Hands every whole response in `input` to the call waiting for it; no taker means the
/// caller gave up, and the answer is dropped. A frame or payload that fails validation,
/// or an answer to no outstanding request, means the peer cannot be trusted any more, so
/// the whole connection goes, not only one call.
fn answer_frames(input: &mut FrameBuffer, pending: &PendingTable) -> Result<(), ConnectionError> {
    while let Some((header, payload)) = input.next_frame().map_err(ConnectionError::Protocol)? {
        // A read's answer is read by hand; anything else, or an answer where none may
        // come (to the handshake's id), goes through the checks of `decode_answer`.
        let read = (header.kind == FrameKind::Response && header.request_id != HANDSHAKE_REQUEST_ID)
            .then(|| parse_read_answer(payload))
            .flatten();
        let response = match read {
            Some(response) => response,
            None => decode_answer::<ClientProtocol>(&header, payload)?,
        };
        pending.answer(header.request_id, response)?;
    }
    Ok(())
}
