//! The elastic cluster against real processes: an `engram-control` and `engramd` nodes on
//! distinct loopback addresses, under continuous load from counter, lock and barrier
//! users, while nodes join, slots rebalance, and a node drains and leaves.
//!
//! What must hold: every counter equals the increments acknowledged to its clients (none
//! lost, none doubled), a sampled history of counters is linearizable, the lock never
//! admits two holders (a read-modify-write under it loses nothing), and barrier parties
//! agree on every generation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use engram_client::Client;
use engram_tests::cluster::{cluster_cli, node_slot_count, shard_of_node, start_node};
use engram_tests::control::ControlPlane;
use engram_tests::elastic::{connect, wait_for_members};
use engram_tests::linearizability::{check_per_key, first_failure, CounterInput, CounterModel, HistoryRecorder};
use engram_tests::processes::Scratch;
use engram_tests::server::next_loopback;
use engram_tests::{run_async, EngramServer};

const COUNTERS: usize = 1_000;
const INCREMENTERS: usize = 8;
/// Counters whose every operation is recorded for the linearizability check.
const SAMPLED_COUNTERS: usize = 16;
const BARRIER_PARTIES: u32 = 3;

type CounterHistory = HistoryRecorder<usize, CounterInput, i64>;

/// Names of the single-key objects the load shares: chosen on one node, so that
/// draining that node must move them while they are in use.
struct SharedKeys {
    lock: String,
    guarded: String,
    barrier: String,
}

