//! Measurements, ignored by default: failover times, write latency with a backup, and
//! restoring redundancy for a gigabyte.

use super::*;

/// Kills of the failover measurement (half with the node restarted at once).
const FAILOVER_KILLS_ENV: &str = "ENGRAM_FAILOVER_KILLS";
const FAILOVER_KILLS_DEFAULT: u64 = 6;

fn median_and_max(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

/// How long writes to a killed node's slots stall: from the `kill -9` until a write to
/// every one of its slots (one key each, sent at once) was acknowledged, for a node
/// that stays down (the control plane learns of the death from the liveness timeout)
/// and one restarted at once (it learns from the new process's join). Prints the
/// median and the largest of each; asserts only that every write succeeds.
#[test]
#[ignore = "a measurement: prints failover times (cargo nextest run --run-ignored only)"]
fn failover_time() {
    const WRITE_LIMIT: Duration = Duration::from_secs(60);
    let kills = env_or(FAILOVER_KILLS_ENV, FAILOVER_KILLS_DEFAULT) as usize;
    let mut cluster = FailoverCluster::start("failover-time", 3, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(60 + 120 * kills as u64), async {
        cluster.spread().await;
        let client = cluster.client().await;
        let probes = key_per_slot();
        let mut stayed_down = Vec::new();
        let mut restarted_at_once = Vec::new();
        for round in 0..kills {
            let status = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
            assert!(redundancy_gap(&status, REPLICAS).is_none());
            let victim = next_victim(&cluster, &status.map, round);
            let slots = owned_slots(&status.map, cluster.nodes[victim].node_id);
            let writes = slots
                .iter()
                .map(|&slot| {
                    let add = CounterCommand::Add {
                        key: probes[slot as usize].clone().into_bytes(),
                        delta: 1,
                    };
                    (Command::from(add), true)
                })
                .collect();
            let at_once = round % 2 == 1;
            cluster.kill(victim);
            let killed = Instant::now();
            if at_once {
                cluster.restart(victim);
            }
            let results = client.batch_with(writes, Some(WRITE_LIMIT)).await;
            let stall = killed.elapsed();
            if let Some(error) = results.iter().find_map(|result| result.as_ref().err()) {
                panic!("a write to the killed node's slots failed {stall:?} after the kill: {error}");
            }
            if !at_once {
                cluster.restart(victim);
            }
            println!(
                "kill {}: writes to {} slots stalled {:.2} s (node {})",
                round + 1,
                slots.len(),
                stall.as_secs_f64(),
                if at_once {
                    "restarted at once"
                } else {
                    "down until then"
                }
            );
            match at_once {
                true => restarted_at_once.push(stall),
                false => stayed_down.push(stall),
            }
        }
        for (what, times) in [
            ("down until the writes went through", &mut stayed_down),
            ("restarted at once", &mut restarted_at_once),
        ] {
            if times.is_empty() {
                continue;
            }
            let (median, max) = median_and_max(times);
            println!(
                "failover with the node {what}: median {:.2} s, max {:.2} s over {} kills \
                 (liveness timeout {LIVENESS_TIMEOUT_MS} ms)",
                median.as_secs_f64(),
                max.as_secs_f64(),
                times.len()
            );
        }
    });
}

/// Latency of writes with and without a backup: `engram-bench --workload set` against a
/// three-node cluster with `--replicas 0` and `--replicas 1`, at 1 and 50 connections.
/// Prints the tool's percentile lines; asserts nothing about them (a debug build on a
/// shared machine measures little but the ratio).
#[test]
#[ignore = "a measurement: prints write latencies (cargo nextest run --run-ignored only)"]
fn write_latency_with_and_without_a_backup() {
    const BENCH_SECONDS: &str = "5";
    const BENCH_LIMIT: Duration = Duration::from_secs(60);
    for replicas in [0, 1] {
        let cluster = FailoverCluster::start("failover-latency", 3, replicas, LIVENESS_TIMEOUT_MS);
        run_async(Duration::from_secs(240), async {
            cluster.spread().await;
        });
        let target = format!("engram://{}", cluster.nodes[0].server().front());
        for connections in ["1", "50"] {
            let stdout = run_bench(
                &[
                    "--target",
                    &target,
                    "--workload",
                    "set",
                    "--keys",
                    "10000",
                    "--connections",
                    connections,
                    "--duration",
                    BENCH_SECONDS,
                    "--warmup",
                    "1",
                ],
                BENCH_LIMIT,
            );
            for line in stdout
                .lines()
                .filter(|line| line.contains("p50") || line.contains("ops/s"))
            {
                println!("replicas {replicas}, {connections} connections: {}", line.trim());
            }
        }
    }
}

/// How long a new backup takes to get a gigabyte: two nodes with `--replicas 1` hold
/// `ENGRAM_RESTORE_KEYS` (default 1,000,000) values of 1,000 bytes, written through
/// `engram-bench --workload get --prefill` (which writes every key once); one node is
/// killed and restarted at once, its slots go to the other node, and the restarted
/// process is filled with a copy of everything. Prints the time from the kill until the
/// map names a backup for every slot again; asserts nothing about it.
#[test]
#[ignore = "a measurement: run with --run-ignored only --no-capture"]
fn restoring_redundancy_for_a_gigabyte() {
    const VALUE_BYTES: &str = "1000";
    const LOAD_LIMIT: Duration = Duration::from_secs(900);
    const RESTORE_LIMIT: Duration = Duration::from_secs(900);
    let keys = env_or("ENGRAM_RESTORE_KEYS", 1_000_000);
    let mut cluster = FailoverCluster::start("failover-restore", 2, REPLICAS, LIVENESS_TIMEOUT_MS);
    run_async(Duration::from_secs(240), async {
        cluster.spread().await;
        wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
    });
    let target = format!("engram://{}", cluster.nodes[0].server().front());
    let loaded = Instant::now();
    let keys_argument = keys.to_string();
    run_bench(
        &[
            "--target",
            &target,
            "--workload",
            "get",
            "--prefill",
            "--duration",
            "1",
            "--keys",
            &keys_argument,
            "--value-bytes",
            VALUE_BYTES,
            "--connections",
            "32",
        ],
        LOAD_LIMIT,
    );
    println!(
        "loaded {keys} keys of {VALUE_BYTES} bytes in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );
    run_async(RESTORE_LIMIT + Duration::from_secs(60), async {
        let status = cluster.control.status().await;
        let held: u64 = status
            .nodes
            .iter()
            .flat_map(|node| &node.shards)
            .map(|shard| shard.keys)
            .sum();
        println!("keys held by the two nodes before the kill (primaries and backups): {held}");
        cluster.kill(1);
        let killed = Instant::now();
        cluster.restart(1);
        // The restarted process first becomes a member again; only then can it be filled.
        tokio::time::sleep(Duration::from_secs(2)).await;
        wait_for_redundancy(&cluster.control, REPLICAS, RESTORE_LIMIT).await;
        println!(
            "redundancy restored {:.1} s after the kill ({keys} keys of {VALUE_BYTES} bytes)",
            killed.elapsed().as_secs_f64()
        );
    });
}

/// Runs `engram-bench` with `arguments` within `limit`; its standard output.
fn run_bench(arguments: &[&str], limit: Duration) -> String {
    let mut command = engram_tests::processes::scrubbed(engram_tests::binaries::binary("engram-bench"));
    command
        .args(arguments)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = engram_tests::server::run_bounded(command, limit);
    assert!(
        output.status.success(),
        "engram-bench failed: {}",
        engram_tests::server::describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
