//! One client connection: handshake, then a loop of read, answer every whole frame,
//! write all answers at once. Answers of requests that waited at a shard (a lock
//! acquire, a barrier wait) or were forwarded to another shard (of this node, or of
//! another node through the connection's proxy links, `proxy.rs`) arrive in the
//! connection's [`Outbox`] later and are written as soon as they do.
//!
//! Backpressure comes from the loop's shape: nothing more is read until the previous
//! answers are written, and nothing at all while `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`
//! of the connection's requests are waiting or forwarded. So a client that does not
//! read its answers stops being read, and the server holds at most one read buffer and a
//! bounded number of answers per connection. A frame that cannot be decoded gets a
//! `Malformed` answer and the connection closes.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, KEY_BYTES_MAX, NAMESPACE_BYTES_MAX};
use engram_proto::{
    admit, decode_payload, Admitted, Command, Denial, ErrorCode, FrameBuffer, FrameBufferSizes, FrameKind, Grant,
    HelloReply, Port, ProtocolError, ReadRequest, Request, Response, Right, Rights, SlotHasher, FRONT_SHARD_ID,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use futures::future::Either;

use crate::dispatch::{end_connection, write_out, Door, Handled, Placed};
use crate::metrics::ObjectKind;
use crate::outbox::Outbox;
use crate::proxy::Proxies;
use crate::refusal::Refused;
use crate::runtime;
use crate::shard::{Shard, Target};
use crate::store::PREFETCH_KEYS_MAX;
use crate::stream::Stream;
use engram_proto::{AdminCommand, Asked, DataCommand, DataRequest, ErrorReply, Family, PeerRequest, PeerResponse};

/// Bytes asked of the socket per read. Reads never grow the buffer by more than this,
/// so memory follows the bytes that actually arrived, not the length a header claims.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Stored keys (namespace prefix included) longer than this are not prefetched: their
/// lookup's time goes to comparing them, and the buffer of prefetched keys stays small.
const PREFETCH_KEY_BYTES_MAX: usize = 256;

/// What a front port is to a Hello: clients only, since it forwards their requests.
const FRONT_PORT: Port<'static, Served> = Port {
    name: "a node's front port",
    families: &[Served::Client],
    takes_forwarded: false,
};

/// What a shard's own port is to a Hello: clients, and peers, whose migration orders
/// and batches name the shard they are for.
const SHARD_PORT: Port<'static, Served> = Port {
    name: "a node's shard port",
    families: &[Served::Client, Served::Peer],
    takes_forwarded: true,
};

/// Answers held for one connection before they are written out mid-batch: bounds a
/// connection's answer memory (1,024 pipelined reads of 4 MiB values would otherwise be
/// 4 GiB before the first write).
pub const ANSWER_BATCH_BYTES_MAX: usize = 1024 * 1024;

// The one-byte length prefix of stored keys must hold every namespace length.
const _: () = assert!(NAMESPACE_BYTES_MAX <= u8::MAX as usize);

/// The identity a handshake establishes.
struct Session {
    served: Served,
    client_id: u64,
    /// What the credentials may do, as of the gate's `generation`.
    grant: Grant,
    generation: u64,
    /// Prepended to every key so namespaces never share objects.
    key_prefix: Vec<u8>,
    hasher: SlotHasher,
}

impl Session {
    fn namespace(&self) -> &[u8] {
        self.key_prefix.get(1..).unwrap_or_default()
    }
}

/// The family a connection speaks, among those its port serves: clients on every port,
/// peers (the control plane, another shard) on a shard's own port only, where a
/// migration order or batch names the shard it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Client,
    Peer,
}

impl From<Served> for Family {
    fn from(served: Served) -> Family {
        match served {
            Served::Client => Family::Client,
            Served::Peer => Family::Peer,
        }
    }
}

/// What a client request needs of its session, copied out so the connection can be
/// borrowed mutably while the request is handled.
#[derive(Clone, Copy)]
struct Caller {
    client_id: u64,
    hasher: SlotHasher,
    rights: Rights,
}

impl Caller {
    fn of(session: &Session) -> Caller {
        Caller {
            client_id: session.client_id,
            hasher: session.hasher,
            rights: session.grant.rights(),
        }
    }
}

