//! What the simulated processes share: the map with its replica groups, endpoints and
//! messages.

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{DataRequest, ReplicaAnswer, ReplicaBatch, Response};
use engram_server::replication::{ShardProcess, SlotSet};

pub const NODES: usize = 4;
/// Slot groups: each has one primary and up to `REPLICAS` backups.
pub const GROUPS: usize = 4;
/// Backups per group, as `--replicas 1`.
pub const REPLICAS: usize = 1;

/// A process: which node and which start of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Process {
    pub node: usize,
    pub incarnation: u64,
}

impl Process {
    /// Node ids start at 1; every node runs one shard.
    pub fn shard(self) -> ShardProcess {
        ShardProcess {
            node_id: self.node as u64 + 1,
            shard_id: 0,
            incarnation: self.incarnation,
        }
    }
}

/// The control plane's map: per group its primary and its in-sync backups, each named
/// with the incarnation the control plane counts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMap {
    pub epoch: u64,
    pub primary: [Option<Process>; GROUPS],
    pub backups: [Vec<Process>; GROUPS],
}

impl SimMap {
    pub fn primary_of_slot(&self, slot: u32) -> Option<Process> {
        self.primary[group_of_slot(slot)]
    }
}

impl engram_server::replication::PrimaryView for SimMap {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn primary_of(&self, slot: u32) -> Option<ShardProcess> {
        self.primary_of_slot(slot).map(Process::shard)
    }
}

pub fn group_of_slot(slot: u32) -> usize {
    slot as usize * GROUPS / SLOT_COUNT as usize
}

pub fn group_slots(group: usize) -> SlotSet {
    (0..SLOT_COUNT).filter(|slot| group_of_slot(*slot) == group).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Control,
    Node(usize),
    Client(usize),
}

#[derive(Debug, Clone)]
pub enum Body {
    Heartbeat {
        incarnation: u64,
        sent_at: u64,
        /// The hand-over this node holds a group frozen for, and whether its backup has
        /// applied every change of the group (prepared).
        hand_over: Option<(u64, bool)>,
    },
    /// Answers a heartbeat of `incarnation`: the current map and the repairs this node
    /// runs as primary: (group, backup being filled).
    HeartbeatAck {
        incarnation: u64,
        sent_at: u64,
        map: SimMap,
        repairs: Vec<(usize, Process)>,
        /// The hand-over the heartbeat named, which is not running (committed, as the
        /// map says, or given up): the node unfreezes if it is still frozen for that
        /// one (a late answer must not unfreeze a newer hand-over).
        abort_hand_over: Option<u64>,
    },
    /// Control plane to a group's primary: hand the group over to `to`, its in-sync
    /// backup: freeze it until `to` has applied every change of it.
    HandOver {
        id: u64,
        group: usize,
        to: Process,
    },
    /// A primary's backup holds every slot of these groups.
    InSync {
        primary: Process,
        backup: Process,
        groups: Vec<usize>,
    },
    Request {
        req_id: u64,
        request: DataRequest,
    },
    /// `None`: not served here now; refresh the map and retry.
    Reply {
        req_id: u64,
        response: Option<Response>,
    },
    GetMap,
    Map(SimMap),
    Replica {
        from: Process,
        batch: ReplicaBatch,
    },
    ReplicaAnswer {
        to: Process,
        from: Process,
        answer: ReplicaAnswer,
    },
}

#[derive(Debug, Clone)]
pub struct Message {
    pub from: Endpoint,
    pub to: Endpoint,
    pub body: Body,
}
