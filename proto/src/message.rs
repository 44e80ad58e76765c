//! Payload types. Each is an rkyv archive, validated with bytecheck before it is read.
//!
//! Compatibility rule: enum variants and struct fields are only ever appended, and a
//! variant's meaning never changes, because rkyv encodes variants by position.

use rkyv::{Archive, Deserialize, Serialize};

pub use crate::data::{ArchivedQueueEnd, ArchivedSetCondition, DataCommand, QueueEnd, SetCondition};

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

impl SlotMap {
    /// Checks the invariants a map must hold before anyone routes with it: ranges sorted,
    /// contiguous from 0 to `SLOT_COUNT - 1`, each naming an existing shard or lost.
    pub fn validate(&self) -> Result<(), String> {
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
        for other in [moved, renumbered, floored] {
            assert_ne!(map.digest(), other.digest(), "{other:?}");
        }
    }
}
