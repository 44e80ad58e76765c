//! The table `tools/compare.sh` prints: one row per shape and figure, a column per
//! target and per ratio, then the CPU and memory figures behind them.

use std::io::{self, Write};

use crate::bench::report::compare::{Medians, Report, ServerWork, Settings, MEMORY_RATIO};
use crate::bench::report::facts::Machine;
use crate::bench::report::figures::Spread;

/// `-` where a figure is missing or does not apply.
const ABSENT: &str = "-";

pub fn write(out: &mut impl Write, report: &Report, settings: &Settings, machine: &Machine) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{} to {} {}, {} CPUs ({}), load average {} at the end",
        machine.started_at,
        machine.ended_time_of_day(),
        machine.uname,
        machine.cpus,
        machine.cpu_model,
        machine.load_average
    )?;
    writeln!(
        out,
        "servers on core {}, load on core {}; GET of {}-byte values over {} keys;",
        settings.server_core, settings.load_core, settings.value_bytes, settings.keys
    )?;
    writeln!(
        out,
        "{} interleaved rounds of {}s per target and shape after {}s warm-up: medians, and ratios",
        settings.rounds, settings.duration_secs, settings.warmup_secs
    )?;
    writeln!(
        out,
        "as the median (min-max) of the per-round ratios (not the ratio of the medians)"
    )?;
    writeln!(out)?;
    for cells in rows(report, settings) {
        row(out, &cells)?;
    }
    writeln!(out)?;
    write_footer(out, report, settings)
}

fn row(out: &mut impl Write, cells: &[String; 6]) -> io::Result<()> {
    let [shape, echo, redis, engram, over_floor, over_redis] = cells;
    writeln!(
        out,
        "{shape:<34} {echo:>12} {redis:>12} {engram:>12} {over_floor:>18} {over_redis:>18}"
    )
}

fn rows(report: &Report, settings: &Settings) -> Vec<[String; 6]> {
    let median = |run: &str, figure: fn(&Medians) -> Option<f64>| report.medians.get(run).and_then(figure);
    let us = |run: &str, figure: fn(&Medians) -> Option<f64>| one_decimal(median(run, figure));
    let kops = |run: &str| thousands_per_second(median(run, |medians| medians.ops_per_sec));
    let p50 = |medians: &Medians| medians.p50_us;
    let p99 = |medians: &Medians| medians.p99_us;
    let ratio = |name: &str| ratio_cell(report.ratios.get(name));
    let absent = || ABSENT.to_owned();
    let spin = settings.spin_us;
    vec![
        ["shape", "tcp-echo", "redis", "engram", "engram/floor", "engram/redis"].map(String::from),
        [
            "1 connection p50 (us)".into(),
            us("echo-c1", p50),
            us("redis-c1", p50),
            us("engram-c1", p50),
            ratio("c1_p50_engram_over_floor"),
            ratio("c1_p50_engram_over_redis"),
        ],
        [
            "1 connection p99 (us)".into(),
            us("echo-c1", p99),
            us("redis-c1", p99),
            us("engram-c1", p99),
            absent(),
            ratio("c1_p99_engram_over_redis"),
        ],
        [
            "50 conn, pipeline 1 throughput".into(),
            kops("echo-c50p1"),
            kops("redis-c50p1"),
            kops("engram-c50p1"),
            absent(),
            ratio("c50p1_ops_engram_over_redis"),
        ],
        [
            "50 conn, pipeline 1 p99 (us)".into(),
            us("echo-c50p1", p99),
            us("redis-c50p1", p99),
            us("engram-c50p1", p99),
            absent(),
            ratio("c50p1_p99_engram_over_redis"),
        ],
        [
            "50 conn, pipeline 16 throughput".into(),
            absent(),
            kops("redis-c50p16"),
            kops("engram-c50p16"),
            absent(),
            ratio("c50p16_ops_engram_over_redis"),
        ],
        [
            "50 conn, pipeline 16 p99 (us)".into(),
            absent(),
            us("redis-c50p16", p99),
            us("engram-c50p16", p99),
            absent(),
            ratio("c50p16_p99_engram_over_redis"),
        ],
        [
            format!("spin {spin} us, 1 connection p50 (us)"),
            us("echo-spin-spin-c1", p50),
            absent(),
            us("engram-spin-spin-c1", p50),
            ratio("spin_c1_p50_engram_over_floor"),
            absent(),
        ],
        [
            format!("spin {spin} us, 1 connection p99 (us)"),
            us("echo-spin-spin-c1", p99),
            absent(),
            us("engram-spin-spin-c1", p99),
            absent(),
            absent(),
        ],
        [
            format!("RSS per key ({} keys, bytes)", settings.memory_keys),
            absent(),
            report.memory.redis.bytes_per_key.to_string(),
            report.memory.engram.bytes_per_key.to_string(),
            absent(),
            number(report.ratios.get(MEMORY_RATIO).and_then(|spread| spread.median)),
        ],
    ]
}

