//! Slot moves against real processes that go wrong or start on their own: a migration
//! whose target dies midway is aborted and loses nothing, a shard far fuller than the
//! rest gives slots away without an operator, and a rebalance onto the node that holds
//! the slots' backups (`--replicas 1`) hands them over under load, loses nothing, and
//! leaves every slot backed up again, so that node's death afterwards loses nothing
//! either; a rebalance onto a node with no copies fills it while serving, then hands
//! over, never copying frozen slots.

use std::collections::BTreeMap;
use std::time::Duration;

use engram_proto::limits::SLOT_COUNT;
use engram_tests::cluster::{cluster_cli, node_slot_count, shard_of_node, start_node};
use engram_tests::control::ControlPlane;
use engram_tests::elastic::{
    bulky_value, connect, keys_held, keys_owned_by, seed_first_step, wait_for_first_batch, wait_for_members, BULKY_KEYS,
};
use engram_tests::failover::{
    incarnation_of, owned_slots, wait_for_new_incarnation, wait_for_redundancy, FailoverCluster, StatusWatch,
    REDUNDANCY_LIMIT,
};
use engram_tests::load::{Load, SharedKeys};
use engram_tests::processes::Scratch;
use engram_tests::run_async;
use engram_tests::server::next_loopback;

#[test]
fn a_migration_whose_target_dies_midway_is_aborted_and_loses_nothing() {
    let scratch = Scratch::new("cluster-target-dies");
    let control = ControlPlane::start(next_loopback(), scratch.path().join("control"));
    let source = start_node(&control);
    run_async(Duration::from_secs(150), async {
        wait_for_members(&control, 1).await;
        let client = connect(&source).await;
        let keys = seed_first_step(&client).await;
        let mut counters = BTreeMap::new();
        for index in 0..300 {
            let key = format!("kept-{index}");
            client.counter(key.clone()).add(index).await.expect("seed counter");
            counters.insert(key, index);
        }
        let mut target = start_node(&control);
        wait_for_members(&control, 2).await;
        let epoch_before = control.status().await.map.epoch;

        let rebalance = tokio::spawn(control.cli(&["rebalance"]));
        // Stop the target once it holds part of the first step: a stopped process still
        // completes TCP handshakes (the kernel does) but answers nothing, so the source
        // waits for its next batch to be accepted, gives up, and the step is aborted.
        wait_for_first_batch(&target).await;
        engram_tests::server::stop_process(target.pid());
        let output = rebalance.await.expect("cli task");
        assert!(
            !output.status.success(),
            "a rebalance onto a dead node reported success"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("aborted"), "{stderr}");
        let _ = target.kill_now();

        let status = control.status().await;
        assert!(status.migrations.is_empty());
        assert_eq!(
            status.map.epoch, epoch_before,
            "the step was committed, so the stop came too late: {status:?}"
        );
        let owner = status
            .nodes
            .iter()
            .find(|node| node.node_id == source.node_id())
            .unwrap();
        assert_eq!(owner.shards.iter().map(|shard| shard.slots).sum::<u32>(), SLOT_COUNT);
        for key in &keys {
            let stored = client.bytes(key.clone()).get().await.expect("read").expect("present");
            assert!(stored.value == bulky_value(key), "{key} changed");
        }
        for (key, value) in &counters {
            assert_eq!(client.counter(key.clone()).get().await.expect("read"), *value, "{key}");
        }
        // The frozen slots serve writes again, and a later move onto a live node carries
        // exactly what is there now, deletions included.
        for key in keys.iter().take(BULKY_KEYS / 2) {
            assert!(client.bytes(key.clone()).del().await.expect("delete"));
        }
        let replacement = start_node(&control);
        wait_for_members(&control, 2).await;
        cluster_cli(&control, &["rebalance"]).await;
        for (index, key) in keys.iter().enumerate() {
            let stored = client.bytes(key.clone()).get().await.expect("read");
            if index < BULKY_KEYS / 2 {
                assert!(stored.is_none(), "deleted {key} came back");
            } else {
                assert!(
                    stored.is_some_and(|stored| stored.value == bulky_value(key)),
                    "{key} changed"
                );
            }
        }
        for (key, value) in &counters {
            assert_eq!(
                client.counter(key.clone()).add(1).await.expect("write"),
                value + 1,
                "{key}"
            );
        }
        // Each node holds exactly the keys of the slots it owns: the source dropped what
        // it gave away, and nothing is left over anywhere.
        let map = control.status().await.map;
        let live_keys = keys.iter().skip(BULKY_KEYS / 2).chain(counters.keys());
        let on_replacement = keys_owned_by(&map, live_keys, replacement.node_id());
        assert!(on_replacement > 0, "the rebalance moved none of the test's keys");
        assert_eq!(keys_held(&replacement).await, on_replacement);
        assert_eq!(
            keys_held(&source).await,
            (BULKY_KEYS / 2 + counters.len()) as u64 - on_replacement
        );
    });
}

