//! Redis commands as Engram requests, sans I/O: a command's arguments become either
//! something the door answers itself ([`DoorCommand`]) or native data requests, each
//! with the [`Shape`] of its answer, whose answers written in order make the reply.
//!
//! Keys are the client's keys here; the connection adds its namespace, as for a native
//! client. Commands of several keys become one request per key (each routed to its own
//! slot), so they are not atomic across slots: Redis Cluster refuses them across slots,
//! Engram answers them part by part (see the README's Redis section).

use engram_proto::limits::{
    LEASE_MS_MAX, NAMESPACE_BYTES_MAX, PARTIES_MAX, SCAN_PATTERN_BYTES_MAX, TTL_MS_MAX, WAIT_MS_MAX,
};
use engram_proto::{
    BarrierCommand, BytesCommand, DataCommand, ExpireCondition, FutureCommand, KeyCommand, LatchCommand, LockCommand,
    MapCommand, ObjectKind, QueueCommand, QueueEnd, SemaphoreCommand, SetCondition,
};

use super::reply::{FieldsShape, Fold, Shape};

/// One native request of a translated command, and how its answer is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub command: DataCommand,
    pub shape: Shape,
}

/// A Redis command, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// Answered by the door, without a shard.
    Door(DoorCommand),
    /// Native requests whose answers make the reply: an array header of `array` elements
    /// first when set, then each part's answer, then the fold of the parts when set.
    Requests {
        array: Option<usize>,
        parts: Vec<Part>,
        fold: Option<Fold>,
    },
    /// A question about every shard's keys, whose requests depend on the slot map.
    Listing(Listing),
}

/// `SCAN` and `DBSIZE`: their requests go to shards, not to keys' slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
    Scan {
        cursor: u64,
        count: u32,
        pattern: Option<Vec<u8>>,
        kind: Option<ObjectKind>,
    },
    /// `DBSIZE`: the keys of every shard.
    Count,
}

/// What the door answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorCommand {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    /// `HELLO [protover [AUTH username password] [SETNAME name]]`.
    Hello {
        version: Option<i64>,
        auth: Option<(Vec<u8>, Vec<u8>)>,
        name: Option<Vec<u8>>,
    },
    /// `AUTH [username] password`: the username names the namespace.
    Auth {
        username: Option<Vec<u8>>,
        password: Vec<u8>,
    },
    Select(i64),
    ClientSetName(Vec<u8>),
    ClientGetName,
    ClientId,
    ClientInfo,
    /// `CLIENT SETINFO` and the like: accepted, nothing kept.
    ClientNoted,
    Quit,
    Reset,
    Time,
    /// `COMMAND`, `COMMAND COUNT|DOCS|INFO ...`: the subcommand, lowercased.
    Command(Option<Vec<u8>>),
    ConfigGet(Vec<u8>),
    Info(Option<Vec<u8>>),
}

impl DoorCommand {
    /// Whether it tells of the server (its clients, its settings, its statistics), so
    /// that a connection must authenticate first where a token is asked for, as Redis
    /// answers `NOAUTH`. The rest serve the handshake itself or tell nothing.
    pub fn needs_authentication(&self) -> bool {
        matches!(
            self,
            DoorCommand::Info(_) | DoorCommand::ClientInfo | DoorCommand::ClientId | DoorCommand::ConfigGet(_)
        )
    }
}

/// Why a command is refused before anything is sent, as Redis words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    fn arity(name: &str) -> Refusal {
        Refusal(format!("ERR wrong number of arguments for '{name}' command"))
    }

    fn syntax() -> Refusal {
        Refusal("ERR syntax error".into())
    }

    fn not_an_integer() -> Refusal {
        Refusal("ERR value is not an integer or out of range".into())
    }

    fn invalid_expire(name: &str) -> Refusal {
        Refusal(format!("ERR invalid expire time in '{name}' command"))
    }
}