impl SharedKeys {
    fn on_shard(map: &engram_proto::SlotMap, shard_index: usize) -> SharedKeys {
        let on = |prefix: &str| engram_tests::routing::key_on_shard(map, b"default", shard_index, prefix);
        SharedKeys {
            lock: on("cluster-lock"),
            guarded: on("cluster-guarded"),
            barrier: on("cluster-barrier"),
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Vec<AtomicU64>>,
    failures: Arc<AtomicU64>,
    history: Arc<CounterHistory>,
    critical_sections: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    barrier_tasks: Vec<tokio::task::JoinHandle<Vec<u64>>>,
    /// Highest generation any party has passed, and the generation after which every
    /// party stops (set at stop time to two past the highest: no party can have passed
    /// that one yet, so all of them stop after the same round).
    barrier_seen: Arc<AtomicU64>,
    barrier_stop_at: Arc<AtomicU64>,
}

fn counter_key(index: usize) -> String {
    format!("cluster-counter-{index}")
}

impl Load {
    fn start(client: &Client, keys: &SharedKeys) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged: Arc<Vec<AtomicU64>> = Arc::new((0..COUNTERS).map(|_| AtomicU64::new(0)).collect());
        let failures = Arc::new(AtomicU64::new(0));
        let history = Arc::new(CounterHistory::new());
        let critical_sections = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for worker in 0..INCREMENTERS {
            let (client, stop, acknowledged, failures, history) = (
                client.clone(),
                stop.clone(),
                acknowledged.clone(),
                failures.clone(),
                history.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut step = worker;
                while !stop.load(Relaxed) {
                    // Every worker walks all counters, and all of them keep coming back to
                    // the sampled ones, so those see real concurrency.
                    let index = if step % 4 == 0 {
                        step / 4 % SAMPLED_COUNTERS
                    } else {
                        step % COUNTERS
                    };
                    step += INCREMENTERS + 1;
                    let counter = client.counter(counter_key(index));
                    let token = (index < SAMPLED_COUNTERS)
                        .then(|| history.invoke(worker as u64, index, CounterInput::Add { delta: 1 }));
                    match counter.add(1).await {
                        Ok(value) => {
                            acknowledged[index].fetch_add(1, Relaxed);
                            if let Some(token) = token {
                                history.complete(token, value);
                            }
                        }
                        // The outcome is unknown: the history keeps it as such.
                        Err(error) => {
                            failures.fetch_add(1, Relaxed);
                            eprintln!("incr {index} failed: {error}");
                        }
                    }
                }
            }));
        }
        {
            let (client, stop, failures, history) = (client.clone(), stop.clone(), failures.clone(), history.clone());
            tasks.push(tokio::spawn(async move {
                let mut index = 0;
                while !stop.load(Relaxed) {
                    index = (index + 1) % SAMPLED_COUNTERS;
                    let token = history.invoke(INCREMENTERS as u64, index, CounterInput::Get);
                    match client.counter(counter_key(index)).get().await {
                        Ok(value) => history.complete(token, value),
                        Err(error) => {
                            failures.fetch_add(1, Relaxed);
                            eprintln!("get {index} failed: {error}");
                        }
                    }
                }
            }));
        }
        for holder in 0..2 {
            let (client, stop, failures, critical_sections) = (
                client.clone(),
                stop.clone(),
                failures.clone(),
                critical_sections.clone(),
            );
            let (lock_key, guarded_key) = (keys.lock.clone(), keys.guarded.clone());
            tasks.push(tokio::spawn(async move {
                let lock = client.lock(lock_key);
                let guarded = client.bytes(guarded_key);
                while !stop.load(Relaxed) {
                    let outcome = async {
                        let guard = lock
                            .acquire(
                                format!("holder-{holder}"),
                                Duration::from_secs(20),
                                Duration::from_secs(20),
                            )
                            .await?;
                        // A read-modify-write that only a real mutual exclusion keeps exact.
                        let current = guarded.get().await?.map_or(0, |versioned| {
                            String::from_utf8_lossy(&versioned.value).parse::<u64>().unwrap_or(0)
                        });
                        guarded.set((current + 1).to_string()).await?;
                        guard.release().await
                    }
                    .await;
                    match outcome {
                        Ok(()) => {
                            critical_sections.fetch_add(1, Relaxed);
                        }
                        Err(error) => {
                            failures.fetch_add(1, Relaxed);
                            eprintln!("lock round failed: {error}");
                        }
                    }
                }
            }));
        }
        let mut barrier_tasks = Vec::new();
        let barrier_seen = Arc::new(AtomicU64::new(0));
        let barrier_stop_at = Arc::new(AtomicU64::new(u64::MAX));
        for party in 0..BARRIER_PARTIES {
            let (client, failures, seen, stop_at) = (
                client.clone(),
                failures.clone(),
                barrier_seen.clone(),
                barrier_stop_at.clone(),
            );
            let barrier_key = keys.barrier.clone();
            barrier_tasks.push(tokio::spawn(async move {
                let barrier = client.barrier(barrier_key, BARRIER_PARTIES);
                let mut generations = Vec::new();
                loop {
                    match barrier.wait(Duration::from_secs(20)).await {
                        Ok(passage) => {
                            generations.push(passage.generation);
                            seen.fetch_max(passage.generation, Relaxed);
                            if passage.generation >= stop_at.load(Relaxed) {
                                return generations;
                            }
                        }
                        Err(error) => {
                            failures.fetch_add(1, Relaxed);
                            eprintln!("barrier party {party} failed: {error}");
                            return generations;
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            acknowledged,
            failures,
            history,
            critical_sections,
            tasks,
            barrier_tasks,
            barrier_seen,
            barrier_stop_at,
        }
    }

    /// Stops the load and checks everything it did against the cluster.
    async fn stop_and_check(self, client: &Client, keys: &SharedKeys) {
        self.stop.store(true, Relaxed);
        self.barrier_stop_at.store(self.barrier_seen.load(Relaxed) + 2, Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let mut sequences = Vec::new();
        for task in self.barrier_tasks {
            sequences.push(task.await.expect("barrier task"));
        }
        assert_eq!(
            self.failures.load(Relaxed),
            0,
            "operations failed during the run (see stderr)"
        );

        let mut total = 0;
        for (index, acknowledged) in self.acknowledged.iter().enumerate() {
            let acknowledged = acknowledged.load(Relaxed) as i64;
            let value = client.counter(counter_key(index)).get().await.expect("read counter");
            assert_eq!(
                value, acknowledged,
                "counter {index}: {value} stored, {acknowledged} acknowledged"
            );
            total += acknowledged;
        }
        assert!(total > COUNTERS as i64, "the load barely ran: {total} increments");

        let history = self.history.history();
        let verdicts = check_per_key(&CounterModel, &history);
        assert_eq!(verdicts.len(), SAMPLED_COUNTERS);
        if let Some(failure) = first_failure(&verdicts) {
            panic!("sampled counter history is not linearizable: {failure}");
        }

        let sections = self.critical_sections.load(Relaxed);
        let guarded = client
            .bytes(keys.guarded.clone())
            .get()
            .await
            .expect("read guarded value")
            .map_or(0, |versioned| {
                String::from_utf8_lossy(&versioned.value).parse::<u64>().unwrap_or(0)
            });
        assert!(sections > 0, "no critical section completed");
        assert_eq!(guarded, sections, "the lock let a read-modify-write be lost");

        let first = &sequences[0];
        assert!(first.len() >= 3, "the barrier barely ran: {first:?}");
        for (party, sequence) in sequences.iter().enumerate() {
            assert_eq!(sequence, first, "barrier party {party} disagrees on the generations");
        }
        assert!(
            first.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "barrier generations skipped or repeated: {first:?}"
        );
    }
}

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
