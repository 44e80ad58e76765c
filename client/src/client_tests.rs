//! The client against the in-process fake node: connection multiplexing, cancellation,
//! retries with a stable operation id, routing and map refresh, the blocking facade.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, SLOT_COUNT};
use engram_proto::{ErrorCode, SlotHasher};

use crate::fake_server::{error, half_lost_map, single_shard_map, two_shard_map, FakeServer, Shared};
use crate::{Client, Command, Error, Response, ServerCode, SetCondition, SetOptions, SetOutcome};

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
    let key = key_in_second_half();
    client.bytes(key.as_str()).set("v").await.unwrap();
    assert_eq!(client.map_epoch(), 2);

    let seen = shared.lock().unwrap().seen.clone();
    let attempts: Vec<_> = seen.iter().filter(|seen| seen.key == key.as_bytes()).collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].shard, attempts[0].map_epoch), (Some(0), 1));
    assert_eq!((attempts[1].shard, attempts[1].map_epoch), (Some(1), 2));
    assert_eq!(attempts[0].op_id, attempts[1].op_id);
}

/// A key of the default namespace in the second half of the slots, the half that
/// [`two_shard_map`] gives its second shard.
fn key_in_second_half() -> String {
    key_in_half(true)
}

/// A key of the default namespace in the first half of the slots.
fn key_in_first_half() -> String {
    key_in_half(false)
}

fn key_in_half(second: bool) -> String {
    let hasher = SlotHasher::new(b"default");
    (0..)
        .map(|index| format!("key{index}"))
        .find(|key| (hasher.slot(key.as_bytes()) >= SLOT_COUNT / 2) == second)
        .unwrap()
}

/// A map refresh that is never answered ends with the call's deadline, not with the
/// client's own (much longer) timeout, and the client keeps its old map. The clock is
/// tokio's paused one, so the elapsed time checked is virtual and exact.
#[tokio::test(start_paused = true)]
async fn a_map_refresh_that_is_never_answered_ends_at_the_call_deadline() {
    let client_timeout = Duration::from_millis(engram_proto::limits::CALL_TIMEOUT_MS_MAX);
    let call_timeout = Duration::from_secs(2);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let first = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    let second = FakeServer::start(Arc::clone(&shared), Some(1)).await;
    shared.lock().unwrap().map = Some(single_shard_map(1, &first.address));
    let client = Client::builder(&front.address)
        .timeout(client_timeout)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.map_epoch(), 1);
    let map_requests = || {
        let shared = shared.lock().unwrap();
        let seen = shared.seen.iter();
        seen.filter(|seen| matches!(seen.command, Command::GetSlotMap)).count()
    };
    let before = map_requests();
    {
        let mut shared = shared.lock().unwrap();
        shared.map = Some(two_shard_map(2, &first.address, &second.address));
        shared.silent_map = true;
    }
    // The paused runtime jumps to its next timer whenever every task waits, even on
    // loopback data the kernel has not delivered yet (a loaded machine defers it); a
    // 1 ms ticker keeps each jump small, so such data arrives long before the deadline.
    let ticker = tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // The first shard now answers WrongShard for the key, and the refresh that follows
    // waits for a map that never comes.
    let started = tokio::time::Instant::now();
    let error = client
        .bytes(key_in_second_half().as_str())
        .timeout(call_timeout)
        .set("v")
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    ticker.abort();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(map_requests() > before, "the call ended before it asked for a new map");
    assert!(
        elapsed >= call_timeout && elapsed < call_timeout + Duration::from_millis(100),
        "the call ended after {elapsed:?}, not at its {call_timeout:?} deadline"
    );
    assert_eq!(client.map_epoch(), 1);
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

/// Inside a runtime (async code, a Lambda handler) tokio refuses a nested `block_on`;
/// the facade hands its calls to its own worker instead, and dropping it there does not
/// wait for that worker. The fake serves from another worker of the test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_facade_works_inside_a_runtime() {
    let fake = FakeServer::front().await;
    let client = crate::blocking::Client::connect(Client::builder(&fake.address).direct(false)).unwrap();
    client.ping().unwrap();
    assert_eq!(client.counter("c").add(2).unwrap(), 2);
    let bytes = client.bytes("b");
    assert_eq!(bytes.set("one").unwrap(), 1);
    assert_eq!(bytes.get().unwrap().unwrap().value, b"one");
    drop(client);
}

