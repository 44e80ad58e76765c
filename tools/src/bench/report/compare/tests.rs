//! The compare report from made-up runs whose figures are known: medians, ratios paired
//! within rounds, CPU and memory arithmetic, refusals, the JSON and the table, and the
//! work directory the script writes.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::bench::report::compare::input;
use crate::bench::report::work_dir::WorkDir;

const TICKS_PER_SECOND: f64 = 100.0;
const WALL_SECS: f64 = 2.0;

/// Figures of one run: p50, p99, ops/s, server ticks, load ticks.
type Figures = (f64, f64, f64, u64, u64);

/// Two rounds; the second on a machine that got slower, and not by the same factor for
/// every target.
fn runs_by_name() -> Vec<(&'static str, [Figures; 2])> {
    let plain = (50.0, 100.0, 1_000.0, 10, 10);
    vec![
        ("echo-c1", [(10.0, 20.0, 1_000.0, 5, 5), (30.0, 60.0, 500.0, 5, 5)]),
        ("redis-c1", [(10.5, 22.0, 1_000.0, 5, 5), (33.0, 66.0, 500.0, 5, 5)]),
        ("engram-c1", [(11.0, 24.0, 1_000.0, 50, 5), (36.0, 60.0, 500.0, 38, 5)]),
        ("echo-c50p1", [plain; 2]),
        (
            "redis-c50p1",
            [(400.0, 900.0, 12_000.0, 10, 10), (500.0, 1_000.0, 10_000.0, 10, 10)],
        ),
        (
            "engram-c50p1",
            [(400.0, 990.0, 13_200.0, 10, 10), (500.0, 800.0, 9_000.0, 10, 10)],
        ),
        (
            "redis-c50p16",
            [(900.0, 2_000.0, 100_000.0, 30, 10), (900.0, 2_000.0, 80_000.0, 42, 10)],
        ),
        (
            "engram-c50p16",
            [(900.0, 2_200.0, 90_000.0, 40, 10), (900.0, 2_400.0, 64_000.0, 37, 10)],
        ),
        (
            "echo-spin-spin-c1",
            [(12.0, 20.0, 8_000.0, 190, 150), (12.0, 22.0, 8_000.0, 190, 170)],
        ),
        (
            "engram-spin-spin-c1",
            [(13.2, 30.0, 7_000.0, 190, 150), (12.0, 33.0, 7_000.0, 190, 170)],
        ),
    ]
}

fn run((p50, p99, ops, server_ticks, load_ticks): Figures) -> Run {
    // Three seconds measured after one of warm-up, as `requests` says.
    let document = json!({
        "target": "engram://127.0.0.1:7400",
        "ops_per_sec": ops,
        "latency_us": {"p50": p50, "p90": p50, "p99": p99, "p999": p99, "p9999": p99, "max": p99},
        "requests": ops as u64 * 3,
        "warmup_secs": 1.0,
        "seed": u64::MAX,
    });
    Run {
        figures: RunFigures::deserialize(&document).unwrap(),
        document,
        wall_secs: WALL_SECS,
        server_ticks,
        load_ticks,
        // A quarter of the server's CPU in the kernel; system calls that follow neither
        // its CPU nor its requests alone.
        server_system_ticks: server_ticks / 4,
        server_syscalls: Some(server_ticks * 1_000 + ops as u64),
    }
}

pub(crate) fn settings() -> Settings {
    Settings {
        rounds: 2,
        duration_secs: 1.0,
        warmup_secs: 1.0,
        keys: 10_000,
        value_bytes: 32,
        memory_keys: 20_000,
        spin_us: 50,
        server_core: "0".into(),
        load_core: "1".into(),
        ticks_per_second: TICKS_PER_SECOND,
    }
}

pub(crate) fn machine() -> Machine {
    Machine {
        started_at: "2026-11-28T00:18:00Z".into(),
        ended_at: "2026-11-28T00:31:07Z".into(),
        uname: "Linux 6.18 x86_64".into(),
        cpus: 2,
        cpu_model: "AMD EPYC".into(),
        load_average: "1.40 1.45 1.50".into(),
    }
}

pub(crate) fn inputs() -> Inputs {
    Inputs {
        settings: settings(),
        machine: machine(),
        runs: runs_by_name()
            .into_iter()
            .map(|(name, rounds)| (name.to_owned(), rounds.into_iter().map(run).collect()))
            .collect(),
        memory: PerServer {
            redis: MemoryRun {
                rss_before_kib: 12_000,
                rss_after_kib: 15_000,
                keys: 20_000,
            },
            engram: MemoryRun {
                rss_before_kib: 7_600,
                rss_after_kib: 11_000,
                keys: 20_000,
            },
        },
    }
}

