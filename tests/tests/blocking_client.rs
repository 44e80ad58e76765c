//! The blocking facade, from plain threads with no runtime of their own, and from code
//! running inside a tokio runtime (as a Lambda handler under the Rust runtime does), of
//! either flavour, where tokio forbids a nested `block_on`.

use std::time::Duration;

use engram_client::blocking;
use engram_tests::{unique_key, EngramServer, ServerOptions};

/// What a function does through the facade: connect, count, take and give back a lock,
/// and drop the client (which stops its runtime) where it was used.
fn use_the_blocking_client(server: &EngramServer, label: &str) {
    let client = blocking::Client::connect(server.client_builder()).expect("blocking client connects");
    let counter = client.counter(unique_key(label));
    assert_eq!(counter.add(5).expect("add"), 5);
    assert_eq!(counter.incr().expect("incr"), 6);
    let lock = client.lock(unique_key(label));
    let owner = format!("{label}-owner");
    let guard = lock
        .acquire(owner.as_str(), Duration::from_secs(10), Duration::from_secs(1))
        .expect("acquire a free lock");
    let holder = lock.holder().expect("holder").expect("the lock is held");
    assert_eq!(
        (holder.owner.as_slice(), holder.fence),
        (owner.as_bytes(), guard.fence())
    );
    guard.release().expect("release");
    assert_eq!(lock.holder().expect("holder"), None, "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_client_works_inside_a_multi_thread_runtime() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    use_the_blocking_client(&server, "inside-multi-thread");
    // A client made here also serves the runtime's blocking threads and plain threads.
    let client = blocking::Client::connect(server.client_builder()).expect("blocking client connects");
    let counter = client.counter(unique_key("shared"));
    let on_blocking_pool = tokio::task::spawn_blocking({
        let counter = counter.clone();
        move || counter.add(1).expect("add on a blocking-pool thread")
    });
    let on_plain_thread = std::thread::spawn({
        let counter = counter.clone();
        move || counter.add(1).expect("add on a plain thread")
    });
    let mut seen = [on_blocking_pool.await.unwrap(), on_plain_thread.join().unwrap()];
    seen.sort_unstable();
    assert_eq!(seen, [1, 2]);
    assert_eq!(counter.get().expect("get"), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn the_blocking_client_works_inside_a_current_thread_runtime() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    use_the_blocking_client(&server, "inside-current-thread");
}

#[test]
fn the_blocking_client_works_from_a_plain_thread() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    std::thread::scope(|scope| {
        scope
            .spawn(|| use_the_blocking_client(&server, "plain-thread"))
            .join()
            .expect("the plain thread did not panic");
    });
}

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
