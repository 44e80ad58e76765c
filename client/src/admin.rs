//! Cluster administration: what an operator asks engram-control (the cluster's status,
//! a rebalance, a drain, the reclaim of lost slots, where the control plane keeps its
//! state), and which control-plane processes lead or stand by.
//!
//! An [`Admin`] is given one control address or several (every process of an etcd-backed
//! control plane). Each call goes to the leader: to the leader last learned first, to the
//! leader a standby names (`NotLeader`), and down the list past standbys that know no
//! leader and addresses that do not answer, each address at most once per call
//! ([`engram_proto::ControlAddresses`], shared with the nodes' heartbeats).
//!
//! Each exchange is one request on a connection of its own (connect, handshake, ask,
//! close), bounded by the call timeout. A command is never sent twice: these calls are
//! rare, the control plane is off the data path, and a rebalance or drain sent twice
//! would plan twice; so once a command that changes the cluster was sent, a failure ends
//! the call, and the caller decides what to do.
//!
//! ```no_run
//! # async fn example() -> Result<(), engram_client::admin::AdminError> {
//! use engram_proto::ControlAddresses;
//! let addresses = ControlAddresses::parse("10.0.0.1:7300,10.0.0.2:7300,10.0.0.3:7300").unwrap();
//! let admin = engram_client::admin::Admin::with_addresses(addresses);
//! let status = admin.status().await?;
//! println!("map epoch {}, {} nodes", status.map.epoch, status.nodes.len());
//! let moving = admin.rebalance().await?;
//! # let _ = moving;
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engram_link_tokio::{flush, next_event};
use engram_proto::control_addresses::Outcome;
use engram_proto::link::StreamError;
pub use engram_proto::{
    ClusterStatus, ControlPlaneStatus, EtcdEndpointStatus, MigrationStatus, NodeStatus, ReclaimRequest, ShardStatus,
    StateStoreStatus,
};
use engram_proto::{
    ControlAddresses, ControlProtocol, ControlRequest, ControlResponse, FrameBufferSizes, Identity, Link, LinkError,
    LinkEvent, ProtocolError,
};
use engram_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::connection::{exchange_hello, HandshakeFailure};
use crate::error::{ConnectionError, Error, ServerCode};
use crate::limits::ADMIN_CALL_TIMEOUT_MS_DEFAULT;

/// Why an administration call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The control plane could not be reached, or the connection broke mid-call.
    #[error("cannot reach engram-control at {address}: {source}")]
    Connection {
        address: String,
        #[source]
        source: ConnectionError,
    },
    /// One exchange (connect, handshake, answer) took longer than the call timeout.
    #[error("engram-control at {address} did not answer within {after:?} (the call timeout)")]
    Timeout { address: String, after: Duration },
    /// The handshake was refused (credentials, protocol version).
    #[error("engram-control at {address} refused the connection: {source}")]
    Refused {
        address: String,
        #[source]
        source: Error,
    },
    /// The control plane answered the command with an error (an unknown node, no
    /// control plane state to act on, a plan that could not be made).
    #[error("engram-control: {code}: {message}")]
    Server { code: ServerCode, message: String },
    /// The process asked is a standby of an etcd-backed control plane: the leader (at
    /// `leader`, when the standby knows it) answers cluster commands.
    #[error("engram-control at {address} is a standby, not the leader{}", leader_hint(.leader))]
    NotLeader { address: String, leader: Option<String> },
    /// No address tried answered as the leader (each failure, in the order tried): the
    /// leader died and no standby took over yet, an election is under way, or none can
    /// be reached.
    #[error("no engram-control process answered as the leader: {}", .attempts.join("; "))]
    NoLeader { attempts: Vec<String> },
    /// The control plane answered with a response that does not fit the command.
    #[error("engram-control answered {response} to {command}")]
    UnexpectedResponse {
        command: &'static str,
        response: &'static str,
    },
    /// The answer names a request this connection never sent.
    #[error("engram-control at {address} answered request {request_id}, which was not asked")]
    OutOfStep { address: String, request_id: u64 },
    /// The request could not be encoded, or the answer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
}

