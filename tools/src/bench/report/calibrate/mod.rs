//! The report of `tools/calibrate.sh`: engram-bench against redis-benchmark loading one
//! redis-server in the same shapes, in interleaved rounds. Per tool and shape, medians
//! over the rounds that gave a figure of the tool's own rate, of the rate redis-server
//! counted and of how busy each side was; per shape, the engram-bench/redis-benchmark
//! ratio of each round, with its median and range.
//!
//! - [`input`]: reads the script's work directory into [`Inputs`].
//! - [`table`]: the printed table.

pub mod input;
pub mod table;

use serde::Serialize;

use crate::bench::report::error::ReportError;
use crate::bench::report::facts::Machine;
use crate::bench::report::figures::{cores, median_present, per_round_ratios, ratio, round_to, Spread};
use crate::bench::report::named::Named;

/// The shapes in the order of the table: the command, then pipelining.
pub const SHAPES: [&str; 4] = ["get-unpipelined", "get-pipelined", "set-unpipelined", "set-pipelined"];
pub const REDIS_BENCHMARK: &str = "redis-benchmark";
pub const ENGRAM_BENCH: &str = "engram-bench";
/// How far engram-bench's median may be from redis-benchmark's and still agree (issue 3).
pub const AGREEMENT_TOLERANCE: f64 = 0.1;
/// Places of busy fractions and of run seconds (microseconds) in the report.
const BUSY_DECIMALS: i32 = 3;
const SECONDS_DECIMALS: i32 = 6;

/// What the script ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rounds: usize,
    pub requests_unpipelined: u64,
    pub requests_pipelined: u64,
    pub keys: u64,
    pub value_bytes: u64,
    pub connections: u64,
    /// As given to taskset: a CPU list.
    pub server_core: String,
    pub load_core: String,
    pub ticks_per_second: f64,
}

/// One tool's run in one shape and round.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub tool: String,
    pub shape: String,
    pub round: usize,
    /// `None` for a run that failed or that gave no usable figure.
    pub figure: Option<Figure>,
    /// Wall time of the tool, start to exit.
    pub wall_secs: f64,
    /// Commands redis-server counted over the run.
    pub server_commands: i64,
    /// CPU clock ticks of redis-server, and of the tool, over the run.
    pub server_ticks: u64,
    pub load_ticks: u64,
}

/// A tool's own figure of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub rate: f64,
    /// The requests the tool says it made; redis-benchmark does not say.
    pub reported_requests: Option<u64>,
}

/// Everything the script measured.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub settings: Settings,
    pub machine: Machine,
    /// As `redis-server --version` gives it: `v=7.0.15`.
    pub redis_version: String,
    pub runs: Vec<Run>,
    /// Why a run gave no figure, one line each.
    pub notes: Vec<String>,
}

