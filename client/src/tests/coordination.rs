//! The coordination object handles against the in-process fake node, which answers them
//! from scripted responses: request shape (owners, leases, waits, op ids), the call
//! timeout stretched by the wait, response mapping, and wait timeouts kept final.

use std::time::Duration;

use engram_proto::limits::{CALL_TIMEOUT_MS_MAX, WAIT_MS_MAX};
use engram_proto::{MapEntry, QueueEnd};

use super::fake_server::{error, FakeServer, Seen};
use super::front_client;
use crate::{BarrierPassage, Client, Command, Error, ErrorCode, LockHolder, Response};
use engram_proto::{BarrierCommand, FutureCommand, LatchCommand, LockCommand, QueueCommand, SemaphoreCommand};

const LEASE: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_millis(250);

fn answer(fake: &FakeServer, key: &str, response: Response) {
    fake.lock().answers.insert(key.as_bytes().to_vec(), response);
}

fn seen_for(fake: &FakeServer, key: &str) -> Vec<Seen> {
    let seen = fake.lock().seen.clone();
    seen.into_iter().filter(|seen| seen.key == key.as_bytes()).collect()
}

fn last_command(fake: &FakeServer, key: &str) -> Command {
    seen_for(fake, key).pop().expect("a request for the key").command
}

#[tokio::test]
async fn a_lock_acquire_carries_owner_lease_and_wait_and_its_guard_releases_by_fence() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    answer(&fake, "db", Response::LockGranted { fence: 9, lease_ms: 2 });
    let lock = client.lock("db");
    let mut guard = lock
        .acquire("worker-1", Duration::from_micros(1_500), WAIT)
        .await
        .unwrap();
    assert_eq!((guard.fence(), guard.owner()), (9, &b"worker-1"[..]));
    assert_eq!(guard.lease(), Duration::from_millis(2));
    assert_eq!(
        last_command(&fake, "db"),
        Command::from(LockCommand::Acquire {
            key: b"db".to_vec(),
            owner: b"worker-1".to_vec(),
            lease_ms: 2,
            wait_ms: 250,
        })
    );
    answer(
        &fake,
        "db",
        Response::LockGranted {
            fence: 9,
            lease_ms: 10_000,
        },
    );
    guard.renew(LEASE).await.unwrap();
    assert_eq!(guard.lease(), LEASE);
    answer(&fake, "db", Response::Released);
    guard.release().await.unwrap();
    assert_eq!(
        last_command(&fake, "db"),
        Command::from(LockCommand::Release {
            key: b"db".to_vec(),
            owner: b"worker-1".to_vec(),
            fence: 9,
        })
    );
    let ids: Vec<_> = seen_for(&fake, "db").iter().map(|seen| seen.op_id).collect();
    assert!(ids.iter().all(|id| *id != 0), "lock operations are mutations: {ids:?}");

    let holder = engram_proto::LockHolder {
        owner: b"worker-2".to_vec(),
        fence: 10,
        lease_remaining_ms: 700,
    };
    answer(&fake, "db", Response::LockHolder { holder: Some(holder) });
    let expected = LockHolder {
        owner: b"worker-2".to_vec(),
        fence: 10,
        lease_remaining: Duration::from_millis(700),
    };
    assert_eq!(lock.holder().await.unwrap(), Some(expected));
    assert_eq!(seen_for(&fake, "db").last().unwrap().op_id, 0, "holder is a read");
}

#[tokio::test]
async fn a_blocking_call_gets_its_wait_on_top_of_the_call_timeout() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    answer(&fake, "hold-lock", Response::LockGranted { fence: 1, lease_ms: 1 });
    let call_timeout = Duration::from_millis(30);
    let lock = client.lock("hold-lock").timeout(call_timeout);
    let waiting = tokio::spawn(async move { lock.acquire("w", LEASE, Duration::from_millis(2_000)).await });
    let quick = client.lock("hold-lock").timeout(call_timeout);
    // The same call timeout without a wait gives up while the fake withholds answers.
    assert!(matches!(quick.holder().await, Err(Error::Timeout { .. })));
    tokio::time::sleep(call_timeout * 3).await;
    fake.release().await;
    assert_eq!(waiting.await.unwrap().unwrap().fence(), 1);
}

/// Waits last as long as a function may live: the longest wait is sent as asked, past
/// the longest call timeout, and its call ends only after the wait on top of the call
/// timeout. Tokio's paused clock makes the fifteen minutes virtual (and exact).
#[tokio::test(start_paused = true)]
async fn the_longest_wait_is_sent_and_its_call_lasts_the_wait_plus_the_call_timeout() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let call_timeout = Duration::from_millis(30);
    let longest = Duration::from_millis(WAIT_MS_MAX);
    assert!(longest > Duration::from_millis(CALL_TIMEOUT_MS_MAX));
    // The fake never answers "silent" keys, as a server holding a wait that never ends.
    let queue = client.queue("silent-jobs").timeout(call_timeout);
    let started = tokio::time::Instant::now();
    let popped = queue.pop_front(Some(longest)).await;
    assert!(matches!(popped, Err(Error::Timeout { .. })), "{popped:?}");
    assert!(
        started.elapsed() >= longest + call_timeout,
        "the call gave up after {:?}, before its wait and call timeout",
        started.elapsed()
    );
    assert_eq!(
        last_command(&fake, "silent-jobs"),
        Command::from(QueueCommand::Pop {
            key: b"silent-jobs".to_vec(),
            end: QueueEnd::Front,
            timeout_ms: WAIT_MS_MAX,
        })
    );
}

