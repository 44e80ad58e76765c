//! The control plane's state as a sans-I/O state machine: members, the slot owners and
//! the map built from them, liveness and load from heartbeats. Time enters only as
//! `now_ms`, so tests drive it with a virtual clock; persistence is a byte encoding the
//! caller writes to disk.
//!
//! Invariants:
//! - `map()` always lists every member's shards, and every slot is owned by a shard of
//!   a member (the first member to join takes every slot) or is lost.
//! - A slot is *lost* when the process that owned it is gone: its node was declared
//!   dead, or joined again as a new process (with empty memory). A lost slot is served
//!   by nobody until the same process comes back (a pause, not a death: it gets the
//!   slot back) or an operator reclaims it, empty, for a live shard.
//! - Every join and every reclaim draws a new incarnation, strictly above every one
//!   before it; a node's shards draw versions, fences and permit ids from their
//!   incarnation's floor up, and a reclaim raises every shard to a floor above every
//!   earlier incarnation, so nothing handed out for an object is ever handed out again.
//! - The map's epoch strictly increases with every change of ownership or membership,
//!   and is never lower than [`engram_proto::EMBEDDED_MAP_EPOCH`] + 1, so a cluster map always
//!   supersedes the map a node served with alone.

use std::collections::BTreeMap;

use engram_proto::limits::{incarnation_version_floor, INCARNATIONS_MAX, SLOT_COUNT, ZONE_BYTES_MAX};
use engram_proto::{
    ClusterStatus, Heartbeat, JoinRequest, NodeStatus, ReclaimRequest, ShardAddress, ShardStatus, SlotMap, SlotRange,
    LOST_SHARD_INDEX,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::planner::{Move, PlanShard, ShardRef};

mod replica_groups;
use replica_groups::Fills;
pub use replica_groups::NodeFailure;

/// A member silent for longer than this is declared dead (by default; `engram-control
/// --liveness-timeout-ms`), and the slots it owned are lost.
pub const LIVENESS_TIMEOUT_MS: u64 = 10_000;
/// The shortest liveness timeout a control plane takes: a node serves on its map only
/// while it checked it within about half the timeout, less a call to the control plane
/// (`engramd`'s `CONTROL_CALL_TIMEOUT_MS`), and below this that leaves too little
/// room for heartbeats every 500 ms.
pub const LIVENESS_TIMEOUT_MS_MIN: u64 = 3_000;
/// A member silent for longer than this (a few heartbeat intervals: nodes beat every
/// 500 ms) receives no slots, and a migration towards it is aborted: a paused node
/// must not be handed data long before it is declared dead.
pub const TARGET_SILENCE_MS_MAX: u64 = 2_000;
/// Members one cluster holds at most (the map lists every shard of every member).
pub const MEMBERS_MAX: usize = 1024;
/// Shards one member may have (shard ids are 16-bit).
pub const MEMBER_SHARDS_MAX: usize = 1024;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    pub front_address: String,
    pub shard_addresses: Vec<String>,
    pub memory_limit_bytes: u64,
    pub draining: bool,
    /// The process of this node the cluster knows now (see the module's invariants).
    pub incarnation: u64,
    /// The boot id that process joined with: a join with another one is a restart.
    pub boot_id: u64,
    /// The zone its latest join named; empty: none.
    pub zone: String,
}

/// Slots `start..=end`, last owned by `owner` in incarnation `incarnation`, are lost.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRange {
    pub start: u32,
    pub end: u32,
    pub node_id: u64,
    pub shard_id: u16,
    pub incarnation: u64,
}

/// What survives a control-plane restart.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    pub members: Vec<Member>,
    pub map: SlotMap,
    pub next_node_id: u64,
    pub next_migration_id: u64,
    pub migrations_completed: u64,
    pub slots_moved_total: u64,
    pub next_incarnation: u64,
    /// The lost slots, with their last owner (the map only says they are lost).
    pub lost: Vec<LostRange>,
    /// Slots whose backup was promoted when their owner died.
    pub failovers_total: u64,
}

/// Liveness and load of one member, from its heartbeats (not persisted: a restarted
/// control plane learns it again within one heartbeat interval).
#[derive(Debug, Clone, Default)]
struct Observed {
    last_heartbeat_ms: Option<u64>,
    map_epoch: u64,
    shards: Vec<ShardObserved>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ShardObserved {
    keys: u64,
    memory_used_bytes: u64,
    operations_total: u64,
    operations_per_second: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("the cluster holds members_max ({MEMBERS_MAX}) members")]
    TooManyMembers,
    #[error("a node has 1..=member_shards_max ({MEMBER_SHARDS_MAX}) shards, not {0}")]
    ShardCount(usize),
    #[error("a zone is at most zone_bytes_max ({ZONE_BYTES_MAX}) bytes, not {0}")]
    ZoneTooLong(usize),
    #[error(
        "node {node_id} rejoined with {offered} shards but owns slots on {known}; restart it with --cores {known}"
    )]
    ShardCountChanged { node_id: u64, known: usize, offered: usize },
    #[error("node {0} is not a member")]
    UnknownNode(u64),
    #[error("draining node {0} would leave no node to own its slots")]
    LastNode(u64),
    #[error("the cluster has handed out incarnations_max ({INCARNATIONS_MAX}) incarnations")]
    IncarnationsExhausted,
    #[error("slot {0} is not lost")]
    NotLost(u32),
    #[error("slot {slot} is out of range (slot_count {SLOT_COUNT})")]
    SlotOutOfRange { slot: u32 },
    #[error("no lost slot to reclaim")]
    NothingToReclaim,
    #[error("no live node to own reclaimed slots")]
    NoLiveNode,
    #[error("node {node_id} runs incarnation {current}; incarnation {reported} was replaced by a restart")]
    Replaced { node_id: u64, current: u64, reported: u64 },
    #[error("the persisted state is unreadable: {0}")]
    Corrupt(String),
    #[error("the state cannot be encoded: {0}")]
    Encode(String),
}

