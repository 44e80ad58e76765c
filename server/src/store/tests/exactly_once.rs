//! Exactly-once: retried mutations applied once, operation records dropped when
//! acknowledged or idle, and kept as long as the longest wait.

use super::*;
use engram_proto::{CounterCommand, DataCommand, QueueCommand};

#[test]
fn retried_mutation_is_applied_once() {
    let mut store = Store::new(UNLIMITED, 1);
    let add = request(
        77,
        Command::from(CounterCommand::Add {
            key: "c".into(),
            delta: 5,
        }),
    );
    assert_eq!(store.run(9, &add, 0), Response::Counter { value: 5 });
    assert_eq!(
        store.run(9, &add, 10),
        Response::Counter { value: 5 },
        "retry must get the first answer"
    );
    assert_eq!(
        store.run(
            0,
            &request(0, Command::from(CounterCommand::Get { key: "c".into() })),
            0
        ),
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
                Command::from(CounterCommand::Add {
                    key: "c".into(),
                    delta: 1,
                }),
            ),
            0,
        );
    }
    assert_eq!(store.stats().operation_records, 10);
    let acknowledging = DataRequest {
        op_id: 11,
        completed_below_op_id: 8,
        command: DataCommand::from(CounterCommand::Add {
            key: "c".into(),
            delta: 1,
        }),
    };
    store.run(3, &acknowledging, 0);
    assert_eq!(store.stats().operation_records, 4, "ops 8..=11 remain");
    let stale = store.run(
        3,
        &request(
            2,
            Command::from(CounterCommand::Add {
                key: "c".into(),
                delta: 1,
            }),
        ),
        0,
    );
    assert_eq!(code(&stale), Some(ErrorCode::InvalidArgument));
    assert_eq!(
        store.run(
            3,
            &request(0, Command::from(CounterCommand::Get { key: "c".into() })),
            0
        ),
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
            Command::from(CounterCommand::Add {
                key: "c".into(),
                delta: 1,
            }),
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
        Command::from(QueueCommand::Pop {
            key: "q".into(),
            end: QueueEnd::Front,
            timeout_ms: WAIT_MS_MAX,
        }),
    );
    let push = |value: &str| {
        request(
            0,
            Command::from(QueueCommand::Push {
                key: "q".into(),
                value: value.into(),
                end: QueueEnd::Back,
            }),
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
        store.run(
            4,
            &request(0, Command::from(QueueCommand::Len { key: "q".into() })),
            last_retry
        ),
        Response::QueueLength { length: 1 },
        "nothing was popped twice"
    );
    // The retry counts as a new request asking for the same wait; after that, it goes.
    store.expire_due(last_retry + WAIT_MS_MAX + SESSION_IDLE_MS_MAX + 1, 10);
    assert_eq!(store.stats().operation_records, 0);
}
