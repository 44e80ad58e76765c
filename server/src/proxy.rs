//! Front-port forwarding to other nodes' shards: what lets one address reach every key.
//!
//! A front connection whose request belongs to another node's shard opens, on first
//! need, a link of its own to that shard's port and sends the request there as the
//! client sent it: the same operation id and completed-below mark, and the key without
//! the namespace prefix. The link's handshake carries the client's id and namespace
//! (with this node's credentials), so the owner records the operation under the
//! client's id and prefixes the key itself, exactly as if the client had come straight
//! to it: a retry through any door gets the recorded first answer. A link per (front
//! connection, remote shard) costs a socket per pair; a link shared by a node's front
//! connections would have to carry client ids and namespaces per request, which the
//! protocol has no field for.
//!
//! Requests on a link are multiplexed under the link's own request ids; their answers go
//! straight into the connection's outbox under the client's request id. Nothing here
//! grows without bound: the requests in flight are the connection's own, counted in its
//! pending bound (`IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`, which is also what the owner
//! takes per connection), the bytes queued for a link are capped
//! ([`PROXY_QUEUED_BYTES_MAX`], past which the connection waits), and so are the links
//! per connection ([`PROXY_LINKS_PER_CONNECTION_MAX`]).
//!
//! A link that cannot connect or shake hands, breaks, or leaves a request unanswered
//! past its bound (the request's own wait plus [`PROXY_ANSWER_GRACE_MS`]) fails: each of
//! its requests is answered at once (`TryAgain` naming the address), its socket closes,
//! so the owner withdraws whatever it parked for it, and the next request opens a fresh
//! link. The client's retry keeps its operation id, so a request that did reach the
//! owner is not applied twice. When the client's connection closes, its links close too.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt::Display;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use engram_proto::limits::WAIT_MS_MAX;
use engram_proto::link::CallError;
use engram_proto::{
    ClientProtocol, Command, ErrorCode, ErrorReply, FrameBufferSizes, Identity, Link, LinkError, LinkEvent, Request,
    Response,
};
use futures::io::{AsyncReadExt, ReadHalf, WriteHalf};
use futures_lite::FutureExt;

use crate::link;
use crate::notify::LocalNotify;
use crate::outbox::Outbox;
use crate::runtime::{self, Tasks};
use crate::stream::Stream;
use engram_tls::ClientTls;

/// Longest a link may take to connect, and then to shake hands. A node that is down
/// refuses at once; this bounds the case where nothing answers at all (a stopped
/// process, a lost route), so the requests waiting for the link get their error while
/// the client still has time to retry.
pub const PROXY_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How long past a request's own wait (0, or the `wait_ms`/`timeout_ms` of a blocking
/// command, which the owner parks that long) a link waits for its answer before it
/// declares the owner unresponsive. The owner answers a parked request by its deadline
/// itself, so this only covers the network and a busy shard.
pub const PROXY_ANSWER_GRACE_MS: u64 = 5_000;
/// Request bytes queued for one link before the front connection waits for the link's
/// writer: an owner that reads slowly pushes back on the client rather than piling up
/// requests here.
pub const PROXY_QUEUED_BYTES_MAX: usize = 1024 * 1024;
/// Bytes a link asks of its socket per read, and keeps as its read buffer while idle. A
/// front connection may hold a link per remote shard, so this is smaller than a client
/// connection's buffer; a larger answer grows the buffer a chunk at a time.
pub const PROXY_READ_CHUNK_BYTES: usize = 16 * 1024;
/// Links one front connection holds at most (one per remote shard it used), each a
/// socket. Past it, idle links are closed to make room.
pub const PROXY_LINKS_PER_CONNECTION_MAX: usize = 256;

/// Why a forwarded request got no answer from its owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot reach {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("{address} refused this node's handshake: {answer}")]
    Refused { address: String, answer: String },
    #[error("{address} did not answer within {after_ms} ms")]
    Silent { address: String, after_ms: u64 },
    #[error("the link to {address} broke: {reason}")]
    Broken { address: String, reason: String },
    #[error(
        "this connection uses proxy_links_per_connection_max ({PROXY_LINKS_PER_CONNECTION_MAX}) links to other nodes, all busy"
    )]
    TooManyLinks,
}

