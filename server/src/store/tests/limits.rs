//! Size and wait limits: oversize keys, values and appends, and waits past
//! `WAIT_MS_MAX`, refused with the limit named.

use super::*;
use engram_proto::{BytesCommand, DataCommand, LatchCommand};

#[test]
fn oversize_key_and_value_are_refused() {
    let mut store = Store::new(UNLIMITED, 1);
    let key = vec![b'k'; STORED_KEY_BYTES_MAX + 1];
    let response = store.run(1, &request(0, Command::from(BytesCommand::Get { key })), 0);
    assert_eq!(code(&response), Some(ErrorCode::KeyTooLarge));
    let value = vec![b'v'; VALUE_BYTES_MAX + 1];
    let response = store.run(
        1,
        &request(
            0,
            Command::from(BytesCommand::Set {
                key: "k".into(),
                value,
                ttl_ms: 0,
                condition: SetCondition::Always,
            }),
        ),
        0,
    );
    assert_eq!(code(&response), Some(ErrorCode::ValueTooLarge));
    store.run(1, &request(0, set("k", "abc", 0, SetCondition::Always)), 0);
    let response = store.run(
        1,
        &request(
            0,
            Command::from(BytesCommand::Append {
                key: "k".into(),
                value: vec![0; VALUE_BYTES_MAX],
            }),
        ),
        0,
    );
    assert_eq!(code(&response), Some(ErrorCode::ValueTooLarge));
}

/// A `ValueTooLarge` refusal naming the length and the limit, as a SET's.
fn assert_value_too_large(response: &Response, length: usize) {
    let Response::Error(reply) = response else {
        panic!("not refused: {response:?}")
    };
    assert_eq!(ErrorCode::from_u16(reply.code), Some(ErrorCode::ValueTooLarge));
    assert_eq!(
        reply.message,
        format!("value of {length} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})")
    );
}

#[test]
fn appends_past_value_bytes_max_are_refused() {
    let mut store = Store::new(UNLIMITED, 1);
    // Stored-form keys (empty namespace), so the slots can be exported below.
    let append = |key: &[u8], length: usize| {
        Command::Data(DataCommand::Bytes(BytesCommand::Append {
            key: key.to_vec(),
            value: vec![b'x'; length],
        }))
    };
    let get = |key: &[u8]| Command::Data(DataCommand::Bytes(BytesCommand::Get { key: key.to_vec() }));

    // A suffix over the limit to a missing key would create the value: refused as a SET.
    let response = store.run(1, &request(1, append(b"\0new", VALUE_BYTES_MAX + 1)), 0);
    assert_value_too_large(&response, VALUE_BYTES_MAX + 1);
    assert_eq!(store.run(1, &request(0, get(b"\0new")), 0), Response::Missing);
    let response = store.run(1, &request(2, append(b"\0full", VALUE_BYTES_MAX)), 0);
    assert!(matches!(response, Response::Written { .. }), "{response:?}");

    // Growing an existing value past the limit is refused and changes nothing.
    let set = Command::from(BytesCommand::Set {
        key: b"\0k".to_vec(),
        value: vec![b'v'; VALUE_BYTES_MAX - 2],
        ttl_ms: 0,
        condition: SetCondition::Always,
    });
    let Response::Written { version } = store.run(1, &request(3, set), 0) else {
        panic!("not written")
    };
    assert_value_too_large(&store.run(1, &request(4, append(b"\0k", 3)), 0), VALUE_BYTES_MAX + 1);
    let Response::Value {
        value,
        version: unchanged,
    } = store.run(1, &request(0, get(b"\0k")), 0)
    else {
        panic!("value gone")
    };
    assert_eq!((value.len(), unchanged), (VALUE_BYTES_MAX - 2, version));
    let response = store.run(1, &request(5, append(b"\0k", 2)), 0);
    assert!(
        matches!(response, Response::Appended { length, .. } if length == VALUE_BYTES_MAX as u64),
        "{response:?}"
    );
    assert_value_too_large(&store.run(1, &request(6, append(b"\0k", 1)), 0), VALUE_BYTES_MAX + 1);
    assert_value_too_large(&store.run(1, &request(7, append(b"\0full", 1)), 0), VALUE_BYTES_MAX + 1);

    // Nothing over the limit is held, not even as an append's spare room, so the
    // slots migrate whole.
    for entry in store.entries.iter() {
        let KeyEntry::Compact(compact) = entry else {
            panic!("only bytes values were written")
        };
        let Contents::Bytes(value) = compact.contents() else {
            panic!("only bytes values were written")
        };
        assert!(value.len() <= VALUE_BYTES_MAX && compact.capacity() <= VALUE_BYTES_MAX);
    }
    assert_eq!(store.data_bytes, store.recomputed_data_bytes());
    let mut target = Store::new(UNLIMITED, 2);
    for batch in store.export_slots(|_| true, 0, 64 * 1024) {
        target.import_batch(batch, 0).unwrap();
    }
    assert_eq!(target.stats().keys, 2);
}

#[test]
fn waits_are_bounded_by_wait_ms_max() {
    use engram_proto::limits::WAIT_MS_MAX;
    let mut store = Store::new(UNLIMITED, 1);
    let wait = |timeout_ms| {
        request(
            0,
            Command::from(LatchCommand::Wait {
                key: "latch".into(),
                timeout_ms,
            }),
        )
    };
    // A latch at zero answers at once, whatever the wait.
    assert_eq!(store.run(1, &wait(WAIT_MS_MAX), 0), Response::LatchOpen);
    let refused = store.run(1, &wait(WAIT_MS_MAX + 1), 0);
    assert_eq!(code(&refused), Some(ErrorCode::InvalidArgument));
    let Response::Error(reply) = refused else {
        unreachable!()
    };
    assert!(reply.message.contains("wait_ms_max"), "{}", reply.message);
}
