//! The load the elastic-cluster tests run while slots move and control planes fail
//! (`tests/tests/cluster.rs`, `etcd_faults.rs`), and what it must leave behind:
//! - counters incremented by several tasks, each increment counted once acknowledged:
//!   every counter must end equal to its acknowledged increments (none lost, none
//!   doubled), and a sampled history of some of them must be linearizable;
//! - two holders taking turns on one lock, each doing a read-modify-write under it: the
//!   guarded value must equal the critical sections completed, the fences must strictly
//!   increase in the order the lock was granted, and an outside witness (a marker file
//!   each holder creates exclusively once it holds the lock and removes before it
//!   releases) must never find another holder inside;
//! - barrier parties passing generation after generation: all must agree on each one.
//!
//! Every operation must succeed (the client retries what is retryable within its
//! timeout): a failure is counted and fails the check.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_client::Client;

use crate::linearizability::{check_per_key, first_failure, CounterInput, CounterModel, HistoryRecorder};
use crate::processes::Scratch;

pub const COUNTERS: usize = 1_000;
const INCREMENTERS: usize = 8;
/// Counters whose every operation is recorded for the linearizability check.
const SAMPLED_COUNTERS: usize = 16;
const BARRIER_PARTIES: u32 = 3;
const LOCK_HOLDERS: usize = 2;
/// A holder's lease and its wait for the lock, and a party's wait at the barrier: longer
/// than any freeze the tests cause (a killed control-plane leader leaves a step's slots
/// frozen until its successor's reconcile, some 6 s), so no lease runs out under a
/// holder that is only waiting for a frozen slot.
const COORDINATION_WAIT: Duration = Duration::from_secs(20);

type CounterHistory = HistoryRecorder<usize, CounterInput, i64>;

/// Names of the single-key objects the load shares: chosen on one shard, so that moving
/// that shard's slots moves them while they are in use.
pub struct SharedKeys {
    pub lock: String,
    pub guarded: String,
    pub barrier: String,
}

impl SharedKeys {
    pub fn on_shard(map: &engram_proto::SlotMap, shard_index: usize) -> SharedKeys {
        let on = |prefix: &str| crate::routing::key_on_shard(map, b"default", shard_index, prefix);
        SharedKeys {
            lock: on("cluster-lock"),
            guarded: on("cluster-guarded"),
            barrier: on("cluster-barrier"),
        }
    }
}

/// How much of the load was acknowledged so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Counter increments.
    pub writes: u64,
    /// Counter reads.
    pub reads: u64,
    /// Lock rounds (acquire, read-modify-write, release).
    pub critical_sections: u64,
}

/// What the lock holders record, besides the guarded value.
#[derive(Default)]
struct LockWitness {
    /// Fences in the order the holders got them (each appended while the marker says the
    /// appender alone holds the lock).
    fences: Mutex<Vec<u64>>,
    /// Times a holder found the marker already there.
    overlaps: AtomicU64,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Vec<AtomicU64>>,
    reads: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    history: Arc<CounterHistory>,
    critical_sections: Arc<AtomicU64>,
    witness: Arc<LockWitness>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    barrier_tasks: Vec<tokio::task::JoinHandle<Vec<u64>>>,
    /// Highest generation any party has passed, and the generation after which every
    /// party stops (set at stop time to two past the highest: no party can have passed
    /// that one yet, so all of them stop after the same round).
    barrier_seen: Arc<AtomicU64>,
    barrier_stop_at: Arc<AtomicU64>,
    /// Where the lock's marker lives.
    _witness_dir: Scratch,
}

fn counter_key(index: usize) -> String {
    format!("cluster-counter-{index}")
}

/// Shared by the tasks of one load.
#[derive(Clone)]
struct Shared {
    client: Client,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
}

