//! Payload types. Each is an rkyv archive, validated with bytecheck before it is read.
//!
//! Compatibility rule: enum variants and struct fields are only ever appended, and a
//! variant's meaning never changes, because rkyv encodes variants by position.

use rkyv::{Archive, Deserialize, Serialize};

use crate::cluster::{ClusterStatus, Heartbeat, JoinRequest, MigrateIn, MigrateOut, ReclaimRequest};

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

/// Condition of a bytes `Set`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    /// Only if the key does not exist (Redis `SET NX`).
    IfAbsent,
    /// Only if the key exists with exactly this version (compare-and-set).
    IfVersion(u64),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping,
    /// Node and per-shard statistics.
    Info,
    /// The slot map this node serves under.
    GetSlotMap,
    // Bytes objects.
    Get {
        key: Vec<u8>,
    },
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        /// 0: no expiry.
        ttl_ms: u64,
        condition: SetCondition,
    },
    Del {
        key: Vec<u8>,
    },
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    // Counters (i64; a missing counter reads as 0).
    CounterGet {
        key: Vec<u8>,
    },
    CounterAdd {
        key: Vec<u8>,
        delta: i64,
    },
    CounterSet {
        key: Vec<u8>,
        value: i64,
    },
    CounterCas {
        key: Vec<u8>,
        expected: i64,
        new: i64,
    },
    // Locks: fenced, leased, FIFO. `owner` names the holder (e.g. one per function
    // invocation); a lease that is not renewed releases the lock.
    LockAcquire {
        key: Vec<u8>,
        owner: Vec<u8>,
        lease_ms: u64,
        /// 0: answer at once (try-acquire).
        wait_ms: u64,
    },
    LockRelease {
        key: Vec<u8>,
        owner: Vec<u8>,
        fence: u64,
    },
    LockRenew {
        key: Vec<u8>,
        owner: Vec<u8>,
        fence: u64,
        lease_ms: u64,
    },
    LockHolder {
        key: Vec<u8>,
    },
    // Semaphores: `capacity` permits, fixed by the first use.
    SemaphoreAcquire {
        key: Vec<u8>,
        owner: Vec<u8>,
        capacity: u32,
        permits: u32,
        lease_ms: u64,
        wait_ms: u64,
    },
    SemaphoreRelease {
        key: Vec<u8>,
        permit_id: u64,
    },
    SemaphoreRenew {
        key: Vec<u8>,
        permit_id: u64,
        lease_ms: u64,
    },
    SemaphoreAvailable {
        key: Vec<u8>,
        capacity: u32,
    },
    // Cyclic barriers.
    BarrierWait {
        key: Vec<u8>,
        parties: u32,
        timeout_ms: u64,
    },
    // Count-down latches.
    LatchTrySetCount {
        key: Vec<u8>,
        count: u64,
    },
    LatchCountDown {
        key: Vec<u8>,
    },
    LatchCount {
        key: Vec<u8>,
    },
    LatchWait {
        key: Vec<u8>,
        timeout_ms: u64,
    },
    // Write-once futures.
    FutureComplete {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    FutureGet {
        key: Vec<u8>,
        /// 0: answer at once.
        timeout_ms: u64,
    },
    // Maps of fields to bytes.
    MapGet {
        key: Vec<u8>,
        field: Vec<u8>,
    },
    MapSet {
        key: Vec<u8>,
        field: Vec<u8>,
        value: Vec<u8>,
    },
    MapDel {
        key: Vec<u8>,
        field: Vec<u8>,
    },
    MapGetAll {
        key: Vec<u8>,
    },
    /// Adds to a field holding a decimal i64 (a missing field counts as 0), as Redis HINCRBY.
    MapIncr {
        key: Vec<u8>,
        field: Vec<u8>,
        delta: i64,
    },
    // Double-ended queues.
    QueuePush {
        key: Vec<u8>,
        value: Vec<u8>,
        end: QueueEnd,
    },
    QueuePop {
        key: Vec<u8>,
        end: QueueEnd,
        /// 0: answer at once (Missing when empty).
        timeout_ms: u64,
    },
    QueueLen {
        key: Vec<u8>,
    },
    // Cluster administration: nodes and operators to the control plane.
    /// A node joins (or rejoins) the cluster; answered with [`Response::Joined`].
    ClusterJoin(JoinRequest),
    /// A node's periodic liveness and load report; answered with [`Response::HeartbeatAck`].
    ClusterHeartbeat(Heartbeat),
    /// Answered with [`Response::ClusterStatus`].
    ClusterStatus,
    /// Plans and starts the moves that even out slots per shard; answered with
    /// [`Response::RebalanceStarted`].
    ClusterRebalance,
    /// Moves every slot off `node_id` so it can be removed.
    ClusterDrain {
        node_id: u64,
    },
    // Cluster administration: the control plane to nodes, and shard to shard.
    /// Serve under this map from now on; ignored unless newer than the node's.
    InstallMap(SlotMap),
    MigrateOut(MigrateOut),
    MigrateIn(MigrateIn),
    /// Forget the migration (0: any migration not committed by the node's map). Refused
    /// by a shard whose map is older than `map_epoch`: the abort was decided under that
    /// map, and a shard behind it may not know the migration committed.
    MigrateAbort {
        migration_id: u64,
        map_epoch: u64,
    },
    /// Returns lost slots to service, empty; answered with [`Response::Reclaimed`].
    ClusterReclaim(ReclaimRequest),
}

