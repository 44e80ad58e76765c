//! The queue against a `VecDeque` and a FIFO of parked pops, and what a cancelled or
//! undelivered pop does with its value.

use std::collections::VecDeque;

use engram_proto::QueueEnd;
use proptest::prelude::*;

use super::*;
use engram_proto::{DataCommand, QueueCommand};

#[test]
fn queue_hands_a_push_to_the_longest_waiting_pop() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let pop = |timeout_ms| {
        Command::Data(DataCommand::Queue(QueueCommand::Pop {
            key: KEY.into(),
            end: QueueEnd::Front,
            timeout_ms,
        }))
    };
    let push = |value: &str, end| {
        Command::Data(DataCommand::Queue(QueueCommand::Push {
            key: KEY.into(),
            value: value.into(),
            end,
        }))
    };
    assert_eq!(
        store.apply(1, &request(1, pop(0)), 0),
        Outcome::Ready(Response::Missing)
    );
    let Outcome::Parked(first) = store.apply(1, &request(2, pop(100)), 0) else {
        panic!()
    };
    let Outcome::Parked(_second) = store.apply(1, &request(3, pop(100)), 0) else {
        panic!()
    };
    assert_eq!(
        store.apply(1, &request(4, push("x", QueueEnd::Back)), 1),
        Outcome::Ready(Response::QueueLength { length: 0 })
    );
    let completions = store.drain_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].0, first);
    store.expire_due(100, usize::MAX);
    assert_eq!(code(&store.drain_completions()[0].1), Some(ErrorCode::Timeout));
    store.apply(1, &request(5, push("a", QueueEnd::Back)), 101);
    store.apply(1, &request(6, push("b", QueueEnd::Back)), 101);
    store.apply(1, &request(7, push("z", QueueEnd::Front)), 101);
    assert_eq!(
        store.apply(
            1,
            &request(0, Command::from(QueueCommand::Len { key: KEY.into() })),
            101
        ),
        Outcome::Ready(Response::QueueLength { length: 3 })
    );
    let take = |store: &mut Store, op_id, end| match store.apply(
        1,
        &request(
            op_id,
            Command::from(QueueCommand::Pop {
                key: KEY.into(),
                end,
                timeout_ms: 0,
            }),
        ),
        101,
    ) {
        Outcome::Ready(Response::Value { value, .. }) => value,
        other => panic!("{other:?}"),
    };
    assert_eq!(take(&mut store, 8, QueueEnd::Front), b"z");
    assert_eq!(take(&mut store, 9, QueueEnd::Back), b"b");
    assert_eq!(take(&mut store, 10, QueueEnd::Front), b"a");
    assert_eq!(store.stats().keys, 0, "an empty queue leaves nothing behind");
    assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
}

#[test]
fn a_cancelled_pop_takes_nothing_and_an_undelivered_one_gives_its_value_back() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let pop = Command::from(QueueCommand::Pop {
        key: KEY.into(),
        end: QueueEnd::Front,
        timeout_ms: 1_000,
    });
    let push = |value: &str| {
        Command::Data(DataCommand::Queue(QueueCommand::Push {
            key: KEY.into(),
            value: value.into(),
            end: QueueEnd::Back,
        }))
    };
    let length =
        |store: &mut Store| store.apply(1, &request(0, Command::from(QueueCommand::Len { key: KEY.into() })), 0);

    // Cancelled (its connection closed) before anything arrived: the push stays queued.
    let Outcome::Parked(waiter) = store.apply(1, &request(1, pop.clone()), 0) else {
        panic!()
    };
    store.cancel(waiter, 1);
    assert_eq!(
        store.apply(1, &request(2, push("kept")), 2),
        Outcome::Ready(Response::QueueLength { length: 1 })
    );
    assert!(store.take_completions().is_empty());
    assert_eq!(length(&mut store), Outcome::Ready(Response::QueueLength { length: 1 }));

    // Handed a value, but its answer could not be delivered: the value goes back.
    store.apply(
        1,
        &request(
            3,
            Command::from(QueueCommand::Pop {
                key: KEY.into(),
                end: QueueEnd::Front,
                timeout_ms: 0,
            }),
        ),
        3,
    );
    let Outcome::Parked(_) = store.apply(1, &request(4, pop.clone()), 3) else {
        panic!()
    };
    store.apply(1, &request(5, push("precious")), 4);
    let mut completions = store.take_completions();
    assert_eq!(completions.len(), 1);
    store.undeliverable(completions.remove(0), 5);
    assert_eq!(length(&mut store), Outcome::Ready(Response::QueueLength { length: 1 }));
    // The retry of the undelivered pop applies afresh and gets the value.
    let Outcome::Ready(Response::Value { value, .. }) = store.apply(1, &request(4, pop), 6) else {
        panic!()
    };
    assert_eq!(value, b"precious");
}

