//! Stress tests of the sleep and wake-up paths that Engram's glommio patch changes
//! (vendor/README.md): the executor parks as soon as its queues run dry and goes round
//! instead when a preemption is signalled before they run, the reactor stages the main
//! ring's entries and submits them with its sleep, keeps a pending latency timer
//! instead of re-arming it, and orders its sleep flag against remote wakers with two
//! fences instead of a membarrier. A mistake in any of these loses a wake-up: the
//! executor sleeps while a message, an answer, a timer or a socket waits for it.
//!
//! Each test makes thousands of round trips through the paths engramd uses (the shard
//! mesh's shared channels, oneshot answers woken from another thread, glommio timers,
//! TCP sockets), timed so that wake-ups land at every point of the waiting executor's
//! way into sleep, and fails through a watchdog if a round never completes. The
//! executors' preemption timer is longer than the watchdog where the test allows: a
//! parked reactor keeps that timer pending, and at its default 100 ms it would wake an
//! executor that missed a wake-up, turning the loss into a stall that no bound could
//! tell from a loaded machine.

mod common;

use common::panic_text;
use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use engram_server::runtime::SHARD_IO_MEMORY_BYTES;
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{LocalExecutorBuilder, Placement};

/// Round trips of a test whose wake-ups mostly find the other side asleep.
const ROUNDS: u64 = 10_000;
/// Round trips of a test whose answers race the asker into sleep: each lands in the
/// narrow windows where an ordering mistake loses it only now and then.
const RACING_ROUNDS: u64 = 20_000;
/// Round trips with a preemption timer that fires within most of them.
const PREEMPTED_ROUNDS: u64 = 1_000;
/// Hang detector, not a timing criterion: a test whose rounds have not all completed by
/// then has lost a wake-up (a healthy run takes a small fraction of it).
const WATCHDOG_SECONDS: u64 = 30;
/// Longer than the watchdog, so that no preemption timer rescues a lost wake-up.
const PREEMPT_TIMER_SECONDS: u64 = 3_600;
/// A preemption timer that fires within most round trips.
const SHORT_PREEMPT_TIMER_MICROS: u64 = 10;
/// The time slice of a CPU-bound task that shares its executor with a connection.
const BUSY_PREEMPT_TIMER_MICROS: u64 = 100;
/// An answerer that spins this long before parking is awake whenever a request comes
/// (a round trip takes far less), so its answers race the asker's way into sleep.
const ALWAYS_AWAKE_SPIN_MICROS: u64 = 100_000;
/// engramd's `--spin-us` for the spinning variants.
const SPIN_BEFORE_PARK_MICROS: u64 = 20;
/// Longer than an executor's way from its last look at its queues into the kernel.
const RACE_WINDOW_NANOS_MAX: u64 = 8_000;
/// The widest pause before an answer: wider than a reactor's way from its last look at
/// its queues into the kernel, and than `SPIN_BEFORE_PARK_MICROS`.
const ANSWER_DELAY_NANOS_MAX: u64 = 40_000;
/// Depth of the mesh's channels (a test has one message in flight at a time).
const MESH_CHANNEL_DEPTH: usize = 4;

/// How an executor waits once its queues are empty.
#[derive(Clone, Copy)]
enum Idle {
    /// Parks at once: engramd's default.
    Park,
    /// Spins this many microseconds first, then parks: engramd's `--spin-us`.
    SpinMicros(u64),
}

/// A test's parts, one thread each; each returns once its side of the rounds is done.
type Part = Box<dyn FnOnce() + Send>;

/// Runs `future` on an executor on this thread, configured as a shard is.
fn on_executor<F: Future<Output = ()>>(name: &str, idle: Idle, future: impl FnOnce() -> F) {
    on_preempted_executor(name, idle, Duration::from_secs(PREEMPT_TIMER_SECONDS), future);
}

/// `on_executor` with the given preemption timer.
fn on_preempted_executor<F: Future<Output = ()>>(
    name: &str,
    idle: Idle,
    preempt: Duration,
    future: impl FnOnce() -> F,
) {
    let mut builder = LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(SHARD_IO_MEMORY_BYTES)
        .preempt_timer(preempt);
    if let Idle::SpinMicros(micros) = idle {
        builder = builder.spin_before_park(Duration::from_micros(micros));
    }
    let executor = builder.make().unwrap_or_else(|error| {
        panic!("executor {name} did not start (io_uring and a memlock limit are needed): {error}")
    });
    executor.run(future());
}

