//! The Engram driver: one `engram-client` `Client` per connection (direct routing, so one
//! multiplexed connection per shard). A key-value task keeps a pipeline of requests in
//! flight as batches; the lock and barrier workloads run one task per request in flight.

use std::sync::Arc;
use std::time::Duration;

use engram_client::{Client, ClientTls, Command, Response, SetCondition};
use tokio::time::Instant;

use crate::bench::error::BenchError;
use crate::bench::keys::{write_key, COUNTER_KEY_PREFIX, KEY_PREFIX, LOCK_KEY_PREFIX};
use crate::bench::lane::LanePlan;
use crate::bench::stats::LaneStats;
use crate::bench::workload::{BarrierStop, Coordination, Operation, Workload, BARRIER_TIMEOUT, LOCK_LEASE, LOCK_WAIT};
use engram_proto::{BarrierCommand, BytesCommand, CounterCommand, LockCommand};

/// Opens one benchmark connection: a client of its own, so connections share nothing;
/// each call polls `spin` for its answer before parking. `front_only` sends every
/// request to `address` (a node's front port forwards it) instead of to its shard;
/// with `tls`, every connection speaks TLS.
pub async fn connect(
    address: &str,
    spin: Duration,
    front_only: bool,
    tls: Option<ClientTls>,
) -> Result<Client, BenchError> {
    let mut builder = Client::builder(address).direct(!front_only).spin(spin);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    Ok(builder.connect().await?)
}

/// Runs one load task: a closed (or paced) loop of single requests, or with a pipeline
/// of N (`plan.pipeline`), of batches of N requests sent with [`Client::batch`] and
/// awaited together, as the RESP driver does. The lock and barrier workloads pipeline by
/// running several tasks on one client instead, each with one request in flight.
pub async fn run_lane(client: Client, mut plan: LanePlan, value_bytes: usize) -> Result<LaneStats, BenchError> {
    match std::mem::replace(&mut plan.coordination, Coordination::None) {
        Coordination::None if plan.pipeline > 1 => run_batched_lane(client, plan, value_bytes).await,
        Coordination::None => run_key_value_lane(client, plan, value_bytes).await,
        Coordination::Lock { owner } => Ok(run_lock_lane(client, plan, owner).await),
        Coordination::Barrier { key, parties, stop } => Ok(run_barrier_lane(client, plan, key, parties, &stop).await),
    }
}

/// The command for one key-value request and whether it is a mutation. The client's
/// commands own their key and value, so each request copies them once; `key` is reused.
fn key_value_command(operation: Operation, index: u64, key: &mut Vec<u8>, value: &[u8]) -> (Command, bool) {
    match operation {
        Operation::Get => {
            write_key(key, KEY_PREFIX, index);
            (Command::from(BytesCommand::Get { key: key.clone() }), false)
        }
        Operation::Set => {
            write_key(key, KEY_PREFIX, index);
            let command = Command::from(BytesCommand::Set {
                key: key.clone(),
                value: value.to_vec(),
                ttl_ms: 0,
                condition: SetCondition::Always,
            });
            (command, true)
        }
        Operation::Incr => {
            write_key(key, COUNTER_KEY_PREFIX, index);
            (
                Command::from(CounterCommand::Add {
                    key: key.clone(),
                    delta: 1,
                }),
                true,
            )
        }
        Operation::LockAcquire | Operation::LockRelease | Operation::BarrierWait => {
            unreachable!("lock and barrier tasks run their own loops")
        }
    }
}

/// Records one key-value request's outcome, its latency counted from `intended`.
fn record_key_value(
    stats: &mut LaneStats,
    operation: Operation,
    result: Result<Response, engram_client::Error>,
    intended: Instant,
) {
    match (operation, result) {
        (Operation::Get, Ok(Response::Value { .. }))
        | (Operation::Set, Ok(Response::Written { .. }))
        | (Operation::Incr, Ok(Response::Counter { .. })) => stats.record_success(intended.elapsed(), false),
        (Operation::Get, Ok(Response::Missing)) => stats.record_success(intended.elapsed(), true),
        (operation, Ok(response)) => stats.record_error(|| format!("{operation:?}: unexpected {response:?}")),
        (operation, Err(error)) => stats.record_error(|| format!("{operation:?}: {error}")),
    }
}

async fn run_key_value_lane(client: Client, mut plan: LanePlan, value_bytes: usize) -> Result<LaneStats, BenchError> {
    let mut stats = LaneStats::default();
    let value = vec![b'v'; value_bytes];
    let mut key = Vec::with_capacity(32);
    loop {
        let now = Instant::now();
        if plan.next_batch_size(now, &stats) == 0 {
            break;
        }
        let intended = plan.send_time(now).await;
        let Some((operation, index)) = plan.source.next_request() else {
            break;
        };
        let (command, mutation) = key_value_command(operation, index, &mut key, &value);
        let result = client.call(Some(&key), command, mutation).await;
        if !plan.measures(intended) {
            continue;
        }
        record_key_value(&mut stats, operation, result, intended);
        plan.progress.add(1);
    }
    Ok(stats)
}

