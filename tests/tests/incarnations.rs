//! Nothing goes backwards across a crash: a single `engramd` (no control plane) is killed
//! with SIGKILL and started again on the same address, twice. Its memory is gone, but the
//! versions of bytes keys, the fences of locks and the ids of semaphore permits it hands
//! out afterwards are each strictly above everything an earlier run handed out for the
//! same object (its counters start from a wall-clock floor), so:
//! - a client holding a fence from before the crash can never outnumber a new holder,
//! - a compare-and-set with a version read before the crash is refused (Conflict), both
//!   while the key is absent and after it was written again as often as before the crash
//!   (a counter that restarted from zero would hand out exactly the old versions again,
//!   and the stale write would go through),
//! - releasing a lock with a fence from before the crash is refused.
//!
//! The objects are chosen so that each shard of the 2-shard node holds one of each kind.

use std::time::Duration;

use engram_client::{Client, ErrorCode, SetOutcome};
use engram_tests::server::{free_port_run, next_loopback};
use engram_tests::{fetch_slot_map, if_version, key_on_shard, run_async, EngramServer, ServerOptions};

const CORES: usize = 2;
/// The first run, then one per restart.
const RUNS: usize = 3;
/// Grants and writes per object and run.
const ROUNDS: usize = 4;
const LEASE: Duration = Duration::from_secs(30);
const OWNER: &str = "incarnation-owner";
const SEMAPHORE_CAPACITY: u32 = 2;
/// Bound on a restart waiting for the killed process's ports.
const RESTART_LIMIT: Duration = Duration::from_secs(30);

/// The names of one shard's objects, and everything each was handed so far, over all
/// runs: `*[run]` lists what that run handed out, in order.
struct Objects {
    shard: usize,
    lock: String,
    bytes: String,
    semaphore: String,
    fences: Vec<Vec<u64>>,
    versions: Vec<Vec<u64>>,
    permits: Vec<Vec<u64>>,
}

/// The largest value of `runs`, and the run it came from.
fn highest(runs: &[Vec<u64>]) -> Option<(u64, usize)> {
    runs.iter()
        .enumerate()
        .flat_map(|(run, values)| values.iter().map(move |value| (*value, run)))
        .max()
}

/// Asserts `value` (handed out by run `run`) is above everything in `earlier`.
fn assert_above(what: &str, object: &str, run: usize, value: u64, earlier: &[Vec<u64>]) {
    if let Some((top, top_run)) = highest(earlier) {
        assert!(
            value > top,
            "{what} of {object}: run {run} handed out {value}, not above {top} that run {top_run} handed \
             out earlier (all earlier: {earlier:?})"
        );
    }
}

fn start(options: &ServerOptions) -> EngramServer {
    EngramServer::start_on_same_address(options.clone(), RESTART_LIMIT)
}

/// A set of `bytes` if still at `old`, a version an earlier run handed out.
async fn stale_set(bytes: &engram_client::Bytes, old: u64) -> SetOutcome {
    bytes
        .set_with(format!("stale-{old}"), if_version(old))
        .await
        .expect("stale set")
}