impl Load {
    pub fn start(client: &Client, keys: &SharedKeys) -> Load {
        let shared = Shared {
            client: client.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            failures: Arc::new(AtomicU64::new(0)),
        };
        let acknowledged: Arc<Vec<AtomicU64>> = Arc::new((0..COUNTERS).map(|_| AtomicU64::new(0)).collect());
        let history = Arc::new(CounterHistory::new());
        let reads = Arc::new(AtomicU64::new(0));
        let critical_sections = Arc::new(AtomicU64::new(0));
        let witness = Arc::new(LockWitness::default());
        let witness_dir = Scratch::new("cluster-lock-witness");
        let mut tasks = Vec::new();
        for worker in 0..INCREMENTERS {
            tasks.push(tokio::spawn(increment(
                shared.clone(),
                worker,
                acknowledged.clone(),
                history.clone(),
            )));
        }
        tasks.push(tokio::spawn(read_sampled(
            shared.clone(),
            reads.clone(),
            history.clone(),
        )));
        for holder in 0..LOCK_HOLDERS {
            tasks.push(tokio::spawn(hold_in_turn(
                shared.clone(),
                holder,
                (keys.lock.clone(), keys.guarded.clone()),
                (witness.clone(), witness_dir.path().join("held")),
                critical_sections.clone(),
            )));
        }
        let barrier_seen = Arc::new(AtomicU64::new(0));
        let barrier_stop_at = Arc::new(AtomicU64::new(u64::MAX));
        let barrier_tasks = (0..BARRIER_PARTIES)
            .map(|party| {
                tokio::spawn(pass_generations(
                    shared.clone(),
                    party,
                    keys.barrier.clone(),
                    (barrier_seen.clone(), barrier_stop_at.clone()),
                ))
            })
            .collect();
        Load {
            stop: shared.stop,
            acknowledged,
            reads,
            failures: shared.failures,
            history,
            critical_sections,
            witness,
            tasks,
            barrier_tasks,
            barrier_seen,
            barrier_stop_at,
            _witness_dir: witness_dir,
        }
    }

    /// What was acknowledged so far.
    pub fn progress(&self) -> Progress {
        Progress {
            writes: self.acknowledged.iter().map(|count| count.load(Relaxed)).sum(),
            reads: self.reads.load(Relaxed),
            critical_sections: self.critical_sections.load(Relaxed),
        }
    }

