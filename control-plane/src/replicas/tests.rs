use std::collections::{BTreeMap, BTreeSet};

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{embedded_map, ShardAddress, SlotRange, LOST_SHARD_INDEX};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::planner::{apply_moves, plan_balance, PlanShard};

const SLOTS: usize = SLOT_COUNT as usize;

fn shard(node_id: u64, shard_id: u16) -> ShardRef {
    ShardRef { node_id, shard_id }
}

fn replica_shard(shard: ShardRef, zone: &str, draining: bool) -> ReplicaShard {
    ReplicaShard {
        shard,
        zone: zone.into(),
        draining,
    }
}

/// `nodes` nodes (ids from 1) of `shards_per_node` shards, node `n` in
/// `zones[n % zones.len()]` (no zone when `zones` is empty).
fn cluster_of(nodes: u64, shards_per_node: u16, zones: &[&str]) -> Vec<ReplicaShard> {
    (1..=nodes)
        .flat_map(|node_id| {
            let zone = if zones.is_empty() {
                ""
            } else {
                zones[node_id as usize % zones.len()]
            };
            (0..shards_per_node).map(move |shard_id| replica_shard(shard(node_id, shard_id), zone, false))
        })
        .collect()
}

/// Every slot owned, in equal contiguous runs, by the shards in order.
fn runs_of(owners: &[ShardRef]) -> Vec<Option<ShardRef>> {
    (0..SLOTS)
        .map(|slot| Some(owners[slot * owners.len() / SLOTS]))
        .collect()
}

fn shards_of(cluster: &[ReplicaShard]) -> Vec<ShardRef> {
    cluster.iter().map(|shard| shard.shard).collect()
}

fn no_backups() -> Vec<Vec<ShardRef>> {
    vec![Vec::new(); SLOTS]
}

fn counts(backups: &[Vec<ShardRef>]) -> BTreeMap<ShardRef, u32> {
    let mut counts = BTreeMap::new();
    for backup in backups.iter().flatten() {
        *counts.entry(*backup).or_insert(0) += 1;
    }
    counts
}

/// Fewest and most backups over `shards` (those holding none count as 0).
fn spread(shards: &[ShardRef], backups: &[Vec<ShardRef>]) -> (u32, u32) {
    let counts = counts(backups);
    let held = shards.iter().map(|shard| counts.get(shard).copied().unwrap_or(0));
    (held.clone().min().unwrap_or(0), held.max().unwrap_or(0))
}

/// How many backup ranges a map of these backups holds.
fn range_count(backups: &[Vec<ShardRef>]) -> usize {
    let mut ranges = 0;
    for (slot, list) in backups.iter().enumerate() {
        if !list.is_empty() && (slot == 0 || backups[slot - 1] != *list) {
            ranges += 1;
        }
    }
    ranges
}

fn eligible(shards: &[ReplicaShard]) -> BTreeMap<ShardRef, &str> {
    let draining: BTreeSet<ShardRef> = shards.iter().filter(|s| s.draining).map(|s| s.shard).collect();
    let mut eligible = BTreeMap::new();
    for shard in shards.iter().filter(|shard| !draining.contains(&shard.shard)) {
        eligible.entry(shard.shard).or_insert(shard.zone.as_str());
    }
    eligible
}

/// The backups `slot` may have at most: `replicas`, or the eligible nodes besides its
/// owner's.
fn slot_target(shards: &[ReplicaShard], primary: Option<ShardRef>, replicas: usize) -> usize {
    let Some(primary) = primary else {
        return 0;
    };
    let nodes: BTreeSet<u64> = eligible(shards).keys().map(|shard| shard.node_id).collect();
    replicas.min(nodes.len() - usize::from(nodes.contains(&primary.node_id)))
}

