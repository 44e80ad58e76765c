//! Eight OS processes contend for one lock of a real `engramd` over many rounds. Mutual
//! exclusion is checked by witnesses outside Engram, in a scratch directory:
//! - a marker each holder creates exclusively (`mkdir` / `O_CREAT|O_EXCL`) right after
//!   acquiring and removes right before releasing: if it already exists, two holders
//!   overlapped and the process exits with [`EXIT_OVERLAP`];
//! - a log, appended to (`O_APPEND`, one `write` per line) by every holder with
//!   `enter FENCE OWNER` after the marker and `exit FENCE OWNER` before removing it. The
//!   test requires it to alternate enter/exit of the same grant, with fences strictly
//!   increasing in that (acquisition) order, hence unique across processes.
//!
//! Each process also checks that the fences it sees itself strictly increase.
//!
//! Two variants: shell loops around the `engram` CLI (a new connection per call), and
//! processes using the blocking Rust client (one connection held throughout). The
//! latter are `engram-test-worker lock` processes (`tests/src/bin/engram-test-worker.rs`).

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use engram_tests::binaries;
use engram_tests::processes::{exit, scrubbed, stderr_file, stderr_text, worker_command, Processes, Scratch};
use engram_tests::{unique_key, EngramServer, ServerOptions};

const PROCESSES: usize = 8;
/// Rounds per CLI process (8 × 25 = 200 acquisitions).
const CLI_ROUNDS: usize = 25;
/// Rounds per client process (8 × 50 = 400 acquisitions).
const CLIENT_ROUNDS: usize = 50;
/// Long enough that no holder loses the lock to its lease while it works, even on a
/// loaded machine: this test is about mutual exclusion, not expiry.
const LEASE_MS: u64 = 30_000;
/// Longest wait for the lock (the server's maximum); a wait only runs out if the
/// server stops granting.
const WAIT_MS: u64 = 60_000;
/// Bound on a whole run of the processes.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// One CLI contender: ROUNDS times acquire, witness, release. Exit codes as in
/// [`exit`].
const CLI_LOOP: &str = r#"
set -u
engram="$1"; addr="$2"; name="$3"; owner="$4"; dir="$5"; rounds="$6"
last=0
round=0
while [ "$round" -lt "$rounds" ]; do
    fence=$("$engram" --addr "$addr" --timeout-ms 20000 lock acquire "$name" --owner "$owner" \
        --lease-ms 30000 --wait-ms 60000) || { echo "$owner: acquire exited $?" >&2; exit 10; }
    mkdir "$dir/held" 2>/dev/null || { echo "$owner: $dir/held exists after acquiring fence $fence" >&2; exit 20; }
    echo "enter $fence $owner" >> "$dir/log" || exit 21
    [ "$fence" -gt "$last" ] || { echo "$owner: fence $fence after $last" >&2; exit 30; }
    last=$fence
    echo "exit $fence $owner" >> "$dir/log" || exit 21
    rmdir "$dir/held" || exit 21
    "$engram" --addr "$addr" --timeout-ms 20000 lock release "$name" --owner "$owner" --token "$fence" >/dev/null \
        || { echo "$owner: release of fence $fence exited $?" >&2; exit 11; }
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
                Some(exit::ACQUIRE_FAILED) => "acquire failed",
                Some(exit::RELEASE_FAILED) => "release failed",
                Some(exit::OVERLAP) => "TWO HOLDERS AT ONCE (witness already present)",
                Some(exit::WITNESS_IO) => "witness I/O failed",
                Some(exit::FENCE_NOT_INCREASING) => "its fences did not strictly increase",
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
        "contending processes failed:\n{}",
        failures.join("\n")
    );
}

