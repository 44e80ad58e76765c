//! The cluster of the failover tests (`tests/tests/failover/`): an `engram-control`
//! keeping `--replicas` backups of every slot and one-core `engramd` nodes on fixed
//! addresses, each of which can be killed (`kill -9`), paused and started again on its
//! address; whether every slot has its owner and backups on live processes; a watch of
//! the control plane's status that records every lost slot it ever reports; and a queue
//! load whose acknowledged pushes and pops are checked against what is left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_client::Client;
use engram_proto::limits::SLOT_COUNT;
use engram_proto::{ClusterStatus, SlotMap, LOST_SHARD_INDEX};

use crate::cluster::{cluster_cli, wait_for_members, MEMBERSHIP_LIMIT};
use crate::control::ControlPlane;
use crate::processes::Scratch;
use crate::server::next_loopback;
use crate::victim::{start_at_fixed_address_in_group, tail};
use crate::{EngramServer, ServerOptions};

/// Long enough that no call gives up while its slot fails over (a liveness timeout, the
/// promotion, the client's map refresh): every operation must succeed for the exact
/// counts to be checkable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a restart waiting for the killed process's ports.
pub const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// How often the status watch asks the control plane.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Lost-slot reports the watch keeps word for word (it counts the rest).
const WATCH_REPORTS_KEPT: usize = 20;

/// One node: its options (a fixed address, so it restarts where it was), the process
/// running now, and the killed ones, kept for their logs.
pub struct Node {
    pub node_id: u64,
    pub options: ServerOptions,
    pub running: Option<EngramServer>,
    pub killed: Vec<EngramServer>,
}

impl Node {
    /// A node joining `control`, at an address it keeps across restarts.
    fn start(control: &ControlPlane, group: Option<u32>) -> Node {
        let (server, options) = start_at_fixed_address_in_group(control, group);
        Node {
            node_id: server.node_id(),
            options,
            running: Some(server),
            killed: Vec::new(),
        }
    }

    pub fn server(&self) -> &EngramServer {
        self.running
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.node_id))
    }
}

/// The groups (gids) a [`FailoverCluster`]'s processes run under, where not the test's
/// own: firewall rules tell their connections apart by them.
pub struct ProcessGroups {
    pub control: Option<u32>,
    /// One entry per node.
    pub nodes: Vec<Option<u32>>,
}

/// A control plane with `--replicas` and one-core nodes on fixed addresses.
pub struct FailoverCluster {
    pub control: ControlPlane,
    pub nodes: Vec<Node>,
    pub replicas: usize,
    _scratch: Scratch,
}

impl FailoverCluster {
    /// `engram-control --replicas REPLICAS --liveness-timeout-ms LIVENESS` and `nodes`
    /// nodes. Load rebalancing is off: the failures under test are deaths, and a move
    /// the test did not ask for would only blur which one caused what.
    pub fn start(name: &str, nodes: usize, replicas: usize, liveness_timeout_ms: u64) -> FailoverCluster {
        let groups = ProcessGroups {
            control: None,
            nodes: vec![None; nodes],
        };
        Self::start_in_groups(name, &groups, replicas, liveness_timeout_ms)
    }

    /// [`FailoverCluster::start`] with a node per entry of `groups.nodes`, each process
    /// running under its group when it has one (see [`ServerOptions::group`]).
    pub fn start_in_groups(
        name: &str,
        groups: &ProcessGroups,
        replicas: usize,
        liveness_timeout_ms: u64,
    ) -> FailoverCluster {
        let scratch = Scratch::new(name);
        let control = ControlPlane::start_in_group(
            next_loopback(),
            scratch.path().join("control"),
            &[
                "--replicas",
                &replicas.to_string(),
                "--liveness-timeout-ms",
                &liveness_timeout_ms.to_string(),
                "--no-load-rebalance",
            ],
            groups.control,
        );
        let nodes = groups.nodes.iter().map(|&group| Node::start(&control, group)).collect();
        FailoverCluster {
            control,
            nodes,
            replicas,
            _scratch: scratch,
        }
    }

    /// Starts one more node, which joins empty; returns its id.
    pub fn add_node(&mut self) -> u64 {
        let node = Node::start(&self.control, None);
        let node_id = node.node_id;
        self.nodes.push(node);
        node_id
    }

