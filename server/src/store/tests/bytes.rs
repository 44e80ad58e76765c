//! Bytes values: set, get, delete, conditional writes, appends, and the reuse of read
//! buffers.

use super::*;
use engram_proto::BytesCommand;

#[test]
fn set_get_del() {
    let mut store = Store::new(UNLIMITED, 1);
    let Response::Written { version } = store.run(1, &request(1, set("k", "v", 0, SetCondition::Always)), 0) else {
        panic!("not written")
    };
    assert_eq!(
        store.run(1, &request(0, Command::from(BytesCommand::Get { key: "k".into() })), 0),
        Response::Value {
            value: b"v".to_vec(),
            version
        }
    );
    assert_eq!(
        store.run(1, &request(2, Command::from(BytesCommand::Del { key: "k".into() })), 0),
        Response::Deleted { existed: true }
    );
    assert_eq!(
        store.run(1, &request(3, Command::from(BytesCommand::Del { key: "k".into() })), 0),
        Response::Deleted { existed: false }
    );
    assert_eq!(
        store.run(1, &request(0, Command::from(BytesCommand::Get { key: "k".into() })), 0),
        Response::Missing
    );
    assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
}

#[test]
fn conditional_writes() {
    let mut store = Store::new(UNLIMITED, 1);
    let Response::Written { version } = store.run(1, &request(1, set("k", "a", 0, SetCondition::IfAbsent)), 0) else {
        panic!()
    };
    assert_eq!(
        store.run(1, &request(2, set("k", "b", 0, SetCondition::IfAbsent)), 0),
        Response::Conflict {
            current_version: version
        }
    );
    assert_eq!(
        store.run(
            1,
            &request(3, set("k", "b", 0, SetCondition::IfVersion(version + 7))),
            0
        ),
        Response::Conflict {
            current_version: version
        }
    );
    let Response::Written { version: second } =
        store.run(1, &request(4, set("k", "b", 0, SetCondition::IfVersion(version))), 0)
    else {
        panic!()
    };
    assert!(second > version);
    assert_eq!(
        store.run(1, &request(5, set("gone", "x", 0, SetCondition::IfVersion(1))), 0),
        Response::Conflict { current_version: 0 }
    );
}

#[test]
fn append_creates_and_extends() {
    let mut store = Store::new(UNLIMITED, 1);
    assert!(matches!(
        store.run(
            1,
            &request(
                1,
                Command::from(BytesCommand::Append {
                    key: "k".into(),
                    value: b"ab".to_vec()
                })
            ),
            0
        ),
        Response::Written { .. }
    ));
    let Response::Appended { length, version } = store.run(
        1,
        &request(
            2,
            Command::from(BytesCommand::Append {
                key: "k".into(),
                value: b"cd".to_vec(),
            }),
        ),
        0,
    ) else {
        panic!()
    };
    assert_eq!(length, 4);
    assert_eq!(
        store.run(1, &request(0, Command::from(BytesCommand::Get { key: "k".into() })), 0),
        Response::Value {
            value: b"abcd".to_vec(),
            version
        }
    );
}

#[test]
fn a_read_answers_in_the_buffer_of_the_previous_read() {
    // Buffers are told apart by capacity: an address proves nothing, since the
    // allocator hands a freed block of the same size straight back.
    const MARKED_CAPACITY: usize = 1000;
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("a", "first value", 0, SetCondition::Always)), 0);
    store.run(1, &request(2, set("b", "second", 0, SetCondition::Always)), 0);
    let get = |key: &str| request(0, Command::from(BytesCommand::Get { key: key.into() }));

    let mut marked = Vec::with_capacity(MARKED_CAPACITY);
    marked.extend_from_slice(b"a stale value, longer than the next one");
    store.recycle(Response::Value {
        value: marked,
        version: 0,
    });
    // A miss leaves the spare buffer where it is.
    assert_eq!(store.run(1, &get("absent"), 0), Response::Missing);
    let Response::Value { value, .. } = store.run(1, &get("b"), 0) else {
        panic!("b must be readable");
    };
    assert_eq!(value, b"second", "the buffer holds only the new value");
    assert_eq!(value.capacity(), MARKED_CAPACITY, "the read reuses the recycled buffer");

    // A buffer above the limit is freed rather than kept in place of the spare one.
    store.recycle(Response::Value { value, version: 0 });
    store.recycle(Response::Value {
        value: Vec::with_capacity(RECYCLED_VALUE_BYTES_MAX + 1),
        version: 0,
    });
    let Response::Value { value, .. } = store.run(1, &get("a"), 0) else {
        panic!("a must be readable");
    };
    assert_eq!(value, b"first value");
    assert_eq!(value.capacity(), MARKED_CAPACITY);
}
