//! The Redis-protocol door as real Redis tools see it: redis-py (`tests/python/
//! redis_door.py`: every command the door serves, a blocking pop woken by another
//! client, a lock passed among 8 processes with increasing fences and an outside
//! witness, redis-cli started on a terminal) and redis-benchmark.
//!
//! The Python environment is made by `scripts/test.sh` (`ensure_python_env` in
//! `scripts/lib.sh`), which exports `ENGRAM_PYTHON`; without it the test looks for the
//! virtualenv that function makes under the target directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use engram_tests::binaries::profile_dir;
use engram_tests::cluster::{
    cluster_cli, start_node_with_resp, wait_for_members, wait_for_node_epoch, MEMBERSHIP_LIMIT,
};
use engram_tests::control::ControlPlane;
use engram_tests::processes::Scratch;
use engram_tests::routing::owner_address;
use engram_tests::run_async;
use engram_tests::server::{describe, next_loopback, run_bounded, EngramServer, ServerOptions};

const PYTHON_ENV: &str = "ENGRAM_PYTHON";
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);
const BENCHMARK_LIMIT: Duration = Duration::from_secs(120);

fn python() -> PathBuf {
    let python = std::env::var_os(PYTHON_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("..").join("python-venv").join("bin").join("python"));
    assert!(
        python.exists(),
        "no Python with redis-py at {}: run scripts/test.sh, or `source scripts/lib.sh && ensure_python_env`",
        python.display()
    );
    python
}

#[test]
fn redis_py_and_redis_cli_use_every_command_the_door_serves() {
    let server = EngramServer::start(ServerOptions::default().cores(2).resp());
    let door = server.resp().expect("the door's address");
    let scratch = Scratch::new("redis-door");
    let mut command = Command::new(python());
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/redis_door.py"))
        .arg(door.ip().to_string())
        .arg(door.port().to_string())
        .arg(scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = run_bounded(command, SCRIPT_LIMIT);
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn redis_benchmark_finishes_without_errors_at_pipeline_1_and_16() {
    let server = EngramServer::start(ServerOptions::default().cores(2).resp());
    let door = server.resp().expect("the door's address");
    for pipeline in ["1", "16"] {
        let mut command = Command::new("redis-benchmark");
        command.args([
            "-h",
            &door.ip().to_string(),
            "-p",
            &door.port().to_string(),
            "-t",
            "ping,set,get,incr,lpush,lpop,hset",
            "-n",
            "2000",
            "-c",
            "10",
            "-P",
            pipeline,
            "-q",
            "--csv",
        ]);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let output = run_bounded(command, BENCHMARK_LIMIT);
        let text = describe(&output);
        assert!(output.status.success(), "{text}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        // One CSV line per test after the header, each with its requests per second.
        let tests: Vec<&str> = stdout.lines().skip(1).collect();
        assert_eq!(tests.len(), 8, "PING_INLINE, PING_MBULK and six commands: {text}");
        assert!(!text.to_lowercase().contains("error"), "{text}");
    }
}

/// Three nodes, slots spread over them: a plain redis-py client given the first node's
/// door writes and reads keys of every node (the door forwards them to their owners).
#[test]
fn one_door_reaches_the_keys_of_every_node_of_a_cluster() {
    const NODES: usize = 3;
    const KEYS: usize = 60;
    let scratch = Scratch::new("redis-door-cluster");
    let control = ControlPlane::start(next_loopback(), scratch.path().join("control"));
    let nodes: Vec<EngramServer> = (0..NODES).map(|_| start_node_with_resp(&control)).collect();
    let map = run_async(Duration::from_secs(120), async {
        wait_for_members(&control, NODES, MEMBERSHIP_LIMIT).await;
        cluster_cli(&control, &["rebalance"]).await;
        let map = control.status().await.map;
        wait_for_node_epoch(&nodes[0], map.epoch, MEMBERSHIP_LIMIT).await;
        map
    });
    let keys: Vec<String> = (0..KEYS).map(|index| format!("door-key-{index}")).collect();
    let owners: std::collections::BTreeSet<_> = keys
        .iter()
        .map(|key| owner_address(&map, b"", key.as_bytes()).ip())
        .collect();
    assert_eq!(owners.len(), NODES, "the keys live on every node");
    let door = nodes[0].resp().expect("the door's address");
    let mut command = Command::new(python());
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/redis_cluster_door.py"))
        .arg(door.ip().to_string())
        .arg(door.port().to_string())
        .args(&keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = run_bounded(command, SCRIPT_LIMIT);
    assert!(output.status.success(), "{}", describe(&output));
}
