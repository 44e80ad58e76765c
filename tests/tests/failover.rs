//! Failover with real processes: an `engram-control --replicas 1` keeps a backup of every
//! slot on another node, and promotes the backups of a node that dies (silent past the
//! liveness timeout, or back as a new process at its address) instead of losing its
//! slots.
//!
//! - `kill -9` of a node every 10 s, in rotation, each restarted on its address, under
//!   the elastic-cluster load (`tests/src/load.rs`: counters with their acknowledgements
//!   and a linearizable sample, a lock with fences and an outside witness, a barrier) and
//!   queue producers and consumers (`tests/src/failover.rs`): nothing acknowledged is
//!   lost or doubled, and the control plane never reports a lost slot.
//! - A paused (SIGSTOP) primary of a lock's slot: its backup takes over with the lock's
//!   holder and lease, a new holder gets the lock only once that lease ended and with a
//!   higher fence, and the old primary, running again, serves the slot to nobody.
//! - A primary cut off from the control plane (iptables drops its connections there,
//!   both ways; everything else still reaches it): it stops serving once its map was not
//!   checked for its lease, before its backup is promoted, so no write is served on both
//!   sides; the other nodes serve throughout, no acknowledged increment is lost, and once
//!   the cut heals the node rejoins as the same process and redirects its old slots.
//! - Measurements (ignored): how long writes to a killed node's slots stall, and what
//!   a backup costs the latency of writes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_client::ErrorCode;
use engram_proto::{Command, CounterCommand, LockCommand, Response};
use engram_tests::cluster::{shard_of_node, wait_for_node_epoch};
use engram_tests::elastic::key_per_slot;
use engram_tests::failover::{
    incarnation_of, owned_slots, redundancy_gap, wait_for_new_incarnation, wait_for_redundancy, wait_for_status,
    FailoverCluster, ProcessGroups, QueueLoad, StatusWatch, REDUNDANCY_LIMIT,
};
use engram_tests::firewall::{test_group, Cut, Side};
use engram_tests::load::{Load, SharedKeys};
use engram_tests::raw::{request, RawConnection, RawReply};
use engram_tests::server::{resume_process, stop_process, Resume};
use engram_tests::victim::slot_of;
use engram_tests::{key_on_shard, run_async};

