//! The Redis-protocol door of a real engramd (`--resp-port`), spoken to by hand: replies
//! in command order across shards, blocking pops woken by another client, Engram's locks
//! with fences, authentication with namespaces, and protocol errors that close.

use std::time::Duration;

use engram_tests::resp::{Reply, RespConnection};
use engram_tests::server::{EngramServer, ServerOptions};

fn door(options: ServerOptions) -> (EngramServer, RespConnection) {
    let server = EngramServer::start(options.resp());
    let connection = RespConnection::connect(server.resp().expect("the ready line names the door"));
    (server, connection)
}

fn integer(reply: Reply) -> i64 {
    match reply {
        Reply::Integer(value) => value,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[test]
fn pipelined_commands_over_both_shards_are_answered_in_order() {
    let (_server, mut redis) = door(ServerOptions::default().cores(2));
    // Keys spread over both shards; every command is sent before any reply is read.
    let keys: Vec<String> = (0..40).map(|index| format!("key-{index}")).collect();
    for (index, key) in keys.iter().enumerate() {
        redis.send(&["SET", key, &index.to_string()]);
        redis.send(&["INCR", key]);
        redis.send(&["GET", key]);
    }
    for index in 0..keys.len() as i64 {
        assert_eq!(redis.reply(), Reply::ok());
        assert_eq!(redis.reply(), Reply::Integer(index + 1));
        assert_eq!(redis.reply(), Reply::bulk(&(index + 1).to_string()));
    }
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("absent");
    let Reply::Array(values) = redis.command(&mget) else {
        panic!("MGET answers an array")
    };
    assert_eq!(values.len(), keys.len() + 1);
    assert_eq!(values[39], Reply::bulk("40"));
    assert_eq!(values[40], Reply::Nil);
    let mut del = vec!["DEL", "absent"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(redis.command(&del), Reply::Integer(keys.len() as i64));
    assert_eq!(redis.command(&["GET", "key-0"]), Reply::Nil);
}

#[test]
fn strings_hashes_and_lists_answer_as_redis_does() {
    let (_server, mut redis) = door(ServerOptions::default().cores(1));
    assert_eq!(redis.command(&["SET", "s", "Hello World"]), Reply::ok());
    assert_eq!(redis.command(&["SET", "s", "x", "NX"]), Reply::Nil);
    assert_eq!(redis.command(&["SETNX", "s", "x"]), Reply::Integer(0));
    assert_eq!(redis.command(&["SETRANGE", "s", "6", "Redis"]), Reply::Integer(11));
    assert_eq!(redis.command(&["GETRANGE", "s", "-5", "-1"]), Reply::bulk("Redis"));
    assert_eq!(redis.command(&["APPEND", "s", "!"]), Reply::Integer(12));
    assert_eq!(redis.command(&["STRLEN", "s"]), Reply::Integer(12));
    assert!(
        matches!(redis.command(&["INCR", "s"]), Reply::Error(line) if line.starts_with("ERR value is not an integer"))
    );
    assert_eq!(redis.command(&["DECRBY", "n", "5"]), Reply::Integer(-5));
    assert_eq!(redis.command(&["HINCRBY", "h", "f", "2"]), Reply::Integer(2));
    assert_eq!(redis.command(&["HGET", "h", "f"]), Reply::bulk("2"));
    assert_eq!(
        redis.command(&["HGETALL", "h"]),
        Reply::Array(vec![Reply::bulk("f"), Reply::bulk("2")])
    );
    assert_eq!(redis.command(&["HDEL", "h", "f", "g"]), Reply::Integer(1));
    assert_eq!(redis.command(&["RPUSH", "q", "a", "b", "c"]), Reply::Integer(3));
    assert_eq!(
        redis.command(&["LPOP", "q", "2"]),
        Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b")])
    );
    assert_eq!(redis.command(&["LLEN", "q"]), Reply::Integer(1));
    assert!(matches!(redis.command(&["GET", "q"]), Reply::Error(line) if line.starts_with("WRONGTYPE")));
    assert!(
        matches!(redis.command(&["NOSUCH", "a"]), Reply::Error(line) if line.starts_with("ERR unknown command 'nosuch'"))
    );
    assert!(
        matches!(redis.command(&["GET"]), Reply::Error(line) if line == "ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(redis.command(&["HSET", "h2", "a", "1", "b", "2"]), Reply::Integer(2));
    assert_eq!(redis.command(&["HSET", "h2", "a", "3", "c", "4"]), Reply::Integer(1));
    assert_eq!(redis.command(&["HLEN", "h2"]), Reply::Integer(3));
    assert_eq!(redis.command(&["EXISTS", "s", "h2", "nope", "s"]), Reply::Integer(3));
    for (key, type_name) in [("s", "string"), ("h2", "hash"), ("q", "list"), ("nope", "none")] {
        assert_eq!(redis.command(&["TYPE", key]), Reply::Simple(type_name.into()));
    }
    assert_eq!(redis.command(&["TTL", "s"]), Reply::Integer(-1));
    assert_eq!(redis.command(&["TTL", "nope"]), Reply::Integer(-2));
    assert_eq!(redis.command(&["EXPIRE", "s", "100", "XX"]), Reply::Integer(0));
    assert_eq!(redis.command(&["EXPIRE", "s", "100"]), Reply::Integer(1));
    assert!(matches!(redis.command(&["PTTL", "s"]), Reply::Integer(ms) if (99_000..=100_000).contains(&ms)));
    assert_eq!(redis.command(&["PERSIST", "s"]), Reply::Integer(1));
    assert_eq!(redis.command(&["TTL", "s"]), Reply::Integer(-1));
    assert!(matches!(redis.command(&["EXPIRE", "h2", "10"]), Reply::Error(line) if line.starts_with("WRONGTYPE")));
    assert_eq!(
        redis.command(&["PEXPIRE", "s", "-1"]),
        Reply::Integer(1),
        "a past expiry deletes"
    );
    assert_eq!(redis.command(&["EXISTS", "s"]), Reply::Integer(0));
    // redis-benchmark's inline PING.
    redis.send_raw(b"PING\r\n");
    assert_eq!(redis.reply(), Reply::Simple("PONG".into()));
}

#[test]
fn a_blocking_pop_is_woken_by_another_clients_push() {
    let (server, mut waiter) = door(ServerOptions::default().cores(2));
    let address = server.resp().unwrap();
    waiter.send(&["BLPOP", "jobs", "10"]);
    // The pop is parked; a later command on the same connection waits its turn.
    waiter.send(&["PING"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut producer = RespConnection::connect(address);
    // The value goes to the parked pop at once, so the push reports the queue empty
    // (Redis reports 1: its length before it serves the blocked client); 1 only if the
    // pop was not parked yet.
    let pushed = producer.command(&["RPUSH", "jobs", "job-1"]);
    assert!(matches!(pushed, Reply::Integer(0 | 1)), "{pushed:?}");
    assert_eq!(
        waiter.reply(),
        Reply::Array(vec![Reply::bulk("jobs"), Reply::bulk("job-1")])
    );
    assert_eq!(waiter.reply(), Reply::Simple("PONG".into()));
    assert_eq!(waiter.command(&["BLPOP", "jobs", "0.05"]), Reply::Nil);
}

#[test]
fn locks_hand_out_increasing_fences_and_refuse_a_stale_holder() {
    let (_server, mut redis) = door(ServerOptions::default().cores(1));
    let first = integer(redis.command(&["LOCK.ACQUIRE", "l", "worker-1", "60000"]));
    assert_eq!(redis.command(&["LOCK.ACQUIRE", "l", "worker-2", "60000"]), Reply::Nil);
    let Reply::Array(holder) = redis.command(&["LOCK.HOLDER", "l"]) else {
        panic!("a holder")
    };
    assert_eq!(holder[..2], [Reply::bulk("worker-1"), Reply::Integer(first)]);
    assert_eq!(
        redis.command(&["LOCK.RELEASE", "l", "worker-1", &first.to_string()]),
        Reply::ok()
    );
    assert!(matches!(
        redis.command(&["LOCK.RELEASE", "l", "worker-1", &first.to_string()]),
        Reply::Error(line) if line.starts_with("NOTHOLDER")
    ));
    let second = integer(redis.command(&["LOCK.ACQUIRE", "l", "worker-2", "60000", "WAIT", "100"]));
    assert!(second > first, "fences increase: {first} then {second}");
}

#[test]
fn a_token_is_asked_for_and_the_username_picks_the_namespace() {
    let (server, mut redis) = door(ServerOptions::default().cores(1).auth_token("s3cret"));
    assert!(matches!(redis.command(&["GET", "k"]), Reply::Error(line) if line.starts_with("NOAUTH")));
    assert_eq!(redis.command(&["PING"]), Reply::Simple("PONG".into()));
    assert!(matches!(redis.command(&["AUTH", "wrong"]), Reply::Error(line) if line.starts_with("WRONGPASS")));
    assert_eq!(redis.command(&["AUTH", "tenant-a", "s3cret"]), Reply::ok());
    assert_eq!(redis.command(&["SET", "k", "a's"]), Reply::ok());
    let mut other = RespConnection::connect(server.resp().unwrap());
    let Reply::Map(hello) = other.command(&["HELLO", "3", "AUTH", "tenant-b", "s3cret"]) else {
        panic!("HELLO 3 answers a map")
    };
    assert!(hello.contains(&(Reply::bulk("proto"), Reply::Integer(3))));
    assert_eq!(
        other.command(&["GET", "k"]),
        Reply::Nil,
        "another namespace holds another k"
    );
    assert_eq!(other.command(&["AUTH", "tenant-a", "s3cret"]), Reply::ok());
    assert_eq!(other.command(&["GET", "k"]), Reply::bulk("a's"));
    // Before authentication, a command larger than Redis allows a stranger closes the
    // connection at its length line.
    let mut stranger = RespConnection::connect(server.resp().unwrap());
    stranger.send_raw(b"*1\r\n$1000000\r\n");
    assert!(matches!(stranger.reply(), Reply::Error(line) if line.contains("Protocol error")));
    assert!(stranger.is_closed());
}

/// A value of the largest size arrives over many reads (the parser says how much the
/// command needs); the commands after it are served as before.
#[test]
fn the_largest_value_goes_in_and_out_and_small_commands_follow() {
    let (_server, mut redis) = door(ServerOptions::default().cores(1));
    let large = "v".repeat(engram_proto::limits::VALUE_BYTES_MAX);
    assert_eq!(redis.command(&["SET", "large", &large]), Reply::ok());
    for index in 0..50 {
        redis.send(&["INCR", "after"]);
        assert_eq!(redis.reply(), Reply::Integer(index + 1));
    }
    assert_eq!(redis.command(&["GET", "large"]), Reply::bulk(&large));
    assert_eq!(redis.command(&["STRLEN", "large"]), Reply::Integer(large.len() as i64));
}

#[test]
fn a_protocol_error_is_answered_and_closes_the_connection() {
    let (_server, mut redis) = door(ServerOptions::default().cores(1));
    redis.send(&["SET", "k", "v"]);
    redis.send_raw(b"*2\r\n$3\r\nGET\r\n$x\r\n");
    assert_eq!(redis.reply(), Reply::ok(), "the command before the error is answered");
    assert!(matches!(redis.reply(), Reply::Error(line) if line.contains("Protocol error")));
    assert!(redis.is_closed());
}
