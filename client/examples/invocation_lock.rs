// A lock that one invocation holds at a time, across processes and machines. Run it with
// `cargo run -p engram-client --example invocation_lock` against a running engramd
// (ENGRAM_ADDR, default 127.0.0.1:7400); ROUNDS invocations in a row (default 1), each
// leaving its trace in WITNESS_DIR (default: the temporary directory).
use std::error::Error;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engram_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Build the client once per process (in a Lambda: in main, before the handler loop).
    let address = std::env::var("ENGRAM_ADDR").unwrap_or_else(|_| "127.0.0.1:7400".into());
    let client = Client::builder(address).namespace("my-app").connect().await?;
    let witness_dir = std::env::var_os("WITNESS_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let rounds: u32 = std::env::var("ROUNDS").map_or(Ok(1), |rounds| rounds.parse())?;
    for _ in 0..rounds {
        handle_invocation(&client, None, &witness_dir).await?;
    }
    Ok(())
}

/// One invocation of the function: take the lock, do what only its holder may do, release.
async fn handle_invocation(
    client: &Client,
    request_id: Option<&str>,
    witness_dir: &Path,
) -> Result<(), Box<dyn Error>> {
    // The owner id names this invocation and nothing else. Acquiring again with the owner
    // that holds the lock returns the current fence and renews the lease, so a retry is
    // harmless, but two invocations must never share an owner id: both would "hold" the
    // lock. In a Lambda handler use the request id (`event.context.request_id`); without
    // one, a random id.
    let owner = match request_id {
        Some(request_id) => format!("invocation-{request_id}"),
        None => format!("invocation-{:032x}", rand::random::<u128>()),
    };
    let lease = Duration::from_secs(10); // an invocation that dies holding the lock frees it after this
    let wait = Duration::from_secs(60); // how long to queue behind other invocations (at most 15 minutes)
    let guard = client.lock("db-migration").acquire(owner.as_str(), lease, wait).await?;
    let fence = guard.fence(); // strictly greater than every earlier holder's
    let work = critical_section(witness_dir, fence, &owner);
    guard.release().await?; // dropping the guard does not release the lock; its lease would
    work?;
    println!("{owner} held the lock with fence {fence}");
    Ok(())
}

/// What only the lock's holder may do. Here it leaves a trace outside Engram that would
/// show two holders at once: a marker file that only one process can create, and a line
/// in a log. In real code, pass `fence` to the storage you protect, so that it refuses a
/// holder whose lease ended.
fn critical_section(witness_dir: &Path, fence: u64, owner: &str) -> std::io::Result<()> {
    let marker = witness_dir.join("db-migration.held");
    // `create_new` fails if the file exists: another holder would be inside right now.
    let mut held = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("{}: {error}: two holders at once", marker.display()),
            )
        })?;
    writeln!(held, "{fence} {owner}")?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(witness_dir.join("db-migration.log"))?;
    log.write_all(format!("{fence} {owner}\n").as_bytes())?;
    std::fs::remove_file(&marker)
}
