//! Slot hand-over: bouncing parked requests, export, import, removal. The property test
//! runs one random history on two identical stores; one keeps its slots (the reference:
//! what the source would have answered), the other exports them to a fresh target and
//! drops them. The target must then answer exactly as the reference does.

use std::collections::{BTreeSet, HashMap};

use engram_proto::{encode_batch, QueueEnd, SlotBatch, SlotHasher};
use proptest::prelude::*;

use super::*;
use engram_proto::{
    BarrierCommand, BytesCommand, CounterCommand, DataCommand, FutureCommand, LatchCommand, LockCommand, MapCommand,
    QueueCommand, SemaphoreCommand,
};

const NAMESPACE: &[u8] = b"ns";
const SEMAPHORE_CAPACITY: u32 = 3;

/// `[namespace length][namespace][client key]`, as the connection stores keys.
fn stored(client_key: &str) -> Vec<u8> {
    let mut key = vec![NAMESPACE.len() as u8];
    key.extend_from_slice(NAMESPACE);
    key.extend_from_slice(client_key.as_bytes());
    key
}

fn slot(client_key: &str) -> u32 {
    SlotHasher::new(NAMESPACE).slot(client_key.as_bytes())
}

fn ready(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Ready(response) => response,
        Outcome::Parked(waiter) => panic!("parked as waiter {waiter}"),
    }
}

fn parked(outcome: Outcome) -> WaiterId {
    match outcome {
        Outcome::Parked(waiter) => waiter,
        Outcome::Ready(response) => panic!("answered at once: {response:?}"),
    }
}

// ---------------------------------------------------------------- property test

/// One client key per object type and two of the types twice, so a history mixes keys
/// that move with keys that stay.
const KEYS: [&str; 12] = ["b0", "b1", "c0", "l0", "l1", "s0", "r0", "t0", "f0", "m0", "q0", "q1"];

#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Run { client_id: u64, command: Command },
}

fn key_of(prefix: char) -> impl Strategy<Value = Vec<u8>> {
    let keys: Vec<Vec<u8>> = KEYS
        .iter()
        .filter(|key| key.starts_with(prefix))
        .map(|key| stored(key))
        .collect();
    prop::sample::select(keys)
}

fn owner() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
}

fn small_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..6)
}

