//! Model-based tests of the coordination objects under a virtual clock: each object
//! runs next to a small reference model, step by step, and every answer (immediate or
//! delivered later to a parked request) must be the one the model predicts. Time
//! advances one millisecond at a time with the store's timers fired at each, as the
//! shard's timekeeper does.

use std::collections::{BTreeMap, VecDeque};

use engram_proto::{Command, ErrorCode, LockHolder, QueueEnd, Request, Response};
use proptest::prelude::*;

use super::*;

const KEY: &[u8] = b"object";

impl Store {
    fn drain_completions(&mut self) -> Vec<(WaiterId, Response)> {
        self.take_completions()
            .into_iter()
            .map(|completion| (completion.waiter, completion.response))
            .collect()
    }
}

fn request(op_id: u64, command: Command) -> Request {
    Request {
        op_id,
        completed_below_op_id: 0,
        command,
    }
}

fn code(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(reply) => ErrorCode::from_u16(reply.code),
        _ => None,
    }
}

fn owner_name(owner: u8) -> Vec<u8> {
    vec![b'a' + owner]
}

/// Advances the clock by `by_ms`, one millisecond at a time, firing due timers at each.
fn advance(store: &mut Store, now: &mut u64, by_ms: u64, mut each: impl FnMut(&mut Store, u64)) {
    let until = *now + by_ms;
    while *now < until {
        *now += 1;
        store.expire_due(*now, usize::MAX);
        each(store, *now);
    }
}

// ---------------------------------------------------------------- locks

#[derive(Debug, Clone)]
enum LockStep {
    Acquire { owner: u8, lease_ms: u64, wait_ms: u64 },
    Release { owner: u8, stale: bool },
    Renew { owner: u8, lease_ms: u64 },
    Holder,
    Advance(u64),
}

fn lock_step() -> impl Strategy<Value = LockStep> {
    prop_oneof![
        4 => (0u8..4, 1u64..40, 0u64..40).prop_map(|(owner, lease_ms, wait_ms)| LockStep::Acquire { owner, lease_ms, wait_ms }),
        3 => (0u8..4, any::<bool>()).prop_map(|(owner, stale)| LockStep::Release { owner, stale }),
        1 => (0u8..4, 1u64..40).prop_map(|(owner, lease_ms)| LockStep::Renew { owner, lease_ms }),
        1 => Just(LockStep::Holder),
        3 => (1u64..30).prop_map(LockStep::Advance),
    ]
}

#[derive(Debug, Clone)]
struct ModelHolder {
    owner: u8,
    fence: u64,
    deadline_ms: u64,
}

#[derive(Default)]
struct LockModel {
    holder: Option<ModelHolder>,
    /// (waiter, owner, lease, deadline) in arrival order.
    waiters: VecDeque<(WaiterId, u8, u64, u64)>,
    last_fence: u64,
    /// Completions the store must deliver next, in order: (waiter, expected answer).
    expected: Vec<(WaiterId, LockExpectation)>,
}

#[derive(Debug, Clone, PartialEq)]
enum LockExpectation {
    Granted { owner: u8, lease_ms: u64 },
    TimedOut,
}

impl LockModel {
    /// Checks a grant reported by the store: fences strictly increase, and nobody else
    /// holds the lock at that moment.
    fn granted(&mut self, owner: u8, fence: u64, lease_ms: u64, now: u64) -> Result<(), TestCaseError> {
        prop_assert!(fence > self.last_fence, "fence {fence} after {}", self.last_fence);
        prop_assert!(
            self.holder.is_none(),
            "granted to {owner} while {:?} holds",
            self.holder
        );
        self.last_fence = fence;
        self.holder = Some(ModelHolder {
            owner,
            fence,
            deadline_ms: now + lease_ms,
        });
        Ok(())
    }

    fn grant_next(&mut self) {
        if let Some((waiter, owner, lease_ms, _)) = self.waiters.pop_front() {
            self.expected
                .push((waiter, LockExpectation::Granted { owner, lease_ms }));
        }
    }

    /// What happens at `now` in the store's timer order: waits time out, then a lapsed
    /// lease passes the lock on.
    fn tick(&mut self, now: u64) {
        let (due, waiting): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|waiter| waiter.3 <= now);
        self.waiters = waiting.into();
        for (waiter, ..) in due {
            self.expected.push((waiter, LockExpectation::TimedOut));
        }
        if self.holder.as_ref().is_some_and(|holder| holder.deadline_ms <= now) {
            self.holder = None;
            self.grant_next();
        }
    }
}

