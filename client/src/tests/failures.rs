//! Lost slots and unreachable nodes: which failures are final at once and which after a
//! map refresh.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engram_proto::SlotHasher;

use super::fake_server::{error, half_lost_map, single_shard_map, two_shard_map, FakeServer, Shared};
use super::{add, key_in_first_half, key_in_second_half, set};
use crate::{Client, Command, Error, ErrorCode, Response, ServerCode};
use engram_proto::AdminCommand;

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
    seen.filter(|seen| matches!(seen.command, Command::Admin(AdminCommand::GetSlotMap)))
        .count()
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
