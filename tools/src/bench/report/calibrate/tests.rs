//! The calibration report from made-up runs whose figures are known, and from the work
//! directory the script writes.

use serde_json::json;

use super::*;
use crate::bench::report::calibrate::input;
use crate::bench::report::work_dir::WorkDir;

const TICKS_PER_SECOND: f64 = 100.0;

fn settings() -> Settings {
    Settings {
        rounds: 2,
        requests_unpipelined: 3_000,
        requests_pipelined: 20_000,
        keys: 1_000,
        value_bytes: 32,
        connections: 50,
        server_core: "0".into(),
        load_core: "1".into(),
        ticks_per_second: TICKS_PER_SECOND,
    }
}

fn machine() -> Machine {
    Machine {
        started_at: "2026-11-28T00:22:00Z".into(),
        ended_at: "2026-11-28T00:40:00Z".into(),
        uname: "Linux 6.18 x86_64".into(),
        cpus: 2,
        cpu_model: "AMD EPYC".into(),
        load_average: "1.40 1.45 1.50".into(),
    }
}

/// A run; engram-bench reports as many requests as redis-server counted.
fn run(tool: &str, shape: &str, round: usize, rate: Option<f64>, figures: (i64, f64, u64, u64)) -> Run {
    let (server_commands, wall_secs, server_ticks, load_ticks) = figures;
    let reported_requests = (tool == ENGRAM_BENCH).then_some(server_commands as u64);
    Run {
        tool: tool.into(),
        shape: shape.into(),
        round,
        figure: rate.map(|rate| Figure {
            rate,
            reported_requests,
        }),
        wall_secs,
        server_commands,
        server_ticks,
        load_ticks,
    }
}

fn runs() -> Vec<Run> {
    let steady = (10_000, 1.0, 80, 90);
    let mut runs = vec![
        // Pipelined GET: engram-bench 0.7 of redis-benchmark in round 1, 1.04 in round 2.
        run(
            REDIS_BENCHMARK,
            "get-pipelined",
            1,
            Some(160_000.0),
            (20_002, 0.125, 10, 12),
        ),
        run(
            ENGRAM_BENCH,
            "get-pipelined",
            1,
            Some(112_000.0),
            (20_000, 0.25, 24, 20),
        ),
        run(
            ENGRAM_BENCH,
            "get-pipelined",
            2,
            Some(104_000.0),
            (20_000, 0.25, 24, 16),
        ),
        run(
            REDIS_BENCHMARK,
            "get-pipelined",
            2,
            Some(100_000.0),
            (20_002, 0.25, 20, 22),
        ),
        // engram-bench's second SET run failed: kept, as null.
        run(ENGRAM_BENCH, "set-unpipelined", 2, None, (1_500, 0.5, 10, 5)),
    ];
    for round in 1..=2 {
        runs.push(run(REDIS_BENCHMARK, "get-unpipelined", round, Some(10_000.0), steady));
        runs.push(run(REDIS_BENCHMARK, "set-unpipelined", round, Some(10_000.0), steady));
        runs.push(run(REDIS_BENCHMARK, "set-pipelined", round, Some(10_000.0), steady));
        runs.push(run(ENGRAM_BENCH, "set-pipelined", round, Some(10_500.0), steady));
    }
    runs.push(run(ENGRAM_BENCH, "set-unpipelined", 1, Some(10_500.0), steady));
    let mut miscounted = run(ENGRAM_BENCH, "get-unpipelined", 1, Some(10_000.0), steady);
    miscounted.server_commands += 1;
    runs.push(miscounted);
    runs.push(run(ENGRAM_BENCH, "get-unpipelined", 2, Some(10_000.0), steady));
    runs
}

fn inputs() -> Inputs {
    Inputs {
        settings: settings(),
        machine: machine(),
        redis_version: "v=7.0.15".into(),
        runs: runs(),
        notes: Vec::new(),
    }
}