/// What every plan holds: each served slot backed up as much as the nodes allow, on
/// eligible shards, never two copies on one node; no backup of a lost slot; the
/// under-replicated count right.
fn check_placement(
    shards: &[ReplicaShard],
    primaries: &[Option<ShardRef>],
    plan: &BackupPlan,
    replicas: usize,
) -> Result<(), TestCaseError> {
    let eligible = eligible(shards);
    prop_assert_eq!(plan.backups.len(), SLOTS);
    let mut under_replicated = 0;
    for (slot, (primary, backups)) in primaries.iter().zip(&plan.backups).enumerate() {
        let target = slot_target(shards, *primary, replicas);
        prop_assert_eq!(backups.len(), target, "slot {} of {:?}: {:?}", slot, primary, backups);
        let Some(primary) = primary else {
            continue;
        };
        under_replicated += u32::from(target < replicas);
        let mut nodes = BTreeSet::from([primary.node_id]);
        for backup in backups {
            prop_assert!(eligible.contains_key(backup), "slot {slot}: {backup:?} is not eligible");
            prop_assert!(
                nodes.insert(backup.node_id),
                "slot {slot}: two copies on node {}",
                backup.node_id
            );
        }
    }
    prop_assert_eq!(plan.under_replicated, under_replicated);
    Ok(())
}

/// Per shard, the current backups that are valid (eligible, first on their node, within
/// the slot's count), as [`plan_backups`] defines them.
fn valid_current(
    shards: &[ReplicaShard],
    primaries: &[Option<ShardRef>],
    current: &[Vec<ShardRef>],
    replicas: usize,
) -> BTreeMap<ShardRef, Vec<u32>> {
    let eligible = eligible(shards);
    let mut valid: BTreeMap<ShardRef, Vec<u32>> = BTreeMap::new();
    for (slot, primary) in primaries.iter().enumerate() {
        let Some(primary) = primary else { continue };
        let target = slot_target(shards, Some(*primary), replicas);
        let mut nodes = vec![primary.node_id];
        let mut kept = 0;
        for backup in &current[slot] {
            if kept < target && eligible.contains_key(backup) && !nodes.contains(&backup.node_id) {
                nodes.push(backup.node_id);
                kept += 1;
                valid.entry(*backup).or_default().push(slot as u32);
            }
        }
    }
    valid
}

/// Valid current backups move only to balance: a shard that loses one still holds at
/// least the fair share's floor.
fn check_kept(
    shards: &[ReplicaShard],
    primaries: &[Option<ShardRef>],
    current: &[Vec<ShardRef>],
    plan: &BackupPlan,
    replicas: usize,
) -> Result<(), TestCaseError> {
    let demand: usize = primaries
        .iter()
        .map(|primary| slot_target(shards, *primary, replicas))
        .sum();
    let eligible_count = eligible(shards).len();
    let floor = demand.checked_div(eligible_count).unwrap_or(0);
    let held = counts(&plan.backups);
    for (shard, slots) in valid_current(shards, primaries, current, replicas) {
        let dropped = slots
            .iter()
            .filter(|slot| !plan.backups[**slot as usize].contains(&shard))
            .count();
        let ends_with = held.get(&shard).copied().unwrap_or(0) as usize;
        prop_assert!(
            dropped == 0 || ends_with >= floor,
            "{shard:?} lost {dropped} of its {} valid backups and holds {ends_with}, below the floor {floor}",
            slots.len()
        );
    }
    Ok(())
}

#[test]
fn a_fresh_plan_is_even_and_made_of_few_ranges() {
    for (nodes, shards_per_node, replicas) in [(4, 1, 2), (4, 2, 1), (3, 1, 1), (5, 3, 2)] {
        let shards = cluster_of(nodes, shards_per_node, &[]);
        let primaries = runs_of(&shards_of(&shards));
        let plan = plan_backups(&shards, &primaries, &no_backups(), replicas).unwrap();
        check_placement(&shards, &primaries, &plan, replicas).unwrap();
        assert_eq!(plan.under_replicated, 0);
        let (fewest, most) = spread(&shards_of(&shards), &plan.backups);
        assert!(
            most - fewest <= 1,
            "{nodes}x{shards_per_node} r{replicas}: {fewest}..{most}"
        );
        let shard_count = shards.len();
        assert!(
            range_count(&plan.backups) <= 2 * shard_count,
            "{nodes}x{shards_per_node} r{replicas}: {} ranges for {shard_count} shards",
            range_count(&plan.backups)
        );
        assert_eq!(
            plan_backups(&shards, &primaries, &no_backups(), replicas).unwrap(),
            plan
        );
    }
}

#[test]
fn four_single_shard_nodes_with_two_replicas_need_four_ranges() {
    let shards = cluster_of(4, 1, &[]);
    let primaries = runs_of(&shards_of(&shards));
    let plan = plan_backups(&shards, &primaries, &no_backups(), 2).unwrap();
    assert_eq!(range_count(&plan.backups), 4, "one range per owner");
    assert!(counts(&plan.backups).values().all(|count| *count == 8192));
}

