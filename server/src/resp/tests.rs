//! Translation of Redis commands and the replies their answers make, against the bytes
//! Redis itself sends.

use engram_proto::resp::{ReplyWriter, RespVersion};
use engram_proto::{
    BytesCommand, DataCommand, ErrorCode, ErrorReply, LockCommand, LockHolder, MapEntry, QueueCommand, QueueEnd,
    Response, SetCondition,
};

use super::command::{translate, DoorCommand, Part, Refusal, Translated, KNOWN};
use super::reply::{write, Fold, Folded, Shape};

const NOW_UNIX_MS: u64 = 1_700_000_000_000;

fn run(line: &str) -> Result<Translated, Refusal> {
    let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    translate(&args, NOW_UNIX_MS)
}

fn parts(line: &str) -> Vec<Part> {
    match run(line) {
        Ok(Translated::Requests { parts, .. }) => parts,
        other => panic!("{line}: {other:?}"),
    }
}

fn only(line: &str) -> (DataCommand, Shape) {
    let mut parts = parts(line);
    assert_eq!(parts.len(), 1, "{line}");
    let part = parts.remove(0);
    (part.command, part.shape)
}

fn refusal(line: &str) -> String {
    match run(line) {
        Err(Refusal(message)) => message,
        other => panic!("{line} was not refused: {other:?}"),
    }
}

fn written(shape: &Shape, response: &Response, version: RespVersion) -> String {
    let mut out = Vec::new();
    write(shape, response, &mut ReplyWriter::new(&mut out, version));
    String::from_utf8(out).unwrap()
}

fn set(key: &str, value: &str, ttl_ms: u64, condition: SetCondition) -> DataCommand {
    BytesCommand::Set {
        key: key.into(),
        value: value.into(),
        ttl_ms,
        condition,
    }
    .into()
}

#[test]
fn names_are_case_blind_and_set_takes_its_options() {
    assert_eq!(only("GeT k").0, BytesCommand::Get { key: b"k".to_vec() }.into());
    assert_eq!(
        only("set k v"),
        (set("k", "v", 0, SetCondition::Always), Shape::OkOrNil)
    );
    assert_eq!(
        only("SET k v nx EX 10").0,
        set("k", "v", 10_000, SetCondition::IfAbsent)
    );
    assert_eq!(only("set k v px 5 nx").0, set("k", "v", 5, SetCondition::IfAbsent));
    let at = (NOW_UNIX_MS + 2_500).to_string();
    assert_eq!(
        only(&format!("set k v pxat {at}")).0,
        set("k", "v", 2_500, SetCondition::Always)
    );
    assert_eq!(refusal("set k v ex 1 px 1"), "ERR syntax error");
    assert_eq!(refusal("set k v nx nx"), "ERR syntax error");
    assert_eq!(refusal("set k v ex 0"), "ERR invalid expire time in 'set' command");
    assert_eq!(refusal("set k v ex -1"), "ERR invalid expire time in 'set' command");
    assert_eq!(refusal("set k v pxat 1"), "ERR invalid expire time in 'set' command");
    assert_eq!(refusal("set k v ex ten"), "ERR value is not an integer or out of range");
    assert_eq!(only("set k v xx").0, set("k", "v", 0, SetCondition::IfPresent));
    let replace = |ttl_ms, keep_ttl, condition| -> DataCommand {
        BytesCommand::Replace {
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            ttl_ms,
            keep_ttl,
            condition,
        }
        .into()
    };
    assert_eq!(
        only("set k v keepttl xx"),
        (replace(0, true, SetCondition::IfPresent), Shape::ReplacedOkOrNil)
    );
    assert_eq!(
        only("set k v get px 7"),
        (replace(7, false, SetCondition::Always), Shape::OldValue)
    );
    assert_eq!(refusal("set k v keepttl ex 1"), "ERR syntax error");
    assert_eq!(refusal("set k v nx xx"), "ERR syntax error");
    assert_eq!(only("getdel k").1, Shape::OldValue);
    assert_eq!(only("setex k 2 v").0, set("k", "v", 2_000, SetCondition::Always));
    assert_eq!(
        only("setnx k v"),
        (set("k", "v", 0, SetCondition::IfAbsent), Shape::WrittenFlag)
    );
}

