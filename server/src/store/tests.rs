use std::collections::HashMap;

use engram_proto::{Command, ErrorCode, MigratedEntry, MigratedObject, Request, Response, SetCondition, SlotBatch};
use proptest::prelude::*;

use super::*;

const UNLIMITED: u64 = u64::MAX / 2;

impl Store {
    /// Applies a request that must be answered at once.
    fn run(&mut self, client_id: u64, request: &Request, now_ms: u64) -> Response {
        match self.apply(client_id, request, now_ms) {
            Outcome::Ready(response) => response,
            Outcome::Parked(waiter) => panic!("{:?} parked as waiter {waiter}", request.command),
        }
    }
}

fn request(op_id: u64, command: Command) -> Request {
    Request {
        op_id,
        completed_below_op_id: 0,
        command,
    }
}

fn set(key: &str, value: &str, ttl_ms: u64, condition: SetCondition) -> Command {
    Command::Set {
        key: key.into(),
        value: value.into(),
        ttl_ms,
        condition,
    }
}

fn code(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(reply) => ErrorCode::from_u16(reply.code),
        _ => None,
    }
}

#[test]
fn set_get_del() {
    let mut store = Store::new(UNLIMITED, 1);
    let Response::Written { version } = store.run(1, &request(1, set("k", "v", 0, SetCondition::Always)), 0) else {
        panic!("not written")
    };
    assert_eq!(
        store.run(1, &request(0, Command::Get { key: "k".into() }), 0),
        Response::Value {
            value: b"v".to_vec(),
            version
        }
    );
    assert_eq!(
        store.run(1, &request(2, Command::Del { key: "k".into() }), 0),
        Response::Deleted { existed: true }
    );
    assert_eq!(
        store.run(1, &request(3, Command::Del { key: "k".into() }), 0),
        Response::Deleted { existed: false }
    );
    assert_eq!(
        store.run(1, &request(0, Command::Get { key: "k".into() }), 0),
        Response::Missing
    );
    assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
}

#[test]
fn ttl_expires_lazily_and_actively() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("a", "1", 100, SetCondition::Always)), 1_000);
    store.run(1, &request(2, set("b", "2", 200, SetCondition::Always)), 1_000);
    assert!(matches!(
        store.run(1, &request(0, Command::Get { key: "a".into() }), 1_099),
        Response::Value { .. }
    ));
    assert_eq!(
        store.run(1, &request(0, Command::Get { key: "a".into() }), 1_100),
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
        store.run(1, &request(0, Command::Get { key: "a".into() }), 500),
        Response::Value { .. }
    ));
    assert_eq!(store.expire_due(1_000, 10), 0);
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
fn counters_never_wrap_and_type_is_enforced() {
    let mut store = Store::new(UNLIMITED, 1);
    assert_eq!(
        store.run(1, &request(0, Command::CounterGet { key: "c".into() }), 0),
        Response::Counter { value: 0 }
    );
    assert_eq!(
        store.run(
            1,
            &request(
                1,
                Command::CounterSet {
                    key: "c".into(),
                    value: i64::MAX - 1
                }
            ),
            0
        ),
        Response::Counter { value: i64::MAX - 1 }
    );
    let overflow = store.run(
        1,
        &request(
            2,
            Command::CounterAdd {
                key: "c".into(),
                delta: 2,
            },
        ),
        0,
    );
    assert_eq!(code(&overflow), Some(ErrorCode::Overflow));
    assert_eq!(
        store.run(1, &request(0, Command::CounterGet { key: "c".into() }), 0),
        Response::Counter { value: i64::MAX - 1 }
    );
    assert_eq!(
        code(&store.run(1, &request(0, Command::Get { key: "c".into() }), 0)),
        Some(ErrorCode::WrongType)
    );
    assert_eq!(
        code(&store.run(1, &request(3, set("c", "x", 0, SetCondition::Always)), 0)),
        Some(ErrorCode::WrongType)
    );
    store.run(1, &request(4, set("b", "x", 0, SetCondition::Always)), 0);
    let wrong = store.run(
        1,
        &request(
            5,
            Command::CounterAdd {
                key: "b".into(),
                delta: 1,
            },
        ),
        0,
    );
    assert_eq!(code(&wrong), Some(ErrorCode::WrongType));
    assert_eq!(
        store.run(
            1,
            &request(
                6,
                Command::CounterCas {
                    key: "n".into(),
                    expected: 1,
                    new: 5
                }
            ),
            0
        ),
        Response::CounterCas {
            swapped: false,
            current: 0
        }
    );
    assert_eq!(
        store.run(
            1,
            &request(
                7,
                Command::CounterCas {
                    key: "n".into(),
                    expected: 0,
                    new: 5
                }
            ),
            0
        ),
        Response::CounterCas {
            swapped: true,
            current: 5
        }
    );
}