#[test]
fn a_shard_far_fuller_than_the_rest_gives_slots_away_by_itself() {
    let scratch = Scratch::new("cluster-load");
    let control = ControlPlane::start_with(
        next_loopback(),
        scratch.path().join("control"),
        &["--load-check-interval-ms", "500"],
    );
    let nodes = [start_node(&control), start_node(&control)];
    run_async(Duration::from_secs(120), async {
        wait_for_members(&control, 2).await;
        cluster_cli(&control, &["rebalance"]).await;
        let map = control.status().await.map;
        let heavy = nodes[0].node_id();
        let heavy_shard = map.shards.iter().position(|shard| shard.node_id == heavy).unwrap();
        let client = connect(&nodes[0]).await;
        // Past engram-control's memory threshold, all of it on one node.
        let value_bytes = 256 * 1024;
        let count = (engram_control::service::LOAD_REBALANCE_MEMORY_BYTES_MIN as usize / value_bytes) * 5 / 4;
        let keys: Vec<String> = (0..count)
            .map(|index| engram_tests::routing::key_on_shard(&map, b"default", heavy_shard, &format!("heavy-{index}")))
            .collect();
        for key in &keys {
            client
                .bytes(key.clone())
                .set(vec![b'h'; value_bytes])
                .await
                .expect("seed");
        }
        let mut shed = false;
        for _ in 0..300 {
            let status = control.status().await;
            if node_slot_count(&status, heavy) < SLOT_COUNT / 2 && status.migrations.is_empty() {
                shed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            shed,
            "the full node kept all its slots: {:?}",
            control.status().await.nodes
        );
        for key in &keys {
            let stored = client.bytes(key.clone()).get().await.expect("read").expect("present");
            assert_eq!(stored.value.len(), value_bytes, "{key}");
        }
    });
    drop(nodes);
}

#[test]
fn a_rebalance_onto_the_backups_node_hands_slots_over_keeping_every_copy_and_loses_nothing() {
    const REPLICAS: usize = 1;
    const LIVENESS_TIMEOUT_MS: u64 = 5_000;
    let mut cluster = FailoverCluster::start("rebalance-onto-backups", 2, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(170), async {
        // The first node took every slot; the second holds the backup of each, so every
        // move of the rebalance lands on a slot's backup.
        wait_for_members(&cluster.control, 2).await;
        let before = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        let [first, second] = [0, 1].map(|index| cluster.nodes[index].node_id);
        assert_eq!(owned_slots(&before.map, first).len(), SLOT_COUNT as usize);
        let client = cluster.client().await;
        let keys = SharedKeys::on_shard(&before.map, shard_of_node(&before.map, first));
        let watch = StatusWatch::start(&cluster.control);
        let load = Load::start(&client, &keys);
        load.wait_for_writes(500).await;

        cluster_cli(&cluster.control, &["rebalance"]).await;
        // Every move was a hand-over: the source backs up what it handed over from the
        // commit on, so no slot ever had fewer copies (a copy would have left the moved
        // slots without a backup until a fill after the plan).
        let handed_over = cluster.control.status().await;
        assert_eq!(
            handed_over.under_replicated_slots, 0,
            "right after the rebalance; status: {:?}",
            handed_over.nodes
        );
        let spread = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        let moved = owned_slots(&spread.map, second);
        assert!(
            moved.len() >= SLOT_COUNT as usize / 2 - 1,
            "the rebalance gave the second node {} slots",
            moved.len()
        );
        load.wait_for_writes(500).await;

        // The moved slots' new backups are in sync: the second node's death promotes
        // them on the first node with every acknowledged write.
        let incarnation = incarnation_of(&spread, second);
        cluster.kill(1);
        cluster.restart(1);
        wait_for_new_incarnation(&cluster.control, second, incarnation).await;
        let after = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        assert_eq!(
            owned_slots(&after.map, first).len(),
            SLOT_COUNT as usize,
            "the first node serves the moved slots again, from their backups"
        );
        load.wait_for_writes(500).await;
        load.stop_and_check(&client, &keys).await;
        let report = watch.stop().await;
        report.assert_nothing_lost();
    });
}

#[test]
fn a_rebalance_onto_a_node_without_copies_fills_it_while_serving_and_never_copies_frozen() {
    const REPLICAS: usize = 1;
    const LIVENESS_TIMEOUT_MS: u64 = 5_000;
    let mut cluster = FailoverCluster::start("rebalance-fills", 2, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(170), async {
        wait_for_members(&cluster.control, 2).await;
        let before = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        let first = cluster.nodes[0].node_id;
        let client = cluster.client().await;
        let keys = SharedKeys::on_shard(&before.map, shard_of_node(&before.map, first));
        let watch = StatusWatch::start(&cluster.control);
        let load = Load::start(&client, &keys);
        load.wait_for_writes(500).await;

        // A third node, empty: whatever backups the placement moves onto it before the
        // plan starts, every slot it then takes is either one it backs up (a hand-over)
        // or one it holds no copy of (a fill, then a hand-over).
        let third = cluster.add_node();
        wait_for_members(&cluster.control, 3).await;
        cluster_cli(&cluster.control, &["rebalance"]).await;
        let moved = cluster.control.status().await;
        assert!(
            owned_slots(&moved.map, third).len() >= SLOT_COUNT as usize / 3 - 1,
            "the third node owns {} slots",
            owned_slots(&moved.map, third).len()
        );
        assert_eq!(
            moved.bytes_moved_total, 0,
            "no step copied frozen slots ({} slots moved)",
            moved.slots_moved_total
        );
        assert_eq!(moved.under_replicated_slots, 0, "no slot had one copy fewer");
        load.wait_for_writes(500).await;
        wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        load.stop_and_check(&client, &keys).await;
        watch.stop().await.assert_nothing_lost();
    });
}