fn spread(report: &Report, name: &str) -> (Option<f64>, Option<f64>, Option<f64>, Vec<Option<f64>>) {
    let spread = report.ratios.get(name).unwrap();
    (spread.median, spread.min, spread.max, spread.rounds.clone())
}

#[test]
fn medians_are_over_the_rounds() {
    let report = report(&inputs()).unwrap();
    let engram = report.medians.get("engram-c1").unwrap();
    assert_eq!(
        (engram.p50_us, engram.p99_us, engram.ops_per_sec),
        (Some(23.5), Some(42.0), Some(750.0))
    );
}

#[test]
fn ratios_are_medians_of_ratios_within_rounds() {
    let report = report(&inputs()).unwrap();
    // 11/10 and 36/30; the medians (23.5 over 20) would give 1.18.
    assert_eq!(
        spread(&report, "c1_p50_engram_over_floor"),
        (Some(1.15), Some(1.1), Some(1.2), vec![Some(1.1), Some(1.2)])
    );
    // 11/10.5 and 36/33, 1.0476 and 1.0909: the median is of the unrounded ratios.
    assert_eq!(
        spread(&report, "c1_p50_engram_over_redis"),
        (Some(1.07), Some(1.05), Some(1.09), vec![Some(1.05), Some(1.09)])
    );
    assert_eq!(
        spread(&report, "c1_p99_engram_over_redis"),
        (Some(1.0), Some(0.91), Some(1.09), vec![Some(1.09), Some(0.91)])
    );
    assert_eq!(
        spread(&report, "c50p1_ops_engram_over_redis").3,
        vec![Some(1.1), Some(0.9)]
    );
    assert_eq!(spread(&report, "c50p16_ops_engram_over_redis").0, Some(0.85));
    assert_eq!(
        spread(&report, "spin_c1_p50_engram_over_floor").3,
        vec![Some(1.1), Some(1.0)]
    );
    let names: Vec<&str> = report.ratios.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "c1_p50_engram_over_floor",
            "c1_p50_engram_over_redis",
            "c1_p99_engram_over_redis",
            "spin_c1_p50_engram_over_floor",
            "c50p1_ops_engram_over_redis",
            "c50p1_p99_engram_over_redis",
            "c50p16_ops_engram_over_redis",
            "c50p16_p99_engram_over_redis",
            "c50p1_cpu_engram_over_redis",
            "c50p1_syscalls_engram_over_redis",
            "c50p16_cpu_engram_over_redis",
            "c50p16_syscalls_engram_over_redis",
            "memory_per_key_engram_over_redis",
        ]
    );
}

#[test]
fn cpu_figures_sum_ticks_over_the_rounds() {
    let report = report(&inputs()).unwrap();
    // redis: 72 ticks (0.72 s) for 4 x 100,000 + 4 x 80,000 requests, warm-up included.
    // engram: 77 ticks for 4 x 90,000 + 4 x 64,000.
    assert_eq!(
        report.server_work_per_request.get("c50p16"),
        Some(&PerServer {
            // 72 ticks (55 user, 17 system) and 252,000 system calls for 720,000 requests.
            redis: ServerWork {
                cpu_us: 1.0,
                user_us: 0.76,
                system_us: 0.24,
                syscalls: Some(0.35),
            },
            // 77 ticks (58 user, 19 system) and 231,000 system calls for 616,000.
            engram: ServerWork {
                cpu_us: 1.25,
                user_us: 0.94,
                system_us: 0.31,
                syscalls: Some(0.38),
            },
        })
    );
    // Round 1: 40 ticks for 360,000 requests over 30 for 400,000; round 2: 37 for
    // 256,000 over 42 for 320,000. System calls: 130,000 over 130,000, then 101,000
    // over 122,000, for the same requests.
    assert_eq!(
        spread(&report, "c50p16_cpu_engram_over_redis"),
        (Some(1.29), Some(1.1), Some(1.48), vec![Some(1.48), Some(1.1)])
    );
    assert_eq!(
        spread(&report, "c50p16_syscalls_engram_over_redis"),
        (Some(1.07), Some(1.03), Some(1.11), vec![Some(1.11), Some(1.03)])
    );
    let c50p1 = report.server_work_per_request.get("c50p1").unwrap();
    assert_eq!((c50p1.redis.cpu_us, c50p1.engram.cpu_us), (2.27, 2.25));
    let mut uncounted = inputs();
    uncounted.runs.get_mut("redis-c50p1").unwrap()[1].server_syscalls = None;
    let partly = super::report(&uncounted).unwrap();
    let c50p1 = partly.server_work_per_request.get("c50p1").unwrap();
    assert_eq!((c50p1.redis.syscalls, c50p1.engram.syscalls), (None, Some(0.48)));
    let ratios = spread(&partly, "c50p1_syscalls_engram_over_redis").3;
    assert_eq!(
        (ratios.len(), ratios[1]),
        (2, None),
        "a round without a count has no ratio"
    );
    // 380 server ticks and 320 load ticks over 4 s; engramd without spin 88 ticks.
    assert_eq!(
        report.spin,
        SpinFigures {
            spin_us: 50,
            server_cores: 0.95,
            load_cores: 0.8,
            server_cores_without_spin: 0.22
        }
    );
}

