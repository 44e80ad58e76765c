//! Reads the work directory `tools/compare.sh` leaves:
//! - `facts`: the tunables (`rounds`, `duration`, `warmup`, `keys`, `value_bytes`,
//!   `memory_keys`, `spin_us`, `server_core`, `load_core`), `ticks_per_second`, and the
//!   machine (see [`Machine::from_facts`]);
//! - per run, `TARGET-SHAPE-ROUND.json` (engram-bench's `--json`) and
//!   `TARGET-SHAPE-ROUND.facts`: `started` and `ended` (clock readings around
//!   engram-bench), `server_stat_before`/`_after` (the server's `/proc/PID/stat` line) and
//!   `load_stat_before`/`_after` (the script's own, whose children's CPU is the load's),
//!   and `server_syscalls` (the system calls the server's threads entered over the run,
//!   as `perf stat` counted them; absent where perf could not count);
//! - per memory server (`redis`, `engram`), `memory-SERVER.facts` (`rss_before`,
//!   `rss_after`: the `VmRSS:` lines of `/proc/PID/status`) and `memory-SERVER-keys.json`:
//!   the keys it holds, as `redis-cli dbsize` or `engram info --json` printed them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::bench::report::compare::{run_names, Inputs, MemoryRun, PerServer, Run, RunFigures, Settings};
use crate::bench::report::error::ReportError;
use crate::bench::report::facts::{
    children_cpu_ticks, process_cpu_ticks, process_system_ticks, read_json, vm_rss_kib, Facts, Machine,
};

const STAT_LINE: &str = "a /proc/PID/stat line";

pub fn read(dir: &Path) -> Result<Inputs, ReportError> {
    let facts = Facts::read(&dir.join("facts"))?;
    let settings = settings(&facts)?;
    let mut runs = BTreeMap::new();
    for name in run_names() {
        let rounds = (1..=settings.rounds)
            .map(|round| read_run(dir, &name, round, settings.rounds))
            .collect::<Result<Vec<_>, _>>()?;
        runs.insert(name, rounds);
    }
    Ok(Inputs {
        machine: Machine::from_facts(&facts)?,
        settings,
        runs,
        memory: PerServer {
            redis: read_memory(dir, "redis")?,
            engram: read_memory(dir, "engram")?,
        },
    })
}

fn settings(facts: &Facts) -> Result<Settings, ReportError> {
    Ok(Settings {
        rounds: facts.read_with("rounds", "a positive count", |value| {
            value.parse().ok().filter(|&rounds| rounds > 0)
        })?,
        duration_secs: facts.number("duration", "a number of seconds")?,
        warmup_secs: facts.number("warmup", "a number of seconds")?,
        keys: facts.number("keys", "a count")?,
        value_bytes: facts.number("value_bytes", "a count")?,
        memory_keys: facts.number("memory_keys", "a count")?,
        spin_us: facts.number("spin_us", "a number of microseconds")?,
        server_core: facts.text("server_core")?.to_owned(),
        load_core: facts.text("load_core")?.to_owned(),
        ticks_per_second: facts.read_with("ticks_per_second", "a positive rate", |value| {
            value.parse().ok().filter(|&rate: &f64| rate > 0.0)
        })?,
    })
}

fn read_run(dir: &Path, name: &str, round: usize, rounds: usize) -> Result<Run, ReportError> {
    let result_path = dir.join(format!("{name}-{round}.json"));
    let facts_path = dir.join(format!("{name}-{round}.facts"));
    for path in [&result_path, &facts_path] {
        if !path.exists() {
            return Err(ReportError::MissingRun {
                run: format!("{name}, round {round} of {rounds}"),
                reason: format!("no {}", path.display()),
            });
        }
    }
    let document: Value = read_json(&result_path)?;
    let figures = RunFigures::deserialize(&document).map_err(|source| ReportError::Json {
        path: result_path.display().to_string(),
        source,
    })?;
    let facts = Facts::read(&facts_path)?;
    Ok(Run {
        document,
        figures,
        wall_secs: facts.seconds_between("started", "ended")?,
        server_ticks: facts.delta("server_stat_before", "server_stat_after", STAT_LINE, process_cpu_ticks)?,
        load_ticks: facts.delta("load_stat_before", "load_stat_after", STAT_LINE, children_cpu_ticks)?,
        server_system_ticks: facts.delta(
            "server_stat_before",
            "server_stat_after",
            STAT_LINE,
            process_system_ticks,
        )?,
        server_syscalls: match facts.optional_text("server_syscalls") {
            None => None,
            Some(_) => Some(facts.number("server_syscalls", "a count of system calls")?),
        },
    })
}

/// The key count a server gave: Redis's `DBSIZE` (a number) or Engram's `info --json`.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredKeys {
    Count(u64),
    Info { shards: Vec<ShardKeys> },
}

#[derive(Deserialize)]
struct ShardKeys {
    keys: u64,
}

impl StoredKeys {
    fn count(&self) -> u64 {
        match self {
            StoredKeys::Count(count) => *count,
            StoredKeys::Info { shards } => shards.iter().map(|shard| shard.keys).sum(),
        }
    }
}

fn read_memory(dir: &Path, server: &str) -> Result<MemoryRun, ReportError> {
    let facts = Facts::read(&dir.join(format!("memory-{server}.facts")))?;
    let stored: StoredKeys = read_json(&dir.join(format!("memory-{server}-keys.json")))?;
    Ok(MemoryRun {
        rss_before_kib: facts.read_with("rss_before", "a VmRSS: line", vm_rss_kib)?,
        rss_after_kib: facts.read_with("rss_after", "a VmRSS: line", vm_rss_kib)?,
        keys: stored.count(),
    })
}
