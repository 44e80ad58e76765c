//! The control family: what nodes and operators ask the control plane, and what it
//! answers (joins, heartbeats, status, rebalancing). Same compatibility rule as
//! [`crate::message`]: fields and variants are only ever appended.

use rkyv::{Archive, Deserialize, Serialize};

use crate::message::{ErrorReply, SlotMap};

/// What a node or an operator asks the control plane.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    Ping,
    /// The current slot map; answered with [`ControlResponse::SlotMap`].
    GetSlotMap,
    /// A node joins (or rejoins) the cluster; answered with [`ControlResponse::Joined`].
    Join(JoinRequest),
    /// A node's periodic liveness and load report; answered with
    /// [`ControlResponse::HeartbeatAck`].
    Heartbeat(Heartbeat),
    /// Answered with [`ControlResponse::Status`].
    Status,
    /// Plans and starts the moves that even out slots per shard; answered with
    /// [`ControlResponse::RebalanceStarted`].
    Rebalance,
    /// Moves every slot off `node_id` so it can be removed.
    Drain {
        node_id: u64,
    },
    /// Returns lost slots to service, empty; answered with [`ControlResponse::Reclaimed`].
    Reclaim(ReclaimRequest),
    /// Where the control plane keeps its state and, in etcd, how each endpoint is;
    /// answered by the leader with [`ControlResponse::ControlPlane`]. (Appended last.)
    ControlPlane,
    /// The credentials the control plane admits by, for a node that takes its own from
    /// it; answered with [`ControlResponse::Credentials`]. (Appended last.)
    GetCredentials,
}

impl ControlRequest {
    /// The right a credential needs to ask it (`None`: any admitted one): a node's own
    /// calls need `node`, an operator's `admin`.
    pub fn right(&self) -> Option<crate::rights::Right> {
        use crate::rights::Right;
        match self {
            ControlRequest::Ping | ControlRequest::GetSlotMap => None,
            ControlRequest::Join(_) | ControlRequest::Heartbeat(_) | ControlRequest::GetCredentials => {
                Some(Right::Node)
            }
            ControlRequest::Status
            | ControlRequest::Rebalance
            | ControlRequest::Drain { .. }
            | ControlRequest::Reclaim(_)
            | ControlRequest::ControlPlane => Some(Right::Admin),
        }
    }

    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            ControlRequest::Ping => "ping",
            ControlRequest::GetSlotMap => "get_slot_map",
            ControlRequest::Join(_) => "join",
            ControlRequest::Heartbeat(_) => "heartbeat",
            ControlRequest::Status => "status",
            ControlRequest::Rebalance => "rebalance",
            ControlRequest::Drain { .. } => "drain",
            ControlRequest::Reclaim(_) => "reclaim",
            ControlRequest::ControlPlane => "control_plane",
            ControlRequest::GetCredentials => "get_credentials",
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ControlResponse {
    Pong,
    SlotMap(SlotMap),
    Error(ErrorReply),
    Joined {
        node_id: u64,
        map: SlotMap,
        /// This process's incarnation: its shards draw versions, fences and permit ids
        /// from [`crate::limits::incarnation_version_floor`] of it.
        incarnation: u64,
        /// The control plane's liveness timeout: a node silent for longer is declared
        /// dead, so the node must not serve on an unchecked map for nearly that long.
        liveness_timeout_ms: u64,
        /// The credentials the control plane admits by (a file's or etcd's), for a join
        /// that [`JoinRequest::takes_credentials`]; `None` for any other.
        credentials: Option<SharedCredentials>,
    },
    HeartbeatAck {
        map_epoch: u64,
        /// Migrations the node reported that the control plane is not running: abort
        /// them (after catching up to `map_epoch`).
        abort_migrations: Vec<u64>,
        /// As in [`ControlResponse::Joined`].
        liveness_timeout_ms: u64,
        /// Every fill the node's primary shards are to run now; one missing from the
        /// list is withdrawn.
        fills: Vec<FillOrder>,
        /// [`crate::credentials::shared_digest`] of the control plane's credentials (0:
        /// none): a node that takes its credentials from the control plane asks for them
        /// again when it differs from its own.
        credentials_digest: u64,
    },
    /// Boxed: the largest answer by far, and rare.
    Status(Box<ClusterStatus>),
    RebalanceStarted {
        slots_to_move: u64,
    },
    /// Lost slots returned to service, empty, under map `epoch`.
    Reclaimed {
        slots: u64,
        epoch: u64,
    },
    /// This control-plane process is a standby: ask the leader, at `leader` when it
    /// knows who leads. (Appended last: rkyv encodes variants by position.)
    NotLeader {
        leader: Option<String>,
    },
    /// The leader's answer to [`ControlRequest::ControlPlane`]. (Appended last.)
    ControlPlane(Box<ControlPlaneStatus>),
    /// The answer to [`ControlRequest::GetCredentials`]. (Appended last.)
    Credentials(SharedCredentials),
}

impl ControlResponse {
    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            ControlResponse::Pong => "pong",
            ControlResponse::SlotMap(_) => "slot_map",
            ControlResponse::Error(_) => "error",
            ControlResponse::Joined { .. } => "joined",
            ControlResponse::HeartbeatAck { .. } => "heartbeat_ack",
            ControlResponse::Status(_) => "status",
            ControlResponse::RebalanceStarted { .. } => "rebalance_started",
            ControlResponse::Reclaimed { .. } => "reclaimed",
            ControlResponse::NotLeader { .. } => "not_leader",
            ControlResponse::ControlPlane(_) => "control_plane",
            ControlResponse::Credentials(_) => "credentials",
        }
    }
}