/// Why a connection ends early.
enum Close {
    /// The peer went away or the socket failed.
    Gone,
    /// The handshake did not complete in time.
    TimedOut,
    /// The peer broke the protocol; `reply` explains why and is sent before closing, in
    /// the family the connection speaks (a client's until the handshake is accepted).
    Refused { reply: ErrorReply },
}

/// Serves one connection until it ends. Its answers wait in `outbox`, which the caller
/// makes so that it can close it (and end the tasks awaiting answers for it) should it
/// have to end the connection from outside.
pub async fn serve(shard: Rc<Shard>, stream: Stream, front: bool, outbox: Rc<Outbox>) {
    let mut connection = Connection {
        shard: shard.clone(),
        stream,
        front,
        session: None,
        outbox,
        spare: Vec::new(),
        key_buffer: Vec::new(),
        proxies: std::cell::OnceCell::new(),
        read_keys_ahead: ReadKeysAhead::default(),
    };
    let ended = connection.run().await;
    if let Err(Close::TimedOut) = ended {
        let detail = format!("no Hello within {:?}", shard.admission().handshake_timeout);
        shard.refused(Refused::HandshakeTimeout, connection.peer(), &detail);
    }
    if let Err(Close::Refused { reply }) = ended {
        match connection.session.as_ref().map(|session| session.served) {
            Some(Served::Peer) => connection
                .outbox
                .push(FrameKind::Response, 0, &PeerResponse::Error(reply)),
            Some(Served::Client) | None => connection.outbox.push(FrameKind::Response, 0, &Response::Error(reply)),
        }
        let _ = connection.flush().await;
    }
    end_connection(
        &shard,
        &mut connection.stream,
        &connection.outbox,
        &mut connection.proxies,
    )
    .await;
}

/// Turns a connection away with one error frame saying why (`Busy` when the node
/// serves `--max-connections` already, which clients retry with backoff; `TlsRequired`
/// at a TLS port), then closes the socket.
pub async fn turn_away(shard: Rc<Shard>, mut stream: Stream, code: ErrorCode, detail: String) {
    let outbox = Outbox::new(shard.map_epoch());
    let reply = shard.error_reply(code, detail);
    outbox.push(FrameKind::Response, 0, &Response::Error(reply));
    let _ = write_out(&outbox, &mut stream, &mut Vec::new(), READ_CHUNK_BYTES).await;
    let _ = stream.close().await;
}

struct Connection {
    shard: Rc<Shard>,
    stream: Stream,
    front: bool,
    session: Option<Session>,
    outbox: Rc<Outbox>,
    /// The outbox's previous buffer, swapped in while the current one is written.
    spare: Vec<u8>,
    /// The previous request's key, whose buffer takes the next read's key (see
    /// [`decode_request`]).
    key_buffer: Vec<u8>,
    /// Links to other nodes' shards, opened by the first request a front connection
    /// sends their way.
    proxies: std::cell::OnceCell<Proxies>,
    /// The stored keys of the `Get`s in the frames of one socket read, for
    /// [`Connection::prefetch_reads`].
    read_keys_ahead: ReadKeysAhead,
}

impl Connection {
    async fn run(&mut self) -> Result<(), Close> {
        self.stream.set_nodelay();
        let mut input = self.shake_hands_in_time().await?;
        // Grown a chunk at a time for a frame whose validated header says it is larger,
        // so memory follows the bytes that actually arrive.
        input.open(FrameBufferSizes::chunked(READ_CHUNK_BYTES));
        loop {
            let can_take_more = self.outbox.pending() < IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;
            // Frames left in the buffer when the pending bound stopped decoding come
            // first, before anything more is read.
            let mut made_progress = false;
            if can_take_more && input.buffered_bytes() > 0 {
                made_progress = self.answer_frames(&mut input).await? > 0;
            }
            if !made_progress && self.next_read(&mut input, can_take_more).await? {
                self.answer_frames(&mut input).await?;
            }
            self.flush().await?;
        }
    }

