//! Reads the work directory `tools/calibrate.sh` leaves:
//! - `facts`: the tunables (`rounds`, `requests_unpipelined`, `requests_pipelined`,
//!   `keys`, `value_bytes`, `connections`, `server_core`, `load_core`),
//!   `ticks_per_second`, `redis_version_line` (`redis-server --version`) and the machine
//!   (see [`Machine::from_facts`]);
//! - per run, `ROUND-SHAPE-TOOL.facts`: `exit_status` of the tool, `started` and `ended`
//!   (clock readings around it), `server_stat_before`/`_after` (redis-server's
//!   `/proc/PID/stat` line), `load_stat_before`/`_after` (the script's own, whose
//!   children's CPU is the tool's) and `commands_before`/`_after` (`INFO`'s
//!   `total_commands_processed:` line); and the tool's output, `ROUND-SHAPE-TOOL.csv`
//!   (redis-benchmark `--csv`) or `ROUND-SHAPE-TOOL.json` (engram-bench `--json`).

use std::path::Path;

use serde::Deserialize;

use crate::bench::report::calibrate::{Figure, Inputs, Run, Settings, ENGRAM_BENCH, REDIS_BENCHMARK, SHAPES};
use crate::bench::report::error::ReportError;
use crate::bench::report::facts::{
    children_cpu_ticks, counter_line, process_cpu_ticks, read_json, read_text, Facts, Machine,
};

const STAT_LINE: &str = "a /proc/PID/stat line";
const COMMANDS_COUNTER: &str = "total_commands_processed";

pub fn read(dir: &Path) -> Result<Inputs, ReportError> {
    let facts = Facts::read(&dir.join("facts"))?;
    let settings = settings(&facts)?;
    let redis_version = facts.read_with("redis_version_line", "a redis-server --version line", |line| {
        line.split_whitespace().nth(2).map(str::to_owned)
    })?;
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    for round in 1..=settings.rounds {
        for shape in SHAPES {
            for tool in [REDIS_BENCHMARK, ENGRAM_BENCH] {
                let (run, note) = read_run(dir, tool, shape, round, settings.rounds)?;
                runs.push(run);
                notes.extend(note);
            }
        }
    }
    Ok(Inputs {
        machine: Machine::from_facts(&facts)?,
        settings,
        redis_version,
        runs,
        notes,
    })
}

fn settings(facts: &Facts) -> Result<Settings, ReportError> {
    Ok(Settings {
        rounds: facts.read_with("rounds", "a positive count", |value| {
            value.parse().ok().filter(|&rounds| rounds > 0)
        })?,
        requests_unpipelined: facts.number("requests_unpipelined", "a count")?,
        requests_pipelined: facts.number("requests_pipelined", "a count")?,
        keys: facts.number("keys", "a count")?,
        value_bytes: facts.number("value_bytes", "a count")?,
        connections: facts.number("connections", "a count")?,
        server_core: facts.text("server_core")?.to_owned(),
        load_core: facts.text("load_core")?.to_owned(),
        ticks_per_second: facts.read_with("ticks_per_second", "a positive rate", |value| {
            value.parse().ok().filter(|&rate: &f64| rate > 0.0)
        })?,
    })
}

/// One run, and a note if it gave no figure.
fn read_run(
    dir: &Path,
    tool: &str,
    shape: &str,
    round: usize,
    rounds: usize,
) -> Result<(Run, Option<String>), ReportError> {
    let stem = format!("{round}-{shape}-{tool}");
    let facts_path = dir.join(format!("{stem}.facts"));
    if !facts_path.exists() {
        return Err(ReportError::MissingRun {
            run: format!("{tool} {shape}, round {round} of {rounds}"),
            reason: format!("no {}", facts_path.display()),
        });
    }
    let facts = Facts::read(&facts_path)?;
    let figure = figure(dir, &stem, tool, shape, &facts)?;
    let note = figure
        .as_ref()
        .err()
        .map(|reason| format!("round {round}: {tool} {shape} gave no figure ({reason}); kept as null"));
    let commands = facts.delta("commands_before", "commands_after", "an INFO counter line", |line| {
        counter_line(line, COMMANDS_COUNTER)
    })?;
    let run = Run {
        tool: tool.to_owned(),
        shape: shape.to_owned(),
        round,
        figure: figure.ok(),
        wall_secs: facts.seconds_between("started", "ended")?,
        // The INFO that read the count before the run is in the count after it.
        server_commands: i64::try_from(commands).unwrap_or(i64::MAX) - 1,
        server_ticks: facts.delta("server_stat_before", "server_stat_after", STAT_LINE, process_cpu_ticks)?,
        load_ticks: facts.delta("load_stat_before", "load_stat_after", STAT_LINE, children_cpu_ticks)?,
    };
    Ok((run, note))
}

/// The tool's own figure, or why there is none (a failed run is kept, as null, so that
/// one bad run does not lose the others).
fn figure(
    dir: &Path,
    stem: &str,
    tool: &str,
    shape: &str,
    facts: &Facts,
) -> Result<Result<Figure, String>, ReportError> {
    let status: i32 = facts.number("exit_status", "an exit status")?;
    if status != 0 {
        return Ok(Err(format!("exited with status {status}")));
    }
    let figure = if tool == REDIS_BENCHMARK {
        redis_benchmark_figure(&dir.join(format!("{stem}.csv")), shape)
    } else {
        engram_bench_figure(&dir.join(format!("{stem}.json")))
    };
    Ok(figure.and_then(|figure| {
        if figure.rate.is_finite() && figure.rate > 0.0 {
            Ok(figure)
        } else {
            Err(format!("a rate of {}", figure.rate))
        }
    }))
}

/// The rate of the command's row of redis-benchmark's `--csv` output, whose rows are
/// `"TEST","RPS",...`.
fn redis_benchmark_figure(path: &Path, shape: &str) -> Result<Figure, String> {
    let text = read_text(path).map_err(|error| error.to_string())?;
    let test = shape.split('-').next().unwrap_or(shape).to_uppercase();
    let rate = text
        .lines()
        .map(|line| line.split('"').collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&test.as_str()))
        .and_then(|fields| fields.get(3)?.parse().ok())
        .ok_or_else(|| format!("no rate of {test} in {}", path.display()))?;
    Ok(Figure {
        rate,
        reported_requests: None,
    })
}

#[derive(Deserialize)]
struct EngramBenchResult {
    ops_per_sec: f64,
    requests: u64,
    errors: u64,
    misses: u64,
}

/// engram-bench's rate, refused if any request failed or missed: both tools' GETs read
/// keys the prefill wrote, so a miss means the two did not measure the same thing.
fn engram_bench_figure(path: &Path) -> Result<Figure, String> {
    let result: EngramBenchResult = read_json(path).map_err(|error| error.to_string())?;
    if result.errors != 0 || result.misses != 0 {
        return Err(format!("{} errors, {} misses", result.errors, result.misses));
    }
    Ok(Figure {
        rate: result.ops_per_sec,
        reported_requests: Some(result.requests),
    })
}
