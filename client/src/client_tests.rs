//! The client against the in-process fake node: connection multiplexing, cancellation,
//! retries with a stable operation id, routing and map refresh, the blocking facade.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, SLOT_COUNT};
use engram_proto::{ErrorCode, SlotHasher};

use crate::fake_server::{single_shard_map, two_shard_map, FakeServer, Shared};
use crate::{Client, Error, ServerCode, SetOptions, SetOutcome};

async fn front_client(fake: &FakeServer) -> Client {
    Client::builder(&fake.address).direct(false).connect().await.unwrap()
}

/// Waits for a condition the fake reaches on its own; polls without a deadline because
/// the test harness's own timeout is the bound, not a guess at how fast a machine is.
async fn until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn objects_through_a_front_port() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    client.ping().await.unwrap();
    assert_eq!(client.info().await.unwrap().server_version, "fake");
    let greeting = client.bytes("greeting");
    assert_eq!(greeting.get().await.unwrap(), None);
    assert_eq!(greeting.set("hello").await.unwrap(), 1);
    let value = greeting.get().await.unwrap().unwrap();
    assert_eq!((value.value.as_slice(), value.version), (&b"hello"[..], 1));
    let outcome = greeting
        .set_with(b"again".to_vec(), SetOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome, SetOutcome::Written { version: 2 });
    assert!(greeting.del().await.unwrap());
    assert!(!greeting.del().await.unwrap());
    let jobs = client.counter("jobs");
    assert_eq!(jobs.add(5).await.unwrap(), 5);
    assert_eq!(jobs.add(-7).await.unwrap(), -2);
    assert_eq!(jobs.incr().await.unwrap(), -1);
    assert_eq!(jobs.get().await.unwrap(), -1);
    assert_eq!(client.map_epoch(), 0, "a front-only client keeps no map");
    assert_eq!(fake.lock().hellos, 1, "every call shared one connection");
}

#[tokio::test]
async fn out_of_order_answers_reach_their_callers_and_dropped_calls_do_not_corrupt_the_stream() {
    let fake = FakeServer::front().await;
    for key in ["hold-a", "hold-b", "hold-c"] {
        let value = key.as_bytes().to_vec();
        fake.lock().values.insert(value.clone(), (value, 1));
    }
    let client = front_client(&fake).await;
    let get = |key: &'static str| {
        let handle = client.bytes(key);
        tokio::spawn(async move { handle.get().await })
    };
    let first = get("hold-a");
    let dropped = get("hold-b");
    let third = get("hold-c");
    until(|| fake.held() == 3).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    // Answers go out newest first, including the one nobody waits for any more.
    fake.release().await;
    assert_eq!(first.await.unwrap().unwrap().unwrap().value, b"hold-a");
    assert_eq!(third.await.unwrap().unwrap().unwrap().value, b"hold-c");
    client.ping().await.unwrap();
    client.bytes("plain").set("p").await.unwrap();
    assert_eq!(client.bytes("plain").get().await.unwrap().unwrap().value, b"p");
    assert_eq!(fake.lock().hellos, 1, "the connection survived the dropped call");
}

#[tokio::test]
async fn more_calls_than_the_in_flight_limit_all_complete() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let calls = IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX * 2;
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let counter = client.counter("many");
            tokio::spawn(async move { counter.incr().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(client.counter("many").get().await.unwrap(), calls as i64);
}

#[tokio::test]
async fn a_dead_connection_is_replaced_and_the_retry_keeps_its_operation_id() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    assert_eq!(client.bytes("close-once").set("v").await.unwrap(), 1);
    let seen = fake.lock().seen.clone();
    let attempts: Vec<_> = seen.iter().filter(|seen| seen.key == b"close-once").collect();
    assert_eq!(attempts.len(), 2);
    assert_ne!(attempts[0].op_id, 0);
    assert_eq!(attempts[0].op_id, attempts[1].op_id);
    assert_eq!(fake.lock().hellos, 2, "the retry went out on a new connection");
}