fn end() -> impl Strategy<Value = QueueEnd> {
    prop_oneof![Just(QueueEnd::Front), Just(QueueEnd::Back)]
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let any_key = prop::sample::select(KEYS.iter().map(|key| stored(key)).collect::<Vec<_>>());
    let field = prop::sample::select(vec![b"f0".to_vec(), b"f1".to_vec()]);
    prop_oneof![
        1 => (key_of('b'), small_value(), prop_oneof![Just(0u64), 1u64..60]).prop_map(|(key, value, ttl_ms)| Command::Data(DataCommand::Bytes(BytesCommand::Set {
            key,
            value,
            ttl_ms,
            condition: SetCondition::Always
        }))),
        1 => (key_of('b'), small_value()).prop_map(|(key, value)| Command::Data(DataCommand::Bytes(BytesCommand::Append { key, value }))),
        1 => any_key.prop_map(|key| Command::Data(DataCommand::Bytes(BytesCommand::Del { key }))),
        1 => (key_of('c'), -5i64..5).prop_map(|(key, delta)| Command::Data(DataCommand::Counter(CounterCommand::Add { key, delta }))),
        3 => (key_of('l'), owner(), 1u64..40, 0u64..30).prop_map(|(key, owner, lease_ms, wait_ms)| Command::Data(DataCommand::Lock(LockCommand::Acquire {
            key,
            owner,
            lease_ms,
            wait_ms
        }))),
        1 => (key_of('l'), owner(), 0u64..12).prop_map(|(key, owner, fence)| Command::Data(DataCommand::Lock(LockCommand::Release { key, owner, fence }))),
        3 => (key_of('s'), owner(), 1u32..=SEMAPHORE_CAPACITY, 1u64..40, 0u64..30).prop_map(
            |(key, owner, permits, lease_ms, wait_ms)| Command::Data(DataCommand::Semaphore(SemaphoreCommand::Acquire {
                key,
                owner,
                capacity: SEMAPHORE_CAPACITY,
                permits,
                lease_ms,
                wait_ms
            }))
        ),
        1 => (key_of('s'), 0u64..12).prop_map(|(key, permit_id)| Command::Data(DataCommand::Semaphore(SemaphoreCommand::Release { key, permit_id }))),
        2 => (key_of('r'), 0u64..30).prop_map(|(key, timeout_ms)| Command::Data(DataCommand::Barrier(BarrierCommand::Wait {
            key,
            parties: 3,
            timeout_ms
        }))),
        1 => (key_of('t'), 0u64..4).prop_map(|(key, count)| Command::Data(DataCommand::Latch(LatchCommand::TrySetCount { key, count }))),
        1 => key_of('t').prop_map(|key| Command::Data(DataCommand::Latch(LatchCommand::CountDown { key }))),
        1 => (key_of('t'), 1u64..30).prop_map(|(key, timeout_ms)| Command::Data(DataCommand::Latch(LatchCommand::Wait { key, timeout_ms }))),
        1 => (key_of('f'), small_value()).prop_map(|(key, value)| Command::Data(DataCommand::Future(FutureCommand::Complete { key, value }))),
        1 => (key_of('f'), 0u64..30).prop_map(|(key, timeout_ms)| Command::Data(DataCommand::Future(FutureCommand::Get { key, timeout_ms }))),
        1 => (key_of('m'), field.clone(), small_value()).prop_map(|(key, field, value)| Command::Data(DataCommand::Map(MapCommand::Set { key, field, value }))),
        1 => (key_of('m'), field.clone()).prop_map(|(key, field)| Command::Data(DataCommand::Map(MapCommand::Del { key, field }))),
        1 => (key_of('m'), field, -3i64..3).prop_map(|(key, field, delta)| Command::Data(DataCommand::Map(MapCommand::Incr { key, field, delta }))),
        2 => (key_of('q'), small_value(), end()).prop_map(|(key, value, end)| Command::Data(DataCommand::Queue(QueueCommand::Push { key, value, end }))),
        2 => (key_of('q'), end(), 0u64..30).prop_map(|(key, end, timeout_ms)| Command::Data(DataCommand::Queue(QueueCommand::Pop { key, end, timeout_ms }))),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1u64..15).prop_map(Step::Advance),
        4 => (1u64..=2, command_strategy()).prop_map(|(client_id, command)| Step::Run { client_id, command }),
    ]
}

/// What a history did, per recorded operation.
#[derive(Default, Debug, PartialEq)]
struct History {
    /// (client id, op id) → (request, first answer) of every operation that got a
    /// final answer (now or as a completion).
    answered: HashMap<(u64, u64), (DataRequest, Response)>,
    /// Parked operations answered `TryAgain` by the bounce.
    bounced: Vec<(u64, DataRequest)>,
    /// Every answer in order, to check the two stores ran identically.
    transcript: Vec<Response>,
}

/// Runs `steps` on `store` from time 0; returns the history and the end time.
fn run_history(store: &mut Store, steps: &[Step], in_slot: &impl Fn(u32) -> bool) -> (History, u64) {
    let mut history = History::default();
    let mut now = 0;
    let mut waiters: HashMap<WaiterId, (u64, DataRequest)> = HashMap::new();
    let collect = |store: &mut Store, history: &mut History, waiters: &mut HashMap<WaiterId, (u64, DataRequest)>| {
        for completion in store.take_completions() {
            let Some((client_id, request)) = waiters.remove(&completion.waiter) else {
                continue;
            };
            history.transcript.push(completion.response.clone());
            if code(&completion.response) == Some(ErrorCode::TryAgain) {
                history.bounced.push((client_id, request));
            } else if request.command.is_mutation() {
                history
                    .answered
                    .insert((client_id, request.op_id), (request, completion.response));
            }
        }
    };
    for (index, step) in steps.iter().enumerate() {
        match step {
            Step::Advance(ms) => {
                for _ in 0..*ms {
                    now += 1;
                    store.expire_due(now, usize::MAX);
                }
            }
            Step::Run { client_id, command } => {
                let op_id = index as u64 + 1;
                let request = request(op_id, command.clone());
                match store.apply(*client_id, &request, now) {
                    Outcome::Ready(response) => {
                        history.transcript.push(response.clone());
                        let retryable = code(&response).is_some_and(ErrorCode::is_retryable);
                        if command.is_mutation() && !retryable {
                            history.answered.insert((*client_id, op_id), (request, response));
                        }
                    }
                    Outcome::Parked(waiter) => {
                        waiters.insert(waiter, (*client_id, request));
                    }
                }
            }
        }
        collect(store, &mut history, &mut waiters);
    }
    store.expire_due(now, usize::MAX);
    store.bounce_waiters(in_slot, now);
    collect(store, &mut history, &mut waiters);
    (history, now)
}