fn shape<'a>(report: &'a Report, name: &str) -> &'a ShapeSummary {
    report.shapes.get(name).unwrap()
}

#[test]
fn ratios_pair_the_tools_within_rounds() {
    let report = report(&inputs()).unwrap();
    let get = shape(&report, "get-pipelined");
    assert_eq!(get.ratios, [Some(0.7), Some(1.04)]);
    assert_eq!((get.ratio_min, get.ratio_max), (Some(0.7), Some(1.04)));
    assert!((get.ratio_median.unwrap() - 0.87).abs() < 1e-12);
    assert_eq!(get.within_ten_percent, Some(false));
    let set = shape(&report, "set-pipelined");
    assert_eq!((set.ratio_median, set.within_ten_percent), (Some(1.05), Some(true)));
}

#[test]
fn medians_are_over_the_runs_with_a_figure() {
    let report = report(&inputs()).unwrap();
    let get = shape(&report, "get-pipelined");
    let redis = &get.redis_benchmark;
    assert_eq!(redis.runs.iter().map(|run| run.round).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        (redis.runs[0].server_rate, redis.runs[1].server_rate),
        (160_016.0, 80_008.0)
    );
    assert_eq!((redis.runs[0].server_busy, redis.runs[0].load_busy), (0.8, 0.96));
    assert_eq!(
        (redis.rate_median, redis.server_rate_median),
        (Some(130_000.0), Some(120_012.0))
    );
    assert_eq!(redis.server_busy_median, Some(0.8));
    assert!((redis.load_busy_median.unwrap() - 0.92).abs() < 1e-12);
    // 100,000 against the 80,008 redis-server counted.
    assert!((redis.largest_deviation_from_server.unwrap() - 0.24987).abs() < 1e-5);
    let engram = &get.engram_bench;
    assert_eq!(engram.server_rate_median, Some(80_000.0));
    assert!((engram.largest_deviation_from_server.unwrap() - 0.4).abs() < 1e-12);
    // The failed run is listed, as null, and left out of every median and of the ratios.
    let set = shape(&report, "set-unpipelined");
    let failed = &set.engram_bench.runs[1];
    assert_eq!((failed.rate, failed.server_busy, failed.load_busy), (None, 0.2, 0.1));
    assert_eq!(set.engram_bench.server_rate_median, Some(10_000.0));
    assert_eq!(set.engram_bench.server_busy_median, Some(0.8));
    assert_eq!(set.engram_bench.load_busy_median, Some(0.9));
    assert_eq!(set.ratios, [Some(1.05), None]);
    assert_eq!(set.ratio_median, Some(1.05));
}

#[test]
fn counts_must_match_what_engram_bench_reported() {
    let report = report(&inputs()).unwrap();
    assert!(!shape(&report, "get-unpipelined").engram_bench_counts_match_server);
    assert!(shape(&report, "get-pipelined").engram_bench_counts_match_server);
    assert!(
        shape(&report, "set-unpipelined").engram_bench_counts_match_server,
        "a failed run has no count to match"
    );
}

#[test]
fn missing_or_repeated_runs_are_refused() {
    let mut missing = inputs();
    missing
        .runs
        .retain(|run| !(run.tool == REDIS_BENCHMARK && run.shape == "set-pipelined" && run.round == 2));
    let error = report(&missing).unwrap_err().to_string();
    assert_eq!(
        error,
        "missing run: redis-benchmark set-pipelined, round 2 of 2 (not run)"
    );
    let mut repeated = inputs();
    repeated.runs.push(repeated.runs[0].clone());
    assert!(report(&repeated).unwrap_err().to_string().contains("ran twice"));
}

