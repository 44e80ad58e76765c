//! Helpers of the elastic-cluster tests (`tests/tests/cluster.rs`, `rebalance.rs`,
//! `control_plane_restart.rs`): clients whose call timeout outlasts a frozen slot, the
//! wait for the membership, and bulky keys whose slots move in a rebalance's first step.

use std::time::Duration;

use engram_client::Client;
use engram_proto::limits::SLOT_COUNT;

use crate::cluster::{self, MEMBERSHIP_LIMIT};
use crate::control::ControlPlane;
use crate::{total_keys, EngramServer};

/// Long enough that no call gives up while a slot is frozen or a map is catching up:
/// every operation must succeed for the exact count to be checkable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn connect(node: &EngramServer) -> Client {
    node.client_with_timeout(CALL_TIMEOUT).await
}

pub async fn wait_for_members(control: &ControlPlane, alive: usize) {
    cluster::wait_for_members(control, alive, MEMBERSHIP_LIMIT).await
}

/// Waits until `node` holds at least one key (a migration's first batch has landed).
/// It asks the node's metrics, not its shard: the tests' one-core nodes pin their shards
/// to the same core, so a target's shard importing from its source may not take a new
/// connection before the whole step is in, and the test could not stop it midway.
pub async fn wait_for_first_batch(node: &EngramServer) {
    let metrics = node.metrics_address().expect("cluster nodes serve metrics");
    let mut polls = 0;
    while metrics_keys(metrics).await == 0 {
        polls += 1;
        assert!(polls < 20_000, "the target never received a batch");
    }
}

/// Keys held by all of a node's shards, as its metrics at `address` report them (each
/// shard publishes its figures after every batch of requests it answers).
async fn metrics_keys(address: std::net::SocketAddr) -> u64 {
    let (_, _, body) = tokio::task::spawn_blocking(move || crate::http_get(address, "/metrics", crate::STEP_TIMEOUT))
        .await
        .expect("metrics request");
    body.lines()
        .filter(|line| line.starts_with("engram_keys{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// How many of `keys` the map gives to `node_id`.
pub fn keys_owned_by<'k>(map: &engram_proto::SlotMap, keys: impl Iterator<Item = &'k String>, node_id: u64) -> u64 {
    let hasher = engram_proto::SlotHasher::new(b"default");
    let owners = map.owner_table();
    keys.filter(|key| map.shards[owners[hasher.slot(key.as_bytes()) as usize] as usize].node_id == node_id)
        .count() as u64
}

/// Keys whose slots are the first step of a rebalance from one node onto a second:
/// the planner keeps each giver's lowest slots and hands out the rest in slot order, in
/// steps of `MIGRATION_SLOTS_PER_STEP`.
pub fn keys_in_first_step(count: usize) -> Vec<String> {
    let first_step = SLOT_COUNT / 2..SLOT_COUNT / 2 + engram_control::service::MIGRATION_SLOTS_PER_STEP as u32;
    let hasher = engram_proto::SlotHasher::new(b"default");
    (0..)
        .map(|n| format!("bulky-{n}"))
        .filter(|key| first_step.contains(&hasher.slot(key.as_bytes())))
        .take(count)
        .collect()
}

/// Writes `BULKY_KEYS` bulky values whose slots move in a rebalance's first step, so
/// that step takes long enough to be interrupted; returns their keys.
pub async fn seed_first_step(client: &Client) -> Vec<String> {
    let keys = keys_in_first_step(BULKY_KEYS);
    for key in &keys {
        client.bytes(key.clone()).set(bulky_value(key)).await.expect("seed");
    }
    keys
}

pub fn bulky_value(key: &str) -> Vec<u8> {
    let mut value = key.as_bytes().repeat(BULKY_VALUE_BYTES / key.len() + 1);
    value.truncate(BULKY_VALUE_BYTES);
    value
}

/// Large enough that the first migration step takes many batches, so the target can be
/// stopped in the middle of it.
pub const BULKY_VALUE_BYTES: usize = 256 * 1024;
pub const BULKY_KEYS: usize = 160;

pub async fn keys_held(node: &EngramServer) -> u64 {
    total_keys(&node.front_only_client(Duration::from_secs(10)).await).await
}

/// One key per slot, in slot order (namespace "default").
pub fn key_per_slot() -> Vec<String> {
    let hasher = engram_proto::SlotHasher::new(b"default");
    let mut keys: Vec<Option<String>> = vec![None; SLOT_COUNT as usize];
    let mut missing = SLOT_COUNT as usize;
    for n in 0.. {
        let key = format!("slot-probe-{n}");
        let slot = &mut keys[hasher.slot(key.as_bytes()) as usize];
        if slot.is_none() {
            *slot = Some(key);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    keys.into_iter().flatten().collect()
}

/// Reads a counter at each of `keys` at once, each read bounded by `timeout`; returns
/// the indexes of the keys that did not answer (frozen by a migration nobody settled,
/// lost, unreachable), with the first error.
pub async fn slots_not_answering(client: &Client, keys: &[String], timeout: Duration) -> (Vec<u32>, Option<String>) {
    let commands = keys
        .iter()
        .map(|key| {
            let get = engram_proto::CounterCommand::Get {
                key: key.as_bytes().to_vec(),
            };
            (engram_proto::Command::from(get), false)
        })
        .collect();
    let mut first = None;
    let silent = client
        .batch_with(commands, Some(timeout))
        .await
        .iter()
        .enumerate()
        .filter_map(|(index, result)| {
            let error = result.as_ref().err()?;
            first.get_or_insert_with(|| error.to_string());
            Some(index as u32)
        })
        .collect();
    (silent, first)
}