/// Runs the parts, each on a thread of its own, until all have returned. Fails the test
/// when a part panics, and when `completed` has not reached `rounds` after
/// `WATCHDOG_SECONDS`: a part waits for a wake-up that never came. A stuck part cannot
/// be stopped from outside; it ends with the test's process (nextest runs each test in
/// a process of its own).
fn run_bounded(test: &str, rounds: u64, completed: &AtomicU64, parts: Vec<(&'static str, Part)>) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(WATCHDOG_SECONDS);
    let (done, finished) = mpsc::channel();
    let count = parts.len();
    for (name, part) in parts {
        let done = done.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(part));
                let _ = done.send((name, outcome.err().map(|panic| panic_text(&*panic))));
            })
            .expect("spawn a test thread");
    }
    for _ in 0..count {
        let wait = deadline.saturating_duration_since(Instant::now());
        match finished.recv_timeout(wait) {
            Ok((_, None)) => {}
            Ok((name, Some(panic))) => panic!("{test}: {name} failed: {panic}"),
            Err(_) => panic!(
                "{test}: lost wake-up: {} of {rounds} rounds completed in {WATCHDOG_SECONDS} s, and a healthy run \
                 takes a small fraction of that; a side waits for a message, an answer, a timer or a socket that is \
                 ready, and nothing will wake it",
                completed.load(Relaxed)
            ),
        }
    }
    assert_eq!(completed.load(Relaxed), rounds, "{test}: every round completes");
    eprintln!("{test}: {rounds} rounds in {:?}", started.elapsed());
}

/// The pause before answering round `round`: none for a quarter of the rounds (the
/// answer comes as fast as it can), up to `RACE_WINDOW_NANOS_MAX` for half, up to
/// `ANSWER_DELAY_NANOS_MAX` for the rest (an asker at the end of its spin, or asleep).
/// Across the rounds, and with the scheduler's own jitter, answers land at every point
/// of the asker's way from its last look at its queues into the kernel.
fn answer_delay(round: u64) -> Duration {
    // A multiplicative hash: successive rounds get unrelated delays.
    let spread = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let nanos = match spread % 4 {
        0 => 0,
        1 => (spread >> 2) % ANSWER_DELAY_NANOS_MAX,
        _ => (spread >> 2) % RACE_WINDOW_NANOS_MAX,
    };
    Duration::from_nanos(nanos)
}

