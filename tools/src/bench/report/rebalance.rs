//! The report of `tools/cluster-bench.sh`: how fast a live rebalance onto a new node
//! moved its slots and bytes, whether the cluster kept every key, and GET latency before
//! and during it. Reads from the script's directory `status-before.json` and
//! `status.json` (`engram cluster status --json` before and after the rebalance),
//! `before.json` and `during.json` (engram-bench's `--json`) and `rebalance.facts`
//! (`started` and `finished`: clock readings around `engram cluster rebalance`).

use std::io::{self, Write};
use std::path::Path;

use serde::Deserialize;

use crate::bench::report::error::ReportError;
use crate::bench::report::facts::{read_json, Facts};

const BYTES_PER_MEGABYTE: f64 = 1e6;
const BYTES_PER_KILOBYTE: f64 = 1e3;

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    /// Since the control plane started.
    pub bytes_moved_total: u64,
    pub migration_milliseconds_total: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub node_id: u64,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShardStatus {
    pub slots: u64,
    pub keys: u64,
}

impl ClusterStatus {
    fn total_keys(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|node| &node.shards)
            .map(|shard| shard.keys)
            .sum()
    }
}

/// The figures of an engram-bench result the report shows.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadFigures {
    pub ops_per_sec: f64,
    pub latency_us: LoadLatency,
    pub errors: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoadLatency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone)]
pub struct Inputs {
    pub status_before: ClusterStatus,
    pub status_after: ClusterStatus,
    pub before: LoadFigures,
    pub during: LoadFigures,
    /// Wall time of `engram cluster rebalance`.
    pub rebalance_secs: f64,
}

pub fn read(dir: &Path) -> Result<Inputs, ReportError> {
    let facts = Facts::read(&dir.join("rebalance.facts"))?;
    Ok(Inputs {
        status_before: read_json(&dir.join("status-before.json"))?,
        status_after: read_json(&dir.join("status.json"))?,
        before: read_json(&dir.join("before.json"))?,
        during: read_json(&dir.join("during.json"))?,
        rebalance_secs: facts.seconds_between("started", "finished")?,
    })
}

pub fn write(out: &mut impl Write, inputs: &Inputs) -> Result<(), ReportError> {
    // The status counts every slot moved since the start, the first spread over two
    // nodes included; the last rebalance's are the new node's, the one of highest id.
    let new_node = inputs
        .status_after
        .nodes
        .iter()
        .max_by_key(|node| node.node_id)
        .ok_or_else(|| ReportError::NoNodes {
            path: "status.json".into(),
        })?;
    let slots: u64 = new_node.shards.iter().map(|shard| shard.slots).sum();
    let keys: u64 = new_node.shards.iter().map(|shard| shard.keys).sum();
    let write_error = |source| ReportError::Write {
        path: "stdout".into(),
        source,
    };
    write_lines(out, inputs, slots, keys).map_err(write_error)
}

fn write_lines(out: &mut impl Write, inputs: &Inputs, slots: u64, keys: u64) -> io::Result<()> {
    let wall = inputs.rebalance_secs;
    writeln!(
        out,
        "rebalance: {slots} slots, {keys} keys to the new node in {wall:.2} s wall ({:.0} slots/s)",
        slots as f64 / wall
    )?;
    let status = &inputs.status_after;
    let moved_bytes = status.bytes_moved_total as f64;
    let moving_ms = status.migration_milliseconds_total;
    writeln!(
        out,
        "migration copy: {:.1} MB in {moving_ms} ms of migration steps ({:.1} MB/s over all steps since start)",
        moved_bytes / BYTES_PER_MEGABYTE,
        moved_bytes / BYTES_PER_KILOBYTE / moving_ms.max(1) as f64
    )?;
    // The loader's lanes walk the key space from their own offsets, so a few keys may
    // never be written; GET misses of those show up before and during alike. What must
    // hold is that the rebalance kept every key that was there.
    writeln!(
        out,
        "keys in the cluster: {} before the rebalance, {} after",
        inputs.status_before.total_keys(),
        status.total_keys()
    )?;
    for (label, load) in [("before", &inputs.before), ("during", &inputs.during)] {
        let latency = &load.latency_us;
        writeln!(
            out,
            "GET {label:<6}: {:.0} ops/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us, errors {}, misses {}",
            load.ops_per_sec, latency.p50, latency.p99, latency.p999, latency.max, load.errors, load.misses
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nodes: &[(u64, u64, u64)], bytes_moved_total: u64, migration_milliseconds_total: u64) -> ClusterStatus {
        ClusterStatus {
            nodes: nodes
                .iter()
                .map(|&(node_id, slots, keys)| NodeStatus {
                    node_id,
                    shards: vec![ShardStatus { slots, keys }],
                })
                .collect(),
            bytes_moved_total,
            migration_milliseconds_total,
        }
    }

    fn load(ops_per_sec: f64, p99: f64) -> LoadFigures {
        LoadFigures {
            ops_per_sec,
            latency_us: LoadLatency {
                p50: 104.4,
                p99,
                p999: 2.0 * p99,
                max: 3.0 * p99,
            },
            errors: 0,
            misses: 2,
        }
    }

    #[test]
    fn rebalance_figures_are_of_the_new_node() {
        let inputs = Inputs {
            status_before: status(&[(1, 8192, 5000), (2, 8192, 4999)], 1_000_000, 500),
            status_after: status(&[(2, 5462, 3239), (3, 5461, 3436), (1, 5461, 3324)], 4_800_000, 2_000),
            before: load(2000.2, 180.0),
            during: load(1999.0, 3700.0),
            rebalance_secs: 1.25,
        };
        let mut text = Vec::new();
        write(&mut text, &inputs).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "rebalance: 5461 slots, 3436 keys to the new node in 1.25 s wall (4369 slots/s)",
                "migration copy: 4.8 MB in 2000 ms of migration steps (2.4 MB/s over all steps since start)",
                "keys in the cluster: 9999 before the rebalance, 9999 after",
                "GET before: 2000 ops/s, p50 104 us, p99 180 us, p99.9 360 us, max 540 us, errors 0, misses 2",
                "GET during: 1999 ops/s, p50 104 us, p99 3700 us, p99.9 7400 us, max 11100 us, errors 0, misses 2",
            ]
        );
    }

    #[test]
    fn a_status_without_nodes_is_refused() {
        let inputs = Inputs {
            status_before: status(&[], 0, 0),
            status_after: status(&[], 0, 0),
            before: load(1.0, 1.0),
            during: load(1.0, 1.0),
            rebalance_secs: 1.0,
        };
        let error = write(&mut Vec::new(), &inputs).unwrap_err().to_string();
        assert_eq!(error, "status.json lists no nodes");
    }
}
