//! Exactly-once mutations, spoken by hand: the same (client id, operation id) sent again,
//! on the same connection, pipelined, or on a new connection, is applied once and gets
//! the first answer again.

use std::net::SocketAddr;

use engram_proto::{BytesCommand, CounterCommand};
use engram_proto::{Command, ErrorCode, Request, Response};
use engram_tests::raw::{hello, request_frame, RawConnection};
use engram_tests::{fetch_slot_map, key_on_shard, unique_key, EngramServer, ServerOptions};

fn add(key: &str, delta: i64, op_id: u64, completed_below_op_id: u64) -> Request {
    Request {
        op_id,
        completed_below_op_id,
        command: Command::from(CounterCommand::Add {
            key: key.as_bytes().to_vec(),
            delta,
        }),
    }
}

fn counter_value(connection: &mut RawConnection, key: &str) -> i64 {
    match connection.command(Command::from(CounterCommand::Get {
        key: key.as_bytes().to_vec(),
    })) {
        Response::Counter { value } => value,
        other => panic!("CounterGet answered {other:?}"),
    }
}

fn random_client_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// The scenario, against one port (front or shard).
fn duplicates_apply_once(address: SocketAddr, key: &str) {
    let client_id = random_client_id();
    let mut first = RawConnection::handshaken(address, client_id);
    let request = add(key, 5, 1, 1);

    let answer = first.call(&request);
    assert_eq!(answer, Response::Counter { value: 5 });
    // The same operation again on the same connection: the first answer, not applied.
    assert_eq!(first.call(&request), answer);
    assert_eq!(counter_value(&mut first, key), 5);

    // Again from a new connection announcing the same client id (a reconnecting client).
    let mut second = RawConnection::handshaken(address, client_id);
    assert_eq!(second.call(&request), answer);
    assert_eq!(counter_value(&mut second, key), 5);

    // Pipelined: two copies of a new operation in one write, before either is answered.
    let next = add(key, 7, 2, 2);
    let mut both = request_frame(100, &next);
    both.extend_from_slice(&request_frame(101, &next));
    second.send_raw(&both);
    let replies: Vec<Response> = (0..2)
        .map(|_| second.read_frame().expect("read").expect("answer").response())
        .collect();
    assert_eq!(replies, vec![Response::Counter { value: 12 }; 2]);
    assert_eq!(counter_value(&mut second, key), 12);

    // A new operation id is a new operation; another client with the same operation id
    // is another operation too.
    assert_eq!(first.call(&add(key, 1, 3, 3)), Response::Counter { value: 13 });
    let mut other_client = RawConnection::handshaken(address, client_id.wrapping_add(1).max(1));
    assert_eq!(other_client.call(&add(key, 1, 3, 3)), Response::Counter { value: 14 });

    // Once the client declared everything below 4 completed, resending operation 1 must
    // not apply it again: the server may refuse it, but never count it twice.
    let resent = first.call(&add(key, 5, 1, 4));
    assert!(
        matches!(&resent, Response::Error(reply) if ErrorCode::from_u16(reply.code) == Some(ErrorCode::InvalidArgument)),
        "a forgotten operation resent must be refused, got {resent:?}"
    );
    assert_eq!(counter_value(&mut first, key), 14);

    // Operation id 0 means "no deduplication": each copy applies.
    assert_eq!(first.call(&add(key, 1, 0, 0)), Response::Counter { value: 15 });
    assert_eq!(first.call(&add(key, 1, 0, 0)), Response::Counter { value: 16 });
}

#[test]
fn duplicate_counter_add_through_the_front_port_applies_once() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let map = fetch_slot_map(server.front());
    // One key per shard, so both the local and the forwarded path are covered.
    for shard in 0..server.shards().len() {
        duplicates_apply_once(
            server.front(),
            &key_on_shard(&map, b"default", shard, &unique_key("once-front")),
        );
    }
}

#[test]
fn duplicate_counter_add_through_a_shard_port_applies_once() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let map = fetch_slot_map(server.front());
    for (shard, address) in server.shards().iter().enumerate() {
        duplicates_apply_once(
            *address,
            &key_on_shard(&map, b"default", shard, &unique_key("once-shard")),
        );
    }
}

#[test]
fn duplicate_set_returns_the_first_version() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let key = unique_key("once-set");
    let client_id = random_client_id();
    let mut connection = RawConnection::connect(server.front());
    connection.handshake(&hello(client_id, b"default", b""));
    let set = |value: &str, op_id: u64| Request {
        op_id,
        completed_below_op_id: 1,
        command: Command::from(BytesCommand::Set {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ttl_ms: 0,
            condition: engram_proto::SetCondition::IfAbsent,
        }),
    };
    let first = connection.call(&set("one", 1));
    let Response::Written { version } = first else {
        panic!("first if-absent set must write, got {first:?}")
    };
    // The retry of the same operation gets "written" again (not a conflict with itself).
    assert_eq!(connection.call(&set("one", 1)), Response::Written { version });
    // A different operation with the same condition does conflict.
    assert_eq!(
        connection.call(&set("two", 2)),
        Response::Conflict {
            current_version: version
        }
    );
    match connection.command(Command::from(BytesCommand::Get {
        key: key.as_bytes().to_vec(),
    })) {
        Response::Value { value, version: read } => {
            assert_eq!((value.as_slice(), read), (&b"one"[..], version));
        }
        other => panic!("Get answered {other:?}"),
    }
}