/// Checks the shared log: `enter F O` / `exit F O` pairs of the same grant, never
/// interleaved, fences strictly increasing in log order, `expected` grants in all, and
/// `per_owner` of them for each of `owners`. Returns the fences in order.
fn check_log(dir: &Path, expected: usize, owners: &[String], per_owner: usize) -> Vec<u64> {
    let log = std::fs::read_to_string(dir.join("log")).expect("read the witness log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.len(),
        2 * expected,
        "the log holds an enter and an exit line per acquisition"
    );
    let parse = |line: &str, kind: &str| -> (u64, String) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert!(
            fields.len() == 3 && fields[0] == kind,
            "expected `{kind} FENCE OWNER`, got {line:?}"
        );
        let fence = fields[1]
            .parse()
            .unwrap_or_else(|_| panic!("fence in {line:?} is not a number"));
        (fence, fields[2].to_string())
    };
    let mut fences = Vec::with_capacity(expected);
    let mut grants_per_owner = std::collections::HashMap::<String, usize>::new();
    for (position, pair) in lines.chunks(2).enumerate() {
        let (enter_fence, enter_owner) = parse(pair[0], "enter");
        let (exit_fence, exit_owner) = parse(pair[1], "exit");
        assert_eq!(
            (enter_fence, &enter_owner),
            (exit_fence, &exit_owner),
            "grant {position}: another holder entered before the holder of fence {enter_fence} left \
             (lines {:?} then {:?})",
            pair[0],
            pair[1]
        );
        if let Some(&previous) = fences.last() {
            assert!(
                enter_fence > previous,
                "fences must strictly increase in acquisition order: {enter_fence} (by {enter_owner}) after {previous}"
            );
        }
        fences.push(enter_fence);
        *grants_per_owner.entry(enter_owner).or_default() += 1;
    }
    for owner in owners {
        assert_eq!(
            grants_per_owner.get(owner).copied().unwrap_or(0),
            per_owner,
            "{owner} logged one grant per round"
        );
    }
    assert_eq!(
        grants_per_owner.len(),
        owners.len(),
        "only the contenders logged grants"
    );
    fences
}

/// After the run the lock is free again.
fn assert_lock_free(server: &EngramServer, name: &str) {
    let output = server.cli(&["lock", "holder", name]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "lock holder after every release: {:?} {:?}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn eight_cli_processes_take_turns_on_one_lock() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-lock-cli");
    let name = unique_key("lock-cli");
    let engram = binaries::engram_cli();
    let front = server.front().to_string();
    let owners: Vec<String> = (0..PROCESSES).map(|index| format!("cli{index}")).collect();
    let mut processes = Processes::new();
    for owner in &owners {
        let mut command = scrubbed("sh");
        command
            .arg("-c")
            .arg(CLI_LOOP)
            .arg("lock-loop")
            .arg(&engram)
            .arg(&front)
            .arg(&name)
            .arg(owner)
            .arg(scratch.path())
            .arg(CLI_ROUNDS.to_string())
            .stdout(Stdio::null())
            .stderr(stderr_file(scratch.path(), owner));
        processes.spawn(owner.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(scratch.path(), &statuses);
    let fences = check_log(scratch.path(), PROCESSES * CLI_ROUNDS, &owners, CLI_ROUNDS);
    assert!(fences[0] >= 1, "fences start at 1 or above");
    assert_lock_free(&server, &name);
}

#[test]
fn eight_client_processes_take_turns_on_one_lock() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-lock-client");
    let name = unique_key("lock-client");
    let owners: Vec<String> = (0..PROCESSES).map(|index| format!("client{index}")).collect();
    let mut processes = Processes::new();
    for owner in &owners {
        let mut command = worker_command("lock");
        command
            .arg("--addr")
            .arg(server.front().to_string())
            .args(["--name", &name, "--owner", owner])
            .arg("--dir")
            .arg(scratch.path())
            .args(["--rounds", &CLIENT_ROUNDS.to_string()])
            .args(["--lease-ms", &LEASE_MS.to_string(), "--wait-ms", &WAIT_MS.to_string()])
            .stderr(stderr_file(scratch.path(), owner));
        processes.spawn(owner.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(scratch.path(), &statuses);
    let fences = check_log(scratch.path(), PROCESSES * CLIENT_ROUNDS, &owners, CLIENT_ROUNDS);
    assert!(fences[0] >= 1, "fences start at 1 or above");
    assert_lock_free(&server, &name);
}
