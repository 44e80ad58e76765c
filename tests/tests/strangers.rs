//! What a stranger can make a node hold: before its handshake a connection holds at
//! most one small Hello, for at most the handshake timeout, and past
//! `--max-connections` a new connection is refused; meanwhile clients are served. With
//! `--idle-timeout-ms`, a connection that went quiet is closed, one waiting for an
//! answer is not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use engram_client::blocking;
use engram_proto::frame::FrameHeader;
use engram_proto::limits::{FRAME_PAYLOAD_BYTES_MAX, HELLO_PAYLOAD_BYTES_MAX};
use engram_proto::{Command, ErrorCode, FrameKind, LockCommand, Response};
use engram_tests::raw::RawConnection;
use engram_tests::server::{free_port, next_loopback, refused_total};
use engram_tests::{EngramServer, ServerOptions};

const STRANGERS: usize = 1_000;
/// Short, so the test sees the strangers closed soon; the default is 10 s.
const HANDSHAKE_TIMEOUT_MS: u64 = 4_000;
const RSS_GROWTH_BYTES_MAX: u64 = 50 << 20;
/// How long a closed stranger may take to notice, past the timeout (a slow machine).
const CLOSE_SLACK: Duration = Duration::from_secs(20);

/// A frame header claiming a payload of `payload_bytes`: the server must decide from
/// the header alone.
fn header_claiming(payload_bytes: usize) -> Vec<u8> {
    let header = FrameHeader {
        kind: FrameKind::Hello,
        request_id: 1,
        map_epoch: 0,
        payload_bytes: payload_bytes as u32,
    };
    header.encode().to_vec()
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(HANDSHAKE_TIMEOUT_MS) + CLOSE_SLACK))
        .expect("read timeout");
    stream
}

/// Whether the server closed `stream` (after any error frame it sent first).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_thousand_silent_strangers_hold_little_and_are_closed_by_the_handshake_timeout() {
    let bind = next_loopback();
    let metrics = SocketAddr::from((bind, free_port(bind)));
    let server = EngramServer::start(
        ServerOptions::default()
            .cores(2)
            .bind(bind)
            .metrics_port(metrics.port())
            .handshake_timeout_ms(HANDSHAKE_TIMEOUT_MS),
    );
    let client = blocking::Client::connect(server.client_builder()).expect("a client connects");
    client.bytes("before").set(b"v".to_vec()).expect("served before");
    let rss_before = server.rss_bytes();
    // The largest Hello allowed before authentication, announced and half sent: the
    // server waits for the rest, holding what arrived.
    let mut strangers: Vec<TcpStream> = (0..STRANGERS)
        .map(|_| {
            let mut stream = connect(server.front());
            stream
                .write_all(&header_claiming(HELLO_PAYLOAD_BYTES_MAX))
                .expect("send a header");
            stream
                .write_all(&vec![7u8; HELLO_PAYLOAD_BYTES_MAX / 2])
                .expect("send half a Hello");
            stream
        })
        .collect();
    let rss_with_strangers = server.rss_bytes();
    // The measure counts only if every stranger was still held when it was taken.
    assert_eq!(
        refused_total(metrics, "handshake_timeout"),
        0,
        "strangers were timed out before the measure; it is void"
    );
    let growth = rss_with_strangers.saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_BYTES_MAX,
        "{STRANGERS} strangers grew the server by {growth} bytes (from {rss_before})"
    );
    client
        .bytes("during")
        .set(b"v".to_vec())
        .expect("served while strangers wait");
    assert_eq!(
        client.bytes("before").get().expect("read").map(|read| read.value),
        Some(b"v".to_vec())
    );
    for (index, stranger) in strangers.iter_mut().enumerate() {
        assert!(closed_by_server(stranger), "stranger {index} was not closed");
    }
    assert!(
        refused_total(metrics, "handshake_timeout") >= STRANGERS as u64,
        "every stranger is counted"
    );
    client.bytes("after").set(b"v".to_vec()).expect("served after");
    eprintln!("{STRANGERS} strangers: RSS {rss_before} -> {rss_with_strangers} bytes (+{growth}), all closed");
}

/// Sends `address` a first frame's header claiming the largest payload: the answer is a
/// `Malformed` error naming the Hello's limit, then the close.
fn refused_from_its_header(address: SocketAddr) {
    let mut raw = RawConnection::connect(address);
    raw.send_raw(&header_claiming(FRAME_PAYLOAD_BYTES_MAX));
    let reply = raw
        .read_frame()
        .expect("an answer")
        .expect("an error frame before the close");
    let Response::Error(error) = reply.response() else {
        panic!("expected an error, got {:?}", reply.response())
    };
    assert_eq!(ErrorCode::from_u16(error.code), Some(ErrorCode::Malformed));
    assert!(error.message.contains("hello_payload_bytes_max"), "{}", error.message);
    assert!(
        raw.read_frame().expect("the close").is_none(),
        "the connection is closed"
    );
}

#[test]
fn a_first_frame_larger_than_a_hello_is_refused_from_its_header() {
    let server = EngramServer::start(ServerOptions::default().cores(1));
    refused_from_its_header(server.front());
    let client = blocking::Client::connect(server.client_builder()).expect("others still connect");
    client.bytes("k").set(b"v".to_vec()).expect("served");
}

