//! Deterministic simulation of replication and failover: the real store and the real
//! replication state machines (`engram_server::replication`) in four model nodes, a
//! control plane that promotes backups and restores the replica count, and clients
//! counting, over a seeded network with loss, delay, reordering and duplicates, while
//! nodes crash, pause and are cut off, and groups are handed over from primary to
//! backup. Any failing seed replays to the same failure.
//!
//! - `cargo nextest run -p engram-tests -E 'test(sim_replication)'` runs
//!   `ENGRAM_SIM_REPLICATION_SEEDS` seeds (1,000 by default).
//! - `ENGRAM_SIM_REPLICATION_SEED=N` runs seed N alone and prints its trace (add
//!   `--no-capture`); `ENGRAM_SIM_REPLICATION_BUG=no-lease` (or `answer-before-backup`,
//!   `early-promotion`, `release-after-deposed`, `serve-frozen`) injects that bug.
//!
//! Layout: [`world`] (events, faults, clients, invariants), [`control`] (promotion and
//! repair), [`node`] (a shard's shell around the state machines), [`model`] (map and
//! messages), `rng` (shared with the migration simulation).

mod control;
mod model;
mod node;
#[path = "../simulation/rng.rs"]
mod rng;
mod world;

use std::time::Instant;

use engram_tests::seeds::{env_u64, print_replay, run_reporting};
use world::{Failure, Options, Summary, World};

/// A known bug to inject, to show the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A node serves as primary whatever its lease: a paused or cut-off primary goes on
    /// while its backup is promoted.
    NoLease,
    /// A primary answers before its backups applied the write.
    AnswerBeforeBackup,
    /// The control plane declares a node dead after less silence than the node's lease,
    /// so it promotes a backup while the old primary may still serve.
    EarlyPromotion,
    /// A primary that lost its group (its backup promoted) answers the writes it held
    /// as done once the new map closes their streams.
    ReleaseAfterDeposed,
    /// A primary handing a group over goes on serving it: once the backup's map names
    /// it primary, both serve.
    ServeFrozen,
}

impl Bug {
    fn parse(name: &str) -> Option<Bug> {
        match name {
            "no-lease" => Some(Bug::NoLease),
            "answer-before-backup" => Some(Bug::AnswerBeforeBackup),
            "early-promotion" => Some(Bug::EarlyPromotion),
            "release-after-deposed" => Some(Bug::ReleaseAfterDeposed),
            "serve-frozen" => Some(Bug::ServeFrozen),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bug::NoLease => "no-lease",
            Bug::AnswerBeforeBackup => "answer-before-backup",
            Bug::EarlyPromotion => "early-promotion",
            Bug::ReleaseAfterDeposed => "release-after-deposed",
            Bug::ServeFrozen => "serve-frozen",
        }
    }
}

const SEEDS_DEFAULT: u64 = 1_000;
/// Seeds searched for one that an injected bug makes fail.
const BUG_SEARCH_SEEDS_MAX: u64 = 200;

fn run(seed: u64, bug: Option<Bug>) -> (Result<Summary, Failure>, Vec<String>) {
    World::new(&Options { seed, bug }).run()
}

fn env_bug() -> Option<Bug> {
    std::env::var("ENGRAM_SIM_REPLICATION_BUG")
        .ok()
        .map(|name| Bug::parse(&name).unwrap_or_else(|| panic!("ENGRAM_SIM_REPLICATION_BUG={name} names no known bug")))
}

fn replay_command(seed: u64, bug: Option<Bug>) -> String {
    let bug = bug.map_or(String::new(), |bug| {
        format!("ENGRAM_SIM_REPLICATION_BUG={} ", bug.name())
    });
    format!(
        "{bug}ENGRAM_SIM_REPLICATION_SEED={seed} cargo nextest run -p engram-tests -E 'test(sim_replication)' --no-capture"
    )
}

fn add(total: &mut Summary, run: &Summary) {
    total.increments += run.increments;
    total.reads += run.reads;
    total.failovers += run.failovers;
    total.repairs += run.repairs;
    total.hand_overs += run.hand_overs;
    total.crashes += run.crashes;
    total.pauses += run.pauses;
    total.partitions += run.partitions;
}

#[test]
fn sim_replication_keeps_acknowledged_writes_and_one_primary_across_seeds() {
    if let Some(seed) = env_u64("ENGRAM_SIM_REPLICATION_SEED") {
        let (outcome, trace) = run(seed, env_bug());
        print_replay(seed, outcome, &trace);
        return;
    }
    let seeds = env_u64("ENGRAM_SIM_REPLICATION_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let bug = env_bug();
    let started = Instant::now();
    let mut total = Summary::default();
    let (passed, failures) = run_reporting(seeds, |seed| run(seed, bug).0, |seed| replay_command(seed, bug));
    for summary in &passed {
        add(&mut total, summary);
    }
    println!(
        "{seeds} seeds in {:.1} s: {} increments and {} reads acknowledged; {} failovers, {} repairs, \
         {} hand-overs; {} crashes, {} pauses, {} partitions",
        started.elapsed().as_secs_f64(),
        total.increments,
        total.reads,
        total.failovers,
        total.repairs,
        total.hand_overs,
        total.crashes,
        total.pauses,
        total.partitions
    );
    assert!(failures.is_empty(), "{} of {seeds} seeds failed", failures.len());
    assert!(
        total.failovers > seeds
            && total.repairs > seeds
            && total.hand_overs > seeds
            && total.pauses > 0
            && total.partitions > 0,
        "the seeds exercise too little: {total:?}"
    );
}

/// Each injected bug makes some seed fail, and that seed fails the same way again.
#[test]
fn sim_replication_catches_injected_bugs_and_their_seeds_replay() {
    for bug in [
        Bug::NoLease,
        Bug::AnswerBeforeBackup,
        Bug::EarlyPromotion,
        Bug::ReleaseAfterDeposed,
        Bug::ServeFrozen,
    ] {
        let failing = (0..BUG_SEARCH_SEEDS_MAX)
            .find_map(|seed| run(seed, Some(bug)).0.err().map(|failure| (seed, failure)))
            .unwrap_or_else(|| panic!("no seed below {BUG_SEARCH_SEEDS_MAX} catches {bug:?}"));
        let (seed, failure) = failing;
        println!("{bug:?}: seed {seed}: {failure:?}");
        assert_eq!(run(seed, Some(bug)).0.err(), Some(failure), "seed {seed} replays");
    }
}
