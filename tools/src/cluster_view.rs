//! `engram cluster …`: talks to engram-control, and shows the cluster as a table or JSON.

use std::io::Write;
use std::time::{Duration, Instant};

use engram_control::link::call_once;
use engram_proto::{ClusterStatus, Command, Response};
use serde::Serialize;

use crate::cli::ClusterCommand;
use crate::failure::Failure;

/// How often `rebalance`/`drain` look at the control plane while they wait.
const WAIT_POLL_MS: u64 = 200;
/// Longest `rebalance`/`drain` wait for the moves to finish.
const WAIT_MS_MAX: u64 = 600_000;

pub async fn run(
    command: ClusterCommand,
    credentials: &[u8],
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status { control, json } => {
            let status = status(&control, credentials, timeout).await?;
            let view = ClusterView::from(&status);
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                out.write_all(view.to_table().as_bytes())?;
            }
        }
        ClusterCommand::Rebalance { control, no_wait } => {
            let before = status(&control, credentials, timeout).await?.slots_moved_total;
            let started = call(&control, credentials, Command::ClusterRebalance, timeout).await?;
            report_started(&control, credentials, timeout, (before, started), no_wait, out).await?;
        }
        ClusterCommand::Drain { node, control, no_wait } => {
            let before = status(&control, credentials, timeout).await?.slots_moved_total;
            let started = call(&control, credentials, Command::ClusterDrain { node_id: node }, timeout).await?;
            report_started(&control, credentials, timeout, (before, started), no_wait, out).await?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn call(control: &str, credentials: &[u8], command: Command, timeout: Duration) -> Result<Response, Failure> {
    match call_once(control, credentials, command, timeout).await {
        Ok(Response::Error(reply)) => Err(Failure::Usage(format!("engram-control: {}", reply.message))),
        Ok(response) => Ok(response),
        Err(error) => Err(Failure::Usage(format!("cannot reach engram-control: {error}"))),
    }
}

async fn status(control: &str, credentials: &[u8], timeout: Duration) -> Result<ClusterStatus, Failure> {
    match call(control, credentials, Command::ClusterStatus, timeout).await? {
        Response::ClusterStatus(status) => Ok(*status),
        other => Err(Failure::Usage(format!("engram-control answered {}", other.name()))),
    }
}

async fn report_started(
    control: &str,
    credentials: &[u8],
    timeout: Duration,
    (before, started): (u64, Response),
    no_wait: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let Response::RebalanceStarted { slots_to_move } = started else {
        return Err(Failure::Usage(format!("engram-control answered {}", started.name())));
    };
    writeln!(out, "moving {slots_to_move} slots")?;
    if no_wait || slots_to_move == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
        let now = status(control, credentials, timeout).await?;
        let moved = now.slots_moved_total.saturating_sub(before);
        if now.migrations.is_empty() && !now.last_error.is_empty() {
            return Err(Failure::Usage(format!("rebalance stopped: {}", now.last_error)));
        }
        if now.migrations.is_empty() && moved >= slots_to_move {
            writeln!(out, "done: epoch {}", now.map.epoch)?;
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::Usage(format!(
                "rebalance still running after {WAIT_MS_MAX} ms (wait_ms_max)"
            )));
        }
    }
}

#[derive(Serialize)]
pub struct ClusterView {
    pub epoch: u64,
    pub nodes: Vec<NodeView>,
    pub migrations: Vec<MigrationView>,
    pub migrations_completed: u64,
    pub slots_moved_total: u64,
    pub bytes_moved_total: u64,
    pub migration_milliseconds_total: u64,
    pub last_error: String,
}

#[derive(Serialize)]
pub struct NodeView {
    pub node_id: u64,
    pub address: String,
    pub alive: bool,
    pub draining: bool,
    pub map_epoch: u64,
    pub shards: Vec<ShardView>,
}

#[derive(Serialize)]
pub struct ShardView {
    pub shard_id: u16,
    pub address: String,
    pub slots: u32,
    pub keys: u64,
    pub memory_used_bytes: u64,
    pub operations_total: u64,
    pub operations_per_second: u64,
}

#[derive(Serialize)]
pub struct MigrationView {
    pub migration_id: u64,
    pub source: String,
    pub target: String,
    pub slots: u32,
}

impl From<&ClusterStatus> for ClusterView {
    fn from(status: &ClusterStatus) -> Self {
        ClusterView {
            epoch: status.map.epoch,
            nodes: status
                .nodes
                .iter()
                .map(|node| NodeView {
                    node_id: node.node_id,
                    address: node.front_address.clone(),
                    alive: node.alive,
                    draining: node.draining,
                    map_epoch: node.map_epoch,
                    shards: node
                        .shards
                        .iter()
                        .map(|shard| ShardView {
                            shard_id: shard.shard_id,
                            address: shard.address.clone(),
                            slots: shard.slots,
                            keys: shard.keys,
                            memory_used_bytes: shard.memory_used_bytes,
                            operations_total: shard.operations_total,
                            operations_per_second: shard.operations_per_second,
                        })
                        .collect(),
                })
                .collect(),
            migrations: status
                .migrations
                .iter()
                .map(|migration| MigrationView {
                    migration_id: migration.migration_id,
                    source: migration.source.clone(),
                    target: migration.target.clone(),
                    slots: migration.slots,
                })
                .collect(),
            migrations_completed: status.migrations_completed,
            slots_moved_total: status.slots_moved_total,
            bytes_moved_total: status.bytes_moved_total,
            migration_milliseconds_total: status.migration_milliseconds_total,
            last_error: status.last_error.clone(),
        }
    }
}

impl ClusterView {
    pub fn to_table(&self) -> String {
        let mut text = format!(
            "map epoch {}   migrations completed {}   slots moved {}\n",
            self.epoch, self.migrations_completed, self.slots_moved_total
        );
        text.push_str(&format!(
            "{:>6} {:<22} {:<6} {:>5} {:<22} {:>6} {:>10} {:>12} {:>10}\n",
            "node", "address", "state", "shard", "shard address", "slots", "keys", "memory", "ops/s"
        ));
        for node in &self.nodes {
            let state = match (node.alive, node.draining) {
                (false, _) => "dead",
                (true, true) => "drain",
                (true, false) => "up",
            };
            for shard in &node.shards {
                text.push_str(&format!(
                    "{:>6} {:<22} {:<6} {:>5} {:<22} {:>6} {:>10} {:>12} {:>10}\n",
                    node.node_id,
                    node.address,
                    state,
                    shard.shard_id,
                    shard.address,
                    shard.slots,
                    shard.keys,
                    shard.memory_used_bytes,
                    shard.operations_per_second
                ));
            }
        }
        for migration in &self.migrations {
            text.push_str(&format!(
                "migrating: #{} {} slots {} -> {}\n",
                migration.migration_id, migration.slots, migration.source, migration.target
            ));
        }
        if !self.last_error.is_empty() {
            text.push_str(&format!("last error: {}\n", self.last_error));
        }
        text
    }
}