/// Compares what the store delivered with what the model expects, granting in the
/// model as the store reports fences.
fn check_lock_completions(store: &mut Store, model: &mut LockModel, now: u64) -> Result<(), TestCaseError> {
    let delivered = store.drain_completions();
    let expected = std::mem::take(&mut model.expected);
    prop_assert_eq!(
        delivered.len(),
        expected.len(),
        "delivered {:?}, expected {:?}",
        delivered,
        expected
    );
    for ((waiter, response), (expected_waiter, expectation)) in delivered.into_iter().zip(expected) {
        prop_assert_eq!(waiter, expected_waiter);
        match expectation {
            LockExpectation::Granted { owner, lease_ms } => {
                let Response::LockGranted {
                    fence,
                    lease_ms: granted_lease,
                } = response
                else {
                    return Err(TestCaseError::fail(format!("expected a grant, got {response:?}")));
                };
                prop_assert_eq!(granted_lease, lease_ms);
                model.granted(owner, fence, lease_ms, now)?;
                // A grant may lapse within the same millisecond only with a zero lease,
                // which the server refuses, so nothing more happens now.
            }
            LockExpectation::TimedOut => prop_assert_eq!(code(&response), Some(ErrorCode::Timeout)),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn lock_matches_model(steps in prop::collection::vec(lock_step(), 1..60)) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut model = LockModel::default();
        let mut now = 1_000u64;
        let mut op_id = 0u64;
        for step in steps {
            op_id += 1;
            match step {
                LockStep::Acquire { owner, lease_ms, wait_ms } => {
                    let command = Command::LockAcquire { key: KEY.into(), owner: owner_name(owner), lease_ms, wait_ms };
                    let outcome = store.apply(7, &request(op_id, command), now);
                    match model.holder.clone() {
                        None => {
                            let Outcome::Ready(Response::LockGranted { fence, lease_ms: granted }) = outcome else {
                                return Err(TestCaseError::fail(format!("free lock not granted: {outcome:?}")));
                            };
                            prop_assert_eq!(granted, lease_ms);
                            model.granted(owner, fence, lease_ms, now)?;
                        }
                        Some(holder) if holder.owner == owner => {
                            prop_assert_eq!(outcome, Outcome::Ready(Response::LockGranted { fence: holder.fence, lease_ms }));
                            model.holder.as_mut().unwrap().deadline_ms = now + lease_ms;
                        }
                        Some(_) if wait_ms == 0 => {
                            let Outcome::Ready(response) = outcome else { panic!("try-acquire parked") };
                            prop_assert_eq!(code(&response), Some(ErrorCode::Timeout));
                        }
                        Some(_) => {
                            let Outcome::Parked(waiter) = outcome else {
                                return Err(TestCaseError::fail(format!("held lock did not park: {outcome:?}")));
                            };
                            model.waiters.push_back((waiter, owner, lease_ms, now + wait_ms));
                        }
                    }
                }
                LockStep::Release { owner, stale } => {
                    let holds = model.holder.as_ref().filter(|holder| holder.owner == owner).map(|holder| holder.fence);
                    let fence = match holds {
                        Some(fence) if !stale => fence,
                        Some(fence) => fence - 1,
                        None => model.last_fence,
                    };
                    let command = Command::LockRelease { key: KEY.into(), owner: owner_name(owner), fence };
                    let outcome = store.apply(7, &request(op_id, command), now);
                    if holds.is_some() && !stale {
                        prop_assert_eq!(outcome, Outcome::Ready(Response::Released));
                        model.holder = None;
                        model.grant_next();
                    } else {
                        let Outcome::Ready(response) = outcome else { panic!("release parked") };
                        prop_assert_eq!(code(&response), Some(ErrorCode::NotHolder));
                    }
                }
                LockStep::Renew { owner, lease_ms } => {
                    let holds = model.holder.as_ref().filter(|holder| holder.owner == owner).map(|holder| holder.fence);
                    let fence = holds.unwrap_or(model.last_fence);
                    let command = Command::LockRenew { key: KEY.into(), owner: owner_name(owner), fence, lease_ms };
                    let outcome = store.apply(7, &request(op_id, command), now);
                    if holds.is_some() {
                        prop_assert_eq!(outcome, Outcome::Ready(Response::LockGranted { fence, lease_ms }));
                        model.holder.as_mut().unwrap().deadline_ms = now + lease_ms;
                    } else {
                        let Outcome::Ready(response) = outcome else { panic!("renew parked") };
                        prop_assert_eq!(code(&response), Some(ErrorCode::NotHolder));
                    }
                }
                LockStep::Holder => {
                    let outcome = store.apply(7, &request(0, Command::LockHolder { key: KEY.into() }), now);
                    let expected = model.holder.as_ref().map(|holder| LockHolder {
                        owner: owner_name(holder.owner),
                        fence: holder.fence,
                        lease_remaining_ms: holder.deadline_ms - now,
                    });
                    prop_assert_eq!(outcome, Outcome::Ready(Response::LockHolder { holder: expected }));
                }
                LockStep::Advance(ms) => {
                    let mut failure = None;
                    advance(&mut store, &mut now, ms, |store, now| {
                        model.tick(now);
                        if failure.is_none() {
                            failure = check_lock_completions(store, &mut model, now).err();
                        }
                    });
                    if let Some(failure) = failure {
                        return Err(failure);
                    }
                }
            }
            check_lock_completions(&mut store, &mut model, now)?;
        }
        // Every wait ends by its deadline: nothing stays parked forever.
        advance(&mut store, &mut now, 100, |_, _| {});
        prop_assert_eq!(store.stats().parked_requests, 0);
    }
}

// ---------------------------------------------------------------- semaphores

#[derive(Debug, Clone)]
enum SemaphoreStep {
    Acquire {
        owner: u8,
        permits: u32,
        lease_ms: u64,
        wait_ms: u64,
    },
    Release {
        nth: usize,
    },
    Advance(u64),
}

fn semaphore_step() -> impl Strategy<Value = SemaphoreStep> {
    prop_oneof![
        4 => (0u8..6, 1u32..=3, 1u64..40, 0u64..40)
            .prop_map(|(owner, permits, lease_ms, wait_ms)| SemaphoreStep::Acquire { owner, permits, lease_ms, wait_ms }),
        3 => (0usize..8).prop_map(|nth| SemaphoreStep::Release { nth }),
        2 => (1u64..30).prop_map(SemaphoreStep::Advance),
    ]
}

const SEMAPHORE_CAPACITY: u32 = 4;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn semaphore_never_over_issues_and_matches_model(steps in prop::collection::vec(semaphore_step(), 1..60)) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut now = 1_000u64;
        // Model: permit id -> (permits, lease deadline); waiters in arrival order.
        let mut held: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
        let mut waiters: VecDeque<(WaiterId, u32, u64, u64)> = VecDeque::new();
        let mut last_permit_id = 0u64;
        let mut op_id = 0u64;

        // Applies the store's completions to the model, checking each against it.
        fn settle(
            store: &mut Store,
            now: u64,
            held: &mut BTreeMap<u64, (u32, u64)>,
            waiters: &mut VecDeque<(WaiterId, u32, u64, u64)>,
            last_permit_id: &mut u64,
        ) -> Result<(), TestCaseError> {
            // Model first, in the store's timer order for this millisecond: each wait
            // that runs out leaves (and the head of the queue is served, as it may have
            // been what held others back), then lapsed leases return their permits.
            fn serve(
                now: u64,
                held: &mut BTreeMap<u64, (u32, u64)>,
                waiters: &mut VecDeque<(WaiterId, u32, u64, u64)>,
                grants: &mut Vec<(WaiterId, u32, u64)>,
            ) {
                loop {
                    let in_use: u32 = held.values().map(|(permits, _)| permits).sum();
                    let Some(head) = waiters.front() else { break };
                    if head.1 > SEMAPHORE_CAPACITY - in_use {
                        break;
                    }
                    let (waiter, permits, lease_ms, _) = waiters.pop_front().unwrap();
                    grants.push((waiter, permits, lease_ms));
                    // Reserved under a placeholder id until the store reports the real one.
                    held.insert(u64::MAX - waiter, (permits, now + lease_ms));
                }
            }
            let mut expected_timeouts = Vec::new();
            let mut expected_grants = Vec::new();
            let due: Vec<WaiterId> = waiters.iter().filter(|waiter| waiter.3 <= now).map(|waiter| waiter.0).collect();
            for waiter in due {
                if let Some(position) = waiters.iter().position(|candidate| candidate.0 == waiter) {
                    waiters.remove(position);
                    expected_timeouts.push(waiter);
                    serve(now, held, waiters, &mut expected_grants);
                }
            }
            held.retain(|_, (_, deadline)| *deadline > now);
            serve(now, held, waiters, &mut expected_grants);
            for (waiter, response) in store.drain_completions() {
                match response {
                    Response::SemaphoreGranted { permit_id, permits, lease_ms } => {
                        let position = expected_grants.iter().position(|grant| grant.0 == waiter);
                        prop_assert!(position.is_some(), "unexpected grant to {waiter}");
                        let (_, expected_permits, expected_lease) = expected_grants.remove(position.unwrap());
                        prop_assert_eq!((permits, lease_ms), (expected_permits, expected_lease));
                        prop_assert!(permit_id > *last_permit_id);
                        *last_permit_id = permit_id;
                        let reserved = held.remove(&(u64::MAX - waiter)).unwrap();
                        held.insert(permit_id, reserved);
                    }
                    other => {
                        prop_assert_eq!(code(&other), Some(ErrorCode::Timeout), "{:?}", other);
                        let position = expected_timeouts.iter().position(|expected| *expected == waiter);
                        prop_assert!(position.is_some(), "unexpected timeout of {waiter}");
                        expected_timeouts.remove(position.unwrap());
                    }
                }
            }
            prop_assert!(expected_grants.is_empty(), "grants not delivered: {:?}", expected_grants);
            prop_assert!(expected_timeouts.is_empty(), "timeouts not delivered: {:?}", expected_timeouts);
            let in_use: u32 = held.values().map(|(permits, _)| permits).sum();
            prop_assert!(in_use <= SEMAPHORE_CAPACITY, "{in_use} permits issued of {SEMAPHORE_CAPACITY}");
            let available = store.apply(0, &request(0, Command::SemaphoreAvailable { key: KEY.into(), capacity: SEMAPHORE_CAPACITY }), now);
            prop_assert_eq!(available, Outcome::Ready(Response::SemaphoreAvailable {
                available: SEMAPHORE_CAPACITY - in_use,
                capacity: SEMAPHORE_CAPACITY,
            }));
            Ok(())
        }

        for step in steps {
            op_id += 1;
            match step {
                SemaphoreStep::Acquire { owner, permits, lease_ms, wait_ms } => {
                    let command = Command::SemaphoreAcquire {
                        key: KEY.into(), owner: owner_name(owner), capacity: SEMAPHORE_CAPACITY, permits, lease_ms, wait_ms,
                    };
                    let outcome = store.apply(7, &request(op_id, command), now);
                    let in_use: u32 = held.values().map(|(permits, _)| permits).sum();
                    if waiters.is_empty() && permits <= SEMAPHORE_CAPACITY - in_use {
                        let Outcome::Ready(Response::SemaphoreGranted { permit_id, .. }) = outcome else {
                            return Err(TestCaseError::fail(format!("fitting acquire not granted: {outcome:?}")));
                        };
                        prop_assert!(permit_id > last_permit_id);
                        last_permit_id = permit_id;
                        held.insert(permit_id, (permits, now + lease_ms));
                    } else if wait_ms == 0 {
                        let Outcome::Ready(response) = outcome else { panic!("try-acquire parked") };
                        prop_assert_eq!(code(&response), Some(ErrorCode::Timeout));
                    } else {
                        let Outcome::Parked(waiter) = outcome else {
                            return Err(TestCaseError::fail(format!("acquire did not wait: {outcome:?}")));
                        };
                        waiters.push_back((waiter, permits, lease_ms, now + wait_ms));
                    }
                }
                SemaphoreStep::Release { nth } => {
                    let permit_id = held.keys().nth(nth).copied().unwrap_or(last_permit_id + 1_000);
                    let outcome = store.apply(7, &request(op_id, Command::SemaphoreRelease { key: KEY.into(), permit_id }), now);
                    if held.remove(&permit_id).is_some() {
                        prop_assert_eq!(outcome, Outcome::Ready(Response::Released));
                    } else {
                        let Outcome::Ready(response) = outcome else { panic!("release parked") };
                        prop_assert_eq!(code(&response), Some(ErrorCode::NotHolder));
                    }
                }
                SemaphoreStep::Advance(ms) => {
                    let until = now + ms;
                    while now < until {
                        now += 1;
                        store.expire_due(now, usize::MAX);
                        settle(&mut store, now, &mut held, &mut waiters, &mut last_permit_id)?;
                    }
                }
            }
            settle(&mut store, now, &mut held, &mut waiters, &mut last_permit_id)?;
        }
    }
}