#[test]
fn memory_per_key_and_its_ratio() {
    let report = report(&inputs()).unwrap();
    // 3,000 KiB over 20,000 keys: 153.6 bytes; 3,400 KiB: 174.08.
    assert_eq!(report.memory.redis.bytes_per_key, 153.6);
    assert_eq!(report.memory.engram.bytes_per_key, 174.1);
    assert_eq!(
        spread(&report, MEMORY_RATIO),
        (Some(1.13), Some(1.13), Some(1.13), vec![Some(1.13)])
    );
    let mut empty = inputs();
    empty.memory.engram.keys = 0;
    let error = report_error(&empty);
    assert!(error.contains("memory run of engram stored no keys"), "{error}");
}

fn report_error(inputs: &Inputs) -> String {
    report(inputs).unwrap_err().to_string()
}

#[test]
fn missing_rounds_and_targets_are_refused() {
    let mut short = inputs();
    short.runs.get_mut("redis-c50p16").unwrap().pop();
    let error = report_error(&short);
    assert!(
        error.contains("missing run: redis-c50p16 (1 runs for 2 rounds)"),
        "{error}"
    );
    let mut absent = inputs();
    absent.runs.remove("echo-spin-spin-c1");
    let error = report_error(&absent);
    assert!(error.contains("missing run: echo-spin-spin-c1"), "{error}");
    let mut extra = inputs();
    extra.settings.rounds = 3;
    assert!(report_error(&extra).contains("2 runs for 3 rounds"));
}

#[test]
fn json_has_the_fields_of_the_report() {
    let text = serde_json::to_string(&report(&inputs()).unwrap()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "machine",
        "load_average_at_end",
        "started_at",
        "ended_at",
        "rounds",
        "duration_secs",
        "warmup_secs",
        "medians",
        "runs",
        "memory",
        "spin",
        "server_work_per_request",
        "ratios",
    ];
    expected.sort_unstable();
    assert_eq!(fields, expected);
    assert_eq!(json["machine"], "Linux 6.18 x86_64, 2 CPUs, AMD EPYC");
    assert_eq!(
        json["medians"]["engram-c1"],
        json!({"p50_us": 23.5, "p99_us": 42.0, "ops_per_sec": 750.0})
    );
    assert_eq!(json["runs"]["echo-c1"].as_array().unwrap().len(), 2);
    assert_eq!(json["runs"]["echo-c1"][1]["latency_us"]["p50"], 30.0);
    assert_eq!(json["runs"]["echo-c1"][0]["seed"], u64::MAX, "seeds keep every digit");
    assert_eq!(
        json["memory"]["engram"],
        json!({"rss_before_kib": 7600, "rss_after_kib": 11000, "keys": 20000, "bytes_per_key": 174.1})
    );
    assert_eq!(
        json["ratios"]["c1_p50_engram_over_floor"],
        json!({"median": 1.15, "min": 1.1, "max": 1.2, "rounds": [1.1, 1.2]})
    );
    let run_order: Vec<String> = run_names().map(|name| format!("\"{name}\":{{")).collect();
    let positions: Vec<usize> = run_order.iter().map(|name| text.find(name.as_str()).unwrap()).collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "medians in table order: {text}"
    );
}

