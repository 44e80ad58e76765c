//! Eight OS processes pass 100 generations of one cyclic barrier (8 parties) of a real
//! `engramd` together. Each process records what every wait returned (`GENERATION
//! INDEX`); the test requires every process to have seen generations 0..99 in order, and
//! in each generation the eight arrival indexes to be exactly 0..7, once each.
//!
//! Two variants: shell loops around `engram barrier wait` (a new process and connection
//! per wait), and processes using the blocking Rust client (one connection throughout).
//! The latter are `engram-test-worker barrier` processes
//! (`tests/src/bin/engram-test-worker.rs`).

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use engram_tests::binaries;
use engram_tests::processes::{exit, scrubbed, stderr_file, stderr_text, worker_command, Processes, Scratch};
use engram_tests::{unique_key, EngramServer, ServerOptions};

const PROCESSES: usize = 8;
const GENERATIONS: usize = 100;
/// How long one wait may last at the server (its maximum). Only a process that stops
/// arriving makes a generation wait that long; then the generation breaks and the test
/// fails with the error.
const WAIT_MS: u64 = 60_000;
/// Bound on a whole run of the processes.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One CLI party: GENERATIONS waits, each result appended to its own record. Exit codes
/// as in [`exit`].
const CLI_LOOP: &str = r#"
set -u
engram="$1"; addr="$2"; name="$3"; parties="$4"; generations="$5"; out="$6"
round=0
while [ "$round" -lt "$generations" ]; do
    passage=$("$engram" --addr "$addr" --timeout-ms 60000 barrier wait "$name" --parties "$parties") \
        || { echo "wait $round exited $?" >&2; exit 10; }
    echo "$passage" >> "$out" || exit 21
    round=$((round + 1))
done
"#;

/// Requires every process to have exited 0, reporting each failure with its stderr.
fn require_success(dir: &Path, statuses: &[(String, ExitStatus)]) {
    let failures: Vec<String> = statuses
        .iter()
        .filter(|(_, status)| !status.success())
        .map(|(label, status)| {
            let meaning = match status.code() {
                Some(exit::WAIT_FAILED) => "a barrier wait failed",
                Some(exit::RECORD_IO) => "recording a passage failed",
                _ => "unexpected",
            };
            format!(
                "{label}: {status} ({meaning}); stderr: {}",
                stderr_text(dir, label).trim()
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "barrier processes failed:\n{}",
        failures.join("\n")
    );
}

/// Reads each party's record (`GENERATION INDEX` per line) and checks it: generations
/// 0..GENERATIONS in order for every party, and indexes 0..PROCESSES once each per
/// generation.
fn check_records(dir: &Path, parties: &[String]) {
    let mut indexes_by_generation = vec![Vec::new(); GENERATIONS];
    for party in parties {
        let record = std::fs::read_to_string(dir.join(format!("{party}.out")))
            .unwrap_or_else(|error| panic!("read the record of {party}: {error}"));
        let passages: Vec<(u64, u32)> = record
            .lines()
            .map(|line| {
                let parsed = line
                    .split_once(' ')
                    .and_then(|(generation, index)| Some((generation.parse().ok()?, index.parse().ok()?)));
                parsed.unwrap_or_else(|| panic!("{party}: `GENERATION INDEX` expected, got {line:?}"))
            })
            .collect();
        let generations: Vec<u64> = passages.iter().map(|&(generation, _)| generation).collect();
        assert_eq!(
            generations,
            (0..GENERATIONS as u64).collect::<Vec<_>>(),
            "{party} passed generations 0..{GENERATIONS} in order"
        );
        for (generation, index) in passages {
            indexes_by_generation[generation as usize].push(index);
        }
    }
    for (generation, mut indexes) in indexes_by_generation.into_iter().enumerate() {
        indexes.sort_unstable();
        assert_eq!(
            indexes,
            (0..PROCESSES as u32).collect::<Vec<_>>(),
            "generation {generation}: the arrival indexes of the {PROCESSES} parties are 0..{PROCESSES} once each"
        );
    }
}

#[test]
fn eight_cli_processes_pass_one_hundred_generations() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-barrier-cli");
    let name = unique_key("barrier-cli");
    let engram = binaries::engram_cli();
    let front = server.front().to_string();
    let parties: Vec<String> = (0..PROCESSES).map(|index| format!("cli{index}")).collect();
    let mut processes = Processes::new();
    for party in &parties {
        let mut command = scrubbed("sh");
        command
            .arg("-c")
            .arg(CLI_LOOP)
            .arg("barrier-loop")
            .arg(&engram)
            .arg(&front)
            .arg(&name)
            .arg(PROCESSES.to_string())
            .arg(GENERATIONS.to_string())
            .arg(scratch.path().join(format!("{party}.out")))
            .stdout(Stdio::null())
            .stderr(stderr_file(scratch.path(), party));
        processes.spawn(party.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(scratch.path(), &statuses);
    check_records(scratch.path(), &parties);
}

#[test]
fn eight_client_processes_pass_one_hundred_generations() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-barrier-client");
    let name = unique_key("barrier-client");
    let parties: Vec<String> = (0..PROCESSES).map(|index| format!("client{index}")).collect();
    let mut processes = Processes::new();
    for party in &parties {
        let mut command = worker_command("barrier");
        command
            .arg("--addr")
            .arg(server.front().to_string())
            .args(["--name", &name])
            .args(["--parties", &PROCESSES.to_string()])
            .args(["--generations", &GENERATIONS.to_string()])
            .args(["--wait-ms", &WAIT_MS.to_string()])
            .arg("--out")
            .arg(scratch.path().join(format!("{party}.out")))
            .stderr(stderr_file(scratch.path(), party));
        processes.spawn(party.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(scratch.path(), &statuses);
    check_records(scratch.path(), &parties);
}
