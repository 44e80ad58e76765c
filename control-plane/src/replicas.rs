//! Replica groups: which shards keep a backup of each slot, and which copy takes over
//! when a slot's owner dies. Pure functions, like [`crate::planner`]'s: no network, no
//! clock, equal inputs give equal outputs, so every placement can be replayed and
//! property-tested.
//!
//! - [`plan_backups`] places up to `replicas` backups per slot, on nodes other than the
//!   owner's, in other zones where it can, evenly over the shards, keeping the backups
//!   that already hold the data (a new one must be copied).
//! - [`fail_over`] promotes, for every slot whose owner is on a dead node, its first
//!   backup on a live node, and says which slots have no live copy left.
//! - [`slot_tables`] and [`backup_ranges_of`] convert between a [`SlotMap`] and the
//!   per-slot tables both work on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{backup_ranges, BackupRange, ShardAddress, SlotMap};

use crate::planner::ShardRef;

/// Most backups per slot a plan places. Each is a whole copy of the slot's data kept in
/// step with every write, so memory and write cost grow with each; past a few, a cluster
/// pays much for little.
pub const REPLICAS_MAX: usize = 4;

/// Backups per slot in a cluster unless told otherwise: one node's death then costs a
/// pause, not data, for one extra copy of everything and a round trip per write. A
/// node alone has no other node to hold one (its slots count as under-replicated).
pub const REPLICAS_DEFAULT: u8 = 1;

/// Where the rules force more backups onto some shards than the fair share (zones of
/// unequal size, nodes of unequal shard counts), how many more than the emptiest
/// candidate a shard may take while it continues a run of slots. Evening out to one
/// would deal the slots out one by one, and the map would hold thousands of ranges.
pub const UNEVEN_RUN_SLOTS_MAX: u32 = 64;

/// What the placement knows about a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaShard {
    pub shard: ShardRef,
    /// The failure domain of the shard's node (`engramd --zone`); empty: none given,
    /// which counts as one zone of its own.
    pub zone: String,
    /// A draining shard receives no backups and gives up those it holds.
    pub draining: bool,
}

/// What [`plan_backups`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupPlan {
    /// Per slot, its backups in promotion order: those it keeps first, in their order,
    /// then the new ones.
    pub backups: Vec<Vec<ShardRef>>,
    /// Slots served (not lost) that got fewer than `replicas` backups because too few
    /// nodes other than their owner's may hold one.
    pub under_replicated: u32,
}

/// Who serves each slot after [`fail_over`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailOver {
    /// Per slot, its owner; `None`: lost.
    pub primaries: Vec<Option<ShardRef>>,
    /// Per slot, its backups on live nodes, in their order, less the promoted one.
    pub backups: Vec<Vec<ShardRef>>,
    /// The backups that became owners, in slot order.
    pub promoted: Vec<Promotion>,
    /// Slots that had an owner and have no live copy left, in order.
    pub lost: Vec<u32>,
}

/// The backup `to` of `slot` now owns it, in place of `from` (on a dead node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Promotion {
    pub slot: u32,
    /// `None` when the slot was lost already, its backups having outlived its owner.
    pub from: Option<ShardRef>,
    pub to: ShardRef,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("the owners table has {length} entries, expected slot_count ({SLOT_COUNT})")]
    WrongPrimariesLength { length: usize },
    #[error("the current backups table has {length} entries, expected slot_count ({SLOT_COUNT})")]
    WrongCurrentLength { length: usize },
    #[error("{replicas} replicas asked, above replicas_max ({REPLICAS_MAX})")]
    TooManyReplicas { replicas: usize },
    #[error("backup shard {shard:?} is not among the map's shards")]
    UnlistedShard { shard: ShardRef },
}

