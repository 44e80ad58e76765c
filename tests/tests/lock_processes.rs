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
//! latter are this test executable started again with `--ignored --exact worker_process`
//! and the role in the environment (see [`worker_process`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use engram_tests::binaries;
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

/// Exit codes of the contending processes.
const EXIT_ACQUIRE_FAILED: i32 = 10;
const EXIT_RELEASE_FAILED: i32 = 11;
const EXIT_OVERLAP: i32 = 20;
const EXIT_WITNESS_IO: i32 = 21;
const EXIT_FENCE_NOT_INCREASING: i32 = 30;

/// Environment of a client worker process.
const ROLE_ENV: &str = "ENGRAMTESTS_LOCK_WORKER";
const ADDR_ENV: &str = "ENGRAMTESTS_ADDR";
const NAME_ENV: &str = "ENGRAMTESTS_LOCK";
const OWNER_ENV: &str = "ENGRAMTESTS_OWNER";
const DIR_ENV: &str = "ENGRAMTESTS_DIR";
const ROUNDS_ENV: &str = "ENGRAMTESTS_ROUNDS";

/// One CLI contender: ROUNDS times acquire, witness, release.
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

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Scratch {
        let path = std::env::temp_dir().join(unique_key(prefix));
        std::fs::create_dir_all(&path).expect("create scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Child processes, each the leader of its own process group; every group still
/// running is killed (SIGKILL) on drop, so a failing test leaves nothing behind.
struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    fn new() -> Processes {
        Processes { children: Vec::new() }
    }

    fn spawn(&mut self, label: String, mut command: Command) {
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot spawn {label}: {error}"));
        self.children.push((label, child));
    }

    /// Waits for every process, up to `limit` in all; panics naming those still running.
    fn wait_all(&mut self, limit: Duration) -> Vec<(String, ExitStatus)> {
        let deadline = Instant::now() + limit;
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        loop {
            for ((_, child), status) in self.children.iter_mut().zip(statuses.iter_mut()) {
                if status.is_none() {
                    *status = child.try_wait().expect("try_wait");
                }
            }
            if statuses.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                let running: Vec<&str> = self
                    .children
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, status)| status.is_none())
                    .map(|((label, _), _)| label.as_str())
                    .collect();
                panic!("still running after {limit:?}: {running:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let labels = self.children.drain(..).map(|(label, _)| label);
        labels.zip(statuses.into_iter().flatten()).collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) of the process group led by our unreaped child.
                unsafe {
                    libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                }
                let _ = child.wait();
            }
        }
    }
}