fn set(key: &str, value: &str) -> (Command, bool) {
    let command = Command::Set {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ttl_ms: 0,
        condition: SetCondition::Always,
    };
    (command, true)
}

fn get(key: &str) -> (Command, bool) {
    (
        Command::Get {
            key: key.as_bytes().to_vec(),
        },
        false,
    )
}

fn add(key: &str, delta: i64) -> (Command, bool) {
    (
        Command::CounterAdd {
            key: key.as_bytes().to_vec(),
            delta,
        },
        true,
    )
}

fn value_of(result: &Result<Response, Error>) -> &[u8] {
    match result {
        Ok(Response::Value { value, .. }) => value,
        other => panic!("expected a value, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_answers_in_order_each_command_with_its_own_answer() {
    let fake = FakeServer::front().await;
    for key in ["hold-x", "hold-y"] {
        fake.lock().values.insert(key.into(), (key.into(), 7));
    }
    let client = front_client(&fake).await;
    let commands = vec![
        get("hold-x"),
        set("a", "1"),
        add("n", 5),
        get("a"),
        get("missing"),
        get("wrongtype"),
        get("hold-y"),
        add("n", -2),
    ];
    let batch = {
        let client = client.clone();
        tokio::spawn(async move { client.batch(commands).await })
    };
    // The held answers go out newest first: the batch gets them out of order.
    until(|| fake.held() == 2).await;
    fake.release().await;
    let results = batch.await.unwrap();
    assert_eq!(results.len(), 8);
    assert_eq!(value_of(&results[0]), b"hold-x");
    assert!(
        matches!(results[1], Ok(Response::Written { version: 1 })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Ok(Response::Counter { value: 5 })),
        "{:?}",
        results[2]
    );
    assert_eq!(value_of(&results[3]), b"1", "the batch's own write, sent before it");
    assert!(matches!(results[4], Ok(Response::Missing)), "{:?}", results[4]);
    assert!(
        matches!(&results[5], Err(error) if error.code() == Some(ServerCode::Known(ErrorCode::WrongType))),
        "{:?}",
        results[5]
    );
    assert_eq!(value_of(&results[6]), b"hold-y");
    assert!(
        matches!(results[7], Ok(Response::Counter { value: 3 })),
        "{:?}",
        results[7]
    );
    let seen = fake.lock().seen.clone();
    assert_eq!(seen.len(), 8, "one request per command, none retried: {seen:?}");
    let op_ids: Vec<u64> = seen.iter().map(|seen| seen.op_id).collect();
    // Reads carry no operation id; mutations get distinct ones, in the batch's order.
    assert_eq!(op_ids, vec![0, 1, 2, 0, 0, 0, 0, 3]);
    assert!(seen.iter().all(|seen| seen.completed_below_op_id == 1));
    assert_eq!(fake.lock().hellos, 1, "one connection for the whole batch");
    assert!(client.batch(Vec::new()).await.is_empty());
    // Afterwards every operation is finished.
    client.ping().await.unwrap();
    assert_eq!(fake.lock().seen.last().unwrap().completed_below_op_id, 4);
}

#[tokio::test]
async fn a_batch_of_mixed_keys_goes_to_each_key_owner_and_more_than_the_in_flight_limit_completes() {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let first = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    let second = FakeServer::start(Arc::clone(&shared), Some(1)).await;
    shared.lock().unwrap().map = Some(two_shard_map(1, &first.address, &second.address));
    let client = Client::builder(&front.address).connect().await.unwrap();
    assert_eq!(client.map_epoch(), 1);
    let keys: Vec<String> = (0..IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX * 3)
        .map(|index| format!("key{index}"))
        .collect();
    let results = client.batch(keys.iter().map(|key| set(key, key)).collect()).await;
    assert!(results
        .iter()
        .all(|result| matches!(result, Ok(Response::Written { version: 1 }))));
    let results = client.batch(keys.iter().map(|key| get(key)).collect()).await;
    for (key, result) in keys.iter().zip(&results) {
        assert_eq!(value_of(result), key.as_bytes());
    }
    let hasher = SlotHasher::new(b"default");
    let seen = shared.lock().unwrap().seen.clone();
    let owner = |key: &[u8]| u32::from(hasher.slot(key) >= SLOT_COUNT / 2);
    let by_shard: Vec<_> = seen.iter().filter(|seen| seen.key.starts_with(b"key")).collect();
    assert_eq!(by_shard.len(), keys.len() * 2, "no request was refused and resent");
    assert!(by_shard.iter().all(|seen| seen.shard == Some(owner(&seen.key))));
    assert!(by_shard.iter().any(|seen| seen.shard == Some(0)) && by_shard.iter().any(|seen| seen.shard == Some(1)));
}

#[tokio::test]
async fn retryable_errors_inside_a_batch_are_retried_with_the_same_operation_id() {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let first = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    let second = FakeServer::start(Arc::clone(&shared), Some(1)).await;
    shared.lock().unwrap().map = Some(single_shard_map(1, &first.address));
    let client = Client::builder(&front.address).connect().await.unwrap();
    // The second half of the slots moves: the client's map is stale for those keys.
    shared.lock().unwrap().map = Some(two_shard_map(2, &first.address, &second.address));
    let hasher = SlotHasher::new(b"default");
    let moved = (0..)
        .map(|index| format!("key{index}"))
        .find(|key| hasher.slot(key.as_bytes()) >= SLOT_COUNT / 2)
        .unwrap();
    let stayed = (0..)
        .map(|index| format!("key{index}"))
        .find(|key| hasher.slot(key.as_bytes()) < SLOT_COUNT / 2)
        .unwrap();
    let results = client
        .batch(vec![
            add("busy-once", 2),
            set(&moved, "m"),
            set(&stayed, "s"),
            get("wrongtype"),
        ])
        .await;
    assert!(
        matches!(results[0], Ok(Response::Counter { value: 2 })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Ok(Response::Written { version: 1 })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Ok(Response::Written { version: 1 })),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Err(Error::Server { .. })),
        "a final error is not retried"
    );
    assert_eq!(client.map_epoch(), 2);
    let seen = shared.lock().unwrap().seen.clone();
    let attempts = |key: &[u8]| -> Vec<_> { seen.iter().filter(|seen| seen.key == key).cloned().collect() };
    let busy = attempts(b"busy-once");
    assert_eq!(busy.len(), 2);
    assert_eq!(busy[0].op_id, busy[1].op_id);
    let moved = attempts(moved.as_bytes());
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!((moved[0].shard, moved[0].map_epoch), (Some(0), 1));
    assert_eq!((moved[1].shard, moved[1].map_epoch), (Some(1), 2));
    assert_eq!(moved[0].op_id, moved[1].op_id);
    assert_eq!(attempts(stayed.as_bytes()).len(), 1);
    assert_eq!(attempts(b"wrongtype").len(), 1);
}

#[tokio::test]
async fn a_batched_mutation_whose_answer_was_lost_with_the_connection_is_applied_once() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    // The fake applies the first add, then drops the connection without answering; the
    // commands behind it in the batch are lost unread.
    let results = client
        .batch(vec![
            add("before", 1),
            add("lost-reply-once", 1),
            add("after", 1),
            set("after-set", "v"),
            get("before"),
        ])
        .await;
    for (index, result) in results.iter().take(3).enumerate() {
        assert!(
            matches!(result, Ok(Response::Counter { value: 1 })),
            "{index}: {result:?}"
        );
    }
    assert!(
        matches!(results[3], Ok(Response::Written { version: 1 })),
        "{:?}",
        results[3]
    );
    assert_eq!(fake.lock().hellos, 2, "the retries went out on a new connection");
    let seen = fake.lock().seen.clone();
    let lost: Vec<_> = seen.iter().filter(|seen| seen.key == b"lost-reply-once").collect();
    assert_eq!(lost.len(), 2, "{seen:?}");
    assert_ne!(lost[0].op_id, 0);
    assert_eq!(lost[0].op_id, lost[1].op_id, "the resend is the same operation");
    assert_eq!(
        client.counter("lost-reply-once").get().await.unwrap(),
        1,
        "applied once"
    );
    assert_eq!(client.counter("before").get().await.unwrap(), 1);
    assert_eq!(client.counter("after").get().await.unwrap(), 1);
    let adds = |key: &[u8]| {
        seen.iter()
            .filter(|seen| seen.key == key && matches!(seen.command, Command::CounterAdd { .. }))
            .count()
    };
    assert_eq!(adds(b"before"), 1, "answered, so not resent");
    assert_eq!(adds(b"after"), 1, "lost unread with the connection, so sent once more");
}

