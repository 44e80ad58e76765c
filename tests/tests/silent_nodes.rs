//! Liveness before load: the control plane's load planner never hands slots to a node
//! that stopped heartbeating. Three nodes share the slots; one is paused with SIGSTOP
//! (the process stays, the kernel still completes TCP handshakes for it, but it answers
//! nothing and sends no heartbeat). Once it has been silent for longer than a few
//! heartbeat intervals, another node is filled past the load planner's memory threshold.
//!
//! The paused node is the one a planner blind to liveness would pick: it reports the
//! least memory of all (the third node holds a few MiB), and on equal pressure the lowest
//! node id, which it has too. So the test checks both that the paused node's slot count
//! never grows and that no migration ever targets it during the pause, and, to show the
//! planner did act, that the live third node received slots off the full one meanwhile.
//!
//! The liveness timeout is 60 s, longer than the pause: the paused node is never declared
//! dead, so its slots are not marked lost (and restored) during the pause, and its slot
//! count is expected to stay exactly as it was; only a rise would fail the test.

use std::time::{Duration, Instant};

use engram_client::Client;
use engram_proto::ClusterStatus;
use engram_tests::cluster::{self, cluster_cli, node_slot_count, shard_of_node, start_node, MEMBERSHIP_LIMIT};
use engram_tests::control::ControlPlane;
use engram_tests::processes::Scratch;
use engram_tests::server::{next_loopback, resume_process, stop_process, Resume};
use engram_tests::{key_on_shard, read_stored, run_async};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node stays paused at least.
const PAUSE: Duration = Duration::from_secs(20);
/// If the planner has not moved anything to the live node when [`PAUSE`] is over, the
/// pause goes on until it has, up to this: a bound, so a planner that never acts fails.
const PAUSE_MAX: Duration = Duration::from_secs(45);
/// Silence after which the paused node counts as not heartbeating: several 500 ms
/// heartbeat intervals, above the control plane's `TARGET_SILENCE_MS_MAX` (2 s).
const SILENCE_BEFORE_LOAD: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(500);
const VALUE_BYTES: usize = 256 * 1024;
/// What the live third node holds: below the threshold, but more than the paused one.
const LIVE_VALUES: usize = 32;

async fn wait_for_members(control: &ControlPlane, alive: usize) {
    cluster::wait_for_members(control, alive, MEMBERSHIP_LIMIT).await
}

/// `count` values of [`VALUE_BYTES`] on the shard of `node_id`; returns their keys.
async fn fill(client: &Client, status: &ClusterStatus, node_id: u64, prefix: &str, count: usize) -> Vec<String> {
    let shard = shard_of_node(&status.map, node_id);
    let mut keys = Vec::with_capacity(count);
    for index in 0..count {
        let key = key_on_shard(&status.map, b"default", shard, &format!("{prefix}-{index}"));
        client
            .bytes(key.clone())
            .set(vec![b'x'; VALUE_BYTES])
            .await
            .unwrap_or_else(|error| panic!("fill {key}: {error}"));
        keys.push(key);
    }
    keys
}

#[test]
fn a_paused_node_receives_no_slots_from_the_load_planner() {
    let scratch = Scratch::new("silent-node");
    let control = ControlPlane::start_with(
        next_loopback(),
        scratch.path().join("control"),
        &["--load-check-interval-ms", "500", "--liveness-timeout-ms", "60000"],
    );
    // Join order gives node ids in this order: the paused node's id is below the live
    // one's, so it would also win a tie for the coolest shard.
    let full = start_node(&control);
    let paused = start_node(&control);
    let live = start_node(&control);
    let resume = Resume(paused.pid());
    run_async(Duration::from_secs(110), async {
        wait_for_members(&control, 3).await;
        cluster_cli(&control, &["rebalance"]).await;
        let status = control.status().await;
        let (full_id, paused_id, live_id) = (full.node_id(), paused.node_id(), live.node_id());
        assert!(paused_id < live_id);
        let client = full.client_with_timeout(CALL_TIMEOUT).await;
        // The live node holds a little (below the threshold, so nothing moves yet).
        fill(&client, &status, live_id, "silent-live", LIVE_VALUES).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = control.status().await;
        assert!(before.migrations.is_empty(), "{:?}", before.migrations);
        let paused_slots = node_slot_count(&before, paused_id);
        let live_slots = node_slot_count(&before, live_id);
        let full_slots = node_slot_count(&before, full_id);
        assert!(
            paused_slots > 0 && live_slots > 0 && full_slots > 0,
            "{:?}",
            before.nodes
        );
        let paused_addresses: Vec<String> = paused.shards().iter().map(ToString::to_string).collect();

        stop_process(paused.pid());
        let paused_at = Instant::now();
        let mut filling: Option<tokio::task::JoinHandle<Vec<String>>> = None;
        let mut live_gained = false;
        let mut polls = 0;
        let mut most_paused = paused_slots;
        loop {
            let elapsed = paused_at.elapsed();
            if elapsed >= PAUSE && live_gained {
                break;
            }
            assert!(
                elapsed < PAUSE_MAX,
                "the load planner moved no slot to the live node within {PAUSE_MAX:?} of the pause \
                 (last error {:?}; nodes {:?})",
                control.status().await.last_error,
                control.status().await.nodes
            );
            if filling.is_none() && elapsed >= SILENCE_BEFORE_LOAD {
                // Past the planner's memory threshold, all of it on one node.
                let count = (engram_control::service::LOAD_REBALANCE_MEMORY_BYTES_MIN as usize / VALUE_BYTES) * 5 / 4;
                let (client, status) = (client.clone(), before.clone());
                filling = Some(tokio::spawn(async move {
                    fill(&client, &status, full_id, "silent-full", count).await
                }));
            }
            let status = control.status().await;
            polls += 1;
            let now_paused = node_slot_count(&status, paused_id);
            most_paused = most_paused.max(now_paused);
            assert!(
                now_paused <= paused_slots,
                "the paused node went from {paused_slots} to {now_paused} slots while silent for {elapsed:?}: \
                 {:?}",
                status.nodes
            );
            for migration in &status.migrations {
                assert!(
                    !paused_addresses
                        .iter()
                        .any(|address| migration.target.contains(address.as_str())),
                    "a migration towards the paused node (silent for {elapsed:?}): {migration:?}"
                );
            }
            assert!(
                !status.last_error.contains(&format!("node {paused_id} ")),
                "a plan tried to use the paused node: {:?}",
                status.last_error
            );
            live_gained |= node_slot_count(&status, live_id) > live_slots;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let after = control.status().await;
        eprintln!(
            "after {polls} polls over {:?}: full {full_slots} -> {}, paused {paused_slots} (at most {most_paused}), \
             live {live_slots} -> {}",
            paused_at.elapsed(),
            node_slot_count(&after, full_id),
            node_slot_count(&after, live_id)
        );
        assert!(
            node_slot_count(&after, full_id) < full_slots,
            "the full node gave no slot away"
        );
        let full_keys = filling.expect("the full node was filled").await.expect("fill task");

        resume_process(paused.pid());
        wait_for_members(&control, 3).await;
        // Nothing was lost on the way: a sample of the moved and kept values reads back.
        for key in full_keys.iter().step_by(16) {
            let stored = read_stored(&client, key.clone(), &format!("read {key}")).await;
            assert_eq!(stored.value.len(), VALUE_BYTES, "{key}");
        }
        let resumed = control.status().await;
        assert_eq!(
            node_slot_count(&resumed, paused_id),
            paused_slots,
            "the paused node's slots changed: {:?}",
            resumed.nodes
        );
    });
    drop(resume);
}