#[test]
fn retried_mutation_is_applied_once() {
    let mut store = Store::new(UNLIMITED, 1);
    let add = request(
        77,
        Command::CounterAdd {
            key: "c".into(),
            delta: 5,
        },
    );
    assert_eq!(store.run(9, &add, 0), Response::Counter { value: 5 });
    assert_eq!(
        store.run(9, &add, 10),
        Response::Counter { value: 5 },
        "retry must get the first answer"
    );
    assert_eq!(
        store.run(0, &request(0, Command::CounterGet { key: "c".into() }), 0),
        Response::Counter { value: 5 }
    );
    // The same op id from another client is another operation.
    assert_eq!(store.run(10, &add, 10), Response::Counter { value: 10 });
}

#[test]
fn acknowledged_records_are_dropped_and_stale_retries_refused() {
    let mut store = Store::new(UNLIMITED, 1);
    for op_id in 1..=10 {
        store.run(
            3,
            &request(
                op_id,
                Command::CounterAdd {
                    key: "c".into(),
                    delta: 1,
                },
            ),
            0,
        );
    }
    assert_eq!(store.stats().operation_records, 10);
    let acknowledging = Request {
        op_id: 11,
        completed_below_op_id: 8,
        command: Command::CounterAdd {
            key: "c".into(),
            delta: 1,
        },
    };
    store.run(3, &acknowledging, 0);
    assert_eq!(store.stats().operation_records, 4, "ops 8..=11 remain");
    let stale = store.run(
        3,
        &request(
            2,
            Command::CounterAdd {
                key: "c".into(),
                delta: 1,
            },
        ),
        0,
    );
    assert_eq!(code(&stale), Some(ErrorCode::InvalidArgument));
    assert_eq!(
        store.run(3, &request(0, Command::CounterGet { key: "c".into() }), 0),
        Response::Counter { value: 11 }
    );
}

#[test]
fn idle_sessions_are_forgotten_after_the_retry_horizon() {
    let mut store = Store::new(UNLIMITED, 1);
    store.run(
        3,
        &request(
            1,
            Command::CounterAdd {
                key: "c".into(),
                delta: 1,
            },
        ),
        0,
    );
    store.expire_due(SESSION_IDLE_MS_MAX, 10);
    assert_eq!(
        store.stats().operation_records,
        1,
        "kept through the whole retry horizon"
    );
    store.expire_due(SESSION_IDLE_MS_MAX + 1, 10);
    assert_eq!(store.stats().operation_records, 0);
    assert_eq!(store.stats().memory_used_bytes, entry_bytes(b"c", 0));
}