fn without_versions(response: Response) -> Response {
    match response {
        Response::Value { value, .. } => Response::Value { value, version: 0 },
        Response::Written { .. } => Response::Written { version: 0 },
        Response::LockGranted { lease_ms, .. } => Response::LockGranted { fence: 0, lease_ms },
        Response::SemaphoreGranted { permits, lease_ms, .. } => Response::SemaphoreGranted {
            permit_id: 0,
            permits,
            lease_ms,
        },
        other => other,
    }
}

/// Read-only questions whose answers describe every object type's state.
fn reads() -> Vec<Command> {
    let mut reads = Vec::new();
    for client_key in KEYS {
        let key = stored(client_key);
        reads.extend([
            Command::from(BytesCommand::Get { key: key.clone() }),
            Command::from(CounterCommand::Get { key: key.clone() }),
            Command::from(LockCommand::Holder { key: key.clone() }),
            Command::from(SemaphoreCommand::Available {
                key: key.clone(),
                capacity: SEMAPHORE_CAPACITY,
            }),
            Command::from(LatchCommand::Count { key: key.clone() }),
            Command::from(FutureCommand::Get {
                key: key.clone(),
                timeout_ms: 0,
            }),
            Command::from(MapCommand::GetAll { key: key.clone() }),
            Command::from(QueueCommand::Len { key }),
        ]);
    }
    reads
}