/// Cloned to prepare a change: the clone is changed and persisted, and only then
/// replaces the original, so memory never runs ahead of the state file.
#[derive(Clone)]
pub struct Membership {
    state: PersistedState,
    /// Slot-indexed owner, kept in step with `state.map`; a lost slot's last owner.
    owners: Vec<ShardRef>,
    /// Lost slots and the incarnation that lost them, kept in step with `state.lost`.
    lost: BTreeMap<u32, u64>,
    observed: BTreeMap<u64, Observed>,
    /// Silence after which a member is declared dead.
    liveness_timeout_ms: u64,
    /// Per slot, its backups in promotion order, kept in step with `state.map.backups`.
    backups: Vec<Vec<ShardRef>>,
    /// Backups each slot gets (a setting, not state).
    replicas: usize,
    /// Fills ordered now: recomputed every housekeeping round, never persisted.
    fills: Fills,
    /// The generation fill orders carry ([`FillOrder::generation`]): a new one at each
    /// withdrawal, starting from a base each leader picks afresh.
    ///
    /// [`FillOrder::generation`]: engram_proto::FillOrder::generation
    fills_generation: u64,
}

/// What a join decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub node_id: u64,
    pub incarnation: u64,
    /// What the end of the node's previous process did to its slots.
    pub failure: NodeFailure,
}

impl Default for Membership {
    fn default() -> Self {
        Membership::new()
    }
}

impl Membership {
    pub fn new() -> Membership {
        Membership {
            state: PersistedState {
                members: Vec::new(),
                map: SlotMap {
                    epoch: engram_proto::EMBEDDED_MAP_EPOCH,
                    shards: Vec::new(),
                    ranges: Vec::new(),
                    version_floor: 0,
                    backups: Vec::new(),
                },
                next_node_id: 1,
                next_migration_id: 1,
                migrations_completed: 0,
                slots_moved_total: 0,
                next_incarnation: 1,
                lost: Vec::new(),
                failovers_total: 0,
            },
            owners: Vec::new(),
            lost: BTreeMap::new(),
            observed: BTreeMap::new(),
            liveness_timeout_ms: LIVENESS_TIMEOUT_MS,
            backups: vec![Vec::new(); SLOT_COUNT as usize],
            replicas: 0,
            fills: Fills::default(),
            fills_generation: 0,
        }
    }

    /// Sets the silence after which a member is declared dead.
    pub fn set_liveness_timeout_ms(&mut self, timeout_ms: u64) {
        self.liveness_timeout_ms = timeout_ms;
    }