/// The JSON report (`--json`); the table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub redis_version: String,
    pub started_at: String,
    pub ended_at: String,
    pub rounds: usize,
    pub requests: Requests,
    pub keys: u64,
    pub value_bytes: u64,
    pub connections: u64,
    pub shapes: Named<ShapeSummary>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Requests {
    pub unpipelined: u64,
    pub pipelined: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeSummary {
    pub redis_benchmark: ToolSummary,
    pub engram_bench: ToolSummary,
    /// engram-bench's rate over redis-benchmark's, per round.
    pub ratios: Vec<Option<f64>>,
    pub ratio_median: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// Whether the median is within [`AGREEMENT_TOLERANCE`] of 1.
    pub within_ten_percent: Option<bool>,
    /// Whether redis-server counted exactly the requests engram-bench reported, in every
    /// run that gave a figure.
    pub engram_bench_counts_match_server: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolSummary {
    pub runs: Vec<RunRecord>,
    pub rate_median: Option<f64>,
    pub server_rate_median: Option<f64>,
    pub server_busy_median: Option<f64>,
    pub load_busy_median: Option<f64>,
    /// Of the tool's own figure from the rate redis-server counted, as a fraction.
    pub largest_deviation_from_server: Option<f64>,
}

/// One run as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub rate: Option<f64>,
    pub reported_requests: Option<u64>,
    pub tool: String,
    pub shape: String,
    pub round: usize,
    pub run_seconds: f64,
    pub server_commands: i64,
    /// The commands redis-server counted over the tool's wall time.
    pub server_rate: f64,
    /// CPU over wall time, of redis-server and of the tool.
    pub server_busy: f64,
    pub load_busy: f64,
}

impl RunRecord {
    fn of(run: &Run, ticks_per_second: f64) -> RunRecord {
        let run_seconds = round_to(run.wall_secs, SECONDS_DECIMALS);
        let busy = |ticks| round_to(cores(ticks, ticks_per_second, run.wall_secs), BUSY_DECIMALS);
        RunRecord {
            rate: run.figure.map(|figure| figure.rate),
            reported_requests: run.figure.and_then(|figure| figure.reported_requests),
            tool: run.tool.clone(),
            shape: run.shape.clone(),
            round: run.round,
            run_seconds,
            server_commands: run.server_commands,
            server_rate: run.server_commands as f64 / run_seconds,
            server_busy: busy(run.server_ticks),
            load_busy: busy(run.load_ticks),
        }
    }

    /// How far the tool's own rate is from the one redis-server counted, as a fraction.
    fn deviation(&self) -> Option<f64> {
        ratio(self.rate, Some(self.server_rate)).map(|ratio| (ratio - 1.0).abs())
    }
}

impl ToolSummary {
    fn of(runs: Vec<RunRecord>) -> ToolSummary {
        let with_figure = || runs.iter().filter(|run| run.rate.is_some());
        ToolSummary {
            rate_median: median_present(runs.iter().map(|run| run.rate)),
            server_rate_median: median_present(with_figure().map(|run| Some(run.server_rate))),
            server_busy_median: median_present(with_figure().map(|run| Some(run.server_busy))),
            load_busy_median: median_present(with_figure().map(|run| Some(run.load_busy))),
            largest_deviation_from_server: runs.iter().filter_map(RunRecord::deviation).reduce(f64::max),
            runs,
        }
    }
}

/// The report of `inputs`; refuses a tool, shape or round that did not run.
pub fn report(inputs: &Inputs) -> Result<Report, ReportError> {
    let settings = &inputs.settings;
    let mut shapes = Named::new();
    for shape in SHAPES {
        let redis_benchmark = ToolSummary::of(records(inputs, REDIS_BENCHMARK, shape)?);
        let engram_bench = ToolSummary::of(records(inputs, ENGRAM_BENCH, shape)?);
        shapes.push(shape, shape_summary(redis_benchmark, engram_bench));
    }
    Ok(Report {
        machine: inputs.machine.description(),
        redis_version: inputs.redis_version.clone(),
        started_at: inputs.machine.started_at.clone(),
        ended_at: inputs.machine.ended_at.clone(),
        rounds: settings.rounds,
        requests: Requests {
            unpipelined: settings.requests_unpipelined,
            pipelined: settings.requests_pipelined,
        },
        keys: settings.keys,
        value_bytes: settings.value_bytes,
        connections: settings.connections,
        shapes,
    })
}

/// The run of `tool` in `shape` of every round, in the order of the rounds.
fn records(inputs: &Inputs, tool: &str, shape: &str) -> Result<Vec<RunRecord>, ReportError> {
    (1..=inputs.settings.rounds)
        .map(|round| {
            let mut matching = inputs
                .runs
                .iter()
                .filter(|run| run.tool == tool && run.shape == shape && run.round == round);
            match (matching.next(), matching.next()) {
                (Some(run), None) => Ok(RunRecord::of(run, inputs.settings.ticks_per_second)),
                (found, _) => Err(ReportError::MissingRun {
                    run: format!("{tool} {shape}, round {round} of {}", inputs.settings.rounds),
                    reason: if found.is_some() { "ran twice" } else { "not run" }.into(),
                }),
            }
        })
        .collect()
}

fn shape_summary(redis_benchmark: ToolSummary, engram_bench: ToolSummary) -> ShapeSummary {
    let rounds = engram_bench.runs.iter().zip(&redis_benchmark.runs);
    let spread = Spread::of(per_round_ratios(
        rounds.map(|(engram, redis)| (engram.rate, redis.rate)),
    ));
    let counts_match = engram_bench
        .runs
        .iter()
        .filter(|run| run.rate.is_some())
        .all(|run| run.reported_requests == u64::try_from(run.server_commands).ok());
    ShapeSummary {
        within_ten_percent: spread
            .median
            .map(|median| (1.0 - AGREEMENT_TOLERANCE..=1.0 + AGREEMENT_TOLERANCE).contains(&median)),
        ratio_median: spread.median,
        ratio_min: spread.min,
        ratio_max: spread.max,
        ratios: spread.rounds,
        engram_bench_counts_match_server: counts_match,
        redis_benchmark,
        engram_bench,
    }
}

#[cfg(test)]
mod tests;
