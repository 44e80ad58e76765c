//! Deterministic simulation of the control plane's leadership in etcd: several
//! control-plane processes run the real `leadership` state machine (with a driver that
//! does what `election.rs` and the controller's conditional saves do) against a model of
//! etcd (linearizable keys with revisions, leases that expire, conditional
//! transactions), over a network that drops, delays and reorders messages, while
//! processes pause (their clocks jump) and crash. Any failing seed replays.
//!
//! - `cargo nextest run -p engram-tests -E 'test(sim_leadership)'` runs
//!   `ENGRAM_SIM_LEADERSHIP_SEEDS` seeds (1,000 by default).
//! - `ENGRAM_SIM_LEADERSHIP_SEED=N` runs seed N alone and prints its trace (add
//!   `--no-capture`); `ENGRAM_SIM_LEADERSHIP_BUG=unconditioned-writes` runs with state
//!   writes conditioned on the state's revision only, not on holding the leader key.
//!
//! Layout: [`world`] (processes, network, faults, invariants), [`etcd`] (the model and
//! the checks of what it accepted), `rng` (shared with the migration simulation).

mod etcd;
#[path = "../simulation/rng.rs"]
mod rng;
mod world;

use std::time::Instant;

use engram_tests::seeds::{env_u64, print_replay, run_reporting};
use world::{Failure, Options, Summary, World};

/// A known bug to inject, to show that the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// State writes are conditioned on the state's mod revision only: a deposed leader
    /// whose write arrives before its successor's first write is accepted.
    UnconditionedWrites,
}

impl Bug {
    fn parse(name: &str) -> Option<Bug> {
        match name {
            "unconditioned-writes" => Some(Bug::UnconditionedWrites),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bug::UnconditionedWrites => "unconditioned-writes",
        }
    }
}

/// Seeds the CI run covers.
const SEEDS_DEFAULT: u64 = 1_000;
/// Seeds searched for one that an injected bug makes fail.
const BUG_SEARCH_SEEDS_MAX: u64 = 500;

fn run(seed: u64, bug: Option<Bug>, trace: bool) -> (Result<Summary, Failure>, Vec<String>) {
    World::new(&Options { seed, bug, trace }).run()
}

fn replay_command(seed: u64, bug: Option<Bug>) -> String {
    let bug = bug.map_or(String::new(), |bug| {
        format!("ENGRAM_SIM_LEADERSHIP_BUG={} ", bug.name())
    });
    format!(
        "{bug}ENGRAM_SIM_LEADERSHIP_SEED={seed} cargo nextest run -p engram-tests -E 'test(sim_leadership)' --no-capture"
    )
}

fn env_bug() -> Option<Bug> {
    std::env::var("ENGRAM_SIM_LEADERSHIP_BUG")
        .ok()
        .map(|name| Bug::parse(&name).unwrap_or_else(|| panic!("ENGRAM_SIM_LEADERSHIP_BUG={name} names no known bug")))
}

#[test]
fn sim_leadership_keeps_its_invariants_across_seeds() {
    if let Some(seed) = env_u64("ENGRAM_SIM_LEADERSHIP_SEED") {
        let (outcome, trace) = run(seed, env_bug(), true);
        print_replay(seed, outcome, &trace);
        return;
    }
    let seeds = env_u64("ENGRAM_SIM_LEADERSHIP_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let bug = env_bug();
    let started = Instant::now();
    let mut total = Summary::default();
    let (passed, failures) = run_reporting(seeds, |seed| run(seed, bug, false).0, |seed| replay_command(seed, bug));
    for summary in &passed {
        add(&mut total, summary);
    }
    println!(
        "{seeds} seeds in {:.1} s: {} terms, {} writes accepted, {} refused, {} writes right after a pause; \
         {} pauses, {} crashes, {} messages lost",
        started.elapsed().as_secs_f64(),
        total.terms,
        total.accepted,
        total.refused,
        total.writes_after_pause,
        total.pauses,
        total.crashes,
        total.messages_lost
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first: {:?}",
        failures.len(),
        failures[0]
    );
    assert!(
        total.terms > 2 * seeds && total.refused > 0 && total.writes_after_pause > 0,
        "the seeds exercise too little: {total:?}"
    );
}

fn add(total: &mut Summary, summary: &Summary) {
    total.accepted += summary.accepted;
    total.refused += summary.refused;
    total.writes_after_pause += summary.writes_after_pause;
    total.terms += summary.terms;
    total.pauses += summary.pauses;
    total.crashes += summary.crashes;
    total.messages_lost += summary.messages_lost;
}

/// Writes not conditioned on holding the leader key are caught: some seed fails, its
/// replay fails the same way (traced or not), and it passes without the bug.
#[test]
fn sim_leadership_catches_writes_not_conditioned_on_leadership() {
    let bug = Bug::UnconditionedWrites;
    let (seed, failure) = (0..BUG_SEARCH_SEEDS_MAX)
        .find_map(|seed| run(seed, Some(bug), false).0.err().map(|failure| (seed, failure)))
        .unwrap_or_else(|| panic!("no seed below {BUG_SEARCH_SEEDS_MAX} catches {bug:?}"));
    println!(
        "{bug:?}: seed {seed} fails: {failure:?}\n  replay: {}",
        replay_command(seed, Some(bug))
    );
    assert!(
        failure.invariant.contains("leader key was held by"),
        "caught by another check: {failure:?}"
    );
    let again = run(seed, Some(bug), false).0.expect_err("the replay fails too");
    assert_eq!(again, failure, "seed {seed} replayed to another failure");
    let traced = run(seed, Some(bug), true).0.expect_err("the traced replay fails too");
    assert_eq!(traced, failure, "tracing changed the run of seed {seed}");
    if let Err(clean) = run(seed, None, false).0 {
        panic!("seed {seed} fails without the bug too: {clean:?}");
    }
}
