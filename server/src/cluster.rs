//! The node's part in a cluster: the slot map every shard routes with. The links a node
//! opens itself go through `engram_proto::link`: to the control plane blocking, from a
//! plain thread (`heartbeat.rs`, the join in `node.rs`); to another node's shard from a
//! shard, through the shards' adapter (`link.rs`): a migration target, or the owner of a
//! front-port request (`proxy.rs`).
//!
//! The map lives once per node ([`NodeMap`]); each shard keeps a [`Routing`] built from
//! it and rebuilds it when the node's epoch moves, which costs one relaxed load per
//! request while nothing changes.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, RwLock};

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{FillOrder, SlotMap, LOST_SHARD_INDEX};

use crate::replication::{PrimaryView, ShardProcess};

/// The node's current map. Written by whoever installs a newer one (the heartbeat
/// thread, or a shard handling `InstallMap`); read by every shard.
pub struct NodeMap {
    epoch: AtomicU64,
    map: RwLock<Arc<SlotMap>>,
    /// Until when (ms since the node started) shards may serve without the map being
    /// checked with the control plane again; `u64::MAX` for a node that runs alone.
    checked_until_ms: AtomicU64,
    /// The fills the control plane ordered this node's primary shards to run, from its
    /// last heartbeat answer; `fills_generation` moves when they change.
    fills: RwLock<Arc<Vec<FillOrder>>>,
    fills_generation: AtomicU64,
}

impl NodeMap {
    pub fn new(map: SlotMap) -> NodeMap {
        NodeMap {
            epoch: AtomicU64::new(map.epoch),
            map: RwLock::new(Arc::new(map)),
            checked_until_ms: AtomicU64::new(u64::MAX),
            fills: RwLock::new(Arc::new(Vec::new())),
            fills_generation: AtomicU64::new(0),
        }
    }

    /// Replaces the fill orders when they differ from the current ones.
    pub fn set_fills(&self, fills: Vec<FillOrder>) {
        let mut current = self.fills.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if **current != fills {
            *current = Arc::new(fills);
            self.fills_generation.fetch_add(1, Release);
        }
    }

