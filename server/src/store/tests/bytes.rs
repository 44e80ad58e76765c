//! Bytes values: set, get, delete, conditional writes, appends, and the reuse of read
//! buffers.

use super::*;
use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{BytesCommand, CounterCommand};

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

fn get_range(key: &str, start: i64, end: i64) -> Command {
    Command::from(BytesCommand::GetRange {
        key: key.into(),
        start,
        end,
    })
}

fn set_range(key: &str, offset: u64, value: &[u8]) -> Command {
    Command::from(BytesCommand::SetRange {
        key: key.into(),
        offset,
        value: value.to_vec(),
    })
}

fn value_of(response: Response) -> Vec<u8> {
    match response {
        Response::Value { value, .. } => value,
        other => panic!("expected a value, got {other:?}"),
    }
}

/// The examples of Redis's `GETRANGE` documentation, and the edges its code handles.
#[test]
fn get_range_reads_as_redis_does() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("k", "This is a string", 0, SetCondition::Always)), 0);
    let cases: [(i64, i64, &str); 11] = [
        (0, 3, "This"),
        (-3, -1, "ing"),
        (0, -1, "This is a string"),
        (10, 100, "string"),
        (5, 3, ""),
        (-100, 3, "This"),
        (-1, -3, ""),
        (15, 15, "g"),
        (16, 20, ""),
        (i64::MIN, i64::MAX, "This is a string"),
        (i64::MAX, i64::MIN, ""),
    ];
    for (start, end, expected) in cases {
        let value = value_of(store.run(1, &request(0, get_range("k", start, end)), 0));
        assert_eq!(value, expected.as_bytes(), "GETRANGE k {start} {end}");
    }
    assert_eq!(
        store.run(1, &request(0, get_range("absent", 0, -1)), 0),
        Response::Missing
    );
    store.run(1, &request(2, set("empty", "", 0, SetCondition::Always)), 0);
    assert!(value_of(store.run(1, &request(0, get_range("empty", 0, -1)), 0)).is_empty());
}

#[test]
fn set_range_overwrites_pads_and_keeps_the_expiry() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("k", "Hello World", 1_000, SetCondition::Always)), 0);
    let Response::RangeWritten { version, length: 11 } = store.run(1, &request(2, set_range("k", 6, b"Redis")), 10)
    else {
        panic!("not written")
    };
    assert_eq!(
        store.run(1, &request(0, Command::from(BytesCommand::Get { key: "k".into() })), 10),
        Response::Value {
            value: b"Hello Redis".to_vec(),
            version
        }
    );
    // Past the end: zero bytes in between, as on a key that was absent.
    let Response::RangeWritten { length: 11, .. } = store.run(1, &request(3, set_range("new", 6, b"Redis")), 10) else {
        panic!("not created")
    };
    assert_eq!(
        value_of(store.run(1, &request(0, get_range("new", 0, -1)), 10)),
        b"\0\0\0\0\0\0Redis"
    );
    // The expiry of the value it changed still holds.
    assert_eq!(
        store.run(1, &request(0, get_range("k", 0, -1)), 1_000),
        Response::Missing
    );
    // An empty patch changes nothing and creates nothing.
    assert_eq!(
        store.run(1, &request(4, set_range("none", 5, b"")), 10),
        Response::Missing
    );
    assert_eq!(
        store.run(1, &request(5, set_range("new", 100, b"")), 10),
        Response::RangeWritten {
            version: store.last_version,
            length: 11
        }
    );
    assert_eq!(store.stats().keys, 1);
    assert_eq!(store.data_bytes, store.recomputed_data_bytes());
}

#[test]
fn set_range_past_the_value_limit_is_refused_before_it_allocates() {
    let mut store = Store::new(UNLIMITED, 1);
    for offset in [VALUE_BYTES_MAX as u64, u64::MAX] {
        let refused = store.run(1, &request(offset % 1_000 + 1, set_range("k", offset, b"x")), 0);
        assert_eq!(code(&refused), Some(ErrorCode::ValueTooLarge), "{refused:?}");
    }
    let at_the_limit = store.run(1, &request(7, set_range("k", VALUE_BYTES_MAX as u64 - 1, b"x")), 0);
    assert!(matches!(at_the_limit, Response::RangeWritten { length, .. } if length == VALUE_BYTES_MAX as u64));
}

#[test]
fn range_commands_refuse_other_types_and_len_counts_bytes() {
    let mut store = Store::new(UNLIMITED, 1);
    let add = Command::from(CounterCommand::Add {
        key: "c".into(),
        delta: 1,
    });
    store.run(1, &request(1, add), 0);
    for command in [
        get_range("c", 0, -1),
        set_range("c", 0, b"x"),
        Command::from(BytesCommand::Len { key: "c".into() }),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = store.run(1, &request(10 + command.0 as u64, command.1), 0);
        assert_eq!(code(&answer), Some(ErrorCode::WrongType));
    }
    store.run(1, &request(3, set("k", "four", 0, SetCondition::Always)), 0);
    let len = |store: &mut Store, key: &str| {
        store.run(1, &request(0, Command::from(BytesCommand::Len { key: key.into() })), 0)
    };
    assert_eq!(len(&mut store, "k"), Response::ValueLength { length: 4 });
    assert_eq!(len(&mut store, "absent"), Response::Missing);
}