/// A call may last its timeout plus its wait, up to `WAIT_MS_MAX`: the record of a long
/// wait is kept until `SESSION_IDLE_MS_MAX` after the wait's end, so a retry at the very
/// end of the longest call gets the first answer instead of popping a second value.
#[test]
fn the_record_of_a_long_wait_outlives_the_wait() {
    use engram_proto::limits::{CALL_TIMEOUT_MS_MAX, WAIT_MS_MAX};
    use engram_proto::QueueEnd;
    let mut store = Store::new(UNLIMITED, 1);
    let pop = request(
        1,
        Command::QueuePop {
            key: "q".into(),
            end: QueueEnd::Front,
            timeout_ms: WAIT_MS_MAX,
        },
    );
    let push = |value: &str| {
        request(
            0,
            Command::QueuePush {
                key: "q".into(),
                value: value.into(),
                end: QueueEnd::Back,
            },
        )
    };
    let Outcome::Parked(waiter) = store.apply(3, &pop, 0) else {
        panic!("a pop of an empty queue parks")
    };
    // Past the horizon of a call that does not wait, the parked pop keeps its record.
    let later = SESSION_IDLE_MS_MAX + 1;
    store.expire_due(later, 10);
    assert_eq!(store.stats().operation_records, 1, "the parked wait's record stays");
    store.run(4, &push("first"), later);
    let answered = store.take_completions();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].waiter, waiter);
    assert!(matches!(&answered[0].response, Response::Value { value, .. } if value == b"first"));
    store.run(4, &push("second"), later);

    // The client's last retry comes at most its call timeout plus its wait after it sent.
    let last_retry = CALL_TIMEOUT_MS_MAX + WAIT_MS_MAX;
    store.expire_due(last_retry, 10);
    assert!(
        matches!(store.run(3, &pop, last_retry), Response::Value { value, .. } if value == b"first"),
        "the retry gets the recorded first answer"
    );
    assert_eq!(
        store.run(4, &request(0, Command::QueueLen { key: "q".into() }), last_retry),
        Response::QueueLength { length: 1 },
        "nothing was popped twice"
    );
    // The retry counts as a new request asking for the same wait; after that, it goes.
    store.expire_due(last_retry + WAIT_MS_MAX + SESSION_IDLE_MS_MAX + 1, 10);
    assert_eq!(store.stats().operation_records, 0);
}

#[test]
fn waits_are_bounded_by_wait_ms_max() {
    use engram_proto::limits::WAIT_MS_MAX;
    let mut store = Store::new(UNLIMITED, 1);
    let wait = |timeout_ms| {
        request(
            0,
            Command::LatchWait {
                key: "latch".into(),
                timeout_ms,
            },
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
            Command::CounterAdd {
                key: "c".into(),
                delta: 1,
            },
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
        store.run(1, &request(0, Command::Get { key: "k0".into() }), 0),
        Response::Value { .. }
    ));
    assert!(matches!(
        store.run(1, &request(0, set("k0", "small", 0, SetCondition::Always)), 0),
        Response::Written { .. }
    ));
    assert_eq!(
        store.run(1, &request(0, Command::Del { key: "k1".into() }), 0),
        Response::Deleted { existed: true }
    );
    assert!(matches!(
        store.run(1, &request(0, set("new", &value, 0, SetCondition::Always)), 0),
        Response::Written { .. }
    ));
}

