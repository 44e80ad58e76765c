//! `engram-bench` end to end against in-process servers: the echo server, and a tiny
//! RESP server that answers GET/SET/INCR, so the drivers run over real sockets.

use std::collections::HashMap;

use clap::Parser;
use engram_tools::bench::cli::BenchCli;
use engram_tools::bench::echo;
use engram_tools::bench::runner::run;
use engram_tools::bench::settings::Settings;
use engram_tools::bench::stats::Summary;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn bench(arguments: &[&str]) -> Summary {
    let cli = BenchCli::try_parse_from(std::iter::once("engram-bench").chain(arguments.iter().copied())).unwrap();
    run(&Settings::new(cli.load).unwrap()).await.unwrap()
}

#[tokio::test]
async fn echo_target_round_trips_every_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("tcp-echo://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(echo::serve(listener));
    let summary = bench(&[
        "--target",
        &target,
        "--connections",
        "3",
        "--requests",
        "301",
        "--value-bytes",
        "100",
    ])
    .await;
    assert_eq!((summary.requests, summary.errors, summary.misses), (301, 0, 0));
    assert_eq!(summary.workload, "echo");
    assert!(summary.ops_per_sec > 0.0);
    let latency = summary.latency_us;
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    server.abort();
}

#[tokio::test]
async fn echo_target_refuses_pipelining() {
    let cli =
        BenchCli::try_parse_from(["engram-bench", "--target", "tcp-echo://127.0.0.1:1", "--pipeline", "2"]).unwrap();
    assert!(Settings::new(cli.load).is_err());
}

#[tokio::test]
async fn redis_driver_pipelines_prefills_and_counts_misses_and_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("redis://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(fake_redis(listener));

    // Nothing written yet: every GET misses, and misses are successes.
    let cold = bench(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--pipeline",
        "16",
        "--requests",
        "100",
        "--keys",
        "50",
    ])
    .await;
    assert_eq!((cold.requests, cold.errors, cold.misses), (100, 0, 100));

    // After a prefill every GET hits.
    let warm = bench(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--pipeline",
        "7",
        "--requests",
        "99",
        "--keys",
        "50",
        "--prefill",
    ])
    .await;
    assert_eq!((warm.requests, warm.errors, warm.misses), (99, 0, 0));

    let mixed = bench(&[
        "--target",
        &target,
        "--workload",
        "mixed",
        "--ratio",
        "1:1",
        "--connections",
        "1",
        "--requests",
        "10",
        "--keys",
        "1000",
        "--key-pattern",
        "sequential",
    ])
    .await;
    assert_eq!((mixed.requests, mixed.errors), (10, 0));
    assert_eq!(mixed.ratio.as_deref(), Some("1:1"));

    // INCR on a key holding a non-number is an error reply: counted, and the run goes on.
    let incr = bench(&[
        "--target",
        &target,
        "--workload",
        "incr",
        "--connections",
        "2",
        "--requests",
        "40",
        "--keys",
        "4",
        "--key-pattern",
        "sequential",
    ])
    .await;
    assert_eq!(incr.requests, 40);
    // Each connection walks the 4 keys five times, meeting counter:0 five times.
    assert_eq!(incr.errors, 10, "the fake refuses counter:0");
    assert!(incr.first_error.unwrap().contains("ERR not an integer"));
    server.abort();
}

#[tokio::test]
async fn warmup_is_excluded_and_timed_runs_stop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("tcp-echo://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(echo::serve(listener));
    let summary = bench(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
    ])
    .await;
    assert!(summary.requests > 0);
    assert!(summary.duration_secs >= 0.2, "{}", summary.duration_secs);
    let paced = bench(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--requests",
        "20",
        "--rate",
        "2000",
    ])
    .await;
    assert_eq!(paced.requests, 20);
    server.abort();
}

/// A RESP server holding values in a map: GET, SET and INCR, with INCR of `counter:0`
/// refused as a non-integer, so error replies can be tested.
async fn fake_redis(listener: TcpListener) {
    let values = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<Vec<u8>, Vec<u8>>::new()));
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(serve_resp(stream, values.clone()));
    }
}

async fn serve_resp(mut stream: TcpStream, values: std::sync::Arc<std::sync::Mutex<HashMap<Vec<u8>, Vec<u8>>>>) {
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        input.extend_from_slice(&chunk[..read]);
        let mut output = Vec::new();
        while let Some((parts, used)) = parse_command(&input) {
            input.drain(..used);
            let mut values = values.lock().unwrap();
            match parts[0].as_slice() {
                b"GET" => match values.get(&parts[1]) {
                    Some(value) => {
                        output.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
                        output.extend_from_slice(value);
                        output.extend_from_slice(b"\r\n");
                    }
                    None => output.extend_from_slice(b"$-1\r\n"),
                },
                b"SET" => {
                    values.insert(parts[1].clone(), parts[2].clone());
                    output.extend_from_slice(b"+OK\r\n");
                }
                b"INCR" if parts[1] == b"counter:0" => output.extend_from_slice(b"-ERR not an integer\r\n"),
                b"INCR" => output.extend_from_slice(b":1\r\n"),
                _ => output.extend_from_slice(b"-ERR unknown command\r\n"),
            }
        }
        if stream.write_all(&output).await.is_err() {
            return;
        }
    }
}

/// One complete `*N\r\n($L\r\nDATA\r\n)*N` command, or `None` when more input is needed.
fn parse_command(input: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(input: &[u8], at: usize) -> Option<(usize, usize)> {
        let end = at + input.get(at..)?.windows(2).position(|pair| pair == b"\r\n")?;
        let number = std::str::from_utf8(&input[at + 1..end]).ok()?.parse().ok()?;
        Some((number, end + 2))
    }
    let (count, mut at) = line(input, 0)?;
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let (length, data) = line(input, at)?;
        parts.push(input.get(data..data + length)?.to_vec());
        at = data + length + 2;
        if input.len() < at {
            return None;
        }
    }
    Some((parts, at))
}