impl AdminError {
    /// No answer came: the next address may lead.
    fn is_unreachable(&self) -> bool {
        matches!(self, AdminError::Connection { .. } | AdminError::Timeout { .. })
    }
}

fn leader_hint(leader: &Option<String>) -> String {
    match leader {
        Some(leader) => format!(": the leader is at {leader}"),
        None => ": no leader is known yet (an election is under way)".to_string(),
    }
}

/// Lost slots returned to service by [`Admin::reclaim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    /// How many slots serve again (empty); 0 when no lost slot matched.
    pub slots: u64,
    /// The epoch of the map that returned them.
    pub epoch: u64,
}

/// One control-plane process, as it answered [`Admin::processes`].
#[derive(Debug)]
pub struct ControlProcess {
    pub address: String,
    /// Given to the [`Admin`]; false for a leader only a standby named.
    pub listed: bool,
    pub role: ProcessRole,
}

/// What a control-plane process is.
#[derive(Debug)]
pub enum ProcessRole {
    /// It leads: the cluster's status, as it answered.
    Leader(Box<ClusterStatus>),
    /// It stands by, naming the leader it knows of.
    Standby { leader: Option<String> },
    /// It did not answer (or refused the connection): why.
    Unreachable(AdminError),
}

impl ControlProcess {
    pub fn is_leader(&self) -> bool {
        matches!(self.role, ProcessRole::Leader(_))
    }
}

/// Where engram-control is, and how to talk to it. Clones share the leader learned.
#[derive(Clone, Debug)]
pub struct Admin {
    addresses: Arc<Mutex<ControlAddresses>>,
    credentials: Vec<u8>,
    timeout: Duration,
    follow: bool,
    tls: Option<ClientTls>,
}

impl Admin {
    /// engram-control at `address` (`host:port`), without credentials, with a call
    /// timeout of [`ADMIN_CALL_TIMEOUT_MS_DEFAULT`]. A standby there is followed to the
    /// leader it names.
    pub fn new(address: impl Into<String>) -> Admin {
        Admin::with_addresses(ControlAddresses::one(address))
    }

    /// The processes of a control plane at `addresses`; calls go to whichever leads.
    pub fn with_addresses(addresses: ControlAddresses) -> Admin {
        Admin {
            addresses: Arc::new(Mutex::new(addresses)),
            credentials: Vec::new(),
            timeout: Duration::from_millis(ADMIN_CALL_TIMEOUT_MS_DEFAULT),
            follow: true,
            tls: None,
        }
    }

    /// Whether a standby's `NotLeader` sends the call on to the leader it names (the
    /// default) or ends it with [`AdminError::NotLeader`]: off, a call is answered by the
    /// first process that answers at all, which tools use to ask one process what it is.
    pub fn follow_leader(mut self, follow: bool) -> Admin {
        self.follow = follow;
        self
    }

    /// The shared secret the control plane was started with.
    pub fn credentials(mut self, credentials: impl Into<Vec<u8>>) -> Admin {
        self.credentials = credentials.into();
        self
    }

    /// Connects over TLS, checking the control plane's certificate against `tls`'s CAs
    /// (and showing `tls`'s certificate, if it has one, where the control plane asks).
    pub fn tls(mut self, tls: ClientTls) -> Admin {
        self.tls = Some(tls);
        self
    }

    /// Bounds each exchange with one process: connect, handshake and answer.
    pub fn timeout(mut self, timeout: Duration) -> Admin {
        self.timeout = timeout;
        self
    }

    /// The address the next call tries first: the leader last learned, else a listed one.
    pub fn address(&self) -> String {
        self.addresses().first().to_string()
    }

    /// The addresses given, in order.
    pub fn addresses_listed(&self) -> Vec<String> {
        self.addresses().listed().to_vec()
    }

