//! Replica groups in the membership: the backups of each slot, failover when a node
//! dies, and the fills that restore the replica count.
//!
//! A backup enters the map only once its primary reports it in sync (it holds every
//! acknowledged write of the slot, and every answer since waits for it): the map never
//! names a copy that could not take over. Until then the control plane only *orders*
//! the fill, in its heartbeat answers to the primary's node; orders are not persisted,
//! since they are recomputed from the map every housekeeping round.

use std::collections::{BTreeMap, BTreeSet};

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{slot_ranges, FillOrder, Heartbeat, ShardProcessRef};

use super::Membership;
use crate::planner::ShardRef;
use crate::replicas::{self, plan_backups, ReplicaError, ReplicaShard};

/// The fills ordered now, and the placement they work towards.
#[derive(Clone, Debug, Default)]
pub(super) struct Fills {
    /// (primary, new backup) → the slots to copy, in order.
    orders: BTreeMap<(ShardRef, ShardRef), Vec<u32>>,
    /// Per slot, the backups the placement wants, in promotion order.
    desired: Vec<Vec<ShardRef>>,
}

/// What the death of one process did to its slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFailure {
    /// Slots whose backup now owns them.
    pub promoted: Vec<u32>,
    /// Slots it owned with no live copy left.
    pub lost: Vec<u32>,
    /// Slots it backed up: each now has one copy fewer until a fill restores it.
    pub backups_dropped: usize,
}

impl NodeFailure {
    pub fn is_empty(&self) -> bool {
        self.promoted.is_empty() && self.lost.is_empty() && self.backups_dropped == 0
    }
}

