//! Where backups live, with real processes (`engram-control --replicas 1`): when a node
//! joins, the placement moves part of the backups onto it, and the node that held them
//! drops those copies, so each node holds exactly the keys of the slots it owns or
//! backs up, not a stale copy of everything it once backed up.

use std::time::{Duration, Instant};

use engram_proto::{SlotHasher, SlotMap};
use engram_tests::cluster::wait_for_members;
use engram_tests::elastic::keys_held;
use engram_tests::failover::{
    owned_slots, redundancy_gap, wait_for_redundancy, wait_for_status, FailoverCluster, REDUNDANCY_LIMIT,
};
use engram_tests::run_async;

const REPLICAS: usize = 1;
const LIVENESS_TIMEOUT_MS: u64 = 5_000;
const KEYS: usize = 2_000;
/// Bound on a node's key count catching up with the map it installed.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// How many of `keys` fall in slots `node_id` owns or backs up in `map`.
fn keys_kept_by(map: &SlotMap, keys: &[String], node_id: u64) -> u64 {
    let hasher = SlotHasher::new(b"default");
    let owned: std::collections::HashSet<u32> = owned_slots(map, node_id).into_iter().collect();
    keys.iter()
        .filter(|key| {
            let slot = hasher.slot(key.as_bytes());
            owned.contains(&slot)
                || map
                    .backups_of(slot)
                    .iter()
                    .any(|&index| map.shards[index as usize].node_id == node_id)
        })
        .count() as u64
}

#[test]
fn a_backup_moved_to_a_joining_node_leaves_no_copy_behind() {
    let mut cluster = FailoverCluster::start("backups-move", 2, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(150), async {
        wait_for_members(&cluster.control, 2, engram_tests::cluster::MEMBERSHIP_LIMIT).await;
        // The first node owns every slot and the second backs up every one.
        wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        let client = cluster.client().await;
        let keys: Vec<String> = (0..KEYS).map(|index| format!("backed-{index}")).collect();
        for key in &keys {
            client.counter(key.clone()).add(1).await.expect("write");
        }
        assert_eq!(
            keys_held(cluster.nodes[1].server()).await,
            KEYS as u64,
            "the backup holds a copy of every key"
        );

        let third = cluster.add_node();
        wait_for_members(&cluster.control, 3, engram_tests::cluster::MEMBERSHIP_LIMIT).await;
        wait_for_status(
            &cluster.control,
            "the joining node backs up slots",
            REDUNDANCY_LIMIT,
            |status| {
                redundancy_gap(status, REPLICAS).is_none()
                    && status.map.backups.iter().any(|range| {
                        range
                            .shard_indices
                            .iter()
                            .any(|&index| status.map.shards[index as usize].node_id == third)
                    })
            },
        )
        .await;

        let started = Instant::now();
        loop {
            let status = cluster.control.status().await;
            let mut held = Vec::new();
            for node in &cluster.nodes {
                held.push((
                    keys_held(node.server()).await,
                    keys_kept_by(&status.map, &keys, node.node_id),
                ));
            }
            if held.iter().all(|(held, kept)| held == kept) {
                break;
            }
            assert!(
                started.elapsed() < SETTLE_LIMIT,
                "(keys held, keys of slots owned or backed up) per node after {SETTLE_LIMIT:?}: {held:?} (map epoch {})",
                status.map.epoch
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for key in &keys {
            assert_eq!(client.counter(key.clone()).get().await.expect("read"), 1, "{key}");
        }
    });
}