    /// Whether the process answers at all: a standby answers too (it answers `Ping`
    /// itself), so this checks one process's health, not who leads.
    pub async fn ping(&self) -> Result<(), AdminError> {
        match self.call(ControlRequest::Ping).await? {
            ControlResponse::Pong => Ok(()),
            other => Err(unexpected("cluster_ping", &other)),
        }
    }

    /// The map, the members, their load and the migrations under way.
    pub async fn status(&self) -> Result<ClusterStatus, AdminError> {
        match self.call(ControlRequest::Status).await? {
            ControlResponse::Status(status) => Ok(*status),
            other => Err(unexpected("cluster_status", &other)),
        }
    }

    /// Where the control plane keeps its state, and with etcd how each endpoint answers
    /// its leader.
    pub async fn control_plane(&self) -> Result<ControlPlaneStatus, AdminError> {
        match self.call(ControlRequest::ControlPlane).await? {
            ControlResponse::ControlPlane(status) => Ok(*status),
            other => Err(unexpected("control_plane", &other)),
        }
    }

    /// Plans and starts the moves that even out slots per shard; returns how many slots
    /// will move (0: already balanced). The moves go on after the answer.
    pub async fn rebalance(&self) -> Result<u64, AdminError> {
        self.moves(ControlRequest::Rebalance, "cluster_rebalance").await
    }

    /// Starts moving every slot off `node_id`, so it can be removed; returns how many
    /// slots will move.
    pub async fn drain(&self, node_id: u64) -> Result<u64, AdminError> {
        self.moves(ControlRequest::Drain { node_id }, "cluster_drain").await
    }

    /// Returns lost slots to service, empty: those listed, and every lost slot that
    /// `request.node_id` owned (0: none).
    pub async fn reclaim(&self, request: ReclaimRequest) -> Result<Reclaimed, AdminError> {
        match self.call(ControlRequest::Reclaim(request)).await? {
            ControlResponse::Reclaimed { slots, epoch } => Ok(Reclaimed { slots, epoch }),
            other => Err(unexpected("cluster_reclaim", &other)),
        }
    }

    /// Asks every listed address for the cluster's status, all at once and without
    /// following anyone, which tells what each is: the leader (with the status), a
    /// standby (and whom it names), or unreachable. (`Status` is as old as the control
    /// protocol, so any version's leader answers it.) When no listed address leads but a standby names a leader outside the
    /// list, that one is asked too and comes last. The leader found is the one the next
    /// call tries first.
    pub async fn processes(&self) -> Vec<ControlProcess> {
        let listed = self.addresses_listed();
        let probes = listed.iter().map(|address| self.probe(address));
        let mut processes = futures::future::join_all(probes).await;
        if !processes.iter().any(ControlProcess::is_leader) {
            let named = processes.iter().find_map(|process| match &process.role {
                ProcessRole::Standby { leader: Some(leader) } if !listed.contains(leader) => Some(leader.clone()),
                _ => None,
            });
            if let Some(named) = named {
                let mut process = self.probe(&named).await;
                process.listed = false;
                processes.push(process);
            }
        }
        if let Some(leader) = processes.iter().find(|process| process.is_leader()) {
            self.addresses().learn_leader(&leader.address);
        }
        processes
    }

    async fn probe(&self, address: &str) -> ControlProcess {
        let role = match self.call_at(address, ControlRequest::Status, &mut false).await {
            Ok(ControlResponse::Status(status)) => ProcessRole::Leader(status),
            Ok(other) => ProcessRole::Unreachable(unexpected("cluster_status", &other)),
            Err(AdminError::NotLeader { leader, .. }) => ProcessRole::Standby { leader },
            Err(error) => ProcessRole::Unreachable(error),
        };
        ControlProcess {
            address: address.to_string(),
            listed: true,
            role,
        }
    }

