//! The cluster of the lost-slot tests (`tests/tests/lost_slots.rs`,
//! `tests/tests/paused_nodes.rs`): an `engram-control` and three one-core `engramd` nodes,
//! the last (the victim) on a fixed address so it can come back on it; the keys, the lock
//! and the semaphore seeded on the victim's slots; and the checks that those fail fast,
//! answer `SlotLost`, and that the other nodes' keys answer as written.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use engram_client::{Client, Error};
use engram_proto::{ClusterStatus, NodeStatus, SlotHasher};

use crate::cluster::{cluster_cli, shard_of_node, start_node, wait_for_members};
use crate::control::ControlPlane;
use crate::processes::Scratch;
use crate::server::{free_port_run, next_loopback};
use crate::{read_stored, EngramServer, ServerOptions};

/// Long enough that a client that waits for a dead node instead of failing fast would
/// visibly run into it (as `Error::Timeout`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const KEYS: usize = 300;
pub const LEASE: Duration = Duration::from_secs(30);
pub const OWNER: &str = "lost-slots-owner";
pub const SEMAPHORE_CAPACITY: u32 = 3;
/// Bound on every wait for the cluster to reach a state (a bound, not a requirement on
/// speed: reaching it fails the test only because the state never came).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(45);
pub const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// Heartbeats of a restarted node (every 500 ms) to let pass before checking that its
/// lost slots stayed lost: a new process must not get them back like a paused one.
pub const HEARTBEATS_SETTLE: Duration = Duration::from_secs(2);

/// The cluster of one test: the victim has a fixed address so it can come back on it.
pub struct Cluster {
    pub others: Vec<EngramServer>,
    pub victim: Option<EngramServer>,
    pub victim_options: ServerOptions,
    pub victim_id: u64,
    pub control: ControlPlane,
    _scratch: Scratch,
}

impl Cluster {
    pub fn start(name: &str, liveness_timeout_ms: u64) -> Cluster {
        let scratch = Scratch::new(name);
        let control = ControlPlane::start_with(
            next_loopback(),
            scratch.path().join("control"),
            &[
                "--liveness-timeout-ms",
                &liveness_timeout_ms.to_string(),
                // Only the moves this test asks for.
                "--no-load-rebalance",
            ],
        );
        // The first node owns every slot until the rebalance; the victim joins last.
        let others: Vec<EngramServer> = (0..2).map(|_| start_node(&control)).collect();
        let (victim, victim_options) = start_at_fixed_address(&control);
        Cluster {
            others,
            victim_id: victim.node_id(),
            victim: Some(victim),
            victim_options,
            control,
            _scratch: scratch,
        }
    }

    pub async fn client(&self) -> Client {
        self.others[0].client_with_timeout(CALL_TIMEOUT).await
    }

    pub fn kill_victim(&mut self) {
        let mut victim = self.victim.take().expect("the victim runs");
        assert!(victim.kill_now().is_some(), "the victim was running until the SIGKILL");
    }

    /// Starts the victim again on its old address; blocks (off the async workers).
    pub fn restart_victim(&mut self) -> &EngramServer {
        assert!(self.victim.is_none(), "the victim was killed first");
        let options = self.victim_options.clone();
        let restarted = tokio::task::block_in_place(|| EngramServer::start_on_same_address(options, RESTART_LIMIT));
        self.victim.insert(restarted)
    }

    pub async fn victim_status(&self) -> (ClusterStatus, NodeStatus) {
        let status = self.control.status().await;
        let node = status
            .nodes
            .iter()
            .find(|node| node.node_id == self.victim_id)
            .unwrap_or_else(|| panic!("node {} left the membership: {:?}", self.victim_id, status.nodes))
            .clone();
        (status, node)
    }
}

/// The last `lines` lines of `text`, without the routine ones of every migration step.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains("migration committed") && !line.contains("migration in committed"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    /// On a failure, what the control plane and the nodes logged last: the panic says
    /// what went wrong, these say what the processes were doing.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- engram-control stderr (tail) ---\n{}",
                tail(&self.control.stderr_text(), 80)
            );
            for (name, node) in self
                .others
                .iter()
                .map(|node| ("engramd", node))
                .chain(self.victim.iter().map(|node| ("victim engramd", node)))
            {
                eprintln!(
                    "--- {name} node {} stderr (tail) ---\n{}",
                    node.node_id(),
                    tail(&node.stderr_text(), 30)
                );
            }
        }
    }
}

