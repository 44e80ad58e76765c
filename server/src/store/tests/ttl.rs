//! Time to live: lazy and active expiry, and writes that clear a deadline.

use super::*;
use engram_proto::BytesCommand;

#[test]
fn ttl_expires_lazily_and_actively() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("a", "1", 100, SetCondition::Always)), 1_000);
    store.run(1, &request(2, set("b", "2", 200, SetCondition::Always)), 1_000);
    assert!(matches!(
        store.run(
            1,
            &request(0, Command::from(BytesCommand::Get { key: "a".into() })),
            1_099
        ),
        Response::Value { .. }
    ));
    assert_eq!(
        store.run(
            1,
            &request(0, Command::from(BytesCommand::Get { key: "a".into() })),
            1_100
        ),
        Response::Missing
    );
    assert_eq!(store.stats().keys, 1);
    assert_eq!(store.expire_due(1_199, 10), 0);
    assert_eq!(store.expire_due(1_200, 10), 1);
    assert_eq!(store.stats().keys, 0);
    assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
}

#[test]
fn set_without_ttl_clears_the_deadline() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("a", "1", 100, SetCondition::Always)), 0);
    store.run(1, &request(2, set("a", "2", 0, SetCondition::Always)), 50);
    assert!(matches!(
        store.run(
            1,
            &request(0, Command::from(BytesCommand::Get { key: "a".into() })),
            500
        ),
        Response::Value { .. }
    ));
    assert_eq!(store.expire_due(1_000, 10), 0);
}
