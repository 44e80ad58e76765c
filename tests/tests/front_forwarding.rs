//! One node's front port reaches every key of a cluster: a request for a slot another
//! node owns is forwarded to the owner shard over a link that speaks for the client (its
//! client id and namespace), and the owner's answer comes back. Smart clients still go
//! straight to shards; these tests use only the front port of the first node.
//!
//! What must hold: a front-only client reads and writes keys of every node, blocking
//! commands park at the owner and complete through the forward, no `Moved` reaches a
//! caller (raw requests, which nothing retries, check that), a retried operation id
//! gets its first answer whichever door it comes through, and an owner that is down or
//! silent gets the request a `TryAgain` naming its address instead of holding it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use engram_client::Client;
use engram_proto::{BytesCommand, CounterCommand, DataCommand};
use engram_proto::{Command, ErrorCode, Request, Response, SlotMap};
use engram_tests::cluster::{cluster_cli, start_node, wait_for_members, MEMBERSHIP_LIMIT};
use engram_tests::control::ControlPlane;
use engram_tests::processes::Scratch;
use engram_tests::raw::{hello, RawConnection};
use engram_tests::routing::{fetch_slot_map, key_on_shard, owner_address, owner_of};
use engram_tests::server::{next_loopback, stop_process};
use engram_tests::{run_async, EngramServer};

const NODES: usize = 3;
const KEYS: usize = 300;
const LARGE_VALUE_BYTES: usize = 2 * 1024 * 1024;
/// Longer than the control plane's default, so a node these tests stop or kill is not
/// declared dead (its slots lost) while they still ask the front port about it.
const LIVENESS_TIMEOUT_MS: &str = "60000";

struct Cluster {
    _control: ControlPlane,
    nodes: Vec<EngramServer>,
    map: SlotMap,
    _scratch: Scratch,
}

/// A control plane and three one-core nodes with the slots spread over them, and the
/// first node (the one the tests talk to) routing with the final map.
async fn spread_cluster(name: &str) -> Cluster {
    let scratch = Scratch::new(name);
    let control = ControlPlane::start_with(
        next_loopback(),
        scratch.path().join("control"),
        &["--liveness-timeout-ms", LIVENESS_TIMEOUT_MS],
    );
    let nodes: Vec<EngramServer> = (0..NODES).map(|_| start_node(&control)).collect();
    wait_for_members(&control, NODES, MEMBERSHIP_LIMIT).await;
    cluster_cli(&control, &["rebalance"]).await;
    let map = control.status().await.map;
    wait_for_epoch(nodes[0].front(), map.epoch).await;
    Cluster {
        _control: control,
        nodes,
        map,
        _scratch: scratch,
    }
}

