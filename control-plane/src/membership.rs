//! The control plane's state as a sans-I/O state machine: members, the slot owners and
//! the map built from them, liveness and load from heartbeats. Time enters only as
//! `now_ms`, so tests drive it with a virtual clock; persistence is a byte encoding the
//! caller writes to disk.
//!
//! Invariants:
//! - `map()` always lists every member's shards, and every slot is owned by a shard of
//!   a member (the first member to join takes every slot).
//! - The map's epoch strictly increases with every change of ownership or membership,
//!   and is never lower than [`crate::EMBEDDED_MAP_EPOCH`] + 1, so a cluster map always
//!   supersedes the map a node served with alone.

use std::collections::BTreeMap;

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{ClusterStatus, Heartbeat, JoinRequest, NodeStatus, ShardAddress, ShardStatus, SlotMap, SlotRange};
use rkyv::{Archive, Deserialize, Serialize};

use crate::planner::{PlanShard, ShardRef};

/// A member silent for longer than this is reported dead and never chosen as a target.
pub const LIVENESS_TIMEOUT_MS: u64 = 10_000;
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
    #[error(
        "node {node_id} rejoined with {offered} shards but owns slots on {known}; restart it with --cores {known}"
    )]
    ShardCountChanged { node_id: u64, known: usize, offered: usize },
    #[error("node {0} is not a member")]
    UnknownNode(u64),
    #[error("draining node {0} would leave no node to own its slots")]
    LastNode(u64),
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
    /// Slot-indexed owner, kept in step with `state.map`.
    owners: Vec<ShardRef>,
    observed: BTreeMap<u64, Observed>,
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
                    epoch: crate::EMBEDDED_MAP_EPOCH,
                    shards: Vec::new(),
                    ranges: Vec::new(),
                },
                next_node_id: 1,
                next_migration_id: 1,
                migrations_completed: 0,
                slots_moved_total: 0,
            },
            owners: Vec::new(),
            observed: BTreeMap::new(),
        }
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
            observed: BTreeMap::new(),
        };
        membership.owners = membership.owners_from_map();
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
    /// takes every slot; later ones start empty until a rebalance gives them slots.
    pub fn join(&mut self, request: &JoinRequest, now_ms: u64) -> Result<u64, MembershipError> {
        let shard_count = request.shard_addresses.len();
        if shard_count == 0 || shard_count > MEMBER_SHARDS_MAX {
            return Err(MembershipError::ShardCount(shard_count));
        }
        let existing = self
            .state
            .members
            .iter()
            .position(|member| member.front_address == request.front_address);
        let node_id = match existing {
            Some(index) => {
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
                let member = &mut self.state.members[index];
                member.shard_addresses = request.shard_addresses.clone();
                member.memory_limit_bytes = request.memory_limit_bytes;
                node_id
            }
            None => {
                if self.state.members.len() >= MEMBERS_MAX {
                    return Err(MembershipError::TooManyMembers);
                }
                let node_id = self.state.next_node_id;
                self.state.next_node_id += 1;
                self.state.members.push(Member {
                    node_id,
                    front_address: request.front_address.clone(),
                    shard_addresses: request.shard_addresses.clone(),
                    memory_limit_bytes: request.memory_limit_bytes,
                    draining: false,
                });
                if self.owners.is_empty() {
                    self.owners = (0..SLOT_COUNT)
                        .map(|slot| ShardRef {
                            node_id,
                            shard_id: (u64::from(slot) * shard_count as u64 / u64::from(SLOT_COUNT)) as u16,
                        })
                        .collect();
                }
                node_id
            }
        };
        self.observed.entry(node_id).or_default().last_heartbeat_ms = Some(now_ms);
        self.rebuild_map();
        Ok(node_id)
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

    /// Records a heartbeat; returns the epoch the node should catch up to.
    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, now_ms: u64) -> Result<u64, MembershipError> {
        if self.member(heartbeat.node_id).is_none() {
            return Err(MembershipError::UnknownNode(heartbeat.node_id));
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

    pub fn is_alive(&self, node_id: u64, now_ms: u64) -> bool {
        self.observed
            .get(&node_id)
            .and_then(|observed| observed.last_heartbeat_ms)
            .is_some_and(|last| now_ms.saturating_sub(last) <= LIVENESS_TIMEOUT_MS)
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
        let owners = &self.owners;
        let observed = &self.observed;
        let before = self.state.members.len();
        self.state.members.retain(|member| {
            let alive = observed
                .get(&member.node_id)
                .and_then(|observed| observed.last_heartbeat_ms)
                .is_some_and(|last| now_ms.saturating_sub(last) <= LIVENESS_TIMEOUT_MS);
            let owns = owners.iter().any(|owner| owner.node_id == member.node_id);
            !(member.draining && !owns && !alive)
        });
        let removed = self.state.members.len() != before;
        if removed {
            self.rebuild_map();
        }
        removed
    }

    /// The shards a plan considers, with their load. A dead member's shards count as
    /// draining, so nothing is planned onto them; the orchestrator drops the moves off
    /// them, since a dead node's data cannot be copied.
    pub fn plan_shards(&self, now_ms: u64) -> Vec<PlanShard> {
        let mut shards = Vec::new();
        for member in &self.state.members {
            let alive = self.is_alive(member.node_id, now_ms);
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
        }
        self.state.migrations_completed += 1;
        self.state.slots_moved_total += slots.len() as u64;
        self.rebuild_map();
        &self.state.map
    }

    pub fn status(&self, now_ms: u64) -> ClusterStatus {
        let mut slots_per_shard: BTreeMap<ShardRef, u32> = BTreeMap::new();
        for owner in &self.owners {
            *slots_per_shard.entry(*owner).or_default() += 1;
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
                                keys: load.keys,
                                memory_used_bytes: load.memory_used_bytes,
                                operations_total: load.operations_total,
                                operations_per_second: load.operations_per_second,
                            }
                        })
                        .collect(),
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
            .map(|index| {
                let shard = &shards[index as usize];
                ShardRef {
                    node_id: shard.node_id,
                    shard_id: shard.shard_id,
                }
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
                });
            }
        }
        let mut ranges: Vec<SlotRange> = Vec::new();
        for (slot, owner) in self.owners.iter().enumerate() {
            // Every owner is a member's shard: members are only forgotten once they own
            // nothing, and a rejoin cannot shrink a member below the shards it owns.
            let shard_index = index_of.get(owner).copied().unwrap_or(0);
            match ranges.last_mut() {
                Some(range) if range.shard_index == shard_index => range.end = slot as u32,
                _ => ranges.push(SlotRange {
                    start: slot as u32,
                    end: slot as u32,
                    shard_index,
                }),
            }
        }
        self.state.map = SlotMap {
            epoch: self.state.map.epoch.max(crate::EMBEDDED_MAP_EPOCH) + 1,
            shards,
            ranges,
        };
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
        }
    }

    #[test]
    fn first_member_owns_every_slot_and_later_ones_start_empty() {
        let mut membership = Membership::new();
        let first = membership.join(&join_request(2, 2), 0).unwrap();
        let second = membership.join(&join_request(3, 1), 0).unwrap();
        assert_ne!(first, second);
        let map = membership.map();
        assert_eq!(map.validate(), Ok(()));
        assert!(map.epoch > crate::EMBEDDED_MAP_EPOCH);
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
        let id = membership.join(&join_request(2, 1), 0).unwrap();
        let epoch = membership.epoch();
        assert_eq!(membership.join(&join_request(2, 1), 10).unwrap(), id);
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
        let first = membership.join(&join_request(2, 1), 0).unwrap();
        let second = membership.join(&join_request(3, 1), 0).unwrap();
        let moves = plan_balance(&membership.plan_shards(0), membership.owners()).unwrap();
        let slots: Vec<u32> = moves.iter().map(|planned| planned.slot).collect();
        membership.commit_move(
            &slots,
            ShardRef {
                node_id: second,
                shard_id: 0,
            },
        );
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
        let first = membership.join(&join_request(2, 1), 0).unwrap();
        let second = membership.join(&join_request(3, 1), 0).unwrap();
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
        let node_id = membership.join(&join_request(2, 1), 0).unwrap();
        let beat = |operations_total| Heartbeat {
            node_id,
            map_epoch: 0,
            shards: vec![engram_proto::ShardLoad {
                keys: 1,
                memory_used_bytes: 100,
                operations_total,
            }],
            migrations: Vec::new(),
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
                },
                0
            ),
            Err(MembershipError::UnknownNode(77))
        ));
    }
}
