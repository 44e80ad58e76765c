//! Hostile and broken input over raw TCP, against the front port and a shard port: the
//! server answers with an error frame and/or closes, never allocates what a header
//! merely claims, keeps limit errors on a usable connection, and keeps serving others.

use std::net::SocketAddr;
use std::time::Duration;

use engram_client::{Error, ServerCode};
use engram_proto::limits::{FRAME_PAYLOAD_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use engram_proto::{AdminCommand, BytesCommand, CounterCommand};
use engram_proto::{
    Command, ErrorCode, ErrorReply, FrameHeader, FrameKind, Request, Response, SetCondition, FRAME_HEADER_BYTES,
};
use engram_tests::raw::{hello, hello_frame, request, request_frame, Closed, RawConnection};
use engram_tests::{fetch_slot_map, key_on_shard, run_async, unique_key, EngramServer, ServerOptions};
use rand::{Rng, SeedableRng};

/// Codes a server may answer a broken stream with before closing it.
const REFUSAL_CODES: [ErrorCode; 3] = [
    ErrorCode::Malformed,
    ErrorCode::UnsupportedVersion,
    ErrorCode::HandshakeRequired,
];

/// Asserts the connection ended with at most error frames carrying one of `codes`.
fn assert_refused(closed: &Closed, codes: &[ErrorCode], context: &str) {
    assert_eq!(closed.trailing_bytes, 0, "{context}: server sent a truncated frame");
    for frame in &closed.frames {
        let code = frame.error_code();
        assert!(
            code.is_some_and(|code| codes.contains(&code)),
            "{context}: expected an error frame with one of {codes:?}, got {:?} {:?}",
            frame.header.kind,
            frame.response()
        );
    }
}

/// Asserts the connection ended with exactly one error frame with `code` (or a reset,
/// which can swallow it when the server closes with our bytes unread).
fn assert_refused_with(closed: &Closed, code: ErrorCode, context: &str) {
    assert_refused(closed, &[code], context);
    assert!(
        closed.frames.len() == 1 || (closed.frames.is_empty() && closed.reset),
        "{context}: expected one {code} error frame before the close, got {} frames (reset: {})",
        closed.frames.len(),
        closed.reset
    );
}

fn header_bytes(kind: FrameKind, payload_bytes: u32) -> [u8; FRAME_HEADER_BYTES] {
    FrameHeader {
        kind,
        request_id: 9,
        map_epoch: 0,
        payload_bytes,
    }
    .encode()
}

/// Ping and a set/get through the real client, and a raw ping on each port.
fn assert_server_healthy(server: &EngramServer) {
    run_async(Duration::from_secs(30), async {
        let client = server.client().await;
        client.ping().await.expect("ping");
        let bytes = client.bytes(unique_key("healthy"));
        let version = bytes.set("still here").await.expect("set");
        let read = bytes.get().await.expect("get").expect("value");
        assert_eq!((read.value.as_slice(), read.version), (&b"still here"[..], version));
    });
    for address in std::iter::once(server.front()).chain(server.shards().iter().copied()) {
        let mut connection = RawConnection::handshaken(address, 77);
        assert_eq!(
            connection.command(Command::from(AdminCommand::Ping)),
            Response::Pong,
            "ping on {address}"
        );
    }
}

fn ports(server: &EngramServer) -> [SocketAddr; 2] {
    [server.front(), server.shards()[0]]
}

#[test]
fn random_bytes_close_the_connection() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0001);
    for case in 0..200 {
        let address = ports(&server)[case % 2];
        let length = rng.random_range(1..512);
        let mut blob = vec![0u8; length];
        rng.fill(&mut blob[..]);
        // A third start with a valid magic and version, so decoding gets further than
        // the first four bytes; a third come after a valid handshake.
        let handshake_first = case % 3 == 2;
        if case % 3 == 1 && blob.len() >= 6 {
            blob[..4].copy_from_slice(b"ENGR");
            blob[4] = 1;
            blob[5] = rng.random_range(1..=4);
        }
        let mut connection = if handshake_first {
            RawConnection::handshaken(address, 1_000 + case as u64)
        } else {
            RawConnection::connect(address)
        };
        // A server may close as soon as it has seen enough; a failed write is fine.
        let _ = connection.send_raw_lenient(&blob);
        // Random bytes may look like the start of a long frame: EOF ends the wait.
        connection.shutdown_write();
        let closed = connection.read_until_closed();
        assert_refused(
            &closed,
            &REFUSAL_CODES,
            &format!("case {case} ({length} bytes to {address})"),
        );
    }
    assert_server_healthy(&server);
}