/// A pipeline of N in one task: each batch of up to N requests is due at one intended
/// time (the open loop paces batches), sent as one [`Client::batch`] and awaited whole;
/// every request's latency runs from the batch's intended send time to its completion.
async fn run_batched_lane(client: Client, mut plan: LanePlan, value_bytes: usize) -> Result<LaneStats, BenchError> {
    let mut stats = LaneStats::default();
    let value = vec![b'v'; value_bytes];
    let mut key = Vec::with_capacity(32);
    let mut operations = Vec::with_capacity(plan.pipeline);
    loop {
        let now = Instant::now();
        let size = plan.next_batch_size(now, &stats);
        if size == 0 {
            break;
        }
        let intended = plan.send_time(now).await;
        operations.clear();
        let mut commands = Vec::with_capacity(size);
        for (operation, index) in plan.source.batch(size) {
            commands.push(key_value_command(operation, index, &mut key, &value));
            operations.push(operation);
        }
        if operations.is_empty() {
            break;
        }
        let results = client.batch(commands).await;
        if !plan.measures(intended) {
            continue;
        }
        for (&operation, result) in operations.iter().zip(results) {
            record_key_value(&mut stats, operation, result, intended);
        }
        plan.progress.add(operations.len() as u64);
    }
    Ok(stats)
}

fn milliseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("constant durations fit")
}

/// The lock workload: acquire, release, acquire, ... each on a lock the key pattern
/// picks (the release on the lock just acquired), recorded as two operations. With
/// `--rate` the acquires are paced and each release follows its acquire at once. A task
/// that stops while holding a lock (its deadline or budget came between acquire and
/// release) releases it unmeasured, so the next run finds every lock free.
async fn run_lock_lane(client: Client, mut plan: LanePlan, owner: Vec<u8>) -> LaneStats {
    let mut stats = LaneStats::reporting(Workload::Lock.reported_operations());
    let mut key = Vec::with_capacity(32);
    // The fence of the grant held, between an acquire and its release.
    let mut held: Option<u64> = None;
    loop {
        let now = Instant::now();
        if plan.next_batch_size(now, &stats) == 0 {
            break;
        }
        let Some((operation, index)) = plan.source.next_request() else {
            break;
        };
        write_key(&mut key, LOCK_KEY_PREFIX, index);
        let (intended, result) = match operation {
            Operation::LockAcquire => {
                let intended = plan.send_time(now).await;
                let command = Command::from(LockCommand::Acquire {
                    key: key.clone(),
                    owner: owner.clone(),
                    lease_ms: milliseconds(LOCK_LEASE),
                    wait_ms: milliseconds(LOCK_WAIT),
                });
                let result = client.call(Some(&key), command, true).await;
                match &result {
                    Ok(Response::LockGranted { fence, .. }) => held = Some(*fence),
                    _ => plan.source.acquire_failed(),
                }
                (intended, result)
            }
            Operation::LockRelease => {
                let fence = held.take().expect("a release follows a granted acquire");
                (now, release(&client, &key, &owner, fence).await)
            }
            other => unreachable!("the lock workload sends no {other:?}"),
        };
        if !plan.measures(intended) {
            continue;
        }
        match result {
            Ok(Response::LockGranted { .. }) if operation == Operation::LockAcquire => {
                stats.record_operation_success(operation, intended.elapsed())
            }
            Ok(Response::Released) if operation == Operation::LockRelease => {
                stats.record_operation_success(operation, intended.elapsed())
            }
            Ok(response) => {
                stats.record_operation_error(operation, || format!("{}: unexpected {response:?}", operation.name()))
            }
            Err(error) => stats.record_operation_error(operation, || format!("{}: {error}", operation.name())),
        }
        plan.progress.add(1);
    }
    if let Some(fence) = held {
        // Not measured; a failure leaves the lock to its lease, which is all it costs.
        let _ = release(&client, &key, &owner, fence).await;
    }
    stats
}

async fn release(client: &Client, key: &[u8], owner: &[u8], fence: u64) -> Result<Response, engram_client::Error> {
    let command = Command::from(LockCommand::Release {
        key: key.to_vec(),
        owner: owner.to_vec(),
        fence,
    });
    client.call(Some(key), command, true).await
}

/// The barrier workload: every task waits on the run's one barrier, over and over; a
/// wait's latency runs from arrival to release, so it includes waiting for the slowest
/// party. The tasks stop together ([`BarrierStop`]); a failed wait (a timeout, or a
/// generation another party's timeout broke) is counted even in warmup, and ends the run.
async fn run_barrier_lane(
    client: Client,
    mut plan: LanePlan,
    key: Vec<u8>,
    parties: u32,
    stop: &Arc<BarrierStop>,
) -> LaneStats {
    let mut stats = LaneStats::reporting(Workload::Barrier.reported_operations());
    let operation = Operation::BarrierWait;
    let mut passed: Option<u64> = None;
    while !stop.should_stop(passed) {
        let now = Instant::now();
        // A task that is done passes one more generation, unmeasured, with the others.
        let done = plan.next_batch_size(now, &stats) == 0;
        if done {
            stop.stop_after_next(passed);
        }
        let _ = plan.source.next_request();
        let command = Command::from(BarrierCommand::Wait {
            key: key.clone(),
            parties,
            timeout_ms: milliseconds(BARRIER_TIMEOUT),
        });
        let result = client.call(Some(&key), command, true).await;
        let measured = !done && plan.measures(now);
        match result {
            Ok(Response::BarrierPassed { generation, .. }) => {
                passed = Some(generation);
                if measured {
                    stats.record_operation_success(operation, now.elapsed());
                    plan.progress.add(1);
                }
            }
            other => {
                stop.abandon();
                stats.record_operation_error(operation, || match other {
                    Ok(response) => format!("barrier_wait: unexpected {response:?}"),
                    Err(error) => format!("barrier_wait: {error}"),
                });
                break;
            }
        }
    }
    stats
}
