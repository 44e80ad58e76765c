//! The control plane restarting against real processes: with its map, while the nodes
//! keep serving without it, and killed in the middle of a migration, into a consistent
//! cluster.

use std::time::Duration;

use engram_tests::cluster::{cluster_cli, start_node};
use engram_tests::control::ControlPlane;
use engram_tests::elastic::{
    bulky_value, connect, keys_held, keys_owned_by, seed_first_step, wait_for_first_batch, wait_for_members, BULKY_KEYS,
};
use engram_tests::processes::Scratch;
use engram_tests::run_async;
use engram_tests::server::next_loopback;

#[test]
fn the_control_plane_restarts_with_its_map_and_nodes_serve_while_it_is_down() {
    let scratch = Scratch::new("cluster-control-restart");
    let mut control = ControlPlane::start(next_loopback(), scratch.path().join("control"));
    let nodes = [start_node(&control), start_node(&control)];
    run_async(Duration::from_secs(120), async {
        wait_for_members(&control, 2).await;
        cluster_cli(&control, &["rebalance"]).await;
        let before = control.status().await;
        let client = connect(&nodes[0]).await;

        control.kill();
        for index in 0..300 {
            let value = client
                .counter(format!("while-down-{index}"))
                .add(2)
                .await
                .expect("serve without control");
            assert_eq!(value, 2);
        }
        control.restart();
        let after = control.status().await;
        assert_eq!(after.map, before.map, "the restarted control plane lost its map");
        wait_for_members(&control, 2).await;
        for index in 0..300 {
            assert_eq!(client.counter(format!("while-down-{index}")).get().await.unwrap(), 2);
        }
        // And it can still move slots.
        let drained = nodes[1].node_id();
        cluster_cli(&control, &["drain", &drained.to_string()]).await;
        for index in 0..300 {
            assert_eq!(client.counter(format!("while-down-{index}")).get().await.unwrap(), 2);
        }
    });
    drop(nodes);
}

#[test]
fn a_control_plane_killed_mid_migration_restarts_into_a_consistent_cluster() {
    let scratch = Scratch::new("cluster-control-dies");
    let mut control = ControlPlane::start(next_loopback(), scratch.path().join("control"));
    let source = start_node(&control);
    run_async(Duration::from_secs(150), async {
        wait_for_members(&control, 1).await;
        let client = connect(&source).await;
        let keys = seed_first_step(&client).await;
        let target = start_node(&control);
        wait_for_members(&control, 2).await;
        let rebalance = tokio::spawn(control.cli(&["rebalance"]));
        // The coordinator dies while the first step's batches travel: the source holds
        // the slots frozen, the target holds part of a copy, and no decision was sent.
        wait_for_first_batch(&target).await;
        control.kill();
        let _ = rebalance.await;
        control.restart();
        wait_for_members(&control, 2).await;
        // Whatever the state file says decides: the persisted map is installed, then
        // everything it did not commit is aborted, so the cluster serves every key.
        for key in &keys {
            let stored = client.bytes(key.clone()).get().await.expect("read after the restart");
            assert!(
                stored.is_some_and(|stored| stored.value == bulky_value(key)),
                "{key} lost or changed"
            );
        }
        for key in keys.iter().take(BULKY_KEYS / 2) {
            assert!(client.bytes(key.clone()).del().await.expect("write after the restart"));
        }
        cluster_cli(&control, &["rebalance"]).await;
        let status = control.status().await;
        assert!(status.migrations.is_empty());
        let on_target = keys_owned_by(&status.map, keys.iter().skip(BULKY_KEYS / 2), target.node_id());
        // Exactly the live keys of the slots each node owns: no copy left behind.
        assert_eq!(keys_held(&target).await, on_target);
        assert_eq!(keys_held(&source).await, (BULKY_KEYS / 2) as u64 - on_target);
        for (index, key) in keys.iter().enumerate() {
            let stored = client.bytes(key.clone()).get().await.expect("read");
            assert_eq!(stored.is_some(), index >= BULKY_KEYS / 2, "{key}");
        }
    });
}