    /// Reads until the Hello is answered, within the handshake timeout, holding no more
    /// than one Hello's bytes meanwhile; gives back the buffer, which may hold requests
    /// sent right behind the Hello.
    async fn shake_hands_in_time(&mut self) -> Result<FrameBuffer, Close> {
        let mut input = FrameBuffer::for_handshake();
        let timeout = self.shard.admission().handshake_timeout;
        let handshake = async {
            while self.session.is_none() {
                if self.next_read(&mut input, true).await? {
                    self.answer_hello(&mut input)?;
                }
            }
            Ok(())
        };
        let timed_out = async {
            runtime::sleep(timeout).await;
            Err(Close::TimedOut)
        };
        futures_lite::future::or(handshake, timed_out).await?;
        self.flush().await?;
        Ok(input)
    }

    /// Answers the Hello, if it arrived whole.
    fn answer_hello(&mut self, input: &mut FrameBuffer) -> Result<(), Close> {
        let frame = input.next_frame().map_err(|error| {
            self.shard.refused(Refused::BadHello, self.peer(), &error.to_string());
            refuse(&self.shard, error)
        })?;
        if let Some((header, payload)) = frame {
            self.shake_hands(header.kind, header.request_id, payload)?;
        }
        Ok(())
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr()
    }

    /// Reads more into `input`; `false` when nothing was read because answers are
    /// waiting to be written. Reads nothing while the connection may take no more
    /// requests.
    async fn next_read(&mut self, input: &mut FrameBuffer, can_take_more: bool) -> Result<bool, Close> {
        if !can_take_more {
            // Too many of this connection's requests are waiting: read nothing more
            // until some are answered.
            self.outbox.ready().await;
            return Ok(false);
        }
        let buffer = input.read_buffer();
        let read = match self.spin_read(buffer).await? {
            Some(read) => read,
            None => {
                let outbox = self.outbox.clone();
                let answers = std::pin::pin!(outbox.ready());
                // Reads are readiness-based (see `Stream`), so dropping the losing read
                // loses no bytes.
                let receive = std::pin::pin!(self.stream.read(buffer));
                match futures::future::select(receive, answers).await {
                    Either::Left((received, _)) => received.map_err(|_| Close::Gone)?,
                    Either::Right(((), _)) => return Ok(false),
                }
            }
        };
        if read == 0 {
            return Err(Close::Gone);
        }
        input.filled(read);
        Ok(true)
    }

    /// With `--spin-us`, polls the socket with non-blocking reads for that long (yielding
    /// to the shard's other tasks in between) before the loop waits for readiness through
    /// the ring: a spinning core then sees a request as soon as it lands, without the
    /// ring's completion round trip. Stops early when answers are waiting to be written.
    /// `None`: nothing arrived (or no spin); the caller waits as usual. Where the
    /// runtime receives through the ring, the socket holds no bytes for a read of its
    /// own (they would overtake those the ring holds); the executor spins before it
    /// parks instead, watching the ring.
    async fn spin_read(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, Close> {
        let spin = self.shard.read_spin();
        if spin.is_zero() || buffer.is_empty() || !self.stream.reads_from_socket() {
            return Ok(None);
        }
        let fd = self.stream.as_raw_fd();
        let started = Instant::now();
        loop {
            // SAFETY: `buffer` is valid for writes of its length, and `fd` is this
            // connection's open socket for as long as `self.stream` lives.
            let read = unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
            if read >= 0 {
                return Ok(Some(read as usize));
            }
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
                _ => return Err(Close::Gone),
            }
            if self.outbox.queued_bytes() > 0 || started.elapsed() >= spin {
                return Ok(None);
            }
            futures_lite::future::yield_now().await;
        }
    }

