//! Deterministic simulation of live migration, in the spirit of TigerBeetle's VOPR and
//! FoundationDB's simulator: the real migration orchestrator, `Membership` and planner
//! of the control plane and the real store of the shards, with model nodes, shards and
//! clients, over a seeded network that drops, delays, reorders and duplicates messages,
//! while nodes crash or pause and the control plane crashes and restarts from its state
//! file. Any failing seed replays to the same failure.
//!
//! - `cargo nextest run -p engram-tests -E 'test(sim)'` runs `ENGRAM_SIM_SEEDS` seeds
//!   (1,000 by default).
//! - `ENGRAM_SIM_SEED=N` runs seed N alone and prints its trace (add `--no-capture`);
//!   `ENGRAM_SIM_BUG=commit-before-prepared` (or `serve-frozen-slots`) runs it with that
//!   bug injected (with `ENGRAM_SIM_SEEDS`, every seed).
//!
//! Layout: [`world`] (events, faults, invariants), [`control`] (the control plane around
//! the real orchestrator), [`node`] and [`shard`] (the node and shard side of the
//! protocol), [`client`], [`net`] (messages), [`rng`].

mod client;
mod control;
mod net;
mod node;
mod rng;
mod shard;
mod world;

use std::time::Instant;

use engram_tests::seeds::{env_u64, print_replay, run_reporting};
use world::{Failure, Options, Summary, World};

/// A known bug to inject, to show that the invariants catch it and that its failing
/// seed replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The control plane commits a step without waiting for the source's
    /// `MigrationPrepared` (the driver hands the orchestrator a fake answer).
    CommitBeforePrepared,
    /// A shard keeps serving slots it froze for a migration.
    ServeFrozenSlots,
}

impl Bug {
    fn parse(name: &str) -> Option<Bug> {
        match name {
            "commit-before-prepared" => Some(Bug::CommitBeforePrepared),
            "serve-frozen-slots" => Some(Bug::ServeFrozenSlots),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bug::CommitBeforePrepared => "commit-before-prepared",
            Bug::ServeFrozenSlots => "serve-frozen-slots",
        }
    }
}

/// Seeds the CI run covers.
const SEEDS_DEFAULT: u64 = 1_000;
/// Seeds searched for one that an injected bug makes fail.
const BUG_SEARCH_SEEDS_MAX: u64 = 300;

fn run(seed: u64, bug: Option<Bug>, trace: bool) -> (Result<Summary, Failure>, Vec<String>) {
    World::new(&Options { seed, bug, trace }).run()
}

fn replay_command(seed: u64, bug: Option<Bug>) -> String {
    let bug = bug.map_or(String::new(), |bug| format!("ENGRAM_SIM_BUG={} ", bug.name()));
    format!("{bug}ENGRAM_SIM_SEED={seed} cargo nextest run -p engram-tests -E 'test(sim_migration)' --no-capture")
}

/// The bug `ENGRAM_SIM_BUG` names, if any.
fn env_bug() -> Option<Bug> {
    std::env::var("ENGRAM_SIM_BUG")
        .ok()
        .map(|name| Bug::parse(&name).unwrap_or_else(|| panic!("ENGRAM_SIM_BUG={name} names no known bug")))
}

/// Runs one seed with its trace printed.
fn replay(seed: u64) {
    let (outcome, trace) = run(seed, env_bug(), true);
    print_replay(seed, outcome, &trace);
}

#[test]
fn sim_migration_keeps_its_invariants_across_seeds() {
    if let Some(seed) = env_u64("ENGRAM_SIM_SEED") {
        replay(seed);
        return;
    }
    let seeds = env_u64("ENGRAM_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let bug = env_bug();
    let started = Instant::now();
    let mut total = Summary::default();
    let (passed, failures) = run_reporting(seeds, |seed| run(seed, bug, false).0, |seed| replay_command(seed, bug));
    for summary in &passed {
        add(&mut total, summary);
    }
    println!(
        "{seeds} seeds in {:.1} s: {} steps, {} s simulated; {} increments acknowledged, {} given up on SlotLost; \
         {} migrations committed, {} aborted; {} node crashes, {} node pauses, {} control-plane crashes; {} keys lost",
        started.elapsed().as_secs_f64(),
        total.steps,
        total.time_ms / 1000,
        total.acked,
        total.unknown,
        total.commits,
        total.aborts,
        total.node_crashes,
        total.node_pauses,
        total.control_crashes,
        total.lost_keys
    );
    assert!(
        total.commits > seeds && total.aborts > 0,
        "the seeds exercise too little: {total:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; first: {:?}",
        failures.len(),
        failures[0]
    );
}

fn add(total: &mut Summary, summary: &Summary) {
    total.steps += summary.steps;
    total.time_ms += summary.time_ms;
    total.acked += summary.acked;
    total.unknown += summary.unknown;
    total.commits += summary.commits;
    total.aborts += summary.aborts;
    total.node_crashes += summary.node_crashes;
    total.node_pauses += summary.node_pauses;
    total.control_crashes += summary.control_crashes;
    total.lost_keys += summary.lost_keys;
}

/// An injected bug makes some seed fail; running that seed again fails the same way
/// (same invariant, step and trace digest), and without the bug the seed passes.
#[test]
fn sim_a_failing_seed_replays_to_the_same_failure() {
    for bug in [Bug::CommitBeforePrepared, Bug::ServeFrozenSlots] {
        let (seed, failure) = (0..BUG_SEARCH_SEEDS_MAX)
            .find_map(|seed| run(seed, Some(bug), false).0.err().map(|failure| (seed, failure)))
            .unwrap_or_else(|| panic!("no seed below {BUG_SEARCH_SEEDS_MAX} catches {bug:?}"));
        println!(
            "{bug:?}: seed {seed} fails: {failure:?}\n  replay: {}",
            replay_command(seed, Some(bug))
        );
        let again = run(seed, Some(bug), false).0.expect_err("the replay fails too");
        assert_eq!(again, failure, "seed {seed} replayed to another failure");
        let traced = run(seed, Some(bug), true).0.expect_err("the traced replay fails too");
        assert_eq!(traced, failure, "tracing changed the run of seed {seed}");
        if let Err(clean) = run(seed, None, false).0 {
            panic!("seed {seed} fails without the bug too: {clean:?}");
        }
    }
}
