//! Running many seeds of a simulation on every core. Each seed alone decides its run, so
//! the order the seeds run in changes nothing; the outcomes come back in seed order.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_once_and_comes_back_in_order() {
        let outcomes = run_seeds(37, |seed| seed * seed);
        let expected: Vec<(u64, u64)> = (0..37).map(|seed| (seed, seed * seed)).collect();
        assert_eq!(outcomes, expected);
    }
}