/// Places up to `replicas` backups for each slot.
///
/// `primaries` names each slot's owner (`SLOT_COUNT` entries); `None` marks a lost slot,
/// which gets no backup (there is no data to copy). `current` holds each slot's backups
/// today. A shard is *eligible* when listed in `shards` and not draining (listed as
/// draining anywhere counts as draining, as in the planner).
///
/// The rules:
/// - **Placement.** A slot gets `min(replicas, eligible nodes other than its owner's)`
///   backups, each on an eligible shard, no two copies of a slot (owner included) on one
///   node; slots with fewer than `replicas` are counted in `under_replicated`.
/// - **Keep.** A current backup is *valid* when its shard is eligible and its node holds
///   no other copy of the slot (the first ones in order win, up to the slot's count).
///   Every valid backup is kept unless balance needs it elsewhere (below).
/// - **Zones.** A new backup goes, when it can, to a zone that none of the slot's copies
///   is in; this comes before balance, and no later move puts a slot's copies in fewer
///   zones. Kept backups are not moved for their zone.
/// - **Balance.** Quotas are the floor or ceiling of the fair share of all backups over
///   the eligible shards, the ceilings going to the shards that keep the most (as in
///   [`crate::planner::plan_balance`], so the fewest copies move). A new backup goes to
///   a shard under its quota when the slot's node and zone rules leave one, else over a
///   quota. Then backups move, new ones before kept ones (a kept one costs a copy),
///   directly or along chains of moves through other shards: first until every shard
///   holds between the floor and the ceiling, where the rules allow (shards above the
///   ceiling give down to it, then shards above the floor give to shards below it);
///   then, where the rules hold some shards above the rest (zones of unequal sizes,
///   nodes of unequal shard counts), from the fullest shard to ones at least two
///   emptier. Every move lowers the sum of squared counts, and moving goes on until none
///   is left, so a plan made from a plan's result keeps it as it is.
/// - **Few ranges.** Slots are filled in order, each preferring the shards that back the
///   previous slot in the same positions, and moves take a giver's slots in runs, so the
///   map's backup ranges stay few.
pub fn plan_backups(
    shards: &[ReplicaShard],
    primaries: &[Option<ShardRef>],
    current: &[Vec<ShardRef>],
    replicas: usize,
) -> Result<BackupPlan, ReplicaError> {
    if primaries.len() != SLOT_COUNT as usize {
        return Err(ReplicaError::WrongPrimariesLength {
            length: primaries.len(),
        });
    }
    if current.len() != SLOT_COUNT as usize {
        return Err(ReplicaError::WrongCurrentLength { length: current.len() });
    }
    if replicas > REPLICAS_MAX {
        return Err(ReplicaError::TooManyReplicas { replicas });
    }
    let mut placement = Placement::new(shards, primaries, current);
    let targets: Vec<usize> = (0..SLOT_COUNT as usize)
        .map(|slot| placement.target(slot, replicas))
        .collect();
    placement.keep_valid(&targets);
    placement.assign_quotas(targets.iter().sum::<usize>() as u32);
    placement.fill(&targets);
    placement.rebalance();
    let under_replicated = targets
        .iter()
        .zip(primaries)
        .filter(|(target, primary)| primary.is_some() && **target < replicas)
        .count() as u32;
    Ok(BackupPlan {
        backups: placement.backups,
        under_replicated,
    })
}

/// The placement being built: the eligible shards and every listed shard's zone, each
/// slot's backups so far, and which slots each eligible shard backs.
struct Placement<'a> {
    /// Eligible shards and their zones.
    eligible: BTreeMap<ShardRef, &'a str>,
    /// The nodes of eligible shards.
    eligible_nodes: BTreeSet<u64>,
    /// Every listed shard's zone, for owners that are draining.
    zones: BTreeMap<ShardRef, &'a str>,
    /// Whether zones tell shards apart at all: when every listed shard has the same,
    /// zone rules change nothing and are skipped.
    zoned: bool,
    primaries: &'a [Option<ShardRef>],
    current: &'a [Vec<ShardRef>],
    backups: Vec<Vec<ShardRef>>,
    /// Per eligible shard, the slots it backs.
    held: BTreeMap<ShardRef, BTreeSet<u32>>,
    /// Per eligible shard, the slots it backs that it does not hold today: those move
    /// first, and at no cost.
    fresh: BTreeMap<ShardRef, BTreeSet<u32>>,
    /// Eligible shards by how many slots they back, per zone: the emptiest first.
    by_count: BTreeMap<&'a str, BTreeSet<(u32, ShardRef)>>,
    /// The same, of shards under their quota only (once quotas are set).
    roomy: BTreeMap<&'a str, BTreeSet<(u32, ShardRef)>>,
    quotas: BTreeMap<ShardRef, u32>,
    floor: u32,
    ceil: u32,
}