// ---------------------------------------------------------------- barriers

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Arrivals at random times with random timeouts: every generation that completes
    /// releases exactly `parties` waiters with indexes 0..parties; a generation whose
    /// wait ran out answers its waiters Timeout or BarrierBroken, never a pass.
    #[test]
    fn barrier_releases_exactly_parties_per_generation(
        parties in 1u32..5,
        arrivals in prop::collection::vec((0u64..20, 1u64..60), 1..40),
    ) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut now = 1_000u64;
        let mut passed: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut failed = 0usize;
        let mut answered = 0usize;
        let record = |response: Response, passed: &mut BTreeMap<u64, Vec<u32>>, failed: &mut usize| {
            match response {
                Response::BarrierPassed { generation, arrival_index } => passed.entry(generation).or_default().push(arrival_index),
                other => {
                    assert!(matches!(code(&other), Some(ErrorCode::Timeout | ErrorCode::BarrierBroken)), "{other:?}");
                    *failed += 1;
                }
            }
        };
        for (index, (gap_ms, timeout_ms)) in arrivals.iter().enumerate() {
            advance(&mut store, &mut now, *gap_ms, |_, _| {});
            for (_, response) in store.drain_completions() {
                record(response, &mut passed, &mut failed);
                answered += 1;
            }
            let command = Command::BarrierWait { key: KEY.into(), parties, timeout_ms: *timeout_ms };
            if let Outcome::Ready(response) = store.apply(1, &request(index as u64 + 1, command), now) {
                record(response, &mut passed, &mut failed);
                answered += 1;
            }
            for (_, response) in store.drain_completions() {
                record(response, &mut passed, &mut failed);
                answered += 1;
            }
        }
        advance(&mut store, &mut now, 100, |_, _| {});
        for (_, response) in store.drain_completions() {
            record(response, &mut passed, &mut failed);
            answered += 1;
        }
        prop_assert_eq!(answered, arrivals.len(), "every arrival is answered exactly once");
        for (generation, mut indexes) in passed {
            indexes.sort_unstable();
            prop_assert_eq!(indexes, (0..parties).collect::<Vec<_>>(), "generation {}", generation);
        }
        prop_assert_eq!(store.stats().parked_requests, 0);
        let _ = failed;
    }
}