#[test]
fn a_joining_node_takes_its_fair_share_and_nothing_else_moves() {
    let before = cluster_of(3, 1, &[]);
    let primaries = runs_of(&shards_of(&before));
    let first = plan_backups(&before, &primaries, &no_backups(), 1).unwrap();

    let after = cluster_of(4, 1, &[]);
    let mut owners: Vec<ShardRef> = primaries.iter().map(|primary| primary.unwrap()).collect();
    let plan_shards: Vec<PlanShard> = after
        .iter()
        .map(|shard| PlanShard {
            shard: shard.shard,
            draining: false,
            operations_per_second: 0.0,
            memory_bytes: 0,
        })
        .collect();
    let moves = plan_balance(&plan_shards, &owners).unwrap();
    apply_moves(&mut owners, &moves);
    let moved_primaries: Vec<Option<ShardRef>> = owners.into_iter().map(Some).collect();
    let second = plan_backups(&after, &moved_primaries, &first.backups, 1).unwrap();
    check_placement(&after, &moved_primaries, &second, 1).unwrap();

    let newcomer = shard(4, 0);
    let mut copied = 0;
    for (slot, (old, new)) in first.backups.iter().zip(&second.backups).enumerate() {
        if old != new {
            copied += 1;
            assert_eq!(new, &vec![newcomer], "slot {slot}: {old:?} -> {new:?}");
        }
    }
    assert_eq!(copied, SLOTS / 4, "exactly the newcomer's fair share is copied");
    assert!(counts(&second.backups).values().all(|count| *count == 4096));
    assert!(range_count(&second.backups) <= 12, "{}", range_count(&second.backups));
}

/// Node 2 of four drains: each slot owned by nodes 1, 3 or 4 then has its backups on the
/// other two of them, whatever it had, and only the backups of node 2's slots may go
/// anywhere. Node 1 ends up lighter unless some of those move to it: the plan copies
/// node 2's backups elsewhere and what node 1 lacks, and next to nothing more.
#[test]
fn a_draining_node_gives_up_its_backups_and_only_balance_moves_others() {
    let shards = cluster_of(4, 2, &[]);
    let primaries = runs_of(&shards_of(&shards));
    let first = plan_backups(&shards, &primaries, &no_backups(), 2).unwrap();
    let mut draining = shards.clone();
    for shard in draining.iter_mut().filter(|shard| shard.shard.node_id == 2) {
        shard.draining = true;
    }
    let second = plan_backups(&draining, &primaries, &first.backups, 2).unwrap();
    check_placement(&draining, &primaries, &second, 2).unwrap();
    let mut copied = 0;
    for (old, new) in first.backups.iter().zip(&second.backups) {
        assert!(new.iter().all(|backup| backup.node_id != 2));
        copied += new.iter().filter(|backup| !old.contains(backup)).count();
    }
    let remaining: Vec<ShardRef> = shards_of(&shards).into_iter().filter(|s| s.node_id != 2).collect();
    let (fewest, most) = spread(&remaining, &second.backups);
    assert!(most - fewest <= 1, "{fewest}..{most}");
    let node_one = |backups: &[Vec<ShardRef>]| {
        let counts = counts(backups);
        counts[&shard(1, 0)] + counts[&shard(1, 1)]
    };
    assert_eq!(node_one(&first.backups), 8192);
    assert_eq!(node_one(&second.backups), 2 * 5461);
    // Node 1 already backs every slot of nodes 3 and 4 it must (the first plan put
    // node 2's backups on slots of nodes 1, 3 and 4 alike), so what it lacks comes from
    // node 2's slots, on top of the 8192 backups node 2 held. Which shards end at the
    // ceiling rather than the floor may cost one more copy per shard.
    let least = 8192 + (2 * 5461 - 8192);
    assert!((least..=least + 6).contains(&copied), "{copied} copies");
}

