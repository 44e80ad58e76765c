//! The Engram driver: one `engram-client` `Client` per connection (direct routing, so one
//! multiplexed connection per shard), and one load task per request in flight.

use engram_client::{Client, Command, Response, SetCondition};
use tokio::time::Instant;

use crate::bench::error::BenchError;
use crate::bench::keys::{write_key, COUNTER_KEY_PREFIX, KEY_PREFIX};
use crate::bench::lane::LanePlan;
use crate::bench::stats::LaneStats;
use crate::bench::workload::Operation;

/// Opens one benchmark connection: a client of its own, so connections share nothing.
pub async fn connect(address: &str) -> Result<Client, BenchError> {
    Ok(Client::builder(address).direct(true).connect().await?)
}

/// Runs one load task: a closed (or paced) loop of single requests. A connection's
/// pipeline depth is the number of these tasks sharing its client.
pub async fn run_lane(client: Client, mut plan: LanePlan, value_bytes: usize) -> Result<LaneStats, BenchError> {
    debug_assert_eq!(plan.pipeline, 1, "an Engram task keeps one request in flight");
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
        // The client's commands own their key and value, so each request copies them
        // once; everything else is reused.
        let (command, mutation) = match operation {
            Operation::Get => {
                write_key(&mut key, KEY_PREFIX, index);
                (Command::Get { key: key.clone() }, false)
            }
            Operation::Set => {
                write_key(&mut key, KEY_PREFIX, index);
                let command = Command::Set {
                    key: key.clone(),
                    value: value.clone(),
                    ttl_ms: 0,
                    condition: SetCondition::Always,
                };
                (command, true)
            }
            Operation::Incr => {
                write_key(&mut key, COUNTER_KEY_PREFIX, index);
                (
                    Command::CounterAdd {
                        key: key.clone(),
                        delta: 1,
                    },
                    true,
                )
            }
        };
        let result = client.call(Some(&key), command, mutation).await;
        if !plan.measures(intended) {
            continue;
        }
        match (operation, result) {
            (Operation::Get, Ok(Response::Value { .. }))
            | (Operation::Set, Ok(Response::Written { .. }))
            | (Operation::Incr, Ok(Response::Counter { .. })) => stats.record_success(intended.elapsed(), false),
            (Operation::Get, Ok(Response::Missing)) => stats.record_success(intended.elapsed(), true),
            (operation, Ok(response)) => stats.record_error(|| format!("{operation:?}: unexpected {response:?}")),
            (operation, Err(error)) => stats.record_error(|| format!("{operation:?}: {error}")),
        }
        plan.progress.add(1);
    }
    Ok(stats)
}
