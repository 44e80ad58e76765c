//! Cluster administration: what an operator asks engram-control (the cluster's status,
//! a rebalance, a drain, the reclaim of lost slots).
//!
//! Each call is one exchange on a connection of its own (connect, handshake, ask, close)
//! and is never retried: these calls are rare, the control plane is off the data path, and
//! a rebalance or drain sent twice would plan twice. The caller decides what to do after
//! a failure.
//!
//! ```no_run
//! # async fn example() -> Result<(), engram_client::admin::AdminError> {
//! let admin = engram_client::admin::Admin::new("127.0.0.1:7300");
//! let status = admin.status().await?;
//! println!("map epoch {}, {} nodes", status.map.epoch, status.nodes.len());
//! let moving = admin.rebalance().await?;
//! # let _ = moving;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use engram_link_tokio::{flush, next_event};
use engram_proto::link::StreamError;
pub use engram_proto::{ClusterStatus, MigrationStatus, NodeStatus, ReclaimRequest, ShardStatus};
use engram_proto::{
    ControlProtocol, ControlRequest, ControlResponse, FrameBufferSizes, Identity, Link, LinkError, LinkEvent,
    ProtocolError,
};
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
    /// The whole call (connect, handshake, answer) took longer than the call timeout.
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

/// Where engram-control is, and how to talk to it.
#[derive(Clone, Debug)]
pub struct Admin {
    address: String,
    credentials: Vec<u8>,
    timeout: Duration,
}

impl Admin {
    /// engram-control at `address` (`host:port`), without credentials, with a call
    /// timeout of [`ADMIN_CALL_TIMEOUT_MS_DEFAULT`].
    pub fn new(address: impl Into<String>) -> Admin {
        Admin {
            address: address.into(),
            credentials: Vec::new(),
            timeout: Duration::from_millis(ADMIN_CALL_TIMEOUT_MS_DEFAULT),
        }
    }

    /// The shared secret the control plane was started with.
    pub fn credentials(mut self, credentials: impl Into<Vec<u8>>) -> Admin {
        self.credentials = credentials.into();
        self
    }

    /// Bounds each call as a whole: connect, handshake and answer.
    pub fn timeout(mut self, timeout: Duration) -> Admin {
        self.timeout = timeout;
        self
    }

    pub fn address(&self) -> &str {
        &self.address
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

    async fn moves(&self, command: ControlRequest, name: &'static str) -> Result<u64, AdminError> {
        match self.call(command).await? {
            ControlResponse::RebalanceStarted { slots_to_move } => Ok(slots_to_move),
            other => Err(unexpected(name, &other)),
        }
    }

    /// One exchange on a fresh connection; an error answer becomes [`AdminError::Server`].
    async fn call(&self, command: ControlRequest) -> Result<ControlResponse, AdminError> {
        let exchange = tokio::time::timeout(self.timeout, self.exchange(command)).await;
        match exchange {
            Err(_) => Err(AdminError::Timeout {
                address: self.address.clone(),
                after: self.timeout,
            }),
            Ok(Ok(ControlResponse::Error(reply))) => Err(AdminError::Server {
                code: ServerCode::from_u16(reply.code),
                message: reply.message,
            }),
            Ok(Ok(ControlResponse::NotLeader { leader })) => Err(AdminError::NotLeader {
                address: self.address.clone(),
                leader,
            }),
            Ok(answer) => answer,
        }
    }

    /// Connects, shakes hands, and only then sends `command`: a refused handshake sends
    /// nothing.
    async fn exchange(&self, command: ControlRequest) -> Result<ControlResponse, AdminError> {
        let mut link = Link::<ControlProtocol>::new(Identity::node(&self.credentials), FrameBufferSizes::LINK)
            .map_err(|error| self.link_failed(error))?;
        let mut stream = TcpStream::connect(&self.address)
            .await
            .map_err(|error| self.broken(error.into()))?;
        match exchange_hello(&mut stream, &mut link).await {
            Ok(_) => {}
            Err(HandshakeFailure::Connection(source)) => return Err(self.broken(source)),
            Err(HandshakeFailure::Refused(source)) => {
                return Err(AdminError::Refused {
                    address: self.address.clone(),
                    source,
                })
            }
        }
        link.send(&command, 0, ()).map_err(|error| self.link_failed(error))?;
        flush(&mut stream, &mut link)
            .await
            .map_err(|error| self.broken(error.into()))?;
        loop {
            match next_event(&mut stream, &mut link).await {
                Ok(LinkEvent::Answer { response, .. }) => return Ok(response),
                // A link is ready once, and the handshake took that.
                Ok(LinkEvent::Ready(_)) => {}
                Err(StreamError::Link(error)) => return Err(self.link_failed(error)),
                Err(StreamError::Io(error)) => return Err(self.broken(error.into())),
            }
        }
    }

    /// A request that cannot be encoded, an answer that breaks the protocol, or one to a
    /// request never asked.
    fn link_failed(&self, error: LinkError) -> AdminError {
        match error {
            LinkError::Protocol(error) => AdminError::Protocol(error),
            LinkError::NotOutstanding { request_id } => AdminError::OutOfStep {
                address: self.address.clone(),
                request_id,
            },
            error => self.broken(error.into()),
        }
    }

    fn broken(&self, source: ConnectionError) -> AdminError {
        AdminError::Connection {
            address: self.address.clone(),
            source,
        }
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
        }
    }

    /// What the fake control plane saw and will answer.
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
                        script.answer.clone().expect("an answer is scripted")
                    };
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
        fake.lock().answer = Some(ControlResponse::NotLeader {
            leader: Some("10.0.0.7:7300".into()),
        });
        match admin.status().await {
            Err(error @ AdminError::NotLeader { .. }) => {
                let AdminError::NotLeader { leader, .. } = &error else {
                    unreachable!()
                };
                assert_eq!(leader.as_deref(), Some("10.0.0.7:7300"));
                assert!(error.to_string().ends_with("the leader is at 10.0.0.7:7300"), "{error}");
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