impl<'a> Placement<'a> {
    fn new(shards: &'a [ReplicaShard], primaries: &'a [Option<ShardRef>], current: &'a [Vec<ShardRef>]) -> Self {
        let draining: BTreeSet<ShardRef> = shards
            .iter()
            .filter(|shard| shard.draining)
            .map(|shard| shard.shard)
            .collect();
        let mut zones = BTreeMap::new();
        let mut eligible = BTreeMap::new();
        for shard in shards {
            zones.entry(shard.shard).or_insert(shard.zone.as_str());
            if !draining.contains(&shard.shard) {
                eligible.entry(shard.shard).or_insert(shard.zone.as_str());
            }
        }
        let zoned = zones.values().collect::<BTreeSet<_>>().len() > 1;
        let held: BTreeMap<ShardRef, BTreeSet<u32>> = eligible.keys().map(|shard| (*shard, BTreeSet::new())).collect();
        let eligible_nodes = eligible.keys().map(|shard: &ShardRef| shard.node_id).collect();
        let mut by_count: BTreeMap<&str, BTreeSet<(u32, ShardRef)>> = BTreeMap::new();
        for (shard, zone) in &eligible {
            by_count.entry(*zone).or_default().insert((0, *shard));
        }
        Placement {
            eligible,
            eligible_nodes,
            zones,
            zoned,
            primaries,
            current,
            backups: vec![Vec::new(); primaries.len()],
            fresh: held.clone(),
            held,
            by_count,
            roomy: BTreeMap::new(),
            quotas: BTreeMap::new(),
            floor: 0,
            ceil: 0,
        }
    }

    /// How many backups `slot` gets: `replicas`, or as many as there are eligible nodes
    /// other than its owner's; none when lost.
    fn target(&self, slot: usize, replicas: usize) -> usize {
        let Some(primary) = self.primaries[slot] else {
            return 0;
        };
        let nodes = &self.eligible_nodes;
        let others = nodes.len() - usize::from(nodes.contains(&primary.node_id));
        replicas.min(others)
    }