    /// Handles the whole frames in `input` while the connection may have more requests
    /// pending; returns how many it handled. Answers are written out whenever they reach
    /// `ANSWER_BATCH_BYTES_MAX`, so a burst of reads of large values cannot pile up in
    /// memory before the first write.
    async fn answer_frames(&mut self, input: &mut FrameBuffer) -> Result<usize, Close> {
        self.check_grant()?;
        self.prefetch_reads(input);
        // One clock read for the whole read: the store's time for its requests, and
        // the start of their duration.
        let received = Instant::now();
        self.shard.advance_clock(received);
        self.outbox.heard_from(received);
        let mut answered = 0;
        let mut timed = 0;
        while self.outbox.pending() < IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX {
            let (header, payload) = match input.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return Err(refuse(&self.shard, error)),
            };
            let handled = self.handle(header.kind, header.request_id, payload, received).await?;
            if handled == Handled::AnsweredAtOnce {
                timed += 1;
            }
            answered += 1;
            if self.outbox.queued_bytes() >= ANSWER_BATCH_BYTES_MAX {
                self.flush().await?;
            }
        }
        self.shard.read_handled(answered, timed, received);
        Ok(answered)
    }

    /// Before a read's frames are answered one by one, starts loading the table entries
    /// of the reads among them into the cache (`Shard::prefetch_keys`), so that a
    /// pipelined batch waits on memory once rather than once per request.
    fn prefetch_reads(&mut self, input: &FrameBuffer) {
        // Where the table's prefetch is a no-op, gathering the keys is pure cost.
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        // A peer's frames are migration and replication traffic, not client reads.
        let Some(session) = self.session.as_ref().filter(|session| session.served == Served::Client) else {
            return;
        };
        self.read_keys_ahead.gather(&session.key_prefix, input);
        self.shard.prefetch_keys(self.read_keys_ahead.keys());
    }

    async fn flush(&mut self) -> Result<(), Close> {
        write_out(&self.outbox, &mut self.stream, &mut self.spare, 4 * READ_CHUNK_BYTES)
            .await
            .map_err(|_| Close::Gone)?;
        self.shard.publish_stats();
        Ok(())
    }

    /// Answers one frame, or submits it to its shard.
    async fn handle(
        &mut self,
        kind: FrameKind,
        request_id: u64,
        payload: &[u8],
        received: Instant,
    ) -> Result<Handled, Close> {
        let Some(session) = &self.session else {
            unreachable!("frames are answered only once the handshake is done (shake_hands_in_time)")
        };
        let (served, caller) = (session.served, Caller::of(session));
        if kind != FrameKind::Request {
            let error = ProtocolError::UnexpectedKind {
                found: kind,
                expected: FrameKind::Request,
            };
            return Err(refuse(&self.shard, error));
        }
        match served {
            Served::Client => self.handle_client(caller, request_id, payload, received).await,
            Served::Peer => {
                self.answer_peer(request_id, payload).await?;
                Ok(Handled::Untimed)
            }
        }
    }

    /// A client's request: admin commands are answered here, data commands go to the
    /// shard that owns their key.
    async fn handle_client(
        &mut self,
        caller: Caller,
        request_id: u64,
        payload: &[u8],
        received: Instant,
    ) -> Result<Handled, Close> {
        let request = decode_request(payload, &mut self.key_buffer).map_err(|error| refuse(&self.shard, error))?;
        if let Some(right) = request.command.right().filter(|right| !caller.rights.contains(*right)) {
            let answer = self.forbidden(right, &request.command);
            self.answer_here(request_id, ObjectKind::of(&request.command), &answer);
            if let Asked::Data(request) = request.into_asked() {
                self.recycle_key(request.command);
            }
            return Ok(Handled::Untimed);
        }
        let request = match request.into_asked() {
            Asked::Admin(admin) => {
                let answer = self.answer_admin(admin);
                self.answer_here(request_id, ObjectKind::Other, &answer);
                return Ok(Handled::Untimed);
            }
            Asked::Data(request) => request,
        };
        let (slot, target) = match self.place(caller.hasher, &request.command) {
            Ok(placed) => placed,
            Err(refusal) => {
                self.answer_here(request_id, ObjectKind::of_data(&request.command), &refusal);
                self.recycle_key(request.command);
                return Ok(Handled::Untimed);
            }
        };
        self.outbox.expect_answer();
        if matches!(target, Target::Local(owner) if owner == self.shard.id()) {
            let (handled, spent) = self.door().apply_here(caller.client_id, request_id, request, received);
            self.recycle_key(spent);
            return Ok(handled);
        }
        let placed = Placed {
            slot,
            target,
            client_id: caller.client_id,
            request_id,
        };
        Ok(self.dispatch(placed, request, received).await)
    }

    /// Answers a request without a shard's store: counted, and queued for the client.
    fn answer_here(&self, request_id: u64, object: ObjectKind, answer: &Response) {
        self.shard.answered_here(object, answer);
        self.outbox.push_response(request_id, answer);
    }

    /// After a credentials reload, takes the session's credential again from the new
    /// gate: a revoked token, or one no longer allowed its namespace, ends the
    /// connection; changed rights apply from now on. One atomic load while nothing was
    /// reloaded.
    fn check_grant(&mut self) -> Result<(), Close> {
        let generation = self.shard.gate_generation();
        let port_takes_forwarded = !self.front;
        let Some(session) = self.session.as_mut().filter(|session| session.generation != generation) else {
            return Ok(());
        };
        let family = Family::from(session.served);
        let namespace = session.key_prefix.get(1..).unwrap_or_default();
        match self
            .shard
            .gate()
            .regrant(&session.grant, family, namespace, port_takes_forwarded)
        {
            Ok(grant) => {
                session.grant = grant;
                session.generation = generation;
                Ok(())
            }
            Err(denial) => {
                let message = format!("credentials revoked: {denial}");
                self.shard.refused(Refused::Revoked, self.stream.peer_addr(), &message);
                Err(Close::Refused {
                    reply: self.shard.error_reply(denial.code(), message),
                })
            }
        }
    }

    /// The answer to a command whose `right` the session's credentials lack.
    fn forbidden(&self, right: Right, command: &Command) -> Response {
        let denial = Denial::Right {
            name: self
                .session
                .as_ref()
                .map_or("", |session| session.grant.name())
                .to_string(),
            right,
            what: command.name().to_string(),
        };
        self.shard.error(ErrorCode::Forbidden, denial.to_string())
    }

    fn answer_admin(&self, command: AdminCommand) -> Response {
        match command {
            AdminCommand::Ping => Response::Pong,
            AdminCommand::Info => Response::Info(self.shard.node_info()),
            AdminCommand::GetSlotMap => Response::SlotMap(self.shard.slot_map()),
        }
    }

    /// A peer's request: a map to serve under, or a step of a migration of this shard.
    async fn answer_peer(&mut self, request_id: u64, payload: &[u8]) -> Result<(), Close> {
        let request = decode_payload::<PeerRequest>(payload).map_err(|error| refuse(&self.shard, error))?;
        let answer = match request {
            PeerRequest::InstallMap(map) => self.shard.install_map(map),
            PeerRequest::MigrateOut(order) => self.shard.clone().migrate_out(order).await,
            PeerRequest::MigrateIn(order) => self.shard.migrate_in(&order),
            PeerRequest::MigrateAbort {
                migration_id,
                map_epoch,
            } => self.shard.migrate_abort(migration_id, map_epoch),
            PeerRequest::Replicate(batch) => self.shard.replicate_in(batch),
            PeerRequest::HandOver(order) => self.shard.clone().hand_over(order).await,
        };
        self.outbox.push(FrameKind::Response, request_id, &answer);
        Ok(())
    }

    /// The first frame: a Hello, whose credentials and namespace establish the session.
    fn shake_hands(&mut self, kind: FrameKind, request_id: u64, payload: &[u8]) -> Result<(), Close> {
        let port = if self.front { &FRONT_PORT } else { &SHARD_PORT };
        let generation = self.shard.gate_generation();
        let admitted = admit(kind, payload, port, &self.shard.gate()).map_err(|refusal| {
            let reason = match refusal.code {
                ErrorCode::Unauthorized => Refused::Unauthorized,
                ErrorCode::Forbidden => Refused::Forbidden,
                _ => Refused::BadHello,
            };
            self.shard.refused(reason, self.peer(), &refusal.message);
            Close::Refused {
                reply: self.shard.error_reply(refusal.code, refusal.message),
            }
        })?;
        self.session = Some(self.open_session(admitted, generation));
        let reply = HelloReply {
            node_id: self.shard.node_id(),
            shard_id: if self.front {
                FRONT_SHARD_ID
            } else {
                self.shard.id() as u16
            },
            shard_count: self.shard.shard_count() as u16,
            map_epoch: self.shard.map_epoch(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.outbox.push(FrameKind::HelloReply, request_id, &reply);
        Ok(())
    }

    /// Where a keyed command goes: its slot and the shard that serves it, or the answer
    /// that refuses it here. The front port forwards to any shard, of this node or
    /// another; a shard's own port sends the client to the owner instead.
    fn place(&self, hasher: SlotHasher, command: &DataCommand) -> Result<(u32, Target), Response> {
        let key = command.key();
        if key.len() > KEY_BYTES_MAX {
            let message = format!("key of {} bytes exceeds key_bytes_max ({KEY_BYTES_MAX})", key.len());
            return Err(self.shard.error(ErrorCode::KeyTooLarge, message));
        }
        let slot = hasher.slot(key);
        if self.front {
            return self.shard.admit_front(slot).map(|target| (slot, target));
        }
        match self.shard.admit(slot)? {
            owner if owner == self.shard.id() => Ok((slot, Target::Local(owner))),
            owner => {
                let epoch = self.shard.map_epoch();
                let message = format!("slot {slot} belongs to shard {owner} under map epoch {epoch}");
                Err(self.shard.error(ErrorCode::WrongShard, message))
            }
        }
    }

    /// Hands a placed request to its shard, of this node or another.
    async fn dispatch(&mut self, placed: Placed, request: DataRequest, received: Instant) -> Handled {
        let (handled, spent) = self.door().dispatch(placed, request, received).await;
        if let Some(command) = spent {
            self.recycle_key(command);
        }
        handled
    }

    /// What this connection lends a request's dispatch.
    fn door(&self) -> Door<'_> {
        let (client_id, namespace) = self
            .session
            .as_ref()
            .map_or((0, &[][..]), |session| (session.client_id, session.namespace()));
        Door {
            shard: &self.shard,
            outbox: &self.outbox,
            key_prefix: self.session.as_ref().map_or(&[][..], |session| &session.key_prefix[..]),
            proxies: &self.proxies,
            client_id,
            namespace,
        }
    }

    /// Keeps a handled request's key buffer for the next read's key.
    fn recycle_key(&mut self, mut command: DataCommand) {
        let key = command.key_mut();
        if key.capacity() <= KEY_BUFFER_BYTES_MAX {
            self.key_buffer = std::mem::take(key);
        }
    }

    /// The session of an admitted Hello.
    fn open_session(&self, Admitted { hello, served, grant }: Admitted<Served>, generation: u64) -> Session {
        let mut key_prefix = Vec::with_capacity(1 + hello.namespace.len());
        // Fits: NAMESPACE_BYTES_MAX <= u8::MAX, and `admit` checked the length.
        key_prefix.push(u8::try_from(hello.namespace.len()).unwrap_or(u8::MAX));
        key_prefix.extend_from_slice(&hello.namespace);
        Session {
            served,
            client_id: hello.client_id,
            grant,
            generation,
            hasher: SlotHasher::new(&hello.namespace),
            key_prefix,
        }
    }
}

