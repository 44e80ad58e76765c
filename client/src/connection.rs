//! One multiplexed connection to one server port: handshake, a writer task that coalesces
//! queued frames, and a reader task that hands each response to the call waiting for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, PROTOCOL_VERSION};
use engram_proto::{decode_payload, encode_message, FrameKind, Hello, HelloReply, ProtocolError, Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use crate::error::{ConnectionError, Error};
use crate::framing::FrameReader;
use crate::limits::{WRITE_BATCH_BYTES_MAX, WRITE_QUEUE_FRAMES_MAX};
use crate::pending::PendingTable;

/// What every connection of a client announces in its handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub client_id: u64,
    pub namespace: Vec<u8>,
    pub credentials: Vec<u8>,
}

pub struct Connection {
    address: String,
    outbound: mpsc::Sender<Vec<u8>>,
    pending: Arc<PendingTable>,
    in_flight: Semaphore,
    /// 0 is the handshake's id, so calls start at 1.
    next_request_id: AtomicU64,
    tasks: [AbortHandle; 2],
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
        let (outbound, queue) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        let writer = runtime.spawn(write_requests(write_half, queue, Arc::clone(&pending)));
        let reader = runtime.spawn(read_responses(read_half, reader, Arc::clone(&pending)));
        Ok(Arc::new(Connection {
            address: address.to_string(),
            outbound,
            pending,
            in_flight: Semaphore::new(IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX),
            next_request_id: AtomicU64::new(1),
            tasks: [writer.abort_handle(), reader.abort_handle()],
        }))
    }

    /// False once the connection has failed; the pool then opens a new one.
    pub fn is_usable(&self) -> bool {
        self.pending.failure().is_none()
    }

    /// Sends one request and waits for its response. Cancel-safe: a dropped call leaves
    /// either nothing or one whole frame in the write queue, and its late response is
    /// discarded by the reader.
    pub async fn call(&self, request: &Request, map_epoch: u64) -> Result<Response, Error> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| self.failed(ConnectionError::Closed))?;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_message(FrameKind::Request, request_id, map_epoch, request, &mut frame)?;
        let mut registration = self
            .pending
            .register(request_id)
            .map_err(|source| self.failed(source))?;
        if self.outbound.send(frame).await.is_err() {
            let source = self.pending.failure().unwrap_or(ConnectionError::Closed);
            return Err(self.failed(source));
        }
        registration.reply().await.map_err(|source| self.failed(source))
    }

    fn failed(&self, source: ConnectionError) -> Error {
        Error::Connection {
            address: self.address.clone(),
            source,
        }
    }
}

enum HandshakeFailure {
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

async fn exchange_hello(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    handshake: &Handshake,
) -> Result<HelloReply, HandshakeFailure> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: handshake.client_id,
        namespace: handshake.namespace.clone(),
        credentials: handshake.credentials.clone(),
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

/// Writes queued frames, coalescing whatever is already queued into one write.
async fn write_requests(mut stream: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>, pending: Arc<PendingTable>) {
    while let Some(mut batch) = queue.recv().await {
        while batch.len() < WRITE_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(error) = stream.write_all(&batch).await {
            pending.fail_all(error.into());
            return;
        }
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