/// Waits until the node behind `front` routes with map `epoch` (the control plane
/// broadcasts it; a heartbeat brings it at the latest).
async fn wait_for_epoch(front: SocketAddr, epoch: u64) {
    for _ in 0..200 {
        let seen = tokio::task::spawn_blocking(move || fetch_slot_map(front).epoch)
            .await
            .expect("map fetch");
        if seen >= epoch {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{front} never routed with map epoch {epoch}");
}

/// A client that sends everything to the first node's front port.
async fn front_only(cluster: &Cluster) -> Client {
    cluster.nodes[0].front_only_client(Duration::from_secs(15)).await
}

fn node_of(map: &SlotMap, key: &str) -> u64 {
    map.shards[owner_of(map, b"default", key.as_bytes())].node_id
}

/// A key in namespace "default" on the first shard of node `node_id`.
fn key_on_node(map: &SlotMap, node_id: u64, prefix: &str) -> String {
    let shard = map
        .shards
        .iter()
        .position(|shard| shard.node_id == node_id)
        .expect("the node has a shard in the map");
    key_on_shard(map, b"default", shard, prefix)
}

/// Runs blocking raw-protocol work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("raw work")
}

#[test]
fn one_front_port_reaches_every_key_of_the_cluster() {
    run_async(Duration::from_secs(150), async {
        let cluster = spread_cluster("front-forwarding-reach").await;
        let map = cluster.map.clone();
        let keys: Vec<String> = (0..KEYS).map(|index| format!("front-{index}")).collect();
        let mut per_node = BTreeMap::new();
        for key in &keys {
            *per_node.entry(node_of(&map, key)).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), NODES, "every node owns some of the keys: {per_node:?}");

        let client = front_only(&cluster).await;
        for (index, key) in keys.iter().enumerate() {
            client
                .bytes(key.clone())
                .set(format!("value-{index}"))
                .await
                .expect("set");
            let stored = client.bytes(key.clone()).get().await.expect("get").expect("present");
            assert_eq!(stored.value, format!("value-{index}").into_bytes(), "{key}");
            let counter = client.counter(format!("{key}-counter"));
            assert_eq!(counter.add(index as i64).await.expect("add"), index as i64);
            assert_eq!(counter.add(1).await.expect("add"), index as i64 + 1);
        }

        // Nothing retries a raw request: a Moved would show here.
        let front = cluster.nodes[0].front();
        let raw_keys = keys.clone();
        let answers = blocking(move || {
            let mut raw = RawConnection::handshaken(front, 0x00F0_0001);
            raw_keys
                .iter()
                .map(|key| {
                    raw.command(Command::from(BytesCommand::Get {
                        key: key.clone().into_bytes(),
                    }))
                })
                .collect::<Vec<_>>()
        })
        .await;
        for (index, (key, answer)) in keys.iter().zip(answers).enumerate() {
            match answer {
                Response::Value { value, .. } => assert_eq!(value, format!("value-{index}").into_bytes()),
                other => panic!("{key} answered {other:?} through the front port"),
            }
        }

        for node in &cluster.nodes {
            locks_and_queues_work_through_the_front(&client, &map, node.node_id()).await;
            // Larger than a link's read chunk and its request queue, both ways.
            let large = client.bytes(key_on_node(&map, node.node_id(), "front-large"));
            let value: Vec<u8> = (0..LARGE_VALUE_BYTES).map(|index| (index % 251) as u8).collect();
            large.set(value.clone()).await.expect("set a large value");
            let stored = large.get().await.expect("get a large value").expect("present");
            assert!(
                stored.value == value,
                "node {}: the large value came back changed",
                node.node_id()
            );
        }
    });
}

