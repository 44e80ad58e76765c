//! Figures each shard publishes for the others to read (INFO, metrics), and the node's
//! metric families. A shard writes only its own slot with relaxed stores; readers
//! accept figures a batch old.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use engram_proto::{NodeInfo, ShardInfo};

use crate::metrics::{NodeMetrics, ShardGauges};

#[derive(Default)]
pub struct ShardStats {
    pub keys: AtomicU64,
    pub memory_used_bytes: AtomicU64,
    pub memory_limit_bytes: AtomicU64,
    pub connections: AtomicU64,
    pub operations_total: AtomicU64,
    pub parked_requests: AtomicU64,
    /// Answers held until backups apply what decided them.
    pub held_answers: AtomicU64,
    /// Backup shards this shard streams to.
    pub replica_streams: AtomicU64,
    /// Batches sent to its slowest backup and not yet applied there.
    pub replication_lag_batches: AtomicU64,
    /// Set when the shard takes on a slot map, not per publish (counting owners is a
    /// pass over every slot); see [`ShardStats::publish_slots_owned`].
    pub slots_owned: AtomicU64,
    /// Migrations the shard holds open, for the heartbeat (which lets the control plane
    /// settle those it no longer runs). Written only when a migration opens or closes.
    pub migrations: std::sync::Mutex<Vec<u64>>,
    /// The streams to backups that hold everything of their slots, for the heartbeat
    /// (which lets the control plane name those backups in the map). Written when a
    /// stream gets in sync or the shard's streams change.
    pub in_sync: std::sync::Mutex<Vec<engram_proto::InSyncReport>>,
}

impl ShardStats {
    /// For the shard, whenever it takes on a slot map: the slots it now serves.
    pub fn publish_slots_owned(&self, slots: usize) {
        self.slots_owned.store(slots as u64, Relaxed);
    }

    /// The figures a metrics scrape shows as gauges.
    pub fn gauges(&self) -> ShardGauges {
        ShardGauges {
            memory_used_bytes: self.memory_used_bytes.load(Relaxed),
            memory_limit_bytes: self.memory_limit_bytes.load(Relaxed),
            keys: self.keys.load(Relaxed),
            connections: self.connections.load(Relaxed),
            slots_owned: self.slots_owned.load(Relaxed),
            parked_requests: self.parked_requests.load(Relaxed),
            held_answers: self.held_answers.load(Relaxed),
            replica_streams: self.replica_streams.load(Relaxed),
            replication_lag_batches: self.replication_lag_batches.load(Relaxed),
        }
    }
}

pub struct NodeStats {
    pub node_id: u64,
    pub started: Instant,
    pub shards: Vec<ShardStats>,
    pub shard_addresses: Vec<String>,
    pub metrics: NodeMetrics,
}

impl NodeStats {
    /// Figures of a node starting now, with a shard per address in `shard_addresses`.
    pub fn new(node_id: u64, shard_addresses: Vec<String>) -> NodeStats {
        NodeStats {
            node_id,
            started: Instant::now(),
            shards: shard_addresses.iter().map(|_| ShardStats::default()).collect(),
            shard_addresses,
            metrics: NodeMetrics::new(),
        }
    }

    /// The metrics exposition, gauges as the shards last published them.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.metrics.render(self.shards.iter().map(ShardStats::gauges))
    }

    pub fn info(&self, map_epoch: u64) -> NodeInfo {
        let shards: Vec<ShardInfo> = self
            .shards
            .iter()
            .zip(&self.shard_addresses)
            .enumerate()
            .map(|(shard_id, (stats, address))| ShardInfo {
                shard_id: shard_id as u16,
                address: address.clone(),
                keys: stats.keys.load(Relaxed),
                memory_used_bytes: stats.memory_used_bytes.load(Relaxed),
                // 0 reads as unlimited: u64::MAX does not survive JSON readers that use
                // floating-point numbers.
                memory_limit_bytes: match stats.memory_limit_bytes.load(Relaxed) {
                    u64::MAX => 0,
                    limit => limit,
                },
                connections: stats.connections.load(Relaxed),
                operations_total: stats.operations_total.load(Relaxed),
            })
            .collect();
        NodeInfo {
            node_id: self.node_id,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            map_epoch,
            connections: shards.iter().map(|shard| shard.connections).sum(),
            shards,
        }
    }
}
