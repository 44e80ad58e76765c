//! The elastic cluster against real processes: an `engram-control` and `engramd` nodes on
//! distinct loopback addresses, under continuous load from counter, lock and barrier
//! users, while nodes join, slots rebalance, a node drains and leaves, a migration
//! target dies, and the control plane restarts.
//!
//! What must hold: every counter equals the increments acknowledged to its clients (none
//! lost, none doubled), a sampled history of counters is linearizable, the lock never
//! admits two holders (a read-modify-write under it loses nothing), and barrier parties
//! agree on every generation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use engram_client::Client;
use engram_proto::limits::SLOT_COUNT;
use engram_tests::cluster::{self, cluster_cli, node_slot_count, shard_of_node, start_node, MEMBERSHIP_LIMIT};
use engram_tests::control::ControlPlane;
use engram_tests::linearizability::{check_per_key, first_failure, CounterInput, CounterModel, HistoryRecorder};
use engram_tests::processes::Scratch;
use engram_tests::server::next_loopback;
use engram_tests::{run_async, total_keys, EngramServer};

const COUNTERS: usize = 1_000;
const INCREMENTERS: usize = 8;
/// Counters whose every operation is recorded for the linearizability check.
const SAMPLED_COUNTERS: usize = 16;
const BARRIER_PARTIES: u32 = 3;
/// Long enough that no call gives up while a slot is frozen or a map is catching up:
/// every operation must succeed for the exact count to be checkable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

type CounterHistory = HistoryRecorder<usize, CounterInput, i64>;

async fn connect(node: &EngramServer) -> Client {
    node.client_with_timeout(CALL_TIMEOUT).await
}

async fn wait_for_members(control: &ControlPlane, alive: usize) {
    cluster::wait_for_members(control, alive, MEMBERSHIP_LIMIT).await
}

/// Waits until `node` holds at least one key (a migration's first batch has landed).
async fn wait_for_first_batch(node: &EngramServer) {
    let mut polls = 0;
    while keys_held(node).await == 0 {
        polls += 1;
        assert!(polls < 20_000, "the target never received a batch");
    }
}

/// How many of `keys` the map gives to `node_id`.
fn keys_owned_by<'k>(map: &engram_proto::SlotMap, keys: impl Iterator<Item = &'k String>, node_id: u64) -> u64 {
    let hasher = engram_proto::SlotHasher::new(b"default");
    let owners = map.owner_table();
    keys.filter(|key| map.shards[owners[hasher.slot(key.as_bytes()) as usize] as usize].node_id == node_id)
        .count() as u64
}

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

/// Keys whose slots are the first step of a rebalance from one node onto a second:
/// the planner keeps each giver's lowest slots and hands out the rest in slot order, in
/// steps of `MIGRATION_SLOTS_PER_STEP`.
fn keys_in_first_step(count: usize) -> Vec<String> {
    let first_step = SLOT_COUNT / 2..SLOT_COUNT / 2 + engram_control::service::MIGRATION_SLOTS_PER_STEP as u32;
    let hasher = engram_proto::SlotHasher::new(b"default");
    (0..)
        .map(|n| format!("bulky-{n}"))
        .filter(|key| first_step.contains(&hasher.slot(key.as_bytes())))
        .take(count)
        .collect()
}

/// Writes `BULKY_KEYS` bulky values whose slots move in a rebalance's first step, so
/// that step takes long enough to be interrupted; returns their keys.
async fn seed_first_step(client: &Client) -> Vec<String> {
    let keys = keys_in_first_step(BULKY_KEYS);
    for key in &keys {
        client.bytes(key.clone()).set(bulky_value(key)).await.expect("seed");
    }
    keys
}

fn bulky_value(key: &str) -> Vec<u8> {
    let mut value = key.as_bytes().repeat(BULKY_VALUE_BYTES / key.len() + 1);
    value.truncate(BULKY_VALUE_BYTES);
    value
}

/// Large enough that the first migration step takes many batches, so the target can be
/// stopped in the middle of it.
const BULKY_VALUE_BYTES: usize = 256 * 1024;
const BULKY_KEYS: usize = 160;

async fn keys_held(node: &EngramServer) -> u64 {
    total_keys(&node.front_only_client(Duration::from_secs(10)).await).await
}

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