impl ProxyError {
    /// The code the client gets. A refused handshake is a misconfigured cluster (tokens
    /// or versions differ between nodes), which no retry mends; everything else may
    /// pass with the next try, which keeps its operation id.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProxyError::Refused { .. } => ErrorCode::Internal,
            ProxyError::TooManyLinks => ErrorCode::Busy,
            _ => ErrorCode::TryAgain,
        }
    }

    fn answer(&self, map_epoch: u64) -> Response {
        Response::Error(ErrorReply {
            code: self.code().as_u16(),
            message: self.to_string(),
            map_epoch,
        })
    }
}

impl From<CallError> for ProxyError {
    fn from(error: CallError) -> ProxyError {
        match error {
            CallError::Connect { address, source } => ProxyError::Unreachable {
                address,
                reason: source.to_string(),
            },
            CallError::Link {
                address,
                source: LinkError::Refused(reply),
            } => ProxyError::Refused {
                address,
                answer: reply.to_string(),
            },
            CallError::TimedOut { address, after } => ProxyError::Silent {
                address,
                after_ms: after.as_millis() as u64,
            },
            CallError::Io { address, source } => ProxyError::Broken {
                address,
                reason: source.to_string(),
            },
            CallError::Link { address, source } => ProxyError::Broken {
                address,
                reason: source.to_string(),
            },
        }
    }
}

/// How long a forwarded request may go unanswered: the owner may park it for its own
/// wait (bounded like the owner bounds it), then the grace.
fn answer_bound_ms(command: &Command) -> u64 {
    command.wait_ms().min(WAIT_MS_MAX) + PROXY_ANSWER_GRACE_MS
}

/// A forwarded request waiting for its answer: the waiter of its request id on the link
/// (the client's ids may repeat across its connections' links; the link's do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    /// The client's request id, which the answer goes back under.
    request_id: u64,
    /// The map epoch the request was routed under, stamped on an error answered here.
    map_epoch: u64,
    deadline: Instant,
    bound_ms: u64,
}

/// One front connection's links to other nodes' shards, by shard address.
pub struct Proxies {
    /// The client's identity, with this node's credentials.
    client_id: u64,
    namespace: Vec<u8>,
    credentials: Vec<u8>,
    outbox: Weak<Outbox>,
    links: RefCell<foldhash::HashMap<String, Rc<ProxyLink>>>,
    /// The shard's tasks, which the links' tasks join.
    tasks: Tasks,
    /// What the links connect with, when the cluster speaks TLS.
    tls: Option<ClientTls>,
}

impl Proxies {
    pub fn new(
        client_id: u64,
        namespace: &[u8],
        credentials: &[u8],
        outbox: Weak<Outbox>,
        tasks: Tasks,
        tls: Option<ClientTls>,
    ) -> Proxies {
        Proxies {
            tasks,
            tls,
            client_id,
            namespace: namespace.to_vec(),
            credentials: credentials.to_vec(),
            outbox,
            links: RefCell::default(),
        }
    }

    /// Sends `request` (its key unprefixed) to the shard at `address`. The connection
    /// counted it as pending; its answer, or why there is none, arrives in the outbox.
    /// Waits while the link has `PROXY_QUEUED_BYTES_MAX` queued, which pushes back on the
    /// client.
    pub async fn forward(&self, address: &str, request_id: u64, map_epoch: u64, request: &Request) {
        let link = match self.link(address) {
            Ok(link) => link,
            Err(error) => return self.answer_now(request_id, &error.answer(map_epoch)),
        };
        link.room().await;
        if link.closed.get() {
            let error = link.failure.borrow().clone().unwrap_or_else(|| link.broken("closed"));
            return self.answer_now(request_id, &error.answer(map_epoch));
        }
        link.send(request_id, map_epoch, request);
    }

    fn answer_now(&self, request_id: u64, answer: &Response) {
        if let Some(outbox) = self.outbox.upgrade() {
            outbox.deliver(request_id, answer, false);
        }
    }

