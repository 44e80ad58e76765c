//! Eight OS processes pass 100 generations of one cyclic barrier (8 parties) of a real
//! `engramd` together. Each process records what every wait returned (`GENERATION
//! INDEX`); the test requires every process to have seen generations 0..99 in order, and
//! in each generation the eight arrival indexes to be exactly 0..7, once each.
//!
//! Two variants: shell loops around `engram barrier wait` (a new process and connection
//! per wait), and processes using the blocking Rust client (one connection throughout).
//! The latter are this test executable started again with `--ignored --exact
//! worker_process` and the role in the environment (see [`worker_process`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use engram_tests::binaries;
use engram_tests::{unique_key, EngramServer, ServerOptions};

const PROCESSES: usize = 8;
const GENERATIONS: usize = 100;
/// How long one wait may last at the server (its maximum). Only a process that stops
/// arriving makes a generation wait that long; then the generation breaks and the test
/// fails with the error.
const WAIT_MS: u64 = 60_000;
/// Bound on a whole run of the processes.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Exit codes of the waiting processes.
const EXIT_WAIT_FAILED: i32 = 10;
const EXIT_RECORD_IO: i32 = 21;

/// Environment of a client worker process.
const ROLE_ENV: &str = "ENGRAMTESTS_BARRIER_WORKER";
const ADDR_ENV: &str = "ENGRAMTESTS_ADDR";
const NAME_ENV: &str = "ENGRAMTESTS_BARRIER";
const OUT_ENV: &str = "ENGRAMTESTS_OUT";

/// One CLI party: GENERATIONS waits, each result appended to its own record.
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
                Some(EXIT_WAIT_FAILED) => "a barrier wait failed",
                Some(EXIT_RECORD_IO) => "recording a passage failed",
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
            .arg(scratch.0.join(format!("{party}.out")))
            .stdout(Stdio::null())
            .stderr(stderr_file(&scratch.0, party));
        processes.spawn(party.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(&scratch.0, &statuses);
    check_records(&scratch.0, &parties);
}

#[test]
fn eight_client_processes_pass_one_hundred_generations() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-barrier-client");
    let name = unique_key("barrier-client");
    let parties: Vec<String> = (0..PROCESSES).map(|index| format!("client{index}")).collect();
    let mut processes = Processes::new();
    for party in &parties {
        let mut command = worker_command("wait");
        command
            .env(ADDR_ENV, server.front().to_string())
            .env(NAME_ENV, &name)
            .env(OUT_ENV, scratch.0.join(format!("{party}.out")))
            .stderr(stderr_file(&scratch.0, party));
        processes.spawn(party.clone(), command);
    }
    let statuses = processes.wait_all(RUN_LIMIT);
    require_success(&scratch.0, &statuses);
    check_records(&scratch.0, &parties);
}

/// Entry point of a client worker process: does nothing unless started by the tests
/// above with its role in the environment (`cargo nextest` does not run it: ignored).
#[test]
#[ignore = "a child-process entry point, started by the other tests of this file"]
fn worker_process() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    assert_eq!(role, "wait", "unknown worker role");
    let variable = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let address = variable(ADDR_ENV);
    let name = variable(NAME_ENV);
    let out = PathBuf::from(variable(OUT_ENV));

    let fail = |code: i32, message: String| -> ! {
        eprintln!("{message}");
        std::process::exit(code)
    };
    let client = engram_client::blocking::Client::connect(
        engram_client::Client::builder(address).timeout(Duration::from_secs(20)),
    )
    .unwrap_or_else(|error| fail(EXIT_WAIT_FAILED, format!("connect: {error}")));
    let barrier = client.barrier(name.as_bytes(), PROCESSES as u32);
    let mut record = File::create(&out).unwrap_or_else(|error| fail(EXIT_RECORD_IO, format!("create record: {error}")));
    for round in 0..GENERATIONS {
        let passage = barrier
            .wait(Duration::from_millis(WAIT_MS))
            .unwrap_or_else(|error| fail(EXIT_WAIT_FAILED, format!("wait {round}: {error}")));
        record
            .write_all(format!("{} {}\n", passage.generation, passage.arrival_index).as_bytes())
            .unwrap_or_else(|error| fail(EXIT_RECORD_IO, format!("record: {error}")));
    }
}