#[test]
fn a_header_claiming_four_gib_is_refused() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    for address in ports(&server) {
        for handshake_first in [false, true] {
            let mut connection = if handshake_first {
                RawConnection::handshaken(address, 5)
            } else {
                RawConnection::connect(address)
            };
            let kind = if handshake_first {
                FrameKind::Request
            } else {
                FrameKind::Hello
            };
            connection.send_raw(&header_bytes(kind, u32::MAX));
            // No shutdown: the header alone must be enough for the server to refuse.
            let closed = connection.read_until_closed();
            assert_refused_with(&closed, ErrorCode::Malformed, &format!("4 GiB header to {address}"));
        }
    }
    assert_server_healthy(&server);
}

#[test]
fn a_payload_that_is_not_a_valid_archive_is_refused() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let valid = request_frame(1, &request(Command::from(BytesCommand::Get { key: b"abc".to_vec() })));
    let payload = &valid[FRAME_HEADER_BYTES..];
    // The frames carry no checksum: validation of the archive is what refuses these.
    let cut_short = &payload[..payload.len() / 2];
    let garbage = vec![0xffu8; payload.len()];
    for address in ports(&server) {
        for (name, bad) in [("payload cut short", cut_short), ("garbage payload", &garbage[..])] {
            let mut connection = RawConnection::handshaken(address, 3);
            let mut frame = header_bytes(FrameKind::Request, bad.len() as u32).to_vec();
            frame.extend_from_slice(bad);
            connection.send_raw(&frame);
            assert_refused_with(&connection.read_until_closed(), ErrorCode::Malformed, name);
        }
    }
    assert_server_healthy(&server);
}

#[test]
fn a_request_before_hello_gets_handshake_required() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    for address in ports(&server) {
        let mut connection = RawConnection::connect(address);
        connection.send_raw(&request_frame(1, &request(Command::from(AdminCommand::Ping))));
        assert_refused_with(
            &connection.read_until_closed(),
            ErrorCode::HandshakeRequired,
            "request before hello",
        );
    }
    assert_server_healthy(&server);
}

#[test]
fn handshake_violations_are_refused() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    for address in ports(&server) {
        // A second Hello on an established connection.
        let mut connection = RawConnection::handshaken(address, 4);
        connection.send_raw(&hello_frame(0, &hello(4, b"default", b"")));
        assert_refused_with(&connection.read_until_closed(), ErrorCode::Malformed, "second hello");

        // Another protocol version in the Hello.
        let mut connection = RawConnection::connect(address);
        let mut other_version = hello(4, b"default", b"");
        other_version.protocol_version = 99;
        connection.send_raw(&hello_frame(0, &other_version));
        assert_refused_with(
            &connection.read_until_closed(),
            ErrorCode::UnsupportedVersion,
            "hello with version 99",
        );

        // A peer from before the protocol families: its frame header says version 2.
        let mut connection = RawConnection::connect(address);
        let mut old_frame = hello_frame(0, &hello(4, b"default", b""));
        old_frame[4] = 2;
        connection.send_raw(&old_frame);
        let closed = connection.read_until_closed();
        assert_refused_with(&closed, ErrorCode::UnsupportedVersion, "frame of protocol version 2");
        if let Some(frame) = closed.frames.first() {
            let Response::Error(ErrorReply { message, .. }) = frame.response() else {
                panic!("version 2 refused without an error: {:?}", frame.response())
            };
            assert!(
                message.contains("version 2")
                    && message.contains(&format!("speaks {}", engram_proto::limits::PROTOCOL_VERSION)),
                "the refusal names both versions: {message}"
            );
        }

        // A namespace over the limit.
        let mut connection = RawConnection::connect(address);
        let namespace = vec![b'n'; engram_proto::limits::NAMESPACE_BYTES_MAX + 1];
        connection.send_raw(&hello_frame(0, &hello(4, &namespace, b"")));
        assert_refused_with(
            &connection.read_until_closed(),
            ErrorCode::NamespaceTooLarge,
            "oversize namespace",
        );

        // A Hello whose payload is garbage.
        let mut connection = RawConnection::connect(address);
        let garbage = [0xffu8; 48];
        let mut frame = header_bytes(FrameKind::Hello, garbage.len() as u32).to_vec();
        frame.extend_from_slice(&garbage);
        connection.send_raw(&frame);
        assert_refused_with(&connection.read_until_closed(), ErrorCode::Malformed, "garbage hello");
    }
    assert_server_healthy(&server);
}

