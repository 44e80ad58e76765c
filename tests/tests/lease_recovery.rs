//! A process holding a lock and 2 of 3 semaphore permits of a real `engramd` is killed
//! with SIGKILL. Its lease, not its connection, governs: until the lease ends the lock
//! still names the dead owner and its permits stay taken; when it ends, a process that
//! was already waiting for the lock gets it with a higher fence, another waiting for all
//! 3 permits gets them, and the dead owner's grants are gone (releasing them is refused).
//!
//! The holder is an `engram-test-worker hold` process (`tests/src/bin/engram-test-worker.rs`);
//! it keeps its connection open until it is killed. The waiters are `engram` CLI processes.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use engram_tests::binaries;
use engram_tests::processes::{scrubbed, stderr_file, stderr_text, worker_command, Processes, Scratch};
use engram_tests::server::describe;
use engram_tests::{poll_until, unique_key, EngramServer, ServerOptions, STEP_TIMEOUT};

/// Lease of the doomed holder's lock and permits. Long enough that the queries right
/// after the SIGKILL are always answered before it ends, even on a loaded 2-core machine,
/// so the test always checks that the dead owner still holds.
const LEASE: Duration = Duration::from_millis(10_000);
/// How long the waiters wait: well above the lease, so only a server that never frees
/// the dead owner's grants makes them run out.
const WAITER_WAIT_MS: u64 = 30_000;
const CAPACITY: u32 = 3;
const HELD_PERMITS: u32 = 2;
/// Bound on the waiters' processes.
const RUN_LIMIT: Duration = Duration::from_secs(90);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `engram ARGS` against `server`, requiring exit code `code`; returns stdout trimmed.
fn cli_expect(server: &EngramServer, arguments: &[&str], code: i32) -> String {
    let output = server.cli(arguments);
    assert_eq!(
        output.status.code(),
        Some(code),
        "engram {arguments:?}: {}",
        describe(&output)
    );
    text(&output.stdout).trim().to_string()
}

/// The `engram` CLI against `server`, as a waiter process whose stdout goes to a file.
fn waiter(server: &EngramServer, dir: &Path, label: &str, arguments: &[&str]) -> Command {
    let mut command = scrubbed(binaries::engram_cli());
    command
        .args(["--addr", &server.front().to_string(), "--timeout-ms", "20000"])
        .args(arguments)
        .stdout(File::create(dir.join(format!("{label}.stdout"))).expect("create stdout file"))
        .stderr(stderr_file(dir, label));
    command
}

/// Owner and fence from `engram lock holder --json`.
fn holder_from_json(stdout: &[u8]) -> (String, u64) {
    let holder: serde_json::Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|error| panic!("lock holder --json printed {:?}: {error}", text(stdout)));
    let owner = holder["owner"].as_str().expect("owner is a string").to_string();
    let fence = holder["fence"].as_u64().expect("fence is a number");
    assert!(holder["lease_remaining_ms"].is_u64(), "lease_remaining_ms: {holder}");
    (owner, fence)
}

fn stdout_text(dir: &Path, label: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{label}.stdout"))).unwrap_or_default()
}