#[tokio::test]
async fn retryable_errors_are_retried_and_final_ones_are_not() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    assert_eq!(client.counter("busy-once").add(3).await.unwrap(), 3);
    let error = client.bytes("wrongtype").get().await.unwrap_err();
    assert!(matches!(
        error,
        Error::Server {
            code: ServerCode::Known(ErrorCode::WrongType),
            ..
        }
    ));
    let seen = fake.lock().seen.clone();
    assert_eq!(seen.iter().filter(|seen| seen.key == b"busy-once").count(), 2);
    assert_eq!(seen.iter().filter(|seen| seen.key == b"wrongtype").count(), 1);
}

#[tokio::test]
async fn operation_ids_are_unique_and_the_completed_mark_trails_them() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let handle = client.counter("sequential");
    for _ in 0..3 {
        handle.incr().await.unwrap();
    }
    handle.get().await.unwrap();
    let seen = fake.lock().seen.clone();
    let ids: Vec<_> = seen
        .iter()
        .map(|seen| (seen.op_id, seen.completed_below_op_id))
        .collect();
    // Sequential mutations: each is the only one in flight; the read carries id 0.
    assert_eq!(ids, vec![(1, 1), (2, 2), (3, 3), (0, 4)]);
}

#[tokio::test]
async fn an_unanswered_call_times_out() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let error = client
        .bytes("silent")
        .timeout(Duration::from_millis(20))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    client.ping().await.unwrap();
}

#[tokio::test]
async fn a_refused_handshake_fails_connect_with_the_server_code() {
    let fake = FakeServer::front().await;
    fake.lock().refuse_hello = true;
    let error = Client::builder(&fake.address).connect().await.unwrap_err();
    assert_eq!(error.code(), Some(ServerCode::Known(ErrorCode::Unauthorized)));
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn an_unreachable_seed_fails_connect_with_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let error = Client::builder(address).connect().await.unwrap_err();
    assert!(matches!(error, Error::Connection { .. }), "{error}");
}

#[tokio::test]
async fn without_a_map_a_direct_client_falls_back_to_the_seed() {
    let fake = FakeServer::front().await;
    let client = Client::builder(&fake.address).connect().await.unwrap();
    assert_eq!(client.map_epoch(), 0);
    client.bytes("k").set("v").await.unwrap();
}

#[tokio::test]
async fn wrong_shard_refreshes_the_map_and_resends_to_the_new_owner() {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let first = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    let second = FakeServer::start(Arc::clone(&shared), Some(1)).await;
    shared.lock().unwrap().map = Some(single_shard_map(1, &first.address));
    let client = Client::builder(&front.address).connect().await.unwrap();
    assert_eq!(client.map_epoch(), 1);

    // The second shard listens on an unspecified host, which the client must replace.
    let second_port = second.address.rsplit_once(':').unwrap().1;
    let moved = two_shard_map(2, &first.address, &format!("0.0.0.0:{second_port}"));
    shared.lock().unwrap().map = Some(moved);
    let hasher = SlotHasher::new(b"default");
    let key = (0..)
        .map(|index| format!("key{index}"))
        .find(|key| hasher.slot(key.as_bytes()) >= SLOT_COUNT / 2)
        .unwrap();
    client.bytes(key.as_str()).set("v").await.unwrap();
    assert_eq!(client.map_epoch(), 2);

    let seen = shared.lock().unwrap().seen.clone();
    let attempts: Vec<_> = seen.iter().filter(|seen| seen.key == key.as_bytes()).collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].shard, attempts[0].map_epoch), (Some(0), 1));
    assert_eq!((attempts[1].shard, attempts[1].map_epoch), (Some(1), 2));
    assert_eq!(attempts[0].op_id, attempts[1].op_id);
}

#[test]
fn the_blocking_facade_drives_the_same_handles() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeServer::front());
    let client = crate::blocking::Client::connect(Client::builder(&fake.address).direct(false)).unwrap();
    client.ping().unwrap();
    let bytes = client.bytes("b");
    assert_eq!(bytes.set("one").unwrap(), 1);
    assert_eq!(bytes.get().unwrap().unwrap().value, b"one");
    assert!(bytes.timeout(Duration::from_secs(1)).del().unwrap());
    assert_eq!(client.counter("c").add(2).unwrap(), 2);
    let clone = client.clone();
    std::thread::spawn(move || clone.counter("c").incr().unwrap())
        .join()
        .unwrap();
    assert_eq!(client.counter("c").get().unwrap(), 3);
}