/// Translates a command (`args[0]` its name, any case) at wall-clock time `now_unix_ms`
/// (for `EXAT`/`PXAT`).
pub fn translate(args: &[&[u8]], now_unix_ms: u64) -> Result<Translated, Refusal> {
    let Some(name) = args.first() else {
        return Err(Refusal("ERR empty command".into()));
    };
    let mut lowered = [0u8; COMMAND_NAME_BYTES_MAX];
    let rest = &args[1..];
    let Some(name) = lowercase(name, &mut lowered) else {
        return Err(unknown_or_arity(
            &String::from_utf8_lossy(name).to_ascii_lowercase(),
            rest,
        ));
    };
    if let Some(door) = door_command(name, rest)? {
        return Ok(Translated::Door(door));
    }
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("get", 1) => single(BytesCommand::Get { key: key() }.into(), Shape::ValueOrNil),
        ("set", n) if n >= 2 => set(rest, now_unix_ms),
        ("getset", 2) => replace(rest[0], Some(rest[1])),
        ("getdel", 1) => replace(rest[0], None),
        ("setnx", 2) => single(set_command(rest, 0, SetCondition::IfAbsent), Shape::WrittenFlag),
        ("setex", 3) => single(set_expiring(rest, seconds(rest[1], "setex")?), Shape::OkOrNil),
        ("psetex", 3) => single(set_expiring(rest, milliseconds(rest[1], "psetex")?), Shape::OkOrNil),
        ("mget", n) if n >= 1 => Ok(Translated::Requests {
            array: Some(n),
            parts: rest
                .iter()
                .map(|key| Part {
                    command: BytesCommand::Get { key: owned_key(key) }.into(),
                    shape: Shape::ValueOrNil,
                })
                .collect(),
            fold: None,
        }),
        ("mset", n) if n >= 2 && n % 2 == 0 => folded(
            rest.chunks(2).map(|pair| set_command(pair, 0, SetCondition::Always)),
            Fold::AllWritten,
        ),
        ("del" | "unlink", n) if n >= 1 => folded(
            rest.iter().map(|key| BytesCommand::Del { key: owned_key(key) }.into()),
            Fold::CountExisting,
        ),
        ("incr", 1) => single(add_integer(rest[0], 1), Shape::Integer),
        ("decr", 1) => single(add_integer(rest[0], -1), Shape::Integer),
        ("incrby", 2) => single(add_integer(rest[0], integer(rest[1])?), Shape::Integer),
        ("decrby", 2) => {
            let delta = integer(rest[1])?.checked_neg().ok_or_else(Refusal::not_an_integer)?;
            single(add_integer(rest[0], delta), Shape::Integer)
        }
        ("append", 2) => single(
            BytesCommand::Append {
                key: key(),
                value: rest[1].to_vec(),
            }
            .into(),
            Shape::Length,
        ),
        ("strlen", 1) => single(BytesCommand::Len { key: key() }.into(), Shape::Length),
        ("getrange" | "substr", 3) => single(
            BytesCommand::GetRange {
                key: key(),
                start: integer(rest[1])?,
                end: integer(rest[2])?,
            }
            .into(),
            Shape::ValueOrEmpty,
        ),
        ("setrange", 3) => {
            let offset = u64::try_from(integer(rest[1])?).map_err(|_| Refusal("ERR offset is out of range".into()))?;
            let command = BytesCommand::SetRange {
                key: key(),
                offset,
                value: rest[2].to_vec(),
            };
            single(command.into(), Shape::Length)
        }
        _ => key_command(name, rest, now_unix_ms),
    }
}