/// A node with `--bind` and `--port` of its own choosing (a free run of ports), retried
/// with other ports when another process took them first.
pub fn start_at_fixed_address(control: &ControlPlane) -> (EngramServer, ServerOptions) {
    start_at_fixed_address_in_group(control, None)
}

/// [`start_at_fixed_address`], the process running under `group` (see
/// [`ServerOptions::group`]).
pub fn start_at_fixed_address_in_group(control: &ControlPlane, group: Option<u32>) -> (EngramServer, ServerOptions) {
    let mut attempt = 0;
    loop {
        let bind = next_loopback();
        let options = ServerOptions::default()
            .cores(1)
            .control(control.address())
            .bind(bind)
            .port(free_port_run(bind, 2))
            .group(group);
        match EngramServer::try_start(options.clone()) {
            Ok(server) => return (server, options),
            Err(error) if attempt < 5 => {
                attempt += 1;
                eprintln!("node did not start on its fixed address, retrying: {error}");
            }
            Err(error) => panic!("{error}"),
        }
    }
}

pub fn slot_of(key: &str) -> u32 {
    SlotHasher::new(b"default").slot(key.as_bytes())
}

/// Slots the map gives to `node_id`'s shards.
pub fn slots_of(map: &engram_proto::SlotMap, node_id: u64) -> BTreeSet<u32> {
    let owners = map.owner_table();
    (0..owners.len() as u32)
        .filter(|slot| {
            let owner = owners[*slot as usize];
            owner != engram_proto::LOST_SHARD_INDEX && map.shards[owner as usize].node_id == node_id
        })
        .collect()
}

/// What the test stored before the kill.
pub struct Seeded {
    /// Key to (value, version), for every key.
    pub values: BTreeMap<String, (Vec<u8>, u64)>,
    /// The keys whose slots the victim owns.
    pub on_victim: Vec<String>,
    /// The other keys.
    pub elsewhere: Vec<String>,
    /// A lock and a semaphore on the victim, and what they handed out.
    pub lock: String,
    pub fences: Vec<u64>,
    pub semaphore: String,
    pub permits: Vec<u64>,
}

impl Seeded {
    pub fn highest_victim_version(&self) -> u64 {
        self.on_victim.iter().map(|key| self.values[key].1).max().unwrap_or(0)
    }
}

/// Spreads the slots over all three nodes, then writes the keys, takes the lock and
/// the permits; checks the victim owns slots and some of the keys.
pub async fn seed(cluster: &Cluster, client: &Client) -> (Seeded, BTreeSet<u32>) {
    wait_for_members(&cluster.control, 3, SETTLE_LIMIT).await;
    cluster_cli(&cluster.control, &["rebalance"]).await;
    let map = cluster.control.status().await.map;
    let victim_slots = slots_of(&map, cluster.victim_id);
    assert!(
        !victim_slots.is_empty(),
        "the rebalance gave the victim no slot: {map:?}"
    );
    let victim_shard = shard_of_node(&map, cluster.victim_id);
    assert!(map.lost_slots().is_empty(), "slots lost before anything died");

    let mut values = BTreeMap::new();
    let (mut on_victim, mut elsewhere) = (Vec::new(), Vec::new());
    for index in 0..KEYS {
        let key = format!("lost-slots-key-{index}");
        let value = format!("value-{index}").into_bytes();
        let version = client
            .bytes(key.clone())
            .set(value.clone())
            .await
            .unwrap_or_else(|error| panic!("seed {key}: {error}"));
        if victim_slots.contains(&slot_of(&key)) {
            on_victim.push(key.clone());
        } else {
            elsewhere.push(key.clone());
        }
        values.insert(key, (value, version));
    }
    assert!(
        !on_victim.is_empty() && !elsewhere.is_empty(),
        "{} keys on the victim, {} elsewhere",
        on_victim.len(),
        elsewhere.len()
    );

    let lock = crate::key_on_shard(&map, b"default", victim_shard, "lost-slots-lock");
    let mut fences = Vec::new();
    for _ in 0..3 {
        let guard = client
            .lock(lock.clone())
            .acquire(OWNER, LEASE, Duration::ZERO)
            .await
            .expect("acquire the lock on the victim");
        fences.push(guard.fence());
        guard.release().await.expect("release the lock");
    }
    let semaphore = crate::key_on_shard(&map, b"default", victim_shard, "lost-slots-semaphore");
    let mut permits = Vec::new();
    for _ in 0..3 {
        let permit = client
            .semaphore(semaphore.clone(), SEMAPHORE_CAPACITY)
            .acquire(OWNER, 1, LEASE, Duration::ZERO)
            .await
            .expect("acquire a permit on the victim");
        permits.push(permit.id());
        permit.release().await.expect("release the permit");
    }
    let seeded = Seeded {
        values,
        on_victim,
        elsewhere,
        lock,
        fences,
        semaphore,
        permits,
    };
    (seeded, victim_slots)
}

