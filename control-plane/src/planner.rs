//! The rebalancing planner: pure functions from (shards, load, current owners) to slot
//! moves. Nothing here touches the network or the clock, so every plan can be replayed
//! and property-tested; the migration orchestrator executes the moves.
//!
//! Two planners, for two reasons to move data:
//! - [`plan_balance`] reacts to membership: shards joining, draining or gone. It evens
//!   out slot counts with the fewest moves possible.
//! - [`plan_load`] reacts to measured load: it sheds a few slots from shards that run far
//!   hotter than the mean, bounded per round.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use engram_proto::limits::SLOT_COUNT;

/// One shard of the cluster: a core of a node. Ordered by node, then shard, which is the
/// order the planners break ties in, so that equal inputs give equal plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardRef {
    pub node_id: u64,
    pub shard_id: u16,
}

/// What the planners know about a shard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanShard {
    pub shard: ShardRef,
    /// A draining shard is being emptied (node leaving, operator request): it receives
    /// nothing and [`plan_balance`] moves everything it owns elsewhere.
    pub draining: bool,
    pub operations_per_second: f64,
    pub memory_bytes: u64,
}

/// Hand slot `slot` from `from` (its owner when the plan was made) to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Move {
    pub slot: u32,
    pub from: ShardRef,
    pub to: ShardRef,
}

/// Thresholds of [`plan_load`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadPolicy {
    /// A shard is hot when its operations per second or its memory exceeds this multiple
    /// of the mean over eligible shards.
    pub hot_ratio: f64,
    /// At most this many moves per plan, so that one round of load balancing cannot turn
    /// into a cluster-wide reshuffle; the next round continues if still needed.
    pub moves_max: usize,
}

