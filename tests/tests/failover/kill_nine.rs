//! `kill -9` of a node every 10 s, in rotation, under load: nothing acknowledged is lost.

use super::*;

/// Time between two kills, at least: each also waits for every slot to be backed up
/// again, so no kill takes both copies of a slot.
const KILL_INTERVAL: Duration = Duration::from_secs(10);
/// How long the kills go on (one every [`KILL_INTERVAL`] up to this, from the first
/// interval's end). 40 s keeps the test short enough for every run; the full
/// run, 120 s with at least 10 kills, is `ENGRAM_FAILOVER_SECONDS=130`.
const FAILOVER_SECONDS_ENV: &str = "ENGRAM_FAILOVER_SECONDS";
const FAILOVER_SECONDS_DEFAULT: u64 = 40;
/// How long a killed node stays down, alternating: shorter than the liveness timeout
/// (the control plane learns of the death from the new process's join) and longer (it
/// learns from the silence).
const DOWN_TIMES: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(7)];
/// What the load must achieve after each failover: it serves on.
const WRITES_AFTER_EACH_KILL: u64 = 200;
const POPS_AFTER_EACH_KILL: usize = 10;

/// One queue per shard of `map`, so the queues fail over with different nodes.
fn queue_per_shard(map: &engram_proto::SlotMap) -> Vec<String> {
    (0..map.shards.len())
        .map(|shard| key_on_shard(map, b"default", shard, &format!("failover-queue-{shard}")))
        .collect()
}

#[test]
fn kill_nine_every_ten_seconds_loses_nothing_with_one_replica() {
    const NODES: usize = 4;
    let run = Duration::from_secs(env_or(FAILOVER_SECONDS_ENV, FAILOVER_SECONDS_DEFAULT));
    let mut cluster = FailoverCluster::start("failover-kill-nine", NODES, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(run + Duration::from_secs(300), async {
        let spread = cluster.spread().await;
        let client = cluster.client().await;
        // The lock, its guarded value and the barrier live on the first node killed, so
        // the first failover happens under them.
        let keys = SharedKeys::on_shard(&spread.map, shard_of_node(&spread.map, cluster.nodes[1].node_id));
        let watch = StatusWatch::start(&cluster.control);
        let load = Load::start(&client, &keys);
        let queues = QueueLoad::start(&client, queue_per_shard(&spread.map));
        load.wait_for_writes(1_000).await;
        queues.wait_for_pops(50).await;

        let started = Instant::now();
        let mut round = 0;
        loop {
            let due = started + KILL_INTERVAL * (round as u32 + 1);
            if due > started + run {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let before = cluster.control.status().await;
            let victim = next_victim(&cluster, &before.map, round + 1);
            let node_id = cluster.nodes[victim].node_id;
            let incarnation = incarnation_of(&before, node_id);
            let owned = owned_slots(&before.map, node_id);
            let down = DOWN_TIMES[round % DOWN_TIMES.len()];
            println!(
                "kill {}: node {node_id} ({} slots, map epoch {}), down for {down:?}",
                round + 1,
                owned.len(),
                before.map.epoch
            );
            cluster.kill(victim);
            let killed = Instant::now();
            tokio::time::sleep(down).await;
            cluster.restart(victim);
            wait_for_new_incarnation(&cluster.control, node_id, incarnation).await;
            let after = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
            // Its slots went to the backups the map named for them, not lost and not
            // served empty.
            let owners = after.map.owner_table();
            for &slot in &owned {
                let owner = &after.map.shards[owners[slot as usize] as usize];
                let promoted = before
                    .map
                    .backups_of(slot)
                    .iter()
                    .any(|&index| before.map.shards[index as usize].node_id == owner.node_id);
                assert!(
                    promoted,
                    "slot {slot} of the killed node {node_id} went to node {} (shard {}), not to its backup {:?}",
                    owner.node_id,
                    owner.shard_id,
                    before.map.backups_of(slot)
                );
            }
            println!(
                "kill {}: backed up again {:.1} s after the kill (map epoch {})",
                round + 1,
                killed.elapsed().as_secs_f64(),
                after.map.epoch
            );
            load.wait_for_writes(WRITES_AFTER_EACH_KILL).await;
            queues.wait_for_pops(POPS_AFTER_EACH_KILL).await;
            round += 1;
        }
        assert!(round > 0, "the run of {run:?} left no time for a kill");

        load.stop_and_check(&client, &keys).await;
        queues.stop_and_check(&client).await;
        let report = watch.stop().await;
        println!("{round} kills; status watch: {report:?}");
        report.assert_nothing_lost();
        assert!(
            report.polls > report.unanswered,
            "the control plane never answered the status watch"
        );
    });
}