/// Memory a bytes value's spare capacity was charged: the target's copy has none.
fn spare_capacity_bytes(store: &Store, in_slot: &impl Fn(u32) -> bool) -> u64 {
    store
        .entries
        .iter()
        .filter(|entry| slot_of_stored_key(entry.key()).is_some_and(in_slot))
        .map(|entry| match entry {
            KeyEntry::Compact(compact) => match compact.contents() {
                Contents::Bytes(value) => (compact.capacity() - value.len()) as u64,
                Contents::Counter(_) => 0,
            },
            KeyEntry::Object(_) => 0,
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn migrated_slots_answer_as_the_source_would(
        steps in prop::collection::vec(step_strategy(), 1..60),
        moving_keys in prop::collection::vec(any::<bool>(), KEYS.len()),
        batch_bytes_max in 40usize..600,
    ) {
        let moving: BTreeSet<u32> = KEYS.iter().zip(&moving_keys).filter(|(_, moves)| **moves).map(|(key, _)| slot(key)).collect();
        let in_slot = |slot: u32| moving.contains(&slot);
        let mut reference = Store::new(UNLIMITED, 5);
        let mut source = Store::new(UNLIMITED, 5);
        let (history, now) = run_history(&mut reference, &steps, &in_slot);
        let (source_history, _) = run_history(&mut source, &steps, &in_slot);
        prop_assert_eq!(&history, &source_history, "the two stores must run identically");
        prop_assert!(reference.waiting.parked_on(|key| slot_of_stored_key(key).is_some_and(in_slot)).is_empty());

        let memory_before = source.memory_used_bytes();
        let spare_bytes = spare_capacity_bytes(&source, &in_slot);
        let last_version_before = source.last_version;
        let batches = source.export_slots(in_slot, now, batch_bytes_max);
        prop_assert!(!batches.is_empty());
        let mut target = Store::new(UNLIMITED, 11);
        for batch in &batches {
            let encoded = encode_batch(batch).unwrap();
            if batch.entries.len() + batch.records.len() > 1 {
                prop_assert!(encoded.len() <= batch_bytes_max, "{} encoded over {}", encoded.len(), batch_bytes_max);
            }
            prop_assert_eq!(batch.last_version, last_version_before);
            target.import_encoded(&encoded, now).unwrap();
        }
        prop_assert_eq!(target.data_bytes, target.recomputed_data_bytes(), "imported entries are charged exactly");
        prop_assert_eq!(&target.expiries, &target.expected_expiries());
        source.remove_slots(in_slot, now);
        prop_assert_eq!(source.data_bytes, source.recomputed_data_bytes(), "removed entries are uncharged exactly");
        prop_assert_eq!(&source.expiries, &source.expected_expiries());
        prop_assert!(source.take_completions().is_empty(), "nothing was left parked to bounce");
        prop_assert!(source.entries.iter().all(|entry| !slot_of_stored_key(entry.key()).is_some_and(in_slot)));
        prop_assert!(target.entries.iter().all(|entry| slot_of_stored_key(entry.key()).is_some_and(in_slot)));
        prop_assert_eq!(
            source.memory_used_bytes() + target.memory_used_bytes() + spare_bytes,
            memory_before,
            "memory moved exactly"
        );
        prop_assert!(target.last_version >= last_version_before);

        // Every lease and expiry ends on the target one clock step after the source's
        // (never before it).
        let moving_reads: Vec<Command> = reads()
            .into_iter()
            .filter(|command| command.key().and_then(slot_of_stored_key).is_some_and(in_slot))
            .collect();
        let mut at = now;
        for _ in 0..=70 {
            for read in &moving_reads {
                let expected = ready(reference.apply(9, &request(0, read.clone()), at));
                let actual = ready(target.apply(9, &request(0, read.clone()), at + STORE_CLOCK_STEP_MS));
                prop_assert_eq!(actual, expected, "{:?} at {}", read, at);
            }
            at += 1;
            reference.expire_due(at, usize::MAX);
            target.expire_due(at + STORE_CLOCK_STEP_MS, usize::MAX);
            prop_assert!(target.take_completions().is_empty());
        }

        // Retries get their first answer; a bounced request applies afresh.
        for ((client_id, _), (request, first_answer)) in &history.answered {
            let key_moved = slot_of_stored_key(request.command.key()).is_some_and(in_slot);
            if key_moved {
                let retried = target.apply(*client_id, request, at);
                prop_assert_eq!(retried, Outcome::Ready(first_answer.clone()), "retry of {:?}", request.command);
            }
        }
        for (client_id, request) in &history.bounced {
            // Waiter ids and versions are each store's own (the reference draws versions
            // for slots that stayed, too); what was answered must agree.
            let without_waiter_id = |outcome| match outcome {
                Outcome::Ready(response) => Some(without_versions(response)),
                Outcome::Parked(_) => None,
            };
            let expected = without_waiter_id(reference.apply(*client_id, request, at));
            let actual = without_waiter_id(target.apply(*client_id, request, at));
            prop_assert_ne!(actual.as_ref().and_then(code), Some(ErrorCode::TryAgain));
            prop_assert_eq!(actual, expected, "bounced {:?} applies afresh", request.command);
        }

        // Barrier generations moved: a one-party wait reports the current generation.
        for client_key in KEYS.iter().filter(|key| key.starts_with('r') && in_slot(slot(key))) {
            let wait = Command::from(BarrierCommand::Wait { key: stored(client_key), parties: 1, timeout_ms: 0 });
            prop_assert_eq!(
                target.apply(9, &request(0, wait.clone()), at),
                reference.apply(9, &request(0, wait), at)
            );
        }
    }
}

// ---------------------------------------------------------------- bounce_waiters

fn moves(key: &str) -> impl Fn(u32) -> bool {
    let moving = slot(key);
    move |candidate| candidate == moving
}

fn lock_acquire(key: &str, owner: &str, wait_ms: u64) -> Command {
    Command::from(LockCommand::Acquire {
        key: stored(key),
        owner: owner.into(),
        lease_ms: 1_000,
        wait_ms,
    })
}

#[test]
fn bounced_lock_waiter_is_granted_nothing_and_retries_afresh() {
    let mut store = Store::new(UNLIMITED, 1);
    let Response::LockGranted { fence, .. } = ready(store.apply(1, &request(1, lock_acquire("lock", "a", 0)), 0))
    else {
        panic!("not granted")
    };
    let retried = request(2, lock_acquire("lock", "b", 5_000));
    let waiter = parked(store.apply(2, &retried, 0));
    assert_ne!(slot("other"), slot("lock"), "the test needs two slots");
    ready(store.apply(4, &request(4, lock_acquire("other", "d", 0)), 0));
    let elsewhere = parked(store.apply(3, &request(3, lock_acquire("other", "c", 5_000)), 0));

    store.bounce_waiters(moves("lock"), 10);
    let completions = store.take_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].waiter, waiter);
    assert_eq!(code(&completions[0].response), Some(ErrorCode::TryAgain));
    assert_eq!(store.stats().parked_requests, 1, "the other slot's waiter stays");
    assert_eq!(store.waiting.key_of(elsewhere), Some(stored("other").as_slice()));

    // The release grants nobody: the bounced waiter left the queue.
    let release = Command::from(LockCommand::Release {
        key: stored("lock"),
        owner: b"a".to_vec(),
        fence,
    });
    assert_eq!(ready(store.apply(1, &request(5, release), 20)), Response::Released);
    assert!(store.take_completions().is_empty());
    // Its record was forgotten: the same op id applies afresh (here, on an unfrozen store).
    assert!(matches!(
        ready(store.apply(2, &retried, 30)),
        Response::LockGranted { .. }
    ));
}