#[test]
fn a_killed_holder_keeps_its_lock_and_permits_until_the_lease_ends() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let scratch = Scratch::new("engram-lease");
    let lock = unique_key("lease-lock");
    let semaphore = unique_key("lease-sem");
    let capacity = CAPACITY.to_string();
    let doomed = "doomed-holder";
    let ready = scratch.path().join("ready");

    // The holder: takes the lock and 2 of 3 permits, reports them, then idles with its
    // connection open until it is killed.
    let spawned_at = Instant::now();
    let mut holder = Processes::new();
    let mut command = worker_command("hold");
    command
        .arg("--addr")
        .arg(server.front().to_string())
        .args(["--lock", &lock, "--semaphore", &semaphore])
        .args(["--capacity", &capacity, "--permits", &HELD_PERMITS.to_string()])
        .args(["--owner", doomed, "--lease-ms", &LEASE.as_millis().to_string()])
        .arg("--ready")
        .arg(&ready)
        .stderr(stderr_file(scratch.path(), "holder"));
    holder.spawn("holder".to_string(), command);
    let report = poll_until(STEP_TIMEOUT, Duration::from_millis(5), || {
        std::fs::read_to_string(&ready).ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "the holder did not report its grants within {STEP_TIMEOUT:?}; stderr: {}",
            stderr_text(scratch.path(), "holder")
        )
    });
    let (dead_fence, dead_permit) = report
        .trim()
        .split_once(' ')
        .and_then(|(fence, permit)| Some((fence.parse::<u64>().ok()?, permit.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("holder reported {report:?}, not `FENCE PERMIT_ID`"));

    // Waiters queue up behind the holder while it is alive.
    let mut waiters = Processes::new();
    let wait_ms = WAITER_WAIT_MS.to_string();
    let lease_ms = "10000";
    waiters.spawn(
        "lock-waiter".to_string(),
        waiter(
            &server,
            scratch.path(),
            "lock-waiter",
            &[
                "lock",
                "acquire",
                &lock,
                "--owner",
                "heir",
                "--lease-ms",
                lease_ms,
                "--wait-ms",
                &wait_ms,
            ],
        ),
    );
    waiters.spawn(
        "sem-waiter".to_string(),
        waiter(
            &server,
            scratch.path(),
            "sem-waiter",
            &[
                "sem",
                "acquire",
                &semaphore,
                "--capacity",
                &capacity,
                "--permits",
                &capacity,
                "--owner",
                "heir",
                "--lease-ms",
                lease_ms,
                "--wait-ms",
                &wait_ms,
            ],
        ),
    );

    // SIGKILL: no release, no goodbye; the holder's connection just drops.
    let status = holder.kill("holder");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the holder was still running (holding) when killed, not exited with {status}; stderr: {}",
        stderr_text(scratch.path(), "holder")
    );

    // Until the lease ends, the dead owner still holds the lock and its permits. The
    // lease is long enough that these queries always come before its end; how long after
    // `spawned_at` they were answered is in the messages, for a machine slow beyond that.
    let holder_line = server.cli(&["lock", "holder", &lock, "--json"]);
    let available = server.cli(&["sem", "available", &semaphore, "--capacity", &capacity]);
    let queried = spawned_at.elapsed();
    assert_eq!(
        holder_line.status.code(),
        Some(0),
        "lock holder while the dead owner's {LEASE:?} lease runs ({queried:?} after spawning it): {}",
        describe(&holder_line)
    );
    assert_eq!(
        holder_from_json(&holder_line.stdout),
        (doomed.to_string(), dead_fence),
        "lock holder names the killed owner and its fence, {queried:?} after spawning it"
    );
    assert_eq!(
        available.status.code(),
        Some(0),
        "sem available: {}",
        describe(&available)
    );
    assert_eq!(
        text(&available.stdout).trim(),
        (CAPACITY - HELD_PERMITS).to_string(),
        "the killed owner's permits stay taken while its {LEASE:?} lease runs ({queried:?} after spawning it)"
    );

    // When the lease ends, the waiters get what the dead owner had.
    let statuses = waiters.wait_all(RUN_LIMIT);
    let waited = spawned_at.elapsed();
    for (label, status) in &statuses {
        assert!(
            status.success(),
            "{label} exited {status} (4: its wait ran out, the dead owner's grant was never freed); \
             stdout {:?}, stderr {:?}",
            stdout_text(scratch.path(), label),
            stderr_text(scratch.path(), label)
        );
    }
    // A lower bound only (never a flake on a slow machine): the grants could not pass to
    // the waiters before the dead owner's lease, which began after `spawned_at`, ended.
    // The slack covers a server clock of millisecond resolution.
    assert!(
        waited + Duration::from_millis(20) >= LEASE,
        "the waiters got the lock and permits after {waited:?}, before the {LEASE:?} lease could end"
    );
    let heir_fence: u64 = stdout_text(scratch.path(), "lock-waiter")
        .trim()
        .parse()
        .expect("lock acquire prints the fence");
    assert!(
        heir_fence > dead_fence,
        "the next holder's fence {heir_fence} is above the killed holder's {dead_fence}"
    );
    let heir_permit = stdout_text(scratch.path(), "sem-waiter").trim().to_string();
    heir_permit
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("sem acquire printed {heir_permit:?}, not a permit id"));

    // The lock names the heir now, and the dead owner's grants are gone for good.
    let holder_lines = cli_expect(&server, &["lock", "holder", &lock], 0);
    let labeled: Vec<&str> = holder_lines.lines().collect();
    assert_eq!(
        labeled.iter().take(2).copied().collect::<Vec<_>>(),
        vec!["owner: heir".to_string(), format!("fence: {heir_fence}")],
        "lock holder after the handover: {holder_lines:?}"
    );
    assert!(
        labeled
            .get(2)
            .is_some_and(|line| line.starts_with("lease remaining: ") && line.ends_with(" ms")),
        "lock holder after the handover: {holder_lines:?}"
    );
    cli_expect(
        &server,
        &[
            "lock",
            "release",
            &lock,
            "--owner",
            doomed,
            "--token",
            &dead_fence.to_string(),
        ],
        3,
    );
    cli_expect(
        &server,
        &[
            "sem",
            "release",
            &semaphore,
            "--capacity",
            &capacity,
            "--permit",
            &dead_permit.to_string(),
        ],
        3,
    );
    assert_eq!(
        cli_expect(&server, &["sem", "available", &semaphore, "--capacity", &capacity], 0),
        "0",
        "the heir holds all {CAPACITY} permits"
    );

    // The heir gives everything back: all permits are free again, the lock is free.
    cli_expect(
        &server,
        &[
            "lock",
            "release",
            &lock,
            "--owner",
            "heir",
            "--token",
            &heir_fence.to_string(),
        ],
        0,
    );
    cli_expect(
        &server,
        &[
            "sem",
            "release",
            &semaphore,
            "--capacity",
            &capacity,
            "--permit",
            &heir_permit,
        ],
        0,
    );
    assert_eq!(
        cli_expect(&server, &["sem", "available", &semaphore, "--capacity", &capacity], 0),
        capacity,
        "available is back to the capacity"
    );
    cli_expect(&server, &["lock", "holder", &lock], 1);
}