#[test]
fn an_undelivered_pop_gives_its_value_back_even_on_a_full_shard() {
    let pop = Command::from(QueueCommand::Pop {
        key: KEY.into(),
        end: QueueEnd::Front,
        timeout_ms: 1_000,
    });
    let push = Command::from(QueueCommand::Push {
        key: KEY.into(),
        value: vec![7; 100],
        end: QueueEnd::Back,
    });
    // A limit the pop and the push fit under exactly, with nothing to spare for
    // re-creating the key once the popped value comes back.
    let mut probe = Store::new(u64::MAX / 2, 3);
    probe.apply(1, &request(1, pop.clone()), 0);
    let after_pop = probe.memory_used_bytes();
    probe.apply(1, &request(2, push.clone()), 0);
    let limit = after_pop.max(probe.memory_used_bytes());
    let mut store = Store::new(limit, 3);
    let Outcome::Parked(_) = store.apply(1, &request(1, pop), 0) else {
        panic!()
    };
    assert_eq!(
        store.apply(1, &request(2, push), 0),
        Outcome::Ready(Response::QueueLength { length: 0 })
    );
    let mut completions = store.take_completions();
    store.undeliverable(completions.remove(0), 1);
    let length = store.apply(1, &request(0, Command::from(QueueCommand::Len { key: KEY.into() })), 1);
    assert_eq!(
        length,
        Outcome::Ready(Response::QueueLength { length: 1 }),
        "the acknowledged push was lost"
    );
}

#[derive(Debug, Clone)]
enum QueueStep {
    Push { value: u8, front: bool },
    Pop { front: bool, timeout_ms: u64 },
    Len,
    Advance(u64),
}

fn queue_step() -> impl Strategy<Value = QueueStep> {
    prop_oneof![
        3 => (any::<u8>(), any::<bool>()).prop_map(|(value, front)| QueueStep::Push { value, front }),
        3 => (any::<bool>(), prop_oneof![Just(0u64), 1u64..30]).prop_map(|(front, timeout_ms)| QueueStep::Pop { front, timeout_ms }),
        1 => Just(QueueStep::Len),
        1 => (1u64..20).prop_map(QueueStep::Advance),
    ]
}

fn end(front: bool) -> QueueEnd {
    if front {
        QueueEnd::Front
    } else {
        QueueEnd::Back
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// A queue against a `VecDeque` plus a FIFO of parked pops: every value pushed is
    /// popped exactly once, by the longest-waiting pop first, from the right end.
    #[test]
    fn queue_matches_model(steps in prop::collection::vec(queue_step(), 1..80)) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut items: VecDeque<u8> = VecDeque::new();
        let mut waiting: Vec<(WaiterId, u64)> = Vec::new();
        let mut now = 0u64;
        for (index, step) in steps.into_iter().enumerate() {
            let op_id = index as u64 + 1;
            match step {
                QueueStep::Push { value, front } => {
                    let command = Command::from(QueueCommand::Push { key: KEY.into(), value: vec![value], end: end(front) });
                    let outcome = store.apply(1, &request(op_id, command), now);
                    if let Some((waiter, _)) = (!waiting.is_empty()).then(|| waiting.remove(0)) {
                        prop_assert_eq!(outcome, Outcome::Ready(Response::QueueLength { length: items.len() as u64 }));
                        let delivered = store.drain_completions();
                        prop_assert_eq!(delivered.len(), 1);
                        prop_assert_eq!(delivered[0].0, waiter);
                        let handed_over = matches!(&delivered[0].1, Response::Value { value: got, .. } if got == &vec![value]);
                        prop_assert!(handed_over, "{:?}", delivered);
                    } else {
                        if front { items.push_front(value) } else { items.push_back(value) }
                        prop_assert_eq!(outcome, Outcome::Ready(Response::QueueLength { length: items.len() as u64 }));
                    }
                }
                QueueStep::Pop { front, timeout_ms } => {
                    let command = Command::from(QueueCommand::Pop { key: KEY.into(), end: end(front), timeout_ms });
                    let outcome = store.apply(1, &request(op_id, command), now);
                    let expected = if front { items.pop_front() } else { items.pop_back() };
                    match (expected, outcome) {
                        (Some(value), Outcome::Ready(Response::Value { value: got, .. })) => prop_assert_eq!(got, vec![value]),
                        (None, Outcome::Ready(Response::Missing)) => prop_assert_eq!(timeout_ms, 0),
                        (None, Outcome::Parked(waiter)) => {
                            prop_assert!(timeout_ms > 0);
                            waiting.push((waiter, now + timeout_ms));
                        }
                        (expected, outcome) => {
                            return Err(TestCaseError::fail(format!("pop: expected {expected:?}, got {outcome:?}")));
                        }
                    }
                }
                QueueStep::Len => {
                    let outcome = store.apply(1, &request(0, Command::from(QueueCommand::Len { key: KEY.into() })), now);
                    prop_assert_eq!(outcome, Outcome::Ready(Response::QueueLength { length: items.len() as u64 }));
                }
                QueueStep::Advance(ms) => {
                    now += ms;
                    expire_waits(&mut store, now, &mut waiting)?;
                }
            }
            prop_assert!(store.drain_completions().is_empty());
        }
    }
}