#[test]
fn bounced_barrier_arrivals_no_longer_count() {
    let mut store = Store::new(UNLIMITED, 1);
    let wait = |op_id| {
        request(
            op_id,
            Command::from(BarrierCommand::Wait {
                key: stored("barrier"),
                parties: 3,
                timeout_ms: 1_000,
            }),
        )
    };
    parked(store.apply(1, &wait(1), 0));
    parked(store.apply(2, &wait(1), 0));
    store.bounce_waiters(moves("barrier"), 5);
    let bounced = store.take_completions();
    assert_eq!(bounced.len(), 2);
    assert!(bounced
        .iter()
        .all(|completion| code(&completion.response) == Some(ErrorCode::TryAgain)));

    // Moved to a target, the generation needs three fresh arrivals.
    let batches = store.export_slots(moves("barrier"), 5, usize::MAX);
    let mut target = Store::new(UNLIMITED, 2);
    for batch in batches {
        target.import_batch(batch, 100).unwrap();
    }
    parked(target.apply(1, &wait(1), 100));
    parked(target.apply(2, &wait(1), 100));
    assert_eq!(
        ready(target.apply(3, &wait(1), 100)),
        Response::BarrierPassed {
            generation: 0,
            arrival_index: 2
        }
    );
    assert_eq!(target.take_completions().len(), 2);
    assert_eq!(target.expire_due(2_000, usize::MAX), 0);
    assert!(
        target.take_completions().is_empty(),
        "no timer of a bounced arrival fires"
    );
}

#[test]
fn bounced_pop_takes_no_item() {
    let mut store = Store::new(UNLIMITED, 1);
    let pop = request(
        1,
        Command::from(QueueCommand::Pop {
            key: stored("queue"),
            end: QueueEnd::Front,
            timeout_ms: 1_000,
        }),
    );
    parked(store.apply(1, &pop, 0));
    let bytes_while_waiting = store.memory_used_bytes();
    store.bounce_waiters(moves("queue"), 1);
    let bounced = store.take_completions();
    assert_eq!(bounced.len(), 1);
    assert_eq!(code(&bounced[0].response), Some(ErrorCode::TryAgain));
    assert!(
        store.memory_used_bytes() < bytes_while_waiting,
        "the waiter and its record are uncharged"
    );
    assert_eq!(store.stats().keys, 0, "the idle queue went");

    let push = Command::from(QueueCommand::Push {
        key: stored("queue"),
        value: b"item".to_vec(),
        end: QueueEnd::Back,
    });
    assert_eq!(
        ready(store.apply(2, &request(1, push), 2)),
        Response::QueueLength { length: 1 }
    );
    assert!(store.take_completions().is_empty());
    // The retry pops afresh instead of replaying a TryAgain answer.
    assert!(matches!(
        ready(store.apply(1, &pop, 3)),
        Response::Value { value, .. } if value == b"item"
    ));
}