/// Which end of a queue an operation works on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueEnd {
    Front,
    Back,
}

/// Applies `$action` to the key of every keyed command variant (one list, so adding a
/// variant cannot leave one of the accessors behind).
macro_rules! keyed_commands {
    ($command:expr, $key:ident => $action:expr, $otherwise:expr) => {
        match $command {
            Command::Ping
            | Command::Info
            | Command::GetSlotMap
            | Command::ClusterJoin(_)
            | Command::ClusterHeartbeat(_)
            | Command::ClusterStatus
            | Command::ClusterRebalance
            | Command::ClusterDrain { .. }
            | Command::InstallMap(_)
            | Command::MigrateOut(_)
            | Command::MigrateIn(_)
            | Command::MigrateAbort { .. }
            | Command::ClusterReclaim(_) => $otherwise,
            Command::Get { key: $key }
            | Command::Set { key: $key, .. }
            | Command::Del { key: $key }
            | Command::Append { key: $key, .. }
            | Command::CounterGet { key: $key }
            | Command::CounterAdd { key: $key, .. }
            | Command::CounterSet { key: $key, .. }
            | Command::CounterCas { key: $key, .. }
            | Command::LockAcquire { key: $key, .. }
            | Command::LockRelease { key: $key, .. }
            | Command::LockRenew { key: $key, .. }
            | Command::LockHolder { key: $key }
            | Command::SemaphoreAcquire { key: $key, .. }
            | Command::SemaphoreRelease { key: $key, .. }
            | Command::SemaphoreRenew { key: $key, .. }
            | Command::SemaphoreAvailable { key: $key, .. }
            | Command::BarrierWait { key: $key, .. }
            | Command::LatchTrySetCount { key: $key, .. }
            | Command::LatchCountDown { key: $key }
            | Command::LatchCount { key: $key }
            | Command::LatchWait { key: $key, .. }
            | Command::FutureComplete { key: $key, .. }
            | Command::FutureGet { key: $key, .. }
            | Command::MapGet { key: $key, .. }
            | Command::MapSet { key: $key, .. }
            | Command::MapDel { key: $key, .. }
            | Command::MapGetAll { key: $key }
            | Command::MapIncr { key: $key, .. }
            | Command::QueuePush { key: $key, .. }
            | Command::QueuePop { key: $key, .. }
            | Command::QueueLen { key: $key } => $action,
        }
    };
}

impl Command {
    /// The key the command addresses, which selects its slot; `None` for node commands.
    pub fn key(&self) -> Option<&[u8]> {
        keyed_commands!(self, key => Some(key.as_slice()), None)
    }

    pub fn key_mut(&mut self) -> Option<&mut Vec<u8>> {
        keyed_commands!(self, key => Some(key), None)
    }

