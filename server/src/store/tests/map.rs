//! The map: fields, increments, and a model of its `BTreeMap`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use engram_proto::MapCommand;

#[test]
fn map_fields_and_increments() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let run = |store: &mut Store, op_id, command| match store.apply(1, &request(op_id, command), 0) {
        Outcome::Ready(response) => response,
        Outcome::Parked(_) => panic!("map parked"),
    };
    assert!(matches!(
        run(
            &mut store,
            1,
            Command::from(MapCommand::Set {
                key: KEY.into(),
                field: b"f".to_vec(),
                value: b"v".to_vec()
            })
        ),
        Response::Written { .. }
    ));
    assert_eq!(
        run(
            &mut store,
            2,
            Command::from(MapCommand::Incr {
                key: KEY.into(),
                field: b"n".to_vec(),
                delta: 5
            })
        ),
        Response::Counter { value: 5 }
    );
    assert_eq!(
        run(
            &mut store,
            3,
            Command::from(MapCommand::Incr {
                key: KEY.into(),
                field: b"n".to_vec(),
                delta: -7
            })
        ),
        Response::Counter { value: -2 }
    );
    assert_eq!(
        code(&run(
            &mut store,
            4,
            Command::from(MapCommand::Incr {
                key: KEY.into(),
                field: b"f".to_vec(),
                delta: 1
            })
        )),
        Some(ErrorCode::WrongType)
    );
    assert_eq!(
        run(&mut store, 0, Command::from(MapCommand::GetAll { key: KEY.into() })),
        Response::MapEntries(vec![
            engram_proto::MapEntry {
                field: b"f".to_vec(),
                value: b"v".to_vec()
            },
            engram_proto::MapEntry {
                field: b"n".to_vec(),
                value: b"-2".to_vec()
            },
        ])
    );
    assert_eq!(
        run(
            &mut store,
            5,
            Command::from(MapCommand::Del {
                key: KEY.into(),
                field: b"f".to_vec()
            })
        ),
        Response::Deleted { existed: true }
    );
    assert_eq!(
        run(
            &mut store,
            6,
            Command::from(MapCommand::Del {
                key: KEY.into(),
                field: b"n".to_vec()
            })
        ),
        Response::Deleted { existed: true }
    );
    assert_eq!(store.stats().keys, 0);
    assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
}

#[derive(Debug, Clone)]
enum MapStep {
    Set { field: u8, value: u8 },
    Del { field: u8 },
    Get { field: u8 },
    Incr { field: u8, delta: i64 },
    All,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// A map against a `BTreeMap` of decimal-or-bytes values.
    #[test]
    fn map_matches_model(steps in prop::collection::vec(prop_oneof![
        (0u8..4, any::<u8>()).prop_map(|(field, value)| MapStep::Set { field, value }),
        (0u8..4).prop_map(|field| MapStep::Del { field }),
        (0u8..4).prop_map(|field| MapStep::Get { field }),
        (0u8..4, -5i64..5).prop_map(|(field, delta)| MapStep::Incr { field, delta }),
        Just(MapStep::All),
    ], 1..60)) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (index, step) in steps.into_iter().enumerate() {
            let op_id = index as u64 + 1;
            let ready = |outcome: Outcome| match outcome {
                Outcome::Ready(response) => response,
                Outcome::Parked(_) => panic!("a map operation parked"),
            };
            match step {
                MapStep::Set { field, value } => {
                    let response = ready(store.apply(1, &request(op_id, Command::from(MapCommand::Set { key: KEY.into(), field: vec![field], value: vec![value] })), 0));
                    let written = matches!(response, Response::Written { .. });
                    prop_assert!(written, "{:?}", response);
                    model.insert(vec![field], vec![value]);
                }
                MapStep::Del { field } => {
                    let response = ready(store.apply(1, &request(op_id, Command::from(MapCommand::Del { key: KEY.into(), field: vec![field] })), 0));
                    prop_assert_eq!(response, Response::Deleted { existed: model.remove(&vec![field]).is_some() });
                }
                MapStep::Get { field } => {
                    let response = ready(store.apply(1, &request(0, Command::from(MapCommand::Get { key: KEY.into(), field: vec![field] })), 0));
                    match model.get(&vec![field]) {
                        Some(value) => {
                            let same = matches!(&response, Response::Value { value: got, .. } if got == value);
                            prop_assert!(same, "{:?}", response);
                        }
                        None => prop_assert_eq!(response, Response::Missing),
                    }
                }
                MapStep::Incr { field, delta } => {
                    let response = ready(store.apply(1, &request(op_id, Command::from(MapCommand::Incr { key: KEY.into(), field: vec![field], delta })), 0));
                    let current = match model.get(&vec![field]) {
                        None => Some(0),
                        Some(text) => std::str::from_utf8(text).ok().and_then(|text| text.parse::<i64>().ok()),
                    };
                    match current {
                        Some(current) => {
                            prop_assert_eq!(response, Response::Counter { value: current + delta });
                            model.insert(vec![field], (current + delta).to_string().into_bytes());
                        }
                        None => prop_assert_eq!(code(&response), Some(ErrorCode::WrongType)),
                    }
                }
                MapStep::All => {
                    let response = ready(store.apply(1, &request(0, Command::from(MapCommand::GetAll { key: KEY.into() })), 0));
                    let expected: Vec<engram_proto::MapEntry> = model
                        .iter()
                        .map(|(field, value)| engram_proto::MapEntry { field: field.clone(), value: value.clone() })
                        .collect();
                    prop_assert_eq!(response, Response::MapEntries(expected));
                }
            }
        }
        // Memory accounting returns to nothing once the map is empty.
        for field in 0u8..4 {
            store.apply(1, &request(0, Command::from(MapCommand::Del { key: KEY.into(), field: vec![field] })), 0);
        }
        prop_assert_eq!(store.stats().keys, 0);
        prop_assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
    }
}