#[tokio::test]
async fn an_unanswered_batch_times_out_as_a_whole_and_frees_its_places() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let results = client
        .batch_with(
            vec![get("silent-1"), set("x", "1"), get("silent-2")],
            Some(Duration::from_millis(50)),
        )
        .await;
    assert!(matches!(results[0], Err(Error::Timeout { .. })), "{:?}", results[0]);
    assert!(matches!(results[1], Ok(Response::Written { .. })), "{:?}", results[1]);
    assert!(matches!(results[2], Err(Error::Timeout { .. })), "{:?}", results[2]);
    // Every in-flight place came back: a full-size batch still goes out.
    let keys: Vec<_> = (0..IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX)
        .map(|index| format!("k{index}"))
        .collect();
    let results = client.batch(keys.iter().map(|key| get(key)).collect()).await;
    assert!(results.iter().all(|result| matches!(result, Ok(Response::Missing))));
}

/// An address nothing listens on: connecting to it is refused.
fn refusing_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// How many slot-map requests the fakes sharing `shared` have seen.
fn map_requests(shared: &Mutex<Shared>) -> usize {
    let shared = shared.lock().unwrap();
    let seen = shared.seen.iter();
    seen.filter(|seen| matches!(seen.command, Command::GetSlotMap)).count()
}