/// Whether `error` says the address could not be reached (the client gave up on a
/// refused connection), as opposed to waiting out its timeout.
pub fn is_unreachable(error: &Error) -> bool {
    error.is_unreachable() || matches!(error, Error::Connection { .. })
}

/// Calls `call` (every 100 ms) until it fails with `SlotLost`; returns how many calls
/// failed as unreachable before. Success (a value or "missing"), a call timeout, or any
/// other error fails the test.
pub async fn until_slot_lost<T: std::fmt::Debug>(what: &str, mut call: impl AsyncFnMut() -> Result<T, Error>) -> u32 {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut unreachable = 0;
    loop {
        match call().await {
            Err(error) if error.is_slot_lost() => return unreachable,
            Err(error) if is_unreachable(&error) => unreachable += 1,
            Err(error @ Error::Timeout { .. }) => panic!(
                "{what}: waited out the whole {CALL_TIMEOUT:?} call timeout instead of failing fast \
                 (unreachable) or answering SlotLost: {error}"
            ),
            Err(error) => panic!("{what}: failed with {error:?}, neither unreachable nor SlotLost"),
            Ok(answer) => panic!("{what}: answered {answer:?}; its slot's data is gone, so it must fail (SlotLost)"),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no SlotLost within {SETTLE_LIMIT:?} ({unreachable} unreachable answers before)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls `call` until it succeeds, while it fails with `SlotLost` or unreachable (a map
/// still catching up); any other failure fails the test.
pub async fn until_served<T>(what: &str, mut call: impl AsyncFnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(error) if error.is_slot_lost() || is_unreachable(&error) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {SETTLE_LIMIT:?}: {error}"
                );
            }
            Err(error) => panic!("{what}: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn check_elsewhere(client: &Client, seeded: &Seeded, when: &str) {
    for key in &seeded.elsewhere {
        let stored = read_stored(client, key.clone(), &format!("{when}: get {key} (on a live node)")).await;
        assert_eq!(
            (&stored.value, stored.version),
            (&seeded.values[key].0, seeded.values[key].1),
            "{when}: {key} (on a live node) changed"
        );
    }
}

/// Every key, the lock and the semaphore of the victim's slots fail with SlotLost
/// (through `client`); the other keys answer as written.
pub async fn check_lost(client: &Client, seeded: &Seeded, when: &str) -> u32 {
    let mut unreachable = 0;
    for key in &seeded.on_victim {
        let bytes = client.bytes(key.clone());
        unreachable += until_slot_lost(&format!("{when}: get {key}"), async || bytes.get().await).await;
    }
    let lock = client.lock(seeded.lock.clone());
    unreachable += until_slot_lost(&format!("{when}: holder of {}", seeded.lock), async || {
        lock.holder().await
    })
    .await;
    let semaphore = client.semaphore(seeded.semaphore.clone(), SEMAPHORE_CAPACITY);
    unreachable += until_slot_lost(&format!("{when}: permits of {}", seeded.semaphore), async || {
        semaphore.available().await
    })
    .await;
    let key = &seeded.on_victim[0];
    let bytes = client.bytes(key.clone());
    unreachable += until_slot_lost(&format!("{when}: set {key}"), async || bytes.set("overwrite").await).await;
    check_elsewhere(client, seeded, when).await;
    unreachable
}

/// The lock on the victim's slots, acquired `when`, gets a fence above every fence it
/// handed out before the node was lost.
pub async fn check_fence_above(client: &Client, seeded: &Seeded, when: &str) {
    let guard = client
        .lock(seeded.lock.clone())
        .acquire(OWNER, LEASE, Duration::ZERO)
        .await
        .unwrap_or_else(|error| panic!("acquire the lock {when}: {error}"));
    assert!(
        guard.fence() > *seeded.fences.iter().max().unwrap(),
        "fence {} {when} is not above the fences handed out before the node was lost {:?}",
        guard.fence(),
        seeded.fences
    );
    guard.release().await.expect("release");
}