    /// Waits for every node, spreads the slots (the first node took them all) and waits
    /// until every slot has its backups; returns that status.
    pub async fn spread(&self) -> ClusterStatus {
        wait_for_members(&self.control, self.nodes.len(), MEMBERSHIP_LIMIT).await;
        cluster_cli(&self.control, &["rebalance"]).await;
        wait_for_redundancy(&self.control, self.replicas, REDUNDANCY_LIMIT).await
    }

    /// A client seeded at the first running node, whose calls outlast a failover.
    pub async fn client(&self) -> Client {
        let seed = self
            .nodes
            .iter()
            .find_map(|node| node.running.as_ref())
            .expect("a running node");
        seed.client_with_timeout(CALL_TIMEOUT).await
    }

    pub fn index_of(&self, node_id: u64) -> usize {
        self.nodes
            .iter()
            .position(|node| node.node_id == node_id)
            .unwrap_or_else(|| panic!("node {node_id} is not one of the test's"))
    }

    /// SIGKILL of node `index`: a crash, no chance to say anything.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let mut server = node.running.take().expect("the node runs");
        assert!(
            server.kill_now().is_some(),
            "node {} was running until the SIGKILL",
            node.node_id
        );
        node.killed.push(server);
    }

    /// Starts node `index` again on its address (empty memory, a new boot id); blocks
    /// (off the async workers) until it is ready.
    pub fn restart(&mut self, index: usize) -> &EngramServer {
        let node = &mut self.nodes[index];
        assert!(node.running.is_none(), "node {} was killed first", node.node_id);
        let options = node.options.clone();
        let server = tokio::task::block_in_place(|| EngramServer::start_on_same_address(options, RESTART_LIMIT));
        assert_eq!(
            server.node_id(),
            node.node_id,
            "the node restarted on its address under another id"
        );
        node.running.insert(server)
    }
}

impl Drop for FailoverCluster {
    /// On a failure, what the control plane and every process of every node logged last.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "--- engram-control stderr (tail) ---\n{}",
            tail(&self.control.stderr_text(), 120)
        );
        for node in &self.nodes {
            let last_killed = node.killed.last().into_iter().map(|server| ("killed", server));
            for (what, server) in last_killed.chain(node.running.iter().map(|server| ("running", server))) {
                eprintln!(
                    "--- engramd node {} ({what} process) stderr (tail) ---\n{}",
                    node.node_id,
                    tail(&server.stderr_text(), 40)
                );
            }
        }
    }
}

/// Bound on waiting for every slot to be backed up again: the control plane declares
/// the dead node dead (or sees its restart), promotes, orders fills, and names a new
/// backup once its primary reports it in sync; a bound, not a requirement on speed.
pub const REDUNDANCY_LIMIT: Duration = Duration::from_secs(60);

/// Why `status` does not show every slot served and backed up `replicas` times by live
/// processes (the shards' incarnations in the map are those the live members run now),
/// or `None` when it does.
pub fn redundancy_gap(status: &ClusterStatus, replicas: usize) -> Option<String> {
    let map = &status.map;
    let live: BTreeMap<u64, u64> = status
        .nodes
        .iter()
        .filter(|node| node.alive)
        .map(|node| (node.node_id, node.incarnation))
        .collect();
    let current = |index: u32| {
        let shard = &map.shards[index as usize];
        live.get(&shard.node_id) == Some(&shard.incarnation)
    };
    let owners = map.owner_table();
    let backups = map.backup_table();
    let mut short = Vec::new();
    for slot in 0..SLOT_COUNT {
        let owner = owners[slot as usize];
        if owner == LOST_SHARD_INDEX {
            return Some(format!("slot {slot} is lost (map epoch {})", map.epoch));
        }
        if !current(owner) {
            return Some(format!(
                "slot {slot} is owned by shard {owner} ({:?}), not a live process (live: {live:?}, map epoch {})",
                map.shards[owner as usize], map.epoch
            ));
        }
        let backed = backups[slot as usize].iter().filter(|index| current(**index)).count();
        if backed < replicas {
            short.push(slot);
        }
    }
    (!short.is_empty()).then(|| {
        format!(
            "{} slots have fewer than {replicas} backups on live processes ({}; map epoch {})",
            short.len(),
            engram_proto::format_slot_ranges(&short),
            map.epoch
        )
    })
}