/// A front fake and one shard fake owning the first half of the slots, with the map
/// `map(shard address)`, and a direct client that fetched that map.
async fn cluster_of_one(map: impl FnOnce(&str) -> engram_proto::SlotMap) -> (Arc<Mutex<Shared>>, FakeServer, Client) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let first = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    shared.lock().unwrap().map = Some(map(&first.address));
    let client = Client::builder(&front.address)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    (shared, first, client)
}

#[tokio::test]
async fn a_slot_lost_answer_is_final_at_once_and_names_the_slot() {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let shard = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    shared.lock().unwrap().map = Some(single_shard_map(1, &shard.address));
    shared
        .lock()
        .unwrap()
        .answers
        .insert(b"gone".to_vec(), error(ErrorCode::SlotLost));
    let client = Client::builder(&front.address)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let maps_before = map_requests(&shared);
    let error = client.counter("gone").incr().await.unwrap_err();
    let slot = SlotHasher::new(b"default").slot(b"gone");
    assert!(
        matches!(&error, Error::SlotLost { slot: named, .. } if *named == slot),
        "{error}"
    );
    assert!(error.is_slot_lost() && !error.is_retryable());
    assert_eq!(error.code(), Some(ServerCode::Known(ErrorCode::SlotLost)));
    let seen = shared.lock().unwrap().seen.clone();
    let attempts: Vec<_> = seen.iter().filter(|seen| seen.key == b"gone").collect();
    assert_eq!(attempts.len(), 1, "not retried: {attempts:?}");
    assert_eq!(attempts[0].shard, Some(0));
    assert_eq!(map_requests(&shared), maps_before, "the answer needs no map refresh");
    // Through a front port, too.
    let front_only = Client::builder(&front.address).direct(false).connect().await.unwrap();
    let error = front_only.bytes("gone").get().await.unwrap_err();
    assert!(
        matches!(error, Error::SlotLost { slot: named, .. } if named == slot),
        "{error}"
    );
}