#[test]
fn barrier_timeout_breaks_the_generation_for_everyone() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let wait = |timeout_ms| Command::BarrierWait {
        key: KEY.into(),
        parties: 3,
        timeout_ms,
    };
    let Outcome::Parked(first) = store.apply(1, &request(1, wait(10)), 0) else {
        panic!()
    };
    let Outcome::Parked(second) = store.apply(1, &request(2, wait(50)), 0) else {
        panic!()
    };
    store.expire_due(10, usize::MAX);
    let completions = store.drain_completions();
    assert_eq!(completions.len(), 2);
    assert_eq!(completions[0].0, first);
    assert_eq!(code(&completions[0].1), Some(ErrorCode::Timeout));
    assert_eq!(completions[1].0, second);
    assert_eq!(code(&completions[1].1), Some(ErrorCode::BarrierBroken));
    // The next three arrivals form generation 1 and pass.
    assert!(matches!(store.apply(1, &request(3, wait(50)), 11), Outcome::Parked(_)));
    assert!(matches!(store.apply(1, &request(4, wait(50)), 11), Outcome::Parked(_)));
    assert_eq!(
        store.apply(1, &request(5, wait(50)), 11),
        Outcome::Ready(Response::BarrierPassed {
            generation: 1,
            arrival_index: 2
        })
    );
    let passed: Vec<_> = store
        .drain_completions()
        .into_iter()
        .map(|(_, response)| response)
        .collect();
    assert_eq!(
        passed,
        vec![
            Response::BarrierPassed {
                generation: 1,
                arrival_index: 0
            },
            Response::BarrierPassed {
                generation: 1,
                arrival_index: 1
            },
        ]
    );
}

// ---------------------------------------------------------------- the rest