#[test]
fn json_has_the_fields_of_the_report() {
    let json = serde_json::to_value(report(&inputs()).unwrap()).unwrap();
    assert_eq!(json["machine"], "Linux 6.18 x86_64, 2 CPUs, AMD EPYC");
    assert_eq!(json["redis_version"], "v=7.0.15");
    assert_eq!(json["requests"], json!({"unpipelined": 3000, "pipelined": 20000}));
    let shapes: Vec<&str> = json["shapes"].as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = SHAPES.to_vec();
    expected.sort_unstable();
    assert_eq!(shapes, expected);
    let get = &json["shapes"]["get-pipelined"];
    let mut fields: Vec<&str> = get.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "engram_bench",
            "engram_bench_counts_match_server",
            "ratio_max",
            "ratio_median",
            "ratio_min",
            "ratios",
            "redis_benchmark",
            "within_ten_percent"
        ]
    );
    assert_eq!(
        get["redis_benchmark"]["runs"][0],
        json!({"rate": 160000.0, "reported_requests": null, "tool": "redis-benchmark", "shape": "get-pipelined",
               "round": 1, "run_seconds": 0.125, "server_commands": 20002, "server_rate": 160016.0,
               "server_busy": 0.8, "load_busy": 0.96})
    );
    for field in [
        "rate_median",
        "server_rate_median",
        "server_busy_median",
        "load_busy_median",
        "largest_deviation_from_server",
    ] {
        assert!(get["engram_bench"][field].is_f64(), "{field}");
    }
}

#[test]
fn table_shows_each_shape() {
    let inputs = inputs();
    let report = report(&inputs).unwrap();
    let mut text = Vec::new();
    table::write(&mut text, &report, &inputs.settings).unwrap();
    let text = String::from_utf8(text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "engram-bench against redis-benchmark: redis-server v=7.0.15 on core 0, load on core 1, 50 connections, 2 interleaved rounds"
    );
    assert_eq!(
        &lines[3..],
        [
            "shape                           redis-benchmark                   engram-bench   ratio median (min-max)     ±10%    largest deviation",
            "get-unpipelined           10000 (10000) 80%/90%          10000 (10000) 80%/90%                  1 (1-1)      yes              0% / 0%",
            "get-pipelined           130000 (120012) 80%/92%         108000 (80000) 96%/72%          0.87 (0.7-1.04)       no            25% / 40%",
            "set-unpipelined           10000 (10000) 80%/90%          10500 (10000) 80%/90%         1.05 (1.05-1.05)      yes              0% / 5%",
            "set-pipelined             10000 (10000) 80%/90%          10500 (10000) 80%/90%         1.05 (1.05-1.05)      yes              0% / 5%",
        ]
    );
}

fn stat(utime: u64, cutime: u64) -> String {
    format!("77 (redis-server) S 1 77 77 0 -1 4194560 500 0 0 0 {utime} 0 {cutime} 0 20 0 1 0 100")
}

/// One round of every shape: redis-benchmark at 160,000/s (redis-server counting its
/// requests plus 2), engram-bench at 120,000/s, except where a test changes it.
fn write_work_dir(dir: &WorkDir) {
    dir.write(
        "facts",
        "started_at=2026-11-28T00:22:00Z\nrounds=1\nrequests_unpipelined=3000\nrequests_pipelined=20000\nkeys=1000\n\
         value_bytes=32\nconnections=50\nserver_core=0\nload_core=1\nticks_per_second=100\n\
         redis_version_line=Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1\n\
         ended_at=2026-11-28T00:40:00Z\nuname=Linux 6.18 x86_64\ncpus=2\ncpu_model_line=model name\t: AMD EPYC\n\
         loadavg=1.40 1.45 1.50 3/250 4242\n",
    );
    for shape in SHAPES {
        let command = shape.split('-').next().unwrap().to_uppercase();
        for (tool, commands) in [(REDIS_BENCHMARK, 20_002), (ENGRAM_BENCH, 20_000)] {
            // The INFO read before the run is counted in the one after it.
            let facts = format!(
                "commands_before=total_commands_processed:1000\r\nserver_stat_before={}\nload_stat_before={}\n\
                 started=100.0\nended=100.125\nexit_status=0\nserver_stat_after={}\nload_stat_after={}\n\
                 commands_after=total_commands_processed:{}\r\n",
                stat(500, 0),
                stat(0, 300),
                stat(510, 0),
                stat(0, 312),
                1001 + commands
            );
            dir.write(&format!("1-{shape}-{tool}.facts"), &facts);
        }
        dir.write(
            &format!("1-{shape}-{REDIS_BENCHMARK}.csv"),
            &format!("\"test\",\"rps\",\"avg_latency_ms\"\n\"{command}\",\"160000.00\",\"0.271\"\n"),
        );
        dir.write(
            &format!("1-{shape}-{ENGRAM_BENCH}.json"),
            r#"{"ops_per_sec": 120000.0, "requests": 20000, "errors": 0, "misses": 0, "seed": 1}"#,
        );
    }
}