#[test]
fn oversize_key_and_value_are_refused() {
    let mut store = Store::new(UNLIMITED, 1);
    let key = vec![b'k'; STORED_KEY_BYTES_MAX + 1];
    let response = store.run(1, &request(0, Command::Get { key }), 0);
    assert_eq!(code(&response), Some(ErrorCode::KeyTooLarge));
    let value = vec![b'v'; VALUE_BYTES_MAX + 1];
    let response = store.run(
        1,
        &request(
            0,
            Command::Set {
                key: "k".into(),
                value,
                ttl_ms: 0,
                condition: SetCondition::Always,
            },
        ),
        0,
    );
    assert_eq!(code(&response), Some(ErrorCode::ValueTooLarge));
    store.run(1, &request(0, set("k", "abc", 0, SetCondition::Always)), 0);
    let response = store.run(
        1,
        &request(
            0,
            Command::Append {
                key: "k".into(),
                value: vec![0; VALUE_BYTES_MAX],
            },
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
    let append = |key: &[u8], length: usize| Command::Append {
        key: key.to_vec(),
        value: vec![b'x'; length],
    };
    let get = |key: &[u8]| Command::Get { key: key.to_vec() };

    // A suffix over the limit to a missing key would create the value: refused as a SET.
    let response = store.run(1, &request(1, append(b"\0new", VALUE_BYTES_MAX + 1)), 0);
    assert_value_too_large(&response, VALUE_BYTES_MAX + 1);
    assert_eq!(store.run(1, &request(0, get(b"\0new")), 0), Response::Missing);
    let response = store.run(1, &request(2, append(b"\0full", VALUE_BYTES_MAX)), 0);
    assert!(matches!(response, Response::Written { .. }), "{response:?}");

    // Growing an existing value past the limit is refused and changes nothing.
    let set = Command::Set {
        key: b"\0k".to_vec(),
        value: vec![b'v'; VALUE_BYTES_MAX - 2],
        ttl_ms: 0,
        condition: SetCondition::Always,
    };
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
fn append_creates_and_extends() {
    let mut store = Store::new(UNLIMITED, 1);
    assert!(matches!(
        store.run(
            1,
            &request(
                1,
                Command::Append {
                    key: "k".into(),
                    value: b"ab".to_vec()
                }
            ),
            0
        ),
        Response::Written { .. }
    ));
    let Response::Appended { length, version } = store.run(
        1,
        &request(
            2,
            Command::Append {
                key: "k".into(),
                value: b"cd".to_vec(),
            },
        ),
        0,
    ) else {
        panic!()
    };
    assert_eq!(length, 4);
    assert_eq!(
        store.run(1, &request(0, Command::Get { key: "k".into() }), 0),
        Response::Value {
            value: b"abcd".to_vec(),
            version
        }
    );
}

// Model-based test: the store against a plain reference model under a virtual clock.

#[derive(Debug, Clone, PartialEq)]
enum ModelObject {
    Bytes(Vec<u8>),
    Counter(i64),
}

#[derive(Default)]
struct Model {
    entries: HashMap<Vec<u8>, (ModelObject, u64, Option<u64>)>,
}

impl Model {
    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut (ModelObject, u64, Option<u64>)> {
        if let Some((_, _, Some(deadline))) = self.entries.get(key) {
            if *deadline <= now {
                self.entries.remove(key);
            }
        }
        self.entries.get_mut(key)
    }
}

#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Run(Command),
    Expire,
    /// A bytes value or counter migrated in from another shard, with its remaining TTL
    /// (the only way a counter gets a deadline).
    Import {
        key: Vec<u8>,
        object: ModelObject,
        ttl_ms: u64,
    },
}

/// The deadline a counter write keeps: the live counter's, if any.
fn counter_deadline(model: &mut Model, key: &[u8], now: u64) -> Option<u64> {
    match model.live(key, now) {
        Some((ModelObject::Counter(_), _, deadline)) => *deadline,
        _ => None,
    }
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let key = prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    let value = prop::collection::vec(any::<u8>(), 0..8);
    let condition = prop_oneof![
        Just(SetCondition::Always),
        Just(SetCondition::IfAbsent),
        (0u64..12).prop_map(SetCondition::IfVersion)
    ];
    prop_oneof![
        (1u64..50).prop_map(Step::Advance),
        Just(Step::Expire),
        key.clone().prop_map(|key| Step::Run(Command::Get { key })),
        (key.clone(), value.clone(), prop_oneof![Just(0u64), 1u64..60], condition).prop_map(
            |(key, value, ttl_ms, condition)| Step::Run(Command::Set {
                key,
                value,
                ttl_ms,
                condition
            })
        ),
        key.clone().prop_map(|key| Step::Run(Command::Del { key })),
        (key.clone(), value).prop_map(|(key, value)| Step::Run(Command::Append { key, value })),
        key.clone().prop_map(|key| Step::Run(Command::CounterGet { key })),
        (key.clone(), prop_oneof![-3i64..3, Just(i64::MAX), Just(i64::MIN)])
            .prop_map(|(key, delta)| Step::Run(Command::CounterAdd { key, delta })),
        (key.clone(), -3i64..3).prop_map(|(key, value)| Step::Run(Command::CounterSet { key, value })),
        (key.clone(), -2i64..2, -2i64..2).prop_map(|(key, expected, new)| Step::Run(Command::CounterCas {
            key,
            expected,
            new
        })),
        (
            key,
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..8).prop_map(ModelObject::Bytes),
                (-3i64..3).prop_map(ModelObject::Counter)
            ],
            prop_oneof![Just(0u64), 1u64..60]
        )
            .prop_map(|(key, object, ttl_ms)| Step::Import { key, object, ttl_ms }),
    ]
}

