//! The report of `tools/compare.sh`: Engram against Redis and the loopback floor in
//! interleaved rounds. Absolute figures are medians over the rounds, except the servers'
//! work per request, pooled over them (ticks or system calls summed, over requests
//! summed); every ratio is the median of the per-round ratios, with their range, so it
//! is not the ratio of the absolute figures. CPU comes from the servers' and the load's
//! clock ticks, memory from the growth of a fresh server's resident set.
//!
//! - [`input`]: reads the script's work directory into [`Inputs`].
//! - [`table`]: the printed table.

pub mod input;
pub mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bench::report::error::ReportError;
use crate::bench::report::facts::Machine;
use crate::bench::report::figures::{
    bytes_per_key, cores, cpu_us_per_request, median, per_round_ratios, ratio, round_to, Spread,
};
use crate::bench::report::named::Named;

/// The shapes in the order of the table, each with its targets (in the order of odd
/// rounds; the script reverses it in even ones). A run is named `TARGET-SHAPE`.
pub const SHAPES: [(&str, &[&str]); 4] = [
    ("c1", &["echo", "redis", "engram"]),
    ("c50p1", &["echo", "redis", "engram"]),
    ("c50p16", &["redis", "engram"]),
    ("spin-c1", &["echo-spin", "engram-spin"]),
];

/// The ratios of the report, each a field of its `ratios`: numerator run, denominator run
/// and the figure they divide.
const RATIOS: [(&str, &str, &str, Metric); 8] = [
    ("c1_p50_engram_over_floor", "engram-c1", "echo-c1", Metric::P50),
    ("c1_p50_engram_over_redis", "engram-c1", "redis-c1", Metric::P50),
    ("c1_p99_engram_over_redis", "engram-c1", "redis-c1", Metric::P99),
    (
        "spin_c1_p50_engram_over_floor",
        "engram-spin-spin-c1",
        "echo-spin-spin-c1",
        Metric::P50,
    ),
    (
        "c50p1_ops_engram_over_redis",
        "engram-c50p1",
        "redis-c50p1",
        Metric::Ops,
    ),
    (
        "c50p1_p99_engram_over_redis",
        "engram-c50p1",
        "redis-c50p1",
        Metric::P99,
    ),
    (
        "c50p16_ops_engram_over_redis",
        "engram-c50p16",
        "redis-c50p16",
        Metric::Ops,
    ),
    (
        "c50p16_p99_engram_over_redis",
        "engram-c50p16",
        "redis-c50p16",
        Metric::P99,
    ),
];
/// The ratio of resident bytes per key, measured once rather than per round.
pub const MEMORY_RATIO: &str = "memory_per_key_engram_over_redis";
const SPIN_RUN: &str = "engram-spin-spin-c1";
const PLAIN_RUN: &str = "engram-c1";
/// The shapes whose server work per request the report gives, by CPU and system calls:
/// on loopback the load's kernel work bounds throughput, so the server's own work is the
/// figure that carries to a real network.
pub const WORK_SHAPES: [&str; 2] = ["c50p1", "c50p16"];
/// Decimal places of ratios, cores and microseconds per request in the report.
const DECIMALS: i32 = 2;
const BYTES_PER_KEY_DECIMALS: i32 = 1;

/// Every run name, `TARGET-SHAPE`, in the order of the table.
pub fn run_names() -> impl Iterator<Item = String> {
    SHAPES
        .iter()
        .flat_map(|(shape, targets)| targets.iter().map(move |target| format!("{target}-{shape}")))
}

/// What the script ran: its tunables, and the clock-tick rate of `/proc` figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rounds: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub keys: u64,
    pub value_bytes: u64,
    pub memory_keys: u64,
    pub spin_us: u64,
    /// As given to taskset: a CPU list.
    pub server_core: String,
    pub load_core: String,
    pub ticks_per_second: f64,
}

/// One measured run of engram-bench against one target in one shape.
#[derive(Debug, Clone)]
pub struct Run {
    /// The `--json` result as engram-bench wrote it, kept whole in the report.
    pub document: Value,
    pub figures: RunFigures,
    /// Wall time of the engram-bench process, start to exit.
    pub wall_secs: f64,
    /// CPU clock ticks of the server over the run.
    pub server_ticks: u64,
    /// CPU clock ticks of the load: the children the script waited for over the run.
    pub load_ticks: u64,
    /// The part of `server_ticks` spent in the kernel.
    pub server_system_ticks: u64,
    /// System calls the server's threads entered over the run; `None`: not counted.
    pub server_syscalls: Option<u64>,
}

impl Run {
    /// Requests the server served over the run: the measured ones, and the warm-up's
    /// (which it also served, uncounted) estimated at the measured rate.
    fn requests_served(&self) -> f64 {
        self.figures.requests as f64 + self.figures.warmup_secs * self.figures.ops_per_sec
    }
}