/// What any key answers: `EXISTS`, `TYPE`, and the expiry commands.
fn key_command(name: &str, rest: &[&[u8]], now_unix_ms: u64) -> Result<Translated, Refusal> {
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("exists", n) if n >= 1 => folded(
            rest.iter().map(|key| KeyCommand::Kind { key: owned_key(key) }.into()),
            Fold::CountExisting,
        ),
        ("type", 1) => single(KeyCommand::Kind { key: key() }.into(), Shape::TypeName),
        ("ttl", 1) => single(KeyCommand::Ttl { key: key() }.into(), Shape::Ttl { in_seconds: true }),
        ("pttl", 1) => single(KeyCommand::Ttl { key: key() }.into(), Shape::Ttl { in_seconds: false }),
        ("persist", 1) => single(KeyCommand::Persist { key: key() }.into(), Shape::ChangedFlag),
        ("expire" | "pexpire" | "expireat" | "pexpireat", n) if (2..=3).contains(&n) => expire(name, rest, now_unix_ms),
        ("scan", n) if n >= 1 => scan(rest),
        ("dbsize", 0) => Ok(Translated::Listing(Listing::Count)),
        _ => hash_command(name, rest),
    }
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` and its milliseconds and absolute forms. A time
/// already past deletes the key, as in Redis.
fn expire(name: &str, rest: &[&[u8]], now_unix_ms: u64) -> Result<Translated, Refusal> {
    let amount = integer(rest[1])?;
    let unit_ms: i64 = if name.starts_with('p') { 1 } else { 1000 };
    let amount_ms = amount
        .checked_mul(unit_ms)
        .ok_or_else(|| Refusal::invalid_expire(name))?;
    let ttl_ms = if name.ends_with("at") {
        i128::from(amount_ms) - i128::from(now_unix_ms)
    } else {
        i128::from(amount_ms)
    };
    let condition = match rest.get(2).map(|option| option.to_ascii_lowercase()) {
        None => ExpireCondition::Always,
        Some(option) => match option.as_slice() {
            b"nx" => ExpireCondition::IfNone,
            b"xx" => ExpireCondition::IfSome,
            b"gt" => ExpireCondition::IfLater,
            b"lt" => ExpireCondition::IfSooner,
            _ => {
                return Err(Refusal(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(&option)
                )))
            }
        },
    };
    let key = rest[0].to_vec();
    let (command, shape) = if ttl_ms <= 0 {
        (BytesCommand::Del { key }.into(), Shape::ExistedFlag)
    } else {
        let ttl_ms = u64::try_from(ttl_ms)
            .ok()
            .filter(|ttl_ms| *ttl_ms <= TTL_MS_MAX)
            .ok_or_else(|| Refusal::invalid_expire(name))?;
        let command = KeyCommand::Expire { key, ttl_ms, condition };
        (command.into(), Shape::ChangedFlag)
    };
    single(command, shape)
}

/// Redis's default page size, for a `SCAN` without `COUNT`.
const SCAN_COUNT_DEFAULT: u32 = 10;

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`, options in any order.
fn scan(rest: &[&[u8]]) -> Result<Translated, Refusal> {
    let cursor = std::str::from_utf8(rest[0])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Refusal("ERR invalid cursor".into()))?;
    let (mut count, mut pattern, mut kind) = (SCAN_COUNT_DEFAULT, None, None);
    let mut options = &rest[1..];
    while let [option, value, more @ ..] = options {
        match option.to_ascii_lowercase().as_slice() {
            b"match" if value.len() > SCAN_PATTERN_BYTES_MAX => {
                return Err(Refusal(format!(
                    "ERR pattern of {} bytes exceeds scan_pattern_bytes_max ({SCAN_PATTERN_BYTES_MAX})",
                    value.len()
                )))
            }
            // `*` lists everything: no need to match each name.
            b"match" => pattern = (*value != b"*").then(|| value.to_vec()),
            b"count" => {
                // Redis refuses a count below 1; a larger one than a shard takes per page
                // is only a hint.
                count = u32::try_from(integer(value)?.clamp(0, i64::from(u32::MAX)))
                    .ok()
                    .filter(|count| *count >= 1)
                    .ok_or_else(Refusal::syntax)?;
            }
            b"type" => {
                let named = ObjectKind::from_type_name(&value.to_ascii_lowercase());
                kind =
                    Some(named.ok_or_else(|| {
                        Refusal(format!("ERR unknown type name '{}'", String::from_utf8_lossy(value)))
                    })?);
            }
            _ => return Err(Refusal::syntax()),
        }
        options = more;
    }
    if !options.is_empty() {
        return Err(Refusal::syntax());
    }
    Ok(Translated::Listing(Listing::Scan {
        cursor,
        count,
        pattern,
        kind,
    }))
}

/// Redis's hash commands, on a map; then lists and Engram's coordination objects.
fn hash_command(name: &str, rest: &[&[u8]]) -> Result<Translated, Refusal> {
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("hget", 2) => single(map_get(rest), Shape::ValueOrNil),
        ("hset" | "hmset", n) if n >= 3 && n % 2 == 1 => {
            let puts = rest[1..].chunks(2).map(|pair| {
                MapCommand::Put {
                    key: key(),
                    field: pair[0].to_vec(),
                    value: pair[1].to_vec(),
                }
                .into()
            });
            // `HMSET` is `HSET` answering `OK`.
            folded(
                puts,
                if name == "hset" {
                    Fold::CountCreated
                } else {
                    Fold::AllWritten
                },
            )
        }
        ("hexists", 2) => single(map_get(rest), Shape::PresentFlag),
        ("hmget", n) if n >= 2 => Ok(Translated::Requests {
            array: Some(n - 1),
            parts: rest[1..]
                .iter()
                .map(|field| Part {
                    command: map_get(&[rest[0], field]),
                    shape: Shape::ValueOrNil,
                })
                .collect(),
            fold: None,
        }),
        ("hdel", n) if n >= 2 => folded(
            rest[1..].iter().map(|field| {
                MapCommand::Del {
                    key: key(),
                    field: field.to_vec(),
                }
                .into()
            }),
            Fold::CountExisting,
        ),
        ("hgetall", 1) => single(map_all(rest), Shape::Fields(FieldsShape::All)),
        ("hkeys", 1) => single(map_all(rest), Shape::Fields(FieldsShape::Names)),
        ("hvals", 1) => single(map_all(rest), Shape::Fields(FieldsShape::Values)),
        ("hlen", 1) => single(map_all(rest), Shape::Fields(FieldsShape::Count)),
        ("hincrby", 3) => {
            let command = MapCommand::Incr {
                key: key(),
                field: rest[1].to_vec(),
                delta: integer(rest[2])?,
            };
            single(command.into(), Shape::Integer)
        }
        _ => list_command(name, rest),
    }
}