/// Waits until every slot is served and backed up `replicas` times by live processes;
/// fails the test, with the last gap seen, when that takes longer than `limit`.
pub async fn wait_for_redundancy(control: &ControlPlane, replicas: usize, limit: Duration) -> ClusterStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = control.status().await;
        let Some(gap) = redundancy_gap(&status, replicas) else {
            return status;
        };
        assert!(
            Instant::now() < deadline,
            "not every slot was backed up {replicas} times within {limit:?}: {gap}\nnodes: {:?}",
            status.nodes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the control plane's status until `done` holds for it; fails the test, naming
/// `what`, after `limit`.
pub async fn wait_for_status(
    control: &ControlPlane,
    what: &str,
    limit: Duration,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = control.status().await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; nodes {:?}, map epoch {}",
            status.nodes,
            status.map.epoch
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The incarnation `status` shows for `node_id`, if it lists the node.
pub fn incarnation_of(status: &ClusterStatus, node_id: u64) -> Option<u64> {
    status
        .nodes
        .iter()
        .find(|node| node.node_id == node_id)
        .map(|node| node.incarnation)
}

/// Waits until `node_id` is alive as another process than `incarnation` (a restart the
/// control plane has seen).
pub async fn wait_for_new_incarnation(control: &ControlPlane, node_id: u64, incarnation: Option<u64>) {
    wait_for_status(
        control,
        "the restarted node is a live new incarnation",
        REDUNDANCY_LIMIT,
        |status| {
            status
                .nodes
                .iter()
                .any(|node| node.node_id == node_id && node.alive && Some(node.incarnation) != incarnation)
        },
    )
    .await;
}

/// Slots the map gives to `node_id`'s shards.
pub fn owned_slots(map: &SlotMap, node_id: u64) -> Vec<u32> {
    crate::victim::slots_of(map, node_id).into_iter().collect()
}

/// The lost slots `status` reports (in the map, or counted on a member), described;
/// `None` when there are none.
pub fn lost_in(status: &ClusterStatus) -> Option<String> {
    let lost = status.map.lost_slots();
    let counted: Vec<(u64, u32)> = status
        .nodes
        .iter()
        .filter(|node| node.slots_lost > 0)
        .map(|node| (node.node_id, node.slots_lost))
        .collect();
    (!lost.is_empty() || !counted.is_empty()).then(|| {
        format!(
            "map epoch {}: lost slots {:?}, slots_lost of (node, count) {counted:?}",
            status.map.epoch,
            engram_proto::format_slot_ranges(&lost)
        )
    })
}

/// What the [`StatusWatch`] saw.
#[derive(Debug, Default)]
pub struct WatchReport {
    pub polls: u64,
    /// Polls the control plane did not answer (the test only counts them).
    pub unanswered: u64,
    /// Polls that reported lost slots.
    pub lost_polls: u64,
    /// The first [`WATCH_REPORTS_KEPT`] of them, described.
    pub lost: Vec<String>,
}

impl WatchReport {
    /// Fails the test if any poll reported a lost slot.
    pub fn assert_nothing_lost(&self) {
        assert!(
            self.lost.is_empty(),
            "the control plane reported lost slots in {} of {} polls:\n{}",
            self.lost_polls,
            self.polls,
            self.lost.join("\n")
        );
    }
}

/// Asks the control plane for its status every [`WATCH_INTERVAL`] until stopped, and
/// records every report of a lost slot: with a backup for every slot and one death at
/// a time, none may ever be lost.
pub struct StatusWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<WatchReport>,
}

impl StatusWatch {
    pub fn start(control: &ControlPlane) -> StatusWatch {
        let admin = control.admin();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = WatchReport::default();
            while !stopped.load(Relaxed) {
                report.polls += 1;
                match admin.status().await {
                    Ok(status) => {
                        if let Some(lost) = lost_in(&status) {
                            report.lost_polls += 1;
                            if report.lost.len() < WATCH_REPORTS_KEPT {
                                eprintln!("status watch: {lost}");
                                report.lost.push(lost);
                            }
                        }
                    }
                    Err(_) => report.unanswered += 1,
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
            report
        });
        StatusWatch { stop, task }
    }

    pub async fn stop(self) -> WatchReport {
        self.stop.store(true, Relaxed);
        self.task.await.expect("status watch task")
    }
}

/// Producers pushing to the queues of a [`QueueLoad`], and consumers popping from them.
const PRODUCERS: usize = 2;
const CONSUMERS: usize = 2;
/// A consumer's wait at an empty queue: pops park at the server, so a failover meets
/// parked pops as well as pushes.
const POP_WAIT: Duration = Duration::from_secs(1);
/// A producer's pause between pushes: the queues are one load among several on a
/// 2-core machine, and an unthrottled producer would only grow them.
const PUSH_PAUSE: Duration = Duration::from_millis(5);

/// One pop: the consumer, the queue (its index), the item.
type Pop = (usize, usize, String);

#[derive(Default)]
struct QueueRecord {
    /// Items whose push was acknowledged.
    acknowledged: Mutex<BTreeSet<String>>,
    /// Items whose push failed: in the queue or not, nobody knows.
    unknown: Mutex<BTreeSet<String>>,
    popped: Mutex<Vec<Pop>>,
    failures: AtomicU64,
}

/// Producers push unique items (`P-N`: producer P's Nth push, to queue N mod queues)
/// and consumers pop them, everything recorded. What must hold afterwards: every
/// acknowledged push was popped or is still queued, no item came out twice, none came
/// out that nobody pushed, and each consumer saw one producer's items of one queue in
/// the order they were pushed.
pub struct QueueLoad {
    queues: Vec<String>,
    stop: Arc<AtomicBool>,
    record: Arc<QueueRecord>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl QueueLoad {
    pub fn start(client: &Client, queues: Vec<String>) -> QueueLoad {
        assert!(!queues.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(QueueRecord::default());
        let mut tasks = Vec::new();
        for producer in 0..PRODUCERS {
            let (client, queues, stop, record) = (client.clone(), queues.clone(), stop.clone(), record.clone());
            tasks.push(tokio::spawn(async move {
                let mut pushed = 0usize;
                while !stop.load(Relaxed) {
                    let item = format!("{producer}-{pushed}");
                    let queue = &queues[pushed % queues.len()];
                    pushed += 1;
                    match client.queue(queue.clone()).push_back(item.clone()).await {
                        Ok(_) => lock(&record.acknowledged).insert(item),
                        Err(error) => {
                            record.failures.fetch_add(1, Relaxed);
                            eprintln!("push of {item} to {queue} failed: {error}");
                            lock(&record.unknown).insert(item)
                        }
                    };
                    tokio::time::sleep(PUSH_PAUSE).await;
                }
            }));
        }
        for consumer in 0..CONSUMERS {
            let (client, queues, stop, record) = (client.clone(), queues.clone(), stop.clone(), record.clone());
            tasks.push(tokio::spawn(async move {
                let mut next = consumer;
                while !stop.load(Relaxed) {
                    let index = next % queues.len();
                    next += 1;
                    match client.queue(queues[index].clone()).pop_front(Some(POP_WAIT)).await {
                        Ok(Some(item)) => {
                            let item = String::from_utf8_lossy(&item).into_owned();
                            lock(&record.popped).push((consumer, index, item));
                        }
                        Ok(None) => {}
                        Err(error) => {
                            record.failures.fetch_add(1, Relaxed);
                            eprintln!("pop from {} failed: {error}", queues[index]);
                        }
                    }
                }
            }));
        }
        QueueLoad {
            queues,
            stop,
            record,
            tasks,
        }
    }

    /// Pops so far.
    pub fn pops(&self) -> usize {
        lock(&self.record.popped).len()
    }

    /// Waits until `pops` more items than now were popped, so a test knows the queues
    /// are in use before it disturbs the cluster.
    pub async fn wait_for_pops(&self, pops: usize) {
        let target = self.pops() + pops;
        let deadline = Instant::now() + crate::STEP_TIMEOUT;
        while self.pops() < target {
            assert!(
                Instant::now() < deadline,
                "the queue load did not pop {pops} items within {:?} ({} failures)",
                crate::STEP_TIMEOUT,
                self.record.failures.load(Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the producers and consumers, takes what is left in the queues, and checks
    /// every item against the record.
    pub async fn stop_and_check(self, client: &Client) {
        self.stop.store(true, Relaxed);
        for task in self.tasks {
            task.await.expect("queue task");
        }
        let mut left = Vec::new();
        for (index, queue) in self.queues.iter().enumerate() {
            let queue = client.queue(queue.clone());
            while let Some(item) = queue.pop_front(None).await.expect("pop what is left") {
                left.push((usize::MAX, index, String::from_utf8_lossy(&item).into_owned()));
            }
        }
        let acknowledged = lock(&self.record.acknowledged).clone();
        let unknown = lock(&self.record.unknown).clone();
        let popped = lock(&self.record.popped).clone();
        let failures = self.record.failures.load(Relaxed);
        eprintln!(
            "queues: {} pushes acknowledged, {} unknown, {} popped, {} left, {failures} failures",
            acknowledged.len(),
            unknown.len(),
            popped.len(),
            left.len()
        );
        let violations = queue_violations(&acknowledged, &unknown, &popped, &left);
        assert!(
            violations.is_empty(),
            "the queues lost, doubled, invented or reordered items ({failures} operations failed):\n{}",
            violations.join("\n")
        );
        assert_eq!(failures, 0, "queue operations failed during the run (see stderr)");
        assert!(
            !acknowledged.is_empty() && !popped.is_empty(),
            "the queue load barely ran"
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Most violations of one kind listed word for word.
const VIOLATIONS_LISTED_MAX: usize = 20;

/// What is wrong with the items that came out (`popped` during the run, `left` at the
/// end), given the pushes: lost, doubled, invented or reordered ones.
fn queue_violations(
    acknowledged: &BTreeSet<String>,
    unknown: &BTreeSet<String>,
    popped: &[Pop],
    left: &[Pop],
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, item) in popped.iter().chain(left) {
        *seen.entry(item.as_str()).or_default() += 1;
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|item| !seen.contains_key(item.as_str()))
        .collect();
    if !lost.is_empty() {
        violations.push(format!(
            "{} acknowledged pushes were neither popped nor left in a queue: {:?}",
            lost.len(),
            &lost[..lost.len().min(VIOLATIONS_LISTED_MAX)]
        ));
    }
    let doubled: Vec<(&&str, &usize)> = seen.iter().filter(|(_, count)| **count > 1).collect();
    if !doubled.is_empty() {
        violations.push(format!(
            "{} items came out more than once (item, times): {:?}",
            doubled.len(),
            &doubled[..doubled.len().min(VIOLATIONS_LISTED_MAX)]
        ));
    }
    let invented: Vec<&&str> = seen
        .keys()
        .filter(|item| !acknowledged.contains(**item) && !unknown.contains(**item))
        .collect();
    if !invented.is_empty() {
        violations.push(format!("items nobody pushed came out: {invented:?}"));
    }
    violations.extend(out_of_order(popped));
    violations
}

/// Each consumer's pops of one queue, per producer, must follow the push order: a
/// producer pushes to a queue one item after the other.
fn out_of_order(popped: &[Pop]) -> Vec<String> {
    let mut last: BTreeMap<(usize, usize, &str), u64> = BTreeMap::new();
    let mut violations = Vec::new();
    for (consumer, queue, item) in popped {
        let Some((producer, number)) = item.split_once('-') else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        if let Some(previous) = last.insert((*consumer, *queue, producer), number) {
            if number <= previous && violations.len() < VIOLATIONS_LISTED_MAX {
                violations.push(format!(
                    "consumer {consumer} popped {item} from queue {queue} after {producer}-{previous}"
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn pops(names: &[&str]) -> Vec<Pop> {
        names.iter().map(|name| (0, 0, name.to_string())).collect()
    }

    #[test]
    fn whole_queues_in_order_pass() {
        let violations = queue_violations(
            &items(&["0-0", "0-1", "1-0"]),
            &items(&["0-2"]),
            &pops(&["0-0", "1-0"]),
            &pops(&["0-1"]),
        );
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn lost_doubled_invented_and_reordered_items_are_named() {
        let acknowledged = items(&["0-0", "0-1", "0-2"]);
        let violations = queue_violations(
            &acknowledged,
            &BTreeSet::new(),
            &pops(&["0-1", "0-0", "0-1", "9-9"]),
            &[],
        );
        let text = violations.join("\n");
        assert!(text.contains("neither popped") && text.contains("0-2"), "{text}");
        assert!(text.contains("more than once") && text.contains("0-1"), "{text}");
        assert!(text.contains("nobody pushed") && text.contains("9-9"), "{text}");
        assert!(text.contains("popped 0-0 from queue 0 after 0-1"), "{text}");
    }
}
