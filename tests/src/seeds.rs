//! What the seeded simulations share: running many seeds on every core (each seed alone
//! decides its run, so the order the seeds run in changes nothing; the outcomes come back
//! in seed order), their event queue in virtual time, and their numeric settings from
//! the environment.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Most threads a seed run uses, whatever the machine has.
pub const SEED_THREADS_MAX: usize = 8;

/// `run(seed)` for seeds `0..seeds`, spread over the machine's cores (at most
/// `SEED_THREADS_MAX`), as `(seed, outcome)` in seed order.
pub fn run_seeds<T: Send>(seeds: u64, run: impl Fn(u64) -> T + Sync) -> Vec<(u64, T)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(SEED_THREADS_MAX) as u64;
    let run = &run;
    let mut outcomes: Vec<(u64, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    (worker..seeds)
                        .step_by(threads as usize)
                        .map(|seed| (seed, run(seed)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a simulation thread panicked"))
            .collect()
    });
    outcomes.sort_by_key(|(seed, _)| *seed);
    outcomes
}

/// Runs seeds `0..seeds` on every core (as [`run_seeds`]) and prints each failure with
/// the command that replays it; returns the outcomes of the seeds that passed and the
/// failures, each in seed order.
pub fn run_reporting<S: Send, F: Send + std::fmt::Debug>(
    seeds: u64,
    run: impl Fn(u64) -> Result<S, F> + Sync,
    replay_command: impl Fn(u64) -> String,
) -> (Vec<S>, Vec<(u64, F)>) {
    let mut passed = Vec::new();
    let mut failures = Vec::new();
    for (seed, outcome) in run_seeds(seeds, run) {
        match outcome {
            Ok(summary) => passed.push(summary),
            Err(failure) => {
                println!("seed {seed} failed: {failure:?}\n  replay: {}", replay_command(seed));
                failures.push((seed, failure));
            }
        }
    }
    (passed, failures)
}

/// Prints a replayed seed's trace and how it ended.
///
/// # Panics
/// With the seed's failure, so the test that replays it fails.
pub fn print_replay<S: std::fmt::Debug, F: std::fmt::Debug>(seed: u64, outcome: Result<S, F>, trace: &[String]) {
    for line in trace {
        println!("{line}");
    }
    match outcome {
        Ok(summary) => println!("seed {seed}: ok {summary:?}"),
        Err(failure) => panic!("seed {seed} failed: {failure:?}"),
    }
}

/// A number from the environment (a seed, a count of seeds); `None` when unset.
///
/// # Panics
/// When the variable is set to something that is not a number: a typo must not run a
/// different simulation silently.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

/// Events due at virtual times, taken in time order and, at equal times, in the order
/// they were scheduled, so a run depends on its seed alone.
pub struct EventQueue<E> {
    now_ms: u64,
    next_seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: std::collections::HashMap<u64, E>,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            now_ms: 0,
            next_seq: 0,
            queue: BinaryHeap::new(),
            events: std::collections::HashMap::new(),
        }
    }
}

impl<E> EventQueue<E> {
    /// The time of the event taken last.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Schedules `event` `after_ms` from now.
    pub fn schedule(&mut self, after_ms: u64, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((self.now_ms + after_ms, seq)));
        self.events.insert(seq, event);
    }

    /// The next event, with the clock moved to its time.
    pub fn pop(&mut self) -> Option<E> {
        let Reverse((at, seq)) = self.queue.pop()?;
        self.now_ms = at;
        self.events.remove(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_once_and_comes_back_in_order() {
        let outcomes = run_seeds(37, |seed| seed * seed);
        let expected: Vec<(u64, u64)> = (0..37).map(|seed| (seed, seed * seed)).collect();
        assert_eq!(outcomes, expected);
    }

    #[test]
    fn events_come_in_time_order_and_equal_times_in_scheduling_order() {
        let mut queue = EventQueue::default();
        queue.schedule(5, "late");
        queue.schedule(1, "first");
        queue.schedule(1, "second");
        let mut taken = Vec::new();
        while let Some(event) = queue.pop() {
            taken.push((queue.now_ms(), event));
        }
        assert_eq!(taken, vec![(1, "first"), (1, "second"), (5, "late")]);
    }
}