fn refuse(shard: &Shard, error: ProtocolError) -> Close {
    Close::Refused {
        reply: shard.error_reply(error.code(), error.to_string()),
    }
}

/// Decodes a request. A `Get` (of a bytes value or a counter: the hot path) is read in
/// place without rkyv's validator, and its key built in `key_buffer`'s allocation, which
/// the connection recycles from the previous request, so such a read allocates
/// nothing; other commands are validated and deserialized by rkyv.
fn decode_request(payload: &[u8], key_buffer: &mut Vec<u8>) -> Result<Request, ProtocolError> {
    match ReadRequest::parse(payload) {
        Some(read) => Ok(read.to_request(std::mem::take(key_buffer))),
        None => decode_payload::<Request>(payload),
    }
}

/// The stored keys (namespace prefix, then key) of the reads a read's frames hold,
/// gathered before the frames are answered so that their lookups can be prefetched
/// together. Reused from read to read: at most `PREFETCH_KEYS_MAX` keys of
/// `PREFETCH_KEY_BYTES_MAX` bytes each.
#[derive(Default)]
struct ReadKeysAhead {
    /// The keys, one after another.
    bytes: Vec<u8>,
    /// Where each key ends in `bytes`.
    ends: Vec<usize>,
}

impl ReadKeysAhead {
    /// Gathers the keys of the reads among the first `PREFETCH_KEYS_MAX` whole frames
    /// `input` holds, under `prefix`; none when it holds a single frame, as a lone
    /// lookup has nothing to overlap with.
    fn gather(&mut self, prefix: &[u8], input: &FrameBuffer) {
        self.bytes.clear();
        self.ends.clear();
        let mut frames = input.whole_frames_ahead();
        let (Some(first), Some(second)) = (frames.next(), frames.next()) else {
            return;
        };
        for payload in [first, second].into_iter().chain(frames).take(PREFETCH_KEYS_MAX) {
            match ReadRequest::parse(payload) {
                Some(read) if prefix.len() + read.key.len() <= PREFETCH_KEY_BYTES_MAX => {
                    self.bytes.extend_from_slice(prefix);
                    self.bytes.extend_from_slice(read.key);
                    self.ends.push(self.bytes.len());
                }
                _ => {}
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.bytes[start..end])
    }
}

/// The largest key buffer a connection keeps for its next request: a key with its
/// namespace prefix, both at their limits.
const KEY_BUFFER_BYTES_MAX: usize = KEY_BYTES_MAX + 1 + NAMESPACE_BYTES_MAX;

#[cfg(test)]
mod tests {
    use engram_proto::{
        encode_message, BytesCommand, CounterCommand, FrameKind, QueueCommand, QueueEnd, SetCondition,
        FRAME_HEADER_BYTES,
    };

