//! Waits as long as a function lives: a queue pop, a barrier wait and a lock acquire that
//! may wait ten minutes (past the one-minute call timeout, within `WAIT_MS_MAX`, fifteen)
//! are accepted by the client, the CLI and the server, parked, and released early by a
//! push, the last party or a release, so the tests themselves take milliseconds.
//!
//! Each step waits, before it acts, until the server reports its waiter parked
//! (`engram_parked_requests` on the metrics port, polled with a bound): so the push
//! provably found the pop waiting (it answers length 0, the value handed over), the last
//! party provably arrived last, and no step depends on how fast anything runs.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use engram_client::Error;
use engram_proto::limits::{CALL_TIMEOUT_MS_MAX, WAIT_MS_MAX};
use engram_tests::server::{describe, next_loopback};
use engram_tests::{poll_until, run_async, unique_key, EngramServer, ServerOptions, STEP_TIMEOUT};

/// The waits asked for: ten minutes.
const WAIT: Duration = Duration::from_secs(10 * 60);
const WAIT_MS: &str = "600000";
/// Bound on a whole test body.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// An engramd with its metrics port, to see when a request is parked.
struct Node {
    server: EngramServer,
    metrics: SocketAddr,
}

impl Node {
    fn start() -> Node {
        let bind = next_loopback();
        let port = engram_tests::server::free_port(bind);
        let server = EngramServer::start(ServerOptions::default().cores(2).bind(bind).metrics_port(port));
        Node {
            server,
            metrics: SocketAddr::from((bind, port)),
        }
    }

    /// Requests parked on all shards, as the metrics report them (refreshed by each
    /// shard within its housekeeping period).
    fn parked(&self) -> u64 {
        let (_, _, body) = engram_tests::http_get(self.metrics, "/metrics", STEP_TIMEOUT);
        body.lines()
            .filter(|line| line.starts_with("engram_parked_requests{"))
            .map(|line| {
                let value = line.rsplit(' ').next().unwrap_or_default();
                value
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("gauge value in {line:?}"))
            })
            .sum()
    }

    /// Waits until exactly `count` requests are parked.
    fn until_parked(&self, count: u64) {
        poll_until(STEP_TIMEOUT, Duration::from_millis(10), || {
            (self.parked() == count).then_some(())
        })
        .unwrap_or_else(|| panic!("the server never reported {count} parked requests within {STEP_TIMEOUT:?}"));
    }
}

/// `until_parked` from async code, off the runtime's threads.
async fn until_parked(node: &Arc<Node>, count: u64) {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || node.until_parked(count))
        .await
        .expect("polling the metrics did not panic");
}

/// Requires exit code 0; returns stdout.
fn ok(output: &Output, what: &str) -> String {
    assert_eq!(output.status.code(), Some(0), "{what}: {}", describe(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_async_client_waits_ten_minutes_and_is_released_early() {
    assert!(WAIT > Duration::from_millis(CALL_TIMEOUT_MS_MAX) && WAIT <= Duration::from_millis(WAIT_MS_MAX));
    // Shared, so blocking tasks can poll its metrics while the test body awaits; the
    // last clone dropped stops the server.
    let node = Arc::new(Node::start());
    run_async(TEST_LIMIT, async move {
        let client = node.server.client().await;

        // A pop parked for up to ten minutes gets the next push.
        until_parked(&node, 0).await;
        let queue = client.queue(unique_key("jobs"));
        let popping = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop_front(Some(WAIT)).await }
        });
        until_parked(&node, 1).await;
        assert_eq!(
            queue.push_back("job").await.expect("push"),
            0,
            "the pushed value went straight to the waiting pop"
        );
        assert_eq!(popping.await.unwrap().expect("pop"), Some(b"job".to_vec()));

        // A barrier party waiting up to ten minutes passes when the last one arrives.
        until_parked(&node, 0).await;
        let name = unique_key("phase");
        let first = client.barrier(name.clone(), 2);
        let waiting = tokio::spawn(async move { first.wait(WAIT).await });
        until_parked(&node, 1).await;
        let last = client.barrier(name, 2).wait(WAIT).await.expect("last party");
        let first = waiting.await.unwrap().expect("first party");
        assert_eq!((first.generation, first.arrival_index), (0, 0));
        assert_eq!((last.generation, last.arrival_index), (0, 1));

        // An acquire waiting up to ten minutes gets the lock when its holder releases it.
        until_parked(&node, 0).await;
        let lock = client.lock(unique_key("db"));
        let held = lock.acquire("holder", WAIT, Duration::ZERO).await.expect("free lock");
        let acquiring = tokio::spawn({
            let lock = lock.clone();
            async move { lock.acquire("next", WAIT, WAIT).await }
        });
        until_parked(&node, 1).await;
        let held_fence = held.fence();
        held.release().await.expect("release");
        let next = acquiring.await.unwrap().expect("the waiting acquire");
        assert!(next.fence() > held_fence, "{} after {held_fence}", next.fence());
        next.release().await.expect("release");

        // Past the longest wait the client refuses before sending, naming the limit.
        let too_long = queue.pop_front(Some(Duration::from_millis(WAIT_MS_MAX + 1))).await;
        assert!(
            matches!(&too_long, Err(error @ Error::WaitTooLong { .. }) if error.to_string().contains("wait_ms_max")),
            "{too_long:?}"
        );
    });
}