// ---------------------------------------------------------------- refused imports

fn batch_of(store: &Store, key: &str, now_ms: u64) -> SlotBatch {
    let mut batches = store.export_slots(moves(key), now_ms, usize::MAX);
    assert_eq!(batches.len(), 1);
    batches.remove(0)
}

fn set_command(key: &str, value: &[u8]) -> Command {
    Command::from(BytesCommand::Set {
        key: stored(key),
        value: value.to_vec(),
        ttl_ms: 0,
        condition: SetCondition::Always,
    })
}

#[test]
fn import_over_the_memory_limit_is_refused_whole() {
    let mut source = Store::new(UNLIMITED, 1);
    ready(source.apply(1, &request(1, set_command("{t}a", &[7; 4_000])), 0));
    ready(source.apply(1, &request(2, set_command("{t}b", b"small")), 0));
    let batch = batch_of(&source, "{t}a", 0);
    assert_eq!(batch.entries.len(), 2);
    assert_eq!(batch.records.len(), 2);

    let mut target = Store::new(2_000, 2);
    let refusal = target.import_batch(batch.clone(), 0).unwrap_err();
    assert!(matches!(refusal, ImportError::OutOfMemory { .. }));
    assert!(refusal.to_string().contains("memory_limit_bytes"), "{refusal}");
    assert_eq!(target.stats().keys, 0);
    assert_eq!(target.memory_used_bytes(), 0);
    assert_eq!(target.stats().operation_records, 0);
    assert_eq!(target.last_version, 0);

    let mut roomy = Store::new(UNLIMITED, 2);
    roomy.import_batch(batch, 0).unwrap();
    assert_eq!(roomy.stats().keys, 2);
}

#[test]
fn import_of_an_existing_key_is_refused_whole() {
    let mut source = Store::new(UNLIMITED, 1);
    ready(source.apply(1, &request(1, set_command("{t}a", b"one")), 0));
    ready(source.apply(1, &request(2, set_command("{t}b", b"two")), 0));
    let batch = batch_of(&source, "{t}a", 0);

    let mut target = Store::new(UNLIMITED, 2);
    ready(target.apply(1, &request(0, set_command("{t}b", b"mine")), 0));
    let memory_before = target.memory_used_bytes();
    let refusal = target.import_batch(batch.clone(), 0).unwrap_err();
    assert_eq!(refusal, ImportError::DuplicateKey { key: "{t}b".into() });
    assert_eq!(target.stats().keys, 1);
    assert_eq!(target.memory_used_bytes(), memory_before);

    // The same key twice within one batch is refused too.
    let mut doubled = batch.clone();
    doubled.entries.push(batch.entries[0].clone());
    let mut fresh = Store::new(UNLIMITED, 3);
    assert!(matches!(
        fresh.import_batch(doubled, 0),
        Err(ImportError::DuplicateKey { .. })
    ));
    assert_eq!(fresh.stats().keys, 0);
}

