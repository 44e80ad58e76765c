//! Many concurrent increments of one counter through one shared client: none lost, none
//! applied twice, and every increment gets a distinct value.

use std::time::Duration;

use engram_tests::{run_async, unique_key, EngramServer, ServerOptions};

/// Runs `tasks` tasks of `increments` sequential `incr()` each on one counter, checks each
/// task saw strictly increasing values, and that together they saw exactly 1..=total.
async fn contend(counter: engram_client::Counter, tasks: usize, increments: usize) {
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(increments);
            for _ in 0..increments {
                let value = counter
                    .incr()
                    .await
                    .unwrap_or_else(|error| panic!("task {task}: incr: {error}"));
                if let Some(&last) = seen.last() {
                    assert!(value > last, "task {task}: incr returned {value} after {last}");
                }
                seen.push(value);
            }
            seen
        }));
    }
    let mut all = Vec::with_capacity(tasks * increments);
    for handle in handles {
        all.extend(handle.await.expect("task did not panic"));
    }
    let total = (tasks * increments) as i64;
    all.sort_unstable();
    let expected: Vec<i64> = (1..=total).collect();
    assert!(
        all == expected,
        "the {total} increments did not return exactly 1..={total} (first mismatch at index {:?})",
        all.iter().zip(&expected).position(|(a, b)| a != b)
    );
    assert_eq!(counter.get().await.expect("counter get"), total);
}

#[test]
fn sixteen_tasks_through_one_direct_client_count_exactly() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(90), async {
        let client = server.client().await;
        contend(client.counter(unique_key("contention")), 16, 10_000).await;
    });
}

#[test]
fn tasks_through_the_front_port_count_exactly() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        let client = server
            .client_builder()
            .direct(false)
            .connect()
            .await
            .expect("front-port client connects");
        // Several keys, so some of them live on the shard that did not accept the
        // connection and the front port has to forward.
        let mut keys = Vec::new();
        for shard in 0..server.shards().len() {
            let map = engram_tests::fetch_slot_map(server.front());
            keys.push(engram_tests::key_on_shard(
                &map,
                b"default",
                shard,
                &unique_key("front"),
            ));
        }
        let runs: Vec<_> = keys
            .into_iter()
            .map(|key| tokio::spawn(contend(client.counter(key), 4, 1_000)))
            .collect();
        for run in runs {
            run.await.expect("contention run did not panic");
        }
    });
}