#[tokio::test]
async fn a_wait_that_runs_out_is_a_distinct_final_error() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    for key in ["taken", "empty", "closed", "unset", "unfilled"] {
        answer(&fake, key, error(ErrorCode::Timeout));
    }
    let refusal = client.lock("taken").acquire("w", LEASE, WAIT).await.unwrap_err();
    assert!(refusal.is_wait_timeout(), "{refusal}");
    assert!(!matches!(refusal, Error::Timeout { .. }));
    assert_eq!(seen_for(&fake, "taken").len(), 1, "a wait timeout is not retried");
    assert!(client.lock("taken").try_acquire("w", LEASE).await.unwrap().is_none());
    assert_eq!(
        seen_for(&fake, "taken").last().unwrap().command,
        Command::from(LockCommand::Acquire {
            key: b"taken".to_vec(),
            owner: b"w".to_vec(),
            lease_ms: 10_000,
            wait_ms: 0,
        })
    );
    let semaphore = client.semaphore("taken", 2);
    assert!(semaphore.try_acquire("w", 1, LEASE).await.unwrap().is_none());
    assert!(semaphore
        .acquire("w", 1, LEASE, WAIT)
        .await
        .unwrap_err()
        .is_wait_timeout());
    assert_eq!(client.queue("empty").pop_front(Some(WAIT)).await.unwrap(), None);
    assert!(client.latch("closed").wait(WAIT).await.unwrap_err().is_wait_timeout());
    assert!(client.future("unset").get(WAIT).await.unwrap_err().is_wait_timeout());
    assert!(client
        .barrier("unfilled", 3)
        .wait(WAIT)
        .await
        .unwrap_err()
        .is_wait_timeout());
    answer(&fake, "broken", error(ErrorCode::BarrierBroken));
    let broken = client.barrier("broken", 3).wait(WAIT).await.unwrap_err();
    assert!(broken.is_server(ErrorCode::BarrierBroken) && !broken.is_wait_timeout());
}

#[tokio::test]
async fn a_retried_blocking_call_keeps_its_operation_id() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    answer(
        &fake,
        "close-once-barrier",
        Response::BarrierPassed {
            generation: 4,
            arrival_index: 2,
        },
    );
    let passage = client.barrier("close-once-barrier", 3).wait(WAIT).await.unwrap();
    assert_eq!(
        passage,
        BarrierPassage {
            generation: 4,
            arrival_index: 2
        }
    );
    let attempts = seen_for(&fake, "close-once-barrier");
    assert_eq!(attempts.len(), 2);
    assert_ne!(attempts[0].op_id, 0);
    assert_eq!(attempts[0].op_id, attempts[1].op_id);
    assert_eq!(attempts[0].command, attempts[1].command);
    assert_eq!(
        attempts[0].command,
        Command::from(BarrierCommand::Wait {
            key: b"close-once-barrier".to_vec(),
            parties: 3,
            timeout_ms: 250,
        })
    );
}

#[tokio::test]
async fn semaphore_permits_carry_their_id_and_capacity() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let granted = Response::SemaphoreGranted {
        permit_id: 77,
        permits: 2,
        lease_ms: 10_000,
    };
    answer(&fake, "pool", granted);
    let semaphore = client.semaphore("pool", 5);
    let permit = semaphore.acquire("w", 2, LEASE, WAIT).await.unwrap();
    assert_eq!((permit.id(), permit.permits(), permit.lease()), (77, 2, LEASE));
    assert_eq!(
        last_command(&fake, "pool"),
        Command::from(SemaphoreCommand::Acquire {
            key: b"pool".to_vec(),
            owner: b"w".to_vec(),
            capacity: 5,
            permits: 2,
            lease_ms: 10_000,
            wait_ms: 250,
        })
    );
    answer(&fake, "pool", Response::Released);
    permit.release().await.unwrap();
    assert_eq!(
        last_command(&fake, "pool"),
        Command::from(SemaphoreCommand::Release {
            key: b"pool".to_vec(),
            permit_id: 77
        })
    );
    let available = Response::SemaphoreAvailable {
        available: 3,
        capacity: 5,
    };
    answer(&fake, "pool", available);
    assert_eq!(semaphore.available().await.unwrap(), 3);
    answer(&fake, "pool", error(ErrorCode::NotHolder));
    let refusal = semaphore.release_with(77).await.unwrap_err();
    assert!(refusal.is_server(ErrorCode::NotHolder), "{refusal}");
}