#[test]
fn malformed_batches_are_refused() {
    let mut target = Store::new(UNLIMITED, 2);
    assert!(matches!(
        target.import_encoded(&[0xff; 64], 0),
        Err(ImportError::Malformed(_))
    ));
    assert!(matches!(target.import_encoded(&[], 0), Err(ImportError::Malformed(_))));

    let mut source = Store::new(UNLIMITED, 1);
    let acquire = Command::from(SemaphoreCommand::Acquire {
        key: stored("sem"),
        owner: b"a".to_vec(),
        capacity: 2,
        permits: 2,
        lease_ms: 1_000,
        wait_ms: 0,
    });
    ready(source.apply(1, &request(1, acquire), 0));
    let batch = batch_of(&source, "sem", 0);
    let mut encoded = encode_batch(&batch).unwrap();
    encoded.truncate(encoded.len() - 3);
    assert!(matches!(
        target.import_encoded(&encoded, 0),
        Err(ImportError::Malformed(_))
    ));

    // Well-formed bytes that break the store's invariants are refused as well.
    let mut over_capacity = batch.clone();
    if let engram_proto::MigratedObject::Semaphore { capacity, .. } = &mut over_capacity.entries[0].object {
        *capacity = 1;
    }
    assert!(matches!(
        target.import_batch(over_capacity, 0),
        Err(ImportError::InvalidEntry { .. })
    ));
    let mut version_ahead = batch.clone();
    version_ahead.last_version = 0;
    assert!(matches!(
        target.import_batch(version_ahead, 0),
        Err(ImportError::InvalidEntry { .. })
    ));
    let mut long_key = batch;
    long_key.entries[0].key = vec![0; STORED_KEY_BYTES_MAX + 1];
    assert!(matches!(
        target.import_batch(long_key, 0),
        Err(ImportError::KeyTooLarge { .. })
    ));
    assert_eq!(target.stats().keys, 0);
    assert_eq!(target.memory_used_bytes(), 0);
}

#[test]
fn slot_of_a_stored_key() {
    assert_eq!(slot_of_stored_key(&stored("k")), Some(slot("k")));
    assert_eq!(slot_of_stored_key(b""), None);
    assert_eq!(slot_of_stored_key(&[5, b'a']), None);
    assert_eq!(slot_of_stored_key(&[0]), Some(SlotHasher::new(b"").slot(b"")));
}

#[test]
fn empty_slots_still_carry_the_version_counter() {
    let mut source = Store::new(UNLIMITED, 1);
    ready(source.apply(1, &request(1, set_command("elsewhere", b"x")), 0));
    let batches = source.export_slots(|_| false, 0, 100);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].last_version, source.last_version);
    let mut target = Store::new(UNLIMITED, 2);
    target.import_batch(batches[0].clone(), 0).unwrap();
    assert_eq!(target.last_version, source.last_version);
}

/// The store's clock reads whole milliseconds rounded down, each process at its own
/// phase. A lease of 1,000 ms taken at 0 is held through 1,000 (the clock may read 1,000
/// when 1,000.9 ms have passed), and a copy installed on a store whose clock reads 500
/// at the moment the source's reads 400 ends no earlier than the original.
#[test]
fn a_lease_runs_its_whole_length_and_a_copy_never_ends_before_the_original() {
    let holder_of = |store: &mut Store, now_ms| match ready(store.apply(
        9,
        &request(0, Command::from(LockCommand::Holder { key: stored("lock") })),
        now_ms,
    )) {
        Response::LockHolder { holder } => holder.map(|holder| holder.owner),
        other => panic!("holder answered {other:?}"),
    };
    let mut source = Store::new(UNLIMITED, 1);
    let Response::LockGranted { .. } = ready(source.apply(1, &request(1, lock_acquire("lock", "a", 0)), 0)) else {
        panic!("a free lock is granted")
    };
    let mut target = Store::new(UNLIMITED, 2);
    for batch in source.export_slots(moves("lock"), 400, usize::MAX) {
        target.import_batch(batch, 500).unwrap();
    }
    assert_eq!(
        holder_of(&mut source, 1_000),
        Some(b"a".to_vec()),
        "the lease ended early"
    );
    assert_eq!(holder_of(&mut source, 1_001), None, "the lease outlived its clock step");
    // The original ends at the source's 1,001, which is the target's 1,101 or later.
    assert_eq!(
        holder_of(&mut target, 1_101),
        Some(b"a".to_vec()),
        "the copy ended first"
    );
    assert_eq!(
        holder_of(&mut target, 1_102),
        None,
        "the copy gains one clock step, no more"
    );
}
