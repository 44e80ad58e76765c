//! Runs a benchmark: validates the flags, opens the connections, prefills, runs the
//! measured phase with one task per connection (or per request in flight, for Engram's
//! lock and barrier workloads), and merges what the tasks saw.

use std::io::IsTerminal;
use std::time::Duration;

use engram_client::Client;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bench::cli::Target;
use crate::bench::echo::EchoConnection;
use crate::bench::engram_driver;
use crate::bench::error::BenchError;
use crate::bench::lane::{LanePlan, Pacer, ProgressCounters, ProgressSlot, Stop};
use crate::bench::progress::Progress;
use crate::bench::redis_driver::RedisConnection;
use crate::bench::settings::Settings;
use crate::bench::stats::{LaneStats, Percentiles, Summary};
use crate::bench::workload::{BarrierStop, Coordination, RequestSource, Workload};

enum Connection {
    Engram(Client),
    Redis(Box<RedisConnection>),
    Echo(EchoConnection),
}

impl Connection {
    async fn open(settings: &Settings) -> Result<Connection, BenchError> {
        let value_bytes = settings.load.value_bytes;
        Ok(match &settings.target {
            Target::Engram { address, .. } => Connection::Engram(
                engram_driver::connect(
                    address,
                    Duration::from_micros(settings.load.client_spin_us),
                    settings.load.front_only,
                    settings.tls.clone(),
                )
                .await?,
            ),
            Target::Redis { address } => Connection::Redis(Box::new(
                RedisConnection::connect(address, value_bytes, settings.load.pipeline).await?,
            )),
            Target::TcpEcho { address } => Connection::Echo(
                EchoConnection::connect(
                    address,
                    value_bytes,
                    Duration::from_micros(settings.load.client_spin_us),
                )
                .await?,
            ),
        })
    }
}

/// What one phase produced.
struct PhaseOutcome {
    stats: LaneStats,
    /// When the last task finished.
    finished: Instant,
}

/// Runs the benchmark `settings` describes, printing prefill notes to stderr.
pub async fn run(settings: &Settings) -> Result<Summary, BenchError> {
    let mut connections = Vec::with_capacity(settings.load.connections);
    for _ in 0..settings.load.connections {
        connections.push(Some(Connection::open(settings).await?));
    }
    let lanes = settings.lanes();
    let keys = settings.load.keys;
    let is_echo = matches!(settings.target, Target::TcpEcho { .. });
    if settings.load.prefill && settings.load.workload.reads_values() && !is_echo {
        let started = Instant::now();
        let counters = ProgressCounters::new(lanes);
        let plans = (0..lanes).map(|lane| {
            let range_start = |lane: usize| (u128::from(keys) * lane as u128 / lanes as u128) as u64;
            LanePlan {
                source: RequestSource::prefill(range_start(lane), range_start(lane + 1)),
                // Prefill goes as fast as the target takes it, in batches even when the
                // measured run does not pipeline.
                pipeline: settings.pipeline_per_task().max(PREFILL_PIPELINE_DEPTH_MIN),
                measure_from: started,
                stop: Stop::SourceExhausted,
                pacer: None,
                progress: ProgressSlot::new(counters.clone(), lane),
                coordination: Coordination::None,
            }
        });
        let outcome = run_phase(settings, &mut connections, plans.collect()).await?;
        if outcome.stats.errors > 0 {
            return Err(BenchError::Task(format!(
                "prefill: {} of {} writes failed; first: {}",
                outcome.stats.errors,
                outcome.stats.requests,
                outcome.stats.first_error.unwrap_or_default()
            )));
        }
        eprintln!(
            "prefilled {keys} keys in {:.2} s",
            outcome.finished.duration_since(started).as_secs_f64()
        );
    }

    let started = Instant::now();
    let measure_from = started + settings.warmup;
    let counters = ProgressCounters::new(lanes);
    let barrier_stop = BarrierStop::new();
    let plans = (0..lanes)
        .map(|lane| {
            let stop = match (settings.duration, settings.load.requests) {
                (Some(duration), _) => Stop::Deadline(measure_from + duration),
                // Every barrier task passes every generation: whole generations only.
                (None, Some(requests)) if settings.load.workload == Workload::Barrier => {
                    Stop::Requests(requests.div_ceil(lanes as u64))
                }
                (None, Some(requests)) => {
                    let lanes = lanes as u64;
                    Stop::Requests(requests / lanes + u64::from((lane as u64) < requests % lanes))
                }
                (None, None) => unreachable!("settings always have a duration or a request count"),
            };
            let pacer = match settings.load.rate {
                Some(rate) => {
                    let interval_seconds = settings.pipeline_per_task() as f64 * lanes as f64 / rate;
                    Some(Pacer::new(started, interval_seconds, lane, lanes)?)
                }
                None => None,
            };
            Ok(LanePlan {
                source: RequestSource::load(
                    settings.load.workload,
                    settings.load.ratio,
                    settings.load.key_pattern,
                    keys,
                    lane as u64,
                    lanes as u64,
                    settings.seed,
                ),
                pipeline: settings.pipeline_per_task(),
                measure_from,
                stop,
                pacer,
                progress: ProgressSlot::new(counters.clone(), lane),
                coordination: Coordination::for_lane(
                    settings.load.workload,
                    lane,
                    lanes,
                    settings.run_id,
                    &barrier_stop,
                ),
            })
        })
        .collect::<Result<Vec<LanePlan>, BenchError>>()?;
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| Progress::start(counters.clone(), settings, measure_from));
    let outcome = run_phase(settings, &mut connections, plans).await;
    if let Some(progress) = progress {
        progress.finish();
    }
    let outcome = outcome?;
    let duration_secs = outcome.finished.saturating_duration_since(measure_from).as_secs_f64();
    let stats = outcome.stats;
    Ok(Summary {
        target: settings.target.to_string(),
        workload: settings.workload_name().to_owned(),
        ratio: (settings.load.workload == Workload::Mixed && !is_echo).then(|| settings.load.ratio.to_string()),
        connections: settings.load.connections,
        pipeline: settings.load.pipeline,
        threads: settings.load.threads,
        keys,
        key_pattern: format!("{:?}", settings.load.key_pattern).to_lowercase(),
        value_bytes: settings.load.value_bytes,
        rate: settings.load.rate,
        ops_per_sec: if duration_secs > 0.0 {
            stats.requests as f64 / duration_secs
        } else {
            0.0
        },
        latency_us: Percentiles::of(&stats.histogram),
        operations: stats.operation_summaries(),
        requests: stats.requests,
        errors: stats.errors,
        misses: stats.misses,
        duration_secs,
        warmup_secs: settings.warmup.as_secs_f64(),
        seed: settings.seed,
        first_error: stats.first_error,
    })
}

