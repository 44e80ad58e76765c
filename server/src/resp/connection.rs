//! One Redis-protocol connection: read, parse every whole command of what arrived,
//! answer connection commands here and send data commands where their keys live (as the
//! front port does, see [`crate::dispatch`]), write the replies in command order.
//!
//! Backpressure as for native connections: nothing more is parsed while
//! `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX` requests wait for answers, and nothing more is
//! read until the replies so far are written. A protocol error gets Redis's error reply
//! and the connection closes. Until the client authenticates (when the node has a
//! token), only small commands are parsed ([`RequestLimits::UNAUTHENTICATED`]) and
//! every data command is refused with `NOAUTH`.
//!
//! Requests carry no operation id (a Redis client has none to resend), so the shard keeps
//! no record of their answers: a Redis client that retries a write after a lost
//! connection may apply it twice, which the README says.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use engram_proto::limits::{
    IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, KEY_BYTES_MAX, RESP_AUTH_FAILURES_PER_CONNECTION_MAX,
};
use engram_proto::message::DEFAULT_NAMESPACE;
use engram_proto::resp::{Arg, Parsed, ReplyWriter, RequestLimits, RequestParser, RespVersion};
use engram_proto::{DataRequest, Denial, ErrorCode, Family, Gate, Grant, SlotHasher};
use futures::future::Either;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::command::{translate, DoorCommand, Listing, Part, Translated, KNOWN};
use super::reply::Fold;
use super::scan;
use crate::dispatch::{end_connection, write_out, Door, Handled, Placed};
use crate::outbox::Outbox;
use crate::place::random_u64;
use crate::proxy::Proxies;
use crate::refusal::Refused;
use crate::shard::Shard;
use crate::stream::Stream;

/// Bytes asked of the socket per read; the buffer grows past it only for a command the
/// parser says is longer (within its limits).
pub const RESP_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Replies queued before they are written mid-batch: bounds a connection's reply memory
/// as `ANSWER_BATCH_BYTES_MAX` does for native connections.
pub const RESP_REPLY_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Bytes read and not parsed yet, in a buffer kept initialized between reads, so a read
/// zeroes nothing: `bytes[..filled]` is what arrived.
#[derive(Default)]
struct ReadBuffer {
    bytes: Vec<u8>,
    filled: usize,
}

impl ReadBuffer {
    fn unparsed(&self) -> &[u8] {
        &self.bytes[..self.filled]
    }

    /// Room for the next read: a chunk, or what the command at the front still needs
    /// (`wanted` bytes in all, which the parser checked against its limits).
    fn room(&mut self, wanted: usize) -> &mut [u8] {
        let needed = self.filled + RESP_READ_CHUNK_BYTES.max(wanted.saturating_sub(self.filled));
        if self.bytes.len() < needed {
            self.bytes.resize(needed, 0);
        }
        &mut self.bytes[self.filled..]
    }

    fn filled(&mut self, read: usize) {
        self.filled += read;
    }

    /// Forgets the first `consumed` bytes (parsed commands); what is left of a command
    /// moves to the front.
    fn consume(&mut self, consumed: usize) {
        self.bytes.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
    }

    /// Lets go of a buffer a large command grew, once it is parsed.
    fn shrink(&mut self) {
        if self.bytes.len() > 4 * RESP_READ_CHUNK_BYTES && self.filled < RESP_READ_CHUNK_BYTES {
            self.bytes.truncate(RESP_READ_CHUNK_BYTES);
            self.bytes.shrink_to_fit();
        }
    }
}

/// Why the connection ends.
enum Close {
    /// The peer went away or the socket failed.
    Gone,
    /// `QUIT`, or a protocol error: the replies so far are written first.
    AfterReplies,
    /// No `AUTH` within the handshake timeout.
    TimedOut,
}

/// Who the connection speaks for.
struct Session {
    /// What the connection's credentials may do; `None` until it authenticates.
    grant: Option<Grant>,
    /// The gate's generation the grant is of.
    generation: u64,
    client_id: u64,
    name: Option<Vec<u8>>,
    namespace: Vec<u8>,
    /// `[namespace length][namespace]`, put in front of every key.
    key_prefix: Vec<u8>,
    hasher: SlotHasher,
}

impl Session {
    /// A new connection's session: authenticated at once when `gate` asks for nothing.
    fn new(gate: &Gate) -> Session {
        let mut session = Session {
            grant: (!gate.requires_credentials()).then(Grant::everything),
            generation: 0,
            client_id: random_u64(),
            name: None,
            namespace: Vec::new(),
            key_prefix: Vec::new(),
            hasher: SlotHasher::new(b""),
        };
        session.use_namespace(DEFAULT_NAMESPACE.to_vec());
        session
    }