    /// The open link to `address`, opened now if there is none (a failed one is
    /// replaced, so every request after a failure tries afresh).
    fn link(&self, address: &str) -> Result<Rc<ProxyLink>, ProxyError> {
        let mut links = self.links.borrow_mut();
        if let Some(link) = links.get(address).filter(|link| !link.closed.get()) {
            return Ok(link.clone());
        }
        links.retain(|_, link| !link.closed.get());
        if links.len() >= PROXY_LINKS_PER_CONNECTION_MAX {
            let idle = links
                .iter()
                .find(|(_, link)| link.link.borrow().outstanding().is_empty())
                .map(|(address, _)| address.clone())
                .ok_or(ProxyError::TooManyLinks)?;
            if let Some(link) = links.remove(&idle) {
                link.close();
            }
        }
        let identity = Identity {
            client_id: self.client_id,
            namespace: &self.namespace,
            credentials: &self.credentials,
        };
        let link = Rc::new(ProxyLink::new(
            address,
            identity,
            self.outbox.clone(),
            self.tls.clone(),
        )?);
        if self.tasks.spawn(link.clone().run()).is_none() {
            // The shard is stopping: the link never runs, and the request fails with it.
            link.close();
        }
        links.insert(address.to_string(), link.clone());
        Ok(link)
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for link in self.links.get_mut().values() {
            link.close();
        }
    }
}

/// A link from one front connection to one remote shard. Its task connects, then reads
/// answers, writes queued requests and watches deadlines until the link fails or the
/// connection closes it.
struct ProxyLink {
    address: String,
    outbox: Weak<Outbox>,
    /// The Hello and the requests not written yet (they wait there while the link
    /// connects), and the requests in flight with what waits for their answers.
    link: RefCell<Link<ClientProtocol, Waiting>>,
    /// The requests in flight by deadline, then request id on the link.
    deadlines: RefCell<BTreeSet<(Instant, u64)>>,
    /// Set once the link takes no more requests (it failed, or its connection closed).
    closed: Cell<bool>,
    failure: RefCell<Option<ProxyError>>,
    writer: LocalNotify,
    room: LocalNotify,
    reaper: LocalNotify,
    /// When the reaper plans to wake; only a request due before that wakes it early.
    reaper_wake: Cell<Instant>,
    stop: LocalNotify,
    tls: Option<ClientTls>,
}

impl ProxyLink {
    fn new(
        address: &str,
        identity: Identity<'_>,
        outbox: Weak<Outbox>,
        tls: Option<ClientTls>,
    ) -> Result<ProxyLink, ProxyError> {
        // A front connection may hold a link per remote shard, so its buffer is small.
        let sizes = FrameBufferSizes::chunked(PROXY_READ_CHUNK_BYTES);
        let link = Link::new(identity, sizes).map_err(|error| ProxyError::Broken {
            address: address.to_string(),
            reason: error.to_string(),
        })?;
        Ok(ProxyLink {
            address: address.to_string(),
            outbox,
            link: RefCell::new(link),
            deadlines: RefCell::default(),
            closed: Cell::new(false),
            failure: RefCell::default(),
            writer: LocalNotify::default(),
            room: LocalNotify::default(),
            reaper: LocalNotify::default(),
            reaper_wake: Cell::new(Instant::now()),
            stop: LocalNotify::default(),
            tls,
        })
    }

    async fn run(self: Rc<ProxyLink>) {
        if self.closed.get() {
            return;
        }
        let stopped = async {
            self.stop.notified().await;
            None
        };
        if let Some(error) = self.serve().or(stopped).await {
            self.fail(error);
        }
        // Dropping the socket here tells the owner to withdraw what it parked for us.
    }

    async fn serve(&self) -> Option<ProxyError> {
        let timeout = Duration::from_millis(PROXY_CONNECT_TIMEOUT_MS);
        let mut stream = match link::connect(&self.address, timeout, self.tls.as_ref()).await {
            Ok(stream) => stream,
            Err(error) => return Some(error.into()),
        };
        let shaken = link::within(&self.address, timeout, link::handshake(&mut stream, &self.link)).await;
        if let Err(error) = shaken {
            return Some(error.into());
        }
        let (reader, writer) = stream.split();
        let failure = self
            .read_answers(reader)
            .or(self.write_requests(writer))
            .or(self.reap())
            .await;
        Some(failure)
    }