    use super::*;
    use crate::dispatch::prefix_key;

    fn payload(command: Command) -> Vec<u8> {
        let request = Request {
            op_id: 7,
            completed_below_op_id: 5,
            command,
        };
        let mut frame = Vec::new();
        encode_message(FrameKind::Request, 1, 1, &request, &mut frame).unwrap();
        frame.split_off(FRAME_HEADER_BYTES)
    }

    #[test]
    fn decoding_with_a_key_buffer_gives_what_plain_decoding_gives() {
        let commands = [
            Command::from(BytesCommand::Get {
                key: b"a long key that the next, shorter ones must not show through".to_vec(),
            }),
            Command::from(BytesCommand::Get { key: b"k1".to_vec() }),
            Command::from(CounterCommand::Get {
                key: b"counter".to_vec(),
            }),
            Command::from(BytesCommand::Get { key: Vec::new() }),
            Command::from(BytesCommand::Set {
                key: b"k2".to_vec(),
                value: b"v".to_vec(),
                ttl_ms: 3,
                condition: SetCondition::IfAbsent,
            }),
            Command::from(AdminCommand::Ping),
            Command::from(CounterCommand::Get { key: b"c".to_vec() }),
        ];
        // The buffer starts with a stale key and gets every decoded key back, as the
        // connection hands it back.
        let mut key_buffer = b"stale key from an earlier request".to_vec();
        for command in commands {
            let bytes = payload(command);
            let mut decoded = decode_request(&bytes, &mut key_buffer).unwrap();
            assert_eq!(decoded, decode_payload::<Request>(&bytes).unwrap());
            if let Some(key) = decoded.command.key_mut() {
                key_buffer = std::mem::take(key);
            }
        }
        assert!(decode_request(&[1, 2, 3], &mut key_buffer).is_err());
    }