#[test]
fn table_shows_medians_ratios_and_footer() {
    let inputs = inputs();
    let report = report(&inputs).unwrap();
    let mut text = Vec::new();
    table::write(&mut text, &report, &inputs.settings, &inputs.machine).unwrap();
    let text = String::from_utf8(text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "");
    assert_eq!(
        lines[1],
        "2026-11-28T00:18:00Z to 00:31:07Z Linux 6.18 x86_64, 2 CPUs (AMD EPYC), load average 1.40 1.45 1.50 at the end"
    );
    assert_eq!(
        lines[2],
        "servers on core 0, load on core 1; GET of 32-byte values over 10000 keys;"
    );
    assert_eq!(
        lines[3],
        "2 interleaved rounds of 1s per target and shape after 1s warm-up: medians, and ratios"
    );
    let expected_rows = [
        "shape                                  tcp-echo        redis       engram       engram/floor       engram/redis",
        "1 connection p50 (us)                      20.0         21.8         23.5     1.15 (1.1-1.2)   1.07 (1.05-1.09)",
        "1 connection p99 (us)                      40.0         44.0         42.0                  -      1 (0.91-1.09)",
        "50 conn, pipeline 1 throughput           1.0k/s      11.0k/s      11.1k/s                  -        1 (0.9-1.1)",
        "50 conn, pipeline 1 p99 (us)              100.0        950.0        895.0                  -     0.95 (0.8-1.1)",
        "50 conn, pipeline 16 throughput               -      90.0k/s      77.0k/s                  -     0.85 (0.8-0.9)",
        "50 conn, pipeline 16 p99 (us)                 -       2000.0       2300.0                  -     1.15 (1.1-1.2)",
        "spin 50 us, 1 connection p50 (us)          12.0            -         12.6       1.05 (1-1.1)                  -",
        "spin 50 us, 1 connection p99 (us)          21.0            -         31.5                  -                  -",
        "RSS per key (20000 keys, bytes)               -        153.6        174.1                  -               1.13",
    ];
    assert_eq!(&lines[6..16], &expected_rows);
    assert_eq!(
        lines[17],
        "server work per request (warm-up estimated at the measured rate), 50 conn, pipeline 1: \
         redis 2.27 us CPU (1.82 user, 0.45 system), 0.48 syscalls; engram 2.25 us CPU (1.8 user, 0.45 system), \
         0.48 syscalls; engram over redis CPU 1.01 (0.91-1.11), syscalls 1.01 (0.96-1.06)"
    );
    assert_eq!(
        lines[18],
        "server work per request (warm-up estimated at the measured rate), 50 conn, pipeline 16: \
         redis 1 us CPU (0.76 user, 0.24 system), 0.35 syscalls; engram 1.25 us CPU (0.94 user, 0.31 system), \
         0.38 syscalls; engram over redis CPU 1.29 (1.1-1.48), syscalls 1.07 (1.03-1.11)"
    );
    assert_eq!(
        lines[19],
        "spin CPU while measuring (server --spin-us 50, client --client-spin-us 50): engramd 0.95 cores, engram-bench 0.8 cores; without spin, 1 connection: engramd 0.22 cores"
    );
    assert_eq!(
        lines[20],
        "memory: redis 20000 keys, RSS 12000 -> 15000 KiB; engram 20000 keys, RSS 7600 -> 11000 KiB"
    );
}

/// A `/proc/PID/stat` line with these CPU ticks (utime, stime, cutime, cstime).
fn stat(utime: u64, stime: u64, cutime: u64, cstime: u64) -> String {
    format!("4242 (engram bench) S 1 4242 4242 0 -1 4194560 500 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 100")
}