    /// Waits while the link's queue is full.
    async fn room(&self) {
        while !self.closed.get() && self.link.borrow().queued_bytes() >= PROXY_QUEUED_BYTES_MAX {
            self.room.notified().await;
        }
    }

    fn send(&self, request_id: u64, map_epoch: u64, request: &Request) {
        let bound_ms = answer_bound_ms(&request.command);
        let deadline = Instant::now() + Duration::from_millis(bound_ms);
        let waiting = Waiting {
            request_id,
            map_epoch,
            deadline,
            bound_ms,
        };
        let sent = self.link.borrow_mut().send(request, map_epoch, waiting);
        match sent {
            Ok(id) => self.deadlines.borrow_mut().insert((deadline, id)),
            // Not sent, and what failed it may fail the next: the link starts afresh.
            Err(error) => {
                self.answer_now(request_id, &self.broken(&error).answer(map_epoch));
                return self.fail(self.broken(error));
            }
        };
        if deadline < self.reaper_wake.get() {
            self.reaper.notify();
        }
        self.writer.notify();
    }

    fn answer_now(&self, request_id: u64, answer: &Response) {
        if let Some(outbox) = self.outbox.upgrade() {
            outbox.deliver(request_id, answer, true);
        }
    }

    /// Answers every request in flight with `error` and stops the link.
    fn fail(&self, error: ProxyError) {
        if self.closed.replace(true) {
            return;
        }
        tracing::debug!(address = %self.address, %error, "front-port link failed");
        for waiting in self.forget_all() {
            self.answer_now(waiting.request_id, &error.answer(waiting.map_epoch));
        }
        *self.failure.borrow_mut() = Some(error);
        self.room.notify();
        self.stop.notify();
    }

    /// Stops the link without answering anything: its connection is gone.
    fn close(&self) {
        if !self.closed.replace(true) {
            self.forget_all();
        }
        self.room.notify();
        self.stop.notify();
    }

    /// Drops what is queued and takes the requests in flight.
    fn forget_all(&self) -> Vec<Waiting> {
        let mut link = self.link.borrow_mut();
        link.clear_queued();
        self.deadlines.borrow_mut().clear();
        link.outstanding_mut().drain().map(|(_, waiting)| waiting).collect()
    }

