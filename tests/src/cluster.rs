//! Helpers for tests of a cluster: one-core `engramd` nodes joined to a [`ControlPlane`],
//! a bounded wait for its membership, `engram cluster` that must succeed, and where a
//! node's slots are in what the control plane reports.

use std::time::{Duration, Instant};

use engram_proto::{ClusterStatus, SlotMap};

use crate::control::ControlPlane;
use crate::server::{free_port, next_loopback, EngramServer, ServerOptions};

/// How long a cluster may take to show the members a test started: 200 polls 100 ms
/// apart, the bound the cluster tests always had.
pub const MEMBERSHIP_LIMIT: Duration = Duration::from_secs(20);

/// A one-core node joined to `control` (one core each keeps a few nodes within the
/// test machine's cores), serving metrics: their responder is a thread of its own, so a
/// test sees the node's figures even while its shard is busy.
pub fn start_node(control: &ControlPlane) -> EngramServer {
    start_node_at(control.address())
}

/// As [`start_node`], given `--control` as it is: one address or several, comma-separated.
pub fn start_node_at(control: &str) -> EngramServer {
    EngramServer::start(node_options(control))
}

/// As [`start_node`], with the Redis-protocol door open ([`EngramServer::resp`]).
pub fn start_node_with_resp(control: &ControlPlane) -> EngramServer {
    EngramServer::start(node_options(control.address()).resp())
}

fn node_options(control: &str) -> ServerOptions {
    let bind = next_loopback();
    ServerOptions::default()
        .cores(1)
        .bind(bind)
        .metrics_port(free_port(bind))
        .control(control)
}

/// Waits until the control plane counts `alive` live members; fails the test, with the
/// members it last saw, when that takes longer than `limit`.
/// Polls `done` every 200 ms until it holds; fails the test naming `what` if it does
/// not within `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_for_members(control: &ControlPlane, alive: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let status = control.status().await;
        if status.nodes.iter().filter(|node| node.alive).count() == alive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never showed {alive} live nodes: {:?}",
            status.nodes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` routes with a map of at least `epoch`, so that a client connecting
/// to it starts from that map (and never sends to a paused node an older one names);
/// fails the test after `limit`.
pub async fn wait_for_node_epoch(node: &EngramServer, epoch: u64, limit: Duration) {
    let front = node.front();
    let deadline = Instant::now() + limit;
    loop {
        let map = tokio::task::spawn_blocking(move || crate::fetch_slot_map(front))
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

/// Runs `engram cluster <arguments>` off the async threads and insists it succeeds;
/// returns its stdout.
pub async fn cluster_cli(control: &ControlPlane, arguments: &[&str]) -> String {
    let output = control.cli(arguments).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "engram cluster {arguments:?} exited {:?}: {stdout}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// How many slots member `node_id` owns, by its entry in `status`.
pub fn node_slot_count(status: &ClusterStatus, node_id: u64) -> u32 {
    status
        .nodes
        .iter()
        .find(|node| node.node_id == node_id)
        .unwrap_or_else(|| panic!("node {node_id} is not a member: {:?}", status.nodes))
        .shards
        .iter()
        .map(|shard| shard.slots)
        .sum()
}

/// Index in `map` of the first shard of node `node_id`.
pub fn shard_of_node(map: &SlotMap, node_id: u64) -> usize {
    map.shards
        .iter()
        .position(|shard| shard.node_id == node_id)
        .unwrap_or_else(|| panic!("node {node_id} is not in the map"))
}

/// The maps `node` installed, in order, as (epoch, digest), from its log: a node logs
/// `installed map epoch=E digest=D` for its first map and every newer one.
pub fn installed_maps(node: &EngramServer) -> Vec<(u64, String)> {
    node.stderr_text()
        .lines()
        .filter_map(|line| {
            let (_, fields) = line.split_once("installed map ")?;
            let field = |name: &str| {
                fields
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
            };
            Some((field("epoch")?.parse().ok()?, field("digest")?.to_string()))
        })
        .collect()
}

/// Checks that each of `nodes` installed at most one map per epoch, epochs only growing,
/// and that every node that installed an epoch installed the same map (one digest per
/// epoch across the cluster); returns the digest of each epoch any node installed.
pub fn one_map_per_epoch(nodes: &[&EngramServer]) -> std::collections::BTreeMap<u64, String> {
    let mut digests = std::collections::BTreeMap::<u64, String>::new();
    for node in nodes {
        let installed = installed_maps(node);
        assert!(!installed.is_empty(), "node {} logged no installed map", node.node_id());
        if let Some(pair) = installed.windows(2).find(|pair| pair[1].0 <= pair[0].0) {
            panic!(
                "node {} installed epoch {} after epoch {}: {installed:?}",
                node.node_id(),
                pair[1].0,
                pair[0].0
            );
        }
        for (epoch, digest) in installed {
            let first = digests.entry(epoch).or_insert_with(|| digest.clone());
            assert_eq!(
                *first,
                digest,
                "two maps of epoch {epoch} were installed (node {} has {digest})",
                node.node_id()
            );
        }
    }
    digests
}