/// The work directory the script would leave for [`inputs`].
fn write_work_dir(dir: &WorkDir) {
    dir.write(
        "facts",
        "started_at=2026-11-28T00:18:00Z\nrounds=2\nduration=1\nwarmup=1\nkeys=10000\nvalue_bytes=32\n\
         memory_keys=20000\nspin_us=50\nserver_core=0\nload_core=1\nticks_per_second=100\n\
         ended_at=2026-11-28T00:31:07Z\nuname=Linux 6.18 x86_64\ncpus=2\n\
         cpu_model_line=model name\t: AMD EPYC\nloadavg=1.40 1.45 1.50 3/250 4242\n",
    );
    let inputs = inputs();
    for (name, runs) in &inputs.runs {
        for (index, run) in runs.iter().enumerate() {
            let round = index + 1;
            dir.write(&format!("{name}-{round}.json"), &run.document.to_string());
            // The server's ticks split between user and system; the load's likewise.
            let user_ticks = run.server_ticks - run.server_system_ticks;
            let mut facts = format!(
                "server_stat_before={}\nload_stat_before={}\nstarted=1000.5\nended=1002.5\nserver_stat_after={}\nload_stat_after={}\n",
                stat(100, 20, 0, 0),
                stat(1, 1, 300, 30),
                stat(100 + user_ticks, 20 + run.server_system_ticks, 0, 0),
                stat(1, 1, 300 + run.load_ticks - 2, 32),
            );
            if let Some(count) = run.server_syscalls {
                facts.push_str(&format!("server_syscalls={count}\n"));
            }
            dir.write(&format!("{name}-{round}.facts"), &facts);
        }
    }
    dir.write(
        "memory-redis.facts",
        "rss_before=VmRSS:\t   12000 kB\nrss_after=VmRSS:\t   15000 kB\n",
    );
    dir.write("memory-redis-keys.json", "20000\n");
    dir.write(
        "memory-engram.facts",
        "rss_before=VmRSS:\t    7600 kB\nrss_after=VmRSS:\t   11000 kB\n",
    );
    dir.write(
        "memory-engram-keys.json",
        r#"{"node": 1, "shards": [{"shard": 0, "keys": 12000}, {"shard": 1, "keys": 8000}]}"#,
    );
}

#[test]
fn work_directory_reads_into_the_same_report() {
    let dir = WorkDir::new("compare-read");
    write_work_dir(&dir);
    let read = input::read(dir.path()).unwrap();
    assert_eq!(read.settings, settings());
    assert_eq!(read.machine, machine());
    assert_eq!(
        read.memory,
        inputs().memory,
        "engram's keys are the sum over its shards"
    );
    type Counted = (u64, Option<u64>);
    let figures = |inputs: &Inputs| -> BTreeMap<String, Vec<(u64, u64, f64, Counted)>> {
        let of_runs = |runs: &Vec<Run>| {
            runs.iter()
                .map(|run| {
                    let counted = (run.server_system_ticks, run.server_syscalls);
                    (run.server_ticks, run.load_ticks, run.wall_secs, counted)
                })
                .collect()
        };
        inputs
            .runs
            .iter()
            .map(|(name, runs)| (name.clone(), of_runs(runs)))
            .collect()
    };
    assert_eq!(figures(&read), figures(&inputs()));
    let from_dir = serde_json::to_value(report(&read).unwrap()).unwrap();
    let made = serde_json::to_value(report(&inputs()).unwrap()).unwrap();
    assert_eq!(from_dir, made);
}

#[test]
fn a_run_whose_system_calls_were_not_counted_reads_as_such() {
    let dir = WorkDir::new("compare-uncounted");
    write_work_dir(&dir);
    let counted = std::fs::read_to_string(dir.path().join("redis-c50p1-2.facts")).unwrap();
    let uncounted: String = counted
        .lines()
        .filter(|line| !line.starts_with("server_syscalls="))
        .map(|line| format!("{line}\n"))
        .collect();
    dir.write("redis-c50p1-2.facts", &uncounted);
    let read = input::read(dir.path()).unwrap();
    assert_eq!(read.runs["redis-c50p1"][1].server_syscalls, None);
    assert_eq!(read.runs["redis-c50p1"][0].server_syscalls, Some(22_000));
    let report = report(&read).unwrap();
    let mut text = Vec::new();
    table::write(&mut text, &report, &read.settings, &read.machine).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("redis 2.27 us CPU (1.82 user, 0.45 system), - syscalls"),
        "{text}"
    );
}

#[test]
fn work_directory_without_a_round_is_refused() {
    let dir = WorkDir::new("compare-missing");
    write_work_dir(&dir);
    dir.remove("engram-c50p16-2.json");
    let error = input::read(dir.path()).unwrap_err().to_string();
    assert!(
        error.starts_with("missing run: engram-c50p16, round 2 of 2 (no "),
        "{error}"
    );
    assert!(error.contains("engram-c50p16-2.json"), "{error}");
    let dir = WorkDir::new("compare-backwards");
    write_work_dir(&dir);
    dir.write(
        "echo-c1-1.facts",
        &format!(
            "server_stat_before={}\nserver_stat_after={}\nload_stat_before={0}\nload_stat_after={0}\nstarted=1\nended=2\n",
            stat(10, 0, 0, 0),
            stat(5, 0, 0, 0)
        ),
    );
    let error = input::read(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("server_stat_after is below server_stat_before"),
        "{error}"
    );
}