/// One run's work on one shard's objects: stale writes first (after a restart), then
/// lock rounds, writes and permits, each checked against everything earlier.
async fn exercise(client: &Client, objects: &mut Objects, run: usize) {
    let bytes = client.bytes(objects.bytes.clone());
    let earlier_versions: Vec<u64> = objects.versions.iter().flatten().copied().collect();

    // After a crash the key is gone: a compare-and-set with any version from before
    // finds nothing to match and must not write.
    if run > 0 {
        assert_eq!(
            bytes.get().await.expect("get after the restart"),
            None,
            "{} survived a SIGKILL of a node without persistence",
            objects.bytes
        );
        for &old in &earlier_versions {
            let outcome = stale_set(&bytes, old).await;
            assert_eq!(
                outcome,
                SetOutcome::Conflict { current_version: 0 },
                "run {run}: a set of the absent {} if at version {old} (from before the crash) was not refused",
                objects.bytes
            );
        }
    }

    let lock = client.lock(objects.lock.clone());
    let mut fences = Vec::new();
    for round in 0..ROUNDS {
        let guard = lock
            .acquire(OWNER, LEASE, Duration::ZERO)
            .await
            .unwrap_or_else(|error| panic!("run {run} round {round}: acquire {}: {error}", objects.lock));
        let fence = guard.fence();
        assert_above("fence", &objects.lock, run, fence, &objects.fences);
        if let Some(previous) = fences.last() {
            assert!(fence > *previous, "fences of one run go up: {fences:?} then {fence}");
        }
        // A fence from an earlier run names a grant this run never made.
        if let Some((old, _)) = highest(&objects.fences) {
            let refused = lock.release_with(OWNER, old).await;
            assert!(
                matches!(&refused, Err(error) if error.is_server(ErrorCode::NotHolder)),
                "run {run}: releasing {} with fence {old} from before the crash (held now with {fence}) \
                 answered {refused:?}, not NotHolder",
                objects.lock
            );
        }
        fences.push(fence);
        guard
            .release()
            .await
            .unwrap_or_else(|error| panic!("release {}: {error}", objects.lock));
    }

    let mut versions = Vec::new();
    for round in 0..ROUNDS {
        let version = bytes
            .set(format!("run-{run}-round-{round}"))
            .await
            .unwrap_or_else(|error| panic!("set {}: {error}", objects.bytes));
        assert_above("version", &objects.bytes, run, version, &objects.versions);
        if let Some(previous) = versions.last() {
            assert!(
                version > *previous,
                "versions of one run go up: {versions:?} then {version}"
            );
        }
        versions.push(version);
        // A writer that read the key before the crash must not overwrite this run's
        // value, however many writes this run has made so far.
        for &old in &earlier_versions {
            let outcome = stale_set(&bytes, old).await;
            assert_eq!(
                outcome,
                SetOutcome::Conflict {
                    current_version: version
                },
                "run {run}: a set of {} if at version {old} (from before the crash) was not refused; \
                 this run's versions: {versions:?}",
                objects.bytes
            );
        }
    }
    let stored = bytes.get().await.expect("get").expect("the key is stored");
    assert_eq!(
        (stored.value, stored.version),
        (
            format!("run-{run}-round-{}", ROUNDS - 1).into_bytes(),
            *versions.last().unwrap()
        )
    );

    let semaphore = client.semaphore(objects.semaphore.clone(), SEMAPHORE_CAPACITY);
    let mut permits = Vec::new();
    for round in 0..ROUNDS {
        let permit = semaphore
            .acquire(OWNER, 1, LEASE, Duration::ZERO)
            .await
            .unwrap_or_else(|error| panic!("run {run} round {round}: acquire {}: {error}", objects.semaphore));
        let id = permit.id();
        assert_above("permit id", &objects.semaphore, run, id, &objects.permits);
        if let Some(previous) = permits.last() {
            assert!(id > *previous, "permit ids of one run go up: {permits:?} then {id}");
        }
        permits.push(id);
        permit
            .release()
            .await
            .unwrap_or_else(|error| panic!("release {}: {error}", objects.semaphore));
    }

    objects.fences.push(fences);
    objects.versions.push(versions);
    objects.permits.push(permits);
}

#[test]
fn a_restarted_node_hands_out_versions_fences_and_permit_ids_above_all_of_its_earlier_runs() {
    let bind = next_loopback();
    let port = free_port_run(bind, CORES as u16 + 1);
    let options = ServerOptions::default().cores(CORES).bind(bind).port(port);
    let mut server = start(&options);
    let map = fetch_slot_map(server.front());
    assert_eq!(map.shards.len(), CORES);
    let mut all: Vec<Objects> = (0..CORES)
        .map(|shard| Objects {
            shard,
            lock: key_on_shard(&map, b"default", shard, "incarnation-lock"),
            bytes: key_on_shard(&map, b"default", shard, "incarnation-bytes"),
            semaphore: key_on_shard(&map, b"default", shard, "incarnation-semaphore"),
            fences: Vec::new(),
            versions: Vec::new(),
            permits: Vec::new(),
        })
        .collect();

    for run in 0..RUNS {
        if run > 0 {
            let status = server.kill_now();
            assert!(status.is_some(), "the server was running until the SIGKILL");
            server = start(&options);
            assert_eq!(
                (server.front(), server.shards().len()),
                (std::net::SocketAddr::from((bind, port)), CORES),
                "the restart serves on the same address"
            );
        }
        run_async(Duration::from_secs(60), async {
            let client = server.client_with_timeout(Duration::from_secs(20)).await;
            for objects in &mut all {
                exercise(&client, objects, run).await;
            }
        });
    }
    for objects in &all {
        eprintln!(
            "shard {}: fences {:?}, versions {:?}, permits {:?}",
            objects.shard, objects.fences, objects.versions, objects.permits
        );
    }
}
