//! Payload types. Each is an rkyv archive, validated with bytecheck before it is read.
//!
//! Compatibility rule: enum variants and struct fields are only ever appended, and a
//! variant's meaning never changes, because rkyv encodes variants by position.

use rkyv::{Archive, Deserialize, Serialize};

use crate::rights::Right;

pub use crate::data::{
    cluster_scan_cursor, split_cluster_scan_cursor, ArchivedQueueEnd, ArchivedSetCondition, DataCommand,
    ExpireCondition, KeyCommand, ObjectKind, QueueEnd, SetCondition, SHARD_SCAN_CURSOR_BITS,
};

/// First frame of every connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    /// Chosen at random by each client instance; with an operation id it names one
    /// mutation uniquely, which is how retries are recognised.
    pub client_id: u64,
    /// The tenant every key of this connection belongs to.
    pub namespace: Vec<u8>,
    /// Empty when the server runs without authentication.
    pub credentials: Vec<u8>,
    /// The protocol the connection speaks from now on; a listener refuses a family it
    /// does not serve in the handshake, so no request of another family ever reaches it.
    pub family: Family,
}

/// The protocol families. Each has its own request and response payloads, so a
/// connection decodes only what its kind of caller may ask.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Clients: [`Request`] (data and admin commands) answered with [`Response`].
    Client,
    /// Node to node and control plane to node: [`crate::PeerRequest`] answered with
    /// [`crate::PeerResponse`].
    Peer,
    /// Nodes and operators to the control plane: [`crate::ControlRequest`] answered with
    /// [`crate::ControlResponse`].
    Control,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Client => "client",
            Family::Peer => "peer",
            Family::Control => "control",
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub node_id: u64,
    /// The shard behind this port, or [`FRONT_SHARD_ID`] for the front port.
    pub shard_id: u16,
    pub shard_count: u16,
    pub map_epoch: u64,
    pub server_version: String,
}

/// The namespace of a client that names none: the native client's default, and the
/// Redis door's until an `AUTH` names another, so both reach the same keys.
pub const DEFAULT_NAMESPACE: &[u8] = b"default";

/// `HelloReply::shard_id` of a front-port connection, which forwards to every shard.
pub const FRONT_SHARD_ID: u16 = u16::MAX;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Client-chosen id of a mutation, unique per client id; 0 for reads and for clients
    /// that do not need exactly-once retries.
    pub op_id: u64,
    /// Every operation id of this client below this one has been answered to the
    /// client (it is the client's lowest id still in flight, or its next id when none
    /// is), so the server may forget those results. This bounds the server's
    /// exactly-once records by what the client has in flight rather than by time.
    /// 0 when the client does not track it.
    pub completed_below_op_id: u64,
    pub command: Command,
}

/// A client's request for an object, split from its [`Request`] by the connection that
/// read it, which answers admin commands itself: what a shard's store applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRequest {
    /// As [`Request::op_id`].
    pub op_id: u64,
    /// As [`Request::completed_below_op_id`].
    pub completed_below_op_id: u64,
    pub command: DataCommand,
}

/// A client's request by whom it asks: the node it reached, or an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Admin(AdminCommand),
    Data(DataRequest),
}

impl Request {
    pub fn into_asked(self) -> Asked {
        match self.command {
            Command::Admin(admin) => Asked::Admin(admin),
            Command::Data(command) => Asked::Data(DataRequest {
                op_id: self.op_id,
                completed_below_op_id: self.completed_below_op_id,
                command,
            }),
        }
    }
}

impl From<DataRequest> for Request {
    fn from(request: DataRequest) -> Request {
        Request {
            op_id: request.op_id,
            completed_below_op_id: request.completed_below_op_id,
            command: Command::Data(request.command),
        }
    }
}

/// What a client connection asks: of the node itself, or of an object.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Admin(AdminCommand),
    Data(DataCommand),
}

/// Questions a client asks the node it is connected to, about no key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    Ping,
    /// Node and per-shard statistics.
    Info,
    /// The slot map this node serves under.
    GetSlotMap,
}

impl AdminCommand {
    /// The right a credential needs to ask it, beyond being admitted: a ping and the
    /// slot map (which clients route by) need none; node statistics show every tenant's
    /// load and need `admin`.
    pub fn right(self) -> Option<Right> {
        match self {
            AdminCommand::Ping | AdminCommand::GetSlotMap => None,
            AdminCommand::Info => Some(Right::Admin),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AdminCommand::Ping => "ping",
            AdminCommand::Info => "info",
            AdminCommand::GetSlotMap => "get_slot_map",
        }
    }
}