    #[test]
    fn a_read_key_is_built_and_prefixed_in_the_recycled_buffer() {
        let prefix = b"\x02ns";
        let mut key_buffer = Vec::with_capacity(64);
        let buffer = key_buffer.as_ptr();
        let request = decode_request(
            &payload(Command::from(BytesCommand::Get { key: b"key".to_vec() })),
            &mut key_buffer,
        )
        .unwrap();
        let Asked::Data(mut request) = request.into_asked() else {
            panic!("a get decoded as an admin command");
        };
        prefix_key(&mut request.command, prefix);
        let DataCommand::Bytes(BytesCommand::Get { key }) = request.command else {
            panic!("decoded as {:?}", request.command);
        };
        assert_eq!(key, b"\x02nskey");
        assert_eq!(key.as_ptr(), buffer, "neither decoding nor prefixing allocated");
    }

    /// A buffer holding the request frames of `commands`, as a client sends them.
    fn buffer_of(commands: &[Command]) -> FrameBuffer {
        let mut bytes = Vec::new();
        for (request_id, command) in (1..).zip(commands) {
            let request = Request {
                op_id: request_id,
                completed_below_op_id: 0,
                command: command.clone(),
            };
            encode_message(FrameKind::Request, request_id, 1, &request, &mut bytes).unwrap();
        }
        let mut buffer = FrameBuffer::new(FrameBufferSizes::chunked(READ_CHUNK_BYTES));
        buffer.read_buffer()[..bytes.len()].copy_from_slice(&bytes);
        buffer.filled(bytes.len());
        buffer
    }