/// Backups per slot.
const REPLICAS: usize = 1;
/// Liveness timeout of these tests: short, but above the few seconds the control plane
/// itself may stall on a busy 2-core machine, as in the paused-node tests (a stall
/// longer than the timeout would get live nodes declared dead too).
const LIVENESS_TIMEOUT_MS: u64 = 5_000;
/// Time between two kills, at least: each also waits for every slot to be backed up
/// again, so no kill takes both copies of a slot.
const KILL_INTERVAL: Duration = Duration::from_secs(10);
/// How long the kills go on (one every [`KILL_INTERVAL`] up to this, from the first
/// interval's end). 40 s keeps the test short enough for every run; the full
/// run, 120 s with at least 10 kills, is `ENGRAM_FAILOVER_SECONDS=130`.
const FAILOVER_SECONDS_ENV: &str = "ENGRAM_FAILOVER_SECONDS";
const FAILOVER_SECONDS_DEFAULT: u64 = 40;
/// How long a killed node stays down, alternating: shorter than the liveness timeout
/// (the control plane learns of the death from the new process's join) and longer (it
/// learns from the silence).
const DOWN_TIMES: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(7)];
/// What the load must achieve after each failover: it serves on.
const WRITES_AFTER_EACH_KILL: u64 = 200;
const POPS_AFTER_EACH_KILL: usize = 10;

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The next node to kill, in rotation from `round`: the first that owns slots (killing
/// one that only holds backups would fail nothing over).
fn next_victim(cluster: &FailoverCluster, map: &engram_proto::SlotMap, round: usize) -> usize {
    let count = cluster.nodes.len();
    (0..count)
        .map(|step| (round + step) % count)
        .find(|index| !owned_slots(map, cluster.nodes[*index].node_id).is_empty())
        .expect("some node owns slots")
}

/// One queue per shard of `map`, so the queues fail over with different nodes.
fn queue_per_shard(map: &engram_proto::SlotMap) -> Vec<String> {
    (0..map.shards.len())
        .map(|shard| key_on_shard(map, b"default", shard, &format!("failover-queue-{shard}")))
        .collect()
}

#[test]
fn kill_nine_every_ten_seconds_loses_nothing_with_one_replica() {
    const NODES: usize = 4;
    let run = Duration::from_secs(env_or(FAILOVER_SECONDS_ENV, FAILOVER_SECONDS_DEFAULT));
    let mut cluster = FailoverCluster::start("failover-kill-nine", NODES, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(run + Duration::from_secs(300), async {
        let spread = cluster.spread().await;
        let client = cluster.client().await;
        // The lock, its guarded value and the barrier live on the first node killed, so
        // the first failover happens under them.
        let keys = SharedKeys::on_shard(&spread.map, shard_of_node(&spread.map, cluster.nodes[1].node_id));
        let watch = StatusWatch::start(&cluster.control);
        let load = Load::start(&client, &keys);
        let queues = QueueLoad::start(&client, queue_per_shard(&spread.map));
        load.wait_for_writes(1_000).await;
        queues.wait_for_pops(50).await;

        let started = Instant::now();
        let mut round = 0;
        loop {
            let due = started + KILL_INTERVAL * (round as u32 + 1);
            if due > started + run {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let before = cluster.control.status().await;
            let victim = next_victim(&cluster, &before.map, round + 1);
            let node_id = cluster.nodes[victim].node_id;
            let incarnation = incarnation_of(&before, node_id);
            let owned = owned_slots(&before.map, node_id);
            let down = DOWN_TIMES[round % DOWN_TIMES.len()];
            println!(
                "kill {}: node {node_id} ({} slots, map epoch {}), down for {down:?}",
                round + 1,
                owned.len(),
                before.map.epoch
            );
            cluster.kill(victim);
            let killed = Instant::now();
            tokio::time::sleep(down).await;
            cluster.restart(victim);
            wait_for_new_incarnation(&cluster.control, node_id, incarnation).await;
            let after = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
            // Its slots went to the backups the map named for them, not lost and not
            // served empty.
            let owners = after.map.owner_table();
            for &slot in &owned {
                let owner = &after.map.shards[owners[slot as usize] as usize];
                let promoted = before
                    .map
                    .backups_of(slot)
                    .iter()
                    .any(|&index| before.map.shards[index as usize].node_id == owner.node_id);
                assert!(
                    promoted,
                    "slot {slot} of the killed node {node_id} went to node {} (shard {}), not to its backup {:?}",
                    owner.node_id,
                    owner.shard_id,
                    before.map.backups_of(slot)
                );
            }
            println!(
                "kill {}: backed up again {:.1} s after the kill (map epoch {})",
                round + 1,
                killed.elapsed().as_secs_f64(),
                after.map.epoch
            );
            load.wait_for_writes(WRITES_AFTER_EACH_KILL).await;
            queues.wait_for_pops(POPS_AFTER_EACH_KILL).await;
            round += 1;
        }
        assert!(round > 0, "the run of {run:?} left no time for a kill");

        load.stop_and_check(&client, &keys).await;
        queues.stop_and_check(&client).await;
        let report = watch.stop().await;
        println!("{round} kills; status watch: {report:?}");
        report.assert_nothing_lost();
        assert!(
            report.polls > report.unanswered,
            "the control plane never answered the status watch"
        );
    });
}

/// What a node's shard port answered a request sent to it directly.
#[derive(Debug)]
enum Direct {
    Refused {
        code: ErrorCode,
        message: String,
    },
    Served(Response),
    /// The connection closed (or reset) instead of answering: not served either.
    Closed,
}

/// Sends `command` on `connection` and reads its answer, taking a closed connection as
/// an answer.
fn ask_directly(connection: &mut RawConnection, request_id: u64, command: Command) -> Direct {
    let frame = engram_tests::raw::request_frame(request_id, &request(command));
    if connection.send_raw_lenient(&frame).is_err() {
        return Direct::Closed;
    }
    let reply: RawReply = match connection.read_frame() {
        Ok(Some(reply)) => reply,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the shard port neither answered nor closed within its read timeout: {error}")
        }
        Ok(None) | Err(_) => return Direct::Closed,
    };
    match reply.response() {
        Response::Error(error) => Direct::Refused {
            code: ErrorCode::from_u16(error.code).unwrap_or_else(|| panic!("unknown error code in {error:?}")),
            message: error.message,
        },
        served => Direct::Served(served),
    }
}

/// Asks the old primary's shard port, over `connection`, who holds `lock` and to grant
/// it to a third owner at once: both must be refused (`TryAgain` while it has not
/// checked its map since the pause, then `Moved` to the slot's new owner, or
/// `WrongShard`), never served. Returns the holder query's answer.
fn refused_by_old_primary(connection: &mut RawConnection, round: u64, lock: &str) -> Direct {
    let holder = ask_directly(
        connection,
        2 * round + 1,
        Command::from(LockCommand::Holder { key: lock.into() }),
    );
    let grant = ask_directly(
        connection,
        2 * round + 2,
        Command::from(LockCommand::Acquire {
            key: lock.into(),
            owner: b"stale-holder".to_vec(),
            lease_ms: 10_000,
            wait_ms: 0,
        }),
    );
    for (what, answer) in [("holder", &holder), ("try-acquire", &grant)] {
        match answer {
            Direct::Served(response) => panic!(
                "the replaced primary served a {what} of {lock} sent to its shard port after it resumed: {response:?}"
            ),
            Direct::Refused { code, message } => assert!(
                matches!(code, ErrorCode::TryAgain | ErrorCode::Moved | ErrorCode::WrongShard),
                "the replaced primary refused a {what} of {lock} with {code:?} ({message}), \
                 neither TryAgain nor a redirect"
            ),
            Direct::Closed => {}
        }
    }
    holder
}

#[test]
fn a_paused_primary_of_a_lock_slot_is_replaced_and_redirects_after_resuming() {
    /// Longer than it takes to declare the paused node dead and promote its backup, so
    /// the backup takes over a lease that still runs.
    const LEASE: Duration = Duration::from_secs(25);
    /// Bound on each wait for the cluster to get somewhere (not a requirement on speed).
    const SETTLE_LIMIT: Duration = Duration::from_secs(45);
    let cluster = FailoverCluster::start("failover-paused-primary", 3, REPLICAS, LIVENESS_TIMEOUT_MS);
    let victim = cluster.nodes[1].server();
    let (victim_id, pid) = (victim.node_id(), victim.pid());
    let shard_address = victim.shards()[0];
    let resume = Resume(pid);
    run_async(Duration::from_secs(180), async {
        let spread = cluster.spread().await;
        let client = cluster.client().await;
        let victim_shard = shard_of_node(&spread.map, victim_id);
        let lock_key = key_on_shard(&spread.map, b"default", victim_shard, "failover-lock");
        let slot = slot_of(&lock_key);
        let backups = spread.map.backups_of(slot).to_vec();
        assert!(!backups.is_empty(), "slot {slot} of {lock_key} has no backup");

        let lock = client.lock(lock_key.clone());
        let asked = Instant::now();
        let old = lock
            .acquire("old-holder", LEASE, Duration::ZERO)
            .await
            .expect("acquire the lock on the primary");
        // A connection of a client that routed here before the pause.
        let mut stale = tokio::task::block_in_place(|| RawConnection::handshaken(shard_address, 7));

        stop_process(pid);
        let promoted = wait_for_status(
            &cluster.control,
            "the paused primary's backup is promoted",
            SETTLE_LIMIT,
            |status| {
                let owner = status.map.owner_table()[slot as usize];
                owner != engram_proto::LOST_SHARD_INDEX && status.map.shards[owner as usize].node_id != victim_id
            },
        )
        .await;
        assert!(
            engram_tests::failover::lost_in(&promoted).is_none(),
            "slots were lost instead of promoted: {:?}",
            engram_tests::failover::lost_in(&promoted)
        );
        let owner = promoted.map.owner_table()[slot as usize] as usize;
        let new_owner = promoted.map.shards[owner].clone();
        assert!(
            backups
                .iter()
                .any(|&index| spread.map.shards[index as usize].node_id == new_owner.node_id),
            "slot {slot} went to {new_owner:?}, not to its backup {backups:?}"
        );

        // The client that took the lock still routes to the paused node, which would
        // hold its calls unanswered; one that starts from a live node's new map is sent
        // to the promoted backup.
        wait_for_node_epoch(cluster.nodes[0].server(), promoted.map.epoch, SETTLE_LIMIT).await;
        let client = cluster.client().await;
        let lock = client.lock(lock_key.clone());
        // The lock came along: its holder, its fence and a lease still running.
        let holder = lock.holder().await.expect("holder at the promoted backup");
        if asked.elapsed() < LEASE {
            let holder = holder.expect("the old holder's lease still runs at the promoted backup");
            assert_eq!(
                (holder.owner.as_slice(), holder.fence),
                (b"old-holder".as_slice(), old.fence()),
                "the promoted backup names another holder"
            );
        }
        let new = lock
            .acquire("new-holder", LEASE, LEASE + SETTLE_LIMIT)
            .await
            .expect("a new holder acquires once the old lease ended");
        assert!(
            asked.elapsed() >= LEASE,
            "the new holder got the lock {:?} after the old one asked for its {LEASE:?} lease",
            asked.elapsed()
        );
        assert!(
            new.fence() > old.fence(),
            "fence {} after failover is not above the old holder's {}",
            new.fence(),
            old.fence()
        );
        let stale_release = lock.release_with("old-holder", old.fence()).await;
        assert!(
            matches!(&stale_release, Err(error) if error.is_server(ErrorCode::NotHolder)),
            "releasing with the old holder's fence answered {stale_release:?}, not NotHolder"
        );

        resume_process(pid);
        // Every answer of the old primary refuses; once it has the new map, it names the
        // slot's new owner.
        tokio::task::block_in_place(|| refused_by_old_primary(&mut stale, 0, &lock_key));
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut round = 1;
        let moved = loop {
            let mut fresh = tokio::task::block_in_place(|| RawConnection::handshaken(shard_address, 8 + round));
            match tokio::task::block_in_place(|| refused_by_old_primary(&mut fresh, round, &lock_key)) {
                Direct::Refused {
                    code: ErrorCode::Moved | ErrorCode::WrongShard,
                    message,
                } => break message,
                other => assert!(
                    Instant::now() < deadline,
                    "the resumed old primary still answers {other:?} {SETTLE_LIMIT:?} after it resumed"
                ),
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            moved.contains(&new_owner.address),
            "the old primary's redirect does not name the new owner {}: {moved}",
            new_owner.address
        );
        let status = cluster.control.status().await;
        let owner = status.map.owner_table()[slot as usize];
        assert_ne!(
            status.map.shards[owner as usize].node_id, victim_id,
            "the resumed node got the slot back from its promoted backup"
        );
        let holder = lock.holder().await.expect("holder after the resume");
        assert_eq!(
            holder.map(|holder| (holder.owner, holder.fence)),
            Some((b"new-holder".to_vec(), new.fence())),
            "the lock's holder after the old primary resumed"
        );
        new.release().await.expect("release");
    });
    drop(resume);
}

/// Pause between two increments a [`DirectProbe`] sends.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// What the increments sent straight to one shard port got.
#[derive(Default)]
struct DirectLog {
    /// (sent, answered) of each served increment.
    served: Vec<(Instant, Instant)>,
    /// (answered, code, message) of each refusal.
    refused: Vec<(Instant, ErrorCode, String)>,
    /// Increments whose connection closed before they were answered: applied or not,
    /// nobody knows.
    unknown: u64,
}

impl DirectLog {
    fn refused_since(&self, since: Instant, codes: &[ErrorCode]) -> Option<&(Instant, ErrorCode, String)> {
        self.refused
            .iter()
            .find(|(at, code, _)| *at >= since && codes.contains(code))
    }
}

/// `counter add 1` of one key sent to one shard port every [`PROBE_INTERVAL`], as a
/// client that routed there would: the shard serves it or refuses it itself, nothing
/// forwards it. Runs on a thread of its own (the raw connection blocks).
struct DirectProbe {
    log: Arc<Mutex<DirectLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirectProbe {
    /// `client_ids` numbers the probe's connections (a new one after each close), apart
    /// from every other probe's.
    fn start(address: SocketAddr, key: &str, client_ids: u64) -> DirectProbe {
        let log = Arc::new(Mutex::new(DirectLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (logged, stopped, key) = (log.clone(), stop.clone(), key.to_string());
        let thread = std::thread::spawn(move || {
            let mut connections = 0;
            let mut connection: Option<RawConnection> = None;
            let mut request_id = 0;
            while !stopped.load(Relaxed) {
                let open = connection.get_or_insert_with(|| {
                    connections += 1;
                    RawConnection::handshaken(address, client_ids + connections)
                });
                request_id += 1;
                let add = CounterCommand::Add {
                    key: key.clone().into_bytes(),
                    delta: 1,
                };
                let sent = Instant::now();
                let answer = ask_directly(open, request_id, Command::from(add));
                let answered = Instant::now();
                let mut log = logged.lock().unwrap();
                match answer {
                    Direct::Served(_) => log.served.push((sent, answered)),
                    Direct::Refused { code, message } => log.refused.push((answered, code, message)),
                    Direct::Closed => {
                        log.unknown += 1;
                        connection = None;
                    }
                }
                drop(log);
                std::thread::sleep(PROBE_INTERVAL);
            }
        });
        DirectProbe {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, DirectLog> {
        self.log.lock().unwrap()
    }

    /// Waits until `done` holds for the log; fails the test, naming `what`, after `limit`.
    async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&DirectLog) -> bool) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.log()) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline && !self.thread.as_ref().is_some_and(|thread| thread.is_finished()),
                "{what}: not within {limit:?} (or the probe ended)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stop(mut self) -> DirectLog {
        self.stop.store(true, Relaxed);
        let thread = self.thread.take().expect("a running probe");
        if let Err(panic) = tokio::task::block_in_place(|| thread.join()) {
            std::panic::resume_unwind(panic);
        }
        std::mem::take(&mut *self.log())
    }
}

impl Drop for DirectProbe {
    /// A test that failed leaves its probe behind: it must not go on probing the nodes
    /// the cluster's drop stops.
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Pause between two rounds of a [`BackgroundWriter`].
const BACKGROUND_PAUSE: Duration = Duration::from_millis(10);

/// Increments of keys on the nodes that stay connected, one key after the other
/// through a client, counting what was acknowledged and what failed.
struct BackgroundWriter {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(BTreeMap<String, i64>, Vec<String>, Duration)>,
}

impl BackgroundWriter {
    fn start(client: &engram_client::Client, keys: Vec<String>) -> BackgroundWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let (client, stopped, counted) = (client.clone(), stop.clone(), acknowledged.clone());
        let task = tokio::spawn(async move {
            let mut counts: BTreeMap<String, i64> = keys.iter().map(|key| (key.clone(), 0)).collect();
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            while !stopped.load(Relaxed) {
                for key in &keys {
                    let asked = Instant::now();
                    match client.counter(key.clone()).add(1).await {
                        Ok(_) => {
                            *counts.get_mut(key).expect("a key of the writer") += 1;
                            counted.fetch_add(1, Relaxed);
                        }
                        Err(error) => failures.push(format!("increment of {key}: {error}")),
                    }
                    slowest = slowest.max(asked.elapsed());
                }
                tokio::time::sleep(BACKGROUND_PAUSE).await;
            }
            (counts, failures, slowest)
        });
        BackgroundWriter {
            stop,
            acknowledged,
            task,
        }
    }

    fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Relaxed)
    }

    /// Stops the writer and checks that nothing failed and every counter holds exactly
    /// its acknowledged increments; returns the slowest increment.
    async fn stop_and_check(self, client: &engram_client::Client) -> Duration {
        self.stop.store(true, Relaxed);
        let (counts, failures, slowest) = self.task.await.expect("background writer");
        assert!(
            failures.is_empty(),
            "writes to keys of the nodes still connected failed:\n{}",
            failures.join("\n")
        );
        for (key, acknowledged) in counts {
            let value = client
                .counter(key.clone())
                .get()
                .await
                .expect("read a background counter");
            assert_eq!(
                value, acknowledged,
                "counter {key} holds {value} after {acknowledged} acknowledged increments"
            );
        }
        slowest
    }
}

#[test]
fn a_primary_cut_off_from_the_control_plane_stops_serving_within_its_lease_and_the_rest_goes_on() {
    /// Bound on each wait for the cluster to get somewhere (not a requirement on speed).
    const SETTLE_LIMIT: Duration = Duration::from_secs(30);
    /// Increments through the client before the cut and after the promotion.
    const INCREMENTS: i64 = 20;
    /// Increments each probe must have got served before it counts as serving.
    const PROBES_SERVED: usize = 5;
    /// Keys of the background writer on each node that stays connected.
    const BACKGROUND_KEYS_PER_NODE: usize = 3;
    /// Old slots of the cut-off node checked for a redirect after it rejoined.
    const OLD_SLOTS_CHECKED: usize = 64;
    let groups = ProcessGroups {
        control: Some(test_group(0)),
        nodes: vec![None, Some(test_group(1)), None],
    };
    let cluster = FailoverCluster::start_in_groups("failover-cut-off", &groups, REPLICAS, LIVENESS_TIMEOUT_MS);
    let victim = cluster.nodes[1].server();
    let (victim_id, victim_address) = (victim.node_id(), victim.shards()[0]);
    let control_address: SocketAddr = cluster.control.address().parse().expect("the control plane's address");
    let (SocketAddr::V4(control_address), Some(control_group), Some(victim_group)) =
        (control_address, groups.control, groups.nodes[1])
    else {
        unreachable!("the control plane listens on IPv4 loopback, and both have groups")
    };
    let control_side = Side {
        group: control_group,
        address: *control_address.ip(),
    };
    let victim_side = Side {
        group: victim_group,
        address: victim.bind(),
    };
    run_async(Duration::from_secs(90), async {
        let spread = cluster.spread().await;
        let incarnation = spread
            .nodes
            .iter()
            .find(|node| node.node_id == victim_id)
            .expect("the node to cut off is a member")
            .incarnation;
        let victim_shard = shard_of_node(&spread.map, victim_id);
        let old_slots = owned_slots(&spread.map, victim_id);
        assert!(
            !old_slots.is_empty(),
            "the node to cut off owns no slot after the spread"
        );
        let key = key_on_shard(&spread.map, b"default", victim_shard, "cut-off-counter");
        let slot = slot_of(&key);
        let backup = match spread.map.backups_of(slot) {
            [index] => spread.map.shards[*index as usize].clone(),
            other => panic!("slot {slot} of {key} has backups {other:?}, not one"),
        };
        let backup_address: SocketAddr = backup.address.parse().expect("the backup's address");
        let others: Vec<String> = (0..spread.map.shards.len())
            .filter(|&shard| shard != victim_shard)
            .flat_map(|shard| {
                let map = &spread.map;
                (0..BACKGROUND_KEYS_PER_NODE)
                    .map(move |n| key_on_shard(map, b"default", shard, &format!("cut-off-other-{shard}-{n}")))
            })
            .collect();

        // Seeded at the first node, which stays connected.
        let client = cluster.client().await;
        let counter = client.counter(key.clone());
        let mut acknowledged = 0;
        for _ in 0..INCREMENTS {
            counter.add(1).await.expect("increment before the cut");
            acknowledged += 1;
        }
        let writer = BackgroundWriter::start(&cluster.client().await, others);
        let victim_probe = DirectProbe::start(victim_address, &key, 1_000);
        let backup_probe = DirectProbe::start(backup_address, &key, 1_000_000);
        victim_probe
            .wait_for("the node to cut off serves the probe", SETTLE_LIMIT, |log| {
                log.served.len() >= PROBES_SERVED
            })
            .await;

        let cut = Cut::between(victim_side, control_side);
        let cut_at = Instant::now();
        let written_at_cut = writer.acknowledged();
        let stopped_at = victim_probe
            .wait_for("the cut-off node refuses the probe", SETTLE_LIMIT, |log| {
                log.refused_since(cut_at, &[ErrorCode::TryAgain]).is_some()
            })
            .await;
        // It no longer serves the key; its backup takes over once the control plane
        // has declared it dead, and the client's write waits for that.
        let asked = Instant::now();
        tokio::time::timeout(SETTLE_LIMIT, counter.add(1))
            .await
            .unwrap_or_else(|_| panic!("a write to the cut-off node's key was not answered within {SETTLE_LIMIT:?}"))
            .expect("a write to the cut-off node's key through a client seeded at a connected node");
        acknowledged += 1;
        let client_write_took = asked.elapsed();
        let promoted = wait_for_status(
            &cluster.control,
            "the cut-off node is declared dead and its backup promoted",
            SETTLE_LIMIT,
            |status| {
                let owner = status.map.owner_table()[slot as usize];
                let dead = status.nodes.iter().any(|node| node.node_id == victim_id && !node.alive);
                dead && owner != engram_proto::LOST_SHARD_INDEX
                    && status.map.shards[owner as usize].node_id == backup.node_id
            },
        )
        .await;
        let promoted_seen_at = Instant::now();
        assert!(
            engram_tests::failover::lost_in(&promoted).is_none(),
            "slots were lost instead of promoted: {:?}",
            engram_tests::failover::lost_in(&promoted)
        );
        for _ in 0..INCREMENTS {
            counter.add(1).await.expect("increment after the promotion");
            acknowledged += 1;
        }
        backup_probe
            .wait_for("the promoted backup serves the probe", SETTLE_LIMIT, |log| {
                log.served.len() >= PROBES_SERVED
            })
            .await;
        let written_during_cut = writer.acknowledged() - written_at_cut;

        drop(cut);
        let healed_at = Instant::now();
        let rejoined = wait_for_status(
            &cluster.control,
            "the cut-off node is alive again",
            SETTLE_LIMIT,
            |status| status.nodes.iter().any(|node| node.node_id == victim_id && node.alive),
        )
        .await;
        let rejoined_at = Instant::now();
        let member = rejoined
            .nodes
            .iter()
            .find(|node| node.node_id == victim_id)
            .expect("member");
        assert_eq!(
            member.incarnation, incarnation,
            "the cut-off node came back as another incarnation"
        );
        let redirected_at = victim_probe
            .wait_for("the rejoined node redirects the probe", SETTLE_LIMIT, |log| {
                log.refused_since(healed_at, &[ErrorCode::Moved, ErrorCode::WrongShard])
                    .is_some()
            })
            .await;
        let redundant = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        let redundant_at = Instant::now();
        let victim_log = victim_probe.stop();
        let backup_log = backup_probe.stop();

        // (1) The cut-off node served nothing once its backup could: every increment it
        // answered was answered before the backup was first asked one it served.
        let last_served = victim_log.served.last().expect("the cut-off node served the probe").1;
        let first_promoted = backup_log.served.first().expect("the backup served the probe").0;
        assert!(
            last_served < first_promoted,
            "the cut-off node served an increment {:?} after the cut, {:?} after its promoted backup \
             was first asked one it served ({:?} after the cut)",
            last_served - cut_at,
            last_served - first_promoted,
            first_promoted - cut_at
        );
        let refusals: Vec<&(Instant, ErrorCode, String)> = victim_log
            .refused
            .iter()
            .filter(|(_, code, _)| !matches!(code, ErrorCode::TryAgain | ErrorCode::Moved | ErrorCode::WrongShard))
            .collect();
        assert!(
            refusals.is_empty(),
            "the cut-off node refused with neither TryAgain nor a redirect: {refusals:?}"
        );
        let (_, _, redirect) = victim_log
            .refused_since(healed_at, &[ErrorCode::Moved, ErrorCode::WrongShard])
            .expect("a redirect after the heal");
        assert!(
            redirect.contains(&backup.address),
            "the rejoined node's redirect does not name the promoted backup {}: {redirect}",
            backup.address
        );

        // (2) The nodes still connected served throughout.
        assert!(
            written_during_cut > 0,
            "the background writer got nothing acknowledged while the node was cut off"
        );
        let slowest_background = writer.stop_and_check(&client).await;

        // (3) Every acknowledged increment is there, the probes' served ones included.
        let served_directly = (victim_log.served.len() + backup_log.served.len()) as i64;
        let unknown = (victim_log.unknown + backup_log.unknown) as i64;
        let expected = acknowledged + served_directly;
        let value = counter.get().await.expect("read the counter");
        assert!(
            (expected..=expected + unknown).contains(&value),
            "the counter holds {value}, but {acknowledged} increments were acknowledged through the client \
             and {served_directly} served directly ({unknown} unanswered)"
        );

        // (4) The rejoined node was given none of its old slots back, and serves none.
        let owners = redundant.map.owner_table();
        let probes = key_per_slot();
        let step = old_slots.len().div_ceil(OLD_SLOTS_CHECKED);
        let mut connection = tokio::task::block_in_place(|| RawConnection::handshaken(victim_address, 99));
        for (round, &old) in old_slots.iter().step_by(step).enumerate() {
            let owner = &redundant.map.shards[owners[old as usize] as usize];
            assert_ne!(
                owner.node_id, victim_id,
                "slot {old} went back to the node that was cut off"
            );
            let get = CounterCommand::Get {
                key: probes[old as usize].clone().into_bytes(),
            };
            match tokio::task::block_in_place(|| ask_directly(&mut connection, round as u64 + 1, Command::from(get))) {
                Direct::Refused {
                    code: ErrorCode::Moved | ErrorCode::WrongShard,
                    ..
                } => {}
                other => panic!("the rejoined node answered a read of its old slot {old} with {other:?}"),
            }
        }

        println!(
            "cut-off node {victim_id} (lease {} ms): last served {:?} after the cut, refused from {:?}; declared dead and \
             promoted (seen in the status) {:?} after the cut; the promoted backup first served {:?} after the cut; \
             the client's write took {:?}; {written_during_cut} background increments during the cut, the \
             slowest took {slowest_background:?}; healed after {:?}: alive again {:?} later, redirecting {:?} \
             later, fully backed up {:?} later; counter {value} ({unknown} unanswered probes)",
            engram_server::heartbeat::map_check_grace_ms(LIVENESS_TIMEOUT_MS),
            last_served.saturating_duration_since(cut_at),
            stopped_at - cut_at,
            promoted_seen_at - cut_at,
            first_promoted - cut_at,
            client_write_took,
            healed_at - cut_at,
            rejoined_at - healed_at,
            redirected_at - healed_at,
            redundant_at - healed_at,
        );
    });
}

/// Kills of the failover measurement (half with the node restarted at once).
const FAILOVER_KILLS_ENV: &str = "ENGRAM_FAILOVER_KILLS";
const FAILOVER_KILLS_DEFAULT: u64 = 6;

fn median_and_max(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

/// How long writes to a killed node's slots stall: from the `kill -9` until a write to
/// every one of its slots (one key each, sent at once) was acknowledged, for a node
/// that stays down (the control plane learns of the death from the liveness timeout)
/// and one restarted at once (it learns from the new process's join). Prints the
/// median and the largest of each; asserts only that every write succeeds.
#[test]
#[ignore = "a measurement: prints failover times (cargo nextest run --run-ignored only)"]
fn failover_time() {
    const WRITE_LIMIT: Duration = Duration::from_secs(60);
    let kills = env_or(FAILOVER_KILLS_ENV, FAILOVER_KILLS_DEFAULT) as usize;
    let mut cluster = FailoverCluster::start("failover-time", 3, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(60 + 120 * kills as u64), async {
        cluster.spread().await;
        let client = cluster.client().await;
        let probes = key_per_slot();
        let mut stayed_down = Vec::new();
        let mut restarted_at_once = Vec::new();
        for round in 0..kills {
            let status = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
            assert!(redundancy_gap(&status, REPLICAS).is_none());
            let victim = next_victim(&cluster, &status.map, round);
            let slots = owned_slots(&status.map, cluster.nodes[victim].node_id);
            let writes = slots
                .iter()
                .map(|&slot| {
                    let add = CounterCommand::Add {
                        key: probes[slot as usize].clone().into_bytes(),
                        delta: 1,
                    };
                    (Command::from(add), true)
                })
                .collect();
            let at_once = round % 2 == 1;
            cluster.kill(victim);
            let killed = Instant::now();
            if at_once {
                cluster.restart(victim);
            }
            let results = client.batch_with(writes, Some(WRITE_LIMIT)).await;
            let stall = killed.elapsed();
            if let Some(error) = results.iter().find_map(|result| result.as_ref().err()) {
                panic!("a write to the killed node's slots failed {stall:?} after the kill: {error}");
            }
            if !at_once {
                cluster.restart(victim);
            }
            println!(
                "kill {}: writes to {} slots stalled {:.2} s (node {})",
                round + 1,
                slots.len(),
                stall.as_secs_f64(),
                if at_once {
                    "restarted at once"
                } else {
                    "down until then"
                }
            );
            match at_once {
                true => restarted_at_once.push(stall),
                false => stayed_down.push(stall),
            }
        }
        for (what, times) in [
            ("down until the writes went through", &mut stayed_down),
            ("restarted at once", &mut restarted_at_once),
        ] {
            if times.is_empty() {
                continue;
            }
            let (median, max) = median_and_max(times);
            println!(
                "failover with the node {what}: median {:.2} s, max {:.2} s over {} kills \
                 (liveness timeout {LIVENESS_TIMEOUT_MS} ms)",
                median.as_secs_f64(),
                max.as_secs_f64(),
                times.len()
            );
        }
    });
}

/// Latency of writes with and without a backup: `engram-bench --workload set` against a
/// three-node cluster with `--replicas 0` and `--replicas 1`, at 1 and 50 connections.
/// Prints the tool's percentile lines; asserts nothing about them (a debug build on a
/// shared machine measures little but the ratio).
#[test]
#[ignore = "a measurement: prints write latencies (cargo nextest run --run-ignored only)"]
fn write_latency_with_and_without_a_backup() {
    const BENCH_SECONDS: &str = "5";
    const BENCH_LIMIT: Duration = Duration::from_secs(60);
    for replicas in [0, 1] {
        let cluster = FailoverCluster::start("failover-latency", 3, replicas, LIVENESS_TIMEOUT_MS);
        run_async(Duration::from_secs(240), async {
            cluster.spread().await;
        });
        let target = format!("engram://{}", cluster.nodes[0].server().front());
        for connections in ["1", "50"] {
            let stdout = run_bench(
                &[
                    "--target",
                    &target,
                    "--workload",
                    "set",
                    "--keys",
                    "10000",
                    "--connections",
                    connections,
                    "--duration",
                    BENCH_SECONDS,
                    "--warmup",
                    "1",
                ],
                BENCH_LIMIT,
            );
            for line in stdout
                .lines()
                .filter(|line| line.contains("p50") || line.contains("ops/s"))
            {
                println!("replicas {replicas}, {connections} connections: {}", line.trim());
            }
        }
    }
}

/// How long a new backup takes to get a gigabyte: two nodes with `--replicas 1` hold
/// `ENGRAM_RESTORE_KEYS` (default 1,000,000) values of 1,000 bytes, written through
/// `engram-bench --workload get --prefill` (which writes every key once); one node is
/// killed and restarted at once, its slots go to the other node, and the restarted
/// process is filled with a copy of everything. Prints the time from the kill until the
/// map names a backup for every slot again; asserts nothing about it.
#[test]
#[ignore = "a measurement: run with --run-ignored only --no-capture"]
fn restoring_redundancy_for_a_gigabyte() {
    const VALUE_BYTES: &str = "1000";
    const LOAD_LIMIT: Duration = Duration::from_secs(900);
    const RESTORE_LIMIT: Duration = Duration::from_secs(900);
    let keys = env_or("ENGRAM_RESTORE_KEYS", 1_000_000);
    let mut cluster = FailoverCluster::start("failover-restore", 2, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(240), async {
        cluster.spread().await;
        wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
    });
    let target = format!("engram://{}", cluster.nodes[0].server().front());
    let loaded = Instant::now();
    let keys_argument = keys.to_string();
    run_bench(
        &[
            "--target",
            &target,
            "--workload",
            "get",
            "--prefill",
            "--duration",
            "1",
            "--keys",
            &keys_argument,
            "--value-bytes",
            VALUE_BYTES,
            "--connections",
            "32",
        ],
        LOAD_LIMIT,
    );
    println!(
        "loaded {keys} keys of {VALUE_BYTES} bytes in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );
    run_async(RESTORE_LIMIT + Duration::from_secs(60), async {
        let status = cluster.control.status().await;
        let held: u64 = status
            .nodes
            .iter()
            .flat_map(|node| &node.shards)
            .map(|shard| shard.keys)
            .sum();
        println!("keys held by the two nodes before the kill (primaries and backups): {held}");
        cluster.kill(1);
        let killed = Instant::now();
        cluster.restart(1);
        // The restarted process first becomes a member again; only then can it be filled.
        tokio::time::sleep(Duration::from_secs(2)).await;
        wait_for_redundancy(&cluster.control, REPLICAS, RESTORE_LIMIT).await;
        println!(
            "redundancy restored {:.1} s after the kill ({keys} keys of {VALUE_BYTES} bytes)",
            killed.elapsed().as_secs_f64()
        );
    });
}

/// Runs `engram-bench` with `arguments` within `limit`; its standard output.
fn run_bench(arguments: &[&str], limit: Duration) -> String {
    let mut command = engram_tests::processes::scrubbed(engram_tests::binaries::binary("engram-bench"));
    command
        .args(arguments)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = engram_tests::server::run_bounded(command, limit);
    assert!(
        output.status.success(),
        "engram-bench failed: {}",
        engram_tests::server::describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
