//! The blocking facade, from plain threads with no runtime of their own.

use engram_client::blocking;
use engram_tests::{unique_key, EngramServer, ServerOptions};

#[test]
fn four_threads_increment_through_one_blocking_client() {
    const THREADS: usize = 4;
    const INCREMENTS: usize = 1_000;
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let client = blocking::Client::connect(server.client_builder()).expect("blocking client connects");
    client.ping().expect("ping");
    let counter = client.counter(unique_key("blocking"));

    let mut values: Vec<i64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                // Each thread gets a clone: clones share the runtime and connections.
                let counter = counter.clone();
                scope.spawn(move || {
                    let mut seen = Vec::with_capacity(INCREMENTS);
                    for _ in 0..INCREMENTS {
                        let value = counter
                            .incr()
                            .unwrap_or_else(|error| panic!("thread {thread}: {error}"));
                        if let Some(&last) = seen.last() {
                            assert!(value > last, "thread {thread}: {value} after {last}");
                        }
                        seen.push(value);
                    }
                    seen
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("worker did not panic"))
            .collect()
    });
    values.sort_unstable();
    let total = (THREADS * INCREMENTS) as i64;
    assert_eq!(values, (1..=total).collect::<Vec<_>>());
    assert_eq!(counter.get().expect("get"), total);

    // Bytes through the facade, and info.
    let bytes = client.bytes(unique_key("blocking-bytes"));
    let version = bytes.set("sync").expect("set");
    let read = bytes.get().expect("get").expect("value");
    assert_eq!((read.value.as_slice(), read.version), (&b"sync"[..], version));
    assert!(bytes.del().expect("del"));
    assert_eq!(bytes.get().expect("get"), None);
    assert_eq!(client.info().expect("info").shards.len(), 2);
}
