//! Batches: answers in order, split by key owner, retried and timed out as a whole.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, SLOT_COUNT};
use engram_proto::SlotHasher;

use super::fake_server::{single_shard_map, two_shard_map, FakeServer, Shared};
use super::{add, front_client, get, set, until};
use crate::{Client, Command, Error, ErrorCode, Response, ServerCode};
use engram_proto::{CounterCommand, DataCommand};

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
            .filter(|seen| {
                seen.key == key
                    && matches!(
                        seen.command,
                        Command::Data(DataCommand::Counter(CounterCommand::Add { .. }))
                    )
            })
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

/// A request parked at the server (a lock wait, a barrier) holds its in-flight place for
/// as long as it waits: a batch larger than the places left goes out in what is free
/// instead of waiting for every place, which would also hold back, behind the batch,
/// the very request (a release, the last party) that ends the wait.
#[tokio::test]
async fn a_batch_goes_out_in_the_places_a_parked_request_leaves_free() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let parked = {
        let client = client.clone();
        tokio::spawn(async move {
            let (command, mutation) = get("hold-parked");
            client.call(Some(b"hold-parked"), command, mutation).await
        })
    };
    until(|| fake.held() == 1).await;
    let keys: Vec<_> = (0..IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX + 10)
        .map(|index| format!("k{index}"))
        .collect();
    let results = client
        .batch_with(keys.iter().map(|key| get(key)).collect(), Some(Duration::from_secs(2)))
        .await;
    assert!(
        results.iter().all(|result| matches!(result, Ok(Response::Missing))),
        "{:?}",
        results.iter().find(|result| !matches!(result, Ok(Response::Missing)))
    );
    fake.release().await;
    assert!(parked.await.unwrap().is_ok());
}