#[tokio::test]
async fn latches_futures_maps_and_queues_map_their_responses() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;

    answer(&fake, "ready", Response::LatchSet { set: false, count: 2 });
    assert!(!client.latch("ready").try_set_count(3).await.unwrap());
    answer(&fake, "ready", Response::LatchCount { count: 1 });
    assert_eq!(client.latch("ready").count_down().await.unwrap(), 1);
    answer(&fake, "ready", Response::LatchOpen);
    client.latch("ready").wait(WAIT).await.unwrap();

    answer(&fake, "result", Response::Missing);
    assert_eq!(client.future("result").try_get().await.unwrap(), None);
    let value = Response::Value {
        value: b"42".to_vec(),
        version: 3,
    };
    answer(&fake, "result", value);
    assert_eq!(client.future("result").get(Duration::ZERO).await.unwrap(), b"42");
    let last = seen_for(&fake, "result").pop().unwrap();
    assert_eq!(
        last.command,
        Command::from(FutureCommand::Get {
            key: b"result".to_vec(),
            timeout_ms: 1
        }),
        "a zero get still waits, try_get is the non-waiting form"
    );
    answer(&fake, "result", error(ErrorCode::AlreadyCompleted));
    let refusal = client.future("result").complete("43").await.unwrap_err();
    assert!(refusal.is_server(ErrorCode::AlreadyCompleted));

    let entries = vec![MapEntry {
        field: b"a".to_vec(),
        value: b"1".to_vec(),
    }];
    answer(&fake, "h", Response::MapEntries(entries));
    assert_eq!(
        client.map("h").get_all().await.unwrap(),
        vec![(b"a".to_vec(), b"1".to_vec())]
    );
    answer(&fake, "h", Response::Counter { value: -4 });
    assert_eq!(client.map("h").incr("a", -5).await.unwrap(), -4);
    answer(&fake, "h", Response::Missing);
    assert_eq!(client.map("h").get("zz").await.unwrap(), None);
    answer(&fake, "h", Response::Deleted { existed: true });
    assert!(client.map("h").del("a").await.unwrap());

    answer(&fake, "q", Response::QueueLength { length: 4 });
    assert_eq!(client.queue("q").push_front("x").await.unwrap(), 4);
    assert_eq!(
        last_command(&fake, "q"),
        Command::from(QueueCommand::Push {
            key: b"q".to_vec(),
            value: b"x".to_vec(),
            end: QueueEnd::Front
        })
    );
    answer(&fake, "q", Response::Missing);
    assert_eq!(client.queue("q").pop_back(None).await.unwrap(), None);
    assert_eq!(
        last_command(&fake, "q"),
        Command::from(QueueCommand::Pop {
            key: b"q".to_vec(),
            end: QueueEnd::Back,
            timeout_ms: 0
        })
    );
    let value = Response::Value {
        value: b"y".to_vec(),
        version: 8,
    };
    answer(&fake, "q", value);
    assert_eq!(
        client.queue("q").pop_front(Some(WAIT)).await.unwrap(),
        Some(b"y".to_vec())
    );
}

#[tokio::test]
async fn bad_owners_waits_and_leases_are_refused_before_sending() {
    let fake = FakeServer::front().await;
    let client = front_client(&fake).await;
    let lock = client.lock("local");
    assert!(matches!(
        lock.acquire("", LEASE, WAIT).await,
        Err(Error::InvalidOwner { length: 0 })
    ));
    let too_long = Duration::from_millis(WAIT_MS_MAX + 1);
    assert!(matches!(
        lock.acquire("w", LEASE, too_long).await,
        Err(Error::WaitTooLong { .. })
    ));
    assert!(matches!(
        lock.acquire("w", Duration::MAX, WAIT).await,
        Err(Error::LeaseTooLong { .. })
    ));
    assert!(matches!(
        client.queue("local").pop_front(Some(too_long)).await,
        Err(Error::WaitTooLong { .. })
    ));
    let raw = Command::from(LatchCommand::Wait {
        key: b"local".to_vec(),
        timeout_ms: WAIT_MS_MAX + 1,
    });
    assert!(matches!(
        client.call(Some(b"local"), raw, false).await,
        Err(Error::WaitTooLong { .. })
    ));
    assert!(seen_for(&fake, "local").is_empty());
}

#[test]
fn the_blocking_facade_drives_the_coordination_handles() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeServer::front());
    let client = crate::blocking::Client::connect(Client::builder(&fake.address).direct(false)).unwrap();
    answer(
        &fake,
        "db",
        Response::LockGranted {
            fence: 5,
            lease_ms: 10_000,
        },
    );
    let guard = client.lock("db").acquire("w", LEASE, WAIT).unwrap();
    assert_eq!(guard.fence(), 5);
    answer(&fake, "db", Response::Released);
    guard.release().unwrap();
    answer(&fake, "q", Response::QueueLength { length: 1 });
    assert_eq!(client.queue("q").push_back("v").unwrap(), 1);
    let passed = Response::BarrierPassed {
        generation: 0,
        arrival_index: 0,
    };
    answer(&fake, "phase", passed);
    assert!(client.barrier("phase", 1).wait(WAIT).unwrap().is_leader());
    answer(&fake, "pool", error(ErrorCode::Timeout));
    assert!(client
        .semaphore("pool", 1)
        .try_acquire("w", 1, LEASE)
        .unwrap()
        .is_none());
}
