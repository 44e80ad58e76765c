//! The README's lock example (`client/examples/invocation_lock.rs`, built by this crate as
//! `engram-example-invocation-lock`) is safe to copy: four processes run it at once
//! against one `engramd`, several invocations each, and the witness it leaves outside
//! Engram shows that no two critical sections overlapped (a marker file created with
//! `create_new`: the example fails if it already exists) and that fences strictly
//! increased across all processes (a log line `FENCE OWNER` per critical section, written
//! while holding the lock, so in the order of the grants). The README shows the example
//! as it is, so what is tested here is what readers copy.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engram_tests::binaries;
use engram_tests::processes::{scrubbed, stderr_file, stderr_text, Processes, Scratch};
use engram_tests::{EngramServer, ServerOptions};

const PROCESSES: usize = 4;
/// Invocations per process, one after the other.
const ROUNDS: usize = 25;
/// Bound on a whole run of the processes.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn four_processes_running_the_readme_example_never_hold_the_lock_together() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-readme-example");
    let labels: Vec<String> = (0..PROCESSES).map(|index| format!("example{index}")).collect();
    let mut processes = Processes::new();
    for label in &labels {
        let stdout = File::create(scratch.path().join(format!("{label}.stdout"))).expect("create stdout file");
        let mut command = scrubbed(binaries::example_invocation_lock());
        command
            .env("ENGRAM_ADDR", server.front().to_string())
            .env("WITNESS_DIR", scratch.path())
            .env("ROUNDS", ROUNDS.to_string())
            .stdout(stdout)
            .stderr(stderr_file(scratch.path(), label));
        processes.spawn(label.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    let failures: Vec<String> = statuses
        .iter()
        .filter(|(_, status)| !status.success())
        .map(|(label, status)| format!("{label}: {status}: {}", stderr_text(scratch.path(), label).trim()))
        .collect();
    assert!(
        failures.is_empty(),
        "example processes failed (\"two holders at once\" is an overlap):\n{}",
        failures.join("\n")
    );
    assert!(
        !scratch.path().join("db-migration.held").exists(),
        "the last holder removed its marker"
    );

    // Every invocation of every process held the lock once, under its own owner id.
    let mut reported = HashSet::new();
    for label in &labels {
        let stdout = std::fs::read_to_string(scratch.path().join(format!("{label}.stdout"))).expect("read stdout");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            ROUNDS,
            "{label} reports one grant per invocation: {stdout:?}"
        );
        for line in lines {
            let owner = line
                .split(' ')
                .next()
                .filter(|owner| owner.starts_with("invocation-"))
                .unwrap_or_else(|| panic!("{label} printed {line:?}"));
            assert!(reported.insert(owner.to_string()), "owner {owner} was used twice");
        }
    }

    // The log, in the order of the grants: fences strictly increase across processes,
    // and it names exactly the invocations that reported.
    let log = std::fs::read_to_string(scratch.path().join("db-migration.log")).expect("read the witness log");
    let mut logged = HashSet::new();
    let mut previous: Option<u64> = None;
    for line in log.lines() {
        let (fence, owner) = line
            .split_once(' ')
            .and_then(|(fence, owner)| Some((fence.parse::<u64>().ok()?, owner)))
            .unwrap_or_else(|| panic!("log line {line:?} is not `FENCE OWNER`"));
        if let Some(previous) = previous {
            assert!(
                fence > previous,
                "fences must strictly increase in the order of the grants: {fence} (by {owner}) after {previous}"
            );
        }
        previous = Some(fence);
        assert!(logged.insert(owner.to_string()), "{owner} logged twice");
    }
    assert_eq!(logged.len(), PROCESSES * ROUNDS, "one log line per invocation");
    assert_eq!(logged, reported, "the log names the invocations that reported a grant");

    // Every invocation released: the lock is free.
    let holder = server.cli(&["--namespace", "my-app", "lock", "holder", "db-migration"]);
    assert_eq!(
        holder.status.code(),
        Some(1),
        "lock holder after the run: {:?}",
        String::from_utf8_lossy(&holder.stdout)
    );
}

#[test]
fn the_readme_shows_the_example_as_it_is() {
    let readme = std::fs::read_to_string(workspace_file("README.md")).expect("read README.md");
    let example =
        std::fs::read_to_string(workspace_file("client/examples/invocation_lock.rs")).expect("read the example");
    assert!(
        readme.contains(&format!("```rust,no_run\n{example}```\n")),
        "README.md must show client/examples/invocation_lock.rs verbatim in a ```rust,no_run block \
         (it is compiled there as a doc test, and run here from several processes)"
    );
}