#[test]
fn work_directory_reads_into_runs() {
    let dir = WorkDir::new("calibrate-read");
    write_work_dir(&dir);
    let inputs = input::read(dir.path()).unwrap();
    assert_eq!(inputs.redis_version, "v=7.0.15");
    assert!(inputs.notes.is_empty(), "{:?}", inputs.notes);
    assert_eq!(inputs.runs.len(), 8);
    let redis = &inputs.runs[0];
    assert_eq!(
        (redis.tool.as_str(), redis.shape.as_str()),
        (REDIS_BENCHMARK, "get-unpipelined")
    );
    assert_eq!(
        redis.figure,
        Some(Figure {
            rate: 160_000.0,
            reported_requests: None
        })
    );
    assert_eq!(
        (
            redis.server_commands,
            redis.wall_secs,
            redis.server_ticks,
            redis.load_ticks
        ),
        (20_002, 0.125, 10, 12)
    );
    let engram = &inputs.runs[1];
    assert_eq!(
        engram.figure,
        Some(Figure {
            rate: 120_000.0,
            reported_requests: Some(20_000)
        })
    );
    let report = report(&inputs).unwrap();
    let get = shape(&report, "get-unpipelined");
    assert_eq!(get.ratios, [Some(0.75)]);
    assert!(get.engram_bench_counts_match_server);
}

#[test]
fn runs_without_a_figure_are_kept_as_null_with_a_note() {
    let dir = WorkDir::new("calibrate-null");
    write_work_dir(&dir);
    dir.write(
        "1-get-pipelined-engram-bench.json",
        r#"{"ops_per_sec": 120000.0, "requests": 20000, "errors": 0, "misses": 7}"#,
    );
    let failed = std::fs::read_to_string(dir.path().join("1-set-pipelined-redis-benchmark.facts")).unwrap();
    dir.write(
        "1-set-pipelined-redis-benchmark.facts",
        &format!("{failed}exit_status=124\n"),
    );
    dir.remove("1-set-unpipelined-redis-benchmark.csv");
    let inputs = input::read(dir.path()).unwrap();
    assert_eq!(inputs.notes.len(), 3, "{:?}", inputs.notes);
    assert!(inputs.notes[0].contains("engram-bench get-pipelined gave no figure (0 errors, 7 misses)"));
    assert!(inputs.notes[1].contains("redis-benchmark set-unpipelined gave no figure (cannot read"));
    assert!(inputs.notes[2].contains("redis-benchmark set-pipelined gave no figure (exited with status 124)"));
    let report = report(&inputs).unwrap();
    assert_eq!(shape(&report, "get-pipelined").ratios, [None]);
    assert_eq!(shape(&report, "get-pipelined").within_ten_percent, None);
    dir.remove("1-set-pipelined-engram-bench.facts");
    let error = input::read(dir.path()).unwrap_err().to_string();
    assert!(
        error.starts_with("missing run: engram-bench set-pipelined, round 1 of 1 (no "),
        "{error}"
    );
}