/// A lock acquire that must wait, and a pop that must wait, both parked at the owner of
/// a key on `node_id` and completed through the forward.
async fn locks_and_queues_work_through_the_front(client: &Client, map: &SlotMap, node_id: u64) {
    let lock = client.lock(key_on_node(map, node_id, "front-lock"));
    let first = lock
        .acquire("first", Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("free lock");
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move {
            lock.acquire("second", Duration::from_secs(30), Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the second acquire did not wait for the holder");
    let first_fence = first.fence();
    first.release().await.expect("release");
    let second = waiter.await.expect("waiter task").expect("granted once released");
    assert!(second.fence() > first_fence, "fences grow");
    second.release().await.expect("release");

    let queue = client.queue(key_on_node(map, node_id, "front-queue"));
    let popper = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.pop_front(Some(Duration::from_secs(10))).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    queue.push_back("item").await.expect("push");
    let popped = popper.await.expect("pop task").expect("pop");
    assert_eq!(popped.as_deref(), Some(&b"item"[..]), "node {node_id}");
}

fn counter_add(op_id: u64, key: &str, delta: i64) -> Request {
    Request {
        op_id,
        completed_below_op_id: op_id,
        command: Command::from(CounterCommand::Add {
            key: key.as_bytes().to_vec(),
            delta,
        }),
    }
}

fn counter_value(answer: Response) -> i64 {
    match answer {
        Response::Counter { value } => value,
        other => panic!("a counter answer, not {other:?}"),
    }
}

#[test]
fn a_retried_operation_through_the_front_gets_its_first_answer() {
    run_async(Duration::from_secs(150), async {
        let cluster = spread_cluster("front-forwarding-once").await;
        let map = cluster.map.clone();
        let remote = key_on_node(&map, cluster.nodes[2].node_id(), "front-once");
        let front = cluster.nodes[0].front();
        let owner = owner_address(&map, b"default", remote.as_bytes());
        let client_id = 0x00F0_0002;
        let key = remote.clone();
        let (first, retried, direct, next, elsewhere) = blocking(move || {
            let add = counter_add(1, &key, 5);
            let first = counter_value(RawConnection::handshaken(front, client_id).call(&add));
            // The answer was lost with its connection; the client resends the same op id.
            let retried = counter_value(RawConnection::handshaken(front, client_id).call(&add));
            // A smart client's retry goes straight to the owner: the same operation.
            let direct = counter_value(RawConnection::handshaken(owner, client_id).call(&add));
            let next = counter_value(RawConnection::handshaken(front, client_id).call(&counter_add(2, &key, 5)));
            let mut other_namespace = RawConnection::connect(front);
            other_namespace.handshake(&hello(client_id, b"other", b""));
            let elsewhere = counter_value(other_namespace.command(Command::from(CounterCommand::Get {
                key: key.as_bytes().to_vec(),
            })));
            (first, retried, direct, next, elsewhere)
        })
        .await;
        assert_eq!((first, retried, direct), (5, 5, 5), "the retry was applied again");
        assert_eq!(next, 10, "a new operation id applies");
        assert_eq!(elsewhere, 0, "the forward kept the client's namespace");
        // The key reached the owner once prefixed: a direct client sees the same counter.
        let smart = cluster.nodes[0].client().await;
        assert_eq!(smart.counter(remote).get().await.expect("direct read"), 10);
    });
}

fn expect_try_again_naming(answer: Response, address: &str) -> String {
    match answer {
        Response::Error(reply) if ErrorCode::from_u16(reply.code) == Some(ErrorCode::TryAgain) => {
            assert!(reply.message.contains(address), "{}", reply.message);
            reply.message
        }
        other => panic!("TryAgain naming {address}, not {other:?}"),
    }
}

/// Sends `commands` one after the other on `raw`, off the async threads; gives the
/// connection back with the answers.
async fn ask(mut raw: RawConnection, commands: Vec<Command>) -> (RawConnection, Vec<Response>) {
    blocking(move || {
        let answers = commands.into_iter().map(|command| raw.command(command)).collect();
        (raw, answers)
    })
    .await
}

#[test]
fn a_dead_or_silent_owner_gets_the_request_a_try_again_naming_it() {
    run_async(Duration::from_secs(150), async {
        let mut cluster = spread_cluster("front-forwarding-down").await;
        let map = cluster.map.clone();
        let on_node = |index: usize, prefix: &str| key_on_node(&map, cluster.nodes[index].node_id(), prefix);
        let (local_key, dead_key, silent_key) = (
            on_node(0, "front-local"),
            on_node(1, "front-dead"),
            on_node(2, "front-silent"),
        );
        let address = |key: &str| owner_address(&map, b"default", key.as_bytes()).to_string();
        let (dead_address, silent_address) = (address(&dead_key), address(&silent_key));
        let get = |key: &str| {
            Command::Data(DataCommand::Counter(CounterCommand::Get {
                key: key.as_bytes().to_vec(),
            }))
        };
        let front = cluster.nodes[0].front();
        let raw = blocking(move || RawConnection::handshaken(front, 0x00F0_0003)).await;

        // Both links open and work.
        let (raw, answers) = ask(raw, vec![get(&dead_key), get(&silent_key)]).await;
        for answer in answers {
            assert!(matches!(answer, Response::Counter { value: 0 }), "{answer:?}");
        }

        cluster.nodes[1].kill_now();
        // The open link breaks; the next one is refused at once. Both say who.
        let (raw, answers) = ask(raw, vec![get(&dead_key), get(&dead_key)]).await;
        for answer in answers {
            expect_try_again_naming(answer, &dead_address);
        }

        stop_process(cluster.nodes[2].pid());
        // The open link waits out the answer's bound, a new one the handshake's.
        let (raw, answers) = ask(raw, vec![get(&silent_key), get(&silent_key)]).await;
        for answer in answers {
            let message = expect_try_again_naming(answer, &silent_address);
            assert!(message.contains("did not answer"), "{message}");
        }

        // The front node's own keys never depended on either.
        let (_, answers) = ask(raw, vec![get(&local_key)]).await;
        assert!(matches!(answers[..], [Response::Counter { value: 0 }]), "{answers:?}");
        cluster.nodes[2].kill_now();
    });
}
