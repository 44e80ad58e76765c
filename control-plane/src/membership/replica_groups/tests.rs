use engram_proto::limits::SLOT_COUNT;
use engram_proto::{Heartbeat, InSyncReport, JoinRequest, ShardLoad, ShardProcessRef};

use super::super::Membership;
use crate::planner::ShardRef;

fn join_request(host: u8, boot_id: u64) -> JoinRequest {
    JoinRequest {
        front_address: format!("127.0.0.{host}:7400"),
        shard_addresses: vec![format!("127.0.0.{host}:7401")],
        memory_limit_bytes: 0,
        boot_id,
        zone: String::new(),
        takes_credentials: false,
    }
}

fn shard(node_id: u64) -> ShardRef {
    ShardRef { node_id, shard_id: 0 }
}

/// Three one-shard nodes owning a third of the slots each, heard from at `now_ms`, and
/// keeping `replicas` backups.
fn three_nodes(replicas: usize) -> (Membership, [u64; 3]) {
    let mut membership = Membership::new();
    membership.set_replicas(replicas).unwrap();
    let ids = [2, 3, 4].map(|host| {
        membership
            .join(&join_request(host, u64::from(host)), 0)
            .unwrap()
            .node_id
    });
    let third = SLOT_COUNT / 3;
    membership.commit_move(&(third..2 * third).collect::<Vec<_>>(), shard(ids[1]));
    membership.commit_move(&(2 * third..SLOT_COUNT).collect::<Vec<_>>(), shard(ids[2]));
    (membership, ids)
}

fn beat(membership: &Membership, node_id: u64, in_sync: Vec<InSyncReport>) -> Heartbeat {
    Heartbeat {
        node_id,
        map_epoch: membership.epoch(),
        shards: vec![ShardLoad {
            keys: 0,
            memory_used_bytes: 0,
            operations_total: 0,
        }],
        migrations: Vec::new(),
        incarnation: membership.member(node_id).unwrap().incarnation,
        in_sync,
    }
}

/// Every node reports each fill it was ordered as in sync, as its shard would once the
/// snapshots are applied; returns how many backups the map named.
fn complete_fills(membership: &mut Membership, nodes: &[u64], now_ms: u64) -> usize {
    let mut named = 0;
    for &node_id in nodes {
        let reports: Vec<InSyncReport> = membership
            .fills_for(node_id)
            .into_iter()
            .map(|fill| InSyncReport {
                shard_id: fill.shard_id,
                map_epoch: membership.epoch(),
                backup: fill.backup,
                slots: fill.slots,
            })
            .collect();
        let heartbeat = beat(membership, node_id, reports);
        membership.heartbeat(&heartbeat, now_ms).unwrap();
        let ready = membership.in_sync_backups(&heartbeat);
        named += membership.commit_backups(&ready);
    }
    named
}

fn hear_all(membership: &mut Membership, nodes: &[u64], now_ms: u64) {
    for &node_id in nodes {
        let heartbeat = beat(membership, node_id, Vec::new());
        membership.heartbeat(&heartbeat, now_ms).unwrap();
    }
}

#[test]
fn a_backup_enters_the_map_only_once_its_primary_reports_it_in_sync() {
    let (mut membership, ids) = three_nodes(1);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    assert_eq!(membership.slots_filling(), SLOT_COUNT);
    assert_eq!(membership.under_replicated(), SLOT_COUNT, "ordered is not named");
    assert!(membership.map().backups.is_empty());
    for fill in ids.iter().flat_map(|&node_id| membership.fills_for(node_id)) {
        assert_ne!(fill.backup.node_id, 0);
    }

    assert_eq!(complete_fills(&mut membership, &ids, 200), SLOT_COUNT as usize);
    assert_eq!(membership.map().validate(), Ok(()));
    assert_eq!(membership.under_replicated(), 0);
    assert_eq!(membership.slots_filling(), 0);
    for (slot, backups) in membership.backups().iter().enumerate() {
        assert_eq!(backups.len(), 1, "slot {slot}");
        assert_ne!(backups[0].node_id, membership.owners()[slot].node_id);
    }
    // A plan made from the placement it reached orders nothing more.
    membership.plan_fills(300).unwrap();
    assert_eq!(membership.slots_filling(), 0);
}

#[test]
fn a_report_under_an_older_map_or_for_another_process_names_nothing() {
    let (mut membership, ids) = three_nodes(1);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    let fill = membership.fills_for(ids[0]).remove(0);
    let report = |map_epoch, incarnation| InSyncReport {
        shard_id: fill.shard_id,
        map_epoch,
        backup: ShardProcessRef {
            incarnation,
            ..fill.backup
        },
        slots: fill.slots.clone(),
    };
    let epoch = membership.epoch();
    let stale = beat(&membership, ids[0], vec![report(epoch - 1, fill.backup.incarnation)]);
    assert!(membership.in_sync_backups(&stale).is_empty());
    let other_process = beat(&membership, ids[0], vec![report(epoch, fill.backup.incarnation + 7)]);
    assert!(membership.in_sync_backups(&other_process).is_empty());
    // Another node cannot vouch for slots it does not own.
    let wrong_primary = beat(&membership, ids[1], vec![report(epoch, fill.backup.incarnation)]);
    assert!(membership.in_sync_backups(&wrong_primary).is_empty());
    let right = beat(&membership, ids[0], vec![report(epoch, fill.backup.incarnation)]);
    assert!(!membership.in_sync_backups(&right).is_empty());
}