    fn authenticated(&self) -> bool {
        self.grant.is_some()
    }

    fn use_namespace(&mut self, namespace: Vec<u8>) {
        self.key_prefix = vec![namespace.len() as u8];
        self.key_prefix.extend_from_slice(&namespace);
        self.hasher = SlotHasher::new(&namespace);
        self.namespace = namespace;
    }
}

/// Turns a connection away with one error line (`line`, in Redis's words where Redis
/// has them), then closes it.
pub async fn turn_away(mut stream: Stream, line: &str) {
    let _ = stream.write_all(format!("{line}\r\n").as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.close().await;
}

/// Serves one Redis-protocol connection until it ends.
pub async fn serve(shard: Rc<Shard>, stream: Stream, outbox: Rc<Outbox>) {
    let session = Session::new(&shard.gate());
    let limits = if session.authenticated() {
        RequestLimits::AUTHENTICATED
    } else {
        RequestLimits::UNAUTHENTICATED
    };
    let mut connection = Connection {
        shard: shard.clone(),
        stream,
        outbox,
        parser: RequestParser::new(limits),
        args: Vec::new(),
        input: ReadBuffer::default(),
        wanted: 0,
        spare: Vec::new(),
        session,
        proxies: OnceCell::new(),
        auth_failures: 0,
    };
    match connection.run().await {
        Err(Close::AfterReplies) => {
            let _ = connection.flush().await;
        }
        Err(Close::TimedOut) => {
            let detail = format!("no AUTH within {:?}", shard.admission().handshake_timeout);
            shard.refused(Refused::HandshakeTimeout, connection.stream.peer_addr(), &detail);
        }
        Ok(()) | Err(Close::Gone) => {}
    }
    end_connection(
        &shard,
        &mut connection.stream,
        &connection.outbox,
        &mut connection.proxies,
    )
    .await;
}

struct Connection {
    shard: Rc<Shard>,
    stream: Stream,
    outbox: Rc<Outbox>,
    parser: RequestParser,
    args: Vec<Arg>,
    /// Bytes read and not parsed yet.
    input: ReadBuffer,
    /// Bytes the command at the front needs in all, as the parser last said.
    wanted: usize,
    spare: Vec<u8>,
    session: Session,
    proxies: OnceCell<Proxies>,
    /// `AUTH`s refused on this connection, across `RESET`s.
    auth_failures: u32,
}

impl Connection {
    async fn run(&mut self) -> Result<(), Close> {
        self.stream.set_nodelay();
        if !self.session.authenticated() {
            // With a token set, a connection has the handshake timeout to AUTH.
            let timeout = self.shard.admission().handshake_timeout;
            let authenticated = async {
                while !self.session.authenticated() {
                    self.step().await?;
                }
                Ok(())
            };
            let timed_out = async {
                crate::runtime::sleep(timeout).await;
                Err(Close::TimedOut)
            };
            futures_lite::future::or(authenticated, timed_out).await?;
        }
        loop {
            self.step().await?;
        }
    }

    /// Answers what was read, reads more, writes the replies.
    async fn step(&mut self) -> Result<(), Close> {
        let can_take_more = self.outbox.pending() < IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;
        let mut made_progress = false;
        if can_take_more && !self.input.unparsed().is_empty() {
            made_progress = self.answer_commands().await? > 0;
        }
        if !made_progress && self.next_read(can_take_more).await? {
            self.answer_commands().await?;
        }
        self.flush().await
    }

    /// Reads more; `false` when nothing was read because replies are waiting to be
    /// written. Reads nothing while the connection may take no more requests.
    async fn next_read(&mut self, can_take_more: bool) -> Result<bool, Close> {
        if !can_take_more {
            self.outbox.ready().await;
            return Ok(false);
        }
        let outbox = self.outbox.clone();
        let replies = std::pin::pin!(outbox.ready());
        // Reads are readiness-based (see `Stream`), so dropping the losing read
        // loses no bytes.
        let receive = std::pin::pin!(self.stream.read(self.input.room(self.wanted)));
        let read = match futures::future::select(receive, replies).await {
            Either::Left((Ok(read), _)) => read,
            Either::Left((Err(_), _)) => 0,
            Either::Right(((), _)) => return Ok(false),
        };
        if read == 0 {
            return Err(Close::Gone);
        }
        self.input.filled(read);
        Ok(true)
    }

    /// Answers the whole commands read so far while the connection may have more
    /// requests pending; how many it answered.
    async fn answer_commands(&mut self) -> Result<usize, Close> {
        if let Err(line) = self.check_grant() {
            self.ready_error(line);
            return Err(Close::AfterReplies);
        }
        let received = Instant::now();
        self.shard.advance_clock(received);
        self.outbox.heard_from(received);
        let mut input = std::mem::take(&mut self.input);
        let mut offset = 0;
        let unparsed_bytes = input.unparsed().len();
        let mut answered = 0;
        let mut timed = 0;
        let result = loop {
            if self.outbox.pending() >= IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX {
                break Ok(());
            }
            let unparsed = &input.unparsed()[offset..unparsed_bytes];
            let translated = match self.parser.parse(unparsed, &mut self.args) {
                Ok(Parsed::Incomplete { wanted }) => {
                    self.wanted = wanted;
                    break Ok(());
                }
                Ok(Parsed::Skipped { consumed }) => {
                    self.wanted = 0;
                    offset += consumed;
                    continue;
                }
                Ok(Parsed::Command { consumed }) => {
                    self.wanted = 0;
                    let args: Vec<&[u8]> = self.parser.args(unparsed, &self.args).collect();
                    let translated = translate(&args, unix_ms());
                    offset += consumed;
                    translated
                }
                Err(error) => {
                    self.ready_error(format!("ERR {error}"));
                    break Err(Close::AfterReplies);
                }
            };
            answered += 1;
            match translated {
                Ok(Translated::Door(command)) => {
                    if self.answer_door(command) == Continue::Close {
                        break Err(Close::AfterReplies);
                    }
                }
                Ok(Translated::Requests { array, parts, fold }) => {
                    timed += self.send_parts(array, parts, fold, received).await;
                }
                Ok(Translated::Listing(listing)) => timed += self.send_listing(listing, received).await,
                Err(refusal) => self.ready_error(refusal.0),
            }
            if self.outbox.queued_bytes() >= RESP_REPLY_BATCH_BYTES_MAX {
                if let Err(close) = self.flush().await {
                    break Err(close);
                }
            }
        };
        input.consume(offset);
        self.input = input;
        self.shard.read_handled(answered, timed, received);
        result.map(|()| answered)
    }

    /// Sends a data command's requests, each taking its place in line; how many the
    /// store answered at once (timed with the read, as on native connections).
    async fn send_parts(
        &mut self,
        array: Option<usize>,
        parts: Vec<Part>,
        fold: Option<Fold>,
        received: Instant,
    ) -> usize {
        if !self.session.authenticated() {
            self.ready_error("NOAUTH Authentication required.".into());
            return 0;
        }
        if let Some(line) = self.forbidden(&parts) {
            self.ready_error(line);
            return 0;
        }
        if let Some(len) = array {
            let mut header = Vec::new();
            ReplyWriter::new(&mut header, self.version()).array(len);
            self.ready(header);
        }
        let mut timed = 0;
        for part in parts {
            if self.send(part, received).await == Handled::AnsweredAtOnce {
                timed += 1;
            }
        }
        if let Some(fold) = fold {
            self.outbox.with_bytes(|out| {
                if let Some(mut replies) = self.outbox.replies() {
                    replies.fold_end(fold, out);
                }
            });
        }
        timed
    }

    /// Sends a `SCAN` page's or `DBSIZE`'s requests to the shards they ask.
    async fn send_listing(&mut self, listing: Listing, received: Instant) -> usize {
        if !self.session.authenticated() {
            self.ready_error("NOAUTH Authentication required.".into());
            return 0;
        }
        match scan::plan(listing, &self.shard.slot_map(), &self.session.hasher) {
            Ok(Some(planned)) => self.send_parts(None, planned.parts, planned.fold, received).await,
            Ok(None) => {
                let mut reply = Vec::new();
                let mut out = ReplyWriter::new(&mut reply, self.version());
                out.array(2);
                out.bulk(b"0");
                out.array(0);
                self.ready(reply);
                0
            }
            Err(refusal) => {
                self.ready_error(refusal.0);
                0
            }
        }
    }

    async fn send(&mut self, part: Part, received: Instant) -> Handled {
        let Some(number) = self.outbox.replies().map(|mut replies| replies.wait_for(part.shape)) else {
            return Handled::Untimed;
        };
        self.outbox.expect_answer();
        let key = part.command.key();
        let placed = if key.len() > KEY_BYTES_MAX {
            let message = format!("key of {} bytes exceeds key_bytes_max ({KEY_BYTES_MAX})", key.len());
            Err(self.shard.error(ErrorCode::KeyTooLarge, message))
        } else {
            let slot = self.session.hasher.slot(key);
            self.shard.admit_front(slot).map(|target| (slot, target))
        };
        let (slot, target) = match placed {
            Ok(placed) => placed,
            Err(refusal) => {
                self.outbox.deliver(number, &refusal, false);
                return Handled::Untimed;
            }
        };
        // No operation id: a Redis client cannot resend one, so a record of the answer
        // could never serve a retry; it would only cost the shard (and its backups)
        // memory and time.
        let request = DataRequest {
            op_id: 0,
            completed_below_op_id: 0,
            command: part.command,
        };
        let placed = Placed {
            slot,
            target,
            client_id: self.session.client_id,
            request_id: number,
        };
        let door = Door {
            shard: &self.shard,
            outbox: &self.outbox,
            key_prefix: &self.session.key_prefix,
            proxies: &self.proxies,
            client_id: self.session.client_id,
            namespace: &self.session.namespace,
        };
        door.dispatch(placed, request, received).await.0
    }

    /// Redis's `NOPERM` line for the first of a command's requests the credentials may
    /// not send; `None` when they may send them all.
    fn forbidden(&self, parts: &[Part]) -> Option<String> {
        let grant = self.session.grant.as_ref()?;
        parts.iter().find_map(|part| {
            let denial = grant.require(part.command.right(), part.command.name()).err()?;
            Some(format!("NOPERM {denial}"))
        })
    }

    async fn flush(&mut self) -> Result<(), Close> {
        write_out(
            &self.outbox,
            &mut self.stream,
            &mut self.spare,
            4 * RESP_READ_CHUNK_BYTES,
        )
        .await
        .map_err(|_| Close::Gone)?;
        self.input.shrink();
        self.shard.publish_stats();
        Ok(())
    }

    fn version(&self) -> RespVersion {
        self.outbox
            .replies()
            .map_or(RespVersion::Resp2, |replies| replies.version())
    }

    /// Queues a reply the door made, behind every reply before it.
    fn ready(&self, reply: Vec<u8>) {
        self.outbox.with_bytes(|out| {
            if let Some(mut replies) = self.outbox.replies() {
                replies.ready(reply, out);
            }
        });
    }

    fn ready_error(&self, line: String) {
        let mut reply = Vec::new();
        ReplyWriter::new(&mut reply, self.version()).error(line);
        self.ready(reply);
    }

    /// Answers a connection command; whether the connection goes on.
    fn answer_door(&mut self, command: DoorCommand) -> Continue {
        let version = self.version();
        let mut reply = Vec::new();
        let mut out = ReplyWriter::new(&mut reply, version);
        let mut next = Continue::Serve;
        if !self.session.authenticated() && command.needs_authentication() {
            self.ready_error("NOAUTH Authentication required.".into());
            return next;
        }
        match command {
            DoorCommand::Ping(None) => out.simple("PONG"),
            DoorCommand::Ping(Some(message)) | DoorCommand::Echo(message) => out.bulk(message),
            DoorCommand::Hello { version, auth, name } => return self.hello(version, auth, name),
            DoorCommand::Auth { username, password } => match self.authenticate(username, &password) {
                Ok(()) => out.ok(),
                Err(line) => {
                    out.error(line);
                    next = self.after_refused_auth();
                }
            },
            DoorCommand::Select(0) => out.ok(),
            DoorCommand::Select(_) => out.error("ERR DB index is out of range"),
            DoorCommand::ClientSetName(name) => {
                self.session.name = Some(name);
                out.ok();
            }
            DoorCommand::ClientGetName => match &self.session.name {
                Some(name) => out.bulk(name),
                None => out.null(),
            },
            DoorCommand::ClientId => out.integer(self.session.client_id as i64 & i64::MAX),
            DoorCommand::ClientInfo => out.bulk(self.client_info()),
            DoorCommand::ClientNoted => out.ok(),
            DoorCommand::Quit => {
                out.ok();
                next = Continue::Close;
            }
            DoorCommand::Reset => {
                if let Err(line) = self.leave_session() {
                    out.error(line);
                    self.ready(reply);
                    return next;
                }
                self.session = Session::new(&self.shard.gate());
                if let Some(mut replies) = self.outbox.replies() {
                    replies.set_version(RespVersion::Resp2);
                }
                out.simple("RESET");
            }
            DoorCommand::Time => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                out.array(2);
                out.bulk(now.as_secs().to_string());
                out.bulk(now.subsec_micros().to_string());
            }
            DoorCommand::Command(None) => out.array(0),
            DoorCommand::Command(Some(subcommand)) => match subcommand.as_slice() {
                b"count" => out.integer(KNOWN.len() as i64),
                b"docs" => out.map(0),
                _ => out.array(0),
            },
            DoorCommand::ConfigGet(parameter) => config_get(&parameter, &mut out),
            DoorCommand::Info(_) => out.verbatim(b"txt", self.info()),
        }
        self.ready(reply);
        next
    }

    fn hello(&mut self, version: Option<i64>, auth: Option<(Vec<u8>, Vec<u8>)>, name: Option<Vec<u8>>) -> Continue {
        let mut reply = Vec::new();
        let protocol = match version {
            None => self.version(),
            Some(2) => RespVersion::Resp2,
            Some(3) => RespVersion::Resp3,
            Some(_) => {
                ReplyWriter::new(&mut reply, self.version()).error("NOPROTO unsupported protocol version");
                self.ready(reply);
                return Continue::Serve;
            }
        };
        if let Some((username, password)) = auth {
            if let Err(line) = self.authenticate(Some(username), &password) {
                ReplyWriter::new(&mut reply, self.version()).error(line);
                self.ready(reply);
                return self.after_refused_auth();
            }
        }
        if !self.session.authenticated() {
            let line = "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                        HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                        select the RESP protocol version at the same time";
            ReplyWriter::new(&mut reply, self.version()).error(line);
            self.ready(reply);
            return Continue::Serve;
        }
        if let Some(name) = name {
            self.session.name = Some(name);
        }
        if let Some(mut replies) = self.outbox.replies() {
            replies.set_version(protocol);
        }
        let mut out = ReplyWriter::new(&mut reply, protocol);
        out.map(7);
        out.bulk("server");
        out.bulk("engram");
        out.bulk("version");
        out.bulk(env!("CARGO_PKG_VERSION"));
        out.bulk("proto");
        out.integer(if protocol == RespVersion::Resp3 { 3 } else { 2 });
        out.bulk("id");
        out.integer(self.session.client_id as i64 & i64::MAX);
        out.bulk("mode");
        out.bulk("standalone");
        out.bulk("role");
        out.bulk("master");
        out.bulk("modules");
        out.array(0);
        self.ready(reply);
        Continue::Serve
    }

    /// `AUTH [username] password`: the password is a token (the node's, or one of its
    /// credentials file), the username the namespace the connection works in (`default`
    /// when not given, as for native clients), which the credential must allow.
    fn authenticate(&mut self, username: Option<Vec<u8>>, password: &[u8]) -> Result<(), String> {
        let generation = self.shard.gate_generation();
        let gate = self.shard.gate();
        if !gate.requires_credentials() && username.is_none() {
            return Err(
                "ERR AUTH <password> called without any password configured for the default user. \
                        Are you sure your configuration is correct?"
                    .into(),
            );
        }
        let namespace = username.unwrap_or_else(|| DEFAULT_NAMESPACE.to_vec());
        if namespace.len() > engram_proto::limits::NAMESPACE_BYTES_MAX {
            return Err(format!(
                "ERR namespace of {} bytes exceeds namespace_bytes_max ({})",
                namespace.len(),
                engram_proto::limits::NAMESPACE_BYTES_MAX
            ));
        }
        let peer = self.stream.peer_addr();
        let grant = match gate.admit(password, Family::Client, &namespace, false) {
            Ok(grant) => grant,
            Err(Denial::UnknownToken) => {
                self.shard
                    .refused(Refused::Unauthorized, peer, "AUTH with a wrong token");
                return Err("WRONGPASS invalid username-password pair or user is disabled.".into());
            }
            Err(denial) => {
                self.shard.refused(Refused::Forbidden, peer, &format!("AUTH: {denial}"));
                return Err(format!("NOPERM {denial}"));
            }
        };
        if namespace != self.session.namespace {
            self.leave_session()?;
        }
        self.session.grant = Some(grant);
        self.session.generation = generation;
        self.session.use_namespace(namespace);
        self.parser.set_limits(RequestLimits::AUTHENTICATED);
        Ok(())
    }

    /// After a credentials reload, takes the connection's credential again from the new
    /// gate; the error line that ends the connection when it was revoked or lost its
    /// namespace. One atomic load while nothing was reloaded.
    fn check_grant(&mut self) -> Result<(), String> {
        let generation = self.shard.gate_generation();
        if self.session.generation == generation {
            return Ok(());
        }
        let Some(grant) = &self.session.grant else {
            return Ok(());
        };
        match self
            .shard
            .gate()
            .regrant(grant, Family::Client, &self.session.namespace, false)
        {
            Ok(grant) => {
                self.session.grant = Some(grant);
                self.session.generation = generation;
                Ok(())
            }
            Err(denial) => {
                let detail = format!("credentials revoked: {denial}");
                self.shard.refused(Refused::Revoked, self.stream.peer_addr(), &detail);
                Err(format!("ERR {detail}"))
            }
        }
    }

    /// Whether the connection goes on after a refused `AUTH`: not past
    /// `RESP_AUTH_FAILURES_PER_CONNECTION_MAX` of them.
    fn after_refused_auth(&mut self) -> Continue {
        self.auth_failures += 1;
        match self.auth_failures >= RESP_AUTH_FAILURES_PER_CONNECTION_MAX {
            true => Continue::Close,
            false => Continue::Serve,
        }
    }

    /// Before the connection speaks for another namespace or client: its links to other
    /// nodes' shards shook hands as the one it leaves, so they go (and are opened again
    /// as the new one when needed). Refused while requests are in flight, whose answers
    /// come back on those links.
    fn leave_session(&mut self) -> Result<(), String> {
        if self.outbox.pending() > 0 {
            return Err("ERR the connection cannot change namespace while commands are in flight".into());
        }
        drop(self.proxies.take());
        Ok(())
    }

    fn client_info(&self) -> String {
        let address = self
            .stream
            .peer_addr()
            .map(|address| address.to_string())
            .unwrap_or_default();
        let name = self
            .session
            .name
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let resp = if self.version() == RespVersion::Resp3 { 3 } else { 2 };
        format!(
            "id={} addr={address} name={name} db=0 resp={resp}\n",
            self.session.client_id as i64 & i64::MAX
        )
    }

    /// The sections of `INFO` that clients read: the server's name and version, and
    /// Redis's version field, which some clients check.
    fn info(&self) -> String {
        let info = self.shard.node_info();
        format!(
            "# Server\r\nredis_version:7.2.0\r\nengram_version:{}\r\nredis_mode:standalone\r\nnode_id:{}\r\n\
             process_id:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Keyspace\r\n",
            env!("CARGO_PKG_VERSION"),
            info.node_id,
            std::process::id(),
            info.shards.iter().map(|shard| shard.connections).sum::<u64>(),
        )
    }
}

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continue {
    Serve,
    Close,
}