#[test]
fn latch_opens_its_waiters_at_zero() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let run = |store: &mut Store, op_id, command| store.apply(1, &request(op_id, command), 0);
    assert_eq!(
        run(
            &mut store,
            1,
            Command::LatchTrySetCount {
                key: KEY.into(),
                count: 2
            }
        ),
        Outcome::Ready(Response::LatchSet { set: true, count: 2 })
    );
    assert_eq!(
        run(
            &mut store,
            2,
            Command::LatchTrySetCount {
                key: KEY.into(),
                count: 5
            }
        ),
        Outcome::Ready(Response::LatchSet { set: false, count: 2 })
    );
    let Outcome::Parked(waiter) = run(
        &mut store,
        3,
        Command::LatchWait {
            key: KEY.into(),
            timeout_ms: 100,
        },
    ) else {
        panic!()
    };
    assert_eq!(
        run(&mut store, 4, Command::LatchCountDown { key: KEY.into() }),
        Outcome::Ready(Response::LatchCount { count: 1 })
    );
    assert!(store.drain_completions().is_empty());
    assert_eq!(
        run(&mut store, 5, Command::LatchCountDown { key: KEY.into() }),
        Outcome::Ready(Response::LatchCount { count: 0 })
    );
    assert_eq!(store.drain_completions(), vec![(waiter, Response::LatchOpen)]);
    assert_eq!(
        run(
            &mut store,
            0,
            Command::LatchWait {
                key: KEY.into(),
                timeout_ms: 100
            }
        ),
        Outcome::Ready(Response::LatchOpen)
    );
    assert_eq!(
        store.stats().keys,
        0,
        "an open latch with no waiters leaves nothing behind"
    );
}

#[test]
fn future_is_write_once_and_wakes_every_waiter() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let get = |timeout_ms| Command::FutureGet {
        key: KEY.into(),
        timeout_ms,
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
    let complete = |value: &str| Command::FutureComplete {
        key: KEY.into(),
        value: value.into(),
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

#[test]
fn queue_hands_a_push_to_the_longest_waiting_pop() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let pop = |timeout_ms| Command::QueuePop {
        key: KEY.into(),
        end: QueueEnd::Front,
        timeout_ms,
    };
    let push = |value: &str, end| Command::QueuePush {
        key: KEY.into(),
        value: value.into(),
        end,
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
        store.apply(1, &request(0, Command::QueueLen { key: KEY.into() }), 101),
        Outcome::Ready(Response::QueueLength { length: 3 })
    );
    let take = |store: &mut Store, op_id, end| match store.apply(
        1,
        &request(
            op_id,
            Command::QueuePop {
                key: KEY.into(),
                end,
                timeout_ms: 0,
            },
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
            Command::MapSet {
                key: KEY.into(),
                field: b"f".to_vec(),
                value: b"v".to_vec()
            }
        ),
        Response::Written { .. }
    ));
    assert_eq!(
        run(
            &mut store,
            2,
            Command::MapIncr {
                key: KEY.into(),
                field: b"n".to_vec(),
                delta: 5
            }
        ),
        Response::Counter { value: 5 }
    );
    assert_eq!(
        run(
            &mut store,
            3,
            Command::MapIncr {
                key: KEY.into(),
                field: b"n".to_vec(),
                delta: -7
            }
        ),
        Response::Counter { value: -2 }
    );
    assert_eq!(
        code(&run(
            &mut store,
            4,
            Command::MapIncr {
                key: KEY.into(),
                field: b"f".to_vec(),
                delta: 1
            }
        )),
        Some(ErrorCode::WrongType)
    );
    assert_eq!(
        run(&mut store, 0, Command::MapGetAll { key: KEY.into() }),
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
            Command::MapDel {
                key: KEY.into(),
                field: b"f".to_vec()
            }
        ),
        Response::Deleted { existed: true }
    );
    assert_eq!(
        run(
            &mut store,
            6,
            Command::MapDel {
                key: KEY.into(),
                field: b"n".to_vec()
            }
        ),
        Response::Deleted { existed: true }
    );
    assert_eq!(store.stats().keys, 0);
    assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
}

#[test]
fn wrong_type_between_objects() {
    let mut store = Store::new(u64::MAX / 2, 3);
    store.apply(
        1,
        &request(
            1,
            Command::CounterAdd {
                key: KEY.into(),
                delta: 1,
            },
        ),
        0,
    );
    let outcome = store.apply(
        1,
        &request(
            2,
            Command::LockAcquire {
                key: KEY.into(),
                owner: b"a".to_vec(),
                lease_ms: 10,
                wait_ms: 0,
            },
        ),
        0,
    );
    assert!(matches!(outcome, Outcome::Ready(ref response) if code(response) == Some(ErrorCode::WrongType)));
    let outcome = store.apply(
        1,
        &request(
            3,
            Command::Set {
                key: KEY.into(),
                value: b"x".to_vec(),
                ttl_ms: 0,
                condition: engram_proto::SetCondition::Always,
            },
        ),
        0,
    );
    assert!(matches!(outcome, Outcome::Ready(ref response) if code(response) == Some(ErrorCode::WrongType)));
}

