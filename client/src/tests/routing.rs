//! Routing by the slot map, and refreshing the map when a shard says it moved.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fake_server::{single_shard_map, two_shard_map, FakeServer, Shared};
use super::key_in_second_half;
use crate::{Client, Command, Error};
use engram_proto::AdminCommand;

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
        seen.filter(|seen| matches!(seen.command, Command::Admin(AdminCommand::GetSlotMap)))
            .count()
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
