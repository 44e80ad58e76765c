//! Nodes run inside the test's process with `node::start`: on listeners the test bound
//! on ephemeral loopback ports, stopped by a `Shutdown` the test triggers. They serve
//! the Rust client like engramd does, stop cleanly with their ports freed, and several
//! share a process without sharing data, metrics or their stop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use engram_client::blocking;
use engram_server::config::NodeSettings;
use engram_server::error::ServerError;
use engram_server::node::{self, NodeListeners, RunningNode, Shutdown};

/// Calls that must answer; generous, for a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Only there so that a node that never frees its port fails the test instead of hanging.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// A front listener and `shards` shard listeners on ephemeral loopback ports, and a
/// metrics listener when `metrics` is set.
fn loopback_listeners(shards: usize, metrics: bool) -> NodeListeners {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    NodeListeners {
        front: bind(),
        shards: (0..shards).map(|_| bind()).collect(),
        metrics: metrics.then(bind),
        resp: None,
    }
}

fn client(node: &RunningNode) -> blocking::Client {
    let builder = engram_client::Client::builder(node.front_address().to_string()).timeout(CALL_TIMEOUT);
    blocking::Client::connect(builder).expect("client connects to the in-process node")
}

/// Every port the node listens on.
fn ports(node: &RunningNode) -> Vec<SocketAddr> {
    let shards = node
        .shard_addresses()
        .iter()
        .map(|address| address.parse().expect("a shard address"));
    std::iter::once(node.front_address())
        .chain(shards)
        .chain(node.metrics_address())
        .collect()
}

/// Nothing listens at `address` any more: a connection is refused and the port binds.
fn assert_released(address: SocketAddr) {
    let refused = TcpStream::connect(address)
        .map(drop)
        .expect_err(&format!("a stopped node's port {address} refuses"));
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{address}: {refused}"
    );
    TcpListener::bind(address).unwrap_or_else(|error| panic!("{address} is not free after the node stopped: {error}"));
}

/// Sets, reads, counts and locks through `client`, under keys named after `label`.
fn use_the_node(client: &blocking::Client, label: &str) {
    let greeting = client.bytes(format!("{label}-greeting"));
    greeting.set(format!("hello from {label}")).expect("set");
    let read = greeting.get().expect("get").expect("the value just set");
    assert_eq!(read.value, format!("hello from {label}").into_bytes());

    let counter = client.counter(format!("{label}-jobs"));
    assert_eq!(counter.add(5).expect("add"), 5);
    assert_eq!(counter.incr().expect("incr"), 6);
    assert_eq!(counter.get().expect("counter get"), 6);

    let lock = client.lock(format!("{label}-lock"));
    let guard = lock
        .acquire("worker-1", Duration::from_secs(30), Duration::from_secs(1))
        .expect("acquire a free lock");
    let taken = lock
        .try_acquire("worker-2", Duration::from_secs(30))
        .expect("try a held lock");
    assert!(taken.is_none(), "a held lock is not granted to another owner");
    let holder = lock.holder().expect("holder").expect("the lock is held");
    assert_eq!(
        (holder.owner.as_slice(), holder.fence),
        (&b"worker-1"[..], guard.fence())
    );
    guard.release().expect("release");
    assert_eq!(lock.holder().expect("holder after release"), None);
}

fn scrape(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics port");
    stream.set_read_timeout(Some(CALL_TIMEOUT)).expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send the scrape");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the scrape");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    answer
}

/// The value of the series `series` (name and labels, as exposed) in `exposition`.
fn series_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{exposition}"))
        .parse()
        .expect("a number")
}

#[test]
fn a_node_in_process_serves_the_client_and_stops_with_its_ports_freed() {
    let listeners = loopback_listeners(2, true);
    let front = listeners.front.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let node = node::start(NodeSettings::default(), listeners, shutdown.clone()).expect("the node starts");
    assert_eq!(
        node.front_address(),
        front,
        "the node serves on the listener it was given"
    );
    assert_eq!(node.shard_addresses().len(), 2, "one shard per shard listener");
    let ports = ports(&node);

    let client = client(&node);
    use_the_node(&client, "solo");
    let mut idle = TcpStream::connect(node.front_address()).expect("an idle connection");
    let info = client.info().expect("info");
    assert_eq!(info.node_id, node.node_id());
    assert_eq!(
        info.shards
            .iter()
            .map(|shard| shard.address.as_str())
            .collect::<Vec<_>>(),
        node.shard_addresses(),
    );

    shutdown.trigger();
    node.wait().expect("the node stops cleanly");
    for address in ports {
        assert_released(address);
    }
    // The node closed its connections too (a bounded read, so that one left open fails
    // the test instead of hanging it).
    idle.set_read_timeout(Some(RELEASE_WAIT)).expect("read timeout");
    match idle.read(&mut [0; 16]) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the stopped node's connection is still open: {other:?}"),
    }
    let after = client.counter("solo-jobs").timeout(Duration::from_secs(2)).get();
    assert!(after.is_err(), "a stopped node still answered: {after:?}");
}