#[test]
fn backups_go_to_other_zones_first() {
    // Six nodes in three zones, two backups: every slot's three copies in three zones.
    let shards = cluster_of(6, 1, &["a", "b", "c"]);
    let primaries = runs_of(&shards_of(&shards));
    let plan = plan_backups(&shards, &primaries, &no_backups(), 2).unwrap();
    check_placement(&shards, &primaries, &plan, 2).unwrap();
    let zone = |shard: ShardRef| ["a", "b", "c"][shard.node_id as usize % 3];
    for (primary, backups) in primaries.iter().zip(&plan.backups) {
        let zones: BTreeSet<&str> = std::iter::once(primary.unwrap())
            .chain(backups.iter().copied())
            .map(zone)
            .collect();
        assert_eq!(zones.len(), 3, "{primary:?} {backups:?}");
    }
    let (fewest, most) = spread(&shards_of(&shards), &plan.backups);
    assert!(most - fewest <= 1, "zones evenly filled here: {fewest}..{most}");
}

/// Twenty nodes in three zones, the first with six nodes and the others seven, two
/// backups: every slot's copies are in three zones, so the smaller zone backs more
/// slots per shard than the fair share, and that surplus is spread over its shards.
#[test]
fn a_smaller_zone_carries_more_backups_spread_over_its_shards() {
    let zones = ["a", "b", "c"];
    let shards = cluster_of(20, 4, &zones);
    let primaries = runs_of(&shards_of(&shards));
    let plan = plan_backups(&shards, &primaries, &no_backups(), 2).unwrap();
    check_placement(&shards, &primaries, &plan, 2).unwrap();
    let zone = |shard: &ShardRef| zones[shard.node_id as usize % 3];
    for (primary, backups) in primaries.iter().zip(&plan.backups) {
        let copies: BTreeSet<&str> = std::iter::once(primary.as_ref().unwrap())
            .chain(backups)
            .map(zone)
            .collect();
        assert_eq!(copies.len(), 3, "{primary:?} {backups:?}");
    }
    let counts = counts(&plan.backups);
    for name in zones {
        let held: Vec<u32> = counts
            .iter()
            .filter(|(shard, _)| zone(shard) == name)
            .map(|(_, count)| *count)
            .collect();
        let (fewest, most) = (held.iter().min().unwrap(), held.iter().max().unwrap());
        assert!(most - fewest <= 1, "zone {name}: {fewest}..{most}");
    }
    // Zone a's six nodes back the slots of the other fourteen: 16384 * 14 / 20 copies
    // over 24 shards, above the fair share of 32768 / 80.
    assert!(counts[&shard(3, 0)] >= 16384 * 14 / 20 / 24);
    assert!(
        range_count(&plan.backups) <= 3 * shards.len(),
        "{}",
        range_count(&plan.backups)
    );
}

#[test]
fn too_few_nodes_leave_slots_under_replicated_and_lost_slots_get_nothing() {
    let shards = cluster_of(2, 2, &[]);
    let mut primaries = runs_of(&shards_of(&shards));
    for primary in &mut primaries[..100] {
        *primary = None;
    }
    let plan = plan_backups(&shards, &primaries, &no_backups(), 3).unwrap();
    check_placement(&shards, &primaries, &plan, 3).unwrap();
    assert_eq!(plan.under_replicated, SLOT_COUNT - 100);
    assert!(plan.backups[..100].iter().all(Vec::is_empty));
    assert!(plan.backups[100..].iter().all(|backups| backups.len() == 1));

    let alone = cluster_of(1, 4, &[]);
    let primaries = runs_of(&shards_of(&alone));
    let plan = plan_backups(&alone, &primaries, &no_backups(), 1).unwrap();
    assert_eq!(plan.under_replicated, SLOT_COUNT);
    assert!(plan.backups.iter().all(Vec::is_empty));

    let none = plan_backups(&shards, &runs_of(&shards_of(&shards)), &no_backups(), 0).unwrap();
    assert_eq!(none.under_replicated, 0);
    assert!(none.backups.iter().all(Vec::is_empty));
}

#[test]
fn errors_name_what_is_wrong() {
    let shards = cluster_of(2, 1, &[]);
    let primaries = runs_of(&shards_of(&shards));
    assert_eq!(
        plan_backups(&shards, &primaries[..10], &no_backups(), 1),
        Err(ReplicaError::WrongPrimariesLength { length: 10 })
    );
    assert_eq!(
        plan_backups(&shards, &primaries, &[], 1),
        Err(ReplicaError::WrongCurrentLength { length: 0 })
    );
    let error = plan_backups(&shards, &primaries, &no_backups(), REPLICAS_MAX + 1).unwrap_err();
    assert_eq!(
        error,
        ReplicaError::TooManyReplicas {
            replicas: REPLICAS_MAX + 1
        }
    );
    assert!(error.to_string().contains("replicas_max"), "{error}");
}