/// `CONFIG GET`: the parameters tools read (redis-benchmark asks for `save` and
/// `appendonly`), as a Redis with no persistence answers them; nothing else.
fn config_get(parameter: &[u8], out: &mut ReplyWriter<'_>) {
    let known: &[(&str, &str)] = &[("save", ""), ("appendonly", "no"), ("databases", "1")];
    let asked = String::from_utf8_lossy(parameter).to_ascii_lowercase();
    let matching: Vec<&(&str, &str)> = known
        .iter()
        .filter(|(name, _)| asked == "*" || asked == *name)
        .collect();
    out.map(matching.len());
    for (name, value) in matching {
        out.bulk(name);
        out.bulk(value);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_keeps_a_partial_command_and_zeroes_nothing_it_has() {
        let mut buffer = ReadBuffer::default();
        let room = buffer.room(0);
        assert_eq!(room.len(), RESP_READ_CHUNK_BYTES);
        room[..10].copy_from_slice(b"*1\r\n$4\r\nPI");
        buffer.filled(10);
        buffer.consume(4);
        assert_eq!(buffer.unparsed(), b"$4\r\nPI");
        // A command the parser says is large gets room for all of it in one read.
        let wanted = 3 * RESP_READ_CHUNK_BYTES;
        assert!(buffer.room(wanted).len() >= wanted - buffer.unparsed().len());
        assert_eq!(buffer.unparsed(), b"$4\r\nPI", "making room keeps what arrived");
        buffer.room(5 * RESP_READ_CHUNK_BYTES);
        buffer.shrink();
        assert_eq!(buffer.bytes.len(), RESP_READ_CHUNK_BYTES);
        assert_eq!(buffer.unparsed(), b"$4\r\nPI");
    }
}