/// The figures of an engram-bench result the report uses.
#[derive(Debug, Clone, Deserialize)]
pub struct RunFigures {
    pub ops_per_sec: f64,
    pub latency_us: RunLatency,
    pub requests: u64,
    pub warmup_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunLatency {
    pub p50: f64,
    pub p99: f64,
}

/// A fresh server's resident set before and after it stored `keys` keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryRun {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub keys: u64,
}

/// Everything the script measured.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub settings: Settings,
    pub machine: Machine,
    /// By run name (`TARGET-SHAPE`): one run per round, in the order of the rounds.
    pub runs: BTreeMap<String, Vec<Run>>,
    pub memory: PerServer<MemoryRun>,
}

impl Inputs {
    /// The runs of `name`, one for each round, or why there are not.
    fn runs_of(&self, name: &str) -> Result<&[Run], ReportError> {
        let missing = |reason: String| ReportError::MissingRun {
            run: name.to_owned(),
            reason,
        };
        let runs = self
            .runs
            .get(name)
            .ok_or_else(|| missing("no round ran this target and shape".into()))?;
        if runs.len() != self.settings.rounds {
            return Err(missing(format!(
                "{} runs for {} rounds",
                runs.len(),
                self.settings.rounds
            )));
        }
        Ok(runs)
    }
}

#[derive(Debug, Clone, Copy)]
enum Metric {
    P50,
    P99,
    Ops,
}

impl Metric {
    fn of(self, figures: &RunFigures) -> f64 {
        match self {
            Metric::P50 => figures.latency_us.p50,
            Metric::P99 => figures.latency_us.p99,
            Metric::Ops => figures.ops_per_sec,
        }
    }
}

/// The JSON report (`--json`); the table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `uname -srm, N CPUs, CPU model`.
    pub machine: String,
    pub load_average_at_end: String,
    pub started_at: String,
    pub ended_at: String,
    pub rounds: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    /// By run name: medians over the rounds.
    pub medians: Named<Medians>,
    /// By run name: engram-bench's result of each round.
    pub runs: Named<Vec<Value>>,
    pub memory: PerServer<MemoryFigures>,
    pub spin: SpinFigures,
    /// By shape of [`WORK_SHAPES`]: the server's work per request over all rounds.
    pub server_work_per_request: Named<PerServer<ServerWork>>,
    /// Each ratio of [`RATIOS`], then per shape of [`WORK_SHAPES`] engram's CPU and
    /// system calls per request over Redis's, then [`MEMORY_RATIO`].
    pub ratios: Named<Spread>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerServer<T> {
    pub redis: T,
    pub engram: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Medians {
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub ops_per_sec: Option<f64>,
}

impl Medians {
    fn of(runs: &[Run]) -> Medians {
        let over = |metric: Metric| median(&runs.iter().map(|run| metric.of(&run.figures)).collect::<Vec<_>>());
        Medians {
            p50_us: over(Metric::P50),
            p99_us: over(Metric::P99),
            ops_per_sec: over(Metric::Ops),
        }
    }
}

/// A server's work per request over the rounds of one shape, in microseconds of CPU
/// (each rounded on its own, so user and system may not add up to the whole).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerWork {
    /// User and system time.
    pub cpu_us: f64,
    /// Time in user space.
    pub user_us: f64,
    /// Time in the kernel.
    pub system_us: f64,
    /// System calls; `None` where they were not counted.
    pub syscalls: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryFigures {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub keys: u64,
    /// To one decimal place.
    pub bytes_per_key: f64,
}

/// The CPU the spin pair burns, in cores busy over the spin rounds, against engramd's
/// without spin at the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpinFigures {
    pub spin_us: u64,
    pub server_cores: f64,
    pub load_cores: f64,
    pub server_cores_without_spin: f64,
}

/// The report of `inputs`; refuses a target or round that is not there.
pub fn report(inputs: &Inputs) -> Result<Report, ReportError> {
    let mut medians = Named::new();
    let mut runs = Named::new();
    for name in run_names() {
        let of_name = inputs.runs_of(&name)?;
        medians.push(name.clone(), Medians::of(of_name));
        runs.push(name, of_name.iter().map(|run| run.document.clone()).collect());
    }
    let mut ratios = Named::new();
    for (field, numerator, denominator, metric) in RATIOS {
        let pairs = inputs.runs_of(numerator)?.iter().zip(inputs.runs_of(denominator)?);
        let per_round = per_round_ratios(
            pairs.map(|(top, bottom)| (Some(metric.of(&top.figures)), Some(metric.of(&bottom.figures)))),
        );
        ratios.push(field, Spread::of(per_round).rounded(DECIMALS));
    }
    let server_work = server_work(inputs, &mut ratios)?;
    let (redis, redis_per_key) = memory_figures("redis", inputs.memory.redis)?;
    let (engram, engram_per_key) = memory_figures("engram", inputs.memory.engram)?;
    let memory_ratio = Spread::of(vec![ratio(Some(engram_per_key), Some(redis_per_key))]);
    ratios.push(MEMORY_RATIO, memory_ratio.rounded(DECIMALS));
    let settings = &inputs.settings;
    let machine = &inputs.machine;
    Ok(Report {
        machine: machine.description(),
        load_average_at_end: machine.load_average.clone(),
        started_at: machine.started_at.clone(),
        ended_at: machine.ended_at.clone(),
        rounds: settings.rounds,
        duration_secs: settings.duration_secs,
        warmup_secs: settings.warmup_secs,
        medians,
        runs,
        memory: PerServer { redis, engram },
        spin: spin_figures(inputs)?,
        server_work_per_request: server_work,
        ratios,
    })
}