#[test]
fn fail_over_promotes_the_first_live_backup_and_loses_what_has_none() {
    let (a, b, c) = (shard(1, 0), shard(2, 0), shard(3, 0));
    let primaries = [Some(a), Some(a), Some(b), Some(a), None, None];
    let backups = [vec![b, c], vec![c, b], vec![a], vec![b], vec![c], vec![]];
    let outcome = fail_over(&primaries, &backups, &BTreeSet::from([1, 2]));
    assert_eq!(outcome.primaries, [Some(c), Some(c), None, None, Some(c), None]);
    assert_eq!(outcome.backups, vec![Vec::<ShardRef>::new(); 6]);
    assert_eq!(
        outcome.promoted,
        [
            Promotion {
                slot: 0,
                from: Some(a),
                to: c
            },
            Promotion {
                slot: 1,
                from: Some(a),
                to: c
            },
            Promotion {
                slot: 4,
                from: None,
                to: c
            },
        ]
    );
    assert_eq!(outcome.lost, [2, 3]);

    let only_b = fail_over(&primaries, &backups, &BTreeSet::from([2]));
    assert_eq!(only_b.primaries[..4], [Some(a), Some(a), Some(a), Some(a)]);
    assert_eq!(only_b.backups[..2], [vec![c], vec![c]]);
    assert!(only_b.backups[2].is_empty(), "the promoted backup leaves the list");
    assert!(only_b.backups[3].is_empty(), "a dead backup is dropped");
    assert_eq!(only_b.promoted.len(), 2, "{:?}", only_b.promoted);
    assert_eq!(only_b.lost, Vec::<u32>::new());
}

#[test]
fn map_tables_and_backup_ranges_convert_both_ways() {
    let address = |node_id, shard_id| ShardAddress {
        node_id,
        shard_id,
        address: format!("10.0.0.{node_id}:{}", 7401 + shard_id),
        incarnation: 0,
    };
    let mut map = embedded_map(vec![address(1, 0), address(1, 1)]);
    map.shards.extend([address(2, 0), address(3, 0)]);
    map.ranges[0] = SlotRange {
        shard_index: LOST_SHARD_INDEX,
        ..map.ranges[0]
    };
    let (primaries, _) = slot_tables(&map);
    let shards: Vec<ReplicaShard> = map
        .shards
        .iter()
        .map(|shard| replica_shard(self::shard(shard.node_id, shard.shard_id), "", false))
        .collect();
    let plan = plan_backups(&shards, &primaries, &no_backups(), 2).unwrap();
    map.backups = backup_ranges_of(&plan.backups, &map.shards).unwrap();
    assert_eq!(map.validate(), Ok(()));
    assert_eq!(map.backups.len(), range_count(&plan.backups));
    let (read_primaries, read_backups) = slot_tables(&map);
    assert_eq!(read_primaries, primaries);
    assert_eq!(read_backups, plan.backups);
    assert!(primaries[0].is_none() && read_backups[0].is_empty());

    let stranger = shard(9, 0);
    let mut unlisted = plan.backups.clone();
    unlisted[SLOTS - 1] = vec![stranger];
    assert_eq!(
        backup_ranges_of(&unlisted, &map.shards),
        Err(ReplicaError::UnlistedShard { shard: stranger })
    );
}

/// Shards, owners, current backups, replicas.
type Case = (Vec<ReplicaShard>, Vec<Option<ShardRef>>, Vec<Vec<ShardRef>>, usize);