/// Redis's list commands, on a queue.
fn list_command(name: &str, rest: &[&[u8]]) -> Result<Translated, Refusal> {
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("lpush" | "rpush", n) if n >= 2 => {
            let end = if name == "lpush" {
                QueueEnd::Front
            } else {
                QueueEnd::Back
            };
            folded(
                rest[1..].iter().map(|value| {
                    QueueCommand::Push {
                        key: key(),
                        value: value.to_vec(),
                        end,
                    }
                    .into()
                }),
                Fold::LastLength,
            )
        }
        ("lpop" | "rpop", 1) => single(pop(name, rest[0], 0), Shape::ValueOrNil),
        ("lpop" | "rpop", 2) => {
            let count = usize::try_from(integer(rest[1])?).map_err(|_| Refusal::not_an_integer())?;
            Ok(Translated::Requests {
                array: Some(count),
                parts: (0..count)
                    .map(|_| Part {
                        command: pop(name, rest[0], 0),
                        shape: Shape::ValueOrNil,
                    })
                    .collect(),
                fold: None,
            })
        }
        ("llen", 1) => single(QueueCommand::Len { key: key() }.into(), Shape::Length),
        ("blpop" | "brpop", 2) => {
            let timeout_ms = blocking_timeout_ms(rest[1])?;
            let end_name = if name == "blpop" { "lpop" } else { "rpop" };
            single(pop(end_name, rest[0], timeout_ms), Shape::KeyAndValueOrNil(key()))
        }
        ("blpop" | "brpop", n) if n >= 3 => {
            let (timeout, keys) = rest.split_last().expect("three arguments or more");
            let command = QueueCommand::PopAny {
                key: key(),
                more_keys: keys[1..].iter().map(|key| owned_key(key)).collect(),
                end: if name == "blpop" {
                    QueueEnd::Front
                } else {
                    QueueEnd::Back
                },
                timeout_ms: blocking_timeout_ms(timeout)?,
            };
            let keys = keys.iter().map(|key| key.to_vec()).collect();
            single(command.into(), Shape::PoppedOrNil(keys))
        }
        _ => lock_command(name, rest),
    }
}

/// Engram's objects under names of their own (`LOCK.ACQUIRE`, `SEM.ACQUIRE`, …), from
/// locks on.
fn lock_command(name: &str, rest: &[&[u8]]) -> Result<Translated, Refusal> {
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("lock.acquire", 3 | 5) => {
            let command = LockCommand::Acquire {
                key: key(),
                owner: rest[1].to_vec(),
                lease_ms: lease_ms(rest[2])?,
                wait_ms: wait_option(&rest[3..])?,
            };
            single(command.into(), Shape::GrantOrNil)
        }
        ("lock.release", 3) => {
            let command = LockCommand::Release {
                key: key(),
                owner: rest[1].to_vec(),
                fence: unsigned(rest[2])?,
            };
            single(command.into(), Shape::Ok)
        }
        ("lock.renew", 4) => {
            let command = LockCommand::Renew {
                key: key(),
                owner: rest[1].to_vec(),
                fence: unsigned(rest[2])?,
                lease_ms: lease_ms(rest[3])?,
            };
            single(command.into(), Shape::GrantOrNil)
        }
        ("lock.holder", 1) => single(LockCommand::Holder { key: key() }.into(), Shape::LockHolder),
        _ => semaphore_command(name, rest),
    }
}