fn write_footer(out: &mut impl Write, report: &Report, settings: &Settings) -> io::Result<()> {
    for (shape, work) in report.server_work_per_request.iter() {
        let ratio = |figure: &str| ratio_cell(report.ratios.get(&format!("{shape}_{figure}_engram_over_redis")));
        writeln!(
            out,
            "server work per request (warm-up estimated at the measured rate), {}: redis {}; engram {}; engram over redis CPU {}, syscalls {}",
            shape_name(shape),
            work_cell(&work.redis),
            work_cell(&work.engram),
            ratio("cpu"),
            ratio("syscalls")
        )?;
    }
    let spin = &report.spin;
    writeln!(
        out,
        "spin CPU while measuring (server --spin-us {0}, client --client-spin-us {0}): engramd {1} cores, engram-bench {2} cores; without spin, 1 connection: engramd {3} cores",
        settings.spin_us, spin.server_cores, spin.load_cores, spin.server_cores_without_spin
    )?;
    let (redis, engram) = (&report.memory.redis, &report.memory.engram);
    writeln!(
        out,
        "memory: redis {} keys, RSS {} -> {} KiB; engram {} keys, RSS {} -> {} KiB",
        redis.keys, redis.rss_before_kib, redis.rss_after_kib, engram.keys, engram.rss_before_kib, engram.rss_after_kib
    )
}

/// `2.1 us CPU (1.2 user, 0.9 system), 3.4 syscalls`: warm-up requests estimated at the
/// measured rate.
fn work_cell(work: &ServerWork) -> String {
    format!(
        "{} us CPU ({} user, {} system), {} syscalls",
        work.cpu_us,
        work.user_us,
        work.system_us,
        number(work.syscalls)
    )
}

/// `50 conn, pipeline 16` for `c50p16`, as the rows name it.
fn shape_name(shape: &str) -> String {
    match shape.strip_prefix("c50p") {
        Some(pipeline) => format!("50 conn, pipeline {pipeline}"),
        None => shape.to_owned(),
    }
}

/// `median (min-max)` of a ratio.
fn ratio_cell(spread: Option<&Spread>) -> String {
    match spread {
        Some(spread) => format!(
            "{} ({}-{})",
            number(spread.median),
            number(spread.min),
            number(spread.max)
        ),
        None => ABSENT.to_owned(),
    }
}

/// A figure as the report holds it (already rounded): `1.1`, `1`, `0.95`.
fn number(value: Option<f64>) -> String {
    value.map_or_else(|| ABSENT.to_owned(), |value| value.to_string())
}

fn one_decimal(value: Option<f64>) -> String {
    value.map_or_else(|| ABSENT.to_owned(), |value| format!("{value:.1}"))
}

fn thousands_per_second(value: Option<f64>) -> String {
    value.map_or_else(|| ABSENT.to_owned(), |value| format!("{:.1}k/s", value / 1000.0))
}