    fn broken(&self, reason: impl Display) -> ProxyError {
        ProxyError::Broken {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    /// Reads answers until the link breaks; returns why it did.
    async fn read_answers(&self, mut reader: ReadHalf<Stream>) -> ProxyError {
        loop {
            if let Err(error) = self.deliver_answers() {
                return error;
            }
            match link::receive(&mut reader, &self.link).await {
                Ok(0) => return self.broken("the owner closed the connection"),
                Ok(_) => {}
                Err(error) => return self.broken(error),
            }
        }
    }

    /// Hands every whole answer read to the connection, under the client's request id.
    fn deliver_answers(&self) -> Result<(), ProxyError> {
        loop {
            let event = self
                .link
                .borrow_mut()
                .next_event()
                .map_err(|error| self.broken(error))?;
            match event {
                None => return Ok(()),
                Some(LinkEvent::Answer {
                    request_id,
                    response,
                    waiter,
                    ..
                }) => {
                    self.deadlines.borrow_mut().remove(&(waiter.deadline, request_id));
                    if let Some(outbox) = self.outbox.upgrade() {
                        outbox.deliver(waiter.request_id, &response, true);
                    }
                }
                // The handshake was done before answers were read.
                Some(LinkEvent::Ready(_)) => {}
            }
        }
    }

    /// Writes queued requests until the link breaks; returns why it did.
    async fn write_requests(&self, mut writer: WriteHalf<Stream>) -> ProxyError {
        let mut spare = Vec::new();
        loop {
            while self.link.borrow().output().is_empty() {
                self.writer.notified().await;
            }
            // Requests arriving during the write queue up behind it.
            if let Err(error) = link::send_output(&mut writer, &self.link, &mut spare).await {
                return self.broken(error);
            }
            if spare.capacity() > PROXY_QUEUED_BYTES_MAX {
                spare = Vec::new();
            }
            self.room.notify();
        }
    }

    /// The request whose deadline passed first, if any did by `now`.
    fn overdue(&self, now: Instant) -> Option<Waiting> {
        let &(deadline, id) = self.deadlines.borrow().first()?;
        (deadline <= now)
            .then(|| self.link.borrow().outstanding().get(id).copied())
            .flatten()
    }

    /// Sleeps until the earliest deadline in flight; returns when one passed unanswered.
    async fn reap(&self) -> ProxyError {
        loop {
            let now = Instant::now();
            if let Some(waiting) = self.overdue(now) {
                return ProxyError::Silent {
                    address: self.address.clone(),
                    after_ms: waiting.bound_ms,
                };
            }
            let next = self.deadlines.borrow().first().map(|&(deadline, _)| deadline);
            let wake = next.unwrap_or(now + Duration::from_millis(PROXY_ANSWER_GRACE_MS));
            self.reaper_wake.set(wake);
            runtime::sleep(wake.saturating_duration_since(now))
                .or(self.reaper.notified())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::link::blocking::fill;
    use engram_proto::{
        decode_payload, encode_message, split_frame, BytesCommand, CounterCommand, FrameBuffer, FrameKind, Hello,
        LockCommand, QueueCommand, Split,
    };

    fn get() -> Command {
        Command::from(BytesCommand::Get { key: b"k".to_vec() })
    }

    use std::io::Write;

    /// Reads one whole frame off a blocking socket: its kind, request id and payload.
    fn read_frame(stream: &mut std::net::TcpStream, input: &mut FrameBuffer) -> (FrameKind, u64, Vec<u8>) {
        loop {
            if let Some((header, payload)) = input.next_frame().expect("a valid frame") {
                return (header.kind, header.request_id, payload.to_vec());
            }
            assert!(fill(stream, input).expect("read") > 0, "the link closed mid-frame");
        }
    }

    fn write_frame<T>(stream: &mut std::net::TcpStream, kind: FrameKind, request_id: u64, message: &T)
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<Vec<u8>, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>,
        >,
    {
        let mut out = Vec::new();
        encode_message(kind, request_id, 1, message, &mut out).expect("encode");
        stream.write_all(&out).expect("write");
    }

    /// What the owners in these tests answer a Hello with.
    fn hello_reply() -> engram_proto::HelloReply {
        engram_proto::HelloReply {
            node_id: 2,
            shard_id: 0,
            shard_count: 1,
            map_epoch: 1,
            server_version: "test".into(),
        }
    }

    /// An owner that takes the handshake and two requests, then answers them in reverse
    /// order; gives back what it received.
    fn fake_owner(listener: std::net::TcpListener) -> std::thread::JoinHandle<(Hello, Vec<Request>)> {
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut buffer = FrameBuffer::new(FrameBufferSizes::LINK);
            let (_, _, payload) = read_frame(&mut stream, &mut buffer);
            let hello = decode_payload::<Hello>(&payload).expect("a Hello");
            let reply = hello_reply();
            write_frame(&mut stream, FrameKind::HelloReply, 0, &reply);
            let mut requests = Vec::new();
            let mut ids = Vec::new();
            for _ in 0..2 {
                let (_, id, payload) = read_frame(&mut stream, &mut buffer);
                requests.push(decode_payload::<Request>(&payload).expect("a Request"));
                ids.push(id);
            }
            for (value, id) in [(2, ids[1]), (1, ids[0])] {
                write_frame(&mut stream, FrameKind::Response, id, &Response::Counter { value });
            }
            (hello, requests)
        })
    }

    /// The answers in `outbox`, by the client's request id, once there are `count`.
    async fn answers(outbox: &Outbox, count: usize) -> Vec<(u64, Response)> {
        let mut answers = Vec::new();
        let mut frames = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while answers.len() < count {
            assert!(Instant::now() < deadline, "only {answers:?} arrived");
            runtime::sleep(Duration::from_millis(1)).await;
            frames.extend(outbox.take_frames());
            while let Ok(Split::Frame { header, payload }) = split_frame(&frames) {
                answers.push((
                    header.request_id,
                    decode_payload::<Response>(&frames[payload.clone()]).unwrap(),
                ));
                frames.drain(..payload.end);
            }
        }
        answers
    }

    #[test]
    fn a_link_speaks_for_its_client_and_answers_each_request_under_its_own_id() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let owner = fake_owner(listener);
        let add = Request {
            op_id: 9,
            completed_below_op_id: 8,
            command: Command::from(CounterCommand::Add {
                key: b"unprefixed".to_vec(),
                delta: 1,
            }),
        };
        let sent = [add.clone(), counter_get()];
        runtime::run_unpinned(async move {
            let outbox = Rc::new(Outbox::default());
            let proxies = Proxies::new(42, b"tenant", b"token", Rc::downgrade(&outbox), Tasks::default(), None);
            proxies.forward(&address, 100, 3, &sent[0]).await;
            proxies.forward(&address, 101, 3, &sent[1]).await;
            let mut got = answers(&outbox, 2).await;
            got.sort_by_key(|(request_id, _)| *request_id);
            let expected = [
                (100, Response::Counter { value: 1 }),
                (101, Response::Counter { value: 2 }),
            ];
            assert_eq!(got, expected);
        });
        let (hello, requests) = owner.join().expect("owner");
        assert_eq!(
            (hello.client_id, &hello.namespace[..], &hello.credentials[..]),
            (42, &b"tenant"[..], &b"token"[..])
        );
        assert_eq!(requests, [add, counter_get()], "sent as the client sent them");
    }

    fn counter_get() -> Request {
        Request {
            op_id: 0,
            completed_below_op_id: 0,
            command: Command::from(CounterCommand::Get { key: b"c".to_vec() }),
        }
    }

    #[test]
    fn a_refused_connection_is_answered_at_once_naming_the_address() {
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").to_string()
        };
        runtime::run_unpinned(async move {
            let outbox = Rc::new(Outbox::default());
            let proxies = Proxies::new(42, b"", b"", Rc::downgrade(&outbox), Tasks::default(), None);
            proxies.forward(&address, 5, 3, &counter_get()).await;
            let got = answers(&outbox, 1).await;
            let [(5, Response::Error(reply))] = &got[..] else {
                panic!("an error answer to request 5, not {got:?}");
            };
            assert_eq!(ErrorCode::from_u16(reply.code), Some(ErrorCode::TryAgain));
            assert!(reply.message.contains(&address), "{}", reply.message);
            assert_eq!(reply.map_epoch, 3);
            // The failed link is replaced, so the next request tries afresh.
            proxies.forward(&address, 6, 3, &counter_get()).await;
            assert_eq!(answers(&outbox, 1).await[0].0, 6);
        });
    }