#[test]
fn deleting_an_object_answers_its_waiters() {
    let mut store = Store::new(u64::MAX / 2, 3);
    store.apply(
        1,
        &request(
            1,
            Command::LockAcquire {
                key: KEY.into(),
                owner: b"a".to_vec(),
                lease_ms: 1_000,
                wait_ms: 0,
            },
        ),
        0,
    );
    let Outcome::Parked(waiter) = store.apply(
        1,
        &request(
            2,
            Command::LockAcquire {
                key: KEY.into(),
                owner: b"b".to_vec(),
                lease_ms: 1_000,
                wait_ms: 500,
            },
        ),
        0,
    ) else {
        panic!()
    };
    store.apply(1, &request(3, Command::Del { key: KEY.into() }), 1);
    let completions = store.drain_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].0, waiter);
    assert_eq!(code(&completions[0].1), Some(ErrorCode::ObjectDeleted));
    assert_eq!(store.stats().parked_requests, 0);
    // A fence never repeats even though the lock's key was deleted and reused.
    let Outcome::Ready(Response::LockGranted { fence: first, .. }) = store.apply(
        1,
        &request(
            4,
            Command::LockAcquire {
                key: KEY.into(),
                owner: b"c".to_vec(),
                lease_ms: 10,
                wait_ms: 0,
            },
        ),
        2,
    ) else {
        panic!()
    };
    store.apply(1, &request(5, Command::Del { key: KEY.into() }), 3);
    let Outcome::Ready(Response::LockGranted { fence: second, .. }) = store.apply(
        1,
        &request(
            6,
            Command::LockAcquire {
                key: KEY.into(),
                owner: b"c".to_vec(),
                lease_ms: 10,
                wait_ms: 0,
            },
        ),
        4,
    ) else {
        panic!()
    };
    assert!(second > first);
}

#[test]
fn retried_parked_acquire_reattaches_and_a_lost_grant_is_replayed() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str| Command::LockAcquire {
        key: KEY.into(),
        owner: owner.into(),
        lease_ms: 1_000,
        wait_ms: 500,
    };
    let Outcome::Ready(Response::LockGranted { fence, .. }) = store.apply(1, &request(1, acquire("a")), 0) else {
        panic!()
    };
    let waiting = request(2, acquire("b"));
    let Outcome::Parked(waiter) = store.apply(2, &waiting, 0) else {
        panic!()
    };
    // The client lost its connection and retries: same waiter, not a second one.
    assert_eq!(store.apply(2, &waiting, 1), Outcome::Parked(waiter));
    assert_eq!(store.stats().parked_requests, 1);
    store.apply(
        1,
        &request(
            3,
            Command::LockRelease {
                key: KEY.into(),
                owner: b"a".to_vec(),
                fence,
            },
        ),
        2,
    );
    let granted = store.drain_completions();
    assert_eq!(granted.len(), 1);
    // The grant's answer was lost too: the retry gets it, and no second grant happens.
    assert_eq!(store.apply(2, &waiting, 3), Outcome::Ready(granted[0].1.clone()));
    assert!(store.drain_completions().is_empty());
}

#[test]
fn a_cancelled_pop_takes_nothing_and_an_undelivered_one_gives_its_value_back() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let pop = Command::QueuePop {
        key: KEY.into(),
        end: QueueEnd::Front,
        timeout_ms: 1_000,
    };
    let push = |value: &str| Command::QueuePush {
        key: KEY.into(),
        value: value.into(),
        end: QueueEnd::Back,
    };
    let length = |store: &mut Store| store.apply(1, &request(0, Command::QueueLen { key: KEY.into() }), 0);

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
            Command::QueuePop {
                key: KEY.into(),
                end: QueueEnd::Front,
                timeout_ms: 0,
            },
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
fn an_undelivered_grant_passes_the_lock_on_and_a_cancelled_waiter_gets_nothing() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str| Command::LockAcquire {
        key: KEY.into(),
        owner: owner.into(),
        lease_ms: 10_000,
        wait_ms: 5_000,
    };
    let Outcome::Ready(Response::LockGranted { fence, .. }) = store.apply(1, &request(1, acquire("a")), 0) else {
        panic!()
    };
    let Outcome::Parked(dead) = store.apply(2, &request(1, acquire("dead")), 0) else {
        panic!()
    };
    let Outcome::Parked(gone) = store.apply(3, &request(1, acquire("gone")), 0) else {
        panic!()
    };
    let Outcome::Parked(alive) = store.apply(4, &request(1, acquire("alive")), 0) else {
        panic!()
    };
    store.cancel(gone, 1);
    store.apply(
        1,
        &request(
            2,
            Command::LockRelease {
                key: KEY.into(),
                owner: b"a".to_vec(),
                fence,
            },
        ),
        2,
    );
    let mut completions = store.take_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].waiter, dead);
    store.undeliverable(completions.remove(0), 3);
    let granted = store.drain_completions();
    assert_eq!(granted.len(), 1, "the cancelled waiter is skipped");
    assert_eq!(granted[0].0, alive);
    let Response::LockGranted { fence: alive_fence, .. } = granted[0].1 else {
        panic!()
    };
    let holder = store.apply(0, &request(0, Command::LockHolder { key: KEY.into() }), 3);
    let Outcome::Ready(Response::LockHolder { holder: Some(holder) }) = holder else {
        panic!()
    };
    assert_eq!((holder.owner, holder.fence), (b"alive".to_vec(), alive_fence));
    assert_eq!(store.stats().parked_requests, 0);
}

#[test]
fn wrong_type_names_the_client_key_not_the_stored_one() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let stored_key = b"\x07defaultplain".to_vec();
    store.apply(
        1,
        &request(
            1,
            Command::CounterAdd {
                key: stored_key.clone(),
                delta: 1,
            },
        ),
        0,
    );
    let Outcome::Ready(Response::Error(reply)) = store.apply(1, &request(0, Command::MapGetAll { key: stored_key }), 0)
    else {
        panic!()
    };
    assert!(reply.message.contains("\"plain\""), "{}", reply.message);
}

// ---------------------------------------------------------------- queues, maps, latches, futures