impl From<AdminCommand> for Command {
    fn from(command: AdminCommand) -> Command {
        Command::Admin(command)
    }
}

impl From<DataCommand> for Command {
    fn from(command: DataCommand) -> Command {
        Command::Data(command)
    }
}

/// Each object's command is a client command: `Command::from(CounterCommand::Add { .. })`.
macro_rules! object_commands_are_commands {
    ($($command:ident),+ $(,)?) => {
        $(
            impl From<crate::data::$command> for Command {
                fn from(command: crate::data::$command) -> Command {
                    Command::Data(command.into())
                }
            }
        )+
    };
}

object_commands_are_commands!(
    BytesCommand,
    CounterCommand,
    LockCommand,
    SemaphoreCommand,
    BarrierCommand,
    LatchCommand,
    FutureCommand,
    MapCommand,
    QueueCommand,
    KeyCommand,
);

impl Command {
    /// The key the command addresses, which selects its slot; `None` for admin commands.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Admin(_) => None,
            Command::Data(data) => Some(data.key()),
        }
    }

    pub fn key_mut(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            Command::Admin(_) => None,
            Command::Data(data) => Some(data.key_mut()),
        }
    }

    /// Whether the command changes state (and so is deduplicated by operation id).
    pub fn is_mutation(&self) -> bool {
        matches!(self, Command::Data(data) if data.is_mutation())
    }

    /// How long the command may be parked at the shard before it is answered; a client
    /// adds this to its call timeout.
    pub fn wait_ms(&self) -> u64 {
        match self {
            Command::Admin(_) => 0,
            Command::Data(data) => data.wait_ms(),
        }
    }

    /// The right a credential needs to send the command (`None`: any admitted one).
    pub fn right(&self) -> Option<Right> {
        match self {
            Command::Admin(admin) => admin.right(),
            Command::Data(data) => Some(data.right()),
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Admin(admin) => admin.name(),
            Command::Data(data) => data.name(),
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Pong,
    /// A bytes value and the version of the write that produced it.
    Value {
        value: Vec<u8>,
        version: u64,
    },
    /// The key does not exist (or has expired).
    Missing,
    /// A write was applied; `version` is the key's new version.
    Written {
        version: u64,
    },
    /// An append was applied.
    Appended {
        version: u64,
        length: u64,
    },
    /// A conditional write was not applied; 0 means the key is absent.
    Conflict {
        current_version: u64,
    },
    Deleted {
        existed: bool,
    },
    Counter {
        value: i64,
    },
    CounterCas {
        swapped: bool,
        current: i64,
    },
    Info(NodeInfo),
    SlotMap(SlotMap),
    Error(ErrorReply),
    /// A lock was acquired (or renewed); the fence strictly increases per lock.
    LockGranted {
        fence: u64,
        lease_ms: u64,
    },
    /// The lock was released, or a semaphore permit returned.
    Released,
    LockHolder {
        holder: Option<LockHolder>,
    },
    SemaphoreGranted {
        permit_id: u64,
        permits: u32,
        lease_ms: u64,
    },
    SemaphoreAvailable {
        available: u32,
        capacity: u32,
    },
    BarrierPassed {
        generation: u64,
        arrival_index: u32,
    },
    /// `set` is false when the latch was still counting (its count is unchanged).
    LatchSet {
        set: bool,
        count: u64,
    },
    LatchCount {
        count: u64,
    },
    /// The latch reached zero.
    LatchOpen,
    FutureCompleted,
    MapEntries(Vec<MapEntry>),
    QueueLength {
        length: u64,
    },
    /// A range write was applied: the value's new version and length.
    RangeWritten {
        version: u64,
        length: u64,
    },
    /// A bytes value's length.
    ValueLength {
        length: u64,
    },
    /// The kind of object a key holds.
    KeyKind {
        kind: ObjectKind,
    },
    /// What is left of a key's time to live; `None` when it does not expire.
    Ttl {
        ttl_ms: Option<u64>,
    },
    /// Whether an expiry was set or taken away.
    ExpiryChanged {
        changed: bool,
    },
    /// A map field was written; `created` when it was not there before.
    FieldStored {
        created: bool,
    },
    /// A `Replace` ran: the value it replaced (`None`: the key was absent), and whether
    /// it wrote (its condition held).
    Replaced {
        old: Option<Vec<u8>>,
        written: bool,
    },
    /// A page of a scan: keys as the client named them, and the cursor to go on from
    /// (0: the shard's keys are all listed).
    Keys {
        keys: Vec<Vec<u8>>,
        cursor: u64,
    },
    /// How many keys of a namespace a shard holds.
    KeyCount {
        count: u64,
    },
    /// A `PopAny`'s value, from its `key_index`th key (0: `key`, 1: the first of
    /// `more_keys`, …).
    Popped {
        key_index: u32,
        value: Vec<u8>,
        version: u64,
    },
}

impl Response {
    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Pong => "pong",
            Response::Value { .. } => "value",
            Response::Missing => "missing",
            Response::Written { .. } => "written",
            Response::Appended { .. } => "appended",
            Response::Conflict { .. } => "conflict",
            Response::Deleted { .. } => "deleted",
            Response::Counter { .. } => "counter",
            Response::CounterCas { .. } => "counter_cas",
            Response::Info(_) => "info",
            Response::SlotMap(_) => "slot_map",
            Response::Error(_) => "error",
            Response::LockGranted { .. } => "lock_granted",
            Response::Released => "released",
            Response::LockHolder { .. } => "lock_holder",
            Response::SemaphoreGranted { .. } => "semaphore_granted",
            Response::SemaphoreAvailable { .. } => "semaphore_available",
            Response::BarrierPassed { .. } => "barrier_passed",
            Response::LatchSet { .. } => "latch_set",
            Response::LatchCount { .. } => "latch_count",
            Response::LatchOpen => "latch_open",
            Response::FutureCompleted => "future_completed",
            Response::MapEntries(_) => "map_entries",
            Response::QueueLength { .. } => "queue_length",
            Response::RangeWritten { .. } => "range_written",
            Response::ValueLength { .. } => "value_length",
            Response::KeyKind { .. } => "key_kind",
            Response::Ttl { .. } => "ttl",
            Response::ExpiryChanged { .. } => "expiry_changed",
            Response::FieldStored { .. } => "field_stored",
            Response::Replaced { .. } => "replaced",
            Response::Keys { .. } => "keys",
            Response::KeyCount { .. } => "key_count",
            Response::Popped { .. } => "popped",
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub owner: Vec<u8>,
    pub fence: u64,
    pub lease_remaining_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub field: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// An [`crate::ErrorCode`] number.
    pub code: u16,
    pub message: String,
    /// The epoch of the map the server routed with, so a client knows whether its
    /// own map is older.
    pub map_epoch: u64,
}

/// As people read it: the code's name (or number, from a newer build) and the message.
impl std::fmt::Display for ErrorReply {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match crate::ErrorCode::from_u16(self.code) {
            Some(code) => write!(formatter, "{code}: {}", self.message),
            None => write!(formatter, "error code {}: {}", self.code, self.message),
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeInfo {
    pub node_id: u64,
    pub server_version: String,
    pub uptime_ms: u64,
    pub map_epoch: u64,
    pub connections: u64,
    pub shards: Vec<ShardInfo>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ShardInfo {
    pub shard_id: u16,
    pub address: String,
    pub keys: u64,
    pub memory_used_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
    pub connections: u64,
    pub operations_total: u64,
}

/// Which shard owns each slot, at one epoch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotMap {
    /// Strictly increases with every change of ownership.
    pub epoch: u64,
    pub shards: Vec<ShardAddress>,
    /// Sorted, non-overlapping ranges covering every slot exactly once.
    pub ranges: Vec<SlotRange>,
    /// Every shard serving under this map draws versions, fences and permit ids above
    /// this (a reclaimed slot's new objects must outnumber what its lost owner handed
    /// out). 0: no floor beyond the shard's own.
    pub version_floor: u64,
    /// Which shards hold, in sync, a backup of which slots (besides their owner in
    /// `ranges`): sorted, non-overlapping, consecutive slots with the same backups in one
    /// range. Slots no range covers have no backup (a node alone, a cluster without
    /// replicas). A slot's first backup on a live node is the one promoted when its owner
    /// dies.
    #[cfg_attr(feature = "serde", serde(default))]
    pub backups: Vec<BackupRange>,
}

/// `SlotRange::shard_index` of slots that are lost: no shard serves them, and they
/// answer [`crate::ErrorCode::SlotLost`].
pub const LOST_SHARD_INDEX: u32 = u32::MAX;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ShardAddress {
    pub node_id: u64,
    pub shard_id: u16,
    /// `host:port` of the shard's own port.
    pub address: String,
    /// The incarnation of the node's process when the map was made (0: a node alone):
    /// a copy of a slot is counted on only in the process that holds it, never in one
    /// that restarted empty at the same address.
    #[cfg_attr(feature = "serde", serde(default))]
    pub incarnation: u64,
}

/// Slots `start..=end` are owned by `shards[shard_index]`, or lost when `shard_index` is
/// [`LOST_SHARD_INDEX`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotRange {
    pub start: u32,
    pub end: u32,
    pub shard_index: u32,
}

/// Slots `start..=end` are backed up, in sync, by `shards[i]` for each `i` of
/// `shard_indices`, in the order they are promoted in.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BackupRange {
    pub start: u32,
    pub end: u32,
    pub shard_indices: Vec<u32>,
}

/// A slot-indexed backup table as ranges: consecutive slots with equal backups (in the
/// same order) make one range, and slots without backups none, so a map of few, long
/// runs stays short.
pub fn backup_ranges(table: &[Vec<u32>]) -> Vec<BackupRange> {
    let mut ranges: Vec<BackupRange> = Vec::new();
    for (slot, backups) in table.iter().enumerate() {
        let slot = slot as u32;
        if backups.is_empty() {
            continue;
        }
        match ranges.last_mut() {
            Some(range) if range.end + 1 == slot && range.shard_indices == *backups => range.end = slot,
            _ => ranges.push(BackupRange {
                start: slot,
                end: slot,
                shard_indices: backups.clone(),
            }),
        }
    }
    ranges
}

impl SlotMap {
    /// Checks the invariants a map must hold before anyone routes with it: ranges sorted,
    /// contiguous from 0 to `SLOT_COUNT - 1`, each naming an existing shard or lost;
    /// backup ranges sorted, within the slots, naming existing shards, none for a lost
    /// slot, and never two copies of a slot (owner and backups) on one node.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_owners()?;
        self.validate_backups()
    }

    fn validate_owners(&self) -> Result<(), String> {
        let mut next = 0u32;
        for range in &self.ranges {
            if range.start != next || range.end < range.start {
                return Err(format!(
                    "slot range {}..={} does not continue at {next}",
                    range.start, range.end
                ));
            }
            if range.shard_index != LOST_SHARD_INDEX && range.shard_index as usize >= self.shards.len() {
                return Err(format!(
                    "slot range names shard index {} of {}",
                    range.shard_index,
                    self.shards.len()
                ));
            }
            next = range.end.checked_add(1).ok_or("slot range end overflows")?;
        }
        if next != crate::limits::SLOT_COUNT {
            return Err(format!(
                "slot ranges cover {next} of {} slots",
                crate::limits::SLOT_COUNT
            ));
        }
        Ok(())
    }

    /// Backup ranges are sorted, non-overlapping and within the slots; each names at
    /// least one existing shard; and no slot has a backup while lost, nor two copies
    /// (owner and backups) on one node, since one node's death would take both.
    /// Expects valid owner ranges.
    fn validate_backups(&self) -> Result<(), String> {
        let mut next = 0u32;
        let mut owners = self.ranges.iter().peekable();
        for backup in &self.backups {
            if backup.start < next || backup.end < backup.start || backup.end >= crate::limits::SLOT_COUNT {
                return Err(format!(
                    "backup range {}..={} is out of order, overlaps or leaves the {} slots",
                    backup.start,
                    backup.end,
                    crate::limits::SLOT_COUNT
                ));
            }
            if backup.shard_indices.is_empty() {
                return Err(format!("backup range {}..={} names no shard", backup.start, backup.end));
            }
            let mut nodes = Vec::with_capacity(backup.shard_indices.len());
            for &index in &backup.shard_indices {
                let shard = self
                    .shards
                    .get(index as usize)
                    .ok_or_else(|| format!("backup range names shard index {index} of {}", self.shards.len()))?;
                if nodes.contains(&shard.node_id) {
                    return Err(format!(
                        "backup range {}..={} puts two copies on node {}",
                        backup.start, backup.end, shard.node_id
                    ));
                }
                nodes.push(shard.node_id);
            }
            // The owner ranges overlapping this backup range: owner ranges are sorted and
            // backup ranges too, so one pass over both suffices.
            while owners.next_if(|owner| owner.end < backup.start).is_some() {}
            for owner in owners.clone().take_while(|owner| owner.start <= backup.end) {
                if owner.shard_index == LOST_SHARD_INDEX {
                    return Err(format!(
                        "lost slots {}..={} have backups",
                        owner.start.max(backup.start),
                        owner.end.min(backup.end)
                    ));
                }
                let owner_node = self.shards[owner.shard_index as usize].node_id;
                if nodes.contains(&owner_node) {
                    return Err(format!(
                        "slots {}..={} have a backup on their owner's node {owner_node}",
                        owner.start.max(backup.start),
                        owner.end.min(backup.end)
                    ));
                }
            }
            next = backup.end + 1;
        }
        Ok(())
    }

    /// The shard indices backing `slot` up, in promotion order; empty when it has none.
    /// A binary search of the backup ranges, which a valid map keeps sorted.
    pub fn backups_of(&self, slot: u32) -> &[u32] {
        let after = self.backups.partition_point(|range| range.start <= slot);
        match after.checked_sub(1).map(|index| &self.backups[index]) {
            Some(range) if range.end >= slot => &range.shard_indices,
            _ => &[],
        }
    }

    /// Expands the backup ranges into a slot-indexed table (the inverse of
    /// [`backup_ranges`]).
    pub fn backup_table(&self) -> Vec<Vec<u32>> {
        let mut table = vec![Vec::new(); crate::limits::SLOT_COUNT as usize];
        for range in &self.backups {
            for slot in range.start..=range.end.min(crate::limits::SLOT_COUNT - 1) {
                table[slot as usize].clone_from(&range.shard_indices);
            }
        }
        table
    }

    /// A fingerprint of the whole map (xxh3 of its wire encoding): two maps of one epoch
    /// with different digests differ. Nodes log it with every map they install, so that
    /// what each installed can be compared across a cluster.
    pub fn digest(&self) -> u64 {
        // Encoding a map of owned strings and integers only fails on allocation.
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(self).map_or_else(|_| Vec::new(), |bytes| bytes.to_vec());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// Slots no shard serves, in order.
    pub fn lost_slots(&self) -> Vec<u32> {
        self.ranges
            .iter()
            .filter(|range| range.shard_index == LOST_SHARD_INDEX)
            .flat_map(|range| range.start..=range.end)
            .collect()
    }

    /// Expands the ranges into a slot-indexed owner table (one lookup per request);
    /// lost slots hold [`LOST_SHARD_INDEX`].
    pub fn owner_table(&self) -> Vec<u32> {
        let mut table = vec![0u32; crate::limits::SLOT_COUNT as usize];
        for range in &self.ranges {
            for slot in range.start..=range.end.min(crate::limits::SLOT_COUNT - 1) {
                table[slot as usize] = range.shard_index;
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_shard_map() -> SlotMap {
        let shard = |node_id| ShardAddress {
            node_id,
            shard_id: 0,
            address: format!("10.0.0.{node_id}:7401"),
            incarnation: 0,
        };
        let mut map = crate::embedded_map(vec![shard(1)]);
        map.shards.push(shard(2));
        map
    }

    #[test]
    fn a_digest_is_the_same_for_equal_maps_and_differs_with_any_field() {
        let map = two_shard_map();
        assert_eq!(map.digest(), two_shard_map().digest());
        let mut moved = map.clone();
        moved.ranges = vec![
            SlotRange {
                start: 0,
                end: 99,
                shard_index: 1,
            },
            SlotRange {
                start: 100,
                end: crate::limits::SLOT_COUNT - 1,
                shard_index: 0,
            },
        ];
        let mut renumbered = map.clone();
        renumbered.epoch += 1;
        let mut floored = map.clone();
        floored.version_floor = 7;
        let mut backed_up = map.clone();
        backed_up.backups = vec![backup(0, 9, vec![1])];
        let mut backed_up_further = backed_up.clone();
        backed_up_further.backups[0].end = 10;
        assert_ne!(
            backed_up.digest(),
            backed_up_further.digest(),
            "a change of backups alone changes the digest"
        );
        for other in [moved, renumbered, floored, backed_up] {
            assert_ne!(map.digest(), other.digest(), "{other:?}");
        }
    }

    fn backup(start: u32, end: u32, shard_indices: Vec<u32>) -> BackupRange {
        BackupRange {
            start,
            end,
            shard_indices,
        }
    }

    /// Nodes 1 and 2 own half the slots each, on shards 0 and 1; node 3's shard 2 owns
    /// nothing; slots 100..=199 of node 1's half are lost.
    fn three_node_map() -> SlotMap {
        let mut map = two_shard_map();
        map.shards.push(ShardAddress {
            node_id: 3,
            shard_id: 0,
            address: "10.0.0.3:7401".into(),
            incarnation: 0,
        });
        let half = crate::limits::SLOT_COUNT / 2;
        let range = |start, end, shard_index| SlotRange {
            start,
            end,
            shard_index,
        };
        map.ranges = vec![
            range(0, 99, 0),
            range(100, 199, LOST_SHARD_INDEX),
            range(200, half - 1, 0),
            range(half, crate::limits::SLOT_COUNT - 1, 1),
        ];
        map
    }

    #[test]
    fn backups_on_other_nodes_of_served_slots_are_valid() {
        let last = crate::limits::SLOT_COUNT - 1;
        let half = crate::limits::SLOT_COUNT / 2;
        let mut map = three_node_map();
        map.backups = vec![
            backup(0, 99, vec![1, 2]),
            backup(200, half - 1, vec![2]),
            backup(half, last, vec![2, 0]),
        ];
        assert_eq!(map.validate(), Ok(()));
        assert_eq!(map.backups_of(0), &[1, 2]);
        assert_eq!(map.backups_of(99), &[1, 2]);
        assert_eq!(map.backups_of(150), &[] as &[u32]);
        assert_eq!(map.backups_of(half), &[2, 0]);
        assert_eq!(map.backups_of(last), &[2, 0]);
        assert_eq!(map.backups_of(last + 1), &[] as &[u32]);
        let table = map.backup_table();
        assert_eq!(table.len(), crate::limits::SLOT_COUNT as usize);
        assert_eq!(backup_ranges(&table), map.backups);
        map.backups.clear();
        assert_eq!(map.validate(), Ok(()), "no backups at all");
    }

    #[test]
    fn invalid_backups_are_refused_with_what_is_wrong() {
        let last = crate::limits::SLOT_COUNT - 1;
        let cases = [
            (vec![backup(10, 5, vec![1])], "out of order"),
            (vec![backup(0, 9, vec![1]), backup(9, 20, vec![1])], "overlaps"),
            (vec![backup(20, 29, vec![1]), backup(0, 9, vec![1])], "out of order"),
            (vec![backup(last, last + 1, vec![0])], "leaves the"),
            (vec![backup(0, 9, vec![])], "names no shard"),
            (vec![backup(0, 9, vec![7])], "shard index 7 of 3"),
            (vec![backup(0, 9, vec![0])], "owner's node 1"),
            (vec![backup(last - 5, last, vec![2, 1])], "owner's node 2"),
            (vec![backup(0, 9, vec![2, 2])], "two copies on node 3"),
            (vec![backup(90, 120, vec![1])], "lost slots 100..=120"),
        ];
        for (backups, expected) in cases {
            let mut map = three_node_map();
            map.backups = backups;
            let error = map.validate().expect_err(expected);
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    proptest::proptest! {
        /// Any table of backups survives ranges and back, and the ranges are as few as
        /// the table allows: adjacent ranges differ in their backups.
        #[test]
        fn backup_ranges_round_trip_and_are_merged(
            runs in proptest::collection::vec((1usize..3000, proptest::collection::vec(0u32..4, 0..3)), 1..30)
        ) {
            let slots = crate::limits::SLOT_COUNT as usize;
            let mut table: Vec<Vec<u32>> = Vec::with_capacity(slots);
            for (length, backups) in runs.iter().cycle() {
                let length = (*length).min(slots - table.len());
                table.extend(std::iter::repeat_n(backups.clone(), length));
                if table.len() == slots {
                    break;
                }
            }
            let ranges = backup_ranges(&table);
            for pair in ranges.windows(2) {
                proptest::prop_assert!(
                    pair[0].end + 1 < pair[1].start || pair[0].shard_indices != pair[1].shard_indices,
                    "{pair:?} could be one range"
                );
            }
            let map = SlotMap {
                backups: ranges,
                ..two_shard_map()
            };
            proptest::prop_assert_eq!(&map.backup_table(), &table);
            for (slot, backups) in table.iter().enumerate() {
                proptest::prop_assert_eq!(map.backups_of(slot as u32), backups.as_slice());
            }
        }
    }
}