#[test]
fn wrong_arity_and_unknown_names_get_redis_words() {
    assert_eq!(refusal("get"), "ERR wrong number of arguments for 'get' command");
    assert_eq!(refusal("get a b"), "ERR wrong number of arguments for 'get' command");
    assert_eq!(refusal("mset a"), "ERR wrong number of arguments for 'mset' command");
    assert_eq!(refusal("ping a b"), "ERR wrong number of arguments for 'ping' command");
    assert_eq!(
        refusal("flushall now please"),
        "ERR unknown command 'flushall', with args beginning with: 'now' 'please'"
    );
    let long_name = "x".repeat(40);
    assert!(refusal(&long_name).starts_with(&format!("ERR unknown command '{long_name}'")));
    // Every known name is refused for arity, not as unknown, with no arguments at all
    // (none of them but DBSIZE takes none, and it takes no more).
    assert_eq!(
        refusal("dbsize now"),
        "ERR wrong number of arguments for 'dbsize' command"
    );
    for name in KNOWN.iter().filter(|name| **name != "dbsize") {
        assert_eq!(
            translate(&[name.as_bytes()], NOW_UNIX_MS),
            Err(Refusal(format!("ERR wrong number of arguments for '{name}' command")))
        );
    }
}

#[test]
fn multi_key_commands_become_one_request_per_key_and_fold() {
    let Ok(Translated::Requests { array, parts, fold }) = run("mget a b c") else {
        panic!()
    };
    assert_eq!((array, fold, parts.len()), (Some(3), None, 3));
    let Ok(Translated::Requests { array, parts, fold }) = run("del a b") else {
        panic!()
    };
    assert_eq!((array, fold), (None, Some(Fold::CountExisting)));
    assert_eq!(parts[1].command, BytesCommand::Del { key: b"b".to_vec() }.into());
    let Ok(Translated::Requests { parts, fold, .. }) = run("mset a 1 b 2") else {
        panic!()
    };
    assert_eq!(fold, Some(Fold::AllWritten));
    assert_eq!(parts[1].command, set("b", "2", 0, SetCondition::Always));
    let Ok(Translated::Requests { parts, fold, .. }) = run("lpush q x y") else {
        panic!()
    };
    assert_eq!(fold, Some(Fold::LastLength));
    assert_eq!(
        parts[1].command,
        QueueCommand::Push {
            key: b"q".to_vec(),
            value: b"y".to_vec(),
            end: QueueEnd::Front
        }
        .into()
    );
    let Ok(Translated::Requests { array, parts, .. }) = run("rpop q 2") else {
        panic!()
    };
    assert_eq!((array, parts.len()), (Some(2), 2));
}

#[test]
fn the_door_answers_connection_commands_itself() {
    assert_eq!(run("PING"), Ok(Translated::Door(DoorCommand::Ping(None))));
    assert_eq!(
        run("hello 3 auth ns secret setname worker"),
        Ok(Translated::Door(DoorCommand::Hello {
            version: Some(3),
            auth: Some((b"ns".to_vec(), b"secret".to_vec())),
            name: Some(b"worker".to_vec()),
        }))
    );
    assert_eq!(refusal("hello three"), "NOPROTO unsupported protocol version");
    assert_eq!(refusal("hello 3 auth ns"), "ERR Syntax error in HELLO option");
    assert_eq!(
        run("auth secret"),
        Ok(Translated::Door(DoorCommand::Auth {
            username: None,
            password: b"secret".to_vec()
        }))
    );
    assert_eq!(
        run("client setinfo lib-name redis-py"),
        Ok(Translated::Door(DoorCommand::ClientNoted))
    );
    assert_eq!(
        run("config get maxmemory"),
        Ok(Translated::Door(DoorCommand::ConfigGet(b"maxmemory".to_vec())))
    );
}

#[test]
fn engram_objects_take_their_options() {
    assert_eq!(
        only("lock.acquire l worker-7 5000 wait 100"),
        (
            LockCommand::Acquire {
                key: b"l".to_vec(),
                owner: b"worker-7".to_vec(),
                lease_ms: 5_000,
                wait_ms: 100,
            }
            .into(),
            Shape::GrantOrNil
        )
    );
    assert_eq!(
        refusal("lock.acquire l w 0"),
        "ERR lease-ms must be 1..=3600000 (lease_ms_max)"
    );
    assert_eq!(refusal("lock.acquire l w 10 linger 5"), "ERR syntax error");
    let (command, _) = only("sem.acquire s 3 w 1000 wait 5 permits 2");
    let DataCommand::Semaphore(engram_proto::SemaphoreCommand::Acquire {
        permits,
        wait_ms,
        capacity,
        ..
    }) = command
    else {
        panic!("{command:?}")
    };
    assert_eq!((capacity, permits, wait_ms), (3, 2, 5));
    let (command, shape) = only("blpop q 0.25");
    assert_eq!(shape, Shape::KeyAndValueOrNil(b"q".to_vec()));
    assert_eq!(
        command,
        QueueCommand::Pop {
            key: b"q".to_vec(),
            end: QueueEnd::Front,
            timeout_ms: 250
        }
        .into()
    );
    assert_eq!(refusal("blpop q -1"), "ERR timeout is not a float or out of range");
}