#[test]
fn the_cli_waits_ten_minutes_and_is_released_early() {
    let node = Node::start();
    let server = &node.server;

    // `queue pop --timeout-ms 600000` is released by a push.
    node.until_parked(0);
    let queue = unique_key("cli-jobs");
    std::thread::scope(|scope| {
        let pop = scope.spawn(|| server.cli(&["--timeout-ms", WAIT_MS, "queue", "pop", &queue]));
        node.until_parked(1);
        let length = ok(&server.cli(&["queue", "push", &queue, "job"]), "queue push");
        assert_eq!(length.trim(), "0", "the pushed value went straight to the waiting pop");
        let pop = pop.join().expect("the pop's thread");
        assert_eq!(ok(&pop, "queue pop"), "job\n");
    });

    // `barrier wait --timeout-ms 600000` passes when the last party arrives.
    node.until_parked(0);
    let barrier = unique_key("cli-phase");
    let wait = [
        "--timeout-ms",
        WAIT_MS,
        "barrier",
        "wait",
        barrier.as_str(),
        "--parties",
        "2",
    ];
    std::thread::scope(|scope| {
        let first = scope.spawn(|| server.cli(&wait));
        node.until_parked(1);
        assert_eq!(ok(&server.cli(&wait), "last barrier wait").trim(), "0 1");
        let first = first.join().expect("the first party's thread");
        assert_eq!(ok(&first, "first barrier wait").trim(), "0 0");
    });

    // `lock acquire --wait-ms 600000` gets the lock when its holder releases it.
    node.until_parked(0);
    let lock = unique_key("cli-db");
    let acquire = |owner: &'static str, wait_ms: &'static str| {
        let lock = lock.clone();
        move || {
            server.cli(&[
                "lock",
                "acquire",
                &lock,
                "--owner",
                owner,
                "--lease-ms",
                "60000",
                "--wait-ms",
                wait_ms,
            ])
        }
    };
    let held: u64 = ok(&acquire("holder", "0")(), "lock acquire")
        .trim()
        .parse()
        .expect("a fence");
    std::thread::scope(|scope| {
        let next = scope.spawn(acquire("next", WAIT_MS));
        node.until_parked(1);
        let token = held.to_string();
        ok(
            &server.cli(&["lock", "release", &lock, "--owner", "holder", "--token", &token]),
            "lock release",
        );
        let next = next.join().expect("the waiting acquire's thread");
        let fence: u64 = ok(&next, "waiting lock acquire").trim().parse().expect("a fence");
        assert!(fence > held, "{fence} after {held}");
    });

    // Past the longest wait the CLI refuses, naming the limit.
    let too_long = (WAIT_MS_MAX + 1).to_string();
    let refused = server.cli(&["--timeout-ms", &too_long, "queue", "pop", &queue]);
    assert_eq!(refused.status.code(), Some(3), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("wait_ms_max"),
        "{}",
        describe(&refused)
    );
}