    pub fn fills(&self) -> Arc<Vec<FillOrder>> {
        self.fills
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Moves whenever the fill orders change, so shards notice with one load.
    pub fn fills_generation(&self) -> u64 {
        self.fills_generation.load(Acquire)
    }

    /// Lets shards serve until `until_ms` on the map they hold. Called after every
    /// exchange with the control plane has ended, so that a map it had made newer is
    /// installed before the shards hear of the check (Release, paired with
    /// [`NodeMap::checked_until_ms`]'s Acquire).
    pub fn mark_checked(&self, until_ms: u64) {
        self.checked_until_ms.store(until_ms, Release);
    }

    pub fn checked_until_ms(&self) -> u64 {
        self.checked_until_ms.load(Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }

    pub fn current(&self) -> Arc<SlotMap> {
        // Only ever replaced whole, so a poisoned lock still holds a valid map.
        self.map.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Installs `map` if it is valid and newer than the current one; returns whether it did.
    pub fn install(&self, map: SlotMap) -> Result<bool, String> {
        map.validate()?;
        let mut current = self.map.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.epoch <= current.epoch {
            return Ok(false);
        }
        log_installed(&map);
        self.epoch.store(map.epoch, Relaxed);
        *current = Arc::new(map);
        Ok(true)
    }
}

/// Says which map a node routes with from now on: its epoch and digest, one line per map,
/// so the maps the nodes of a cluster installed can be compared (one map per epoch).
pub fn log_installed(map: &SlotMap) {
    tracing::info!(
        epoch = map.epoch,
        digest = %format_args!("{:016x}", map.digest()),
        "installed map"
    );
}

/// Who owns a slot, from one shard's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A shard of this node.
    Local(u16),
    /// Another node's shard: its index in `map.shards`.
    Remote(u32),
    /// Nobody: every copy of the slot is gone, until an operator reclaims it.
    Lost,
}

/// A map turned into a slot-indexed ownership table for this node.
pub struct Routing {
    pub map: Arc<SlotMap>,
    owner_index: Vec<u32>,
    /// Per shard of the map: its local shard id when it is one of ours.
    local_ids: Vec<Option<u16>>,
    /// With [`Routing::for_shard`], that shard's id and the slots it owns: 2 KiB, which
    /// stays in the cache, where `owner_index` (64 KiB, read at a random slot per
    /// request) cost a cache miss per request under load.
    own_slots: Option<(u16, SlotSet)>,
}

/// One bit per slot.
struct SlotSet(Box<[u64]>);

impl SlotSet {
    fn empty() -> SlotSet {
        SlotSet(vec![0; (SLOT_COUNT as usize).div_ceil(64)].into_boxed_slice())
    }

    fn insert(&mut self, slot: u32) {
        self.0[slot as usize / 64] |= 1u64 << (slot % 64);
    }

    fn contains(&self, slot: u32) -> bool {
        self.0
            .get(slot as usize / 64)
            .is_some_and(|word| word & (1u64 << (slot % 64)) != 0)
    }
}

impl Routing {
    pub fn new(map: Arc<SlotMap>, node_id: u64) -> Routing {
        let owner_index = map.owner_table();
        let local_ids = map
            .shards
            .iter()
            .map(|shard| (shard.node_id == node_id).then_some(shard.shard_id))
            .collect();
        Routing {
            map,
            owner_index,
            local_ids,
            own_slots: None,
        }
    }

    /// The routing local shard `shard_id` serves with: [`Routing::owner`] finds that
    /// shard's own slots without the table.
    pub fn for_shard(map: Arc<SlotMap>, node_id: u64, shard_id: u16) -> Routing {
        let mut routing = Routing::new(map, node_id);
        let mut owned = SlotSet::empty();
        for slot in 0..SLOT_COUNT {
            if routing.owner(slot) == Owner::Local(shard_id) {
                owned.insert(slot);
            }
        }
        routing.own_slots = Some((shard_id, owned));
        routing
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// Slots the map gives to local shard `shard_id`.
    pub fn slots_of(&self, shard_id: u16) -> usize {
        self.owner_index
            .iter()
            .filter(|&&index| self.local_ids.get(index as usize).copied().flatten() == Some(shard_id))
            .count()
    }

    pub fn owner(&self, slot: u32) -> Owner {
        if let Some((own, owned)) = &self.own_slots {
            if owned.contains(slot) {
                return Owner::Local(*own);
            }
        }
        let index = self.owner_index.get(slot as usize).copied().unwrap_or(0);
        if index == LOST_SHARD_INDEX {
            return Owner::Lost;
        }
        match self.local_ids.get(index as usize).copied().flatten() {
            Some(local) => Owner::Local(local),
            None => Owner::Remote(index),
        }
    }

    /// The process of the shard at `index` in the map, as replication names it.
    pub fn shard_process(&self, index: u32) -> Option<ShardProcess> {
        let shard = self.map.shards.get(index as usize)?;
        Some(ShardProcess {
            node_id: shard.node_id,
            shard_id: shard.shard_id,
            incarnation: shard.incarnation,
        })
    }

    /// The address of the shard at `index` in the map, for error messages.
    pub fn address(&self, index: u32) -> &str {
        self.map
            .shards
            .get(index as usize)
            .map_or("unknown", |shard| shard.address.as_str())
    }
}

/// A backup checks a batch's sender against the primary its own map names.
impl PrimaryView for Routing {
    fn epoch(&self) -> u64 {
        self.map.epoch
    }

    fn primary_of(&self, slot: u32) -> Option<ShardProcess> {
        let index = self.owner_index.get(slot as usize).copied()?;
        if index == LOST_SHARD_INDEX {
            return None;
        }
        self.shard_process(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::{ShardAddress, SlotRange};

    /// Node 1 has shards 0 and 1, node 2 has shard 0; slots split in thirds.
    fn map(epoch: u64) -> SlotMap {
        let shard = |node_id, shard_id| ShardAddress {
            node_id,
            shard_id,
            address: format!("10.0.0.{node_id}:{}", 7401 + shard_id),
            incarnation: 0,
        };
        SlotMap {
            epoch,
            shards: vec![shard(1, 0), shard(1, 1), shard(2, 0)],
            ranges: vec![
                SlotRange {
                    start: 0,
                    end: 5_000,
                    shard_index: 0,
                },
                SlotRange {
                    start: 5_001,
                    end: 10_000,
                    shard_index: 1,
                },
                SlotRange {
                    start: 10_001,
                    end: engram_proto::limits::SLOT_COUNT - 1,
                    shard_index: 2,
                },
            ],
            version_floor: 0,
            backups: Vec::new(),
        }
    }

    #[test]
    fn routing_tells_local_shards_from_remote_ones() {
        let routing = Routing::new(Arc::new(map(3)), 1);
        assert_eq!(routing.owner(0), Owner::Local(0));
        assert_eq!(routing.owner(5_001), Owner::Local(1));
        assert_eq!(routing.owner(10_001), Owner::Remote(2));
        assert_eq!(routing.address(2), "10.0.0.2:7401");
        assert_eq!(routing.slots_of(0), 5_001);
        assert_eq!(routing.slots_of(1), 5_000);
        let other_node = Routing::new(Arc::new(map(3)), 2);
        assert_eq!(other_node.owner(0), Owner::Remote(0));
        assert_eq!(other_node.owner(16_000), Owner::Local(0));
    }

    #[test]
    fn a_shard_sees_the_owners_the_table_gives() {
        let mut with_lost = map(3);
        with_lost.ranges[1].shard_index = LOST_SHARD_INDEX;
        for (map, node_id) in [(map(3), 1), (map(3), 2), (map(3), 9), (with_lost, 1)] {
            let map = Arc::new(map);
            let table = Routing::new(map.clone(), node_id);
            for shard_id in 0..3 {
                let routing = Routing::for_shard(map.clone(), node_id, shard_id);
                for slot in 0..SLOT_COUNT + 2 {
                    assert_eq!(
                        routing.owner(slot),
                        table.owner(slot),
                        "node {node_id}, slot {slot}, the routing of shard {shard_id}"
                    );
                }
            }
        }
        // The set holds exactly the shard's own slots.
        let routing = Routing::for_shard(Arc::new(map(3)), 1, 1);
        let (_, owned) = routing.own_slots.as_ref().expect("built for a shard");
        assert!(!owned.contains(5_000) && owned.contains(5_001) && owned.contains(10_000));
        assert!(!owned.contains(10_001) && !owned.contains(SLOT_COUNT));
        assert_eq!((0..SLOT_COUNT).filter(|&slot| owned.contains(slot)).count(), 5_000);
    }

    #[test]
    fn a_node_map_only_moves_forward_and_refuses_invalid_maps() {
        let node_map = NodeMap::new(map(3));
        assert_eq!(node_map.install(map(2)), Ok(false));
        assert_eq!(node_map.install(map(3)), Ok(false));
        assert_eq!(node_map.epoch(), 3);
        let mut broken = map(9);
        broken.ranges.pop();
        assert!(node_map.install(broken).is_err());
        assert_eq!(node_map.install(map(4)), Ok(true));
        assert_eq!((node_map.epoch(), node_map.current().epoch), (4, 4));
    }
}