    #[test]
    fn a_blocking_command_may_wait_its_own_wait_plus_the_grace() {
        assert_eq!(answer_bound_ms(&get()), PROXY_ANSWER_GRACE_MS);
        let acquire = Command::from(LockCommand::Acquire {
            key: b"k".to_vec(),
            owner: b"o".to_vec(),
            lease_ms: 1_000,
            wait_ms: 20_000,
        });
        assert_eq!(answer_bound_ms(&acquire), 20_000 + PROXY_ANSWER_GRACE_MS);
        let absurd = Command::from(QueueCommand::Pop {
            key: b"q".to_vec(),
            end: engram_proto::QueueEnd::Front,
            timeout_ms: u64::MAX,
        });
        assert_eq!(answer_bound_ms(&absurd), WAIT_MS_MAX + PROXY_ANSWER_GRACE_MS);
    }

    /// Gives `bytes` to the link as if read from its socket.
    fn feed(link: &ProxyLink, mut bytes: &[u8]) {
        let mut link = link.link.borrow_mut();
        while !bytes.is_empty() {
            let room = link.input().read_buffer();
            let read = room.len().min(bytes.len());
            room[..read].copy_from_slice(&bytes[..read]);
            link.input().filled(read);
            bytes = &bytes[read..];
        }
    }