#[test]
fn answers_are_written_as_redis_writes_them() {
    use RespVersion::{Resp2, Resp3};
    let value = Response::Value {
        value: b"hi".to_vec(),
        version: 3,
    };
    assert_eq!(written(&Shape::ValueOrNil, &value, Resp2), "$2\r\nhi\r\n");
    assert_eq!(written(&Shape::ValueOrNil, &Response::Missing, Resp2), "$-1\r\n");
    assert_eq!(written(&Shape::ValueOrNil, &Response::Missing, Resp3), "_\r\n");
    assert_eq!(written(&Shape::ValueOrEmpty, &Response::Missing, Resp2), "$0\r\n\r\n");
    assert_eq!(
        written(&Shape::OkOrNil, &Response::Written { version: 1 }, Resp2),
        "+OK\r\n"
    );
    assert_eq!(
        written(&Shape::OkOrNil, &Response::Conflict { current_version: 4 }, Resp2),
        "$-1\r\n"
    );
    assert_eq!(
        written(&Shape::WrittenFlag, &Response::Conflict { current_version: 4 }, Resp2),
        ":0\r\n"
    );
    let entries = Response::MapEntries(vec![MapEntry {
        field: b"f".to_vec(),
        value: b"v".to_vec(),
    }]);
    let all = Shape::Fields(super::reply::FieldsShape::All);
    assert_eq!(written(&all, &entries, Resp2), "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(written(&all, &entries, Resp3), "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    let timed_out = Response::Error(ErrorReply {
        code: ErrorCode::Timeout.as_u16(),
        message: "queue wait timed out".into(),
        map_epoch: 0,
    });
    assert_eq!(
        written(&Shape::KeyAndValueOrNil(b"q".to_vec()), &timed_out, Resp2),
        "*-1\r\n"
    );
    assert_eq!(
        written(&Shape::KeyAndValueOrNil(b"q".to_vec()), &value, Resp2),
        "*2\r\n$1\r\nq\r\n$2\r\nhi\r\n"
    );
    assert_eq!(written(&Shape::GrantOrNil, &timed_out, Resp2), "$-1\r\n");
    // A timeout where waiting is not the point is an error like any other.
    assert_eq!(
        written(&Shape::ValueOrNil, &timed_out, Resp2),
        "-TIMEOUT queue wait timed out\r\n"
    );
    let holder = Response::LockHolder {
        holder: Some(LockHolder {
            owner: b"w".to_vec(),
            fence: 9,
            lease_remaining_ms: 100,
        }),
    };
    assert_eq!(
        written(&Shape::LockHolder, &holder, Resp2),
        "*3\r\n$1\r\nw\r\n:9\r\n:100\r\n"
    );
    let wrong_type = Response::Error(ErrorReply {
        code: ErrorCode::WrongType.as_u16(),
        message: "key \"k\" does not hold a bytes value".into(),
        map_epoch: 0,
    });
    assert_eq!(
        written(&Shape::ValueOrNil, &wrong_type, Resp2),
        "-WRONGTYPE key \"k\" does not hold a bytes value\r\n"
    );
}

#[test]
fn parts_fold_into_one_reply_and_the_first_error_wins() {
    let finish = |folded: Folded, fold: Fold| {
        let mut out = Vec::new();
        folded.finish(fold, &mut ReplyWriter::new(&mut out, RespVersion::Resp2));
        String::from_utf8(out).unwrap()
    };
    let mut count = Folded::default();
    for existed in [true, false, true] {
        count.add(Fold::CountExisting, &Response::Deleted { existed });
    }
    assert_eq!(finish(count, Fold::CountExisting), ":2\r\n");
    let mut lengths = Folded::default();
    for length in [1, 2, 3] {
        lengths.add(Fold::LastLength, &Response::QueueLength { length });
    }
    assert_eq!(finish(lengths, Fold::LastLength), ":3\r\n");
    let mut writes = Folded::default();
    writes.add(Fold::AllWritten, &Response::Written { version: 1 });
    let out_of_memory = |message: &str| {
        Response::Error(ErrorReply {
            code: ErrorCode::OutOfMemory.as_u16(),
            message: message.into(),
            map_epoch: 0,
        })
    };
    writes.add(Fold::AllWritten, &out_of_memory("first"));
    writes.add(Fold::AllWritten, &out_of_memory("second"));
    assert_eq!(finish(writes, Fold::AllWritten), "-OOM first\r\n");
    let mut all_written = Folded::default();
    all_written.add(Fold::AllWritten, &Response::Written { version: 2 });
    assert_eq!(finish(all_written, Fold::AllWritten), "+OK\r\n");
}