impl Membership {
    /// Sets how many backups each slot gets (`engram-control --replicas`).
    pub fn set_replicas(&mut self, replicas: usize) -> Result<(), ReplicaError> {
        if replicas > replicas::REPLICAS_MAX {
            return Err(ReplicaError::TooManyReplicas { replicas });
        }
        self.replicas = replicas;
        Ok(())
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Per slot, its backups in the map, in promotion order.
    pub fn backups(&self) -> &[Vec<ShardRef>] {
        &self.backups
    }

    /// Per slot, its owner; `None`: lost.
    fn primaries(&self) -> Vec<Option<ShardRef>> {
        self.owners
            .iter()
            .enumerate()
            .map(|(slot, owner)| (!self.lost.contains_key(&(slot as u32))).then_some(*owner))
            .collect()
    }

    /// The process `node_id` ran as `incarnation` is gone: each slot it owned goes to its
    /// first live backup, or is lost (by `incarnation`) when it has none; the slots it
    /// backed up lose that copy. The caller rebuilds the map.
    pub(super) fn fail_over_node(&mut self, node_id: u64, incarnation: u64) -> NodeFailure {
        if self.owners.is_empty() {
            return NodeFailure::default();
        }
        let backups_dropped = self
            .backups
            .iter()
            .filter(|backups| backups.iter().any(|backup| backup.node_id == node_id))
            .count();
        let dead = BTreeSet::from([node_id]);
        let outcome = replicas::fail_over(&self.primaries(), &self.backups, &dead);
        let mut failure = NodeFailure {
            backups_dropped,
            ..NodeFailure::default()
        };
        for promotion in &outcome.promoted {
            self.owners[promotion.slot as usize] = promotion.to;
            failure.promoted.push(promotion.slot);
        }
        for &slot in &outcome.lost {
            self.lost.insert(slot, incarnation);
            failure.lost.push(slot);
        }
        self.backups = outcome.backups;
        self.backups.resize(SLOT_COUNT as usize, Vec::new());
        self.state.failovers_total += failure.promoted.len() as u64;
        // Whatever was being filled from or to it is void.
        self.fills
            .orders
            .retain(|(primary, backup), _| primary.node_id != node_id && backup.node_id != node_id);
        failure
    }

    /// Whether `node_id` owns a served slot or backs one up.
    pub(super) fn holds_a_role(&self, node_id: u64) -> bool {
        let owns = self
            .owners
            .iter()
            .enumerate()
            .any(|(slot, owner)| owner.node_id == node_id && !self.lost.contains_key(&(slot as u32)));
        owns || self.backs_up_anything(node_id)
    }

    fn backs_up_anything(&self, node_id: u64) -> bool {
        self.backups
            .iter()
            .any(|backups| backups.iter().any(|backup| backup.node_id == node_id))
    }

    /// Plans where backups go now and orders the fills that get there: a fill copies a
    /// slot from its owner to a backup the placement wants and the map does not name.
    /// Only shards of members heard from lately take part; a slot whose owner is silent
    /// gets no fill (nothing can be copied off it).
    pub fn plan_fills(&mut self, now_ms: u64) -> Result<(), ReplicaError> {
        self.fills = Fills::default();
        if self.replicas == 0 || self.owners.is_empty() {
            return Ok(());
        }
        let shards = self.replica_shards(now_ms);
        let plan = plan_backups(&shards, &self.primaries(), &self.backups, self.replicas)?;
        let mut orders: BTreeMap<(ShardRef, ShardRef), Vec<u32>> = BTreeMap::new();
        for (slot, wanted) in plan.backups.iter().enumerate() {
            let owner = self.owners[slot];
            if self.lost.contains_key(&(slot as u32)) || !self.is_responsive(owner.node_id, now_ms) {
                continue;
            }
            for backup in wanted.iter().filter(|backup| !self.backups[slot].contains(backup)) {
                orders.entry((owner, *backup)).or_default().push(slot as u32);
            }
        }
        self.fills = Fills {
            orders,
            desired: plan.backups,
        };
        Ok(())
    }

    /// Every member's shards as the placement sees them: a shard of a draining or silent
    /// member takes no new backup and gives up those it holds.
    fn replica_shards(&self, now_ms: u64) -> Vec<ReplicaShard> {
        let mut shards = Vec::new();
        for member in &self.state.members {
            let draining = member.draining || !self.is_responsive(member.node_id, now_ms);
            for shard_id in 0..member.shard_addresses.len() {
                shards.push(ReplicaShard {
                    shard: ShardRef {
                        node_id: member.node_id,
                        shard_id: shard_id as u16,
                    },
                    zone: member.zone.clone(),
                    draining,
                });
            }
        }
        shards
    }

    /// Withdraws every fill order (a plan moves slots: a fill towards a move's target
    /// would stream into slots it imports). Orders made afterwards carry a new
    /// generation, so a primary that never heard of the withdrawal still starts them
    /// afresh.
    pub fn plan_fills_none(&mut self) {
        self.fills = Fills::default();
        self.fills_generation = self.fills_generation.wrapping_add(1);
    }

    /// Orders the fill that a migration step runs before it hands `slots` over: `to`
    /// becomes one more backup of them (beyond the setting, and wanted, so naming it
    /// trims no other), in a new generation. Replaces every other order: none run while
    /// a plan moves slots.
    pub fn order_step_fill(&mut self, from: ShardRef, to: ShardRef, slots: &[u32]) {
        let mut desired = self.backups.clone();
        desired.resize(SLOT_COUNT as usize, Vec::new());
        for &slot in slots {
            if let Some(wanted) = desired.get_mut(slot as usize) {
                wanted.push(to);
            }
        }
        self.fills = Fills {
            orders: BTreeMap::from([((from, to), slots.to_vec())]),
            desired,
        };
        self.fills_generation = self.fills_generation.wrapping_add(1);
    }

    /// Whether a shard of `node_id` backs up `slot` in the map.
    pub fn backed_up_on_node(&self, node_id: u64, slot: u32) -> bool {
        self.backups
            .get(slot as usize)
            .is_some_and(|backups| backups.iter().any(|backup| backup.node_id == node_id))
    }

    /// Starts the generations of this leader's fill orders at `base` (a value no earlier
    /// leader used, such as the time in nanoseconds): orders of a previous leader that a
    /// primary still runs never pass for this one's.
    pub fn start_fill_generations(&mut self, base: u64) {
        self.fills_generation = base;
    }

    /// The fills `node_id`'s primary shards are to run, for its heartbeat's answer.
    pub fn fills_for(&self, node_id: u64) -> Vec<FillOrder> {
        self.fills
            .orders
            .range(fill_range_of(node_id))
            .filter_map(|((primary, backup), slots)| {
                let member = self.member(backup.node_id)?;
                Some(FillOrder {
                    shard_id: primary.shard_id,
                    backup: ShardProcessRef {
                        node_id: backup.node_id,
                        shard_id: backup.shard_id,
                        incarnation: member.incarnation,
                    },
                    backup_address: member.shard_addresses.get(backup.shard_id as usize)?.clone(),
                    slots: slot_ranges(slots),
                    generation: self.fills_generation,
                })
            })
            .collect()
    }

    /// Slots fills are copying now.
    pub fn slots_filling(&self) -> u32 {
        self.fills.orders.values().map(|slots| slots.len() as u32).sum()
    }

    /// Served slots with fewer backups in the map than `replicas`.
    pub fn under_replicated(&self) -> u32 {
        if self.replicas == 0 {
            return 0;
        }
        self.backups
            .iter()
            .enumerate()
            .filter(|(slot, backups)| !self.lost.contains_key(&(*slot as u32)) && backups.len() < self.replicas)
            .count() as u32
    }

    pub fn failovers_total(&self) -> u64 {
        self.state.failovers_total
    }

    /// The backups a heartbeat's in-sync reports let the map name now: each is a fill
    /// ordered from the reporting primary, to the very process the order named, reported
    /// under the current map (a report under an older one may describe a stream that was
    /// replaced since). Read-only, so a heartbeat that commits nothing copies nothing.
    pub fn in_sync_backups(&self, heartbeat: &Heartbeat) -> Vec<(u32, ShardRef)> {
        let mut ready = Vec::new();
        for report in heartbeat
            .in_sync
            .iter()
            .filter(|report| report.map_epoch == self.epoch())
        {
            let primary = ShardRef {
                node_id: heartbeat.node_id,
                shard_id: report.shard_id,
            };
            let backup = ShardRef {
                node_id: report.backup.node_id,
                shard_id: report.backup.shard_id,
            };
            let same_process = self
                .member(backup.node_id)
                .is_some_and(|member| member.incarnation == report.backup.incarnation);
            let Some(ordered) = self.fills.orders.get(&(primary, backup)).filter(|_| same_process) else {
                continue;
            };
            for &(start, end) in &report.slots {
                let reported = ordered.iter().copied().filter(|slot| (start..=end).contains(slot));
                ready.extend(
                    reported
                        .filter(|&slot| self.owners[slot as usize] == primary)
                        .map(|slot| (slot, backup)),
                );
            }
        }
        ready
    }

    /// Names each backup in its slot's map entry (after those it has), dropping the
    /// entries the placement no longer wants while the slot has more than `replicas`.
    /// Returns how many it named; the map is rebuilt when any.
    pub fn commit_backups(&mut self, ready: &[(u32, ShardRef)]) -> usize {
        let mut named = 0;
        for &(slot, backup) in ready {
            let index = slot as usize;
            let owner_node = self.owners[index].node_id;
            let list = &mut self.backups[index];
            if backup.node_id == owner_node || list.iter().any(|held| held.node_id == backup.node_id) {
                continue;
            }
            list.push(backup);
            named += 1;
            let desired = self.fills.desired.get(index).cloned().unwrap_or_default();
            while list.len() > self.replicas {
                let Some(unwanted) = list.iter().position(|held| !desired.contains(held)) else {
                    break;
                };
                list.remove(unwanted);
            }
            if let Some(slots) = self.fills.orders.get_mut(&(self.owners[index], backup)) {
                slots.retain(|&ordered| ordered != slot);
            }
        }
        self.fills.orders.retain(|_, slots| !slots.is_empty());
        if named > 0 {
            self.rebuild_map();
        }
        named
    }

    /// Whether some slot has more backups than `replicas` (the setting was lowered).
    pub fn has_excess_backups(&self) -> bool {
        self.backups.iter().any(|backups| backups.len() > self.replicas)
    }

    /// Keeps at most `replicas` backups per slot, the first in promotion order.
    pub fn trim_backups(&mut self) {
        for backups in &mut self.backups {
            backups.truncate(self.replicas);
        }
        self.rebuild_map();
    }

    /// Keeps the map valid as owners and members change: a slot that is lost, or whose
    /// owner moved onto a backup's node, or a backup on a shard that is gone, loses
    /// that entry; so does the second of two backups on one node.
    pub(super) fn drop_invalid_backups(&mut self) {
        self.backups.resize(SLOT_COUNT as usize, Vec::new());
        let shard_exists = |shard: &ShardRef, membership: &Membership| {
            membership
                .member(shard.node_id)
                .is_some_and(|member| (shard.shard_id as usize) < member.shard_addresses.len())
        };
        let mut backups = std::mem::take(&mut self.backups);
        for (slot, list) in backups.iter_mut().enumerate() {
            if self.lost.contains_key(&(slot as u32)) || self.owners.is_empty() {
                list.clear();
                continue;
            }
            let mut nodes = vec![self.owners[slot].node_id];
            list.retain(|backup| {
                let keep = !nodes.contains(&backup.node_id) && shard_exists(backup, self);
                nodes.push(backup.node_id);
                keep
            });
        }
        self.backups = backups;
    }

    /// Backups per shard, for the status.
    pub(super) fn backup_slots_per_shard(&self) -> BTreeMap<ShardRef, u32> {
        let mut counts = BTreeMap::new();
        for backup in self.backups.iter().flatten() {
            *counts.entry(*backup).or_default() += 1;
        }
        counts
    }
}

/// The keys of `node_id`'s fills in the orders' map.
fn fill_range_of(node_id: u64) -> std::ops::RangeInclusive<(ShardRef, ShardRef)> {
    let low = ShardRef { node_id, shard_id: 0 };
    let high = ShardRef {
        node_id,
        shard_id: u16::MAX,
    };
    let lowest = ShardRef {
        node_id: 0,
        shard_id: 0,
    };
    let highest = ShardRef {
        node_id: u64::MAX,
        shard_id: u16::MAX,
    };
    (low, lowest)..=(high, highest)
}

#[cfg(test)]
mod tests;