/// Credentials in the credentials file's format, as a control plane hands them to nodes.
/// A node computes their digest itself ([`crate::credentials::shared_digest`]) rather
/// than trust one sent along.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SharedCredentials {
    pub text: String,
}

/// A node asking to join, or to rejoin after a restart (recognised by its advertised
/// front address).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The address clients and the control plane reach the node's front port at.
    pub front_address: String,
    /// One per shard, in shard order: the address of the shard's own port.
    pub shard_addresses: Vec<String>,
    /// Per shard; 0: unlimited.
    pub memory_limit_bytes: u64,
    /// Random per process start. A join repeated with the same boot id is a retry of the
    /// same process (its answer was lost) and gets the same incarnation; a new boot id at
    /// a known address is a restart with empty memory.
    pub boot_id: u64,
    /// The failure domain the node runs in (a rack, an availability zone), at most
    /// [`crate::limits::ZONE_BYTES_MAX`] bytes; empty: none given. Backups of a slot go
    /// to zones other than its owner's when there are any.
    pub zone: String,
    /// The node admits by the control plane's credentials: the answer carries them, and
    /// a control plane that has none refuses the join (before the node becomes a member).
    pub takes_credentials: bool,
}

/// An operator returning lost slots to service, empty: the listed slots, and every lost
/// slot that `node_id` owned (0: none).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReclaimRequest {
    pub node_id: u64,
    pub slots: Vec<u32>,
}

/// What a node reports on every heartbeat.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: u64,
    pub map_epoch: u64,
    pub shards: Vec<ShardLoad>,
    /// Migrations the node's shards hold open (frozen outgoing, uncommitted incoming), so
    /// the control plane can settle those it is no longer running.
    pub migrations: Vec<u64>,
    /// The incarnation the node's join was given: a beat of a replaced process is refused.
    pub incarnation: u64,
    /// Streams of this node's primary shards whose backup holds everything of their
    /// slots: the control plane may name those backups in the map.
    pub in_sync: Vec<InSyncReport>,
}

/// A shard process named across the cluster: the incarnation tells a restarted process
/// (empty memory) from the one that was given a role.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardProcessRef {
    pub node_id: u64,
    pub shard_id: u16,
    pub incarnation: u64,
}

/// Primary shard `shard_id` of the reporting node streams `slots` to `backup`, whose
/// snapshot of them was applied and which applied every change since: it holds every
/// acknowledged write of those slots, and from now on every answer waits for it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InSyncReport {
    pub shard_id: u16,
    /// The map the shard configured its streams from: a report under an older map may
    /// describe a stream that was replaced since.
    pub map_epoch: u64,
    pub backup: ShardProcessRef,
    pub slots: Vec<(u32, u32)>,
}

/// The control plane orders primary shard `shard_id` of the node it answers to stream
/// `slots` to `backup` (a snapshot, then every change), until the map names it their
/// backup or the order is withdrawn.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FillOrder {
    pub shard_id: u16,
    pub backup: ShardProcessRef,
    /// `host:port` of the backup shard's own port.
    pub backup_address: String,
    pub slots: Vec<(u32, u32)>,
    /// Changes each time the control plane withdraws its fills, and with each leader:
    /// the primary starts a fresh stream (a snapshot) for an order of another
    /// generation than the one it runs, since the backup may have dropped meanwhile
    /// what the earlier stream gave it (an aborted import onto it).
    pub generation: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLoad {
    pub keys: u64,
    pub memory_used_bytes: u64,
    pub operations_total: u64,
}

