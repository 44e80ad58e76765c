//! The `engram` CLI as separate OS processes: concurrent increments from many processes,
//! the documented exit codes, and `info --json`.

use std::process::Output;
use std::time::Duration;

use engram_tests::server::describe;
use engram_tests::{poll_until, unique_key, EngramServer, ServerOptions};

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the CLI and requires exit code 0; returns stdout.
fn ok(server: &EngramServer, arguments: &[&str]) -> String {
    let output = server.cli(arguments);
    assert_eq!(
        output.status.code(),
        Some(0),
        "engram {arguments:?}: {}",
        describe(&output)
    );
    stdout_of(&output)
}

#[test]
fn eight_processes_increment_one_counter_to_exactly_200() {
    const PROCESSES: usize = 8;
    const INCREMENTS: usize = 25;
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let key = unique_key("cli-counter");
    let values: Vec<i64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PROCESSES)
            .map(|_| {
                scope.spawn(|| {
                    (0..INCREMENTS)
                        .map(|_| {
                            let printed = ok(&server, &["incr", &key]);
                            printed
                                .trim()
                                .parse::<i64>()
                                .unwrap_or_else(|_| panic!("incr printed {printed:?}, not a number"))
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                let values = worker.join().expect("worker thread did not panic");
                assert!(
                    values.windows(2).all(|pair| pair[0] < pair[1]),
                    "one worker's sequential increments must increase: {values:?}"
                );
                values
            })
            .collect()
    });
    let mut sorted = values;
    sorted.sort_unstable();
    let total = (PROCESSES * INCREMENTS) as i64;
    assert_eq!(
        sorted,
        (1..=total).collect::<Vec<_>>(),
        "each increment printed a distinct value"
    );
    assert_eq!(ok(&server, &["counter", "get", &key]), format!("{total}\n"));
}

#[test]
fn set_get_del_round_trip_and_exit_codes() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let key = unique_key("cli-bytes");

    let version: u64 = ok(&server, &["set", &key, "hello world"])
        .trim()
        .parse()
        .expect("set prints a version");
    assert!(version > 0);
    assert_eq!(ok(&server, &["get", &key]), "hello world\n");

    // --if-absent on an existing key: exit 2, nothing written.
    let refused = server.cli(&["set", &key, "other", "--if-absent"]);
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert_eq!(ok(&server, &["get", &key]), "hello world\n");

    // --if-version: the wrong version exits 2, the right one writes a newer version.
    let wrong = server.cli(&["set", &key, "v2", "--if-version", &(version + 1000).to_string()]);
    assert_eq!(wrong.status.code(), Some(2), "{}", describe(&wrong));
    let newer: u64 = ok(&server, &["set", &key, "v2", "--if-version", &version.to_string()])
        .trim()
        .parse()
        .expect("set prints a version");
    assert!(newer > version);
    assert_eq!(ok(&server, &["get", &key]), "v2\n");

    assert_eq!(ok(&server, &["del", &key]), "1\n");
    assert_eq!(ok(&server, &["del", &key]), "0\n");

    // A missing key: exit 1 and nothing on stdout.
    let missing = server.cli(&["get", &key]);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert!(missing.stdout.is_empty(), "{}", describe(&missing));

    // Counter compare-and-set through the CLI: 2 when not swapped.
    let counter = unique_key("cli-cas");
    assert_eq!(ok(&server, &["counter", "set", &counter, "-7"]), "-7\n");
    assert_eq!(ok(&server, &["counter", "cas", &counter, "-7", "3"]), "3\n");
    let not_swapped = server.cli(&["counter", "cas", &counter, "-7", "4"]);
    assert_eq!(not_swapped.status.code(), Some(2), "{}", describe(&not_swapped));
    assert_eq!(
        stdout_of(&not_swapped),
        "3\n",
        "cas prints the current value even when not swapped"
    );
    assert_eq!(ok(&server, &["incr", &counter, "-5"]), "-2\n");

    // A bytes key read as a counter is an error: exit 3.
    ok(&server, &["set", &key, "text"]);
    let wrong_type = server.cli(&["incr", &key]);
    assert_eq!(wrong_type.status.code(), Some(3), "{}", describe(&wrong_type));
    assert!(
        String::from_utf8_lossy(&wrong_type.stderr).contains("WrongType"),
        "{}",
        describe(&wrong_type)
    );

    assert!(ok(&server, &["ping"]).starts_with("PONG"));
}

#[test]
fn unreachable_server_exits_3() {
    // A port nobody listens on: bind one, note it, close it.
    let address = {
        let listener = std::net::TcpListener::bind((engram_tests::server::next_loopback(), 0)).expect("bind");
        listener.local_addr().expect("local address").to_string()
    };
    let output = engram_tests::server::run_cli(&["--addr", &address, "--timeout-ms", "2000", "ping"]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

fn total_keys(info: &serde_json::Value) -> u64 {
    info["shards"]
        .as_array()
        .expect("shards array")
        .iter()
        .map(|shard| shard["keys"].as_u64().expect("keys is a number"))
        .sum()
}

fn info_json(server: &EngramServer) -> serde_json::Value {
    let text = ok(server, &["info", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("info --json is not JSON ({error}): {text}"))
}

#[test]
fn info_json_reports_shards_and_key_counts() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let before = info_json(&server);
    assert_eq!(before["node_id"].as_u64(), Some(server.node_id()));
    let shards = before["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2);
    let addresses: Vec<String> = server.shards().iter().map(ToString::to_string).collect();
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(shard["shard_id"].as_u64(), Some(index as u64));
        assert_eq!(shard["address"].as_str(), Some(addresses[index].as_str()));
    }
    let keys_before = total_keys(&before);

    const WRITES: u64 = 10;
    for n in 0..WRITES {
        ok(&server, &["set", &unique_key(&format!("info-{n}")), "x"]);
    }
    // Figures are published by each shard after its writes (or on its next maintenance
    // tick), so poll rather than expect them in the very next answer.
    let after = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let info = info_json(&server);
        (total_keys(&info) >= keys_before + WRITES).then_some(info)
    });
    let after = after.unwrap_or_else(|| panic!("key count did not rise by {WRITES}: {}", info_json(&server)));
    assert_eq!(total_keys(&after), keys_before + WRITES);
    assert!(after["uptime_ms"].as_u64() >= before["uptime_ms"].as_u64());
}