/// A random cluster: 1..=8 nodes of 1..=3 shards, some draining, in up to four zones
/// (or none); owners laid out in runs over listed shards, up to two unlisted (dead) ones
/// and lost slots; current backups in runs of random lists (valid or not); 0..=4
/// replicas.
fn any_cluster() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((1u16..=3, 0usize..=4, any::<bool>()), 1..=8),
        0usize..=4,
        prop::collection::vec((1usize..3000, any::<prop::sample::Index>()), 1..20),
        prop::collection::vec(
            (1usize..3000, prop::collection::vec(any::<prop::sample::Index>(), 0..4)),
            1..20,
        ),
        0usize..=REPLICAS_MAX,
    )
        .prop_map(|(nodes, zone_count, owner_runs, backup_runs, replicas)| {
            let mut shards = Vec::new();
            for (index, (shard_count, zone, draining)) in nodes.iter().enumerate() {
                let zone = if zone_count == 0 {
                    String::new()
                } else {
                    format!("zone-{}", zone % zone_count)
                };
                for shard_id in 0..*shard_count {
                    shards.push(replica_shard(
                        shard(index as u64 + 1, shard_id),
                        &zone,
                        *draining && shard_id == 0,
                    ));
                }
            }
            let mut pool: Vec<Option<ShardRef>> = shards.iter().map(|shard| Some(shard.shard)).collect();
            pool.extend([Some(shard(100, 0)), Some(shard(101, 0)), None]);
            let primaries = runs(&owner_runs, |pick| pool[pick.index(pool.len())]);
            let backups = runs(&backup_runs, |picks: &Vec<prop::sample::Index>| {
                picks
                    .iter()
                    .filter_map(|pick| pool[pick.index(pool.len())])
                    .collect::<Vec<ShardRef>>()
            });
            (shards, primaries, backups, replicas)
        })
}

/// `SLOTS` values laid out as the given runs, repeated until every slot has one.
fn runs<P, T: Clone>(runs: &[(usize, P)], value: impl Fn(&P) -> T) -> Vec<T> {
    let mut table = Vec::with_capacity(SLOTS);
    for (length, pick) in runs.iter().cycle() {
        let length = (*length).min(SLOTS - table.len());
        table.extend(std::iter::repeat_n(value(pick), length));
        if table.len() == SLOTS {
            break;
        }
    }
    table
}