    /// Restores a state from [`Membership::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Membership, MembershipError> {
        let (checksum, body) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| MembershipError::Corrupt("shorter than its checksum".into()))?;
        if u32::from_le_bytes(*checksum) != crc32fast::hash(body) {
            return Err(MembershipError::Corrupt("checksum mismatch".into()));
        }
        let state = engram_proto::decode_payload::<PersistedState>(body)
            .map_err(|error| MembershipError::Corrupt(error.to_string()))?;
        if !state.members.is_empty() {
            state.map.validate().map_err(MembershipError::Corrupt)?;
        }
        let mut membership = Membership {
            state,
            owners: Vec::new(),
            lost: BTreeMap::new(),
            observed: BTreeMap::new(),
            liveness_timeout_ms: LIVENESS_TIMEOUT_MS,
            backups: vec![Vec::new(); SLOT_COUNT as usize],
            replicas: 0,
            fills: Fills::default(),
            fills_generation: 0,
        };
        membership.owners = membership.owners_from_map();
        if !membership.owners.is_empty() {
            membership.backups = crate::replicas::slot_tables(&membership.state.map).1;
        }
        for range in &membership.state.lost {
            for slot in range.start..=range.end.min(SLOT_COUNT - 1) {
                membership.lost.insert(slot, range.incarnation);
                if let Some(owner) = membership.owners.get_mut(slot as usize) {
                    *owner = ShardRef {
                        node_id: range.node_id,
                        shard_id: range.shard_id,
                    };
                }
            }
        }
        Ok(membership)
    }

    /// The bytes to persist: a crc32 of the body, then the rkyv body. An encoding
    /// failure is an error, never an empty body: that would persist a state that no
    /// longer decodes.
    pub fn encode(&self) -> Result<Vec<u8>, MembershipError> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&self.state)
            .map_err(|error| MembershipError::Encode(error.to_string()))?;
        let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    pub fn map(&self) -> &SlotMap {
        &self.state.map
    }

    pub fn epoch(&self) -> u64 {
        self.state.map.epoch
    }

    pub fn members(&self) -> &[Member] {
        &self.state.members
    }

    pub fn member(&self, node_id: u64) -> Option<&Member> {
        self.state.members.iter().find(|member| member.node_id == node_id)
    }

    pub fn owners(&self) -> &[ShardRef] {
        &self.owners
    }

    /// Reserves `count` migration ids: the state (once persisted) records them as used,
    /// so ids never repeat across restarts, while one write serves many migrations.
    pub fn reserve_migration_ids(&mut self, count: u64) -> std::ops::Range<u64> {
        let start = self.state.next_migration_id;
        self.state.next_migration_id += count;
        start..self.state.next_migration_id
    }

    /// Adds a node, or recognises a restarted one by its front address. The first node
    /// takes every slot; later ones start empty until a rebalance gives them slots. A
    /// known node joining with a new boot id is a new process with empty memory: the
    /// slots its previous process owned are lost. The same boot id again is a retried
    /// join of the same process, answered as before.
    pub fn join(&mut self, request: &JoinRequest, now_ms: u64) -> Result<Joined, MembershipError> {
        let shard_count = request.shard_addresses.len();
        if shard_count == 0 || shard_count > MEMBER_SHARDS_MAX {
            return Err(MembershipError::ShardCount(shard_count));
        }
        if request.zone.len() > ZONE_BYTES_MAX {
            return Err(MembershipError::ZoneTooLong(request.zone.len()));
        }
        let existing = self
            .state
            .members
            .iter()
            .position(|member| member.front_address == request.front_address);
        let joined = match existing {
            Some(index) => self.rejoin(index, request)?,
            None => self.add_member(request)?,
        };
        self.observed.entry(joined.node_id).or_default().last_heartbeat_ms = Some(now_ms);
        self.rebuild_map();
        Ok(joined)
    }

    fn rejoin(&mut self, index: usize, request: &JoinRequest) -> Result<Joined, MembershipError> {
        let shard_count = request.shard_addresses.len();
        let member = &self.state.members[index];
        let node_id = member.node_id;
        let known = member.shard_addresses.len();
        let owns_beyond = self
            .owners
            .iter()
            .any(|owner| owner.node_id == node_id && owner.shard_id as usize >= shard_count);
        if known != shard_count && owns_beyond {
            return Err(MembershipError::ShardCountChanged {
                node_id,
                known,
                offered: shard_count,
            });
        }
        let restarted = member.boot_id != request.boot_id;
        let previous = member.incarnation;
        let incarnation = if restarted { self.draw_incarnation()? } else { previous };
        let failure = if restarted {
            self.fail_over_node(node_id, previous)
        } else {
            NodeFailure::default()
        };
        let member = &mut self.state.members[index];
        member.shard_addresses = request.shard_addresses.clone();
        member.memory_limit_bytes = request.memory_limit_bytes;
        member.incarnation = incarnation;
        member.boot_id = request.boot_id;
        member.zone.clone_from(&request.zone);
        Ok(Joined {
            node_id,
            incarnation,
            failure,
        })
    }

    fn add_member(&mut self, request: &JoinRequest) -> Result<Joined, MembershipError> {
        if self.state.members.len() >= MEMBERS_MAX {
            return Err(MembershipError::TooManyMembers);
        }
        let incarnation = self.draw_incarnation()?;
        let node_id = self.state.next_node_id;
        self.state.next_node_id += 1;
        self.state.members.push(Member {
            node_id,
            front_address: request.front_address.clone(),
            shard_addresses: request.shard_addresses.clone(),
            memory_limit_bytes: request.memory_limit_bytes,
            draining: false,
            incarnation,
            boot_id: request.boot_id,
            zone: request.zone.clone(),
        });
        if self.owners.is_empty() {
            let shard_count = request.shard_addresses.len() as u64;
            self.owners = (0..SLOT_COUNT)
                .map(|slot| ShardRef {
                    node_id,
                    shard_id: (u64::from(slot) * shard_count / u64::from(SLOT_COUNT)) as u16,
                })
                .collect();
        }
        Ok(Joined {
            node_id,
            incarnation,
            failure: NodeFailure::default(),
        })
    }

    /// The next incarnation; persisting the state records it as used.
    fn draw_incarnation(&mut self) -> Result<u64, MembershipError> {
        let incarnation = self.state.next_incarnation;
        if incarnation > INCARNATIONS_MAX {
            return Err(MembershipError::IncarnationsExhausted);
        }
        self.state.next_incarnation += 1;
        Ok(incarnation)
    }

    /// Declares dead every member silent for longer than the liveness timeout (a
    /// member never heard from since this control plane started counts from its
    /// start): its slots go to their backups or are lost, and it backs up nothing any
    /// more. Returns each newly dead member with what that did; the caller persists the
    /// change when any.
    pub fn declare_dead(&mut self, now_ms: u64) -> Vec<(u64, NodeFailure)> {
        let silent: Vec<(u64, u64)> = self
            .silent_members(now_ms)
            .map(|member| (member.node_id, member.incarnation))
            .collect();
        let mut dead = Vec::new();
        for (node_id, incarnation) in silent {
            let failure = self.fail_over_node(node_id, incarnation);
            if !failure.is_empty() {
                dead.push((node_id, failure));
            }
        }
        if !dead.is_empty() {
            self.rebuild_map();
        }
        dead
    }

    /// Whether [`Membership::declare_dead`] would lose any slot now: a cheap look that
    /// spares the caller a copy of the state when nothing changes, as almost always.
    pub fn has_dead_to_declare(&self, now_ms: u64) -> bool {
        self.silent_members(now_ms)
            .any(|member| self.holds_a_role(member.node_id))
    }

    fn silent_members(&self, now_ms: u64) -> impl Iterator<Item = &Member> {
        self.state
            .members
            .iter()
            .filter(move |member| self.silence_ms(member.node_id, now_ms) > self.liveness_timeout_ms)
    }

    /// Returns an operator's lost slots to service, empty: each goes back to its last
    /// owner's shard when that node is live, or else to the live shard owning the
    /// fewest slots. Every shard then draws above a new incarnation's floor (the map's
    /// `version_floor`), so what the lost owner handed out is never handed out again.
    pub fn reclaim(&mut self, request: &ReclaimRequest, now_ms: u64) -> Result<Vec<u32>, MembershipError> {
        let mut slots: Vec<u32> = Vec::new();
        for &slot in &request.slots {
            if slot >= SLOT_COUNT {
                return Err(MembershipError::SlotOutOfRange { slot });
            }
            if !self.lost.contains_key(&slot) {
                return Err(MembershipError::NotLost(slot));
            }
            slots.push(slot);
        }
        if request.node_id != 0 {
            self.member(request.node_id)
                .ok_or(MembershipError::UnknownNode(request.node_id))?;
            slots.extend(
                self.lost
                    .keys()
                    .copied()
                    .filter(|&slot| self.owners[slot as usize].node_id == request.node_id),
            );
        }
        slots.sort_unstable();
        slots.dedup();
        if slots.is_empty() {
            return Err(MembershipError::NothingToReclaim);
        }
        let floor = incarnation_version_floor(self.draw_incarnation()?);
        let mut slots_per_shard = self.slots_per_receiver(now_ms);
        for &slot in &slots {
            let owner = self.owners[slot as usize];
            let new_owner = if self.can_receive(owner, now_ms) {
                owner
            } else {
                // Ties go to the lowest shard, so equal inputs give equal maps.
                let (&shard, _) = slots_per_shard
                    .iter()
                    .min_by_key(|(shard, count)| (**count, **shard))
                    .ok_or(MembershipError::NoLiveNode)?;
                shard
            };
            if let Some(count) = slots_per_shard.get_mut(&new_owner) {
                *count += 1;
            }
            self.owners[slot as usize] = new_owner;
            self.lost.remove(&slot);
        }
        self.state.map.version_floor = floor;
        self.rebuild_map();
        Ok(slots)
    }

    /// Whether `shard` may be given slots now: a shard of a member that heartbeats,
    /// is not draining, and has that shard.
    fn can_receive(&self, shard: ShardRef, now_ms: u64) -> bool {
        self.member(shard.node_id).is_some_and(|member| {
            !member.draining
                && (shard.shard_id as usize) < member.shard_addresses.len()
                && self.is_responsive(member.node_id, now_ms)
        })
    }

    /// Every shard that may receive slots now, with the slots it serves.
    fn slots_per_receiver(&self, now_ms: u64) -> BTreeMap<ShardRef, u32> {
        let mut slots_per_shard: BTreeMap<ShardRef, u32> = self
            .state
            .members
            .iter()
            .flat_map(|member| {
                (0..member.shard_addresses.len()).map(|shard_id| ShardRef {
                    node_id: member.node_id,
                    shard_id: shard_id as u16,
                })
            })
            .filter(|shard| self.can_receive(*shard, now_ms))
            .map(|shard| (shard, 0))
            .collect();
        for (slot, owner) in self.owners.iter().enumerate() {
            if !self.lost.contains_key(&(slot as u32)) {
                if let Some(count) = slots_per_shard.get_mut(owner) {
                    *count += 1;
                }
            }
        }
        slots_per_shard
    }

    /// Gives a paused member back the slots it lost while it was silent: the same
    /// process (incarnation) still holds their data, and nobody served them since.
    /// Returns them.
    fn restore_slots_of(&mut self, node_id: u64, incarnation: u64) -> Vec<u32> {
        let restored: Vec<u32> = self
            .lost
            .iter()
            .filter(|(slot, lost_by)| **lost_by == incarnation && self.owners[**slot as usize].node_id == node_id)
            .map(|(slot, _)| *slot)
            .collect();
        for slot in &restored {
            self.lost.remove(slot);
        }
        if !restored.is_empty() {
            self.rebuild_map();
        }
        restored
    }

    /// Whether `shard` serves `slot` (the slot is not lost and the map gives it to `shard`).
    pub fn serves(&self, shard: ShardRef, slot: u32) -> bool {
        self.owners.get(slot as usize) == Some(&shard) && !self.lost.contains_key(&slot)
    }

    /// How many slots are lost.
    pub fn lost_count(&self) -> usize {
        self.lost.len()
    }

    /// Drops moves of lost slots: there is nothing to copy, and nobody to copy from.
    pub fn movable(&self, moves: Vec<Move>) -> Vec<Move> {
        moves
            .into_iter()
            .filter(|planned| !self.lost.contains_key(&planned.slot))
            .collect()
    }

    /// Moves the epoch past `epoch`: a node serves a map this control plane no longer
    /// has (its state file was restored from an older copy), and the next map must
    /// supersede that one everywhere.
    pub fn raise_epoch_past(&mut self, epoch: u64) {
        if epoch > self.state.map.epoch {
            self.state.map.epoch = epoch;
            self.rebuild_map();
        }
    }

    /// Records a heartbeat; returns the epoch the node should catch up to. A beat of a
    /// process that a restart replaced is refused: that process must not serve.
    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, now_ms: u64) -> Result<u64, MembershipError> {
        let member = self
            .member(heartbeat.node_id)
            .ok_or(MembershipError::UnknownNode(heartbeat.node_id))?;
        if heartbeat.incarnation != member.incarnation {
            return Err(MembershipError::Replaced {
                node_id: heartbeat.node_id,
                current: member.incarnation,
                reported: heartbeat.incarnation,
            });
        }
        let observed = self.observed.entry(heartbeat.node_id).or_default();
        let elapsed_ms = observed.last_heartbeat_ms.map_or(0, |last| now_ms.saturating_sub(last));
        let shards = heartbeat
            .shards
            .iter()
            .enumerate()
            .map(|(index, load)| {
                let before = observed.shards.get(index).copied().unwrap_or_default();
                let operations = load.operations_total.saturating_sub(before.operations_total);
                ShardObserved {
                    keys: load.keys,
                    memory_used_bytes: load.memory_used_bytes,
                    operations_total: load.operations_total,
                    operations_per_second: operations
                        .saturating_mul(1000)
                        .checked_div(elapsed_ms)
                        .unwrap_or(before.operations_per_second),
                }
            })
            .collect();
        observed.shards = shards;
        observed.map_epoch = heartbeat.map_epoch;
        observed.last_heartbeat_ms = Some(now_ms);
        Ok(self.state.map.epoch)
    }

    /// Heard from within the liveness timeout.
    pub fn is_alive(&self, node_id: u64, now_ms: u64) -> bool {
        self.last_heard_ms(node_id)
            .is_some_and(|last| now_ms.saturating_sub(last) <= self.liveness_timeout_ms)
    }

    /// Heard from within [`TARGET_SILENCE_MS_MAX`]: may be given slots.
    /// The map epoch `node_id` reported in its last heartbeat (0: none yet).
    pub fn reported_epoch(&self, node_id: u64) -> u64 {
        self.observed.get(&node_id).map_or(0, |observed| observed.map_epoch)
    }

    pub fn is_responsive(&self, node_id: u64, now_ms: u64) -> bool {
        self.last_heard_ms(node_id)
            .is_some_and(|last| now_ms.saturating_sub(last) <= TARGET_SILENCE_MS_MAX)
    }

    fn last_heard_ms(&self, node_id: u64) -> Option<u64> {
        self.observed
            .get(&node_id)
            .and_then(|observed| observed.last_heartbeat_ms)
    }

    /// How long `node_id` has been silent; a member not heard from since this control
    /// plane started counts from the start (time 0), so a restarted control plane
    /// waits a full liveness timeout before it declares anyone dead.
    fn silence_ms(&self, node_id: u64, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_heard_ms(node_id).unwrap_or(0))
    }

    /// Counts every member as heard from at `now_ms`: after a stall of the control
    /// plane, whose own silence must not pass for its members'.
    pub fn hear_from_everyone(&mut self, now_ms: u64) {
        for member in &self.state.members {
            self.observed.entry(member.node_id).or_default().last_heartbeat_ms = Some(now_ms);
        }
    }

    /// Whether a heartbeat of `node_id` in `incarnation` would get lost slots back.
    pub fn restorable(&self, node_id: u64, incarnation: u64) -> bool {
        self.lost
            .iter()
            .any(|(slot, lost_by)| *lost_by == incarnation && self.owners[*slot as usize].node_id == node_id)
    }

    /// See [`Membership::restore_slots_of`].
    pub fn restore(&mut self, node_id: u64, incarnation: u64) -> Vec<u32> {
        self.restore_slots_of(node_id, incarnation)
    }

    /// Marks a node to be emptied; the next plan moves its slots away.
    pub fn drain(&mut self, node_id: u64) -> Result<(), MembershipError> {
        let others = self
            .state
            .members
            .iter()
            .any(|member| member.node_id != node_id && !member.draining);
        let member = self
            .state
            .members
            .iter_mut()
            .find(|member| member.node_id == node_id)
            .ok_or(MembershipError::UnknownNode(node_id))?;
        if !others {
            return Err(MembershipError::LastNode(node_id));
        }
        member.draining = true;
        Ok(())
    }

    /// Forgets members that were drained, own nothing and stopped heartbeating: they
    /// were removed from service. Returns whether any was.
    pub fn forget_departed(&mut self, now_ms: u64) -> bool {
        let departed: Vec<u64> = self
            .state
            .members
            .iter()
            .filter(|member| {
                let owns = self.owners.iter().any(|owner| owner.node_id == member.node_id);
                member.draining && !owns && !self.is_alive(member.node_id, now_ms)
            })
            .map(|member| member.node_id)
            .collect();
        let before = self.state.members.len();
        self.state.members.retain(|member| !departed.contains(&member.node_id));
        let removed = self.state.members.len() != before;
        if removed {
            self.rebuild_map();
        }
        removed
    }

    /// The shards a plan considers, with their load. The shards of a member silent for
    /// more than [`TARGET_SILENCE_MS_MAX`] count as draining, so nothing is planned onto
    /// them; the orchestrator drops the moves off them, since a silent node's data
    /// cannot be copied.
    pub fn plan_shards(&self, now_ms: u64) -> Vec<PlanShard> {
        let mut shards = Vec::new();
        for member in &self.state.members {
            let alive = self.is_responsive(member.node_id, now_ms);
            for shard_id in 0..member.shard_addresses.len() {
                let (shard, load) = self.shard_load(member.node_id, shard_id);
                shards.push(PlanShard {
                    shard,
                    draining: member.draining || !alive,
                    operations_per_second: load.operations_per_second as f64,
                    memory_bytes: load.memory_used_bytes,
                });
            }
        }
        shards
    }

    /// The current shard address of `shard`, if its node is a member.
    pub fn shard_address(&self, shard: ShardRef) -> Option<&str> {
        self.member(shard.node_id)?
            .shard_addresses
            .get(shard.shard_id as usize)
            .map(String::as_str)
    }

    /// Commits a migration: `slots` now belong to `to`. Returns the new map.
    pub fn commit_move(&mut self, slots: &[u32], to: ShardRef) -> &SlotMap {
        for &slot in slots {
            if let Some(owner) = self.owners.get_mut(slot as usize) {
                *owner = to;
            }
            // The new owner's node may have backed the slot up: it holds the slot now.
            if let Some(backups) = self.backups.get_mut(slot as usize) {
                backups.retain(|backup| backup.node_id != to.node_id);
            }
        }
        self.state.migrations_completed += 1;
        self.state.slots_moved_total += slots.len() as u64;
        self.rebuild_map();
        &self.state.map
    }

    /// Whether the map names `shard` a backup of `slot`.
    pub fn backs_up(&self, shard: ShardRef, slot: u32) -> bool {
        self.backups
            .get(slot as usize)
            .is_some_and(|backups| backups.contains(&shard))
    }

    /// Commits a hand-over: `to`, an in-sync backup of each of `slots`, leads them, and
    /// `from`, whose frozen copy is their final state, backs them up in its place (so
    /// the slots keep their count of copies). The step commits only after checking
    /// that the map still names `to` a backup of every slot: one that is not would
    /// lead a slot it may hold no copy of.
    pub fn commit_hand_over(&mut self, slots: &[u32], from: ShardRef, to: ShardRef) -> &SlotMap {
        for &slot in slots {
            let index = slot as usize;
            if let (Some(owner), Some(backups)) = (self.owners.get_mut(index), self.backups.get_mut(index)) {
                *owner = to;
                for backup in backups.iter_mut().filter(|backup| **backup == to) {
                    *backup = from;
                }
            }
        }
        self.state.migrations_completed += 1;
        self.state.slots_moved_total += slots.len() as u64;
        self.rebuild_map();
        &self.state.map
    }

    pub fn status(&self, now_ms: u64) -> ClusterStatus {
        let mut slots_per_shard: BTreeMap<ShardRef, u32> = BTreeMap::new();
        let backup_slots = self.backup_slots_per_shard();
        let mut lost_per_node: BTreeMap<u64, u32> = BTreeMap::new();
        for (slot, owner) in self.owners.iter().enumerate() {
            if self.lost.contains_key(&(slot as u32)) {
                *lost_per_node.entry(owner.node_id).or_default() += 1;
            } else {
                *slots_per_shard.entry(*owner).or_default() += 1;
            }
        }
        let nodes = self
            .state
            .members
            .iter()
            .map(|member| {
                let observed = self.observed.get(&member.node_id);
                NodeStatus {
                    node_id: member.node_id,
                    front_address: member.front_address.clone(),
                    alive: self.is_alive(member.node_id, now_ms),
                    draining: member.draining,
                    map_epoch: observed.map_or(0, |observed| observed.map_epoch),
                    shards: member
                        .shard_addresses
                        .iter()
                        .enumerate()
                        .map(|(shard_id, address)| {
                            let (shard, load) = self.shard_load(member.node_id, shard_id);
                            ShardStatus {
                                shard_id: shard_id as u16,
                                address: address.clone(),
                                slots: slots_per_shard.get(&shard).copied().unwrap_or(0),
                                backup_slots: backup_slots.get(&shard).copied().unwrap_or(0),
                                keys: load.keys,
                                memory_used_bytes: load.memory_used_bytes,
                                operations_total: load.operations_total,
                                operations_per_second: load.operations_per_second,
                            }
                        })
                        .collect(),
                    incarnation: member.incarnation,
                    slots_lost: lost_per_node.get(&member.node_id).copied().unwrap_or(0),
                    zone: member.zone.clone(),
                }
            })
            .collect();
        ClusterStatus {
            map: self.state.map.clone(),
            nodes,
            migrations: Vec::new(),
            migrations_completed: self.state.migrations_completed,
            slots_moved_total: self.state.slots_moved_total,
            bytes_moved_total: 0,
            migration_milliseconds_total: 0,
            last_error: String::new(),
            replicas: self.replicas as u32,
            under_replicated_slots: self.under_replicated(),
            failovers_total: self.state.failovers_total,
            slots_filling: self.slots_filling(),
        }
    }

    /// A member's shard and its last reported load (zero before its first heartbeat).
    fn shard_load(&self, node_id: u64, shard_id: usize) -> (ShardRef, ShardObserved) {
        let load = self
            .observed
            .get(&node_id)
            .and_then(|observed| observed.shards.get(shard_id))
            .copied()
            .unwrap_or_default();
        let shard = ShardRef {
            node_id,
            shard_id: shard_id as u16,
        };
        (shard, load)
    }

    fn owners_from_map(&self) -> Vec<ShardRef> {
        if self.state.map.shards.is_empty() {
            return Vec::new();
        }
        let shards = &self.state.map.shards;
        self.state
            .map
            .owner_table()
            .into_iter()
            .map(|index| match shards.get(index as usize) {
                Some(shard) => ShardRef {
                    node_id: shard.node_id,
                    shard_id: shard.shard_id,
                },
                // A lost slot: `decode` fills in its last owner from the lost ranges.
                None => ShardRef {
                    node_id: 0,
                    shard_id: 0,
                },
            })
            .collect()
    }

    /// Rebuilds the map from members and owners, one epoch later.
    fn rebuild_map(&mut self) {
        let mut shards = Vec::new();
        let mut index_of = BTreeMap::new();
        for member in &self.state.members {
            for (shard_id, address) in member.shard_addresses.iter().enumerate() {
                index_of.insert(
                    ShardRef {
                        node_id: member.node_id,
                        shard_id: shard_id as u16,
                    },
                    shards.len() as u32,
                );
                shards.push(ShardAddress {
                    node_id: member.node_id,
                    shard_id: shard_id as u16,
                    address: address.clone(),
                    incarnation: member.incarnation,
                });
            }
        }
        self.drop_invalid_backups();
        let mut ranges: Vec<SlotRange> = Vec::new();
        for (slot, owner) in self.owners.iter().enumerate() {
            // Every owner is a member's shard: members are only forgotten once they own
            // nothing, and a rejoin cannot shrink a member below the shards it owns.
            let shard_index = if self.lost.contains_key(&(slot as u32)) {
                LOST_SHARD_INDEX
            } else {
                index_of.get(owner).copied().unwrap_or(0)
            };
            match ranges.last_mut() {
                Some(range) if range.shard_index == shard_index => range.end = slot as u32,
                _ => ranges.push(SlotRange {
                    start: slot as u32,
                    end: slot as u32,
                    shard_index,
                }),
            }
        }
        // Every backup names a member's shard: `drop_invalid_backups` just made sure.
        let backups = crate::replicas::backup_ranges_of(&self.backups, &shards).unwrap_or_default();
        self.state.map = SlotMap {
            epoch: self.state.map.epoch.max(engram_proto::EMBEDDED_MAP_EPOCH) + 1,
            shards,
            ranges,
            version_floor: self.state.map.version_floor,
            backups,
        };
        self.state.lost = self.lost_ranges();
    }

    /// `lost` as ranges of equal last owner and incarnation, for the state file.
    fn lost_ranges(&self) -> Vec<LostRange> {
        let mut ranges: Vec<LostRange> = Vec::new();
        for (&slot, &incarnation) in &self.lost {
            let owner = self.owners[slot as usize];
            match ranges.last_mut() {
                Some(range)
                    if range.end + 1 == slot
                        && range.incarnation == incarnation
                        && range.node_id == owner.node_id
                        && range.shard_id == owner.shard_id =>
                {
                    range.end = slot
                }
                _ => ranges.push(LostRange {
                    start: slot,
                    end: slot,
                    node_id: owner.node_id,
                    shard_id: owner.shard_id,
                    incarnation,
                }),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{apply_moves, plan_balance};

    fn join_request(host: u8, shards: u16) -> JoinRequest {
        JoinRequest {
            front_address: format!("127.0.0.{host}:7400"),
            shard_addresses: (0..shards)
                .map(|shard| format!("127.0.0.{host}:{}", 7401 + shard))
                .collect(),
            memory_limit_bytes: 0,
            boot_id: u64::from(host),
            zone: String::new(),
            takes_credentials: false,
        }
    }

    #[test]
    fn a_zone_is_kept_shown_persisted_and_bounded() {
        let mut membership = Membership::new();
        let zoned = |host, zone: &str| JoinRequest {
            zone: zone.into(),
            ..join_request(host, 1)
        };
        let first = membership.join(&zoned(2, "rack-a"), 0).unwrap().node_id;
        membership.join(&join_request(3, 1), 0).unwrap();
        let zones = |membership: &Membership| -> Vec<String> {
            membership.status(0).nodes.into_iter().map(|node| node.zone).collect()
        };
        assert_eq!(zones(&membership), ["rack-a", ""]);
        let restored = Membership::decode(&membership.encode().unwrap()).unwrap();
        assert_eq!(restored.member(first).unwrap().zone, "rack-a");
        // A restart may move the node: its latest join's zone is the one that counts.
        membership.join(&restarted(zoned(2, "rack-b")), 10).unwrap();
        assert_eq!(zones(&membership), ["rack-b", ""]);
        let too_long = "z".repeat(ZONE_BYTES_MAX + 1);
        assert_eq!(
            membership.join(&zoned(4, &too_long), 10),
            Err(MembershipError::ZoneTooLong(ZONE_BYTES_MAX + 1))
        );
        assert_eq!(membership.members().len(), 2);
    }

    #[test]
    fn first_member_owns_every_slot_and_later_ones_start_empty() {
        let mut membership = Membership::new();
        let first = membership.join(&join_request(2, 2), 0).unwrap().node_id;
        let second = membership.join(&join_request(3, 1), 0).unwrap().node_id;
        assert_ne!(first, second);
        let map = membership.map();
        assert_eq!(map.validate(), Ok(()));
        assert!(map.epoch > engram_proto::EMBEDDED_MAP_EPOCH);
        assert_eq!(map.shards.len(), 3);
        assert!(membership.owners().iter().all(|owner| owner.node_id == first));
        let status = membership.status(0);
        assert_eq!(
            status.nodes[0].shards[0].slots + status.nodes[0].shards[1].slots,
            SLOT_COUNT
        );
        assert_eq!(status.nodes[1].shards[0].slots, 0);
    }

    #[test]
    fn a_restarted_node_keeps_its_id_and_epochs_only_grow() {
        let mut membership = Membership::new();
        let id = membership.join(&join_request(2, 1), 0).unwrap().node_id;
        let epoch = membership.epoch();
        assert_eq!(membership.join(&join_request(2, 1), 10).unwrap().node_id, id);
        assert!(membership.epoch() > epoch);
        assert_eq!(membership.members().len(), 1);
        assert!(matches!(
            membership.join(&join_request(2, 0), 10),
            Err(MembershipError::ShardCount(0))
        ));
    }

    #[test]
    fn state_survives_encode_and_decode_and_corruption_is_refused() {
        let mut membership = Membership::new();
        let (first, _, _) = two_members_sharing_the_slots(&mut membership);
        let bytes = membership.encode().unwrap();
        let restored = Membership::decode(&bytes).unwrap();
        assert_eq!(restored.map(), membership.map());
        assert_eq!(restored.owners(), membership.owners());
        assert_eq!(restored.members(), membership.members());
        assert!(restored.owners().iter().any(|owner| owner.node_id == first));
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(Membership::decode(&corrupt), Err(MembershipError::Corrupt(_))));
        assert!(Membership::decode(&[1, 2]).is_err());
    }

    #[test]
    fn drained_dead_members_are_forgotten_and_live_ones_are_kept() {
        let mut membership = Membership::new();
        let first = membership.join(&join_request(2, 1), 0).unwrap().node_id;
        let second = membership.join(&join_request(3, 1), 0).unwrap().node_id;
        assert_eq!(membership.drain(99), Err(MembershipError::UnknownNode(99)));
        membership.drain(first).unwrap();
        assert_eq!(membership.drain(second), Err(MembershipError::LastNode(second)));
        let moves = plan_balance(&membership.plan_shards(0), membership.owners()).unwrap();
        assert_eq!(moves.len(), SLOT_COUNT as usize);
        let mut owners = membership.owners().to_vec();
        apply_moves(&mut owners, &moves);
        let slots: Vec<u32> = moves.iter().map(|planned| planned.slot).collect();
        membership.commit_move(
            &slots,
            ShardRef {
                node_id: second,
                shard_id: 0,
            },
        );
        assert_eq!(membership.owners(), owners.as_slice());
        // Still heartbeating: kept.
        assert!(!membership.forget_departed(LIVENESS_TIMEOUT_MS));
        let heartbeat = Heartbeat {
            node_id: second,
            map_epoch: membership.epoch(),
            shards: Vec::new(),
            migrations: Vec::new(),
            incarnation: membership.member(second).unwrap().incarnation,
            in_sync: Vec::new(),
        };
        membership.heartbeat(&heartbeat, 3 * LIVENESS_TIMEOUT_MS).unwrap();
        assert!(membership.forget_departed(3 * LIVENESS_TIMEOUT_MS));
        assert_eq!(membership.members().len(), 1);
        assert_eq!(membership.map().validate(), Ok(()));
    }

    #[test]
    fn the_epoch_moves_past_a_newer_one_a_node_reports_and_only_then() {
        let mut membership = Membership::new();
        membership.join(&join_request(2, 1), 0).unwrap();
        let epoch = membership.epoch();
        membership.raise_epoch_past(epoch);
        assert_eq!(membership.epoch(), epoch, "an equal epoch is not newer");
        membership.raise_epoch_past(epoch + 10);
        assert_eq!(membership.epoch(), epoch + 11);
        assert_eq!(membership.map().validate(), Ok(()));
    }

    #[test]
    fn heartbeats_give_operations_per_second() {
        let mut membership = Membership::new();
        let node_id = membership.join(&join_request(2, 1), 0).unwrap().node_id;
        let beat = |operations_total| Heartbeat {
            node_id,
            map_epoch: 0,
            shards: vec![engram_proto::ShardLoad {
                keys: 1,
                memory_used_bytes: 100,
                operations_total,
            }],
            migrations: Vec::new(),
            incarnation: 1,
            in_sync: Vec::new(),
        };
        membership.heartbeat(&beat(1_000), 1_000).unwrap();
        membership.heartbeat(&beat(3_000), 1_500).unwrap();
        let status = membership.status(1_500);
        assert_eq!(status.nodes[0].shards[0].operations_per_second, 4_000);
        assert!(membership.is_alive(node_id, 1_500));
        assert!(!membership.is_alive(node_id, 1_500 + LIVENESS_TIMEOUT_MS + 1));
        assert!(matches!(
            membership.heartbeat(
                &Heartbeat {
                    node_id: 77,
                    map_epoch: 0,
                    shards: vec![],
                    migrations: vec![],
                    incarnation: 1,
                    in_sync: Vec::new(),
                },
                0
            ),
            Err(MembershipError::UnknownNode(77))
        ));
    }

    /// Two one-shard members, the second given its fair share of the slots: their node
    /// ids and the slots it got.
    fn two_members_sharing_the_slots(membership: &mut Membership) -> (u64, u64, Vec<u32>) {
        let (first, second, moved) = two_joins_sharing_the_slots(membership);
        (first.node_id, second.node_id, moved)
    }

    /// [`two_members_sharing_the_slots`], with the joins as answered.
    fn two_joins_sharing_the_slots(membership: &mut Membership) -> (Joined, Joined, Vec<u32>) {
        let first = membership.join(&join_request(2, 1), 0).unwrap();
        let second = membership.join(&join_request(3, 1), 0).unwrap();
        let moves = plan_balance(&membership.plan_shards(0), membership.owners()).unwrap();
        let moved: Vec<u32> = moves.iter().map(|planned| planned.slot).collect();
        let to = ShardRef {
            node_id: second.node_id,
            shard_id: 0,
        };
        membership.commit_move(&moved, to);
        (first, second, moved)
    }

    fn heartbeat_of(membership: &Membership, node_id: u64) -> Heartbeat {
        Heartbeat {
            node_id,
            map_epoch: membership.epoch(),
            shards: Vec::new(),
            migrations: Vec::new(),
            incarnation: membership.member(node_id).unwrap().incarnation,
            in_sync: Vec::new(),
        }
    }

    fn restarted(mut request: JoinRequest) -> JoinRequest {
        request.boot_id += 1000;
        request
    }

    #[test]
    fn a_restart_loses_the_slots_of_the_previous_process_and_a_retried_join_does_not() {
        let mut membership = Membership::new();
        let first = membership.join(&join_request(2, 2), 0).unwrap();
        assert!(first.failure.lost.is_empty());
        let retried = membership.join(&join_request(2, 2), 5).unwrap();
        assert_eq!(retried, first, "the same boot id is the same process");
        assert!(membership.map().lost_slots().is_empty());

        let second = membership.join(&restarted(join_request(2, 2)), 10).unwrap();
        assert_eq!(second.node_id, first.node_id);
        assert!(second.incarnation > first.incarnation);
        assert_eq!(second.failure.lost.len(), SLOT_COUNT as usize);
        assert_eq!(membership.map().lost_slots(), second.failure.lost);
        assert_eq!(membership.map().validate(), Ok(()));
        assert_eq!(membership.status(10).nodes[0].slots_lost, SLOT_COUNT);
        assert_eq!(membership.status(10).nodes[0].incarnation, second.incarnation);

        let restored = Membership::decode(&membership.encode().unwrap()).unwrap();
        assert_eq!(restored.map(), membership.map());
        assert_eq!(restored.owners(), membership.owners());
        assert_eq!(restored.lost, membership.lost);
        assert_eq!(restored.state.next_incarnation, membership.state.next_incarnation);
    }

    #[test]
    fn a_silent_member_is_declared_dead_and_the_same_process_gets_its_slots_back() {
        let mut membership = Membership::new();
        membership.set_liveness_timeout_ms(3_000);
        let (first, second, slots) = two_members_sharing_the_slots(&mut membership);

        membership.heartbeat(&heartbeat_of(&membership, second), 2_500).unwrap();
        assert!(
            membership.declare_dead(3_000).is_empty(),
            "silent for exactly the timeout: not yet"
        );
        assert!(!membership.has_dead_to_declare(3_000));
        assert!(membership.has_dead_to_declare(3_001));
        let dead = membership.declare_dead(3_001);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, first);
        assert_eq!(dead[0].1.lost.len(), SLOT_COUNT as usize - slots.len());
        assert!(!membership.has_dead_to_declare(3_002));
        assert!(membership.declare_dead(3_002).is_empty(), "slots are lost once");
        let lost_map = membership.map().clone();
        assert_eq!(lost_map.lost_slots(), dead[0].1.lost);

        // The same process beats again: nobody served its slots, it still holds them.
        let beat = heartbeat_of(&membership, first);
        membership.heartbeat(&beat, 4_000).unwrap();
        assert!(membership.restorable(first, beat.incarnation));
        assert_eq!(membership.restore(first, beat.incarnation), dead[0].1.lost);
        assert!(membership.map().lost_slots().is_empty());
        assert!(membership.epoch() > lost_map.epoch);
        assert!(!membership.restorable(first, beat.incarnation));
    }

    #[test]
    fn a_replaced_process_cannot_beat_or_get_slots_back() {
        let mut membership = Membership::new();
        let old = membership.join(&join_request(2, 1), 0).unwrap();
        let stale_beat = heartbeat_of(&membership, old.node_id);
        let new = membership.join(&restarted(join_request(2, 1)), 10).unwrap();
        assert!(matches!(
            membership.heartbeat(&stale_beat, 20),
            Err(MembershipError::Replaced { .. })
        ));
        assert!(!membership.restorable(old.node_id, new.incarnation));
        assert!(membership.restorable(old.node_id, old.incarnation));
        assert_eq!(membership.map().lost_slots().len(), SLOT_COUNT as usize);
    }

    #[test]
    fn reclaim_hands_lost_slots_to_live_shards_above_every_earlier_incarnation() {
        let mut membership = Membership::new();
        let (first, second, moved) = two_joins_sharing_the_slots(&mut membership);
        let again = membership.join(&restarted(join_request(3, 1)), 100).unwrap();
        assert_eq!(again.failure.lost, moved);

        let not_lost = membership
            .owners()
            .iter()
            .position(|owner| owner.node_id == first.node_id)
            .unwrap() as u32;
        let reclaim = |node_id, slots: Vec<u32>| ReclaimRequest { node_id, slots };
        assert_eq!(
            membership.reclaim(&reclaim(0, vec![not_lost]), 100),
            Err(MembershipError::NotLost(not_lost))
        );
        assert_eq!(
            membership.reclaim(&reclaim(0, vec![SLOT_COUNT]), 100),
            Err(MembershipError::SlotOutOfRange { slot: SLOT_COUNT })
        );
        assert_eq!(
            membership.reclaim(&reclaim(0, vec![]), 100),
            Err(MembershipError::NothingToReclaim)
        );
        assert_eq!(
            membership.reclaim(&reclaim(77, vec![]), 100),
            Err(MembershipError::UnknownNode(77))
        );

        let epoch = membership.epoch();
        let reclaimed = membership
            .reclaim(&reclaim(second.node_id, vec![moved[0]]), 100)
            .unwrap();
        assert_eq!(reclaimed, moved);
        assert!(membership.map().lost_slots().is_empty());
        assert!(membership.epoch() > epoch);
        // The restarted node is live, so it serves its slots again, empty.
        assert!(moved
            .iter()
            .all(|&slot| membership.owners()[slot as usize].node_id == second.node_id));
        let highest = [first.incarnation, second.incarnation, again.incarnation]
            .into_iter()
            .max()
            .unwrap();
        assert!(membership.map().version_floor > incarnation_version_floor(highest));
        // Every later join draws above the floor too.
        let third = membership.join(&join_request(4, 1), 100).unwrap();
        assert!(incarnation_version_floor(third.incarnation) > membership.map().version_floor);
    }

    #[test]
    fn reclaimed_slots_of_a_dead_node_go_to_the_least_loaded_live_shard() {
        let mut membership = Membership::new();
        membership.set_liveness_timeout_ms(1_000);
        let first = membership.join(&join_request(2, 1), 0).unwrap().node_id;
        let second = membership.join(&join_request(3, 2), 0).unwrap().node_id;
        let now = 5_000;
        membership.heartbeat(&heartbeat_of(&membership, second), now).unwrap();
        let dead = membership.declare_dead(now);
        assert_eq!(dead[0].0, first);
        assert!(!membership
            .movable(plan_balance(&membership.plan_shards(now), membership.owners()).unwrap())
            .iter()
            .any(|planned| planned.from.node_id == first));
        let reclaimed = membership
            .reclaim(
                &ReclaimRequest {
                    node_id: first,
                    slots: vec![],
                },
                now,
            )
            .unwrap();
        assert_eq!(reclaimed.len(), SLOT_COUNT as usize);
        assert!(membership.owners().iter().all(|owner| owner.node_id == second));
    }

    #[test]
    fn a_member_silent_for_a_few_heartbeats_receives_nothing() {
        let mut membership = Membership::new();
        let first = membership.join(&join_request(2, 1), 0).unwrap().node_id;
        let second = membership.join(&join_request(3, 1), 0).unwrap().node_id;
        let now = TARGET_SILENCE_MS_MAX + 1;
        membership.heartbeat(&heartbeat_of(&membership, first), now).unwrap();
        assert!(membership.is_alive(second, now), "not declared dead yet");
        assert!(!membership.is_responsive(second, now));
        let moves = plan_balance(&membership.plan_shards(now), membership.owners()).unwrap();
        assert!(moves.is_empty(), "the only other member is silent: {moves:?}");
        membership.heartbeat(&heartbeat_of(&membership, second), now).unwrap();
        let moves = plan_balance(&membership.plan_shards(now), membership.owners()).unwrap();
        assert!(moves.iter().all(|planned| planned.to.node_id == second) && !moves.is_empty());
    }
}