    /// Operations that failed so far (each said why on stderr).
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Waits until at least `writes` more increments than now were acknowledged, so a
    /// test knows the load runs before it disturbs the cluster.
    pub async fn wait_for_writes(&self, writes: u64) {
        let target = self.progress().writes + writes;
        let deadline = std::time::Instant::now() + crate::STEP_TIMEOUT;
        while self.progress().writes < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the load did not make {writes} increments within {:?} ({} failures)",
                crate::STEP_TIMEOUT,
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load and checks everything it did against the cluster.
    pub async fn stop_and_check(self, client: &Client, keys: &SharedKeys) {
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
        check_counters(client, &self.acknowledged).await;
        let verdicts = check_per_key(&CounterModel, &self.history.history());
        assert_eq!(verdicts.len(), SAMPLED_COUNTERS);
        if let Some(failure) = first_failure(&verdicts) {
            panic!("sampled counter history is not linearizable: {failure}");
        }
        check_lock(client, keys, self.critical_sections.load(Relaxed), &self.witness).await;
        check_barrier(&sequences);
    }
}

/// Every worker walks all counters, and all of them keep coming back to the sampled
/// ones, so those see real concurrency.
async fn increment(shared: Shared, worker: usize, acknowledged: Arc<Vec<AtomicU64>>, history: Arc<CounterHistory>) {
    let mut step = worker;
    while !shared.stop.load(Relaxed) {
        let index = if step.is_multiple_of(4) {
            step / 4 % SAMPLED_COUNTERS
        } else {
            step % COUNTERS
        };
        step += INCREMENTERS + 1;
        let counter = shared.client.counter(counter_key(index));
        let token =
            (index < SAMPLED_COUNTERS).then(|| history.invoke(worker as u64, index, CounterInput::Add { delta: 1 }));
        match counter.add(1).await {
            Ok(value) => {
                acknowledged[index].fetch_add(1, Relaxed);
                if let Some(token) = token {
                    history.complete(token, value);
                }
            }
            // The outcome is unknown: the history keeps it as such.
            Err(error) => {
                shared.failures.fetch_add(1, Relaxed);
                eprintln!("incr {index} failed: {error}");
            }
        }
    }
}

async fn read_sampled(shared: Shared, reads: Arc<AtomicU64>, history: Arc<CounterHistory>) {
    let mut index = 0;
    while !shared.stop.load(Relaxed) {
        index = (index + 1) % SAMPLED_COUNTERS;
        let token = history.invoke(INCREMENTERS as u64, index, CounterInput::Get);
        match shared.client.counter(counter_key(index)).get().await {
            Ok(value) => {
                history.complete(token, value);
                reads.fetch_add(1, Relaxed);
            }
            Err(error) => {
                shared.failures.fetch_add(1, Relaxed);
                eprintln!("get {index} failed: {error}");
            }
        }
    }
}

/// Rounds on the lock: acquire, enter the witness, read-modify-write the guarded value,
/// leave the witness, release.
async fn hold_in_turn(
    shared: Shared,
    holder: usize,
    (lock_key, guarded_key): (String, String),
    (witness, marker): (Arc<LockWitness>, PathBuf),
    critical_sections: Arc<AtomicU64>,
) {
    let lock = shared.client.lock(lock_key);
    let guarded = shared.client.bytes(guarded_key);
    while !shared.stop.load(Relaxed) {
        let outcome = async {
            let guard = lock
                .acquire(format!("holder-{holder}"), COORDINATION_WAIT, COORDINATION_WAIT)
                .await?;
            enter(&witness, &marker, guard.fence());
            // A read-modify-write that only a real mutual exclusion keeps exact.
            let work = async {
                let current = guarded.get().await?.map_or(0, |versioned| {
                    String::from_utf8_lossy(&versioned.value).parse::<u64>().unwrap_or(0)
                });
                guarded.set((current + 1).to_string()).await
            }
            .await;
            leave(&marker);
            work?;
            guard.release().await
        }
        .await;
        match outcome {
            Ok(()) => {
                critical_sections.fetch_add(1, Relaxed);
            }
            Err(error) => {
                shared.failures.fetch_add(1, Relaxed);
                eprintln!("lock round failed: {error}");
            }
        }
    }
}

/// Creates the marker exclusively (a holder already inside is an overlap) and records the
/// fence.
fn enter(witness: &LockWitness, marker: &Path, fence: u64) {
    if let Err(error) = OpenOptions::new().write(true).create_new(true).open(marker) {
        witness.overlaps.fetch_add(1, Relaxed);
        eprintln!("fence {fence}: cannot create {} exclusively: {error}", marker.display());
    }
    witness
        .fences
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(fence);
}

fn leave(marker: &Path) {
    if let Err(error) = std::fs::remove_file(marker) {
        eprintln!("cannot remove {}: {error}", marker.display());
    }
}

async fn pass_generations(
    shared: Shared,
    party: u32,
    barrier_key: String,
    (seen, stop_at): (Arc<AtomicU64>, Arc<AtomicU64>),
) -> Vec<u64> {
    let barrier = shared.client.barrier(barrier_key, BARRIER_PARTIES);
    let mut generations = Vec::new();
    loop {
        match barrier.wait(COORDINATION_WAIT).await {
            Ok(passage) => {
                generations.push(passage.generation);
                seen.fetch_max(passage.generation, Relaxed);
                if passage.generation >= stop_at.load(Relaxed) {
                    return generations;
                }
            }
            Err(error) => {
                shared.failures.fetch_add(1, Relaxed);
                eprintln!("barrier party {party} failed: {error}");
                return generations;
            }
        }
    }
}

/// Every counter holds exactly its acknowledged increments.
async fn check_counters(client: &Client, acknowledged: &[AtomicU64]) {
    let mut total = 0;
    for (index, acknowledged) in acknowledged.iter().enumerate() {
        let acknowledged = acknowledged.load(Relaxed) as i64;
        let value = client.counter(counter_key(index)).get().await.expect("read counter");
        assert_eq!(
            value, acknowledged,
            "counter {index}: {value} stored, {acknowledged} acknowledged"
        );
        total += acknowledged;
    }
    assert!(total > COUNTERS as i64, "the load barely ran: {total} increments");
}

/// One holder at a time, by the guarded value, the marker and the fences.
async fn check_lock(client: &Client, keys: &SharedKeys, sections: u64, witness: &LockWitness) {
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
    assert_eq!(
        witness.overlaps.load(Relaxed),
        0,
        "two holders were inside at once (the marker was there)"
    );
    let fences = witness.fences.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    assert!(fences.len() as u64 >= sections, "a completed round recorded no fence");
    if let Some(pair) = fences.windows(2).find(|pair| pair[1] <= pair[0]) {
        panic!(
            "fence {} granted after fence {}: fences must strictly increase",
            pair[1], pair[0]
        );
    }
}

/// All parties passed the same generations, one after the other.
fn check_barrier(sequences: &[Vec<u64>]) {
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