#[test]
fn two_nodes_share_a_process_but_not_their_data_metrics_or_stop() {
    let shutdown = Shutdown::new();
    let (first_listeners, second_listeners) = (loopback_listeners(1, true), loopback_listeners(1, true));
    let starting_second = std::thread::spawn({
        let shutdown = shutdown.clone();
        move || node::start(NodeSettings::default(), second_listeners, shutdown)
    });
    let first = node::start(NodeSettings::default(), first_listeners, shutdown.clone()).expect("first node starts");
    let second = starting_second
        .join()
        .expect("the second start did not panic")
        .expect("second node starts");
    assert_ne!(first.node_id(), second.node_id());

    let (first_client, second_client) = (client(&first), client(&second));
    use_the_node(&first_client, "first");
    first_client
        .bytes("shared-name")
        .set("first")
        .expect("set on the first node");
    second_client
        .bytes("shared-name")
        .set("second")
        .expect("set on the second node");
    let read = |client: &blocking::Client| client.bytes("shared-name").get().expect("get").map(|read| read.value);
    assert_eq!(read(&first_client), Some(b"first".to_vec()));
    assert_eq!(read(&second_client), Some(b"second".to_vec()));
    assert_eq!(
        second_client.bytes("first-greeting").get().expect("get"),
        None,
        "the second node does not see the first's keys"
    );

    // Three counter operations ran on the first node, none on the second.
    let counters = r#"engram_operations_total{object="counter",result="ok",shard="0"}"#;
    let first_metrics = scrape(first.metrics_address().expect("first metrics"));
    let second_metrics = scrape(second.metrics_address().expect("second metrics"));
    assert_eq!(series_value(&first_metrics, counters), 3.0, "add, incr, get");
    assert_eq!(series_value(&second_metrics, counters), 0.0);

    // One node stopped alone leaves the other serving.
    let first_ports = ports(&first);
    first.stop().expect("the first node stops cleanly");
    for address in first_ports {
        assert_released(address);
    }
    assert_eq!(
        read(&second_client),
        Some(b"second".to_vec()),
        "the second node still serves"
    );

    // The signal both were started with stops the other.
    let second_ports = ports(&second);
    shutdown.trigger();
    second.wait().expect("the second node stops cleanly");
    for address in second_ports {
        assert_released(address);
    }
}

/// Requests parked at the node (`engram_parked_requests`, summed over its shards).
fn parked_requests(metrics: SocketAddr) -> f64 {
    let exposition = scrape(metrics);
    exposition
        .lines()
        .filter(|line| line.starts_with("engram_parked_requests{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().expect("a number"))
        .sum()
}

#[test]
fn a_node_stops_without_waiting_for_the_requests_waiting_at_it() {
    let shutdown = Shutdown::new();
    let node = node::start(NodeSettings::default(), loopback_listeners(2, true), shutdown.clone()).expect("starts");
    let metrics = node.metrics_address().expect("metrics");
    // Through the front port, so that the locks owned by the shard that did not take the
    // connection are reached by forwarding, and their askers wait across shards.
    let builder = engram_client::Client::builder(node.front_address().to_string())
        .direct(false)
        .timeout(CALL_TIMEOUT);
    let client = blocking::Client::connect(builder).expect("connects");
    let keys: Vec<String> = (0..8).map(|n| format!("held-{n}")).collect();
    let guards: Vec<_> = keys
        .iter()
        .map(|key| {
            client
                .lock(key.as_str())
                .acquire("holder", Duration::from_secs(60), Duration::from_secs(1))
                .expect("acquire a free lock")
        })
        .collect();
    let askers: Vec<_> = keys
        .iter()
        .map(|key| {
            let lock = client.lock(key.as_str());
            std::thread::spawn(move || {
                lock.acquire("asker", Duration::from_secs(60), Duration::from_secs(60))
                    .map(|guard| guard.fence())
            })
        })
        .collect();
    let deadline = Instant::now() + RELEASE_WAIT;
    while parked_requests(metrics) < keys.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "the askers did not park within {RELEASE_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    shutdown.trigger();
    node.wait().expect("the node stops with requests still waiting");
    for asker in askers {
        let granted = asker.join().expect("the asker did not panic");
        assert!(
            granted.is_err(),
            "a lock held at a stopped node was granted: {granted:?}"
        );
    }
    drop(guards);
}

#[test]
fn a_node_told_to_stop_before_it_started_stops_at_once() {
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let node = node::start(NodeSettings::default(), loopback_listeners(1, false), shutdown).expect("the node starts");
    let ports = ports(&node);
    node.wait().expect("the node stops cleanly");
    for address in ports {
        assert_released(address);
    }
}

#[test]
fn dropping_the_handle_stops_the_node() {
    let node = node::start(NodeSettings::default(), loopback_listeners(1, true), Shutdown::new()).expect("starts");
    let ports = ports(&node);
    use_the_node(&client(&node), "dropped");
    drop(node);
    // Nobody waits for a dropped node, so its ports close a little later.
    for address in ports {
        let deadline = Instant::now() + RELEASE_WAIT;
        while TcpStream::connect(address).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{address} still accepts {RELEASE_WAIT:?} after the drop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_node_needs_at_least_one_shard_listener() {
    let error = node::start(NodeSettings::default(), loopback_listeners(0, false), Shutdown::new())
        .expect_err("a node without shards");
    assert!(
        matches!(error, ServerError::ShardListeners { listeners: 0, .. }),
        "{error}"
    );
}
