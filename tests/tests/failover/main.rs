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
//!
//! Layout: [`kill_nine`], [`paused_primary`], [`partition`] and [`measurements`], one
//! file each; what they share (the cluster's settings, asking a shard port directly)
//! is here, the cluster itself in `tests/src/failover.rs`.

mod kill_nine;
mod measurements;
mod partition;
mod paused_primary;

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
