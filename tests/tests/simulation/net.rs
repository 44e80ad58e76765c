//! What simulated processes say to each other, and what they ask the world to do.
//!
//! Every request travels as one message and every answer as another, each of which the
//! network may drop, delay (and so reorder) or duplicate. A request is bound to the
//! process that was listening when it was sent (a TCP connection is): if that process
//! crashed or was replaced by a restart before delivery, the caller is told its link
//! broke. An answer is bound to the calling process the same way.

use engram_control::orchestrator::{Answer, NodeCall, Token};
use engram_proto::{Heartbeat, JoinRequest, MigrateIn, Response, SlotMap};

/// A listening port: the control plane's, a node's front port, a shard's own port, or a
/// client (which listens for nothing but receives answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Control,
    Front(usize),
    Shard(usize, u16),
    Client(usize),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Control => formatter.write_str("cp"),
            Endpoint::Front(node) => write!(formatter, "n{node}"),
            Endpoint::Shard(node, shard) => write!(formatter, "n{node}s{shard}"),
            Endpoint::Client(client) => write!(formatter, "c{client}"),
        }
    }
}

/// The address a node advertises for its front port.
pub fn front_address(node: usize) -> String {
    Endpoint::Front(node).to_string()
}

/// The address a node advertises for a shard's own port.
pub fn shard_address(node: usize, shard: u16) -> String {
    Endpoint::Shard(node, shard).to_string()
}

/// The endpoint an advertised address names.
pub fn endpoint_of(address: &str) -> Option<Endpoint> {
    let rest = address.strip_prefix('n')?;
    match rest.split_once('s') {
        Some((node, shard)) => Some(Endpoint::Shard(node.parse().ok()?, shard.parse().ok()?)),
        None => Some(Endpoint::Front(rest.parse().ok()?)),
    }
}

#[derive(Debug, Clone)]
pub enum Request {
    /// Control plane to a shard's port: what the orchestrator asked for.
    Node(NodeCall),
    /// Source shard to target shard.
    MigrateIn(MigrateIn),
    /// Control plane to a front port (its broadcast).
    InstallMap(SlotMap),
    Join(JoinRequest),
    Heartbeat(Heartbeat),
    /// To the control plane or a node's front port.
    GetSlotMap,
    /// A client's keyed request to a shard's port.
    Data {
        client_id: u64,
        request: engram_proto::DataRequest,
    },
}

#[derive(Debug, Clone)]
pub enum Reply {
    Node(Answer),
    Joined {
        node_id: u64,
        map: SlotMap,
        incarnation: u64,
        liveness_timeout_ms: u64,
    },
    HeartbeatAck {
        map_epoch: u64,
        abort_migrations: Vec<u64>,
        liveness_timeout_ms: u64,
    },
    /// The control plane refused a join or a heartbeat.
    Refused(String),
    SlotMap(SlotMap),
    Data(Response),
    /// No answer will come: the connection was refused or broke.
    LinkError(String),
}

#[derive(Debug, Clone)]
pub enum Body {
    Request(Request),
    Reply(Reply),
}

/// One message in flight.
#[derive(Debug, Clone)]
pub struct Message {
    pub from: Endpoint,
    pub from_generation: u64,
    pub to: Endpoint,
    pub to_generation: u64,
    /// The caller's id for the call (its answer carries the same one).
    pub call: u64,
    pub body: Body,
}

/// A process's timers; the world fires each at its process, if that process still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// The call with this id has had no answer for its whole timeout.
    CallTimeout(u64),
    Join,
    Heartbeat,
    Housekeeping,
    Orchestrator(Token),
    ClientWake,
}

/// What a process asks the world to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send a request; the answer comes back with the same call id.
    Call {
        to: Endpoint,
        call: u64,
        request: Request,
    },
    /// Answer a call.
    Answer {
        to: Endpoint,
        to_generation: u64,
        call: u64,
        reply: Reply,
    },
    Timer {
        after_ms: u64,
        timer: Timer,
    },
    Trace(String),
}

/// One message in a trace line.
pub fn describe(body: &Body) -> String {
    match body {
        Body::Request(request) => describe_request(request),
        Body::Reply(reply) => describe_reply(reply),
    }
}

fn describe_request(request: &Request) -> String {
    match request {
        Request::Node(NodeCall::MigrateOut {
            migration_id,
            slots,
            target_address,
        }) => format!("migrate_out {migration_id}: {} slots to {target_address}", slots.len()),
        Request::Node(NodeCall::HandOver {
            migration_id,
            slots,
            target,
        }) => format!("hand_over {migration_id}: {} slots to {target:?}", slots.len()),
        Request::Node(NodeCall::InstallMap(map)) => format!("install_map epoch {}", map.epoch),
        Request::Node(NodeCall::MigrateAbort {
            migration_id,
            map_epoch,
        }) => format!("migrate_abort {migration_id} under epoch {map_epoch}"),
        Request::MigrateIn(order) => format!("migrate_in {} batch {}", order.migration_id, order.batch_index),
        Request::InstallMap(map) => format!("broadcast epoch {}", map.epoch),
        Request::Join(join) => format!("join boot {:x}", join.boot_id),
        Request::Heartbeat(beat) => format!(
            "heartbeat node {} epoch {} open {:?}",
            beat.node_id, beat.map_epoch, beat.migrations
        ),
        Request::GetSlotMap => "get_slot_map".into(),
        Request::Data { client_id, request } => format!(
            "client {client_id} op {} {}",
            request.op_id,
            String::from_utf8_lossy(request.command.key())
        ),
    }
}

fn describe_reply(reply: &Reply) -> String {
    match reply {
        Reply::Node(answer) => format!("{answer:?}"),
        Reply::Joined {
            node_id,
            map,
            incarnation,
            ..
        } => format!("joined node {node_id} incarnation {incarnation} epoch {}", map.epoch),
        Reply::HeartbeatAck {
            map_epoch,
            abort_migrations,
            ..
        } => format!("ack epoch {map_epoch} abort {abort_migrations:?}"),
        Reply::Refused(message) => format!("refused: {message}"),
        Reply::SlotMap(map) => format!("map epoch {}", map.epoch),
        Reply::Data(Response::Error(error)) => format!("error {:?}", engram_proto::ErrorCode::from_u16(error.code)),
        Reply::Data(response) => format!("{response:?}"),
        Reply::LinkError(reason) => format!("link error: {reason}"),
    }
}