impl Default for LoadPolicy {
    fn default() -> Self {
        Self {
            hot_ratio: 1.5,
            moves_max: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Every listed shard is draining (or none is listed): nobody could own the slots.
    NoEligibleShard,
    /// The owners table must name an owner for each of the `SLOT_COUNT` slots.
    WrongOwnersLength { length: usize },
}

// Written by hand rather than with thiserror because engram-control does not depend on it.
impl fmt::Display for PlanError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEligibleShard => formatter.write_str("no eligible (non-draining) shard to own the slots"),
            Self::WrongOwnersLength { length } => {
                write!(formatter, "owners table has {length} entries, expected {SLOT_COUNT}")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// The shards that may own slots, sorted, each once. A shard listed twice counts once, and
/// listed as draining anywhere counts as draining: the safe reading of a conflicting list.
fn eligible_shards(shards: &[PlanShard]) -> BTreeMap<ShardRef, PlanShard> {
    let draining: BTreeSet<ShardRef> = shards
        .iter()
        .filter(|shard| shard.draining)
        .map(|shard| shard.shard)
        .collect();
    let mut eligible = BTreeMap::new();
    for shard in shards.iter().filter(|shard| !draining.contains(&shard.shard)) {
        eligible.entry(shard.shard).or_insert(*shard);
    }
    eligible
}

/// Moves that leave every eligible (listed, not draining) shard with `floor(SLOT_COUNT / n)`
/// or `ceil(SLOT_COUNT / n)` slots and every other owner (draining, or absent from `shards`
/// because dead or removed) with none, moving as few slots as possible.
///
/// Minimality: a shard keeps at most `min(owned, quota)` of its slots, so the moves are at
/// least the sum of `max(0, owned - quota)`; the plan frees exactly that surplus and hands
/// it to shards under quota. The `SLOT_COUNT % n` ceil quotas go to the shards that own the
/// most today, which maximizes what stays in place.
///
/// Layout: an over-quota shard keeps its lowest slots and frees the rest, and freed slots
/// are handed out in slot order, preferring the receiver that owns the slot just before, so
/// receivers tend to get contiguous ranges and the map stays short.
///
/// Moves come in slot order; the same input always gives the same plan.
pub fn plan_balance(shards: &[PlanShard], owners: &[ShardRef]) -> Result<Vec<Move>, PlanError> {
    if owners.len() != SLOT_COUNT as usize {
        return Err(PlanError::WrongOwnersLength { length: owners.len() });
    }
    let eligible = eligible_shards(shards);
    if eligible.is_empty() {
        return Err(PlanError::NoEligibleShard);
    }

    let mut owned: BTreeMap<ShardRef, u32> = eligible.keys().map(|shard| (*shard, 0)).collect();
    for owner in owners {
        *owned.entry(*owner).or_insert(0) += 1;
    }

    let eligible_count = eligible.len() as u32;
    let floor_quota = SLOT_COUNT / eligible_count;
    let ceil_quotas = (SLOT_COUNT % eligible_count) as usize;
    let mut by_owned_descending: Vec<ShardRef> = eligible.keys().copied().collect();
    by_owned_descending.sort_by_key(|shard| std::cmp::Reverse(owned[shard]));
    let quotas: BTreeMap<ShardRef, u32> = by_owned_descending
        .iter()
        .enumerate()
        .map(|(rank, shard)| (*shard, floor_quota + u32::from(rank < ceil_quotas)))
        .collect();

    let mut deficits: BTreeMap<ShardRef, u32> = quotas
        .iter()
        .filter(|(shard, quota)| owned[shard] < **quota)
        .map(|(shard, quota)| (*shard, quota - owned[shard]))
        .collect();
    let receivers: Vec<ShardRef> = deficits.keys().copied().collect();
    let mut next_receiver = 0;

    let mut kept: BTreeMap<ShardRef, u32> = BTreeMap::new();
    let mut moves = Vec::new();
    let mut previous_final_owner: Option<ShardRef> = None;
    for (slot, owner) in owners.iter().enumerate() {
        let quota = quotas.get(owner).copied().unwrap_or(0);
        let kept_by_owner = kept.entry(*owner).or_insert(0);
        let final_owner = if *kept_by_owner < quota {
            *kept_by_owner += 1;
            *owner
        } else {
            let has_room = |shard: &ShardRef| deficits.get(shard).is_some_and(|deficit| *deficit > 0);
            let target = match previous_final_owner.filter(has_room) {
                Some(neighbour) => neighbour,
                None => {
                    while !has_room(&receivers[next_receiver]) {
                        next_receiver += 1;
                    }
                    receivers[next_receiver]
                }
            };
            // The deficits add up to the freed slots (both sides sum to SLOT_COUNT), so a
            // receiver with room always exists and none is overfilled.
            *deficits.get_mut(&target).expect("target is a receiver") -= 1;
            moves.push(Move {
                slot: slot as u32,
                from: *owner,
                to: target,
            });
            target
        };
        previous_final_owner = Some(final_owner);
    }
    Ok(moves)
}

/// Moves a few slots away from shards running far hotter than the rest.
///
/// The rule:
/// - Only eligible (listed, not draining) shards give or receive; draining is
///   [`plan_balance`]'s business.
/// - A shard's *pressure* is the larger of its operations per second and its memory, each
///   divided by the mean over eligible shards (a dimension whose mean is zero is ignored).
///   A shard is *hot* when its pressure exceeds `policy.hot_ratio`; with no hot shard the
///   plan is empty.
/// - A shard's load is spread over the slots it owns in proportion to `slot_load(slot)`
///   (negative or non-finite weights count as zero; all-zero weights mean uniform), so
///   moving a slot moves that share of both its operations and its memory.
/// - Repeatedly, the hottest shard gives to the coolest other shard its heaviest slot whose
///   move leaves the receiver no hotter than the giver is after the move, so a move never
///   creates a new hot spot, and loads only converge. A giver stops once it is no longer
///   hot or no slot fits; planning stops after `policy.moves_max` moves.
/// - A slot moves at most once per plan, so every move's `from` is the slot's owner in
///   `owners` and the moves can be grouped into migrations in any order.
///
/// Slots are the indexes of `owners`; owners that are not eligible keep their slots.
pub fn plan_load(
    shards: &[PlanShard],
    owners: &[ShardRef],
    slot_load: &dyn Fn(u32) -> f64,
    policy: &LoadPolicy,
) -> Vec<Move> {
    let eligible = eligible_shards(shards);
    if eligible.len() < 2 || policy.moves_max == 0 {
        return Vec::new();
    }
    let mut balance = LoadBalance::new(&eligible, owners, slot_load);
    let mut moves = Vec::new();
    let mut exhausted: BTreeSet<ShardRef> = BTreeSet::new();
    while moves.len() < policy.moves_max {
        let Some(giver) = balance.hottest(policy.hot_ratio, &exhausted) else {
            break;
        };
        let Some(receiver) = balance.coolest_except(giver) else {
            break;
        };
        match balance.heaviest_fitting_slot(giver, receiver) {
            Some(index) => moves.push(balance.transfer(giver, index, receiver)),
            None => {
                exhausted.insert(giver);
            }
        }
    }
    moves
}

/// The load-planning state: each eligible shard's load as planned so far, and each slot's
/// fixed share of its owner's measured load.
struct LoadBalance {
    pressure: Pressure,
    loads: BTreeMap<ShardRef, ShardLoad>,
    /// What moving each slot moves: its share of its owner's operations and memory.
    transfers: Vec<Load>,
}

/// Operations per second and memory bytes, as planned.
#[derive(Clone, Copy, Default)]
struct Load {
    operations: f64,
    memory: f64,
}

struct ShardLoad {
    load: Load,
    /// Slots this shard owned before planning and has not given away in this plan.
    movable_slots: Vec<u32>,
}

/// Load relative to the eligible shards' means: the larger of the two ratios.
struct Pressure {
    mean: Load,
}

impl Pressure {
    fn of(&self, load: Load) -> f64 {
        let relative = |value: f64, mean: f64| if mean > 0.0 { value / mean } else { 0.0 };
        relative(load.operations, self.mean.operations).max(relative(load.memory, self.mean.memory))
    }
}

impl LoadBalance {
    fn new(eligible: &BTreeMap<ShardRef, PlanShard>, owners: &[ShardRef], slot_load: &dyn Fn(u32) -> f64) -> Self {
        let measured = |plan: &PlanShard| Load {
            operations: plan.operations_per_second,
            memory: plan.memory_bytes as f64,
        };
        let count = eligible.len() as f64;
        let mean = Load {
            operations: eligible.values().map(|plan| measured(plan).operations).sum::<f64>() / count,
            memory: eligible.values().map(|plan| measured(plan).memory).sum::<f64>() / count,
        };
        let mut loads: BTreeMap<ShardRef, ShardLoad> = eligible
            .iter()
            .map(|(shard, plan)| {
                let load = measured(plan);
                (
                    *shard,
                    ShardLoad {
                        load,
                        movable_slots: Vec::new(),
                    },
                )
            })
            .collect();
        for (slot, owner) in owners.iter().enumerate() {
            if let Some(shard) = loads.get_mut(owner) {
                shard.movable_slots.push(slot as u32);
            }
        }
        let transfers = slot_transfers(&loads, owners.len(), slot_load);
        LoadBalance {
            pressure: Pressure { mean },
            loads,
            transfers,
        }
    }

    fn pressure_of(&self, shard: ShardRef) -> f64 {
        self.pressure.of(self.loads[&shard].load)
    }

    /// The hottest shard above `hot_ratio` that may still give. Strict comparisons keep
    /// the first (lowest `ShardRef`) of equals: deterministic.
    fn hottest(&self, hot_ratio: f64, exhausted: &BTreeSet<ShardRef>) -> Option<ShardRef> {
        let mut hottest: Option<(ShardRef, f64)> = None;
        for shard in self.loads.keys().filter(|shard| !exhausted.contains(shard)) {
            let pressure = self.pressure_of(*shard);
            if pressure > hot_ratio && hottest.is_none_or(|(_, highest)| pressure > highest) {
                hottest = Some((*shard, pressure));
            }
        }
        hottest.map(|(shard, _)| shard)
    }

    fn coolest_except(&self, giver: ShardRef) -> Option<ShardRef> {
        let mut coolest: Option<(ShardRef, f64)> = None;
        for shard in self.loads.keys().filter(|shard| **shard != giver) {
            let pressure = self.pressure_of(*shard);
            if coolest.is_none_or(|(_, lowest)| pressure < lowest) {
                coolest = Some((*shard, pressure));
            }
        }
        coolest.map(|(shard, _)| shard)
    }

    /// The index in the giver's movable slots of its heaviest slot whose move leaves the
    /// receiver no hotter than the giver after it.
    fn heaviest_fitting_slot(&self, giver: ShardRef, receiver: ShardRef) -> Option<usize> {
        let giver_load = &self.loads[&giver];
        let receiver_load = self.loads[&receiver].load;
        let mut best: Option<(usize, f64)> = None;
        for (index, slot) in giver_load.movable_slots.iter().enumerate() {
            let moved = self.transfers[*slot as usize];
            let moved_pressure = self.pressure.of(moved);
            // A slot carrying no load would be moved for nothing.
            if moved_pressure <= 0.0 || best.is_some_and(|(_, heaviest)| moved_pressure <= heaviest) {
                continue;
            }
            let giver_after = self.pressure.of(giver_load.load.minus(moved));
            let receiver_after = self.pressure.of(receiver_load.plus(moved));
            if receiver_after <= giver_after {
                best = Some((index, moved_pressure));
            }
        }
        best.map(|(index, _)| index)
    }

    fn transfer(&mut self, giver: ShardRef, index: usize, receiver: ShardRef) -> Move {
        let giver_load = self.loads.get_mut(&giver).expect("giver is eligible");
        let slot = giver_load.movable_slots.remove(index);
        let moved = self.transfers[slot as usize];
        giver_load.load = giver_load.load.minus(moved);
        // The slot lands with the receiver but not among its movable slots: moving it
        // again in the same plan would make this move's `from` stale.
        let receiver_load = self.loads.get_mut(&receiver).expect("receiver is eligible");
        receiver_load.load = receiver_load.load.plus(moved);
        Move {
            slot,
            from: giver,
            to: receiver,
        }
    }
}

impl Load {
    fn plus(self, other: Load) -> Load {
        Load {
            operations: self.operations + other.operations,
            memory: self.memory + other.memory,
        }
    }

    fn minus(self, other: Load) -> Load {
        Load {
            operations: self.operations - other.operations,
            memory: self.memory - other.memory,
        }
    }

    fn scaled(self, share: f64) -> Load {
        Load {
            operations: self.operations * share,
            memory: self.memory * share,
        }
    }
}

/// Each slot's share of its owner's load, fixed at planning time: what the owner measured
/// is all we know, and it does not change because we plan to move slots. Slots of
/// ineligible owners carry nothing.
fn slot_transfers(loads: &BTreeMap<ShardRef, ShardLoad>, slots: usize, slot_load: &dyn Fn(u32) -> f64) -> Vec<Load> {
    let weight = |slot: u32| {
        let weight = slot_load(slot);
        if weight.is_finite() && weight > 0.0 {
            weight
        } else {
            0.0
        }
    };
    let mut transfers = vec![Load::default(); slots];
    for shard in loads.values() {
        let total: f64 = shard.movable_slots.iter().map(|slot| weight(*slot)).sum();
        for slot in &shard.movable_slots {
            let share = if total > 0.0 {
                weight(*slot) / total
            } else {
                1.0 / shard.movable_slots.len() as f64
            };
            transfers[*slot as usize] = shard.load.scaled(share);
        }
    }
    transfers
}

/// Applies `moves` in order: each slot's owner becomes the move's `to`.
///
/// Panics if a slot is out of range of `owners`.
pub fn apply_moves(owners: &mut [ShardRef], moves: &[Move]) {
    for one_move in moves {
        let owner = &mut owners[one_move.slot as usize];
        debug_assert_eq!(
            *owner, one_move.from,
            "move of slot {} planned on another map",
            one_move.slot
        );
        *owner = one_move.to;
    }
}

/// Groups moves into migration batches, one per (from, to) pair, because a migration
/// streams from one source to one target at a time. Batches are ordered by (from, to),
/// and each batch's slots ascend.
pub fn group_moves(moves: &[Move]) -> Vec<(ShardRef, ShardRef, Vec<u32>)> {
    let mut batches: BTreeMap<(ShardRef, ShardRef), Vec<u32>> = BTreeMap::new();
    for one_move in moves {
        batches
            .entry((one_move.from, one_move.to))
            .or_default()
            .push(one_move.slot);
    }
    batches
        .into_iter()
        .map(|((from, to), mut slots)| {
            slots.sort_unstable();
            (from, to, slots)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SLOTS: usize = SLOT_COUNT as usize;

    fn shard(node_id: u64, shard_id: u16) -> ShardRef {
        ShardRef { node_id, shard_id }
    }

    fn plan_shard(shard: ShardRef, draining: bool) -> PlanShard {
        PlanShard {
            shard,
            draining,
            operations_per_second: 1000.0,
            memory_bytes: 1 << 20,
        }
    }

    fn counts(owners: &[ShardRef]) -> BTreeMap<ShardRef, u32> {
        let mut counts = BTreeMap::new();
        for owner in owners {
            *counts.entry(*owner).or_insert(0) += 1;
        }
        counts
    }

    /// Number of maximal runs of equal owners: the length of the slot map's range list.
    fn range_count(owners: &[ShardRef]) -> usize {
        1 + owners.windows(2).filter(|pair| pair[0] != pair[1]).count()
    }

    /// The fewest moves any fair plan needs, computed without the planner's quota
    /// assignment: every non-eligible slot moves; an eligible shard must shed what it owns
    /// above the floor quota, except that each of the `SLOT_COUNT % n` ceil quotas lets one
    /// shard owning more than the floor keep one slot more.
    fn moves_lower_bound(shards: &[PlanShard], owners: &[ShardRef]) -> usize {
        let eligible = eligible_shards(shards);
        let owned = counts(owners);
        let count = eligible.len() as u32;
        let floor_quota = SLOT_COUNT / count;
        let ceil_quotas = SLOT_COUNT % count;
        let mut must_move = 0u32;
        let mut above_floor = 0u32;
        for (owner, slots) in &owned {
            if eligible.contains_key(owner) {
                must_move += slots.saturating_sub(floor_quota);
                above_floor += u32::from(*slots > floor_quota);
            } else {
                must_move += slots;
            }
        }
        (must_move - ceil_quotas.min(above_floor)) as usize
    }

    fn check_moves_are_from_current_owners(owners: &[ShardRef], moves: &[Move]) -> Result<(), TestCaseError> {
        let mut seen = BTreeSet::new();
        for one_move in moves {
            prop_assert!((one_move.slot as usize) < owners.len());
            prop_assert!(seen.insert(one_move.slot), "slot {} moved twice", one_move.slot);
            prop_assert_eq!(one_move.from, owners[one_move.slot as usize]);
            prop_assert_ne!(one_move.from, one_move.to);
        }
        Ok(())
    }

    /// A random cluster: 1..=12 nodes of 1..=4 shards with random draining flags (at least
    /// one shard eligible), and a current owners table mixing listed shards with up to three
    /// unlisted (dead) ones, laid out as runs and then partly scattered.
    fn cluster() -> impl Strategy<Value = (Vec<PlanShard>, Vec<ShardRef>)> {
        (
            prop::collection::vec(1u16..=4, 1..=12),
            prop::collection::vec(any::<bool>(), 48),
            0u64..=3,
            prop::collection::vec((1usize..4000, any::<prop::sample::Index>()), 1..40),
            any::<u64>(),
            0u32..=100,
        )
            .prop_map(
                |(shards_per_node, draining, dead_count, runs, scatter_seed, scatter_percent)| {
                    let mut shards = Vec::new();
                    for (node_index, shard_count) in shards_per_node.iter().enumerate() {
                        for shard_id in 0..*shard_count {
                            let node_id = 10 + node_index as u64;
                            let is_draining = draining[shards.len()];
                            shards.push(plan_shard(shard(node_id, shard_id), is_draining));
                        }
                    }
                    if shards.iter().all(|shard| shard.draining) {
                        shards[0].draining = false;
                    }
                    let mut pool: Vec<ShardRef> = shards.iter().map(|shard| shard.shard).collect();
                    pool.extend((0..dead_count).map(|dead| shard(1000 + dead, 0)));

                    let mut owners = Vec::with_capacity(SLOTS);
                    for (length, pick) in runs.iter().cycle() {
                        let owner = pool[pick.index(pool.len())];
                        let remaining = SLOTS - owners.len();
                        owners.extend(std::iter::repeat_n(owner, (*length).min(remaining)));
                        if owners.len() == SLOTS {
                            break;
                        }
                    }
                    let mut state = scatter_seed | 1;
                    for owner in owners.iter_mut() {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if (state % 100) < u64::from(scatter_percent) {
                            *owner = pool[(state >> 32) as usize % pool.len()];
                        }
                    }
                    (shards, owners)
                },
            )
    }

    proptest! {
        #[test]
        fn balance_is_fair_minimal_and_idempotent((shards, owners) in cluster()) {
            let moves = plan_balance(&shards, &owners).unwrap();
            check_moves_are_from_current_owners(&owners, &moves)?;
            prop_assert_eq!(moves.len(), moves_lower_bound(&shards, &owners));

            let mut balanced = owners.clone();
            apply_moves(&mut balanced, &moves);
            let owned = counts(&balanced);
            let eligible = eligible_shards(&shards);
            let floor_quota = SLOT_COUNT / eligible.len() as u32;
            for (owner, slots) in &owned {
                if eligible.contains_key(owner) {
                    prop_assert!(*slots == floor_quota || *slots == floor_quota + 1, "{owner:?} owns {slots}");
                } else {
                    prop_assert!(false, "{owner:?} is draining or absent yet owns {slots}");
                }
            }
            // An eligible shard owning nothing would be missing from `owned`.
            prop_assert!(floor_quota == 0 || owned.len() == eligible.len());

            prop_assert_eq!(plan_balance(&shards, &balanced).unwrap(), Vec::new());
            prop_assert_eq!(plan_balance(&shards, &owners).unwrap(), moves);
        }

        #[test]
        fn load_plan_respects_its_bounds(
            (mut shards, owners) in cluster(),
            operations in prop::collection::vec(0.0f64..10_000.0, 48),
            memory in prop::collection::vec(0u64..1 << 30, 48),
            hot_ratio in 1.0f64..3.0,
            moves_max in 0usize..200,
            weighted in any::<bool>(),
        ) {
            for (index, plan) in shards.iter_mut().enumerate() {
                plan.operations_per_second = operations[index];
                plan.memory_bytes = memory[index];
            }
            let policy = LoadPolicy { hot_ratio, moves_max };
            let slot_load = |slot: u32| if weighted { f64::from(slot % 7) } else { 1.0 };
            let moves = plan_load(&shards, &owners, &slot_load, &policy);
            prop_assert!(moves.len() <= moves_max);
            check_moves_are_from_current_owners(&owners, &moves)?;
            let eligible = eligible_shards(&shards);
            for one_move in &moves {
                prop_assert!(eligible.contains_key(&one_move.to), "move to draining or unknown {:?}", one_move.to);
                prop_assert!(eligible.contains_key(&one_move.from));
            }
            prop_assert_eq!(plan_load(&shards, &owners, &slot_load, &policy), moves);
        }

        #[test]
        fn load_plan_never_raises_the_peak((mut shards, owners) in cluster(), operations in prop::collection::vec(0.0f64..10_000.0, 48)) {
            for (index, plan) in shards.iter_mut().enumerate() {
                plan.operations_per_second = operations[index];
                plan.memory_bytes = 0;
            }
            let moves = plan_load(&shards, &owners, &|_| 1.0, &LoadPolicy { hot_ratio: 1.2, moves_max: 500 });
            // Recompute the loads independently: each shard's operations spread evenly over
            // the slots it owned, following the slots to their new owners.
            let eligible = eligible_shards(&shards);
            let owned = counts(&owners);
            let per_slot = |owner: &ShardRef| eligible[owner].operations_per_second / f64::from(owned[owner]);
            let mut before: BTreeMap<ShardRef, f64> = eligible.keys().map(|shard| (*shard, 0.0)).collect();
            for owner in owners.iter().filter(|owner| eligible.contains_key(owner)) {
                *before.get_mut(owner).unwrap() += per_slot(owner);
            }
            let mut after = before.clone();
            for one_move in &moves {
                let share = per_slot(&one_move.from);
                *after.get_mut(&one_move.from).unwrap() -= share;
                *after.get_mut(&one_move.to).unwrap() += share;
            }
            let peak = |loads: &BTreeMap<ShardRef, f64>| loads.values().copied().fold(0.0, f64::max);
            prop_assert!(peak(&after) <= peak(&before) * (1.0 + 1e-9), "peak rose {} -> {}", peak(&before), peak(&after));
        }

        #[test]
        fn equal_loads_give_no_moves((shards, owners) in cluster(), hot_ratio in 1.0f64..3.0, moves_max in 0usize..200) {
            let policy = LoadPolicy { hot_ratio, moves_max };
            prop_assert_eq!(plan_load(&shards, &owners, &|_| 1.0, &policy), Vec::new());
            prop_assert_eq!(plan_load(&shards, &owners, &|slot| f64::from(slot % 5), &policy), Vec::new());
        }
    }

    #[test]
    fn errors() {
        let shards = [plan_shard(shard(1, 0), false)];
        assert_eq!(
            plan_balance(&shards, &[shard(1, 0); 10]),
            Err(PlanError::WrongOwnersLength { length: 10 })
        );
        let owners = vec![shard(1, 0); SLOTS];
        assert_eq!(plan_balance(&[], &owners), Err(PlanError::NoEligibleShard));
        let draining = [plan_shard(shard(1, 0), true), plan_shard(shard(1, 1), true)];
        assert_eq!(plan_balance(&draining, &owners), Err(PlanError::NoEligibleShard));
        // Draining anywhere wins over a duplicate entry saying otherwise.
        let conflicting = [plan_shard(shard(1, 0), false), plan_shard(shard(1, 0), true)];
        assert_eq!(plan_balance(&conflicting, &owners), Err(PlanError::NoEligibleShard));
    }

    #[test]
    fn joining_node_takes_contiguous_ranges() {
        let old: Vec<ShardRef> = (0..4).map(|id| shard(1, id)).collect();
        let mut owners = Vec::with_capacity(SLOTS);
        for owner in &old {
            owners.extend(std::iter::repeat_n(*owner, SLOTS / 4));
        }
        let mut shards: Vec<PlanShard> = old.iter().map(|owner| plan_shard(*owner, false)).collect();
        shards.extend((0..4).map(|id| plan_shard(shard(2, id), false)));
        let moves = plan_balance(&shards, &owners).unwrap();
        assert_eq!(moves.len(), SLOTS / 2);
        let mut balanced = owners.clone();
        apply_moves(&mut balanced, &moves);
        assert_eq!(range_count(&balanced), 8, "one range per shard");
        let batches = group_moves(&moves);
        assert_eq!(batches.len(), 4, "each old shard feeds exactly one new shard");
        for (from, to, slots) in &batches {
            assert_eq!(from.node_id, 1);
            assert_eq!(to.node_id, 2);
            assert_eq!(slots.len(), SLOTS / 8);
            assert!(slots.windows(2).all(|pair| pair[1] == pair[0] + 1), "contiguous batch");
        }
    }

    #[test]
    fn dead_node_slots_go_to_neighbours_in_ranges() {
        let survivors: Vec<ShardRef> = (0..3).map(|id| shard(1, id)).collect();
        let dead = shard(9, 0);
        let mut owners = Vec::with_capacity(SLOTS);
        for owner in survivors.iter().chain([&dead]) {
            owners.extend(std::iter::repeat_n(*owner, SLOTS / 4));
        }
        let shards: Vec<PlanShard> = survivors.iter().map(|owner| plan_shard(*owner, false)).collect();
        let moves = plan_balance(&shards, &owners).unwrap();
        assert_eq!(moves.len(), SLOTS / 4);
        assert!(moves.iter().all(|one_move| one_move.from == dead));
        let mut balanced = owners.clone();
        apply_moves(&mut balanced, &moves);
        // Shard (1, 2) sits next to the dead range and extends into it; the other two take
        // one range each.
        assert_eq!(range_count(&balanced), 5);
        assert!(!balanced.contains(&dead));
    }

    #[test]
    fn ceil_quotas_go_to_the_largest_owners() {
        // 16384 = 3 * 5461 + 1: the one ceil quota belongs to whoever owns the most.
        let shards: Vec<PlanShard> = (0..3).map(|id| plan_shard(shard(1, id), false)).collect();
        let mut owners = vec![shard(1, 0); 5461];
        owners.extend(vec![shard(1, 1); 5461]);
        owners.extend(vec![shard(1, 2); 5462]);
        assert_eq!(plan_balance(&shards, &owners).unwrap(), Vec::new());
    }

    #[test]
    fn hot_shard_sheds_to_the_coolest() {
        let shards: Vec<PlanShard> = (0..4)
            .map(|id| PlanShard {
                operations_per_second: if id == 0 { 4000.0 } else { 1000.0 },
                ..plan_shard(shard(1, id), false)
            })
            .chain([PlanShard {
                operations_per_second: 0.0,
                ..plan_shard(shard(2, 0), true)
            }])
            .collect();
        let mut owners = Vec::with_capacity(SLOTS);
        for id in 0..4 {
            owners.extend(std::iter::repeat_n(shard(1, id), SLOTS / 4));
        }
        let policy = LoadPolicy {
            hot_ratio: 1.5,
            moves_max: 10_000,
        };
        let moves = plan_load(&shards, &owners, &|_| 1.0, &policy);
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|one_move| one_move.from == shard(1, 0)));
        assert!(moves.iter().all(|one_move| one_move.to != shard(2, 0)));
        // Mean 1750, so the giver sheds until it is at most 1.5 * 1750 = 2625 op/s: each
        // slot carries 4000 / 4096 op/s, hence 1408 slots.
        assert_eq!(moves.len(), 1408);
        let capped = plan_load(&shards, &owners, &|_| 1.0, &LoadPolicy { moves_max: 5, ..policy });
        assert_eq!(capped, moves[..5]);
    }

    #[test]
    fn a_single_hot_slot_is_not_moved() {
        // All of shard 0's load is in one slot: moving it would only move the hot spot.
        let shards: Vec<PlanShard> = (0..3)
            .map(|id| PlanShard {
                operations_per_second: if id == 0 { 9000.0 } else { 100.0 },
                ..plan_shard(shard(1, id), false)
            })
            .collect();
        let mut owners = Vec::with_capacity(SLOTS);
        for id in 0..3 {
            owners.extend(std::iter::repeat_n(shard(1, id), SLOTS / 3));
        }
        owners.resize(SLOTS, shard(1, 2));
        let moves = plan_load(
            &shards,
            &owners,
            &|slot| if slot == 7 { 1.0 } else { 0.0 },
            &LoadPolicy::default(),
        );
        assert_eq!(moves, Vec::new());
    }

    #[test]
    fn grouping_batches_by_pair() {
        let (first, second, third) = (shard(1, 0), shard(1, 1), shard(2, 0));
        let moves = [
            Move {
                slot: 9,
                from: first,
                to: second,
            },
            Move {
                slot: 3,
                from: third,
                to: second,
            },
            Move {
                slot: 2,
                from: first,
                to: second,
            },
            Move {
                slot: 5,
                from: first,
                to: third,
            },
        ];
        assert_eq!(
            group_moves(&moves),
            vec![
                (first, second, vec![2, 9]),
                (first, third, vec![5]),
                (third, second, vec![3]),
            ]
        );
        let mut owners = vec![first; 10];
        owners[3] = third;
        apply_moves(&mut owners, &moves);
        assert_eq!(owners[2], second);
        assert_eq!(owners[3], second);
        assert_eq!(owners[5], third);
        assert_eq!(owners[9], second);
    }
}