    async fn moves(&self, command: ControlRequest, name: &'static str) -> Result<u64, AdminError> {
        match self.call(command).await? {
            ControlResponse::RebalanceStarted { slots_to_move } => Ok(slots_to_move),
            other => Err(unexpected(name, &other)),
        }
    }

    fn addresses(&self) -> MutexGuard<'_, ControlAddresses> {
        // Only ever replaced whole, so a poisoned lock still holds a consistent list.
        self.addresses.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `command` to the leader: a round over the addresses (see the module
    /// documentation). A command that changes the cluster goes no further once it was
    /// sent; a status asks on.
    async fn call(&self, command: ControlRequest) -> Result<ControlResponse, AdminError> {
        let asks_only = matches!(
            command,
            ControlRequest::Status | ControlRequest::ControlPlane | ControlRequest::GetSlotMap | ControlRequest::Ping
        );
        let mut round = self.addresses().clone().round();
        let mut failures = Vec::new();
        let mut result = None;
        while let Some(address) = round.address().map(str::to_owned) {
            let mut sent = false;
            match self.call_at(&address, command.clone(), &mut sent).await {
                Err(AdminError::NotLeader { address, leader }) if self.follow => {
                    round.record(Outcome::NotLeader { leader: leader.clone() });
                    failures.push(AdminError::NotLeader { address, leader });
                }
                Err(error) if error.is_unreachable() && (asks_only || !sent) => {
                    round.record(Outcome::Unreachable);
                    failures.push(error);
                }
                answer => {
                    let reached = matches!(answer, Ok(_) | Err(AdminError::Server { .. }));
                    round.record(if reached { Outcome::Leader } else { Outcome::Unreachable });
                    result = Some(answer);
                    break;
                }
            }
        }
        *self.addresses() = round.finish();
        result.unwrap_or_else(|| Err(no_leader(failures)))
    }

    /// One exchange with `address`, bounded by the call timeout; an error answer becomes
    /// [`AdminError::Server`], a standby's [`AdminError::NotLeader`]. `sent` tells whether
    /// the command left (a timeout may come after).
    async fn call_at(
        &self,
        address: &str,
        command: ControlRequest,
        sent: &mut bool,
    ) -> Result<ControlResponse, AdminError> {
        let exchange = tokio::time::timeout(self.timeout, self.exchange(address, command, sent)).await;
        match exchange {
            Err(_) => Err(AdminError::Timeout {
                address: address.to_string(),
                after: self.timeout,
            }),
            Ok(Ok(ControlResponse::Error(reply))) => Err(AdminError::Server {
                code: ServerCode::from_u16(reply.code),
                message: reply.message,
            }),
            Ok(Ok(ControlResponse::NotLeader { leader })) => Err(AdminError::NotLeader {
                address: address.to_string(),
                leader,
            }),
            Ok(answer) => answer,
        }
    }

    /// Connects, shakes hands, and only then sends `command`: a refused handshake sends
    /// nothing.
    async fn exchange(
        &self,
        address: &str,
        command: ControlRequest,
        sent: &mut bool,
    ) -> Result<ControlResponse, AdminError> {
        let link = Link::<ControlProtocol>::new(Identity::node(&self.credentials), FrameBufferSizes::LINK)
            .map_err(|error| link_failed(address, error))?;
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| broken(address, error.into()))?;
        match &self.tls {
            None => exchange_over(address, stream, link, command, sent).await,
            Some(tls) => {
                let secured = crate::tls::connect(address, stream, tls)
                    .await
                    .map_err(|error| match error {
                        Error::Connection { source, .. } => broken(address, source),
                        refused => AdminError::Refused {
                            address: address.to_string(),
                            source: refused,
                        },
                    })?;
                exchange_over(address, secured, link, command, sent).await
            }
        }
    }
}