/// The cluster as the control plane sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClusterStatus {
    pub map: SlotMap,
    pub nodes: Vec<NodeStatus>,
    pub migrations: Vec<MigrationStatus>,
    pub migrations_completed: u64,
    pub slots_moved_total: u64,
    /// Encoded state shipped by migrations since the control plane started.
    pub bytes_moved_total: u64,
    /// Time migrations spent from freeze to commit since the control plane started.
    pub migration_milliseconds_total: u64,
    /// Why the last plan stopped early, if it did.
    pub last_error: String,
    /// Backups the control plane keeps per slot (`engram-control --replicas`).
    pub replicas: u32,
    /// Served slots with fewer backups in the map than `replicas`.
    pub under_replicated_slots: u32,
    /// Slots whose backup was promoted because their owner died, since the cluster began.
    pub failovers_total: u64,
    /// Slots a new backup is being filled with right now.
    pub slots_filling: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeStatus {
    pub node_id: u64,
    /// `address` in JSON, the name `engram cluster status --json` has always shown.
    #[cfg_attr(feature = "serde", serde(rename = "address"))]
    pub front_address: String,
    /// Heartbeats arrive; false when the last one is older than the control plane's
    /// liveness timeout.
    pub alive: bool,
    pub draining: bool,
    pub map_epoch: u64,
    pub shards: Vec<ShardStatus>,
    /// Which process of this node the control plane knows: a new one at every join.
    pub incarnation: u64,
    /// Slots this node owned that are lost (it died or restarted with empty memory).
    pub slots_lost: u32,
    /// The zone the node joined with; empty: none.
    pub zone: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ShardStatus {
    pub shard_id: u16,
    pub address: String,
    pub slots: u32,
    /// Slots this shard keeps a backup of.
    pub backup_slots: u32,
    pub keys: u64,
    pub memory_used_bytes: u64,
    pub operations_total: u64,
    /// Over the last heartbeat interval.
    pub operations_per_second: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MigrationStatus {
    pub migration_id: u64,
    pub source: String,
    pub target: String,
    pub slots: u32,
}

/// The control plane as its leader sees it: where the state lives and, with etcd, how
/// each endpoint answers. Which processes stand by is not known to the leader (they
/// register nowhere): an operator asks each address (`engram cluster status`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ControlPlaneStatus {
    pub store: StateStoreStatus,
}

/// Where the control plane keeps its state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum StateStoreStatus {
    /// A local file (`--data`): one process, no standby.
    File { path: String },
    /// etcd (`--etcd`) under `prefix`, with each endpoint's answer to the leader's status
    /// call, in the order given.
    Etcd {
        prefix: String,
        endpoints: Vec<EtcdEndpointStatus>,
    },
}

/// One etcd endpoint, as its maintenance status answered the leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EtcdEndpointStatus {
    pub endpoint: String,
    /// It answered in time, knows a raft leader and reports no error.
    pub healthy: bool,
    /// Why it is not healthy (no answer in time, an error, what etcd reported); empty
    /// when healthy.
    pub error: String,
    /// etcd's version; empty when it did not answer.
    pub version: String,
    pub db_size_bytes: u64,
    /// This member leads etcd's raft group.
    pub raft_leader: bool,
    pub raft_term: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_payload, encode_message, split_frame, FrameKind, Split};

    fn round_trip(response: &ControlResponse) -> ControlResponse {
        let mut frame = Vec::new();
        encode_message(FrameKind::Response, 1, 0, response, &mut frame).expect("encodes");
        let Ok(Split::Frame { payload, .. }) = split_frame(&frame) else {
            panic!("one whole frame");
        };
        decode_payload::<ControlResponse>(&frame[payload]).expect("decodes")
    }

    /// The standby's answer round-trips with and without a leader, beside earlier variants.
    #[test]
    fn not_leader_round_trips_with_and_without_a_leader() {
        for leader in [Some("127.0.0.1:7300".to_string()), None] {
            let answer = ControlResponse::NotLeader { leader };
            assert_eq!(round_trip(&answer), answer);
        }
        let reclaimed = ControlResponse::Reclaimed { slots: 3, epoch: 9 };
        assert_eq!(round_trip(&reclaimed), reclaimed);
        assert_eq!(round_trip(&ControlResponse::Pong), ControlResponse::Pong);
    }

    #[test]
    fn the_control_plane_status_round_trips_for_both_stores() {
        let endpoint = EtcdEndpointStatus {
            endpoint: "http://127.0.0.1:2379".into(),
            healthy: true,
            error: String::new(),
            version: "3.5.16".into(),
            db_size_bytes: 20_480,
            raft_leader: true,
            raft_term: 2,
        };
        let stores = [
            StateStoreStatus::File {
                path: "/var/lib/engram/state".into(),
            },
            StateStoreStatus::Etcd {
                prefix: "/engram/default".into(),
                endpoints: vec![endpoint],
            },
        ];
        for store in stores {
            let answer = ControlResponse::ControlPlane(Box::new(ControlPlaneStatus { store }));
            assert_eq!(round_trip(&answer), answer);
        }
    }
}