/// Fires the store's timers at `now` and checks that exactly the model's waits due by
/// then were answered, with `Timeout`, in the store's timer order (deadline, then
/// waiter); drops them from the model's `(waiter, deadline)` list.
fn expire_waits(store: &mut Store, now: u64, waiting: &mut Vec<(WaiterId, u64)>) -> Result<(), TestCaseError> {
    store.expire_due(now, usize::MAX);
    let mut due: Vec<(u64, WaiterId)> = waiting
        .iter()
        .filter(|(_, deadline)| *deadline <= now)
        .map(|(waiter, deadline)| (*deadline, *waiter))
        .collect();
    due.sort_unstable();
    waiting.retain(|(_, deadline)| *deadline > now);
    let delivered = store.drain_completions();
    let delivered_waiters: Vec<WaiterId> = delivered.iter().map(|(waiter, _)| *waiter).collect();
    let due_waiters: Vec<WaiterId> = due.into_iter().map(|(_, waiter)| waiter).collect();
    prop_assert_eq!(delivered_waiters, due_waiters);
    let all_timed_out = delivered
        .iter()
        .all(|(_, response)| code(response) == Some(ErrorCode::Timeout));
    prop_assert!(all_timed_out, "{:?}", delivered);
    Ok(())
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
                    let command = Command::QueuePush { key: KEY.into(), value: vec![value], end: end(front) };
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
                    let command = Command::QueuePop { key: KEY.into(), end: end(front), timeout_ms };
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
                    let outcome = store.apply(1, &request(0, Command::QueueLen { key: KEY.into() }), now);
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
                    let response = ready(store.apply(1, &request(op_id, Command::MapSet { key: KEY.into(), field: vec![field], value: vec![value] }), 0));
                    let written = matches!(response, Response::Written { .. });
                    prop_assert!(written, "{:?}", response);
                    model.insert(vec![field], vec![value]);
                }
                MapStep::Del { field } => {
                    let response = ready(store.apply(1, &request(op_id, Command::MapDel { key: KEY.into(), field: vec![field] }), 0));
                    prop_assert_eq!(response, Response::Deleted { existed: model.remove(&vec![field]).is_some() });
                }
                MapStep::Get { field } => {
                    let response = ready(store.apply(1, &request(0, Command::MapGet { key: KEY.into(), field: vec![field] }), 0));
                    match model.get(&vec![field]) {
                        Some(value) => {
                            let same = matches!(&response, Response::Value { value: got, .. } if got == value);
                            prop_assert!(same, "{:?}", response);
                        }
                        None => prop_assert_eq!(response, Response::Missing),
                    }
                }
                MapStep::Incr { field, delta } => {
                    let response = ready(store.apply(1, &request(op_id, Command::MapIncr { key: KEY.into(), field: vec![field], delta }), 0));
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
                    let response = ready(store.apply(1, &request(0, Command::MapGetAll { key: KEY.into() }), 0));
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
            store.apply(1, &request(0, Command::MapDel { key: KEY.into(), field: vec![field] }), 0);
        }
        prop_assert_eq!(store.stats().keys, 0);
        prop_assert_eq!(store.stats().memory_used_bytes, store.operations.bytes());
    }

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
                    let outcome = store.apply(1, &request(op_id, Command::LatchTrySetCount { key: KEY.into(), count: argument }), now);
                    let set = count == 0;
                    if set {
                        count = argument;
                    }
                    prop_assert_eq!(outcome, Outcome::Ready(Response::LatchSet { set, count }));
                }
                1 => {
                    let outcome = store.apply(1, &request(op_id, Command::LatchCountDown { key: KEY.into() }), now);
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
                2 => match store.apply(1, &request(op_id, Command::LatchWait { key: KEY.into(), timeout_ms: argument }), now) {
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
            let counted = store.apply(0, &request(0, Command::LatchCount { key: KEY.into() }), now);
            prop_assert_eq!(counted, Outcome::Ready(Response::LatchCount { count }));
        }
    }

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
                    let outcome = store.apply(1, &request(op_id, Command::FutureComplete { key: KEY.into(), value: vec![argument as u8] }), now);
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
                1 => match (value, store.apply(1, &request(0, Command::FutureGet { key: KEY.into(), timeout_ms: argument }), now)) {
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

#[test]
fn deleting_objects_with_waiters_and_leases_leaves_no_memory_or_timers_behind() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str, wait_ms| Command::LockAcquire {
        key: KEY.into(),
        owner: owner.into(),
        lease_ms: 3_600_000,
        wait_ms,
    };
    store.apply(1, &request(1, acquire("holder", 0)), 0);
    let Outcome::Parked(_) = store.apply(1, &request(2, acquire("a-rather-long-waiting-owner-name", 5_000)), 0) else {
        panic!()
    };
    store.apply(1, &request(3, Command::Del { key: KEY.into() }), 1);
    store.take_completions();
    assert_eq!(store.stats().keys, 0);
    assert_eq!(
        store.stats().memory_used_bytes,
        store.operations.bytes(),
        "a waiter's bytes stayed counted"
    );
    assert_eq!(
        store.next_deadline_ms(),
        None,
        "the deleted holder's lease timer is gone"
    );
}

#[test]
fn an_undelivered_pop_gives_its_value_back_even_on_a_full_shard() {
    let pop = Command::QueuePop {
        key: KEY.into(),
        end: QueueEnd::Front,
        timeout_ms: 1_000,
    };
    let push = Command::QueuePush {
        key: KEY.into(),
        value: vec![7; 100],
        end: QueueEnd::Back,
    };
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
    let length = store.apply(1, &request(0, Command::QueueLen { key: KEY.into() }), 1);
    assert_eq!(
        length,
        Outcome::Ready(Response::QueueLength { length: 1 }),
        "the acknowledged push was lost"
    );
}