/// A cluster where every slot can have all its backups and an even spread exists: 2..=6
/// nodes of equal shard counts, no zones, nobody draining, owners balanced by the
/// planner, and (unless nodes have one shard) fewer replicas than other nodes, since
/// with a backup on every other node a node's share is fixed by what it owns. Current
/// backups: none, or a random part of a valid plan.
fn even_cluster() -> impl Strategy<Value = Case> {
    (2u64..=6, 1u16..=3, 1usize..=5, any::<bool>(), any::<u64>()).prop_filter_map(
        "replicas fit the nodes",
        |(nodes, shards_per_node, replicas, keep_some, seed)| {
            let fits = if shards_per_node == 1 {
                replicas < nodes as usize
            } else {
                replicas + 1 < nodes as usize
            };
            if !fits || replicas > REPLICAS_MAX {
                return None;
            }
            let shards = cluster_of(nodes, shards_per_node, &[]);
            let plan_shards: Vec<PlanShard> = shards
                .iter()
                .map(|shard| PlanShard {
                    shard: shard.shard,
                    draining: false,
                    operations_per_second: 0.0,
                    memory_bytes: 0,
                })
                .collect();
            let mut owners = vec![shards[(seed % shards.len() as u64) as usize].shard; SLOTS];
            let moves = plan_balance(&plan_shards, &owners).ok()?;
            apply_moves(&mut owners, &moves);
            let primaries: Vec<Option<ShardRef>> = owners.into_iter().map(Some).collect();
            let mut current = no_backups();
            if keep_some {
                // A valid plan for another owner layout, thinned at random: partly valid.
                let other = runs_of(&shards_of(&shards));
                let plan = plan_backups(&shards, &other, &no_backups(), replicas).ok()?;
                let mut state = seed | 1;
                for (slot, backups) in plan.backups.into_iter().enumerate() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if state % 3 != 0 {
                        current[slot] = backups;
                    }
                }
            }
            Some((shards, primaries, current, replicas))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_plan_keeps_copies_apart_is_repeatable_and_keeps_its_own_result(
        (shards, primaries, current, replicas) in any_cluster()
    ) {
        let plan = plan_backups(&shards, &primaries, &current, replicas).unwrap();
        check_placement(&shards, &primaries, &plan, replicas)?;
        prop_assert_eq!(&plan_backups(&shards, &primaries, &current, replicas).unwrap(), &plan);
        let again = plan_backups(&shards, &primaries, &plan.backups, replicas).unwrap();
        prop_assert_eq!(&again, &plan, "a plan keeps a plan it made");
    }

    #[test]
    fn an_even_cluster_gets_even_backups_and_keeps_them(
        (shards, primaries, current, replicas) in even_cluster()
    ) {
        let plan = plan_backups(&shards, &primaries, &current, replicas).unwrap();
        check_placement(&shards, &primaries, &plan, replicas)?;
        check_kept(&shards, &primaries, &current, &plan, replicas)?;
        prop_assert_eq!(plan.under_replicated, 0);
        let (fewest, most) = spread(&shards_of(&shards), &plan.backups);
        prop_assert!(most - fewest <= 1, "{}..{}", fewest, most);
        let again = plan_backups(&shards, &primaries, &plan.backups, replicas).unwrap();
        prop_assert_eq!(&again, &plan, "a balanced plan stays as it is");
    }

    #[test]
    fn enough_zones_put_every_copy_of_a_slot_in_its_own_zone(
        zones in prop::collection::vec(0usize..6, 2..=8),
        shards_per_node in 1u16..=2,
        replicas in 1usize..=3,
        owner_runs in prop::collection::vec((1usize..3000, any::<prop::sample::Index>()), 1..10),
    ) {
        let zone_names: Vec<String> = zones.iter().map(|zone| format!("zone-{zone}")).collect();
        let shards: Vec<ReplicaShard> = zone_names
            .iter()
            .enumerate()
            .flat_map(|(index, zone)| {
                (0..shards_per_node).map(move |shard_id| replica_shard(shard(index as u64 + 1, shard_id), zone, false))
            })
            .collect();
        let listed = shards_of(&shards);
        let primaries = runs(&owner_runs, |pick| Some(listed[pick.index(listed.len())]));
        let plan = plan_backups(&shards, &primaries, &no_backups(), replicas).unwrap();
        check_placement(&shards, &primaries, &plan, replicas)?;
        let zone_of: BTreeMap<ShardRef, &str> = shards.iter().map(|s| (s.shard, s.zone.as_str())).collect();
        let all_zones: BTreeSet<&str> = zone_of.values().copied().collect();
        for (slot, (primary, backups)) in primaries.iter().zip(&plan.backups).enumerate() {
            let primary = primary.unwrap();
            let other_zones = all_zones.iter().filter(|zone| **zone != zone_of[&primary]).count();
            if other_zones < replicas {
                continue;
            }
            let zones: BTreeSet<&str> = std::iter::once(primary).chain(backups.iter().copied()).map(|s| zone_of[&s]).collect();
            prop_assert_eq!(zones.len(), 1 + backups.len(), "slot {}: {:?} {:?}", slot, primary, backups);
        }
    }

    #[test]
    fn fail_over_promotes_live_copies_only_and_loses_exactly_the_slots_without_one(
        (_, primaries, current, _) in any_cluster(),
        dead in prop::collection::btree_set(1u64..=9, 0..=5),
    ) {
        let mut dead = dead;
        dead.insert(100);
        let outcome = fail_over(&primaries, &current, &dead);
        let live = |shard: &ShardRef| !dead.contains(&shard.node_id);
        prop_assert_eq!(outcome.primaries.len(), SLOTS);
        let mut promoted = outcome.promoted.iter().peekable();
        let mut lost = Vec::new();
        for slot in 0..SLOTS {
            let live_backups: Vec<ShardRef> = current[slot].iter().copied().filter(live).collect();
            let before = primaries[slot];
            let after = outcome.primaries[slot];
            prop_assert!(after.is_none_or(|owner| live(&owner)), "slot {} owned on a dead node", slot);
            prop_assert!(outcome.backups[slot].iter().all(live), "slot {} backed up on a dead node", slot);
            let had_live_copy = before.is_some_and(|owner| live(&owner)) || !live_backups.is_empty();
            prop_assert_eq!(after.is_some(), had_live_copy, "slot {}", slot);
            match before {
                Some(owner) if live(&owner) => {
                    prop_assert_eq!(after, Some(owner));
                    prop_assert_eq!(&outcome.backups[slot], &live_backups);
                }
                _ if had_live_copy => {
                    let promotion = promoted.next();
                    prop_assert_eq!(promotion, Some(&Promotion { slot: slot as u32, from: before, to: live_backups[0] }));
                    prop_assert_eq!(after, Some(live_backups[0]));
                    prop_assert_eq!(&outcome.backups[slot], &live_backups[1..].to_vec());
                }
                Some(_) => lost.push(slot as u32),
                None => {}
            }
        }
        prop_assert_eq!(promoted.next(), None);
        prop_assert_eq!(outcome.lost, lost);
    }
}