    fn zone_of(&self, shard: ShardRef) -> &'a str {
        self.zones.get(&shard).copied().unwrap_or("")
    }

    /// Whether `shard` holds `slot`'s data today, so keeping it there costs no copy.
    fn is_current(&self, slot: u32, shard: ShardRef) -> bool {
        self.current[slot as usize].contains(&shard)
    }

    /// The slots whose backup on `shard` may move: new ones, or all if `kept_too`.
    fn movable(&self, shard: ShardRef, kept_too: bool) -> &BTreeSet<u32> {
        let slots = if kept_too { &self.held } else { &self.fresh };
        &slots[&shard]
    }

    fn count(&self, shard: ShardRef) -> u32 {
        self.held.get(&shard).map_or(0, |slots| slots.len() as u32)
    }

    /// Keeps each slot's valid current backups, up to its target.
    fn keep_valid(&mut self, targets: &[usize]) {
        for (slot, target) in targets.iter().enumerate() {
            let Some(primary) = self.primaries[slot] else {
                continue;
            };
            let mut kept: Vec<ShardRef> = Vec::new();
            for backup in &self.current[slot] {
                let node_taken = backup.node_id == primary.node_id || kept.iter().any(|k| k.node_id == backup.node_id);
                if kept.len() < *target && self.eligible.contains_key(backup) && !node_taken {
                    kept.push(*backup);
                }
            }
            for backup in &kept {
                self.count_in(slot as u32, *backup);
            }
            self.backups[slot] = kept;
        }
    }

    /// Floor or ceiling of the fair share of `demand` backups, the ceilings to the shards
    /// holding the most (ties to the lowest shard).
    fn assign_quotas(&mut self, demand: u32) {
        let count = self.eligible.len() as u32;
        if count == 0 {
            return;
        }
        self.floor = demand / count;
        let ceilings = (demand % count) as usize;
        self.ceil = self.floor + u32::from(ceilings > 0);
        let mut by_held: Vec<ShardRef> = self.eligible.keys().copied().collect();
        by_held.sort_by_key(|shard| std::cmp::Reverse(self.count(*shard)));
        self.quotas = by_held
            .iter()
            .enumerate()
            .map(|(rank, shard)| (*shard, self.floor + u32::from(rank < ceilings)))
            .collect();
        for (shard, zone) in &self.eligible {
            let count = self.count(*shard);
            if count < self.quotas[shard] {
                self.roomy.entry(*zone).or_default().insert((count, *shard));
            }
        }
    }

    /// Completes every slot to its target, in slot order.
    fn fill(&mut self, targets: &[usize]) {
        let all_zones: BTreeSet<&str> = self.eligible.values().copied().collect();
        for (slot, target) in targets.iter().enumerate() {
            let Some(primary) = self.primaries[slot] else {
                continue;
            };
            while self.backups[slot].len() < *target {
                let position = self.backups[slot].len();
                let previous = slot.checked_sub(1).map(|before| self.backups[before].as_slice());
                let chosen = self.choose(slot, primary, position, previous.unwrap_or(&[]), &all_zones);
                let chosen = chosen.expect("the target counts only nodes that can take a copy");
                self.backups[slot].push(chosen);
                self.count_in(slot as u32, chosen);
            }
        }
    }

    /// The shard for `slot`'s backup at `position`: on a node without a copy of it; then
    /// in a zone without one, under its quota, backing the previous slot (at the same
    /// position first), holding the fewest, lowest.
    fn choose(
        &self,
        slot: usize,
        primary: ShardRef,
        position: usize,
        previous: &[ShardRef],
        all_zones: &BTreeSet<&str>,
    ) -> Option<ShardRef> {
        let backups = &self.backups[slot];
        let node_free = |shard: &ShardRef| {
            shard.node_id != primary.node_id && backups.iter().all(|backup| backup.node_id != shard.node_id)
        };
        let used_zones: BTreeSet<&str> = std::iter::once(primary)
            .chain(backups.iter().copied())
            .map(|shard| self.zone_of(shard))
            .collect();
        let zone_free = |shard: &ShardRef| !self.zoned || !used_zones.contains(self.zone_of(*shard));
        let room = |shard: &ShardRef| self.count(*shard) < self.quotas.get(shard).copied().unwrap_or(0);
        // The usual case: the previous slot's backup at this position is free, has room,
        // and no zone would be better.
        if let Some(continued) = previous.get(position).filter(|shard| self.eligible.contains_key(shard)) {
            let no_better_zone = zone_free(continued) || all_zones.iter().all(|zone| used_zones.contains(zone));
            if node_free(continued) && room(continued) && no_better_zone {
                return Some(*continued);
            }
        }
        let key = |shard: &ShardRef| {
            let continuity = match previous.iter().position(|backup| backup == shard) {
                Some(at) if at == position => 0,
                Some(_) => 1,
                None => 2,
            };
            (!zone_free(shard), !room(shard), continuity, self.count(*shard), *shard)
        };
        // Besides the previous slot's backups, the best of a zone is its emptiest free
        // shard with room or, if none has room, its emptiest free shard: found in the
        // indexes without looking at every shard.
        let continuing = previous.iter().filter(|shard| self.eligible.contains_key(shard));
        let zone_bests = self.by_count.iter().filter_map(|(zone, shards)| {
            let roomy = self.roomy.get(zone).into_iter().flatten();
            let emptiest_free = |(_, shard): &&(u32, ShardRef)| node_free(shard);
            roomy
                .clone()
                .find(emptiest_free)
                .or_else(|| shards.iter().find(emptiest_free))
                .map(|(_, shard)| shard)
        });
        continuing
            .chain(zone_bests)
            .filter(|shard| node_free(shard))
            .copied()
            .min_by_key(key)
    }

    /// Moves backups until shards hold between the floor and the ceiling of the fair
    /// share where the rules allow (first off shards above the ceiling, then onto shards
    /// below the floor), and as evenly as they allow where they do not. New backups
    /// move first, as they cost nothing yet. Repeated until a round moves nothing, so a
    /// plan made from this plan's result keeps it as it is.
    fn rebalance(&mut self) {
        // Every move goes from a shard to one holding at least two fewer, so it lowers
        // the sum of squared counts: the rounds end.
        let mut unevenness = self.unevenness();
        loop {
            for kept_too in [false, true] {
                for bound in [self.ceil, self.floor] {
                    self.move_directly(bound, kept_too);
                    self.move_along_chains(bound, kept_too);
                }
            }
            for kept_too in [false, true] {
                self.even_out(kept_too);
            }
            let after = self.unevenness();
            if after >= unevenness {
                break;
            }
            unevenness = after;
        }
    }

    /// The sum of the squared counts of backups per shard.
    fn unevenness(&self) -> u64 {
        self.held.values().map(|slots| (slots.len() as u64).pow(2)).sum()
    }

    /// Moves backups (kept ones too if `kept_too`) from shards holding more than `bound`
    /// straight to shards holding fewer, each giver's highest slots first.
    fn move_directly(&mut self, bound: u32, kept_too: bool) {
        if self.shards_where(|count| count < bound).is_empty() {
            return;
        }
        for giver in self.shards_where(|count| count > bound) {
            let mut last = None;
            let slots: Vec<u32> = self.movable(giver, kept_too).iter().rev().copied().collect();
            for slot in slots {
                if self.count(giver) <= bound {
                    break;
                }
                if let Some(receiver) = self.taker(slot, giver, bound, last, kept_too) {
                    self.move_backup(slot, giver, receiver);
                    last = Some(receiver);
                }
            }
        }
    }

    fn shards_where(&self, wanted: impl Fn(u32) -> bool) -> Vec<ShardRef> {
        self.held
            .iter()
            .filter(|(_, slots)| wanted(slots.len() as u32))
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// When no giver can hand a backup straight to a receiver: a chain of moves, each
    /// shard on it passing one backup to the next, so only the ends change counts.
    fn move_along_chains(&mut self, bound: u32, kept_too: bool) {
        while let Some(chain) = self.find_chain(bound, kept_too) {
            let (giver, receiver) = (chain[0], chain[chain.len() - 1]);
            let mut moved = false;
            let mut below = vec![u32::MAX; chain.len() - 1];
            while self.count(giver) > bound
                && self.count(receiver) < bound
                && self.push_along(&chain, kept_too, &mut below)
            {
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// The shortest chain of shards from one holding more than `bound` to one holding
    /// fewer, each able to pass a backup to the next (breadth-first search). Whether a
    /// backup may go to a shard depends only on the shard's node and zone, so each
    /// backup reaches whole nodes at once.
    fn find_chain(&self, bound: u32, kept_too: bool) -> Option<Vec<ShardRef>> {
        if self.shards_where(|count| count < bound).is_empty() {
            return None;
        }
        let givers = self.shards_where(|count| count > bound);
        let mut unvisited: BTreeMap<&str, BTreeMap<u64, Vec<ShardRef>>> = BTreeMap::new();
        for (shard, zone) in self.eligible.iter().filter(|(shard, _)| !givers.contains(shard)) {
            unvisited
                .entry(*zone)
                .or_default()
                .entry(shard.node_id)
                .or_default()
                .push(*shard);
        }
        let mut parent: BTreeMap<ShardRef, ShardRef> = BTreeMap::new();
        let mut queue: VecDeque<ShardRef> = givers.into_iter().collect();
        while let Some(from) = queue.pop_front() {
            for &slot in self.movable(from, kept_too) {
                if unvisited.is_empty() {
                    return None;
                }
                for to in self.reached_by(slot, from, kept_too, &mut unvisited) {
                    parent.insert(to, from);
                    if self.count(to) < bound {
                        let mut chain = vec![to];
                        while let Some(before) = parent.get(chain.last().expect("never empty")) {
                            chain.push(*before);
                        }
                        chain.reverse();
                        return Some(chain);
                    }
                    queue.push_back(to);
                }
            }
        }
        None
    }

    /// Takes out of `unvisited` (zone, node, shards) every shard `slot`'s backup on
    /// `from` may move to, and returns them.
    fn reached_by(
        &self,
        slot: u32,
        from: ShardRef,
        kept_too: bool,
        unvisited: &mut BTreeMap<&str, BTreeMap<u64, Vec<ShardRef>>>,
    ) -> Vec<ShardRef> {
        let Some(primary) = self.primaries[slot as usize] else {
            return Vec::new();
        };
        if !kept_too && self.is_current(slot, from) {
            return Vec::new();
        }
        let taken = self.nodes_taken(slot, primary, from);
        let zones_before = self.zone_count(slot, primary, None);
        let mut reached = Vec::new();
        for (zone, nodes) in unvisited.iter_mut() {
            if self.zoned && self.zone_count(slot, primary, Some((from, zone))) < zones_before {
                continue;
            }
            nodes.retain(|node, shards| {
                if taken.contains(node) {
                    return true;
                }
                reached.append(shards);
                false
            });
        }
        unvisited.retain(|_, nodes| !nodes.is_empty());
        reached
    }

    /// Passes one backup along each link of `chain`, from the receiving end; undoes them
    /// all if a link has none left to pass. `below` holds, per link, the slot its last
    /// search stopped at: a slot that could not pass rarely can later, and the next
    /// search for a chain looks at every slot again.
    fn push_along(&mut self, chain: &[ShardRef], kept_too: bool, below: &mut [u32]) -> bool {
        let mut done: Vec<(u32, ShardRef, ShardRef)> = Vec::new();
        for (index, link) in chain.windows(2).enumerate().rev() {
            let (from, to) = (link[0], link[1]);
            let slot = self
                .movable(from, kept_too)
                .range(..below[index])
                .rev()
                .copied()
                .find(|slot| self.can_move(*slot, from, to, kept_too));
            below[index] = slot.unwrap_or(0);
            match slot {
                Some(slot) => {
                    self.move_backup(slot, from, to);
                    done.push((slot, from, to));
                }
                None => {
                    for (slot, from, to) in done.into_iter().rev() {
                        self.move_backup(slot, to, from);
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Where the rules leave no even split (zones or nodes force more backups onto some
    /// shards): one backup at a time, from the fullest shard that can give to the
    /// emptiest that can take (two or more fewer), until none can. Giving from the
    /// fullest only, no shard gives what it must take back later.
    fn even_out(&mut self, kept_too: bool) {
        let mut stuck: BTreeSet<ShardRef> = BTreeSet::new();
        let mut last_receiver: BTreeMap<ShardRef, ShardRef> = BTreeMap::new();
        let mut below: BTreeMap<ShardRef, u32> = BTreeMap::new();
        loop {
            let fullest = self
                .by_count
                .values()
                .flat_map(|shards| shards.iter().rev().find(|(_, shard)| !stuck.contains(shard)))
                .max_by_key(|(count, shard)| (*count, std::cmp::Reverse(*shard)))
                .copied();
            let emptiest = self
                .by_count
                .values()
                .filter_map(|shards| shards.first())
                .map(|(count, _)| *count)
                .min();
            let (Some((count, giver)), Some(emptiest)) = (fullest, emptiest) else {
                break;
            };
            if count <= emptiest + 1 {
                break;
            }
            let last = last_receiver.get(&giver).copied();
            let start = below.get(&giver).copied().unwrap_or(u32::MAX);
            let found = self.movable(giver, kept_too).range(..start).rev().find_map(|slot| {
                self.taker(*slot, giver, count - 1, last, kept_too)
                    .map(|receiver| (*slot, receiver))
            });
            match found {
                Some((slot, receiver)) => {
                    self.move_backup(slot, giver, receiver);
                    last_receiver.insert(giver, receiver);
                    below.insert(giver, slot);
                }
                None => {
                    stuck.insert(giver);
                }
            }
        }
    }

    /// The shard that should take `slot`'s backup off `giver` (new, or kept if
    /// `kept_too`): one holding fewer than `limit`, allowed by the node and zone rules;
    /// the emptiest by [`UNEVEN_RUN_SLOTS_MAX`], then `last` (which took the giver's
    /// previous one, so runs stay together), then the emptiest, lowest.
    fn taker(
        &self,
        slot: u32,
        giver: ShardRef,
        limit: u32,
        last: Option<ShardRef>,
        kept_too: bool,
    ) -> Option<ShardRef> {
        let primary = self.primaries[slot as usize]?;
        if !kept_too && self.is_current(slot, giver) {
            return None;
        }
        let taken = self.nodes_taken(slot, primary, giver);
        let zones_before = self.zone_count(slot, primary, None);
        let mut best: Option<(u32, bool, u32, ShardRef)> = None;
        let mut consider = |count: u32, shard: ShardRef| {
            let key = (count / UNEVEN_RUN_SLOTS_MAX, Some(shard) != last, count, shard);
            if best.is_none_or(|best| key < best) {
                best = Some(key);
            }
        };
        for (zone, shards) in &self.by_count {
            if self.zoned && self.zone_count(slot, primary, Some((giver, zone))) < zones_before {
                continue;
            }
            let emptiest = shards
                .iter()
                .take_while(|(count, _)| *count < limit)
                .find(|(_, shard)| !taken.contains(&shard.node_id));
            if let Some((count, shard)) = emptiest {
                consider(*count, *shard);
            }
            if let Some(last) = last.filter(|last| self.eligible.get(last) == Some(zone)) {
                let count = self.count(last);
                if count < limit && last != giver && !taken.contains(&last.node_id) {
                    consider(count, last);
                }
            }
        }
        best.map(|(_, _, _, shard)| shard)
    }

    /// Whether `slot`'s backup on `from` may move to `to`: new (or kept, if `kept_too`),
    /// to an eligible shard on a node with no copy of the slot, leaving the slot's copies
    /// in no fewer zones.
    fn can_move(&self, slot: u32, from: ShardRef, to: ShardRef, kept_too: bool) -> bool {
        let Some(primary) = self.primaries[slot as usize] else {
            return false;
        };
        if to == from || (!kept_too && self.is_current(slot, from)) {
            return false;
        }
        if self.nodes_taken(slot, primary, from).contains(&to.node_id) {
            return false;
        }
        let Some(zone) = self.eligible.get(&to) else {
            return false;
        };
        !self.zoned || self.zone_count(slot, primary, None) <= self.zone_count(slot, primary, Some((from, zone)))
    }

    /// The nodes holding a copy of `slot` other than its backup on `from`.
    fn nodes_taken(&self, slot: u32, primary: ShardRef, from: ShardRef) -> Nodes {
        let mut taken = Nodes {
            ids: [primary.node_id; REPLICAS_MAX + 1],
            len: 1,
        };
        for backup in self.backups[slot as usize].iter().filter(|backup| **backup != from) {
            if taken.len < taken.ids.len() {
                taken.ids[taken.len] = backup.node_id;
                taken.len += 1;
            }
        }
        taken
    }

    /// The zones `slot`'s copies are in, with the backup on a shard replaced by one in a
    /// zone if given. Counted without allocating: it runs for every move considered.
    fn zone_count(&self, slot: u32, primary: ShardRef, replaced: Option<(ShardRef, &str)>) -> usize {
        let backups = self.backups[slot as usize].iter().map(|backup| match replaced {
            Some((from, zone)) if *backup == from => zone,
            _ => self.zone_of(*backup),
        });
        let mut zones = [""; REPLICAS_MAX + 1];
        let mut distinct = 0;
        for zone in std::iter::once(self.zone_of(primary)).chain(backups) {
            if !zones[..distinct].contains(&zone) && distinct < zones.len() {
                zones[distinct] = zone;
                distinct += 1;
            }
        }
        distinct
    }

    /// `to` takes `from`'s place among `slot`'s backups (same position).
    fn move_backup(&mut self, slot: u32, from: ShardRef, to: ShardRef) {
        for backup in self.backups[slot as usize].iter_mut().filter(|backup| **backup == from) {
            *backup = to;
        }
        self.count_out(slot, from);
        self.count_in(slot, to);
    }

    /// Records that `shard` backs `slot`.
    fn count_in(&mut self, slot: u32, shard: ShardRef) {
        self.recount(slot, shard, true);
    }

    /// Records that `shard` no longer backs `slot`.
    fn count_out(&mut self, slot: u32, shard: ShardRef) {
        self.recount(slot, shard, false);
    }

    /// Adds `slot` to `shard`'s slots or takes it out, keeping the indexes in step.
    fn recount(&mut self, slot: u32, shard: ShardRef, backs: bool) {
        let Some(zone) = self.eligible.get(&shard).copied() else {
            return;
        };
        let fresh = !self.is_current(slot, shard);
        let slots = self.held.entry(shard).or_default();
        let before = slots.len() as u32;
        let fresh_slots = self.fresh.entry(shard).or_default();
        if backs {
            slots.insert(slot);
            if fresh {
                fresh_slots.insert(slot);
            }
        } else {
            slots.remove(&slot);
            fresh_slots.remove(&slot);
        }
        let after = slots.len() as u32;
        let by_count = self.by_count.entry(zone).or_default();
        by_count.remove(&(before, shard));
        by_count.insert((after, shard));
        if let Some(quota) = self.quotas.get(&shard) {
            let roomy = self.roomy.entry(zone).or_default();
            roomy.remove(&(before, shard));
            if after < *quota {
                roomy.insert((after, shard));
            }
        }
    }
}

/// Node ids, at most one per copy of a slot, without allocating.
struct Nodes {
    ids: [u64; REPLICAS_MAX + 1],
    len: usize,
}

impl Nodes {
    fn contains(&self, node_id: &u64) -> bool {
        self.ids[..self.len].contains(node_id)
    }
}

/// Who serves each slot once the nodes in `dead_nodes` are gone: a slot whose owner is
/// on a dead node (or that was lost, `None`) is owned by its first backup on a live node,
/// which leaves its backups; backups on dead nodes are dropped; a slot with no live copy
/// is lost. `backups` may be shorter than `primaries` (missing: none).
pub fn fail_over(primaries: &[Option<ShardRef>], backups: &[Vec<ShardRef>], dead_nodes: &BTreeSet<u64>) -> FailOver {
    let live = |shard: &ShardRef| !dead_nodes.contains(&shard.node_id);
    let mut result = FailOver {
        primaries: Vec::with_capacity(primaries.len()),
        backups: Vec::with_capacity(primaries.len()),
        promoted: Vec::new(),
        lost: Vec::new(),
    };
    for (slot, primary) in primaries.iter().enumerate() {
        let mut live_backups: Vec<ShardRef> = backups
            .get(slot)
            .map(|list| list.iter().copied().filter(live).collect())
            .unwrap_or_default();
        let owner = match primary {
            Some(owner) if live(owner) => Some(*owner),
            _ if live_backups.is_empty() => {
                if primary.is_some() {
                    result.lost.push(slot as u32);
                }
                None
            }
            _ => {
                let to = live_backups.remove(0);
                result.promoted.push(Promotion {
                    slot: slot as u32,
                    from: *primary,
                    to,
                });
                Some(to)
            }
        };
        result.primaries.push(owner);
        result.backups.push(live_backups);
    }
    result
}

/// A map's owners and backups as per-slot tables of shards: the inputs of
/// [`plan_backups`] and [`fail_over`]. Lost slots have no owner.
pub fn slot_tables(map: &SlotMap) -> (Vec<Option<ShardRef>>, Vec<Vec<ShardRef>>) {
    let shard_ref = |index: u32| {
        map.shards.get(index as usize).map(|shard| ShardRef {
            node_id: shard.node_id,
            shard_id: shard.shard_id,
        })
    };
    let primaries = map.owner_table().into_iter().map(shard_ref).collect();
    let backups = map
        .backup_table()
        .into_iter()
        .map(|indices| indices.into_iter().filter_map(shard_ref).collect())
        .collect();
    (primaries, backups)
}

/// Per-slot backups as a map's backup ranges, naming each shard by its index in
/// `shards` (the map's).
pub fn backup_ranges_of(backups: &[Vec<ShardRef>], shards: &[ShardAddress]) -> Result<Vec<BackupRange>, ReplicaError> {
    let index_of: BTreeMap<ShardRef, u32> = shards
        .iter()
        .enumerate()
        .map(|(index, shard)| {
            let shard_ref = ShardRef {
                node_id: shard.node_id,
                shard_id: shard.shard_id,
            };
            (shard_ref, index as u32)
        })
        .collect();
    let table = backups
        .iter()
        .map(|list| {
            list.iter()
                .map(|shard| {
                    index_of
                        .get(shard)
                        .copied()
                        .ok_or(ReplicaError::UnlistedShard { shard: *shard })
                })
                .collect::<Result<Vec<u32>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(backup_ranges(&table))
}

#[cfg(test)]
mod tests;
