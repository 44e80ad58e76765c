//! Integration tests of Engram against real `engramd` and `engram` processes on loopback.
//!
//! The tests live in `tests/tests/*.rs`; this library is their harness. The binaries must be
//! built first (`cargo build --workspace --bins`): the harness looks for them next to the
//! test executable (`target/<profile>/`), or in `ENGRAM_BIN_DIR` when that is set (except
//! this crate's own `engram-test-worker`, always taken from `target/<profile>/`).
//!
//! Layout:
//! - [`server`]: [`EngramServer`]: starts `engramd` on its own loopback address with free
//!   ports, waits for the ready line, runs the CLI against it, stops it on drop.
//! - [`control`]: [`control::ControlPlane`]: an `engram-control` process with a scratch data
//!   directory, restartable on the same address, and `engram cluster` against it.
//! - [`raw`]: [`RawConnection`]: the wire protocol spoken by hand over a blocking
//!   `TcpStream`, for tests that must bypass the client (duplicates, malformed frames).
//! - [`resp`]: [`resp::RespConnection`]: the Redis protocol spoken by hand, for the tests
//!   of the Redis door.
//! - [`routing`]: picking keys owned by a given shard, from a node's slot map.
//! - [`cluster`]: one-core nodes joined to a control plane, waits for its membership,
//!   `engram cluster` that must succeed, and where a node's slots are in a status.
//! - [`elastic`]: what the elastic-cluster tests share: clients whose call timeout outlasts
//!   a frozen slot, the wait for the membership, bulky keys that move in a rebalance.
//! - [`victim`]: the cluster of the lost-slot tests, whose last node (the victim) dies,
//!   restarts or pauses, with data seeded on its slots and checks that they are lost.
//! - [`failover`]: the cluster of the failover tests: a control plane keeping backups of
//!   every slot and nodes on fixed addresses (killed, paused, restarted), whether every
//!   slot is backed up by live processes, a watch for lost slots, and a queue load.
//! - [`firewall`]: [`firewall::Cut`]: iptables rules on loopback that cut one node's
//!   connections to the control plane, both ways, until dropped (needs root and
//!   `iptables`: `scripts/test.sh` installs it).
//! - [`processes`]: scratch directories, child processes in their own process groups
//!   (killed on drop) with a bounded wait for all, and the `engram-test-worker` binary
//!   (`src/bin/engram-test-worker.rs`): blocking-client worker processes whose role is
//!   given by their arguments (lock rounds, barrier generations, a lease holder).
//! - [`linearizability`]: a Wing–Gong/Lowe linearizability checker for recorded per-key
//!   histories (counter and register models) and a thread-safe history recorder.
//! - [`etcd`]: [`etcd::Etcd`]: a real single-member etcd on free loopback ports with a scratch
//!   data directory, stoppable and restartable for outages (needs `etcd` installed:
//!   `scripts/test.sh` installs it).
//! - [`etcd_control`]: several `engram-control --etcd` processes on one etcd: who leads,
//!   the wait for one leader named by every standby, nodes beating to it, and the states
//!   etcd holds and ever accepted.
//! - [`load`]: the elastic-cluster load (counters with their acknowledgements, a lock
//!   with fences and an outside witness, a barrier) and its checks.
//! - [`binaries`]: where `engramd`, `engram` and `engram-test-worker` are.
//! - [`seeds`]: many seeds of a simulation run on every core, outcomes in seed order.
//!
//! Every wait in the harness is bounded, so a hung server fails a test instead of hanging it.

pub mod binaries;
pub mod cluster;
pub mod control;
pub mod elastic;
pub mod etcd;
pub mod etcd_control;
pub mod failover;
pub mod firewall;
pub mod linearizability;
pub mod load;
pub mod processes;
pub mod raw;
pub mod resp;
pub mod routing;
pub mod seeds;
pub mod server;
pub mod victim;

pub use raw::{RawConnection, RawReply};
pub use routing::{fetch_slot_map, key_on_shard, owner_address};
pub use server::{EngramServer, ServerOptions};

use std::time::Duration;

/// Longest any single test step may wait for the server before the test fails. Generous:
/// it only exists so a broken server makes a test fail instead of hang.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A key unique to this process and call, so tests sharing a server never collide.
pub fn unique_key(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Relaxed))
}

/// Polls `probe` every `interval` until it returns `Some`, or gives up after `limit`.
pub fn poll_until<T>(limit: Duration, interval: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Runs an async test body on a two-worker runtime with an overall bound of `limit`.
/// Panics (failing the test) when the body does not finish in time.
pub fn run_async<F: std::future::Future>(limit: Duration, body: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        match tokio::time::timeout(limit, body).await {
            Ok(output) => output,
            Err(_) => panic!("test body did not finish within {limit:?}"),
        }
    })
}

/// The bytes value stored at `key`, read through `client`; fails the test when the read
/// fails or finds no value.
pub async fn stored_value(client: &engram_client::Client, key: impl Into<Vec<u8>>) -> Vec<u8> {
    read_stored(client, key, "get").await.value
}

/// The value and version stored at `key`, read through `client`; fails the test, with
/// `what` (the read, as the test names it), when the read fails or finds no value.
pub async fn read_stored(
    client: &engram_client::Client,
    key: impl Into<Vec<u8>>,
    what: &str,
) -> engram_client::Versioned {
    client
        .bytes(key)
        .get()
        .await
        .unwrap_or_else(|error| panic!("{what}: {error}"))
        .unwrap_or_else(|| panic!("{what}: no value is stored"))
}

/// Set options for a compare-and-set: write only while the key is at `version`.
pub fn if_version(version: u64) -> engram_client::SetOptions {
    engram_client::SetOptions {
        ttl: None,
        condition: engram_client::SetCondition::IfVersion(version),
    }
}

/// Keys held by all shards `client` reaches, by the server's own accounting (`info`).
pub async fn total_keys(client: &engram_client::Client) -> u64 {
    client
        .info()
        .await
        .expect("info")
        .shards
        .iter()
        .map(|shard| shard.keys)
        .sum()
}

/// `GET path` over plain TCP (the metrics ports speak HTTP/1.1), each step bounded by
/// `timeout`: (status line, head, body).
pub fn http_get(address: std::net::SocketAddr, path: &str, timeout: Duration) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout).expect("connect to the metrics port");
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: engram\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the whole answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a blank line ends the head");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, head.to_string(), body.to_string())
}