/// The figures of one memory run, and its bytes per key unrounded (for the ratio).
fn memory_figures(server: &str, run: MemoryRun) -> Result<(MemoryFigures, f64), ReportError> {
    if run.keys == 0 {
        return Err(ReportError::NoKeys { server: server.into() });
    }
    let per_key = bytes_per_key(run.rss_before_kib, run.rss_after_kib, run.keys);
    let figures = MemoryFigures {
        rss_before_kib: run.rss_before_kib,
        rss_after_kib: run.rss_after_kib,
        keys: run.keys,
        bytes_per_key: round_to(per_key, BYTES_PER_KEY_DECIMALS),
    };
    Ok((figures, per_key))
}

/// Cores busy over all rounds of a run: `ticks` of each round summed, over its wall time.
fn cores_over_rounds(inputs: &Inputs, name: &str, ticks: fn(&Run) -> u64) -> Result<f64, ReportError> {
    let runs = inputs.runs_of(name)?;
    let total_ticks = runs.iter().map(ticks).sum();
    let wall_secs = runs.iter().map(|run| run.wall_secs).sum();
    Ok(round_to(
        cores(total_ticks, inputs.settings.ticks_per_second, wall_secs),
        DECIMALS,
    ))
}

fn spin_figures(inputs: &Inputs) -> Result<SpinFigures, ReportError> {
    Ok(SpinFigures {
        spin_us: inputs.settings.spin_us,
        server_cores: cores_over_rounds(inputs, SPIN_RUN, |run| run.server_ticks)?,
        load_cores: cores_over_rounds(inputs, SPIN_RUN, |run| run.load_ticks)?,
        server_cores_without_spin: cores_over_rounds(inputs, PLAIN_RUN, |run| run.server_ticks)?,
    })
}

/// Each server's work per request in every shape of [`WORK_SHAPES`]; pushes engram's
/// per-round ratios to Redis's onto `ratios`.
fn server_work(inputs: &Inputs, ratios: &mut Named<Spread>) -> Result<Named<PerServer<ServerWork>>, ReportError> {
    let ticks_per_second = inputs.settings.ticks_per_second;
    let cpu = |run: &Run| {
        Some(cpu_us_per_request(
            run.server_ticks,
            ticks_per_second,
            run.requests_served(),
        ))
    };
    let syscalls = |run: &Run| run.server_syscalls.map(|count| count as f64 / run.requests_served());
    let mut server_work = Named::new();
    for shape in WORK_SHAPES {
        let redis = inputs.runs_of(&format!("redis-{shape}"))?;
        let engram = inputs.runs_of(&format!("engram-{shape}"))?;
        let pairs = || engram.iter().zip(redis);
        let cpu_ratios = per_round_ratios(pairs().map(|(top, bottom)| (cpu(top), cpu(bottom))));
        let syscall_ratios = per_round_ratios(pairs().map(|(top, bottom)| (syscalls(top), syscalls(bottom))));
        ratios.push(
            format!("{shape}_cpu_engram_over_redis"),
            Spread::of(cpu_ratios).rounded(DECIMALS),
        );
        ratios.push(
            format!("{shape}_syscalls_engram_over_redis"),
            Spread::of(syscall_ratios).rounded(DECIMALS),
        );
        let work = PerServer {
            redis: server_work_of(redis, ticks_per_second),
            engram: server_work_of(engram, ticks_per_second),
        };
        server_work.push(shape, work);
    }
    Ok(server_work)
}

/// The server's CPU and system calls over every one of `runs` per request it served;
/// system calls only when every run counted them.
fn server_work_of(runs: &[Run], ticks_per_second: f64) -> ServerWork {
    let requests: f64 = runs.iter().map(Run::requests_served).sum();
    let per_request = |ticks: u64| round_to(cpu_us_per_request(ticks, ticks_per_second, requests), DECIMALS);
    let ticks: u64 = runs.iter().map(|run| run.server_ticks).sum();
    let system_ticks: u64 = runs.iter().map(|run| run.server_system_ticks).sum();
    let syscalls: Option<u64> = runs.iter().map(|run| run.server_syscalls).sum();
    ServerWork {
        cpu_us: per_request(ticks),
        user_us: per_request(ticks.saturating_sub(system_ticks)),
        system_us: per_request(system_ticks),
        syscalls: syscalls.map(|count| round_to(count as f64 / requests, DECIMALS)),
    }
}

#[cfg(test)]
pub(crate) mod tests;