fn add_integer(key: &str, delta: i64) -> Command {
    Command::from(BytesCommand::AddInteger { key: key.into(), delta })
}

/// Redis's `INCRBY` on strings: canonical decimal integers only, the value stays bytes
/// and keeps its expiry, and overflow is refused.
#[test]
fn add_integer_reads_and_writes_decimal_strings() {
    let mut store = Store::new(UNLIMITED, 1);
    assert_eq!(
        store.run(1, &request(1, add_integer("n", 5)), 0),
        Response::Counter { value: 5 }
    );
    store.run(1, &request(2, set("t", "41", 1_000, SetCondition::Always)), 0);
    assert_eq!(
        store.run(1, &request(3, add_integer("t", 1)), 0),
        Response::Counter { value: 42 }
    );
    assert_eq!(value_of(store.run(1, &request(0, get_range("t", 0, -1)), 0)), b"42");
    assert_eq!(
        store.run(1, &request(0, get_range("t", 0, -1)), 1_000),
        Response::Missing,
        "the expiry held"
    );
    for (op_id, text) in ["+1", "01", "-0", " 1", "1 ", "1.5", "", "x", "9223372036854775808"]
        .into_iter()
        .enumerate()
    {
        store.run(
            1,
            &request(100 + op_id as u64, set("s", text, 0, SetCondition::Always)),
            0,
        );
        let refused = store.run(1, &request(200 + op_id as u64, add_integer("s", 1)), 0);
        assert_eq!(
            code(&refused),
            Some(ErrorCode::InvalidArgument),
            "{text:?}: {refused:?}"
        );
    }
    store.run(
        1,
        &request(4, set("max", &i64::MAX.to_string(), 0, SetCondition::Always)),
        0,
    );
    assert_eq!(
        code(&store.run(1, &request(5, add_integer("max", 1)), 0)),
        Some(ErrorCode::Overflow)
    );
    store.run(
        1,
        &request(6, set("min", &i64::MIN.to_string(), 0, SetCondition::Always)),
        0,
    );
    assert_eq!(
        store.run(1, &request(7, add_integer("min", 0)), 0),
        Response::Counter { value: i64::MIN }
    );
    let counter = Command::from(CounterCommand::Add {
        key: "c".into(),
        delta: 1,
    });
    store.run(1, &request(8, counter), 0);
    assert_eq!(
        code(&store.run(1, &request(9, add_integer("c", 1)), 0)),
        Some(ErrorCode::WrongType)
    );
}

fn replace(key: &str, value: Option<&str>, keep_ttl: bool, condition: SetCondition) -> Command {
    Command::from(BytesCommand::Replace {
        key: key.into(),
        value: value.map(Into::into),
        ttl_ms: 0,
        keep_ttl,
        condition,
    })
}

/// Redis's `SET … GET`, `GETSET`, `GETDEL` and `KEEPTTL`: the old value comes back
/// whether or not the condition let the write happen.
#[test]
fn replace_answers_the_old_value_and_keeps_the_expiry_when_asked() {
    let mut store = Store::new(UNLIMITED, 1);
    let replaced = |old: Option<&str>, written| Response::Replaced {
        old: old.map(|old| old.as_bytes().to_vec()),
        written,
    };
    let absent_then = store.run(
        1,
        &request(1, replace("k", Some("a"), false, SetCondition::IfPresent)),
        0,
    );
    assert_eq!(absent_then, replaced(None, false));
    assert_eq!(
        store.run(1, &request(2, replace("k", Some("a"), false, SetCondition::Always)), 0),
        replaced(None, true)
    );
    store.run(1, &request(3, set("k", "b", 1_000, SetCondition::IfPresent)), 0);
    assert_eq!(
        store.run(1, &request(4, replace("k", Some("c"), true, SetCondition::Always)), 0),
        replaced(Some("b"), true)
    );
    assert_eq!(
        store.run(1, &request(5, get_range("k", 0, -1)), 1_000),
        Response::Missing,
        "KEEPTTL kept it"
    );
    store.run(1, &request(6, set("d", "v", 0, SetCondition::Always)), 0);
    assert_eq!(
        store.run(1, &request(7, replace("d", None, false, SetCondition::Always)), 0),
        replaced(Some("v"), true)
    );
    assert_eq!(
        store.run(1, &request(8, replace("d", None, false, SetCondition::Always)), 0),
        replaced(None, false)
    );
    let add = Command::from(CounterCommand::Add {
        key: "c".into(),
        delta: 1,
    });
    store.run(1, &request(9, add), 0);
    let refused = store.run(1, &request(10, replace("c", None, false, SetCondition::Always)), 0);
    assert_eq!(code(&refused), Some(ErrorCode::WrongType));
    assert_eq!(store.data_bytes, store.recomputed_data_bytes());
}
