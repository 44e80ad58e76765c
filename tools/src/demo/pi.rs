//! Monte Carlo π, local and disaggregated.
//!
//! Each of `workers` participants throws `points / workers / rounds` darts per round at
//! the unit square, adds its hits to a shared counter, and waits at a barrier for the
//! others before the next round, exactly as threads would with an `AtomicU64` and a
//! `std::sync::Barrier`. The disaggregated run does it with worker processes that share
//! nothing but an Engram counter and barrier, through the blocking client, so the code
//! of a round is the same shape in both. The ratio of the two times is the cost of
//! transparency: what using remote state instead of local state costs this workload.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_client::blocking;
use engram_client::Client;

/// How long a worker waits at the barrier for the slowest other worker.
pub const BARRIER_WAIT_MS_MAX: u64 = 60_000;
/// Leases nothing here; the counter and barrier are plain objects. Call timeout of the
/// workers' client.
pub const CALL_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct PiPlan {
    pub workers: u32,
    pub points: u64,
    pub rounds: u32,
}

impl PiPlan {
    /// Darts one worker throws in one round (the remainder of the division is dropped,
    /// and [`PiPlan::total_points`] says how many are thrown in all).
    pub fn points_per_worker_round(&self) -> u64 {
        self.points / u64::from(self.workers) / u64::from(self.rounds)
    }

    pub fn total_points(&self) -> u64 {
        self.points_per_worker_round() * u64::from(self.workers) * u64::from(self.rounds)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PiOutcome {
    pub estimate: f64,
    pub elapsed: Duration,
}

/// SplitMix64: a tiny, fast, well-mixed generator; each worker gets its own seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Darts inside the quarter circle out of `points` thrown.
pub fn throw(points: u64, seed: u64) -> u64 {
    let mut random = SplitMix(seed);
    let mut hits = 0;
    for _ in 0..points {
        let (x, y) = (random.unit(), random.unit());
        hits += u64::from(x * x + y * y <= 1.0);
    }
    hits
}

fn seed_of(worker: u32, round: u32) -> u64 {
    (u64::from(worker) << 32 | u64::from(round)).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA076_1D64_78BD_642F
}

/// The local baseline: threads, an `AtomicU64` and a `std::sync::Barrier`.
pub fn run_local(plan: &PiPlan) -> PiOutcome {
    let hits = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(plan.workers as usize));
    let started = Instant::now();
    let threads: Vec<_> = (0..plan.workers)
        .map(|worker| {
            let (hits, barrier, plan) = (hits.clone(), barrier.clone(), plan.clone());
            std::thread::spawn(move || {
                for round in 0..plan.rounds {
                    let round_hits = throw(plan.points_per_worker_round(), seed_of(worker, round));
                    hits.fetch_add(round_hits, Ordering::Relaxed);
                    barrier.wait();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a local worker panicked");
    }
    PiOutcome {
        estimate: estimate(hits.load(Ordering::Relaxed), plan.total_points()),
        elapsed: started.elapsed(),
    }
}

fn estimate(hits: u64, points: u64) -> f64 {
    4.0 * hits as f64 / points as f64
}

/// The keys one run uses; the run id keeps concurrent runs apart and the `{tag}` puts
/// the counter and the barrier on the same shard.
pub fn run_keys(run_id: &str) -> (String, String) {
    (format!("{{pi-{run_id}}}:hits"), format!("{{pi-{run_id}}}:round"))
}

/// One disaggregated worker (run in its own process by [`run_disaggregated`]).
pub fn work(address: &str, run_id: &str, worker: u32, plan: &PiPlan) -> Result<(), engram_client::Error> {
    let client = blocking::Client::connect(Client::builder(address).timeout(Duration::from_millis(CALL_TIMEOUT_MS)))?;
    let (hits_key, barrier_key) = run_keys(run_id);
    let hits = client.counter(hits_key);
    let barrier = client.barrier(barrier_key, plan.workers);
    for round in 0..plan.rounds {
        let round_hits = throw(plan.points_per_worker_round(), seed_of(worker, round));
        hits.add(round_hits as i64)?;
        barrier.wait(Duration::from_millis(BARRIER_WAIT_MS_MAX))?;
    }
    Ok(())
}

/// Starts `plan.workers` worker processes of `program` (this binary) and waits for all.
/// Returns the estimate read from the shared counter and the wall time from the first
/// spawn to the last exit (process start-up included, as a serverless fan-out would pay).
pub fn run_disaggregated(program: &std::path::Path, address: &str, plan: &PiPlan) -> Result<PiOutcome, String> {
    let run_id = format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(plan.workers as usize);
    for worker in 0..plan.workers {
        let child = Command::new(program)
            .args(["pi-worker", "--addr", address, "--run", &run_id])
            .args(["--worker", &worker.to_string(), "--workers", &plan.workers.to_string()])
            .args([
                "--points",
                &plan.points.to_string(),
                "--rounds",
                &plan.rounds.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start worker {worker}: {error}"))?;
        children.push(child);
    }
    let mut failures = Vec::new();
    for (worker, mut child) in children.into_iter().enumerate() {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => failures.push(format!("worker {worker} exited with {status}")),
            Err(error) => failures.push(format!("worker {worker}: {error}")),
        }
    }
    let elapsed = started.elapsed();
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    let client = blocking::Client::connect(Client::builder(address)).map_err(|error| error.to_string())?;
    let (hits_key, barrier_key) = run_keys(&run_id);
    let hits = client
        .counter(hits_key.clone())
        .get()
        .map_err(|error| error.to_string())?;
    // Leave nothing behind.
    let _ = client.bytes(hits_key).del();
    let _ = client.bytes(barrier_key).del();
    Ok(PiOutcome {
        estimate: estimate(hits as u64, plan.total_points()),
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_estimate_is_close_to_pi() {
        let outcome = run_local(&PiPlan {
            workers: 4,
            points: 400_000,
            rounds: 4,
        });
        assert!(
            (outcome.estimate - std::f64::consts::PI).abs() < 0.02,
            "{}",
            outcome.estimate
        );
    }

    #[test]
    fn rounds_split_points_evenly() {
        let plan = PiPlan {
            workers: 3,
            points: 1_000,
            rounds: 4,
        };
        assert_eq!(plan.points_per_worker_round(), 83);
        assert_eq!(plan.total_points(), 996);
    }

    #[test]
    fn throws_are_deterministic_per_seed() {
        assert_eq!(throw(10_000, 7), throw(10_000, 7));
        assert_ne!(throw(10_000, 7), throw(10_000, 8));
    }
}
