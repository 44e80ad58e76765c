//! Lost, not empty; dead nodes fail fast. A cluster of an `engram-control` and three
//! `engramd` nodes on loopback holds a few hundred keys, a lock and a semaphore; one node
//! is killed with SIGKILL. What must hold:
//! - the dead node's keys fail fast: every call fails with an unreachable (connection)
//!   error, never by waiting out the client's 30 s call timeout, until the control plane
//!   declares the node dead, and from then on with `SlotLost`;
//! - the other nodes' keys answer correctly throughout;
//! - the node restarted on the same address (same ports, empty memory) does not serve its
//!   old slots empty: they keep answering `SlotLost`, through any client and through the
//!   restarted node itself, and `engram cluster status` shows the node's new incarnation
//!   and its lost slots; the CLI exits 3 on them;
//! - `engram cluster reclaim --node N` returns the slots to service, empty, and the
//!   fences, versions and permit ids handed out there afterwards are above every one
//!   handed out before the kill, so a stale compare-and-set or fence cannot win.
//!
//! Two paths lead to lost slots: the control plane declaring a silent node dead
//! (`--liveness-timeout-ms`), and the node rejoining as a new process before that; each
//! has its test (the second reclaims half of the slots with the wire command
//! `ClusterReclaim` and the rest with `engram cluster reclaim RANGES`).
//!
//! A node that was only paused (SIGSTOP) past the liveness timeout is declared dead too,
//! but it is the same process when it resumes:
//! - if nobody reclaimed its slots, it gets them back, data and all;
//! - if an operator reclaimed them meanwhile (they went to the live nodes, empty, and were
//!   written there), it must not get them back, and calls that reached it before the
//!   reclaim, answered once it resumes, must not be answered from its stranded copy: no
//!   old value read, no write acknowledged that the slots' new owner does not have.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use engram_client::{Client, Error, SetOutcome};
use engram_proto::{ClusterStatus, NodeStatus, ReclaimRequest, SlotHasher};
use engram_tests::cluster::{cluster_cli, shard_of_node, start_node, wait_for_members};
use engram_tests::control::ControlPlane;
use engram_tests::processes::Scratch;
use engram_tests::server::{free_port_run, next_loopback, resume_process, run_cli, stop_process, Resume};
use engram_tests::{if_version, read_stored, run_async, total_keys, EngramServer, ServerOptions};

/// Long enough that a client that waits for a dead node instead of failing fast would
/// visibly run into it (as `Error::Timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const KEYS: usize = 300;
const LEASE: Duration = Duration::from_secs(30);
const OWNER: &str = "lost-slots-owner";
const SEMAPHORE_CAPACITY: u32 = 3;
/// Bound on every wait for the cluster to reach a state (a bound, not a requirement on
/// speed: reaching it fails the test only because the state never came).
const SETTLE_LIMIT: Duration = Duration::from_secs(45);
const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// Heartbeats of a restarted node (every 500 ms) to let pass before checking that its
/// lost slots stayed lost: a new process must not get them back like a paused one.
const HEARTBEATS_SETTLE: Duration = Duration::from_secs(2);

/// The cluster of one test: the victim has a fixed address so it can come back on it.
struct Cluster {
    others: Vec<EngramServer>,
    victim: Option<EngramServer>,
    victim_options: ServerOptions,
    victim_id: u64,
    control: ControlPlane,
    _scratch: Scratch,
}

