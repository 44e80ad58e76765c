//! The semaphore against a model of its permits and waiters.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::*;
use engram_proto::SemaphoreCommand;

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
                    held.insert(u64::MAX - waiter, (permits, now + lease_ms + STORE_CLOCK_STEP_MS));
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
            let available = store.apply(0, &request(0, Command::from(SemaphoreCommand::Available { key: KEY.into(), capacity: SEMAPHORE_CAPACITY })), now);
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
                    let command = Command::from(SemaphoreCommand::Acquire {
                        key: KEY.into(), owner: owner_name(owner), capacity: SEMAPHORE_CAPACITY, permits, lease_ms, wait_ms,
                    });
                    let outcome = store.apply(7, &request(op_id, command), now);
                    let in_use: u32 = held.values().map(|(permits, _)| permits).sum();
                    if waiters.is_empty() && permits <= SEMAPHORE_CAPACITY - in_use {
                        let Outcome::Ready(Response::SemaphoreGranted { permit_id, .. }) = outcome else {
                            return Err(TestCaseError::fail(format!("fitting acquire not granted: {outcome:?}")));
                        };
                        prop_assert!(permit_id > last_permit_id);
                        last_permit_id = permit_id;
                        held.insert(permit_id, (permits, now + lease_ms + STORE_CLOCK_STEP_MS));
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
                    let outcome = store.apply(7, &request(op_id, Command::from(SemaphoreCommand::Release { key: KEY.into(), permit_id })), now);
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
