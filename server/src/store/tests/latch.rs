//! The latch: waiters open at zero and time out otherwise.

use proptest::prelude::*;

use super::*;
use engram_proto::LatchCommand;

#[test]
fn latch_opens_its_waiters_at_zero() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let run = |store: &mut Store, op_id, command| store.apply(1, &request(op_id, command), 0);
    assert_eq!(
        run(
            &mut store,
            1,
            Command::from(LatchCommand::TrySetCount {
                key: KEY.into(),
                count: 2
            })
        ),
        Outcome::Ready(Response::LatchSet { set: true, count: 2 })
    );
    assert_eq!(
        run(
            &mut store,
            2,
            Command::from(LatchCommand::TrySetCount {
                key: KEY.into(),
                count: 5
            })
        ),
        Outcome::Ready(Response::LatchSet { set: false, count: 2 })
    );
    let Outcome::Parked(waiter) = run(
        &mut store,
        3,
        Command::from(LatchCommand::Wait {
            key: KEY.into(),
            timeout_ms: 100,
        }),
    ) else {
        panic!()
    };
    assert_eq!(
        run(
            &mut store,
            4,
            Command::from(LatchCommand::CountDown { key: KEY.into() })
        ),
        Outcome::Ready(Response::LatchCount { count: 1 })
    );
    assert!(store.drain_completions().is_empty());
    assert_eq!(
        run(
            &mut store,
            5,
            Command::from(LatchCommand::CountDown { key: KEY.into() })
        ),
        Outcome::Ready(Response::LatchCount { count: 0 })
    );
    assert_eq!(store.drain_completions(), vec![(waiter, Response::LatchOpen)]);
    assert_eq!(
        run(
            &mut store,
            0,
            Command::from(LatchCommand::Wait {
                key: KEY.into(),
                timeout_ms: 100
            })
        ),
        Outcome::Ready(Response::LatchOpen)
    );
    assert_eq!(
        store.stats().keys,
        0,
        "an open latch with no waiters leaves nothing behind"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// A latch against a counter and a set of waiters: waiters open exactly when the
    /// count reaches zero, and time out otherwise.
    #[test]
    fn latch_matches_model(steps in prop::collection::vec(prop_oneof![
        (0u64..4).prop_map(|count| (0u8, count)),
        Just((1u8, 0)),
        (1u64..30).prop_map(|timeout| (2u8, timeout)),
        (1u64..20).prop_map(|ms| (3u8, ms)),
    ], 1..60)) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut count = 0u64;
        let mut waiting: Vec<(WaiterId, u64)> = Vec::new();
        let mut now = 0u64;
        for (index, (kind, argument)) in steps.into_iter().enumerate() {
            let op_id = index as u64 + 1;
            match kind {
                0 => {
                    let outcome = store.apply(1, &request(op_id, Command::from(LatchCommand::TrySetCount { key: KEY.into(), count: argument })), now);
                    let set = count == 0;
                    if set {
                        count = argument;
                    }
                    prop_assert_eq!(outcome, Outcome::Ready(Response::LatchSet { set, count }));
                }
                1 => {
                    let outcome = store.apply(1, &request(op_id, Command::from(LatchCommand::CountDown { key: KEY.into() })), now);
                    let opens = count == 1;
                    count = count.saturating_sub(1);
                    prop_assert_eq!(outcome, Outcome::Ready(Response::LatchCount { count }));
                    let delivered = store.drain_completions();
                    if opens {
                        prop_assert_eq!(delivered.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>(), waiting.iter().map(|(waiter, _)| *waiter).collect::<Vec<_>>());
                        prop_assert!(delivered.iter().all(|(_, response)| *response == Response::LatchOpen));
                        waiting.clear();
                    } else {
                        prop_assert!(delivered.is_empty());
                    }
                }
                2 => match store.apply(1, &request(op_id, Command::from(LatchCommand::Wait { key: KEY.into(), timeout_ms: argument })), now) {
                    Outcome::Ready(response) => {
                        prop_assert_eq!(count, 0);
                        prop_assert_eq!(response, Response::LatchOpen);
                    }
                    Outcome::Parked(waiter) => {
                        prop_assert!(count > 0);
                        waiting.push((waiter, now + argument));
                    }
                },
                _ => {
                    now += argument;
                    expire_waits(&mut store, now, &mut waiting)?;
                }
            }
            let counted = store.apply(0, &request(0, Command::from(LatchCommand::Count { key: KEY.into() })), now);
            prop_assert_eq!(counted, Outcome::Ready(Response::LatchCount { count }));
        }
    }
}