    #[test]
    fn requests_in_flight_are_found_by_link_id_and_expire_in_deadline_order() {
        let outbox = Rc::new(Outbox::default());
        let link = ProxyLink::new("10.0.0.2:7401", Identity::default(), Rc::downgrade(&outbox), None).unwrap();
        let pop = Request {
            command: Command::from(QueueCommand::Pop {
                key: b"q".to_vec(),
                end: engram_proto::QueueEnd::Front,
                timeout_ms: 10_000,
            }),
            ..counter_get()
        };
        let read = Request {
            command: get(),
            ..counter_get()
        };
        link.send(7, 3, &pop);
        link.send(7, 3, &read);
        let in_flight: Vec<(Instant, u64)> = link.deadlines.borrow().iter().copied().collect();
        let [(read_deadline, read_id), (_, pop_id)] = in_flight[..] else {
            panic!("two requests in flight, not {in_flight:?}");
        };
        assert_ne!(
            pop_id, read_id,
            "the client's request ids may repeat; the link's do not"
        );
        assert_ne!(read_id, 0, "0 is the handshake's id");
        assert_eq!(link.overdue(read_deadline - Duration::from_millis(1)), None);
        let overdue = link.overdue(read_deadline).expect("the read is overdue");
        assert_eq!((overdue.request_id, overdue.bound_ms), (7, PROXY_ANSWER_GRACE_MS));
        let reply = hello_reply();
        let mut answers = Vec::new();
        encode_message(FrameKind::HelloReply, 0, 1, &reply, &mut answers).unwrap();
        encode_message(FrameKind::Response, read_id, 1, &Response::Missing, &mut answers).unwrap();
        feed(&link, &answers);
        link.deliver_answers().unwrap();
        let delivered = outbox.take_frames();
        let Ok(Split::Frame { header, payload }) = split_frame(&delivered) else {
            panic!("no answer delivered");
        };
        assert_eq!(header.request_id, 7, "under the client's request id");
        assert_eq!(
            decode_payload::<Response>(&delivered[payload]).unwrap(),
            Response::Missing
        );
        assert_eq!(link.overdue(read_deadline), None, "the blocking pop waits longer");
        // An answer is taken once: a second one is the owner out of step.
        let mut again = Vec::new();
        encode_message(FrameKind::Response, read_id, 1, &Response::Missing, &mut again).unwrap();
        feed(&link, &again);
        assert!(matches!(link.deliver_answers(), Err(ProxyError::Broken { .. })));
        assert_eq!(link.forget_all().len(), 1);
        assert!(link.deadlines.borrow().is_empty());
    }

    #[test]
    fn only_a_refused_handshake_and_a_full_link_table_are_not_try_again() {
        let address = "10.0.0.2:7401".to_string();
        let refused = ProxyError::from(CallError::Connect {
            address: address.clone(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(refused.code(), ErrorCode::TryAgain);
        let Response::Error(reply) = refused.answer(9) else {
            panic!("an error answer");
        };
        assert!(reply.message.contains(&address), "{}", reply.message);
        assert_eq!(reply.map_epoch, 9);
        let silent = ProxyError::from(CallError::TimedOut {
            address: address.clone(),
            after: Duration::from_millis(PROXY_CONNECT_TIMEOUT_MS),
        });
        assert_eq!(silent.code(), ErrorCode::TryAgain);
        assert!(silent.to_string().contains(&address));
        let handshake = ProxyError::from(CallError::Link {
            address,
            source: LinkError::Refused(ErrorReply {
                code: ErrorCode::Unauthorized.as_u16(),
                message: "credentials refused".into(),
                map_epoch: 0,
            }),
        });
        assert!(
            handshake.to_string().contains("Unauthorized: credentials refused"),
            "{handshake}"
        );
        assert_eq!(handshake.code(), ErrorCode::Internal);
        assert_eq!(ProxyError::TooManyLinks.code(), ErrorCode::Busy);
    }
}