#[test]
fn renewing_after_the_lease_ran_out_does_not_revive_it() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str| Command::LockAcquire {
        key: KEY.into(),
        owner: owner.into(),
        lease_ms: 10,
        wait_ms: 1_000,
    };
    let Outcome::Ready(Response::LockGranted { fence, .. }) = store.apply(1, &request(1, acquire("a")), 0) else {
        panic!()
    };
    let Outcome::Parked(waiter) = store.apply(1, &request(2, acquire("b")), 0) else {
        panic!()
    };
    // The renew arrives after the deadline but before any timer fired.
    let renew = Command::LockRenew {
        key: KEY.into(),
        owner: b"a".to_vec(),
        fence,
        lease_ms: 10,
    };
    let Outcome::Ready(refused) = store.apply(1, &request(3, renew), 10) else {
        panic!()
    };
    assert_eq!(code(&refused), Some(ErrorCode::NotHolder));
    let granted = store.drain_completions();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].0, waiter);
}

/// The message of an error answer, with its code checked.
fn refusal(outcome: Outcome, expected: ErrorCode) -> String {
    match outcome {
        Outcome::Ready(Response::Error(reply)) => {
            assert_eq!(ErrorCode::from_u16(reply.code), Some(expected), "{}", reply.message);
            reply.message
        }
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

/// `NotHolder` keeps its code but says which part of the grant did not match: the owner,
/// the fence, both, or that the lease ended or the lock is free.
#[test]
fn not_holder_says_what_did_not_match() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let mut op_id = 0;
    let mut apply = |store: &mut Store, command: Command, now: u64| {
        op_id += 1;
        store.apply(1, &request(op_id, command), now)
    };
    let acquire = |owner: &str, wait_ms| Command::LockAcquire {
        key: KEY.into(),
        owner: owner.into(),
        lease_ms: 10,
        wait_ms,
    };
    let release = |owner: &str, fence| Command::LockRelease {
        key: KEY.into(),
        owner: owner.into(),
        fence,
    };
    let renew = |owner: &str, fence| Command::LockRenew {
        key: KEY.into(),
        owner: owner.into(),
        fence,
        lease_ms: 10,
    };
    let Outcome::Ready(Response::LockGranted { fence, .. }) = apply(&mut store, acquire("a", 0), 0) else {
        panic!("a free lock is granted")
    };
    let wrong_owner = refusal(apply(&mut store, release("b", fence), 1), ErrorCode::NotHolder);
    assert_eq!(
        wrong_owner,
        format!("owner \"b\" does not hold the lock: fence {fence} is held by owner \"a\"")
    );
    let wrong_fence = refusal(apply(&mut store, renew("a", fence + 7), 1), ErrorCode::NotHolder);
    assert_eq!(
        wrong_fence,
        format!(
            "fence {} does not hold the lock: owner \"a\" holds it under fence {fence}",
            fence + 7
        )
    );
    let both = refusal(apply(&mut store, release("b", fence + 7), 1), ErrorCode::NotHolder);
    assert!(both.starts_with("neither owner \"b\" nor fence"), "{both}");
    // Past the lease, before any timer fired: the answer says the lease ended.
    let ended = refusal(apply(&mut store, renew("a", fence), 10), ErrorCode::NotHolder);
    assert_eq!(
        ended,
        format!("fence {fence} no longer holds the lock: its lease ended; it is free")
    );
    let free = refusal(apply(&mut store, release("a", fence), 11), ErrorCode::NotHolder);
    assert!(
        free.starts_with(&format!("the lock is free: fence {fence} does not hold it")),
        "{free}"
    );

    // A lease that ends with a waiter in line names the new holder.
    let Outcome::Ready(Response::LockGranted { fence: second, .. }) = apply(&mut store, acquire("a", 0), 20) else {
        panic!("a free lock is granted")
    };
    let Outcome::Parked(_) = apply(&mut store, acquire("b", 1_000), 20) else {
        panic!("a held lock parks a waiting acquire")
    };
    let passed_on = refusal(apply(&mut store, release("a", second), 30), ErrorCode::NotHolder);
    assert!(
        passed_on.starts_with(&format!(
            "fence {second} no longer holds the lock: its lease ended; owner \"b\" holds it now, under fence"
        )),
        "{passed_on}"
    );

    // Semaphore permits: the lease that ended, then a permit that is simply not held.
    let pool = b"pool".to_vec();
    let Outcome::Ready(Response::SemaphoreGranted { permit_id, .. }) = apply(
        &mut store,
        Command::SemaphoreAcquire {
            key: pool.clone(),
            owner: b"a".to_vec(),
            capacity: 2,
            permits: 1,
            lease_ms: 10,
            wait_ms: 0,
        },
        100,
    ) else {
        panic!("a free permit is granted")
    };
    let permit_release = || Command::SemaphoreRelease {
        key: pool.clone(),
        permit_id,
    };
    let lapsed = refusal(apply(&mut store, permit_release(), 110), ErrorCode::NotHolder);
    assert_eq!(lapsed, format!("permit {permit_id} is not held: its lease ended"));
    let gone = refusal(apply(&mut store, permit_release(), 111), ErrorCode::NotHolder);
    assert_eq!(
        gone,
        format!("permit {permit_id} is not held (released, lease ended, or never granted)")
    );
}