#[tokio::test]
async fn a_slot_the_map_marks_lost_fails_after_one_refresh_without_a_request() {
    let (shared, _shard, client) = cluster_of_one(|shard| half_lost_map(1, shard)).await;
    assert_eq!(client.map_epoch(), 1);
    let key = key_in_second_half();
    let slot = SlotHasher::new(b"default").slot(key.as_bytes());
    let maps_before = map_requests(&shared);
    let error = client.bytes(key.as_str()).set("v").await.unwrap_err();
    assert!(
        matches!(&error, Error::SlotLost { slot: named, map_epoch: 1, .. } if *named == slot),
        "{error}"
    );
    assert_eq!(map_requests(&shared), maps_before + 1, "one map fetch, then the answer");
    let seen = shared.lock().unwrap().seen.clone();
    assert!(
        seen.iter().all(|seen| seen.key != key.as_bytes()),
        "nothing was sent for the lost key: {seen:?}"
    );
    // In a batch, too, next to a key that is served.
    let results = client.batch(vec![set(&key, "v"), add(&key_in_first_half(), 1)]).await;
    assert!(matches!(&results[0], Err(Error::SlotLost { .. })), "{:?}", results[0]);
    assert!(
        matches!(results[1], Ok(Response::Counter { value: 1 })),
        "{:?}",
        results[1]
    );
    let seen = shared.lock().unwrap().seen.clone();
    assert!(seen.iter().all(|seen| seen.key != key.as_bytes()), "{seen:?}");
}

#[tokio::test]
async fn a_lost_slot_that_was_reclaimed_is_routed_again_after_the_refresh() {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let front = FakeServer::start(Arc::clone(&shared), None).await;
    let first = FakeServer::start(Arc::clone(&shared), Some(0)).await;
    let second = FakeServer::start(Arc::clone(&shared), Some(1)).await;
    shared.lock().unwrap().map = Some(half_lost_map(1, &first.address));
    let client = Client::builder(&front.address).connect().await.unwrap();
    assert_eq!(client.map_epoch(), 1);
    // Reclaimed onto the second shard, which the client has not heard of yet.
    shared.lock().unwrap().map = Some(two_shard_map(2, &first.address, &second.address));
    let key = key_in_second_half();
    assert_eq!(client.bytes(key.as_str()).set("v").await.unwrap(), 1);
    assert_eq!(client.map_epoch(), 2);
    let seen = shared.lock().unwrap().seen.clone();
    let attempts: Vec<_> = seen.iter().filter(|seen| seen.key == key.as_bytes()).collect();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!((attempts[0].shard, attempts[0].map_epoch), (Some(1), 2));
}

#[tokio::test]
async fn a_shard_that_refuses_connections_fails_the_call_as_unreachable_after_refreshes() {
    let refused = refusing_address();
    let (shared, _shard, client) = cluster_of_one(|shard| two_shard_map(1, shard, &refused)).await;
    let maps_before = map_requests(&shared);
    let error = client.bytes(key_in_second_half().as_str()).set("v").await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Unreachable { address, attempts, .. }
                if *address == refused && *attempts == crate::limits::UNREACHABLE_ATTEMPTS_MAX
        ),
        "{error}"
    );
    assert!(error.to_string().contains(&refused), "{error}");
    assert!(map_requests(&shared) > maps_before, "the client looked for a newer map");
    // Keys of the live shard are unaffected.
    client.bytes(key_in_first_half().as_str()).set("v").await.unwrap();
}

#[tokio::test]
async fn a_dead_shard_whose_slots_the_refreshed_map_marks_lost_fails_with_slot_lost() {
    let refused = refusing_address();
    let (shared, first, client) = cluster_of_one(|shard| two_shard_map(1, shard, &refused)).await;
    // The control plane noticed: the dead shard's half is lost.
    shared.lock().unwrap().map = Some(half_lost_map(2, &first.address));
    let key = key_in_second_half();
    let error = client.bytes(key.as_str()).set("v").await.unwrap_err();
    assert!(matches!(error, Error::SlotLost { map_epoch: 2, .. }), "{error}");
    assert_eq!(client.map_epoch(), 2);
}

#[tokio::test]
async fn a_front_port_that_stops_listening_fails_calls_as_unreachable() {
    let fake = FakeServer::front().await;
    let client = Client::builder(&fake.address)
        .direct(false)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    client.ping().await.unwrap();
    fake.stop_listening().await;
    // The open connection closes under the call; reconnecting is refused.
    let error = client.bytes("close-once").set("v").await.unwrap_err();
    assert!(
        matches!(&error, Error::Unreachable { address, .. } if *address == fake.address),
        "{error}"
    );
    assert_eq!(fake.lock().hellos, 1, "no connection got through");
}
