//! What holds across object types: type checks, and deleting an object with waiters
//! or leases.

use super::*;
use engram_proto::{BytesCommand, CounterCommand, DataCommand, LockCommand, MapCommand};

#[test]
fn wrong_type_between_objects() {
    let mut store = Store::new(u64::MAX / 2, 3);
    store.apply(
        1,
        &request(
            1,
            Command::from(CounterCommand::Add {
                key: KEY.into(),
                delta: 1,
            }),
        ),
        0,
    );
    let outcome = store.apply(
        1,
        &request(
            2,
            Command::from(LockCommand::Acquire {
                key: KEY.into(),
                owner: b"a".to_vec(),
                lease_ms: 10,
                wait_ms: 0,
            }),
        ),
        0,
    );
    assert!(matches!(outcome, Outcome::Ready(ref response) if code(response) == Some(ErrorCode::WrongType)));
    let outcome = store.apply(
        1,
        &request(
            3,
            Command::from(BytesCommand::Set {
                key: KEY.into(),
                value: b"x".to_vec(),
                ttl_ms: 0,
                condition: engram_proto::SetCondition::Always,
            }),
        ),
        0,
    );
    assert!(matches!(outcome, Outcome::Ready(ref response) if code(response) == Some(ErrorCode::WrongType)));
}

#[test]
fn wrong_type_names_the_client_key_not_the_stored_one() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let stored_key = b"\x07defaultplain".to_vec();
    store.apply(
        1,
        &request(
            1,
            Command::from(CounterCommand::Add {
                key: stored_key.clone(),
                delta: 1,
            }),
        ),
        0,
    );
    let Outcome::Ready(Response::Error(reply)) =
        store.apply(1, &request(0, Command::from(MapCommand::GetAll { key: stored_key })), 0)
    else {
        panic!()
    };
    assert!(reply.message.contains("\"plain\""), "{}", reply.message);
}

#[test]
fn deleting_an_object_answers_its_waiters() {
    let mut store = Store::new(u64::MAX / 2, 3);
    store.apply(
        1,
        &request(
            1,
            Command::from(LockCommand::Acquire {
                key: KEY.into(),
                owner: b"a".to_vec(),
                lease_ms: 1_000,
                wait_ms: 0,
            }),
        ),
        0,
    );
    let Outcome::Parked(waiter) = store.apply(
        1,
        &request(
            2,
            Command::from(LockCommand::Acquire {
                key: KEY.into(),
                owner: b"b".to_vec(),
                lease_ms: 1_000,
                wait_ms: 500,
            }),
        ),
        0,
    ) else {
        panic!()
    };
    store.apply(1, &request(3, Command::from(BytesCommand::Del { key: KEY.into() })), 1);
    let completions = store.drain_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].0, waiter);
    assert_eq!(code(&completions[0].1), Some(ErrorCode::ObjectDeleted));
    assert_eq!(store.stats().parked_requests, 0);
    // A fence never repeats even though the lock's key was deleted and reused.
    let Outcome::Ready(Response::LockGranted { fence: first, .. }) = store.apply(
        1,
        &request(
            4,
            Command::from(LockCommand::Acquire {
                key: KEY.into(),
                owner: b"c".to_vec(),
                lease_ms: 10,
                wait_ms: 0,
            }),
        ),
        2,
    ) else {
        panic!()
    };
    store.apply(1, &request(5, Command::from(BytesCommand::Del { key: KEY.into() })), 3);
    let Outcome::Ready(Response::LockGranted { fence: second, .. }) = store.apply(
        1,
        &request(
            6,
            Command::from(LockCommand::Acquire {
                key: KEY.into(),
                owner: b"c".to_vec(),
                lease_ms: 10,
                wait_ms: 0,
            }),
        ),
        4,
    ) else {
        panic!()
    };
    assert!(second > first);
}

#[test]
fn deleting_objects_with_waiters_and_leases_leaves_no_memory_or_timers_behind() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str, wait_ms| {
        Command::Data(DataCommand::Lock(LockCommand::Acquire {
            key: KEY.into(),
            owner: owner.into(),
            lease_ms: 3_600_000,
            wait_ms,
        }))
    };
    store.apply(1, &request(1, acquire("holder", 0)), 0);
    let Outcome::Parked(_) = store.apply(1, &request(2, acquire("a-rather-long-waiting-owner-name", 5_000)), 0) else {
        panic!()
    };
    store.apply(1, &request(3, Command::from(BytesCommand::Del { key: KEY.into() })), 1);
    store.take_completions();
    assert_eq!(store.stats().keys, 0);
    assert_eq!(
        store.stats().memory_used_bytes,
        store.operations.bytes(),
        "a waiter's bytes stayed counted"
    );
    assert_eq!(
        store.next_deadline_ms(),
        None,
        "the deleted holder's lease timer is gone"
    );
}
