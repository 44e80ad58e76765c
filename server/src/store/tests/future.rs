//! The future: written once, every waiter and later get sees the value.

use proptest::prelude::*;

use super::*;
use engram_proto::{DataCommand, FutureCommand};

#[test]
fn future_is_write_once_and_wakes_every_waiter() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let get = |timeout_ms| {
        Command::Data(DataCommand::Future(FutureCommand::Get {
            key: KEY.into(),
            timeout_ms,
        }))
    };
    assert_eq!(
        store.apply(1, &request(0, get(0)), 0),
        Outcome::Ready(Response::Missing)
    );
    let Outcome::Parked(first) = store.apply(1, &request(0, get(100)), 0) else {
        panic!()
    };
    let Outcome::Parked(second) = store.apply(2, &request(0, get(100)), 0) else {
        panic!()
    };
    let complete = |value: &str| {
        Command::Data(DataCommand::Future(FutureCommand::Complete {
            key: KEY.into(),
            value: value.into(),
        }))
    };
    assert_eq!(
        store.apply(1, &request(1, complete("42")), 5),
        Outcome::Ready(Response::FutureCompleted)
    );
    let completions = store.drain_completions();
    assert_eq!(
        completions.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>(),
        vec![first, second]
    );
    assert!(completions
        .iter()
        .all(|(_, response)| matches!(response, Response::Value { value, .. } if value == b"42")));
    let late = store.apply(1, &request(2, complete("43")), 6);
    assert!(matches!(late, Outcome::Ready(ref response) if code(response) == Some(ErrorCode::AlreadyCompleted)));
    assert!(
        matches!(store.apply(1, &request(0, get(0)), 7), Outcome::Ready(Response::Value { ref value, .. }) if value == b"42")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// A future: the first complete wins, every waiter and every later get sees its
    /// value, later completes fail.
    #[test]
    fn future_matches_model(steps in prop::collection::vec(prop_oneof![
        any::<u8>().prop_map(|value| (0u8, u64::from(value))),
        prop_oneof![Just(0u64), 1u64..30].prop_map(|timeout| (1u8, timeout)),
        (1u64..20).prop_map(|ms| (2u8, ms)),
    ], 1..40)) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut value: Option<u8> = None;
        let mut waiting: Vec<(WaiterId, u64)> = Vec::new();
        let mut now = 0u64;
        for (index, (kind, argument)) in steps.into_iter().enumerate() {
            let op_id = index as u64 + 1;
            match kind {
                0 => {
                    let outcome = store.apply(1, &request(op_id, Command::from(FutureCommand::Complete { key: KEY.into(), value: vec![argument as u8] })), now);
                    let Outcome::Ready(response) = outcome else { panic!("complete parked") };
                    if value.is_some() {
                        prop_assert_eq!(code(&response), Some(ErrorCode::AlreadyCompleted));
                    } else {
                        prop_assert_eq!(response, Response::FutureCompleted);
                        value = Some(argument as u8);
                        let delivered = store.drain_completions();
                        prop_assert_eq!(delivered.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>(), waiting.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>());
                        let all_see_it = delivered.iter().all(|(_, response)| matches!(response, Response::Value { value: got, .. } if got == &vec![argument as u8]));
                        prop_assert!(all_see_it, "{:?}", delivered);
                        waiting.clear();
                    }
                }
                1 => match (value, store.apply(1, &request(0, Command::from(FutureCommand::Get { key: KEY.into(), timeout_ms: argument })), now)) {
                    (Some(expected), Outcome::Ready(Response::Value { value: got, .. })) => prop_assert_eq!(got, vec![expected]),
                    (None, Outcome::Ready(Response::Missing)) => prop_assert_eq!(argument, 0),
                    (None, Outcome::Parked(waiter)) => waiting.push((waiter, now + argument)),
                    (expected, outcome) => return Err(TestCaseError::fail(format!("get: {expected:?} vs {outcome:?}"))),
                },
                _ => {
                    now += argument;
                    expire_waits(&mut store, now, &mut waiting)?;
                }
            }
        }
    }
}