impl Cluster {
    fn start(name: &str, liveness_timeout_ms: u64) -> Cluster {
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

    async fn client(&self) -> Client {
        self.others[0].client_with_timeout(CALL_TIMEOUT).await
    }

    fn kill_victim(&mut self) {
        let mut victim = self.victim.take().expect("the victim runs");
        assert!(victim.kill_now().is_some(), "the victim was running until the SIGKILL");
    }

    /// Starts the victim again on its old address; blocks (off the async workers).
    fn restart_victim(&mut self) -> &EngramServer {
        assert!(self.victim.is_none(), "the victim was killed first");
        let options = self.victim_options.clone();
        let restarted = tokio::task::block_in_place(|| EngramServer::start_on_same_address(options, RESTART_LIMIT));
        self.victim.insert(restarted)
    }

    async fn victim_status(&self) -> (ClusterStatus, NodeStatus) {
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
fn tail(text: &str, lines: usize) -> String {
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
fn start_at_fixed_address(control: &ControlPlane) -> (EngramServer, ServerOptions) {
    let mut attempt = 0;
    loop {
        let bind = next_loopback();
        let options = ServerOptions::default()
            .cores(1)
            .control(control.address())
            .bind(bind)
            .port(free_port_run(bind, 2));
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

fn slot_of(key: &str) -> u32 {
    SlotHasher::new(b"default").slot(key.as_bytes())
}

/// Slots the map gives to `node_id`'s shards.
fn slots_of(map: &engram_proto::SlotMap, node_id: u64) -> BTreeSet<u32> {
    let owners = map.owner_table();
    (0..owners.len() as u32)
        .filter(|slot| {
            let owner = owners[*slot as usize];
            owner != engram_proto::LOST_SHARD_INDEX && map.shards[owner as usize].node_id == node_id
        })
        .collect()
}

/// What the test stored before the kill.
struct Seeded {
    /// Key to (value, version), for every key.
    values: BTreeMap<String, (Vec<u8>, u64)>,
    /// The keys whose slots the victim owns.
    on_victim: Vec<String>,
    /// The other keys.
    elsewhere: Vec<String>,
    /// A lock and a semaphore on the victim, and what they handed out.
    lock: String,
    fences: Vec<u64>,
    semaphore: String,
    permits: Vec<u64>,
}

impl Seeded {
    fn highest_victim_version(&self) -> u64 {
        self.on_victim.iter().map(|key| self.values[key].1).max().unwrap_or(0)
    }
}

/// Spreads the slots over all three nodes, then writes the keys, takes the lock and
/// the permits; checks the victim owns slots and some of the keys.
async fn seed(cluster: &Cluster, client: &Client) -> (Seeded, BTreeSet<u32>) {
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

    let lock = engram_tests::key_on_shard(&map, b"default", victim_shard, "lost-slots-lock");
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
    let semaphore = engram_tests::key_on_shard(&map, b"default", victim_shard, "lost-slots-semaphore");
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
fn is_unreachable(error: &Error) -> bool {
    error.is_unreachable() || matches!(error, Error::Connection { .. })
}

/// Calls `call` (every 100 ms) until it fails with `SlotLost`; returns how many calls
/// failed as unreachable before. Success (a value or "missing"), a call timeout, or any
/// other error fails the test.
async fn until_slot_lost<T: std::fmt::Debug>(what: &str, mut call: impl AsyncFnMut() -> Result<T, Error>) -> u32 {
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
async fn until_served<T>(what: &str, mut call: impl AsyncFnMut() -> Result<T, Error>) -> T {
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

async fn check_elsewhere(client: &Client, seeded: &Seeded, when: &str) {
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
async fn check_lost(client: &Client, seeded: &Seeded, when: &str) -> u32 {
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

/// The restarted node answers SlotLost itself for its old slots: a client that sends
/// everything to its front port, and the CLI (exit code 3, not 1 for "missing").
async fn check_lost_at(node: &EngramServer, seeded: &Seeded, when: &str) {
    let front_only = node.front_only_client(CALL_TIMEOUT).await;
    for key in &seeded.on_victim {
        let bytes = front_only.bytes(key.clone());
        until_slot_lost(&format!("{when}: get {key} at the restarted node"), async || {
            bytes.get().await
        })
        .await;
    }
    let key = seeded.on_victim[0].clone();
    let front = node.front().to_string();
    let output = tokio::task::spawn_blocking(move || {
        run_cli(&["--addr", &front, "--front-only", "--timeout-ms", "10000", "get", &key])
    })
    .await
    .expect("CLI task");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{when}: `engram get` of a lost key exits 3 (1 would mean it was served as missing); stdout {:?}, stderr {stderr:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.to_lowercase().contains("lost"),
        "{when}: the CLI says the slot is lost: {stderr:?}"
    );
}

/// The node's incarnation moved on, its slots are lost in the map and in its status.
async fn check_status_lost(cluster: &Cluster, victim_slots: &BTreeSet<u32>, old_incarnation: u64, when: &str) {
    let (status, node) = cluster.victim_status().await;
    assert_ne!(
        node.incarnation, old_incarnation,
        "{when}: the restarted process kept the incarnation of the killed one: {node:?}"
    );
    assert_eq!(
        node.slots_lost as usize,
        victim_slots.len(),
        "{when}: slots_lost of the restarted node: {node:?}"
    );
    let lost: BTreeSet<u32> = status.map.lost_slots().into_iter().collect();
    assert_eq!(
        &lost, victim_slots,
        "{when}: the lost slots in the map are not exactly the slots the killed node owned"
    );
    assert!(
        node.shards.iter().all(|shard| shard.slots == 0),
        "{when}: the restarted node serves slots: {node:?}"
    );
}

/// How the operator returns the lost slots to service.
enum Reclaim {
    /// `engram cluster reclaim --node N`.
    CliNode,
    /// Half of the slots with the wire command `ClusterReclaim` listing them (no node),
    /// the other half with `engram cluster reclaim RANGES` (`a-b,c,...`).
    WireThenCliRanges,
}

/// The lock on the victim's slots, acquired `when`, gets a fence above every fence it
/// handed out before the node was lost.
async fn check_fence_above(client: &Client, seeded: &Seeded, when: &str) {
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

/// A set of `bytes` if still at `old`, a version from before the kill.
async fn stale_set(bytes: &engram_client::Bytes, old: u64) -> SetOutcome {
    bytes
        .set_with("stale", if_version(old))
        .await
        .expect("stale set after the reclaim")
}

/// Reclaims the victim's lost slots (`how`); then they serve, empty, and what is handed
/// out there is above everything handed out before the kill.
async fn reclaim_and_check(cluster: &Cluster, client: &Client, seeded: &Seeded, how: Reclaim) {
    let epoch_before = cluster.control.status().await.map.epoch;
    match how {
        Reclaim::CliNode => {
            let output = cluster_cli(&cluster.control, &["reclaim", "--node", &cluster.victim_id.to_string()]).await;
            eprintln!("engram cluster reclaim --node: {output}");
        }
        Reclaim::WireThenCliRanges => {
            let lost = cluster.control.status().await.map.lost_slots();
            let (wire, cli) = lost.split_at(lost.len() / 2);
            let request = ReclaimRequest {
                node_id: 0,
                slots: wire.to_vec(),
            };
            let reclaimed = cluster
                .control
                .admin()
                .reclaim(request)
                .await
                .expect("ClusterReclaim call");
            let status = cluster.control.status().await;
            assert_eq!(
                reclaimed.slots,
                wire.len() as u64,
                "slots reclaimed by the wire command"
            );
            assert!(
                reclaimed.epoch > epoch_before,
                "the reclaim's epoch {} is not new",
                reclaimed.epoch
            );
            assert!(status.map.epoch >= reclaimed.epoch);
            let still_lost: Vec<u32> = status.map.lost_slots();
            assert_eq!(
                still_lost, cli,
                "after reclaiming half of the slots, the other half is still lost"
            );
            let (_, node) = cluster.victim_status().await;
            assert_eq!(node.slots_lost as usize, cli.len(), "{node:?}");
            let output = cluster_cli(&cluster.control, &["reclaim", &engram_proto::format_slot_ranges(cli)]).await;
            eprintln!("engram cluster reclaim RANGES: {output}");
        }
    }
    let (status, node) = cluster.victim_status().await;
    assert!(
        status.map.lost_slots().is_empty(),
        "slots still lost after the reclaim: {:?}",
        status.map.lost_slots()
    );
    assert_eq!(node.slots_lost, 0, "{node:?}");
    assert!(status.map.epoch > epoch_before, "the reclaim did not publish a new map");

    // Empty: nothing of the old data came back.
    for key in &seeded.on_victim {
        let bytes = client.bytes(key.clone());
        let found = until_served(&format!("get {key} after the reclaim"), async || bytes.get().await).await;
        assert_eq!(found, None, "{key} came back after the reclaim: its data was lost");
    }
    let old_top = seeded.highest_victim_version();
    for key in &seeded.on_victim {
        let (_, old) = seeded.values[key];
        let bytes = client.bytes(key.clone());
        // A writer that read the key before the kill must not overwrite it now.
        let stale = stale_set(&bytes, old).await;
        assert_eq!(
            stale,
            SetOutcome::Conflict { current_version: 0 },
            "a set of the reclaimed, empty {key} if at its version {old} from before the kill was not refused"
        );
        let version = bytes.set("reborn").await.expect("set after the reclaim");
        assert!(
            version > old_top,
            "{key}: version {version} after the reclaim is not above {old_top}, the highest the lost node \
             handed out for these keys (this key had {old})"
        );
        let stale = stale_set(&bytes, old).await;
        assert_eq!(
            stale,
            SetOutcome::Conflict {
                current_version: version
            },
            "{key}: a set if at version {old} from before the kill overwrote the new value"
        );
    }
    check_fence_above(client, seeded, "after the reclaim").await;
    let permit = client
        .semaphore(seeded.semaphore.clone(), SEMAPHORE_CAPACITY)
        .acquire(OWNER, 1, LEASE, Duration::ZERO)
        .await
        .expect("acquire a permit after the reclaim");
    assert!(
        permit.id() > *seeded.permits.iter().max().unwrap(),
        "permit id {} after the reclaim is not above the ids from before the kill {:?}",
        permit.id(),
        seeded.permits
    );
    permit.release().await.expect("release");
    check_elsewhere(client, seeded, "after the reclaim").await;
}

#[test]
fn a_dead_nodes_slots_fail_fast_then_answer_lost_until_reclaimed_and_never_serve_empty() {
    let mut cluster = Cluster::start("lost-slots-dead", 3_000);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        let (_, before) = cluster.victim_status().await;
        assert_eq!(before.slots_lost, 0);
        let old_incarnation = before.incarnation;

        cluster.kill_victim();
        // (a) and (b): until the control plane declares the node dead, its keys fail as
        // unreachable; then SlotLost. The other keys answer all along.
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut unreachable = 0;
        let mut calls = 0;
        loop {
            let key = &seeded.on_victim[calls % seeded.on_victim.len()];
            match client.bytes(key.clone()).get().await {
                Err(error) if error.is_slot_lost() => break,
                Err(error) if is_unreachable(&error) => unreachable += 1,
                Err(error @ Error::Timeout { .. }) => panic!(
                    "get {key} of the killed node waited out the whole {CALL_TIMEOUT:?} call timeout instead of \
                     failing fast: {error}"
                ),
                Err(error) => {
                    panic!("get {key} of the killed node failed with {error:?}: neither unreachable nor SlotLost")
                }
                Ok(found) => panic!("get {key} of the killed node answered {found:?}"),
            }
            let live = &seeded.elsewhere[calls % seeded.elsewhere.len()];
            let what = format!("get {live} (on a live node) while the victim is dead");
            let stored = read_stored(&client, live.clone(), &what).await;
            assert_eq!(stored.value, seeded.values[live].0, "{live} changed");
            calls += 1;
            assert!(
                Instant::now() < deadline,
                "no SlotLost within {SETTLE_LIMIT:?} of the kill ({calls} calls, all unreachable)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("SlotLost after {calls} calls that failed as unreachable ({unreachable})");
        let (status, node) = cluster.victim_status().await;
        assert!(!node.alive, "the killed node is still alive: {node:?}");
        assert_eq!(node.slots_lost as usize, victim_slots.len(), "{node:?}");
        let lost: BTreeSet<u32> = status.map.lost_slots().into_iter().collect();
        assert_eq!(lost, victim_slots, "the lost slots are exactly the dead node's");
        check_lost(&client, &seeded, "after the node was declared dead").await;

        // (c) The node comes back on the same address, empty: its slots stay lost.
        let restarted_id = cluster.restart_victim().node_id();
        assert_eq!(restarted_id, cluster.victim_id, "the node rejoined under another id");
        wait_for_members(&cluster.control, 3, SETTLE_LIMIT).await;
        tokio::time::sleep(HEARTBEATS_SETTLE).await;
        check_status_lost(&cluster, &victim_slots, old_incarnation, "after the restart").await;
        check_lost(&client, &seeded, "after the restart").await;
        check_lost_at(cluster.victim.as_ref().unwrap(), &seeded, "after the restart").await;

        // (d) An operator returns them to service, empty.
        reclaim_and_check(&cluster, &client, &seeded, Reclaim::CliNode).await;
    });
}

#[test]
fn a_node_restarted_before_it_is_declared_dead_does_not_serve_its_old_slots_empty() {
    // The liveness timeout is far away: only the rejoin of a new process loses the slots.
    let mut cluster = Cluster::start("lost-slots-restart", 60_000);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        let (_, before) = cluster.victim_status().await;
        let old_incarnation = before.incarnation;

        cluster.kill_victim();
        let restarted_id = cluster.restart_victim().node_id();
        assert_eq!(restarted_id, cluster.victim_id, "the node rejoined under another id");
        // The restarted node's very first answers: it must not serve its old slots empty.
        check_lost_at(cluster.victim.as_ref().unwrap(), &seeded, "right after the restart").await;
        check_status_lost(&cluster, &victim_slots, old_incarnation, "right after the restart").await;
        let unreachable = check_lost(&client, &seeded, "after the restart").await;
        eprintln!("{unreachable} unreachable answers before SlotLost");

        // Its heartbeats (same address, a new process) do not bring the slots back.
        tokio::time::sleep(HEARTBEATS_SETTLE).await;
        check_status_lost(
            &cluster,
            &victim_slots,
            old_incarnation,
            "a few heartbeats after the restart",
        )
        .await;
        let (_, node) = cluster.victim_status().await;
        assert!(node.alive, "{node:?}");
        check_lost(&client, &seeded, "a few heartbeats after the restart").await;

        reclaim_and_check(&cluster, &client, &seeded, Reclaim::WireThenCliRanges).await;
    });
}

/// Liveness timeout of the tests that pause the victim: short, but above the few seconds
/// the control plane itself may stall on this busy 2-core machine (a stall longer than
/// the timeout holds up the live nodes' heartbeats and gets them declared dead too).
const PAUSED_LIVENESS_TIMEOUT_MS: u64 = 5_000;

/// Polls `cluster status` until `done` holds for it and the victim's entry.
async fn wait_for_victim(
    cluster: &Cluster,
    what: &str,
    done: impl Fn(&ClusterStatus, &NodeStatus) -> bool,
) -> (ClusterStatus, NodeStatus) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let (status, node) = cluster.victim_status().await;
        if done(&status, &node) {
            return (status, node);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_LIMIT:?}: {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` routes with a map of at least `epoch`, so that a client connecting
/// to it starts from that map (and never sends to a paused node an older one names).
async fn wait_for_node_epoch(node: &EngramServer, epoch: u64) {
    let front = node.front();
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let map = tokio::task::spawn_blocking(move || engram_tests::fetch_slot_map(front))
            .await
            .expect("fetch the node's map");
        if map.epoch >= epoch {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{front} still routes with map epoch {}, not {epoch}",
            map.epoch
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_paused_node_declared_dead_gets_its_slots_back_with_its_data_when_it_resumes() {
    let cluster = Cluster::start("lost-slots-paused", PAUSED_LIVENESS_TIMEOUT_MS);
    let pid = cluster.victim.as_ref().unwrap().pid();
    let resume = Resume(pid);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        let (_, before) = cluster.victim_status().await;

        // Paused, not dead: the process keeps its memory and its sockets (the kernel
        // still accepts connections), but answers nothing and sends no heartbeat.
        stop_process(pid);
        let (lost, _) = wait_for_victim(&cluster, "the paused node is declared dead", |_, node| {
            !node.alive && node.slots_lost as usize == victim_slots.len()
        })
        .await;
        let lost_slots: BTreeSet<u32> = lost.map.lost_slots().into_iter().collect();
        assert_eq!(lost_slots, victim_slots, "the lost slots are exactly the paused node's");
        // A client that starts now learns the map with the lost slots, so it fails at
        // once instead of waiting for the paused node.
        wait_for_node_epoch(&cluster.others[0], lost.map.epoch).await;
        let fresh = cluster.client().await;
        check_lost(&fresh, &seeded, "while the node is paused").await;

        // The same process comes back: its slots return, with their data.
        resume_process(pid);
        let (status, node) = wait_for_victim(&cluster, "the resumed node gets its slots back", |status, node| {
            node.alive && node.slots_lost == 0 && status.map.lost_slots().is_empty()
        })
        .await;
        assert_eq!(
            node.incarnation, before.incarnation,
            "the resumed process is the same incarnation: {node:?}"
        );
        assert_eq!(
            slots_of(&status.map, cluster.victim_id),
            victim_slots,
            "the resumed node owns exactly its old slots again"
        );
        for (name, client) in [
            ("the old client", &client),
            ("a client started during the pause", &fresh),
        ] {
            for key in &seeded.on_victim {
                let bytes = client.bytes(key.clone());
                let stored = until_served(&format!("{name}: get {key} after the resume"), async || {
                    bytes.get().await
                })
                .await
                .unwrap_or_else(|| panic!("{name}: {key} is missing after the resume: its data was kept"));
                assert_eq!(
                    (&stored.value, stored.version),
                    (&seeded.values[key].0, seeded.values[key].1),
                    "{name}: {key} changed over the pause"
                );
            }
            check_elsewhere(client, &seeded, "after the resume").await;
        }
        check_fence_above(&client, &seeded, "after the resume").await;
    });
    drop(resume);
}

/// Stale calls of a client that still routes with the map from before the pause: they
/// wait in the paused node's socket buffers while its slots are reclaimed elsewhere and
/// written there, and are handled when it resumes. The resumed node must not answer them
/// from its stranded copy: no read returns the old data, and no write is acknowledged
/// that the slots' new owner does not have.
#[test]
fn a_paused_node_whose_slots_were_reclaimed_meanwhile_never_serves_its_stranded_copy() {
    const STALE_READS: usize = 20;
    const STALE_WRITES: usize = 10;
    let cluster = Cluster::start("lost-slots-stranded", PAUSED_LIVENESS_TIMEOUT_MS);
    let victim = cluster.victim.as_ref().unwrap();
    let pid = victim.pid();
    let resume = Resume(pid);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        assert!(
            seeded.on_victim.len() > STALE_READS + STALE_WRITES,
            "only {} keys on the victim",
            seeded.on_victim.len()
        );
        let (read_keys, rest) = seeded.on_victim.split_at(STALE_READS);
        let (write_keys, untouched) = rest.split_at(STALE_WRITES);

        stop_process(pid);
        wait_for_victim(&cluster, "the paused node is declared dead", |_, node| {
            !node.alive && node.slots_lost as usize == victim_slots.len()
        })
        .await;
        // The old client never heard of the loss: it sends to the paused node.
        let stale_reads: Vec<_> = read_keys
            .iter()
            .map(|key| {
                let bytes = client.bytes(key.clone());
                (key.clone(), tokio::spawn(async move { bytes.get().await }))
            })
            .collect();
        let stale_writes: Vec<_> = write_keys
            .iter()
            .map(|key| {
                let bytes = client.bytes(key.clone());
                let value = format!("stale-write-{key}").into_bytes();
                (key.clone(), tokio::spawn(async move { bytes.set(value).await }))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // The operator gives the slots up for lost: they go to the live nodes, empty.
        cluster_cli(&cluster.control, &["reclaim", "--node", &cluster.victim_id.to_string()]).await;
        let (reclaimed, node) = cluster.victim_status().await;
        assert!(
            reclaimed.map.lost_slots().is_empty(),
            "{:?}",
            reclaimed.map.lost_slots()
        );
        assert_eq!(node.slots_lost, 0, "{node:?}");
        assert!(
            slots_of(&reclaimed.map, cluster.victim_id).is_empty(),
            "the reclaim gave slots to the paused node"
        );
        wait_for_node_epoch(&cluster.others[0], reclaimed.map.epoch).await;
        let fresh = cluster.client().await;
        let old_top = seeded.highest_victim_version();
        let mut expected: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for key in read_keys {
            let value = format!("new-{key}").into_bytes();
            let bytes = fresh.bytes(key.clone());
            let version = until_served(&format!("set {key} after the reclaim"), async || {
                bytes.set(value.clone()).await
            })
            .await;
            assert!(
                version > old_top,
                "{key}: version {version} after the reclaim, {old_top} before"
            );
            expected.insert(key.clone(), Some(value));
        }
        for key in untouched {
            let bytes = fresh.bytes(key.clone());
            let found = until_served(&format!("get {key} after the reclaim"), async || bytes.get().await).await;
            assert_eq!(found, None, "{key} came back after the reclaim");
            expected.insert(key.clone(), None);
        }

        // The paused process runs on and handles the stale calls.
        resume_process(pid);
        // Every stale call is judged before the test fails, so a failure lists them all.
        let mut violations = Vec::new();
        for (key, task) in stale_reads {
            let answer = task.await.expect("stale read task");
            eprintln!("stale read of {key}: {answer:?}");
            if let Ok(Some(stored)) = &answer {
                if stored.value == seeded.values[&key].0 {
                    violations.push(format!(
                        "read of {key} answered from the stranded copy: {:?} version {} (rewritten as {:?} \
                         at the slot's new owner)",
                        String::from_utf8_lossy(&stored.value),
                        stored.version,
                        expected[&key].as_ref().map(|value| String::from_utf8_lossy(value))
                    ));
                } else if Some(&stored.value) != expected[&key].as_ref() {
                    violations.push(format!("read of {key} answered {stored:?}, never written"));
                }
            }
        }
        let mut acknowledged = BTreeMap::new();
        for (key, task) in stale_writes {
            let answer = task.await.expect("stale write task");
            eprintln!("stale write of {key}: {answer:?}");
            if let Ok(version) = answer {
                acknowledged.insert(key, version);
            }
        }
        for key in write_keys {
            let bytes = fresh.bytes(key.clone());
            let found = until_served(&format!("get {key} after the resume"), async || bytes.get().await).await;
            let stale_value = format!("stale-write-{key}").into_bytes();
            let found_pair = found.as_ref().map(|stored| (&stored.value, stored.version));
            match acknowledged.get(key) {
                Some(version) if found_pair != Some((&stale_value, *version)) => violations.push(format!(
                    "write of {key} acknowledged (version {version}) but the slot's owner has {found:?}"
                )),
                None if found.as_ref().is_some_and(|stored| stored.value != stale_value) => {
                    violations.push(format!("{key} after an unacknowledged write: {found:?}"))
                }
                _ => {}
            }
            expected.insert(key.clone(), found.map(|stored| stored.value));
        }
        assert!(
            violations.is_empty(),
            "calls sent to the paused node before its slots were reclaimed elsewhere (and {} keys rewritten \
             there) were answered from its stranded copy once it resumed:\n{}",
            read_keys.len(),
            violations.join("\n")
        );

        wait_for_victim(&cluster, "the resumed node is alive", |_, node| node.alive).await;
        tokio::time::sleep(HEARTBEATS_SETTLE).await;
        let (status, node) = cluster.victim_status().await;
        assert!(status.map.lost_slots().is_empty());
        assert_eq!(node.slots_lost, 0, "{node:?}");
        assert!(
            slots_of(&status.map, cluster.victim_id).is_empty(),
            "the resumed node got back slots that were reclaimed elsewhere"
        );
        // Through every way in: the same answers, never the stranded copy.
        let at_victim = victim.front_only_client(CALL_TIMEOUT).await;
        for (name, client) in [
            ("the old client", &client),
            ("a client started after the reclaim", &fresh),
            ("the resumed node's front port", &at_victim),
        ] {
            for (key, value) in &expected {
                let bytes = client.bytes(key.clone());
                let found = until_served(&format!("{name}: get {key}"), async || bytes.get().await).await;
                assert_eq!(
                    found.map(|stored| stored.value).as_ref(),
                    value.as_ref(),
                    "{name}: {key} after the resume (before the kill it was {:?})",
                    String::from_utf8_lossy(&seeded.values[key].0)
                );
            }
            check_elsewhere(client, &seeded, name).await;
        }
        // The stranded copy goes once the resumed node has seen the slots are elsewhere
        // (its front port already answered for them above with the new owners' data).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let held = total_keys(&victim.front_only_client(CALL_TIMEOUT).await).await;
            if held == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resumed node still holds {held} keys of slots reclaimed elsewhere, 15 s after it owns none"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    drop(resume);
}