fn semaphore_command(name: &str, rest: &[&[u8]]) -> Result<Translated, Refusal> {
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("sem.acquire", n) if n >= 4 => {
            let (permits, wait_ms) = semaphore_options(&rest[4..])?;
            let command = SemaphoreCommand::Acquire {
                key: key(),
                capacity: parties(rest[1])?,
                owner: rest[2].to_vec(),
                lease_ms: lease_ms(rest[3])?,
                permits,
                wait_ms,
            };
            single(command.into(), Shape::GrantOrNil)
        }
        ("sem.release", 2) => {
            let command = SemaphoreCommand::Release {
                key: key(),
                permit_id: unsigned(rest[1])?,
            };
            single(command.into(), Shape::Ok)
        }
        ("sem.renew", 3) => {
            let command = SemaphoreCommand::Renew {
                key: key(),
                permit_id: unsigned(rest[1])?,
                lease_ms: lease_ms(rest[2])?,
            };
            single(command.into(), Shape::Ok)
        }
        ("sem.available", 2) => {
            let command = SemaphoreCommand::Available {
                key: key(),
                capacity: parties(rest[1])?,
            };
            single(command.into(), Shape::Available)
        }
        _ => waiting_command(name, rest),
    }
}

/// Barriers, latches and futures: the objects one waits on.
fn waiting_command(name: &str, rest: &[&[u8]]) -> Result<Translated, Refusal> {
    let key = || owned_key(rest[0]);
    match (name, rest.len()) {
        ("barrier.wait", 3) => {
            let command = BarrierCommand::Wait {
                key: key(),
                parties: parties(rest[1])?,
                timeout_ms: wait_ms(rest[2])?,
            };
            single(command.into(), Shape::BarrierPassed)
        }
        ("latch.set", 2) => {
            let command = LatchCommand::TrySetCount {
                key: key(),
                count: unsigned(rest[1])?,
            };
            single(command.into(), Shape::LatchSet)
        }
        ("latch.countdown", 1) => single(LatchCommand::CountDown { key: key() }.into(), Shape::LatchCount),
        ("latch.count", 1) => single(LatchCommand::Count { key: key() }.into(), Shape::LatchCount),
        ("latch.wait", 2) => {
            let command = LatchCommand::Wait {
                key: key(),
                timeout_ms: wait_ms(rest[1])?,
            };
            single(command.into(), Shape::LatchOpenOrNil)
        }
        ("future.set", 2) => {
            let command = FutureCommand::Complete {
                key: key(),
                value: rest[1].to_vec(),
            };
            single(command.into(), Shape::Ok)
        }
        ("future.get", 1 | 3) => {
            let command = FutureCommand::Get {
                key: key(),
                timeout_ms: wait_option(&rest[1..])?,
            };
            single(command.into(), Shape::AwaitedValueOrNil)
        }
        _ => Err(unknown_or_arity(name, rest)),
    }
}

/// Commands the door answers itself; `None` for the rest.
fn door_command(name: &str, rest: &[&[u8]]) -> Result<Option<DoorCommand>, Refusal> {
    let owned = |index: usize| rest[index].to_vec();
    Ok(Some(match (name, rest.len()) {
        ("ping", 0) => DoorCommand::Ping(None),
        ("ping", 1) => DoorCommand::Ping(Some(owned(0))),
        ("echo", 1) => DoorCommand::Echo(owned(0)),
        ("hello", _) => hello(rest)?,
        ("auth", 1) => DoorCommand::Auth {
            username: None,
            password: owned(0),
        },
        ("auth", 2) => DoorCommand::Auth {
            username: Some(owned(0)),
            password: owned(1),
        },
        ("select", 1) => DoorCommand::Select(integer(rest[0])?),
        ("client", n) if n >= 1 => client(rest)?,
        ("quit", 0) => DoorCommand::Quit,
        ("reset", 0) => DoorCommand::Reset,
        ("time", 0) => DoorCommand::Time,
        ("command", 0) => DoorCommand::Command(None),
        ("command", _) => DoorCommand::Command(Some(rest[0].to_ascii_lowercase())),
        ("config", 2) if rest[0].eq_ignore_ascii_case(b"get") => DoorCommand::ConfigGet(owned(1)),
        ("info", 0) => DoorCommand::Info(None),
        ("info", _) => DoorCommand::Info(Some(rest[0].to_ascii_lowercase())),
        ("ping" | "echo" | "auth" | "select" | "client" | "quit" | "reset" | "time" | "config", _) => {
            return Err(Refusal::arity(name))
        }
        _ => return Ok(None),
    }))
}

