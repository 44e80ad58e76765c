//! The memory limit: growth refused, records counted, reads, deletes and shrinking
//! always allowed.

use super::*;
use engram_proto::{BytesCommand, CounterCommand};

/// A recorded write's operation record is added after the write; the limit check
/// counts it in, so a write that grows the data never leaves the shard past its limit.
#[test]
fn memory_limit_counts_the_record_of_a_recorded_write() {
    let value = "x".repeat(100);
    let write = |op_id: u64, index: usize| request(op_id, set(&format!("k{index}"), &value, 0, SetCondition::Always));
    let mut probe = Store::new(UNLIMITED, 1);
    probe.run(1, &write(0, 0), 0);
    let entry = probe.stats().memory_used_bytes;
    probe.run(1, &write(1, 1), 0);
    let entry_and_record = probe.stats().memory_used_bytes - entry;
    assert!(entry_and_record > entry, "a recorded write must cost a record");
    // Room for three recorded writes and a fourth entry without its record.
    let limit = 3 * entry_and_record + entry;
    let mut store = Store::new(limit, 1);
    for index in 0..3 {
        let answer = store.run(1, &write(index as u64 + 1, index), 0);
        assert!(matches!(answer, Response::Written { .. }), "{answer:?}");
    }
    let refused = store.run(1, &write(4, 3), 0);
    assert_eq!(code(&refused), Some(ErrorCode::OutOfMemory), "{refused:?}");
    // The refusal is not recorded either: it changed nothing and would need memory.
    assert_eq!(store.stats().memory_used_bytes, 3 * entry_and_record);
    // The same write without an operation id takes no record, and fits.
    let answer = store.run(1, &write(0, 3), 0);
    assert!(matches!(answer, Response::Written { .. }), "{answer:?}");
    assert!(store.stats().memory_used_bytes <= limit);
    // A counter's creation is checked the same way: room for its entry, not its record.
    let add = |op_id: u64| {
        request(
            op_id,
            Command::from(CounterCommand::Add {
                key: "c".into(),
                delta: 1,
            }),
        )
    };
    let mut probe = Store::new(UNLIMITED, 1);
    probe.run(1, &add(0), 0);
    let counter_entry = probe.stats().memory_used_bytes;
    let limit = 3 * entry_and_record + counter_entry;
    let mut store = Store::new(limit, 1);
    for index in 0..3 {
        store.run(1, &write(index as u64 + 1, index), 0);
    }
    let refused = store.run(1, &add(5), 0);
    assert_eq!(code(&refused), Some(ErrorCode::OutOfMemory), "{refused:?}");
    assert!(matches!(store.run(1, &add(0), 0), Response::Counter { value: 1 }));
    assert!(store.stats().memory_used_bytes <= limit);
}

#[test]
fn memory_limit_refuses_growth_but_not_reads_deletes_or_shrinking() {
    let limit = 4 * (ENTRY_OVERHEAD_BYTES + 110);
    let mut store = Store::new(limit, 1);
    let value = "x".repeat(100);
    let mut written = 0;
    let mut refused = None;
    for i in 0..10 {
        match store.run(
            1,
            &request(0, set(&format!("k{i}"), &value, 0, SetCondition::Always)),
            0,
        ) {
            Response::Written { .. } => written += 1,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    assert!((1..10).contains(&written));
    let refused = refused.expect("the limit was never hit");
    assert_eq!(code(&refused), Some(ErrorCode::OutOfMemory));
    assert!(store.stats().memory_used_bytes <= limit);
    assert!(matches!(
        store.run(1, &request(0, Command::from(BytesCommand::Get { key: "k0".into() })), 0),
        Response::Value { .. }
    ));
    assert!(matches!(
        store.run(1, &request(0, set("k0", "small", 0, SetCondition::Always)), 0),
        Response::Written { .. }
    ));
    assert_eq!(
        store.run(1, &request(0, Command::from(BytesCommand::Del { key: "k1".into() })), 0),
        Response::Deleted { existed: true }
    );
    assert!(matches!(
        store.run(1, &request(0, set("new", &value, 0, SetCondition::Always)), 0),
        Response::Written { .. }
    ));
}

#[test]
fn appends_are_charged_for_their_real_growth_and_never_pass_the_limit() {
    let limit = 8 * 1024;
    let mut store = Store::new(limit, 1);
    store.run(1, &request(0, set("k", &"x".repeat(1_000), 0, SetCondition::Always)), 0);
    let mut accepted = 0;
    for _ in 0..10_000 {
        match store.run(
            1,
            &request(
                0,
                Command::from(BytesCommand::Append {
                    key: "k".into(),
                    value: b"+".to_vec(),
                }),
            ),
            0,
        ) {
            Response::Appended { .. } => accepted += 1,
            refused => {
                assert_eq!(code(&refused), Some(ErrorCode::OutOfMemory));
                break;
            }
        }
        assert!(
            store.stats().memory_used_bytes <= limit,
            "{} over {limit}",
            store.stats().memory_used_bytes
        );
    }
    assert!(
        accepted > 1_000,
        "exact growth near the limit still admits appends ({accepted})"
    );
    assert!(store.stats().memory_used_bytes <= limit);
}