    /// Whether the command changes state (and so is deduplicated by operation id).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Command::Set { .. }
                | Command::Del { .. }
                | Command::Append { .. }
                | Command::CounterAdd { .. }
                | Command::CounterSet { .. }
                | Command::CounterCas { .. }
                | Command::LockAcquire { .. }
                | Command::LockRelease { .. }
                | Command::LockRenew { .. }
                | Command::SemaphoreAcquire { .. }
                | Command::SemaphoreRelease { .. }
                | Command::SemaphoreRenew { .. }
                | Command::BarrierWait { .. }
                | Command::LatchTrySetCount { .. }
                | Command::LatchCountDown { .. }
                | Command::FutureComplete { .. }
                | Command::MapSet { .. }
                | Command::MapDel { .. }
                | Command::MapIncr { .. }
                | Command::QueuePush { .. }
                | Command::QueuePop { .. }
        )
    }

    /// How long the command may be parked at the shard before it is answered; a client
    /// adds this to its call timeout.
    pub fn wait_ms(&self) -> u64 {
        match self {
            Command::LockAcquire { wait_ms, .. } | Command::SemaphoreAcquire { wait_ms, .. } => *wait_ms,
            Command::BarrierWait { timeout_ms, .. }
            | Command::LatchWait { timeout_ms, .. }
            | Command::FutureGet { timeout_ms, .. }
            | Command::QueuePop { timeout_ms, .. } => *timeout_ms,
            _ => 0,
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Info => "info",
            Command::GetSlotMap => "get_slot_map",
            Command::Get { .. } => "get",
            Command::Set { .. } => "set",
            Command::Del { .. } => "del",
            Command::Append { .. } => "append",
            Command::CounterGet { .. } => "counter_get",
            Command::CounterAdd { .. } => "counter_add",
            Command::CounterSet { .. } => "counter_set",
            Command::CounterCas { .. } => "counter_cas",
            Command::LockAcquire { .. } => "lock_acquire",
            Command::LockRelease { .. } => "lock_release",
            Command::LockRenew { .. } => "lock_renew",
            Command::LockHolder { .. } => "lock_holder",
            Command::SemaphoreAcquire { .. } => "semaphore_acquire",
            Command::SemaphoreRelease { .. } => "semaphore_release",
            Command::SemaphoreRenew { .. } => "semaphore_renew",
            Command::SemaphoreAvailable { .. } => "semaphore_available",
            Command::BarrierWait { .. } => "barrier_wait",
            Command::LatchTrySetCount { .. } => "latch_try_set_count",
            Command::LatchCountDown { .. } => "latch_count_down",
            Command::LatchCount { .. } => "latch_count",
            Command::LatchWait { .. } => "latch_wait",
            Command::FutureComplete { .. } => "future_complete",
            Command::FutureGet { .. } => "future_get",
            Command::MapGet { .. } => "map_get",
            Command::MapSet { .. } => "map_set",
            Command::MapDel { .. } => "map_del",
            Command::MapGetAll { .. } => "map_get_all",
            Command::MapIncr { .. } => "map_incr",
            Command::QueuePush { .. } => "queue_push",
            Command::QueuePop { .. } => "queue_pop",
            Command::QueueLen { .. } => "queue_len",
            Command::ClusterJoin(_) => "cluster_join",
            Command::ClusterHeartbeat(_) => "cluster_heartbeat",
            Command::ClusterStatus => "cluster_status",
            Command::ClusterRebalance => "cluster_rebalance",
            Command::ClusterDrain { .. } => "cluster_drain",
            Command::InstallMap(_) => "install_map",
            Command::MigrateOut(_) => "migrate_out",
            Command::MigrateIn(_) => "migrate_in",
            Command::MigrateAbort { .. } => "migrate_abort",
            Command::ClusterReclaim(_) => "cluster_reclaim",
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
    Joined {
        node_id: u64,
        map: SlotMap,
        /// This process's incarnation: its shards draw versions, fences and permit ids
        /// from [`crate::limits::incarnation_version_floor`] of it.
        incarnation: u64,
        /// The control plane's liveness timeout: a node silent for longer is declared
        /// dead, so the node must not serve on an unchecked map for nearly that long.
        liveness_timeout_ms: u64,
    },
    HeartbeatAck {
        map_epoch: u64,
        /// Migrations the node reported that the control plane is not running: abort
        /// them (after catching up to `map_epoch`).
        abort_migrations: Vec<u64>,
        /// As in [`Response::Joined`].
        liveness_timeout_ms: u64,
    },
    /// Boxed: the largest answer by far, and rare.
    ClusterStatus(Box<ClusterStatus>),
    RebalanceStarted {
        slots_to_move: u64,
    },
    /// The source copied the slots to the target and holds them frozen.
    MigrationPrepared {
        entries: u64,
        bytes: u64,
    },
    /// Done, with nothing to report.
    Accepted,
    /// Lost slots returned to service, empty, under map `epoch`.
    Reclaimed {
        slots: u64,
        epoch: u64,
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
            Response::Joined { .. } => "joined",
            Response::HeartbeatAck { .. } => "heartbeat_ack",
            Response::ClusterStatus(_) => "cluster_status",
            Response::RebalanceStarted { .. } => "rebalance_started",
            Response::MigrationPrepared { .. } => "migration_prepared",
            Response::Accepted => "accepted",
            Response::Reclaimed { .. } => "reclaimed",
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