fn hello(rest: &[&[u8]]) -> Result<DoorCommand, Refusal> {
    let Some((version, mut options)) = rest.split_first() else {
        return Ok(DoorCommand::Hello {
            version: None,
            auth: None,
            name: None,
        });
    };
    let version = integer(version).map_err(|_| Refusal("NOPROTO unsupported protocol version".into()))?;
    let (mut auth, mut name) = (None, None);
    while let Some((option, after)) = options.split_first() {
        match (option.to_ascii_lowercase().as_slice(), after) {
            (b"auth", [username, password, more @ ..]) => {
                auth = Some((username.to_vec(), password.to_vec()));
                options = more;
            }
            (b"setname", [client_name, more @ ..]) => {
                name = Some(client_name.to_vec());
                options = more;
            }
            _ => return Err(Refusal("ERR Syntax error in HELLO option".into())),
        }
    }
    Ok(DoorCommand::Hello {
        version: Some(version),
        auth,
        name,
    })
}

fn client(rest: &[&[u8]]) -> Result<DoorCommand, Refusal> {
    let subcommand = rest[0].to_ascii_lowercase();
    Ok(match (subcommand.as_slice(), rest.len()) {
        (b"setname", 2) => DoorCommand::ClientSetName(rest[1].to_vec()),
        (b"getname", 1) => DoorCommand::ClientGetName,
        (b"id", 1) => DoorCommand::ClientId,
        (b"info", 1) => DoorCommand::ClientInfo,
        (b"setinfo", 3) | (b"no-evict" | b"no-touch", 2) => DoorCommand::ClientNoted,
        _ => {
            return Err(Refusal(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}' command",
                String::from_utf8_lossy(&subcommand)
            )))
        }
    })
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`: a plain `Set`, or a
/// `Replace` when it must answer the old value or keep the old expiry.
fn set(rest: &[&[u8]], now_unix_ms: u64) -> Result<Translated, Refusal> {
    let mut condition = SetCondition::Always;
    let mut ttl_ms = None;
    let mut keep_ttl = false;
    let mut get = false;
    let mut options = &rest[2..];
    while let Some((option, after)) = options.split_first() {
        let option = option.to_ascii_lowercase();
        let timed = ttl_ms.is_some() || keep_ttl;
        options = match (option.as_slice(), after) {
            (b"nx" | b"xx", more) if condition == SetCondition::Always => {
                condition = if option == b"nx" {
                    SetCondition::IfAbsent
                } else {
                    SetCondition::IfPresent
                };
                more
            }
            (b"get", more) if !get => {
                get = true;
                more
            }
            (b"keepttl", more) if !timed => {
                keep_ttl = true;
                more
            }
            (b"ex", [at, more @ ..]) if !timed => {
                ttl_ms = Some(seconds(at, "set")?);
                more
            }
            (b"px", [at, more @ ..]) if !timed => {
                ttl_ms = Some(milliseconds(at, "set")?);
                more
            }
            (b"exat", [at, more @ ..]) if !timed => {
                ttl_ms = Some(until(at, 1000, now_unix_ms)?);
                more
            }
            (b"pxat", [at, more @ ..]) if !timed => {
                ttl_ms = Some(until(at, 1, now_unix_ms)?);
                more
            }
            _ => return Err(Refusal::syntax()),
        };
    }
    let ttl_ms = ttl_ms.unwrap_or(0);
    if !get && !keep_ttl {
        return single(set_command(rest, ttl_ms, condition), Shape::OkOrNil);
    }
    let command = BytesCommand::Replace {
        key: owned_key(rest[0]),
        value: Some(rest[1].to_vec()),
        ttl_ms,
        keep_ttl,
        condition,
    };
    single(
        command.into(),
        if get { Shape::OldValue } else { Shape::ReplacedOkOrNil },
    )
}

/// `GETSET key value` (`value` set, no expiry) and `GETDEL key` (`None`).
fn replace(key: &[u8], value: Option<&[u8]>) -> Result<Translated, Refusal> {
    let command = BytesCommand::Replace {
        key: owned_key(key),
        value: value.map(<[u8]>::to_vec),
        ttl_ms: 0,
        keep_ttl: false,
        condition: SetCondition::Always,
    };
    single(command.into(), Shape::OldValue)
}

/// Milliseconds from `now_unix_ms` until the Unix time `at` (in units of `unit_ms`), as
/// a TTL; a moment passed (Redis refuses an expiry in the past for `SET`) or too far off
/// is refused.
fn until(at: &[u8], unit_ms: u64, now_unix_ms: u64) -> Result<u64, Refusal> {
    u64::try_from(integer(at)?)
        .ok()
        .and_then(|at| at.checked_mul(unit_ms))
        .and_then(|at_ms| at_ms.checked_sub(now_unix_ms))
        .filter(|ttl_ms| (1..=TTL_MS_MAX).contains(ttl_ms))
        .ok_or_else(|| Refusal::invalid_expire("set"))
}

fn set_command(key_and_value: &[&[u8]], ttl_ms: u64, condition: SetCondition) -> DataCommand {
    BytesCommand::Set {
        key: owned_key(key_and_value[0]),
        value: key_and_value[1].to_vec(),
        ttl_ms,
        condition,
    }
    .into()
}

/// `SETEX key seconds value` and `PSETEX`: the value is the last argument.
fn set_expiring(rest: &[&[u8]], ttl_ms: u64) -> DataCommand {
    set_command(&[rest[0], rest[2]], ttl_ms, SetCondition::Always)
}

fn add_integer(key: &[u8], delta: i64) -> DataCommand {
    BytesCommand::AddInteger {
        key: owned_key(key),
        delta,
    }
    .into()
}

fn map_get(key_and_field: &[&[u8]]) -> DataCommand {
    MapCommand::Get {
        key: owned_key(key_and_field[0]),
        field: key_and_field[1].to_vec(),
    }
    .into()
}

fn map_all(rest: &[&[u8]]) -> DataCommand {
    MapCommand::GetAll {
        key: owned_key(rest[0]),
    }
    .into()
}

fn pop(name: &str, key: &[u8], timeout_ms: u64) -> DataCommand {
    let end = if name == "lpop" {
        QueueEnd::Front
    } else {
        QueueEnd::Back
    };
    QueueCommand::Pop {
        key: owned_key(key),
        end,
        timeout_ms,
    }
    .into()
}

/// Longest command name the door knows (`latch.countdown`), with room to spare: a longer
/// name is unknown, whatever its case.
const COMMAND_NAME_BYTES_MAX: usize = 32;

/// `name` in lowercase, in `buffer` (no allocation per command); `None` when it is too
/// long or not UTF-8, so no command of the door's.
fn lowercase<'a>(name: &[u8], buffer: &'a mut [u8; COMMAND_NAME_BYTES_MAX]) -> Option<&'a str> {
    let lowered = buffer.get_mut(..name.len())?;
    lowered.copy_from_slice(name);
    lowered.make_ascii_lowercase();
    std::str::from_utf8(lowered).ok()
}

/// A key as a request carries it, with room for the namespace prefix the connection puts
/// in front of it (so prefixing moves it within its buffer instead of growing it).
fn owned_key(key: &[u8]) -> Vec<u8> {
    let mut owned = Vec::with_capacity(key.len() + 1 + NAMESPACE_BYTES_MAX);
    owned.extend_from_slice(key);
    owned
}

/// One request, whose answer is the reply.
fn single(command: DataCommand, shape: Shape) -> Result<Translated, Refusal> {
    Ok(Translated::Requests {
        array: None,
        parts: vec![Part { command, shape }],
        fold: None,
    })
}

fn folded(commands: impl Iterator<Item = DataCommand>, fold: Fold) -> Result<Translated, Refusal> {
    Ok(Translated::Requests {
        array: None,
        parts: commands
            .map(|command| Part {
                command,
                shape: Shape::Part(fold),
            })
            .collect(),
        fold: Some(fold),
    })
}

fn unknown_or_arity(name: &str, rest: &[&[u8]]) -> Refusal {
    if KNOWN.contains(&name) {
        return Refusal::arity(name);
    }
    let shown: Vec<String> = rest
        .iter()
        .take(8)
        .map(|arg| format!("'{}'", String::from_utf8_lossy(arg)))
        .collect();
    Refusal(format!(
        "ERR unknown command '{name}', with args beginning with: {}",
        shown.join(" ")
    ))
}

/// Every data command the door translates, so a wrong argument count is told apart from
/// an unknown name.
pub const KNOWN: &[&str] = &[
    "get",
    "set",
    "setnx",
    "getset",
    "getdel",
    "setex",
    "psetex",
    "mget",
    "mset",
    "del",
    "unlink",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "append",
    "strlen",
    "getrange",
    "substr",
    "setrange",
    "exists",
    "type",
    "ttl",
    "pttl",
    "persist",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "scan",
    "dbsize",
    "hset",
    "hmset",
    "hget",
    "hexists",
    "hmget",
    "hdel",
    "hgetall",
    "hkeys",
    "hvals",
    "hlen",
    "hincrby",
    "lpush",
    "rpush",
    "lpop",
    "rpop",
    "llen",
    "blpop",
    "brpop",
    "lock.acquire",
    "lock.release",
    "lock.renew",
    "lock.holder",
    "sem.acquire",
    "sem.release",
    "sem.renew",
    "sem.available",
    "barrier.wait",
    "latch.set",
    "latch.countdown",
    "latch.count",
    "latch.wait",
    "future.set",
    "future.get",
];

/// A decimal i64, as Redis reads one.
fn integer(arg: &[u8]) -> Result<i64, Refusal> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(Refusal::not_an_integer)
}

fn unsigned(arg: &[u8]) -> Result<u64, Refusal> {
    u64::try_from(integer(arg)?).map_err(|_| Refusal::not_an_integer())
}

/// An expiry in seconds as milliseconds: positive, within `TTL_MS_MAX`.
fn seconds(arg: &[u8], name: &str) -> Result<u64, Refusal> {
    let seconds = integer(arg)?;
    u64::try_from(seconds)
        .ok()
        .and_then(|seconds| seconds.checked_mul(1000))
        .filter(|ms| (1..=TTL_MS_MAX).contains(ms))
        .ok_or_else(|| Refusal::invalid_expire(name))
}

/// An expiry in milliseconds: positive, within `TTL_MS_MAX`.
fn milliseconds(arg: &[u8], name: &str) -> Result<u64, Refusal> {
    u64::try_from(integer(arg)?)
        .ok()
        .filter(|ms| (1..=TTL_MS_MAX).contains(ms))
        .ok_or_else(|| Refusal::invalid_expire(name))
}

fn lease_ms(arg: &[u8]) -> Result<u64, Refusal> {
    u64::try_from(integer(arg)?)
        .ok()
        .filter(|ms| (1..=LEASE_MS_MAX).contains(ms))
        .ok_or_else(|| Refusal(format!("ERR lease-ms must be 1..={LEASE_MS_MAX} (lease_ms_max)")))
}

fn wait_ms(arg: &[u8]) -> Result<u64, Refusal> {
    u64::try_from(integer(arg)?)
        .ok()
        .filter(|ms| *ms <= WAIT_MS_MAX)
        .ok_or_else(|| Refusal(format!("ERR wait must be 0..={WAIT_MS_MAX} ms (wait_ms_max)")))
}

/// `[WAIT ms]` after a command's fixed arguments; 0 without.
fn wait_option(options: &[&[u8]]) -> Result<u64, Refusal> {
    match options {
        [] => Ok(0),
        [option, ms] if option.eq_ignore_ascii_case(b"wait") => wait_ms(ms),
        _ => Err(Refusal::syntax()),
    }
}

/// `[PERMITS n] [WAIT ms]` of `SEM.ACQUIRE`, in either order.
fn semaphore_options(mut options: &[&[u8]]) -> Result<(u32, u64), Refusal> {
    let (mut permits, mut wait) = (1, 0);
    while let [option, value, more @ ..] = options {
        match option.to_ascii_lowercase().as_slice() {
            b"permits" => permits = parties(value)?,
            b"wait" => wait = wait_ms(value)?,
            _ => return Err(Refusal::syntax()),
        }
        options = more;
    }
    if !options.is_empty() {
        return Err(Refusal::syntax());
    }
    Ok((permits, wait))
}

/// A count of parties, permits or capacity: 1..=`PARTIES_MAX`.
fn parties(arg: &[u8]) -> Result<u32, Refusal> {
    u32::try_from(integer(arg)?)
        .ok()
        .filter(|count| (1..=PARTIES_MAX).contains(count))
        .ok_or_else(|| Refusal(format!("ERR count must be 1..={PARTIES_MAX} (parties_max)")))
}

/// A blocking pop's timeout: seconds, possibly fractional, 0 for as long as a wait may
/// last (`WAIT_MS_MAX`: Engram parks nothing forever).
fn blocking_timeout_ms(arg: &[u8]) -> Result<u64, Refusal> {
    let seconds: f64 = std::str::from_utf8(arg)
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|seconds: &f64| seconds.is_finite() && *seconds >= 0.0)
        .ok_or_else(|| Refusal("ERR timeout is not a float or out of range".into()))?;
    if seconds == 0.0 {
        return Ok(WAIT_MS_MAX);
    }
    Ok(((seconds * 1000.0).ceil() as u64).clamp(1, WAIT_MS_MAX))
}