fn error_code_of(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(reply) => ErrorCode::from_u16(reply.code),
        _ => None,
    }
}

#[test]
fn oversize_key_and_value_are_refused_and_the_connection_stays_usable() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    let long_value = vec![b'v'; VALUE_BYTES_MAX + 1];

    // Through the client: refused before sending, or by the server; either way named.
    run_async(Duration::from_secs(30), async {
        let client = server.client().await;
        let is_key_too_large = |error: &Error| {
            matches!(error, Error::KeyTooLarge { length } if *length == KEY_BYTES_MAX + 1)
                || error.code() == Some(ServerCode::Known(ErrorCode::KeyTooLarge))
        };
        let is_value_too_large = |error: &Error| {
            matches!(error, Error::ValueTooLarge { length } if *length == VALUE_BYTES_MAX + 1)
                || error.code() == Some(ServerCode::Known(ErrorCode::ValueTooLarge))
        };
        let error = client
            .bytes(long_key.clone())
            .get()
            .await
            .expect_err("oversize key get");
        assert!(is_key_too_large(&error), "{error:?}");
        let error = client
            .bytes(long_key.clone())
            .set("v")
            .await
            .expect_err("oversize key set");
        assert!(is_key_too_large(&error), "{error:?}");
        let error = client
            .counter(long_key.clone())
            .incr()
            .await
            .expect_err("oversize key incr");
        assert!(is_key_too_large(&error), "{error:?}");
        let error = client
            .bytes(unique_key("big"))
            .set(long_value.clone())
            .await
            .expect_err("oversize value");
        assert!(is_value_too_large(&error), "{error:?}");
        // The largest allowed key and value are fine.
        let exact = client.bytes(vec![b'k'; KEY_BYTES_MAX]);
        exact
            .set(vec![b'v'; VALUE_BYTES_MAX])
            .await
            .expect("key and value at their limits");
        assert_eq!(
            exact.get().await.expect("get").expect("value").value.len(),
            VALUE_BYTES_MAX
        );
        assert!(exact.del().await.expect("del"));
    });

    // Raw, bypassing the client's checks: the server names the limit and keeps the connection.
    let map = fetch_slot_map(server.front());
    for (address, shard) in [(server.front(), 0), (server.shards()[0], 0), (server.shards()[1], 1)] {
        let mut connection = RawConnection::handshaken(address, 11);
        for command in [
            Command::from(BytesCommand::Get { key: long_key.clone() }),
            Command::from(BytesCommand::Set {
                key: long_key.clone(),
                value: b"v".to_vec(),
                ttl_ms: 0,
                condition: SetCondition::Always,
            }),
            Command::from(CounterCommand::Add {
                key: long_key.clone(),
                delta: 1,
            }),
        ] {
            let name = command.name();
            let answer = connection.call(&Request {
                op_id: 0,
                completed_below_op_id: 0,
                command,
            });
            assert_eq!(
                error_code_of(&answer),
                Some(ErrorCode::KeyTooLarge),
                "{name} with an oversize key on {address}: {answer:?}"
            );
            assert_eq!(
                connection.command(Command::from(AdminCommand::Ping)),
                Response::Pong,
                "connection usable after {name}"
            );
        }

        // An oversize value under a key this port serves (a shard port answers
        // WrongShard for the others, before looking at the value).
        let key = key_on_shard(&map, b"default", shard, &unique_key("big-value")).into_bytes();
        let set = Command::from(BytesCommand::Set {
            key: key.clone(),
            value: long_value.clone(),
            ttl_ms: 0,
            condition: SetCondition::Always,
        });
        let answer = connection.command(set);
        assert_eq!(
            error_code_of(&answer),
            Some(ErrorCode::ValueTooLarge),
            "set of an oversize value on {address}: {answer:?}"
        );
        assert_eq!(connection.command(Command::from(AdminCommand::Ping)), Response::Pong);
        // Nothing was written.
        assert_eq!(
            connection.command(Command::from(BytesCommand::Get { key: key.clone() })),
            Response::Missing
        );

        // An append that would grow a value past the limit.
        let start = connection.command(Command::from(BytesCommand::Set {
            key: key.clone(),
            value: vec![b'a'; VALUE_BYTES_MAX - 10],
            ttl_ms: 0,
            condition: SetCondition::Always,
        }));
        assert!(matches!(start, Response::Written { .. }), "{start:?}");
        let answer = connection.command(Command::from(BytesCommand::Append {
            key: key.clone(),
            value: vec![b'b'; 11],
        }));
        assert_eq!(
            error_code_of(&answer),
            Some(ErrorCode::ValueTooLarge),
            "append past the limit: {answer:?}"
        );
        assert_eq!(
            connection.command(Command::from(BytesCommand::Del { key })),
            Response::Deleted { existed: true }
        );
    }
    assert_server_healthy(&server);
}