#[test]
fn past_max_connections_new_connections_are_refused_and_clients_are_served() {
    const MAX_CONNECTIONS: u64 = 6;
    let server = EngramServer::start(
        ServerOptions::default()
            .cores(1)
            .resp()
            .max_connections(MAX_CONNECTIONS),
    );
    let client = blocking::Client::connect(server.client_builder()).expect("a client connects");
    client.bytes("k").set(b"v".to_vec()).expect("served");
    // Handshaken connections fill the node up (the client holds some already).
    let mut held = Vec::new();
    let refused = loop {
        let mut raw = RawConnection::connect(server.front());
        raw.send_raw(&engram_tests::raw::hello_frame(
            0,
            &engram_tests::raw::hello(9, b"", b""),
        ));
        match raw.read_frame().expect("an answer") {
            Some(reply) if reply.header.kind == FrameKind::HelloReply => held.push(raw),
            Some(reply) => break (reply, raw),
            None => panic!("closed without a word"),
        }
        assert!(
            held.len() as u64 <= MAX_CONNECTIONS,
            "more than max_connections were served"
        );
    };
    let (reply, mut raw) = refused;
    let Response::Error(error) = reply.response() else {
        panic!("expected a refusal, got {:?}", reply.response())
    };
    assert_eq!(
        ErrorCode::from_u16(error.code),
        Some(ErrorCode::Busy),
        "{}",
        error.message
    );
    assert!(error.message.contains("max_connections"), "{}", error.message);
    assert!(raw.read_frame().expect("the close").is_none());
    // The Redis door refuses in Redis's words.
    let mut redis = connect(server.resp().expect("the door"));
    let mut words = String::new();
    let _ = redis.read_to_string(&mut words);
    assert_eq!(words, "-ERR max number of clients reached\r\n");
    // Those served already still are.
    client
        .bytes("k")
        .set(b"w".to_vec())
        .expect("the client is still served");
    assert_eq!(
        client.bytes("k").get().expect("read").map(|read| read.value),
        Some(b"w".to_vec())
    );
    // Room again once connections close.
    drop(held);
    let mut served = None;
    for _ in 0..100 {
        let mut raw = RawConnection::connect(server.front());
        raw.send_raw(&engram_tests::raw::hello_frame(
            0,
            &engram_tests::raw::hello(9, b"", b""),
        ));
        if let Some(reply) = raw.read_frame().expect("an answer") {
            if reply.header.kind == FrameKind::HelloReply {
                served = Some(raw);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served.is_some(), "a connection is served again once others closed");
}

#[test]
fn an_idle_connection_is_closed_and_one_waiting_for_an_answer_is_not() {
    const IDLE_TIMEOUT_MS: u64 = 300;
    /// Several idle timeouts: the wait outlasts the time an idle connection is kept.
    const WAIT_MS: u64 = 6 * IDLE_TIMEOUT_MS;
    let server = EngramServer::start(ServerOptions::default().cores(1).idle_timeout_ms(IDLE_TIMEOUT_MS));
    let acquire = |owner: &[u8], wait_ms| {
        Command::from(LockCommand::Acquire {
            key: b"idle-lock".to_vec(),
            owner: owner.to_vec(),
            lease_ms: 60_000,
            wait_ms,
        })
    };
    let mut holder = RawConnection::handshaken(server.front(), 1);
    assert!(matches!(
        holder.command(acquire(b"holder", 0)),
        Response::LockGranted { .. }
    ));

    // Parked on the held lock for several idle timeouts: answered, not closed.
    let mut waiter = RawConnection::handshaken(server.front(), 2);
    let answer = waiter.command(acquire(b"waiter", WAIT_MS));
    let Response::Error(error) = answer else {
        panic!("expected the wait to run out, got {answer:?}")
    };
    assert_eq!(
        ErrorCode::from_u16(error.code),
        Some(ErrorCode::Timeout),
        "{}",
        error.message
    );

    // Quiet since: closed by the server, with no frame sent first.
    let closed = RawConnection::handshaken(server.front(), 3).read_until_closed();
    assert!(closed.frames.is_empty() && closed.trailing_bytes == 0);
    let closed = waiter.read_until_closed();
    assert!(closed.frames.is_empty());
}

/// engram-control holds a stranger no longer nor more than a node does: a header
/// claiming more than a Hello is refused from the header, and a silent connection is
/// closed at the control plane's handshake timeout, while operators are served.
#[test]
fn engram_control_refuses_a_large_first_frame_and_closes_a_silent_stranger() {
    let scratch = engram_tests::processes::Scratch::new("control-strangers");
    let host = next_loopback();
    let metrics = SocketAddr::from((host, free_port(host)));
    let control = engram_tests::control::ControlPlane::start_with(
        host,
        scratch.path().join("control"),
        &[
            "--metrics-port",
            &metrics.port().to_string(),
            "--auth-token",
            "operator",
        ],
    );
    let address: SocketAddr = control.address().parse().unwrap();
    refused_from_its_header(address);

    let mut silent = TcpStream::connect_timeout(&address, Duration::from_secs(10)).expect("connect");
    let limit = Duration::from_millis(engram_control::port::HANDSHAKE_TIMEOUT_MS) + CLOSE_SLACK;
    silent.set_read_timeout(Some(limit)).unwrap();
    // Half a Hello's header: the control plane waits for the rest until its deadline.
    silent
        .write_all(&header_claiming(HELLO_PAYLOAD_BYTES_MAX)[..8])
        .unwrap();
    assert!(
        closed_by_server(&mut silent),
        "a silent stranger is kept past the handshake timeout"
    );
    let admin = |token: &str| {
        engram_client::admin::Admin::new(control.address())
            .credentials(token.as_bytes().to_vec())
            .timeout(Duration::from_secs(10))
    };
    engram_tests::run_async(Duration::from_secs(30), async {
        admin("guess").ping().await.expect_err("a wrong token is refused");
        admin("operator").ping().await.expect("an operator is served");
    });
    for reason in ["bad_hello", "handshake_timeout", "unauthorized"] {
        assert_eq!(refused_total(metrics, reason), 1, "{reason}");
    }
}