/// The model's answer, with versions checked separately (the model tracks the version
/// the store reported at the last write).
fn model_apply(model: &mut Model, command: &Command, now: u64, store_response: &Response) -> Response {
    let new_version = match store_response {
        Response::Written { version } | Response::Appended { version, .. } => *version,
        _ => 0,
    };
    match command {
        Command::Get { key } => match model.live(key, now) {
            None => Response::Missing,
            Some((ModelObject::Bytes(value), version, _)) => Response::Value {
                value: value.clone(),
                version: *version,
            },
            Some(_) => store_response.clone(),
        },
        Command::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => {
            let current = model
                .live(key, now)
                .map(|(object, version, _)| (object.clone(), *version));
            if let Some((ModelObject::Counter(_), _)) = current {
                return store_response.clone();
            }
            let current_version = current.map(|(_, version)| version);
            let holds = match condition {
                SetCondition::Always => true,
                SetCondition::IfAbsent => current_version.is_none(),
                SetCondition::IfVersion(expected) => current_version == Some(*expected),
            };
            if !holds {
                return Response::Conflict {
                    current_version: current_version.unwrap_or(0),
                };
            }
            let deadline = (*ttl_ms != 0).then(|| now + ttl_ms);
            model
                .entries
                .insert(key.clone(), (ModelObject::Bytes(value.clone()), new_version, deadline));
            Response::Written { version: new_version }
        }
        Command::Del { key } => Response::Deleted {
            existed: model.live(key, now).is_some() && model.entries.remove(key).is_some(),
        },
        Command::Append { key, value } => match model.live(key, now) {
            None => {
                model
                    .entries
                    .insert(key.clone(), (ModelObject::Bytes(value.clone()), new_version, None));
                Response::Written { version: new_version }
            }
            Some((ModelObject::Bytes(existing), version, _)) => {
                existing.extend_from_slice(value);
                *version = new_version;
                Response::Appended {
                    version: new_version,
                    length: existing.len() as u64,
                }
            }
            Some(_) => store_response.clone(),
        },
        Command::CounterGet { key } => match model.live(key, now) {
            None => Response::Counter { value: 0 },
            Some((ModelObject::Counter(value), _, _)) => Response::Counter { value: *value },
            Some(_) => store_response.clone(),
        },
        Command::CounterAdd { key, delta } => {
            let current = match model.live(key, now) {
                None => 0,
                Some((ModelObject::Counter(value), _, _)) => *value,
                Some(_) => return store_response.clone(),
            };
            match current.checked_add(*delta) {
                None => store_response.clone(),
                Some(value) => {
                    let deadline = counter_deadline(model, key, now);
                    model
                        .entries
                        .insert(key.clone(), (ModelObject::Counter(value), 0, deadline));
                    Response::Counter { value }
                }
            }
        }
        Command::CounterSet { key, value } => {
            if let Some((ModelObject::Bytes(_), _, _)) = model.live(key, now) {
                return store_response.clone();
            }
            let deadline = counter_deadline(model, key, now);
            model
                .entries
                .insert(key.clone(), (ModelObject::Counter(*value), 0, deadline));
            Response::Counter { value: *value }
        }
        Command::CounterCas { key, expected, new } => {
            let current = match model.live(key, now) {
                None => 0,
                Some((ModelObject::Counter(value), _, _)) => *value,
                Some(_) => return store_response.clone(),
            };
            if current != *expected {
                return Response::CounterCas {
                    swapped: false,
                    current,
                };
            }
            let deadline = counter_deadline(model, key, now);
            model
                .entries
                .insert(key.clone(), (ModelObject::Counter(*new), 0, deadline));
            Response::CounterCas {
                swapped: true,
                current: *new,
            }
        }
        _ => unreachable!("not generated"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn store_matches_reference_model(steps in prop::collection::vec(step_strategy(), 1..80)) {
        let mut store = Store::new(UNLIMITED, 7);
        let mut model = Model::default();
        let mut now = 0u64;
        let mut last_version = 0u64;
        for (index, step) in steps.into_iter().enumerate() {
            match step {
                Step::Advance(ms) => now += ms,
                Step::Expire => { store.expire_due(now, usize::MAX); }
                Step::Import { key, object, ttl_ms } => {
                    let version = store.last_version + 1;
                    let migrated = match &object {
                        ModelObject::Bytes(value) => MigratedObject::Bytes { value: value.clone() },
                        ModelObject::Counter(value) => MigratedObject::Counter { value: *value },
                    };
                    let batch = SlotBatch {
                        entries: vec![MigratedEntry { key: key.clone(), version, ttl_remaining_ms: ttl_ms, object: migrated }],
                        records: Vec::new(),
                        last_version: version,
                    };
                    // Refused for a key the table still holds, even an expired one.
                    let held = store.entries.get(&key).is_some();
                    let imported = store.import_batch(batch, now);
                    if held {
                        prop_assert!(matches!(imported, Err(ImportError::DuplicateKey { .. })), "{:?}", imported);
                    } else {
                        prop_assert_eq!(imported, Ok(()));
                        prop_assert!(model.live(&key, now).is_none(), "the store lost live key {:?}", key);
                        let model_version = if matches!(object, ModelObject::Bytes(_)) { version } else { 0 };
                        let deadline = (ttl_ms != 0).then(|| now + ttl_ms);
                        model.entries.insert(key, (object, model_version, deadline));
                        last_version = version;
                    }
                }
                Step::Run(command) => {
                    let actual = store.run(1, &request(index as u64 + 1, command.clone()), now);
                    // Errors the model does not compute (wrong type, overflow) must be
                    // the expected codes.
                    if let Some(code) = code(&actual) {
                        prop_assert!(matches!(code, ErrorCode::WrongType | ErrorCode::Overflow), "unexpected {code}");
                    }
                    if let Response::Written { version } | Response::Appended { version, .. } = actual {
                        prop_assert!(version > last_version, "versions must strictly increase");
                        last_version = version;
                    }
                    let expected = model_apply(&mut model, &command, now, &actual);
                    prop_assert_eq!(&actual, &expected, "step {} {:?} at {}", index, command, now);
                }
            }
            let live = model.entries.iter().filter(|(_, (_, _, deadline))| deadline.is_none_or(|d| d > now)).count() as u64;
            prop_assert!(store.stats().keys >= live);
            // Memory accounting is exact after every step, not only once emptied.
            prop_assert_eq!(store.data_bytes, store.recomputed_data_bytes(), "charged bytes after step {}", index);
            prop_assert_eq!(&store.expiries, &store.expected_expiries(), "expiry index after step {}", index);
        }
        // Accounting is exact: deleting everything returns to records-only memory.
        store.expire_due(u64::MAX / 4, usize::MAX);
        for key in [b"a", b"b", b"c"] {
            store.run(1, &request(0, Command::Del { key: key.to_vec() }), u64::MAX / 4);
        }
        prop_assert_eq!(store.stats().keys, 0);
        prop_assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
    }
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
                Command::Append {
                    key: "k".into(),
                    value: b"+".to_vec(),
                },
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

#[test]
fn a_read_answers_in_the_buffer_of_the_previous_read() {
    // Buffers are told apart by capacity: an address proves nothing, since the
    // allocator hands a freed block of the same size straight back.
    const MARKED_CAPACITY: usize = 1000;
    let mut store = Store::new(UNLIMITED, 1);
    store.run(1, &request(1, set("a", "first value", 0, SetCondition::Always)), 0);
    store.run(1, &request(2, set("b", "second", 0, SetCondition::Always)), 0);
    let get = |key: &str| request(0, Command::Get { key: key.into() });

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