#[test]
fn a_dead_owner_s_slots_go_to_their_backups_and_nothing_is_lost() {
    let (mut membership, ids) = three_nodes(1);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    complete_fills(&mut membership, &ids, 200);
    let owned_by_first: Vec<u32> = (0..SLOT_COUNT)
        .filter(|&slot| membership.owners()[slot as usize].node_id == ids[0])
        .collect();
    let backups_before = membership.backups().to_vec();
    let epoch_before = membership.epoch();

    // Node 1 falls silent past the liveness timeout; the others keep beating.
    let later = 200 + super::super::LIVENESS_TIMEOUT_MS + 1;
    hear_all(&mut membership, &ids[1..], later);
    assert!(membership.has_dead_to_declare(later));
    let dead = membership.declare_dead(later);
    assert_eq!(dead.len(), 1);
    let failure = &dead[0].1;
    assert_eq!(failure.promoted, owned_by_first);
    assert!(failure.lost.is_empty());
    assert!(failure.backups_dropped > 0);
    assert_eq!(membership.lost_count(), 0);
    assert_eq!(membership.failovers_total(), owned_by_first.len() as u64);
    assert!(membership.epoch() > epoch_before);
    assert_eq!(membership.map().validate(), Ok(()));
    for &slot in &owned_by_first {
        assert_eq!(membership.owners()[slot as usize], backups_before[slot as usize][0]);
    }
    assert!(membership
        .backups()
        .iter()
        .flatten()
        .all(|backup| backup.node_id != ids[0]));
    assert!(!membership.has_dead_to_declare(later + 1), "a node is failed over once");

    // The two left restore a backup for every slot between them.
    assert!(membership.under_replicated() > 0);
    membership.plan_fills(later).unwrap();
    complete_fills(&mut membership, &ids[1..], later + 100);
    assert_eq!(membership.under_replicated(), 0);
    assert_eq!(membership.map().validate(), Ok(()));

    // What survives a control-plane restart.
    let restored = Membership::decode(&membership.encode().unwrap()).unwrap();
    assert_eq!(restored.backups(), membership.backups());
    assert_eq!(restored.failovers_total(), membership.failovers_total());
}

#[test]
fn a_restart_with_empty_memory_fails_over_at_its_join() {
    let (mut membership, ids) = three_nodes(1);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    complete_fills(&mut membership, &ids, 200);
    let joined = membership.join(&join_request(3, 99), 300).unwrap();
    assert_eq!(joined.node_id, ids[1]);
    assert!(joined.failure.lost.is_empty());
    assert_eq!(joined.failure.promoted.len() as u32, SLOT_COUNT / 3);
    assert!(membership.owners().iter().all(|owner| owner.node_id != ids[1]));
    assert_eq!(membership.map().validate(), Ok(()));
}

#[test]
fn without_backups_a_dead_owner_s_slots_are_lost_as_before() {
    let (mut membership, ids) = three_nodes(0);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    assert_eq!(membership.slots_filling(), 0);
    let joined = membership.join(&join_request(2, 99), 300).unwrap();
    assert_eq!(joined.failure.lost.len() as u32, SLOT_COUNT / 3);
    assert!(joined.failure.promoted.is_empty());
}

#[test]
fn a_slot_moved_onto_its_backup_s_node_drops_that_backup_and_lowering_replicas_trims() {
    let (mut membership, ids) = three_nodes(2);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    complete_fills(&mut membership, &ids, 200);
    assert!(membership.backups().iter().all(|backups| backups.len() == 2));
    let slot = 0u32;
    let target = membership.backups()[0][0];
    membership.commit_move(&[slot], target);
    assert!(membership.backups()[0]
        .iter()
        .all(|backup| backup.node_id != target.node_id));
    assert_eq!(membership.map().validate(), Ok(()));

    membership.set_replicas(1).unwrap();
    assert!(membership.has_excess_backups());
    membership.trim_backups();
    assert!(membership.backups().iter().all(|backups| backups.len() <= 1));
    assert_eq!(membership.map().validate(), Ok(()));
}

#[test]
fn fills_ordered_after_a_withdrawal_carry_another_generation() {
    let (mut membership, ids) = three_nodes(1);
    membership.start_fill_generations(7);
    hear_all(&mut membership, &ids, 100);
    membership.plan_fills(100).unwrap();
    let before = membership.fills_for(ids[0]);
    assert!(!before.is_empty() && before.iter().all(|fill| fill.generation == 7));
    membership.plan_fills_none();
    assert!(membership.fills_for(ids[0]).is_empty());
    membership.plan_fills(200).unwrap();
    let after = membership.fills_for(ids[0]);
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        assert_eq!((&old.backup, &old.slots), (&new.backup, &new.slots), "the same fill");
        assert_ne!(old.generation, new.generation, "of another generation");
    }
}
