//! `engram-test-worker`: one blocking-client process of the multi-process tests
//! (`tests/tests/{lock_processes,barrier_processes,lease_recovery}.rs`), its role given
//! by a subcommand:
//! - `lock`: ROUNDS times acquire the lock, check the witnesses (exclusive marker file,
//!   `O_APPEND` enter/exit log, own fences strictly increasing), release;
//! - `barrier`: pass GENERATIONS generations of a cyclic barrier, recording
//!   `GENERATION INDEX` per wait;
//! - `hold`: take a lock and some semaphore permits, report `FENCE PERMIT_ID`, then hold
//!   them with the connection open until killed.
//!
//! Failures exit with the codes of [`engram_tests::processes::exit`], the reason on stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use engram_client::blocking::Client;
use engram_tests::processes::exit;

/// Timeout of each request of the client (waits are bounded by their own wait time).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(about = "A blocking-client worker process of the Engram multi-process tests")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Take turns on one lock, checking mutual exclusion with witnesses in DIR.
    Lock(LockArgs),
    /// Pass generations of one cyclic barrier, recording every passage.
    Barrier(BarrierArgs),
    /// Take a lock and permits, report them, and hold them until killed.
    Hold(HoldArgs),
}

#[derive(Args)]
struct LockArgs {
    /// Address of the server.
    #[arg(long)]
    addr: String,
    /// Name of the lock.
    #[arg(long)]
    name: String,
    /// Owner of this process's grants; also its label in the log and on stderr.
    #[arg(long)]
    owner: String,
    /// Directory of the witnesses: the marker `held` and the log `log`.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    rounds: usize,
    #[arg(long)]
    lease_ms: u64,
    #[arg(long)]
    wait_ms: u64,
}

#[derive(Args)]
struct BarrierArgs {
    #[arg(long)]
    addr: String,
    /// Name of the barrier.
    #[arg(long)]
    name: String,
    #[arg(long)]
    parties: u32,
    #[arg(long)]
    generations: usize,
    #[arg(long)]
    wait_ms: u64,
    /// File to write the record of passages (`GENERATION INDEX` per line) to.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct HoldArgs {
    #[arg(long)]
    addr: String,
    /// Name of the lock to take.
    #[arg(long)]
    lock: String,
    /// Name of the semaphore to take permits of.
    #[arg(long)]
    semaphore: String,
    #[arg(long)]
    capacity: u32,
    /// How many permits to take.
    #[arg(long)]
    permits: u32,
    #[arg(long)]
    owner: String,
    /// Lease of the lock and of the permits.
    #[arg(long)]
    lease_ms: u64,
    /// File to publish `FENCE PERMIT_ID` in once both are held (written aside, renamed).
    #[arg(long)]
    ready: PathBuf,
}

fn main() {
    match Cli::parse().role {
        Role::Lock(args) => lock(args),
        Role::Barrier(args) => barrier(args),
        Role::Hold(args) => hold(args),
    }
}

fn connect(address: String) -> Result<Client, engram_client::Error> {
    Client::connect(engram_client::Client::builder(address).timeout(REQUEST_TIMEOUT))
}

fn lock(args: LockArgs) {
    let LockArgs {
        addr,
        name,
        owner,
        dir,
        rounds,
        lease_ms,
        wait_ms,
    } = args;
    let fail = |code: i32, message: String| -> ! {
        eprintln!("{owner}: {message}");
        std::process::exit(code)
    };
    let client = connect(addr).unwrap_or_else(|error| fail(exit::ACQUIRE_FAILED, format!("connect: {error}")));
    let lock = client.lock(name.as_bytes());
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap_or_else(|error| fail(exit::WITNESS_IO, format!("open log: {error}")));
    let marker = dir.join("held");
    let mut last = 0u64;
    for round in 0..rounds {
        let guard = lock
            .acquire(
                owner.as_bytes(),
                Duration::from_millis(lease_ms),
                Duration::from_millis(wait_ms),
            )
            .unwrap_or_else(|error| fail(exit::ACQUIRE_FAILED, format!("acquire in round {round}: {error}")));
        let fence = guard.fence();
        if let Err(error) = OpenOptions::new().write(true).create_new(true).open(&marker) {
            fail(
                exit::OVERLAP,
                format!(
                    "cannot create {} exclusively after acquiring fence {fence}: {error}",
                    marker.display()
                ),
            );
        }
        // One write(2) per line: O_APPEND makes each land whole at the end.
        log.write_all(format!("enter {fence} {owner}\n").as_bytes())
            .unwrap_or_else(|error| fail(exit::WITNESS_IO, format!("log: {error}")));
        if fence <= last {
            fail(exit::FENCE_NOT_INCREASING, format!("fence {fence} after {last}"));
        }
        last = fence;
        std::thread::yield_now();
        log.write_all(format!("exit {fence} {owner}\n").as_bytes())
            .unwrap_or_else(|error| fail(exit::WITNESS_IO, format!("log: {error}")));
        std::fs::remove_file(&marker)
            .unwrap_or_else(|error| fail(exit::WITNESS_IO, format!("remove {}: {error}", marker.display())));
        guard
            .release()
            .unwrap_or_else(|error| fail(exit::RELEASE_FAILED, format!("release of fence {fence}: {error}")));
    }
}

fn barrier(args: BarrierArgs) {
    let fail = |code: i32, message: String| -> ! {
        eprintln!("{message}");
        std::process::exit(code)
    };
    let client = connect(args.addr).unwrap_or_else(|error| fail(exit::WAIT_FAILED, format!("connect: {error}")));
    let barrier = client.barrier(args.name.as_bytes(), args.parties);
    let mut record =
        File::create(&args.out).unwrap_or_else(|error| fail(exit::RECORD_IO, format!("create record: {error}")));
    for round in 0..args.generations {
        let passage = barrier
            .wait(Duration::from_millis(args.wait_ms))
            .unwrap_or_else(|error| fail(exit::WAIT_FAILED, format!("wait {round}: {error}")));
        record
            .write_all(format!("{} {}\n", passage.generation, passage.arrival_index).as_bytes())
            .unwrap_or_else(|error| fail(exit::RECORD_IO, format!("record: {error}")));
    }
}

fn hold(args: HoldArgs) {
    let lease = Duration::from_millis(args.lease_ms);
    let client = connect(args.addr).expect("holder connects");
    let guard = client
        .lock(args.lock)
        .acquire(args.owner.as_bytes(), lease, Duration::from_secs(10))
        .expect("holder takes the free lock");
    let permit = client
        .semaphore(args.semaphore, args.capacity)
        .acquire(args.owner.as_bytes(), args.permits, lease, Duration::from_secs(10))
        .expect("holder takes its permits, which are free");
    // Reported whole: written aside, then renamed into place.
    let aside = args.ready.with_extension("tmp");
    std::fs::write(&aside, format!("{} {}\n", guard.fence(), permit.id())).expect("write the report");
    std::fs::rename(&aside, &args.ready).expect("publish the report");
    // Hold (connection open, guard and permit alive) until killed; the bound only keeps
    // an orphaned holder from lingering.
    let _held = (guard, permit);
    std::thread::sleep(Duration::from_secs(120));
}
