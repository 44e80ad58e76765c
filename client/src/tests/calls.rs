//! Calls on one connection: multiplexing, the in-flight limit, cancellation, retries
//! with a stable operation id, and timeouts.

use std::time::Duration;

use engram_proto::limits::IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;

use super::fake_server::FakeServer;
use super::{front_client, until};
use crate::{Client, Error, ErrorCode, ServerCode, SetOptions, SetOutcome};

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

/// A call that cannot get a place in flight (every place held by an unanswered call)
/// still ends at its deadline, and the connection serves again once places free up.
#[tokio::test]
async fn a_call_waiting_for_a_place_in_flight_times_out() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let holders: Vec<_> = (0..IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX)
        .map(|index| {
            let silent = client
                .bytes(format!("silent-{index}"))
                .timeout(Duration::from_secs(600));
            tokio::spawn(async move { silent.get().await })
        })
        .collect();
    until(|| fake.lock().seen.len() >= IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX).await;
    get_times_out(&client, "greeting").await;
    for holder in &holders {
        holder.abort();
    }
    for holder in holders {
        assert!(holder.await.unwrap_err().is_cancelled());
    }
    client.ping().await.unwrap();
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
    get_times_out(&client, "silent").await;
    client.ping().await.unwrap();
}

/// A GET of `key` with a 20 ms timeout ends with the client's own `Timeout`.
async fn get_times_out(client: &Client, key: &str) {
    let error = client
        .bytes(key)
        .timeout(Duration::from_millis(20))
        .get()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
}