/// Smallest batch of prefill writes per task.
const PREFILL_PIPELINE_DEPTH_MIN: usize = 16;

/// Runs one task per plan (tasks `i * tasks_per_connection ..` on connection `i`) and
/// merges their statistics. Redis and echo connections move into their task and back.
async fn run_phase(
    settings: &Settings,
    connections: &mut [Option<Connection>],
    plans: Vec<LanePlan>,
) -> Result<PhaseOutcome, BenchError> {
    let tasks_per_connection = settings.tasks_per_connection();
    let value_bytes = settings.load.value_bytes;
    let mut tasks = JoinSet::new();
    for (lane, mut plan) in plans.into_iter().enumerate() {
        let connection_index = lane / tasks_per_connection;
        match connections[connection_index].take() {
            Some(Connection::Engram(client)) => {
                // Every task of this connection shares its client: put it back at once.
                connections[connection_index] = Some(Connection::Engram(client.clone()));
                // Lock and barrier tasks pipeline by concurrency, each with one request
                // in flight; key-value tasks send batches of `plan.pipeline`.
                if !matches!(plan.coordination, Coordination::None) {
                    plan.pipeline = 1;
                }
                tasks.spawn(async move {
                    let stats = engram_driver::run_lane(client, plan, value_bytes).await?;
                    Ok::<_, BenchError>((connection_index, None, stats, Instant::now()))
                });
            }
            Some(Connection::Redis(mut redis)) => {
                tasks.spawn(async move {
                    let stats = redis.run_lane(plan).await?;
                    Ok((connection_index, Some(Connection::Redis(redis)), stats, Instant::now()))
                });
            }
            Some(Connection::Echo(mut echo)) => {
                tasks.spawn(async move {
                    let stats = echo.run_lane(plan).await?;
                    Ok((connection_index, Some(Connection::Echo(echo)), stats, Instant::now()))
                });
            }
            None => unreachable!("a Redis or echo connection runs one task at a time"),
        }
    }
    let mut merged = LaneStats::default();
    let mut finished = Instant::now();
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((index, connection, stats, done))) => {
                if connection.is_some() {
                    connections[index] = connection;
                }
                merged.merge(&stats);
                finished = finished.max(done);
            }
            Ok(Err(error)) => {
                // One broken connection ends the run: stop the others rather than
                // report figures from fewer connections than asked.
                tasks.abort_all();
                first_failure.get_or_insert(error);
            }
            Err(join_error) if join_error.is_cancelled() => {}
            Err(join_error) => {
                tasks.abort_all();
                first_failure.get_or_insert(BenchError::Task(join_error.to_string()));
            }
        }
    }
    if let Some(error) = first_failure {
        return Err(error);
    }
    Ok(PhaseOutcome {
        stats: merged,
        finished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cli::BenchCli;
    use clap::Parser;

    fn settings(arguments: &[&str]) -> Result<Settings, BenchError> {
        let cli = BenchCli::try_parse_from(std::iter::once("engram-bench").chain(arguments.iter().copied())).unwrap();
        Settings::new(cli.load)
    }

    #[test]
    fn coordination_workloads_need_an_engram_target() {
        for workload in ["lock", "barrier"] {
            assert!(settings(&["--target", "engram://h:1", "--workload", workload]).is_ok());
            for target in ["redis://h:1", "tcp-echo://h:1"] {
                let error = settings(&["--target", target, "--workload", workload]).unwrap_err();
                assert!(matches!(error, BenchError::EngramOnly { .. }), "{error}");
                let message = error.to_string();
                assert!(message.contains(workload) && message.contains(target), "{message}");
            }
        }
    }

    #[test]
    fn barrier_refuses_a_rate_and_lock_takes_one() {
        let barrier = settings(&["--target", "engram://h:1", "--workload", "barrier", "--rate", "100"]);
        assert!(matches!(barrier, Err(BenchError::Usage(message)) if message.contains("--rate")));
        assert!(settings(&["--target", "engram://h:1", "--workload", "lock", "--rate", "100"]).is_ok());
    }

    #[test]
    fn runs_get_their_own_barrier() {
        let first = settings(&["--target", "engram://h:1", "--workload", "barrier", "--seed", "1"]).unwrap();
        let second = settings(&["--target", "engram://h:1", "--workload", "barrier", "--seed", "1"]).unwrap();
        assert_ne!(first.run_id, second.run_id, "the same seed must not share a barrier");
    }
}
