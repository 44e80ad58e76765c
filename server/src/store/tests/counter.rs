//! Counters: no wrapping, and their type enforced.

use super::*;
use engram_proto::{BytesCommand, CounterCommand};

#[test]
fn counters_never_wrap_and_type_is_enforced() {
    let mut store = Store::new(UNLIMITED, 1);
    assert_eq!(
        store.run(
            1,
            &request(0, Command::from(CounterCommand::Get { key: "c".into() })),
            0
        ),
        Response::Counter { value: 0 }
    );
    assert_eq!(
        store.run(
            1,
            &request(
                1,
                Command::from(CounterCommand::Set {
                    key: "c".into(),
                    value: i64::MAX - 1
                })
            ),
            0
        ),
        Response::Counter { value: i64::MAX - 1 }
    );
    let overflow = store.run(
        1,
        &request(
            2,
            Command::from(CounterCommand::Add {
                key: "c".into(),
                delta: 2,
            }),
        ),
        0,
    );
    assert_eq!(code(&overflow), Some(ErrorCode::Overflow));
    assert_eq!(
        store.run(
            1,
            &request(0, Command::from(CounterCommand::Get { key: "c".into() })),
            0
        ),
        Response::Counter { value: i64::MAX - 1 }
    );
    assert_eq!(
        code(&store.run(1, &request(0, Command::from(BytesCommand::Get { key: "c".into() })), 0)),
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
            Command::from(CounterCommand::Add {
                key: "b".into(),
                delta: 1,
            }),
        ),
        0,
    );
    assert_eq!(code(&wrong), Some(ErrorCode::WrongType));
    assert_eq!(
        store.run(
            1,
            &request(
                6,
                Command::from(CounterCommand::Cas {
                    key: "n".into(),
                    expected: 1,
                    new: 5
                })
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
                Command::from(CounterCommand::Cas {
                    key: "n".into(),
                    expected: 0,
                    new: 5
                })
            ),
            0
        ),
        Response::CounterCas {
            swapped: true,
            current: 5
        }
    );
}
