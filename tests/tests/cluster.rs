//! The elastic cluster against real processes: an `engram-control` and `engramd` nodes on
//! distinct loopback addresses, under continuous load from counter, lock and barrier
//! users, while nodes join, slots rebalance, and a node drains and leaves.
//!
//! What must hold (the load and its checks: `tests/src/load.rs`): every counter equals
//! the increments acknowledged to its clients (none lost, none doubled), a sampled history
//! of counters is linearizable, the lock never admits two holders (a read-modify-write
//! under it loses nothing, an outside witness never sees two inside, fences strictly
//! increase), and barrier parties agree on every generation.

use std::time::Duration;

use engram_tests::cluster::{cluster_cli, node_slot_count, shard_of_node, start_node};
use engram_tests::control::ControlPlane;
use engram_tests::elastic::{connect, wait_for_members};
use engram_tests::load::{Load, SharedKeys};
use engram_tests::processes::Scratch;
use engram_tests::server::next_loopback;
use engram_tests::{run_async, EngramServer};

#[test]
fn a_cluster_grows_rebalances_and_drains_under_load_without_losing_or_doubling_anything() {
    let scratch = Scratch::new("cluster-elastic");
    let control = ControlPlane::start(next_loopback(), scratch.path().join("control"));
    let mut nodes: Vec<Option<EngramServer>> = (0..3).map(|_| Some(start_node(&control))).collect();
    run_async(Duration::from_secs(280), async {
        wait_for_members(&control, 3).await;
        // The first node took every slot; spread them before the load starts.
        cluster_cli(&control, &["rebalance"]).await;
        let client = connect(nodes[0].as_ref().unwrap()).await;
        // The shared objects live on the node that will be drained, so they move while
        // the lock is held and waited for and barrier parties are parked.
        let spread = control.status().await.map;
        let leaving = nodes[1].as_ref().unwrap().node_id();
        let leaving_shard = shard_of_node(&spread, leaving);
        let keys = SharedKeys::on_shard(&spread, leaving_shard);
        let load = Load::start(&client, &keys);
        tokio::time::sleep(Duration::from_secs(2)).await;

        let fourth = start_node(&control);
        wait_for_members(&control, 4).await;
        let before = control.status().await;
        let output = cluster_cli(&control, &["rebalance"]).await;
        assert!(output.contains("done"), "{output}");
        let after = control.status().await;
        assert!(after.map.epoch > before.map.epoch);
        let share = engram_proto::limits::SLOT_COUNT / 4;
        assert!(
            node_slot_count(&after, fourth.node_id()).abs_diff(share) <= 1,
            "the new node owns {} slots, not its share {share}",
            node_slot_count(&after, fourth.node_id())
        );
        nodes.push(Some(fourth));
        tokio::time::sleep(Duration::from_secs(1)).await;

        cluster_cli(&control, &["drain", &leaving.to_string()]).await;
        let drained = control.status().await;
        assert_eq!(
            node_slot_count(&drained, leaving),
            0,
            "the drained node still owns slots"
        );
        // Clients may still hold connections to it; stopping it must not matter.
        drop(nodes[1].take());
        tokio::time::sleep(Duration::from_secs(2)).await;

        load.stop_and_check(&client, &keys).await;
        let final_map = control.status().await.map;
        for key in [&keys.lock, &keys.guarded, &keys.barrier] {
            let owner = engram_tests::routing::owner_of(&final_map, b"default", key.as_bytes());
            assert_ne!(
                final_map.shards[owner].node_id, leaving,
                "{key} did not move off the drained node"
            );
        }
        let status = cluster_cli(&control, &["status", "--json"]).await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        assert!(status["migrations"].as_array().is_some_and(Vec::is_empty), "{status}");
    });
    drop(nodes);
}