#[test]
fn many_connections_claiming_huge_frames_do_not_make_the_server_reserve_them() {
    const CONNECTIONS: usize = 200;
    const GROWTH_MAX_BYTES: u64 = 64 << 20;
    let server = EngramServer::start(ServerOptions::default().cores(2));
    // Warm up: a few normal operations so lazily allocated runtime memory is in place.
    assert_server_healthy(&server);
    let before = server.rss_bytes();

    let mut connections = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let address = ports(&server)[n % 2];
        // Half announce the huge frame as their Hello, half after a real handshake.
        let (mut connection, kind) = if n % 4 < 2 {
            (RawConnection::connect(address), FrameKind::Hello)
        } else {
            (RawConnection::handshaken(address, 2_000 + n as u64), FrameKind::Request)
        };
        let mut bytes = header_bytes(kind, FRAME_PAYLOAD_BYTES_MAX as u32).to_vec();
        bytes.extend_from_slice(b"only a few bytes of the promised megabytes");
        connection.send_raw(&bytes);
        connections.push(connection);
    }
    // Every connection has been accepted and its bytes delivered once a fresh request on
    // each shard is answered (each shard serves its connections in order of arrival of
    // work, and the answers below come after all of the above were written).
    assert_server_healthy(&server);
    std::thread::sleep(Duration::from_millis(300));
    let during = server.rss_bytes();
    let growth = during.saturating_sub(before);
    eprintln!(
        "RSS {} KiB before, {} KiB with {CONNECTIONS} half-sent frames open (growth {} KiB)",
        before >> 10,
        during >> 10,
        growth >> 10
    );
    assert!(
        growth < GROWTH_MAX_BYTES,
        "RSS grew by {} MiB with {CONNECTIONS} connections each claiming a {} MiB frame (before {} MiB, after {} MiB)",
        growth >> 20,
        FRAME_PAYLOAD_BYTES_MAX >> 20,
        before >> 20,
        during >> 20
    );
    // A Hello claiming more than a Hello may is refused from its header; a handshaken
    // connection's incomplete request is still pending, unanswered.
    for connection in &connections[..4] {
        connection.set_read_timeout(Duration::from_millis(50));
    }
    for (n, connection) in connections.iter_mut().enumerate().take(4) {
        let read = connection.read_frame();
        if n % 4 < 2 {
            let refused = matches!(&read, Ok(Some(reply)) if reply.error_code() == Some(ErrorCode::Malformed));
            assert!(refused, "an oversized Hello got {read:?}");
            continue;
        }
        match read {
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("a connection with an incomplete frame got {other:?}"),
        }
    }
    drop(connections);
    assert_server_healthy(&server);
}