/// Shakes hands over `stream`, and only then sends `command`: a refused handshake sends
/// nothing.
async fn exchange_over(
    address: &str,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    mut link: Link<ControlProtocol>,
    command: ControlRequest,
    sent: &mut bool,
) -> Result<ControlResponse, AdminError> {
    match exchange_hello(&mut stream, &mut link).await {
        Ok(_) => {}
        Err(HandshakeFailure::Connection(source)) => return Err(broken(address, source)),
        Err(HandshakeFailure::Refused(source)) => {
            return Err(AdminError::Refused {
                address: address.to_string(),
                source,
            })
        }
    }
    link.send(&command, 0, ())
        .map_err(|error| link_failed(address, error))?;
    *sent = true;
    flush(&mut stream, &mut link)
        .await
        .map_err(|error| broken(address, error.into()))?;
    loop {
        match next_event(&mut stream, &mut link).await {
            Ok(LinkEvent::Answer { response, .. }) => return Ok(response),
            // A link is ready once, and the handshake took that.
            Ok(LinkEvent::Ready(_)) => {}
            Err(StreamError::Link(error)) => return Err(link_failed(address, error)),
            Err(StreamError::Io(error)) => return Err(broken(address, error.into())),
        }
    }
}

/// What a call that reached no leader reports: the one failure as it was, or each.
fn no_leader(mut failures: Vec<AdminError>) -> AdminError {
    match failures.len() {
        1 => failures.remove(0),
        _ => AdminError::NoLeader {
            attempts: failures.iter().map(ToString::to_string).collect(),
        },
    }
}

/// A request that cannot be encoded, an answer that breaks the protocol, or one to a
/// request never asked.
fn link_failed(address: &str, error: LinkError) -> AdminError {
    match error {
        LinkError::Protocol(error) => AdminError::Protocol(error),
        LinkError::NotOutstanding { request_id } => AdminError::OutOfStep {
            address: address.to_string(),
            request_id,
        },
        error => broken(address, error.into()),
    }
}

fn broken(address: &str, source: ConnectionError) -> AdminError {
    AdminError::Connection {
        address: address.to_string(),
        source,
    }
}