/// A command whose environment has no `ENGRAM_*` variable (every engram flag has one).
fn scrubbed(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ENGRAM_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Where process `label`'s stderr goes.
fn stderr_file(dir: &Path, label: &str) -> File {
    File::create(dir.join(format!("{label}.stderr"))).expect("create stderr file")
}

fn stderr_text(dir: &Path, label: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{label}.stderr"))).unwrap_or_default()
}

/// This test executable, run again as one client worker.
fn worker_command(role: &str) -> Command {
    let mut command = scrubbed(std::env::current_exe().expect("path of the test executable"));
    command
        .args([
            "--ignored",
            "--exact",
            "worker_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE_ENV, role)
        .stdout(Stdio::null());
    command
}

/// Requires every process to have exited 0, reporting each failure with its stderr.
fn require_success(dir: &Path, statuses: &[(String, ExitStatus)]) {
    let failures: Vec<String> = statuses
        .iter()
        .filter(|(_, status)| !status.success())
        .map(|(label, status)| {
            let meaning = match status.code() {
                Some(EXIT_ACQUIRE_FAILED) => "acquire failed",
                Some(EXIT_RELEASE_FAILED) => "release failed",
                Some(EXIT_OVERLAP) => "TWO HOLDERS AT ONCE (witness already present)",
                Some(EXIT_WITNESS_IO) => "witness I/O failed",
                Some(EXIT_FENCE_NOT_INCREASING) => "its fences did not strictly increase",
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
            .arg(&scratch.0)
            .arg(CLI_ROUNDS.to_string())
            .stdout(Stdio::null())
            .stderr(stderr_file(&scratch.0, owner));
        processes.spawn(owner.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(&scratch.0, &statuses);
    let fences = check_log(&scratch.0, PROCESSES * CLI_ROUNDS, &owners, CLI_ROUNDS);
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
        let mut command = worker_command("contend");
        command
            .env(ADDR_ENV, server.front().to_string())
            .env(NAME_ENV, &name)
            .env(OWNER_ENV, owner)
            .env(DIR_ENV, &scratch.0)
            .env(ROUNDS_ENV, CLIENT_ROUNDS.to_string())
            .stderr(stderr_file(&scratch.0, owner));
        processes.spawn(owner.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(&scratch.0, &statuses);
    let fences = check_log(&scratch.0, PROCESSES * CLIENT_ROUNDS, &owners, CLIENT_ROUNDS);
    assert!(fences[0] >= 1, "fences start at 1 or above");
    assert_lock_free(&server, &name);
}

/// Entry point of a client worker process: does nothing unless started by the tests
/// above with its role in the environment (`cargo nextest` does not run it: ignored).
#[test]
#[ignore = "a child-process entry point, started by the other tests of this file"]
fn worker_process() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    assert_eq!(role, "contend", "unknown worker role");
    let variable = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let address = variable(ADDR_ENV);
    let name = variable(NAME_ENV);
    let owner = variable(OWNER_ENV);
    let dir = PathBuf::from(variable(DIR_ENV));
    let rounds: usize = variable(ROUNDS_ENV).parse().expect("rounds is a number");

    let fail = |code: i32, message: String| -> ! {
        eprintln!("{owner}: {message}");
        std::process::exit(code)
    };
    let client = engram_client::blocking::Client::connect(
        engram_client::Client::builder(address).timeout(Duration::from_secs(20)),
    )
    .unwrap_or_else(|error| fail(EXIT_ACQUIRE_FAILED, format!("connect: {error}")));
    let lock = client.lock(name.as_bytes());
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap_or_else(|error| fail(EXIT_WITNESS_IO, format!("open log: {error}")));
    let marker = dir.join("held");
    let mut last = 0u64;
    for round in 0..rounds {
        let guard = lock
            .acquire(
                owner.as_bytes(),
                Duration::from_millis(LEASE_MS),
                Duration::from_millis(WAIT_MS),
            )
            .unwrap_or_else(|error| fail(EXIT_ACQUIRE_FAILED, format!("acquire in round {round}: {error}")));
        let fence = guard.fence();
        if let Err(error) = OpenOptions::new().write(true).create_new(true).open(&marker) {
            fail(
                EXIT_OVERLAP,
                format!(
                    "cannot create {} exclusively after acquiring fence {fence}: {error}",
                    marker.display()
                ),
            );
        }
        // One write(2) per line: O_APPEND makes each land whole at the end.
        log.write_all(format!("enter {fence} {owner}\n").as_bytes())
            .unwrap_or_else(|error| fail(EXIT_WITNESS_IO, format!("log: {error}")));
        if fence <= last {
            fail(EXIT_FENCE_NOT_INCREASING, format!("fence {fence} after {last}"));
        }
        last = fence;
        std::thread::yield_now();
        log.write_all(format!("exit {fence} {owner}\n").as_bytes())
            .unwrap_or_else(|error| fail(EXIT_WITNESS_IO, format!("log: {error}")));
        std::fs::remove_file(&marker)
            .unwrap_or_else(|error| fail(EXIT_WITNESS_IO, format!("remove {}: {error}", marker.display())));
        guard
            .release()
            .unwrap_or_else(|error| fail(EXIT_RELEASE_FAILED, format!("release of fence {fence}: {error}")));
    }
}