    #[test]
    fn the_keys_gathered_ahead_are_the_stored_keys_the_reads_will_look_up() {
        let get = |key: &[u8]| Command::from(BytesCommand::Get { key: key.to_vec() });
        let prefix = b"\x02ns";
        // With the prefix, the longest key prefetched and the shortest left out.
        let longest = vec![b'k'; PREFETCH_KEY_BYTES_MAX - prefix.len()];
        let too_long = vec![b'k'; PREFETCH_KEY_BYTES_MAX - prefix.len() + 1];
        let mut commands = vec![
            get(b"first"),
            Command::from(BytesCommand::Del {
                key: b"not a read".to_vec(),
            }),
            Command::from(CounterCommand::Get {
                key: b"counter".to_vec(),
            }),
            get(&longest),
            get(&too_long),
            Command::from(AdminCommand::Ping),
        ];
        commands.extend((0..PREFETCH_KEYS_MAX).map(|n| get(format!("key:{n}").as_bytes())));
        let input = buffer_of(&commands);
        let mut ahead = ReadKeysAhead::default();
        ahead.gather(prefix, &input);
        // What the connection will look up for each read among the first frames: the
        // key as `prefix_key` stores it. A key too long with its prefix is left out.
        let expected: Vec<Vec<u8>> = commands[..PREFETCH_KEYS_MAX]
            .iter()
            .filter(|command| command.right() == Some(Right::Read))
            .filter_map(|command| {
                let Asked::Data(request) = (Request {
                    op_id: 0,
                    completed_below_op_id: 0,
                    command: (*command).clone(),
                })
                .into_asked() else {
                    return None;
                };
                let mut data = request.command;
                prefix_key(&mut data, prefix);
                Some(data.key().to_vec()).filter(|key| key.len() <= PREFETCH_KEY_BYTES_MAX)
            })
            .collect();
        assert_eq!(expected.len(), PREFETCH_KEYS_MAX - 3, "the test's own count");
        assert!(expected.iter().any(|key| key.len() == PREFETCH_KEY_BYTES_MAX));
        assert_eq!(ahead.keys().map(<[u8]>::to_vec).collect::<Vec<_>>(), expected);
        // A read holding one frame gathers nothing.
        ahead.gather(prefix, &buffer_of(&commands[..1]));
        assert_eq!(ahead.keys().count(), 0);
    }

    #[test]
    fn prefixing_puts_the_namespace_before_any_key() {
        for key in [&b""[..], b"k", b"some key longer than the prefix"] {
            let mut command = DataCommand::from(BytesCommand::Del { key: key.to_vec() });
            prefix_key(&mut command, b"\x02ns");
            assert_eq!(command.key(), &[&b"\x02ns"[..], key].concat()[..]);
        }
        let mut pop = DataCommand::from(QueueCommand::PopAny {
            key: b"a".to_vec(),
            more_keys: vec![b"b".to_vec(), b"c".to_vec()],
            end: QueueEnd::Front,
            timeout_ms: 0,
        });
        prefix_key(&mut pop, b"\x01n");
        let keys: Vec<&[u8]> = pop.keys().collect();
        assert_eq!(
            keys,
            [&b"\x01na"[..], b"\x01nb", b"\x01nc"],
            "every key of a pop of several"
        );
    }
}
