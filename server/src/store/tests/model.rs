//! The store against a plain reference model of bytes values and counters under a
//! virtual clock.

use std::collections::HashMap;

use engram_proto::{MigratedEntry, MigratedObject, SlotBatch};
use proptest::prelude::*;

use super::*;
use engram_proto::{BytesCommand, CounterCommand, DataCommand};

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
        Just(SetCondition::IfPresent),
        (0u64..12).prop_map(SetCondition::IfVersion)
    ];
    prop_oneof![
        (1u64..50).prop_map(Step::Advance),
        Just(Step::Expire),
        key.clone()
            .prop_map(|key| Step::Run(Command::from(BytesCommand::Get { key }))),
        (key.clone(), value.clone(), prop_oneof![Just(0u64), 1u64..60], condition).prop_map(
            |(key, value, ttl_ms, condition)| Step::Run(Command::from(BytesCommand::Set {
                key,
                value,
                ttl_ms,
                condition
            }))
        ),
        key.clone()
            .prop_map(|key| Step::Run(Command::from(BytesCommand::Del { key }))),
        (key.clone(), value).prop_map(|(key, value)| Step::Run(Command::from(BytesCommand::Append { key, value }))),
        key.clone()
            .prop_map(|key| Step::Run(Command::from(CounterCommand::Get { key }))),
        (key.clone(), prop_oneof![-3i64..3, Just(i64::MAX), Just(i64::MIN)])
            .prop_map(|(key, delta)| Step::Run(Command::from(CounterCommand::Add { key, delta }))),
        (key.clone(), -3i64..3).prop_map(|(key, value)| Step::Run(Command::from(CounterCommand::Set { key, value }))),
        (key.clone(), -2i64..2, -2i64..2)
            .prop_map(|(key, expected, new)| Step::Run(Command::from(CounterCommand::Cas { key, expected, new }))),
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
        Command::Data(DataCommand::Bytes(BytesCommand::Get { key })) => match model.live(key, now) {
            None => Response::Missing,
            Some((ModelObject::Bytes(value), version, _)) => Response::Value {
                value: value.clone(),
                version: *version,
            },
            Some(_) => store_response.clone(),
        },
        Command::Data(DataCommand::Bytes(BytesCommand::Set {
            key,
            value,
            ttl_ms,
            condition,
        })) => {
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
                SetCondition::IfPresent => current_version.is_some(),
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
        Command::Data(DataCommand::Bytes(BytesCommand::Del { key })) => Response::Deleted {
            existed: model.live(key, now).is_some() && model.entries.remove(key).is_some(),
        },
        Command::Data(DataCommand::Bytes(BytesCommand::Append { key, value })) => match model.live(key, now) {
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
        Command::Data(DataCommand::Counter(CounterCommand::Get { key })) => match model.live(key, now) {
            None => Response::Counter { value: 0 },
            Some((ModelObject::Counter(value), _, _)) => Response::Counter { value: *value },
            Some(_) => store_response.clone(),
        },
        Command::Data(DataCommand::Counter(CounterCommand::Add { key, delta })) => {
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
        Command::Data(DataCommand::Counter(CounterCommand::Set { key, value })) => {
            if let Some((ModelObject::Bytes(_), _, _)) = model.live(key, now) {
                return store_response.clone();
            }
            let deadline = counter_deadline(model, key, now);
            model
                .entries
                .insert(key.clone(), (ModelObject::Counter(*value), 0, deadline));
            Response::Counter { value: *value }
        }
        Command::Data(DataCommand::Counter(CounterCommand::Cas { key, expected, new })) => {
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
                        // A copied expiry ends a clock step late, never early.
                        let deadline = (ttl_ms != 0).then(|| now + ttl_ms + STORE_CLOCK_STEP_MS);
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
            store.run(1, &request(0, Command::from(BytesCommand::Del { key: key.to_vec() })), u64::MAX / 4);
        }
        prop_assert_eq!(store.stats().keys, 0);
        prop_assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
    }
}
