//! The lock against a model of its holder and its FIFO of waiters, and the lock's
//! refusals, retries and undelivered grants.

use std::collections::VecDeque;

use engram_proto::LockHolder;
use proptest::prelude::*;

use super::*;
use engram_proto::{DataCommand, LockCommand, SemaphoreCommand};

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
            deadline_ms: now + lease_ms + STORE_CLOCK_STEP_MS,
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
                    let command = Command::from(LockCommand::Acquire { key: KEY.into(), owner: owner_name(owner), lease_ms, wait_ms });
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
                            model.holder.as_mut().unwrap().deadline_ms = now + lease_ms + STORE_CLOCK_STEP_MS;
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
                    let command = Command::from(LockCommand::Release { key: KEY.into(), owner: owner_name(owner), fence });
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
                    let command = Command::from(LockCommand::Renew { key: KEY.into(), owner: owner_name(owner), fence, lease_ms });
                    let outcome = store.apply(7, &request(op_id, command), now);
                    if holds.is_some() {
                        prop_assert_eq!(outcome, Outcome::Ready(Response::LockGranted { fence, lease_ms }));
                        model.holder.as_mut().unwrap().deadline_ms = now + lease_ms + STORE_CLOCK_STEP_MS;
                    } else {
                        let Outcome::Ready(response) = outcome else { panic!("renew parked") };
                        prop_assert_eq!(code(&response), Some(ErrorCode::NotHolder));
                    }
                }
                LockStep::Holder => {
                    let outcome = store.apply(7, &request(0, Command::from(LockCommand::Holder { key: KEY.into() })), now);
                    let expected = model.holder.as_ref().map(|holder| LockHolder {
                        owner: owner_name(holder.owner),
                        fence: holder.fence,
                        lease_remaining_ms: holder.deadline_ms - now - STORE_CLOCK_STEP_MS,
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

#[test]
fn retried_parked_acquire_reattaches_and_a_lost_grant_is_replayed() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str| {
        Command::Data(DataCommand::Lock(LockCommand::Acquire {
            key: KEY.into(),
            owner: owner.into(),
            lease_ms: 1_000,
            wait_ms: 500,
        }))
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
            Command::from(LockCommand::Release {
                key: KEY.into(),
                owner: b"a".to_vec(),
                fence,
            }),
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
fn an_undelivered_grant_passes_the_lock_on_and_a_cancelled_waiter_gets_nothing() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str| {
        Command::Data(DataCommand::Lock(LockCommand::Acquire {
            key: KEY.into(),
            owner: owner.into(),
            lease_ms: 10_000,
            wait_ms: 5_000,
        }))
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
            Command::from(LockCommand::Release {
                key: KEY.into(),
                owner: b"a".to_vec(),
                fence,
            }),
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
    let holder = store.apply(
        0,
        &request(0, Command::from(LockCommand::Holder { key: KEY.into() })),
        3,
    );
    let Outcome::Ready(Response::LockHolder { holder: Some(holder) }) = holder else {
        panic!()
    };
    assert_eq!((holder.owner, holder.fence), (b"alive".to_vec(), alive_fence));
    assert_eq!(store.stats().parked_requests, 0);
}

#[test]
fn renewing_after_the_lease_ran_out_does_not_revive_it() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let acquire = |owner: &str| {
        Command::Data(DataCommand::Lock(LockCommand::Acquire {
            key: KEY.into(),
            owner: owner.into(),
            lease_ms: 10,
            wait_ms: 1_000,
        }))
    };
    let Outcome::Ready(Response::LockGranted { fence, .. }) = store.apply(1, &request(1, acquire("a")), 0) else {
        panic!()
    };
    let Outcome::Parked(waiter) = store.apply(1, &request(2, acquire("b")), 0) else {
        panic!()
    };
    // The renew arrives after the deadline (the lease plus the clock's step) but before any
    // timer fired.
    let renew = Command::from(LockCommand::Renew {
        key: KEY.into(),
        owner: b"a".to_vec(),
        fence,
        lease_ms: 10,
    });
    let Outcome::Ready(refused) = store.apply(1, &request(3, renew), 10 + STORE_CLOCK_STEP_MS) else {
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
    let acquire = |owner: &str, wait_ms| {
        Command::Data(DataCommand::Lock(LockCommand::Acquire {
            key: KEY.into(),
            owner: owner.into(),
            lease_ms: 10,
            wait_ms,
        }))
    };
    let release = |owner: &str, fence| {
        Command::Data(DataCommand::Lock(LockCommand::Release {
            key: KEY.into(),
            owner: owner.into(),
            fence,
        }))
    };
    let renew = |owner: &str, fence| {
        Command::Data(DataCommand::Lock(LockCommand::Renew {
            key: KEY.into(),
            owner: owner.into(),
            fence,
            lease_ms: 10,
        }))
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
    let ended = refusal(apply(&mut store, renew("a", fence), 11), ErrorCode::NotHolder);
    assert_eq!(
        ended,
        format!("fence {fence} no longer holds the lock: its lease ended; it is free")
    );
    let free = refusal(apply(&mut store, release("a", fence), 12), ErrorCode::NotHolder);
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
    let passed_on = refusal(apply(&mut store, release("a", second), 31), ErrorCode::NotHolder);
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
        Command::from(SemaphoreCommand::Acquire {
            key: pool.clone(),
            owner: b"a".to_vec(),
            capacity: 2,
            permits: 1,
            lease_ms: 10,
            wait_ms: 0,
        }),
        100,
    ) else {
        panic!("a free permit is granted")
    };
    let permit_release = || {
        Command::Data(DataCommand::Semaphore(SemaphoreCommand::Release {
            key: pool.clone(),
            permit_id,
        }))
    };
    let lapsed = refusal(apply(&mut store, permit_release(), 111), ErrorCode::NotHolder);
    assert_eq!(lapsed, format!("permit {permit_id} is not held: its lease ended"));
    let gone = refusal(apply(&mut store, permit_release(), 112), ErrorCode::NotHolder);
    assert_eq!(
        gone,
        format!("permit {permit_id} is not held (released, lease ended, or never granted)")
    );
}
