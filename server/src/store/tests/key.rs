//! What any key answers: its kind, and expiries set, read and taken away.

use super::*;
use engram_proto::{CounterCommand, ExpireCondition, KeyCommand, LockCommand, MapCommand, ObjectKind};

fn kind(store: &mut Store, key: &str, now: u64) -> Response {
    store.run(1, &request(0, Command::from(KeyCommand::Kind { key: key.into() })), now)
}

fn ttl(store: &mut Store, key: &str, now: u64) -> Response {
    store.run(1, &request(0, Command::from(KeyCommand::Ttl { key: key.into() })), now)
}

fn expire(key: &str, ttl_ms: u64, condition: ExpireCondition) -> Command {
    Command::from(KeyCommand::Expire {
        key: key.into(),
        ttl_ms,
        condition,
    })
}

#[test]
fn every_key_tells_its_kind() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("b", "v", 0, SetCondition::Always)), 0);
    let add = Command::from(CounterCommand::Add {
        key: "c".into(),
        delta: 1,
    });
    store.run(1, &request(2, add), 0);
    let acquire = Command::from(LockCommand::Acquire {
        key: "l".into(),
        owner: "o".into(),
        lease_ms: 1_000,
        wait_ms: 0,
    });
    store.run(1, &request(3, acquire), 0);
    for (key, expected) in [
        ("b", ObjectKind::Bytes),
        ("c", ObjectKind::Counter),
        ("l", ObjectKind::Lock),
    ] {
        assert_eq!(kind(&mut store, key, 0), Response::KeyKind { kind: expected });
    }
    assert_eq!(kind(&mut store, "absent", 0), Response::Missing);
}

#[test]
fn expiries_are_set_read_conditioned_and_taken_away() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("k", "v", 0, SetCondition::Always)), 0);
    assert_eq!(ttl(&mut store, "k", 0), Response::Ttl { ttl_ms: None });
    let changed = |changed| Response::ExpiryChanged { changed };
    assert_eq!(
        store.run(1, &request(2, expire("k", 100, ExpireCondition::IfSome)), 0),
        changed(false)
    );
    assert_eq!(
        store.run(1, &request(3, expire("k", 100, ExpireCondition::IfNone)), 0),
        changed(true)
    );
    assert_eq!(ttl(&mut store, "k", 40), Response::Ttl { ttl_ms: Some(60) });
    assert_eq!(
        store.run(1, &request(4, expire("k", 10, ExpireCondition::IfLater)), 50),
        changed(false)
    );
    assert_eq!(
        store.run(1, &request(5, expire("k", 10, ExpireCondition::IfSooner)), 50),
        changed(true)
    );
    assert_eq!(store.data_bytes, store.recomputed_data_bytes());
    assert_eq!(&store.expiries, &store.expected_expiries());
    let persist = || Command::from(KeyCommand::Persist { key: "k".into() });
    assert_eq!(store.run(1, &request(6, persist()), 55), changed(true));
    assert_eq!(store.run(1, &request(7, persist()), 55), changed(false));
    assert_eq!(ttl(&mut store, "k", 1_000), Response::Ttl { ttl_ms: None }, "persisted");
    assert_eq!(store.data_bytes, store.recomputed_data_bytes());
    assert_eq!(&store.expiries, &store.expected_expiries());
    // It expires when told to.
    store.run(1, &request(8, expire("k", 10, ExpireCondition::Always)), 1_000);
    store.expire_due(1_010, usize::MAX);
    assert_eq!(kind(&mut store, "k", 1_010), Response::Missing);
    assert_eq!(
        store.run(1, &request(9, expire("k", 10, ExpireCondition::Always)), 1_010),
        Response::Missing
    );
}

#[test]
fn coordination_objects_refuse_an_expiry() {
    let mut store = Store::new(UNLIMITED, 1);
    let put = Command::from(MapCommand::Put {
        key: "m".into(),
        field: "f".into(),
        value: "v".into(),
    });
    assert_eq!(
        store.run(1, &request(1, put.clone()), 0),
        Response::FieldStored { created: true }
    );
    assert_eq!(
        store.run(1, &request(2, put), 0),
        Response::FieldStored { created: false }
    );
    let refused = store.run(1, &request(3, expire("m", 10, ExpireCondition::Always)), 0);
    assert_eq!(code(&refused), Some(ErrorCode::WrongType));
    assert_eq!(ttl(&mut store, "m", 0), Response::Ttl { ttl_ms: None });
    let persist = Command::from(KeyCommand::Persist { key: "m".into() });
    assert_eq!(
        store.run(1, &request(4, persist), 0),
        Response::ExpiryChanged { changed: false }
    );
}