/// Busy-waits: a sleep would hand the wait to the kernel's timers and never be as short.
fn pause(delay: Duration) {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// What the mesh carries: a round's number, and where its answer goes (a oneshot, as a
/// forwarded request's answer in engramd, or back through the mesh).
struct Message {
    round: u64,
    answer: Option<oneshot::Sender<u64>>,
}

/// How a mesh test's rounds go.
#[derive(Clone, Copy)]
struct Rounds {
    count: u64,
    /// Answers come back over a oneshot woken from the answering thread (engramd's
    /// forwarded requests) rather than through the mesh.
    by_oneshot: bool,
    /// Every other answer first waits for a glommio timer, and the asker waits for
    /// its answers with a (distant) timer armed, as engramd's shards always have one.
    timers: bool,
}

/// One side of a mesh test.
async fn mesh_peer(mesh: MeshBuilder<Message, Full>, asks: bool, rounds: Rounds, completed: Arc<AtomicU64>) {
    let (senders, mut receivers) = mesh.join().await.expect("join the mesh");
    let peer = 1 - senders.peer_id();
    let (_, receiver) = receivers.streams().pop().expect("a stream from the peer");
    if asks {
        for round in 0..rounds.count {
            let (answer, answered) = match rounds.by_oneshot {
                true => {
                    let (sender, receiver) = oneshot::channel();
                    (Some(sender), Some(receiver))
                }
                false => (None, None),
            };
            if senders.send_to(peer, Message { round, answer }).await.is_err() {
                panic!("round {round}: the answering executor is gone");
            }
            let back = async {
                match answered {
                    // Awaited in a task of its own, as engramd's forwarding connection does.
                    Some(answered) => glommio::spawn_local(answered).await.ok(),
                    None => receiver.recv().await.map(|message| message.round),
                }
            };
            let back = match rounds.timers {
                true => {
                    let distant = glommio::timer::sleep(Duration::from_secs(PREEMPT_TIMER_SECONDS));
                    match select(pin!(back), pin!(distant)).await {
                        Either::Left((back, _)) => back,
                        Either::Right(_) => panic!("round {round}: no answer for an hour"),
                    }
                }
                false => back.await,
            };
            assert_eq!(back, Some(round), "round {round}: the answer is that round's");
            completed.fetch_add(1, Relaxed);
        }
    } else {
        for expected in 0..rounds.count {
            let Message { round, answer } = receiver.recv().await.expect("the asking executor is there");
            assert_eq!(round, expected, "requests arrive in order");
            if rounds.timers && round.is_multiple_of(2) {
                // Only the latency ring's timeout wakes this executor for that timer.
                glommio::timer::sleep(answer_delay(round)).await;
            } else {
                pause(answer_delay(round));
            }
            match answer {
                Some(answer) => answer.send(round).expect("the asking executor awaits its answer"),
                None => {
                    if senders.send_to(peer, Message { round, answer: None }).await.is_err() {
                        panic!("round {round}: the asking executor is gone");
                    }
                }
            }
        }
    }
}

/// Two executors make `rounds.count` round trips through a mesh like engramd's shards'.
fn mesh_test(test: &str, asker: Idle, answerer: Idle, rounds: Rounds) {
    let completed = Arc::new(AtomicU64::new(0));
    let mesh = MeshBuilder::full(2, MESH_CHANNEL_DEPTH);
    let asking: Part = {
        let (mesh, completed) = (mesh.clone(), completed.clone());
        Box::new(move || on_executor("asker", asker, || mesh_peer(mesh, true, rounds, completed)))
    };
    let answering: Part = {
        let completed = completed.clone();
        Box::new(move || on_executor("answerer", answerer, || mesh_peer(mesh, false, rounds, completed)))
    };
    let parts = vec![("asker", asking), ("answerer", answering)];
    run_bounded(test, rounds.count, &completed, parts);
}

const THROUGH_THE_MESH: Rounds = Rounds {
    count: ROUNDS,
    by_oneshot: false,
    timers: false,
};
const BY_ONESHOT: Rounds = Rounds {
    count: ROUNDS,
    by_oneshot: true,
    timers: false,
};
const RACING_THROUGH_THE_MESH: Rounds = Rounds {
    count: RACING_ROUNDS,
    ..THROUGH_THE_MESH
};
const RACING_BY_ONESHOT: Rounds = Rounds {
    count: RACING_ROUNDS,
    ..BY_ONESHOT
};

#[test]
fn mesh_messages_wake_executors_that_park_at_once() {
    let test = "mesh_messages_wake_executors_that_park_at_once";
    mesh_test(test, Idle::Park, Idle::Park, THROUGH_THE_MESH);
}

#[test]
fn mesh_answers_racing_an_executor_into_sleep_are_not_lost() {
    let test = "mesh_answers_racing_an_executor_into_sleep_are_not_lost";
    mesh_test(
        test,
        Idle::Park,
        Idle::SpinMicros(ALWAYS_AWAKE_SPIN_MICROS),
        RACING_THROUGH_THE_MESH,
    );
}

#[test]
fn oneshot_answers_racing_an_executor_into_sleep_are_not_lost() {
    let test = "oneshot_answers_racing_an_executor_into_sleep_are_not_lost";
    mesh_test(
        test,
        Idle::Park,
        Idle::SpinMicros(ALWAYS_AWAKE_SPIN_MICROS),
        RACING_BY_ONESHOT,
    );
}

#[test]
fn answers_around_the_end_of_a_spin_before_park_are_not_lost() {
    let test = "answers_around_the_end_of_a_spin_before_park_are_not_lost";
    let spin = Idle::SpinMicros(SPIN_BEFORE_PARK_MICROS);
    mesh_test(
        test,
        spin,
        Idle::SpinMicros(ALWAYS_AWAKE_SPIN_MICROS),
        RACING_BY_ONESHOT,
    );
}

#[test]
fn timers_between_remote_wake_ups_all_fire() {
    let test = "timers_between_remote_wake_ups_all_fire";
    let rounds = Rounds {
        timers: true,
        ..BY_ONESHOT
    };
    mesh_test(test, Idle::Park, Idle::Park, rounds);
}

/// An executor asks a thread outside glommio, which answers each request at once (it
/// never sleeps while a request may come) and so wakes the asking task through its
/// waker: the foreign-waker path, with no executor on the waking side.
fn plain_thread_test(test: &str, rounds: u64, preempt: Duration) {
    let completed = Arc::new(AtomicU64::new(0));
    let (requests, incoming) = mpsc::channel::<(u64, oneshot::Sender<u64>)>();
    let asking: Part = {
        let completed = completed.clone();
        Box::new(move || {
            on_preempted_executor("asker", Idle::Park, preempt, || async move {
                for round in 0..rounds {
                    let (answer, answered) = oneshot::channel();
                    requests.send((round, answer)).expect("the answering thread is there");
                    assert_eq!(
                        answered.await.ok(),
                        Some(round),
                        "round {round}: the answer is that round's"
                    );
                    completed.fetch_add(1, Relaxed);
                }
            })
        })
    };
    let answering: Part = Box::new(move || {
        for expected in 0..rounds {
            let (round, answer) = loop {
                match incoming.try_recv() {
                    Ok(request) => break request,
                    Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(mpsc::TryRecvError::Disconnected) => panic!("the asking executor is gone"),
                }
            };
            assert_eq!(round, expected, "requests arrive in order");
            pause(answer_delay(round));
            answer.send(round).expect("the asking executor awaits its answer");
        }
    });
    run_bounded(
        test,
        rounds,
        &completed,
        vec![("asker", asking), ("answerer", answering)],
    );
}

#[test]
fn wakers_woken_by_a_plain_thread_are_not_lost() {
    let test = "wakers_woken_by_a_plain_thread_are_not_lost";
    plain_thread_test(test, RACING_ROUNDS, Duration::from_secs(PREEMPT_TIMER_SECONDS));
}

/// With a preemption timer shorter than a round trip, the timer often fires between
/// the moment a woken executor arms it and the moment it runs its task queues. Upstream
/// then read "nothing ran" and parked with the woken task still queued, and a park has
/// nothing left to wake it: the patch makes the loop go round instead.
#[test]
fn a_preemption_before_the_woken_task_runs_does_not_park_it() {
    let test = "a_preemption_before_the_woken_task_runs_does_not_park_it";
    plain_thread_test(
        test,
        PREEMPTED_ROUNDS,
        Duration::from_micros(SHORT_PREEMPT_TIMER_MICROS),
    );
}

/// How a socket test's server runs.
#[derive(Clone, Copy)]
struct Server {
    idle: Idle,
    /// A CPU-bound task runs beside the connection until the last round, so that the
    /// executor never parks: every read is submitted by a pass that does not sleep.
    busy: bool,
}

/// A client on a plain thread makes requests over TCP to an executor, as engramd's
/// clients do: each request arrives while the executor answers the previous one or
/// goes to sleep with its next read staged, the path the patch made one system call.
fn socket_test(test: &str, server: Server) {
    let (rounds, preempt) = match server.busy {
        true => (PREEMPTED_ROUNDS, Duration::from_micros(BUSY_PREEMPT_TIMER_MICROS)),
        false => (ROUNDS, Duration::from_secs(PREEMPT_TIMER_SECONDS)),
    };
    let completed = Arc::new(AtomicU64::new(0));
    let (address_sender, address) = mpsc::channel();
    let serving: Part = Box::new(move || {
        on_preempted_executor("server", server.idle, preempt, || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            address_sender
                .send(listener.local_addr().expect("address"))
                .expect("test is there");
            let mut stream = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let served = Rc::new(Cell::new(false));
            let busy = server.busy.then(|| glommio::spawn_local(busy_until(served.clone())));
            let mut request = [0; 8];
            for expected in 0..rounds {
                stream.read_exact(&mut request).await.expect("read a request");
                assert_eq!(u64::from_le_bytes(request), expected, "requests arrive in order");
                stream.write_all(&request).await.expect("answer");
            }
            served.set(true);
            if let Some(busy) = busy {
                busy.await;
            }
        })
    });
    let asking: Part = {
        let completed = completed.clone();
        Box::new(move || {
            let address = address.recv().expect("the server's address");
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut answer = [0; 8];
            for round in 0..rounds {
                pause(answer_delay(round));
                stream.write_all(&round.to_le_bytes()).expect("send a request");
                stream.read_exact(&mut answer).expect("read the answer");
                assert_eq!(
                    u64::from_le_bytes(answer),
                    round,
                    "round {round}: the answer is that round's"
                );
                completed.fetch_add(1, Relaxed);
            }
        })
    };
    run_bounded(test, rounds, &completed, vec![("server", serving), ("client", asking)]);
}

/// Computes until `done`, yielding only when the preemption timer says so.
async fn busy_until(done: Rc<Cell<bool>>) {
    while !done.get() {
        std::hint::spin_loop();
        glommio::yield_if_needed().await;
    }
}

#[test]
fn socket_requests_wake_an_executor_that_parks_at_once() {
    let test = "socket_requests_wake_an_executor_that_parks_at_once";
    socket_test(
        test,
        Server {
            idle: Idle::Park,
            busy: false,
        },
    );
}

#[test]
fn socket_requests_wake_an_executor_that_spins_before_it_parks() {
    let test = "socket_requests_wake_an_executor_that_spins_before_it_parks";
    socket_test(
        test,
        Server {
            idle: Idle::SpinMicros(SPIN_BEFORE_PARK_MICROS),
            busy: false,
        },
    );
}

#[test]
fn socket_requests_reach_an_executor_that_never_parks() {
    let test = "socket_requests_reach_an_executor_that_never_parks";
    socket_test(
        test,
        Server {
            idle: Idle::Park,
            busy: true,
        },
    );
}