fn unexpected(command: &'static str, response: &ControlResponse) -> AdminError {
    AdminError::UnexpectedResponse {
        command,
        response: response.name(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use engram_link_tokio::fill;
    use engram_proto::{
        decode_payload, encode_message, ErrorCode, ErrorReply, Family, FrameBuffer, FrameKind, Hello, HelloReply,
        MigrationStatus, Response,
    };
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::tests::fake_server::single_shard_map;

    fn status_sample() -> ClusterStatus {
        ClusterStatus {
            map: single_shard_map(7, "127.0.0.1:7401"),
            nodes: Vec::new(),
            migrations: vec![MigrationStatus {
                migration_id: 3,
                source: "a".into(),
                target: "b".into(),
                slots: 64,
            }],
            migrations_completed: 2,
            slots_moved_total: 128,
            bytes_moved_total: 0,
            migration_milliseconds_total: 0,
            last_error: String::new(),
            replicas: 1,
            under_replicated_slots: 0,
            slots_filling: 0,
            failovers_total: 0,
        }
    }

    /// What the fake control plane saw and will answer (nothing, when `answer` is None).
    #[derive(Default)]
    struct Script {
        answer: Option<ControlResponse>,
        refuse_hello: bool,
        hellos: usize,
        seen: Vec<ControlRequest>,
    }

    /// A fake control plane: accepts connections, checks each Hello asks for the control
    /// family, and answers every request with the scripted answer.
    struct FakeControl {
        address: String,
        script: Arc<Mutex<Script>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeControl {
        async fn start() -> FakeControl {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let script = Arc::new(Mutex::new(Script::default()));
            let shared = script.clone();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_one(stream, shared.clone()));
                }
            });
            FakeControl { address, script, task }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
            self.script.lock().unwrap()
        }
    }

    impl Drop for FakeControl {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve_one(mut stream: TcpStream, script: Arc<Mutex<Script>>) {
        let mut input = FrameBuffer::new(FrameBufferSizes::LINK);
        let mut greeted = false;
        let mut out = Vec::new();
        loop {
            while let Some((header, payload)) = input.next_frame().unwrap() {
                out.clear();
                if greeted {
                    let request: ControlRequest = decode_payload(payload).unwrap();
                    let answer = {
                        let mut script = script.lock().unwrap();
                        script.seen.push(request);
                        script.answer.clone()
                    };
                    // No answer scripted: silent after the handshake.
                    let Some(answer) = answer else { continue };
                    encode_message(FrameKind::Response, header.request_id, 0, &answer, &mut out).unwrap();
                    stream.write_all(&out).await.unwrap();
                    continue;
                }
                assert_eq!(header.kind, FrameKind::Hello);
                let hello: Hello = decode_payload(payload).unwrap();
                assert_eq!(hello.family, Family::Control, "admin calls speak the control family");
                let refuse = {
                    let mut script = script.lock().unwrap();
                    script.hellos += 1;
                    script.refuse_hello
                };
                if refuse {
                    let refusal = Response::Error(ErrorReply {
                        code: ErrorCode::Unauthorized.as_u16(),
                        message: "fake refusal".into(),
                        map_epoch: 0,
                    });
                    encode_message(FrameKind::Response, 0, 0, &refusal, &mut out).unwrap();
                    let _ = stream.write_all(&out).await;
                    return;
                }
                let reply = HelloReply {
                    node_id: 0,
                    shard_id: 0,
                    shard_count: 0,
                    map_epoch: 0,
                    server_version: "fake".into(),
                };
                encode_message(FrameKind::HelloReply, 0, 0, &reply, &mut out).unwrap();
                stream.write_all(&out).await.unwrap();
                greeted = true;
            }
            if !matches!(fill(&mut stream, &mut input).await, Ok(read) if read > 0) {
                return;
            }
        }
    }

    async fn answering(answer: ControlResponse) -> (FakeControl, Admin) {
        let fake = FakeControl::start().await;
        fake.lock().answer = Some(answer);
        let admin = Admin::new(&fake.address).credentials("secret");
        (fake, admin)
    }

    fn last_command(fake: &FakeControl) -> ControlRequest {
        fake.lock().seen.last().expect("a request arrived").clone()
    }

    fn error(code: ErrorCode) -> ControlResponse {
        ControlResponse::Error(ErrorReply {
            code: code.as_u16(),
            message: format!("fake {}", code.name()),
            map_epoch: 0,
        })
    }

    #[tokio::test]
    async fn each_call_sends_its_command_and_returns_the_typed_answer() {
        let (fake, admin) = answering(ControlResponse::Status(Box::new(status_sample()))).await;
        assert_eq!(admin.status().await.unwrap(), status_sample());
        assert_eq!(last_command(&fake), ControlRequest::Status);

        fake.lock().answer = Some(ControlResponse::RebalanceStarted { slots_to_move: 40 });
        assert_eq!(admin.rebalance().await.unwrap(), 40);
        assert_eq!(last_command(&fake), ControlRequest::Rebalance);
        assert_eq!(admin.drain(2).await.unwrap(), 40);
        assert_eq!(last_command(&fake), ControlRequest::Drain { node_id: 2 });

        fake.lock().answer = Some(ControlResponse::Reclaimed { slots: 5, epoch: 9 });
        let request = ReclaimRequest {
            node_id: 3,
            slots: vec![1, 2],
        };
        let reclaimed = admin.reclaim(request.clone()).await.unwrap();
        assert_eq!(reclaimed, Reclaimed { slots: 5, epoch: 9 });
        assert_eq!(last_command(&fake), ControlRequest::Reclaim(request));

        fake.lock().answer = Some(ControlResponse::Pong);
        admin.ping().await.unwrap();
        assert_eq!(last_command(&fake), ControlRequest::Ping);
        // One connection per call, never a retry.
        assert_eq!(fake.lock().hellos, 5);
        assert_eq!(fake.lock().seen.len(), 5);
    }

    #[tokio::test]
    async fn error_and_mismatched_answers_are_typed_errors() {
        let (fake, admin) = answering(error(ErrorCode::InvalidArgument)).await;
        match admin.drain(99).await {
            Err(AdminError::Server { code, message }) => {
                assert_eq!(code, ServerCode::Known(ErrorCode::InvalidArgument));
                assert_eq!(message, "fake InvalidArgument");
            }
            other => panic!("an error answer gave {other:?}"),
        }
        fake.lock().answer = Some(ControlResponse::NotLeader { leader: None });
        match admin.status().await {
            Err(error @ AdminError::NotLeader { .. }) => {
                let AdminError::NotLeader { leader, .. } = &error else {
                    unreachable!()
                };
                assert_eq!(*leader, None);
                assert!(error.to_string().contains("no leader is known yet"), "{error}");
            }
            other => panic!("a standby's answer gave {other:?}"),
        }
        fake.lock().answer = Some(ControlResponse::Pong);
        match admin.status().await {
            Err(AdminError::UnexpectedResponse { command, response }) => {
                assert_eq!((command, response), ("cluster_status", "pong"));
            }
            other => panic!("an unfitting answer gave {other:?}"),
        }
    }

    fn closed_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_standby_is_followed_to_the_leader_it_names_and_the_leader_is_remembered() {
        let (leader, _) = answering(ControlResponse::Status(Box::new(status_sample()))).await;
        let (standby, _) = answering(ControlResponse::NotLeader {
            leader: Some(leader.address.clone()),
        })
        .await;
        let addresses = ControlAddresses::new(&[closed_address(), standby.address.clone()]).unwrap();
        let admin = Admin::with_addresses(addresses);
        assert_eq!(admin.status().await.unwrap(), status_sample());
        assert_eq!(standby.lock().seen, [ControlRequest::Status]);
        assert_eq!(admin.address(), leader.address, "the leader is tried first from now on");
        leader.lock().answer = Some(ControlResponse::RebalanceStarted { slots_to_move: 8 });
        assert_eq!(admin.clone().rebalance().await.unwrap(), 8);
        assert_eq!(standby.lock().seen.len(), 1, "the standby is not asked again");
        assert_eq!(last_command(&leader), ControlRequest::Rebalance);
    }

    #[tokio::test]
    async fn a_call_that_reaches_no_leader_says_what_each_address_did() {
        let dead = closed_address();
        let (standby, _) = answering(ControlResponse::NotLeader {
            leader: Some(dead.clone()),
        })
        .await;
        let admin = Admin::new(&standby.address);
        match admin.status().await {
            Err(error @ AdminError::NoLeader { .. }) => {
                let text = error.to_string();
                assert!(text.contains(&format!("the leader is at {dead}")), "{text}");
                assert!(
                    text.contains(&format!("cannot reach engram-control at {dead}")),
                    "{text}"
                );
            }
            other => panic!("a standby naming a dead leader gave {other:?}"),
        }
        assert_eq!(standby.lock().seen.len(), 1, "each address once per call");
    }

    #[tokio::test]
    async fn without_following_a_standby_answer_ends_the_call() {
        let (leader, _) = answering(ControlResponse::Status(Box::new(status_sample()))).await;
        let (standby, _) = answering(ControlResponse::NotLeader {
            leader: Some(leader.address.clone()),
        })
        .await;
        let admin = Admin::new(&standby.address).follow_leader(false);
        match admin.status().await {
            Err(AdminError::NotLeader { address, leader: named }) => {
                assert_eq!(
                    (address, named),
                    (standby.address.clone(), Some(leader.address.clone()))
                );
            }
            other => panic!("a standby's answer gave {other:?}"),
        }
        assert!(leader.lock().seen.is_empty(), "the leader was asked");
    }

    /// A rebalance sent to a leader that then says nothing is not sent on to another
    /// process (it may have started); a status asks on.
    #[tokio::test]
    async fn a_command_that_changes_the_cluster_is_sent_once_and_a_status_asks_on() {
        let silent = FakeControl::start().await;
        let (other, _) = answering(ControlResponse::Status(Box::new(status_sample()))).await;
        let addresses = ControlAddresses::new(&[silent.address.clone(), other.address.clone()]).unwrap();
        let admin = Admin::with_addresses(addresses).timeout(Duration::from_millis(200));
        match admin.rebalance().await {
            Err(AdminError::Timeout { address, .. }) => assert_eq!(address, silent.address),
            other => panic!("a silent leader gave {other:?}"),
        }
        assert!(other.lock().seen.is_empty(), "the rebalance went on to another process");
        assert_eq!(admin.status().await.unwrap(), status_sample());
        assert_eq!(other.lock().seen, [ControlRequest::Status]);
    }

    #[tokio::test]
    async fn processes_says_what_each_address_is_without_following() {
        let (leader, _) = answering(ControlResponse::Status(Box::new(status_sample()))).await;
        let (standby, _) = answering(ControlResponse::NotLeader {
            leader: Some(leader.address.clone()),
        })
        .await;
        let dead = closed_address();
        let addresses = ControlAddresses::new(&[dead.clone(), standby.address.clone()]).unwrap();
        let admin = Admin::with_addresses(addresses);
        let processes = admin.processes().await;
        let roles: Vec<(&str, bool, String)> = processes
            .iter()
            .map(|process| {
                let role = match &process.role {
                    ProcessRole::Leader(status) => format!("leader at epoch {}", status.map.epoch),
                    ProcessRole::Standby { leader } => format!("standby {leader:?}"),
                    ProcessRole::Unreachable(_) => "unreachable".to_string(),
                };
                (process.address.as_str(), process.listed, role)
            })
            .collect();
        assert_eq!(
            roles,
            [
                (dead.as_str(), true, "unreachable".to_string()),
                (
                    standby.address.as_str(),
                    true,
                    format!("standby {:?}", Some(&leader.address))
                ),
                (leader.address.as_str(), false, "leader at epoch 7".to_string()),
            ]
        );
        assert_eq!(admin.address(), leader.address, "the leader found is tried first");
        let store = ControlPlaneStatus {
            store: StateStoreStatus::File {
                path: "/data/state".into(),
            },
        };
        leader.lock().answer = Some(ControlResponse::ControlPlane(Box::new(store.clone())));
        assert_eq!(admin.control_plane().await.unwrap(), store);
        assert_eq!(last_command(&leader), ControlRequest::ControlPlane);
    }

    #[tokio::test]
    async fn a_refused_handshake_is_not_a_connection_failure() {
        let (fake, admin) = answering(ControlResponse::Pong).await;
        fake.lock().refuse_hello = true;
        let failure = admin.status().await.unwrap_err();
        match &failure {
            AdminError::Refused { source, .. } => assert!(source.is_server(ErrorCode::Unauthorized), "{failure}"),
            other => panic!("a refused handshake gave {other:?}"),
        }
        assert!(fake.lock().seen.is_empty(), "nothing is sent after a refusal");
    }

    #[tokio::test]
    async fn an_absent_control_plane_is_a_connection_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        match Admin::new(&address).status().await {
            Err(AdminError::Connection { address: reported, .. }) => assert_eq!(reported, address),
            other => panic!("a closed port gave {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_control_plane_ends_the_call_at_its_timeout() {
        // Accepts (the kernel's backlog does) and never answers the handshake.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let timeout = Duration::from_millis(100);
        match Admin::new(&address).timeout(timeout).status().await {
            Err(AdminError::Timeout { after, .. }) => assert_eq!(after, timeout),
            other => panic!("a silent peer gave {other:?}"),
        }
        drop(listener);
    }
}
