//! Native answers as Redis replies: each request of a translated command carries the
//! [`Shape`] its answer takes, and a multi-key command folds its parts' answers into one
//! reply ([`Fold`]) as they are written, in order.

use engram_proto::resp::ReplyWriter;
use engram_proto::{cluster_scan_cursor, ErrorCode, ErrorReply, Response};

/// How one native answer is written as (part of) a Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `+OK` once written; nil when a condition held the write back (`SET NX`).
    OkOrNil,
    /// 1 once written, 0 when a condition held it back (`SETNX`).
    WrittenFlag,
    /// The value; nil when absent (`GET`, `HGET`, `LPOP`).
    ValueOrNil,
    /// A value waited for; nil when it is not there in time (`FUTURE.GET`).
    AwaitedValueOrNil,
    /// The value; empty when absent (`GETRANGE`).
    ValueOrEmpty,
    /// An integer result (`INCR`, `HINCRBY`).
    Integer,
    /// A length, 0 when absent (`APPEND`, `SETRANGE`, `STRLEN`, `LPUSH`, `LLEN`).
    Length,
    /// 1 when the key or field existed, else 0 (`HDEL` of one field).
    ExistedFlag,
    /// 1 when the field is there, else 0 (`HEXISTS`).
    PresentFlag,
    /// A map's fields and values (`HGETALL`), its fields (`HKEYS`), its values (`HVALS`)
    /// or their count (`HLEN`).
    Fields(FieldsShape),
    /// A popped value with the key it came from; a nil array when the wait ran out
    /// (`BLPOP`).
    KeyAndValueOrNil(Vec<u8>),
    /// The same for a pop of several keys, which answers the index of the key it popped
    /// from (`BLPOP` of several keys).
    PoppedOrNil(Vec<Vec<u8>>),
    /// A fence or permit id; nil when it was not granted in time (`LOCK.ACQUIRE`,
    /// `SEM.ACQUIRE`).
    GrantOrNil,
    /// `+OK` once released, renewed, set or opened (`LOCK.RELEASE`, `FUTURE.SET`).
    Ok,
    /// The lock's holder as `[owner, fence, lease-remaining-ms]`; nil when free.
    LockHolder,
    /// Free permits (`SEM.AVAILABLE`).
    Available,
    /// `[generation, arrival-index]` (`BARRIER.WAIT`).
    BarrierPassed,
    /// 1 when the latch was set, 0 when it was still counting (`LATCH.SET`).
    LatchSet,
    /// The latch's count (`LATCH.COUNT`, `LATCH.COUNTDOWN`: 0 once open).
    LatchCount,
    /// `+OK` when the latch opened; nil when the wait ran out (`LATCH.WAIT`).
    LatchOpenOrNil,
    /// The value a `Replace` replaced; nil when there was none (`SET … GET`, `GETSET`,
    /// `GETDEL`).
    OldValue,
    /// `+OK` when a `Replace` wrote; nil when its condition held it back (`SET … KEEPTTL`).
    ReplacedOkOrNil,
    /// The key's type name, `none` when absent (`TYPE`).
    TypeName,
    /// What is left of a key's time to live, in seconds (rounded) or milliseconds: -2
    /// when the key is absent, -1 when it does not expire (`TTL`, `PTTL`).
    Ttl { in_seconds: bool },
    /// 1 when the expiry changed, else 0 (`EXPIRE`, `PERSIST`).
    ChangedFlag,
    /// A scan page as `[cursor, [key, ...]]`: the client's cursor is made of the shard's
    /// (see `resp/scan.rs`), at `slot`, or the start of the shard at `next_slot` once
    /// this one is done (0: the scan is over).
    KeysPage { slot: u32, next_slot: Option<u32> },
    /// One part of a multi-key command: folded, nothing written.
    Part(Fold),
}

/// Which view of a map's entries a reply gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldsShape {
    All,
    Names,
    Values,
    Count,
}

/// How the parts of a multi-key command add up to its reply, written after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// The number of parts whose key existed (`DEL`, `UNLINK`, `EXISTS`).
    CountExisting,
    /// The number of parts that created a field (`HSET`).
    CountCreated,
    /// `+OK` when every part was written, else the first error (`MSET`).
    AllWritten,
    /// The last part's length (`RPUSH` of several values).
    LastLength,
    /// The sum of the parts' key counts (`DBSIZE`).
    SumOfCounts,
}

/// What the parts of a multi-key command folded so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    count: i64,
    last_length: i64,
    error: Option<String>,
}

impl Folded {
    /// Folds one part's answer in.
    pub fn add(&mut self, fold: Fold, response: &Response) {
        if let Response::Error(reply) = response {
            self.error.get_or_insert_with(|| error_line(reply));
            return;
        }
        match (fold, response) {
            (Fold::CountExisting, Response::Deleted { existed: true } | Response::Value { .. }) => self.count += 1,
            (Fold::CountExisting, Response::KeyKind { .. }) => self.count += 1,
            (Fold::CountCreated, Response::FieldStored { created: true }) => self.count += 1,
            (Fold::SumOfCounts, Response::KeyCount { count }) => self.count = self.count.saturating_add(clamp(*count)),
            (Fold::LastLength, Response::QueueLength { length }) => {
                self.last_length = i64::try_from(*length).unwrap_or(i64::MAX)
            }
            _ => {}
        }
    }

    /// Writes the folded reply.
    pub fn finish(self, fold: Fold, out: &mut ReplyWriter<'_>) {
        if let Some(line) = self.error {
            out.error(line);
            return;
        }
        match fold {
            Fold::CountExisting | Fold::CountCreated | Fold::SumOfCounts => out.integer(self.count),
            Fold::AllWritten => out.ok(),
            Fold::LastLength => out.integer(self.last_length),
        }
    }
}

/// Writes `response` as `shape` says. An error answer is written as Redis's error line
/// whatever the shape (see [`error_line`]).
pub fn write(shape: &Shape, response: &Response, out: &mut ReplyWriter<'_>) {
    if let Response::Error(reply) = response {
        let waited = matches!(
            shape,
            Shape::GrantOrNil
                | Shape::LatchOpenOrNil
                | Shape::KeyAndValueOrNil(_)
                | Shape::PoppedOrNil(_)
                | Shape::AwaitedValueOrNil
        );
        if !waited || ErrorCode::from_u16(reply.code) != Some(ErrorCode::Timeout) {
            out.error(error_line(reply));
            return;
        }
    }
    write_value(shape, response, out);
}

/// Answers of values, hashes and lists; then [`write_coordination`].
fn write_value(shape: &Shape, response: &Response, out: &mut ReplyWriter<'_>) {
    match (shape, response) {
        (Shape::OkOrNil, Response::Written { .. }) | (Shape::Ok, _) => out.ok(),
        (Shape::OkOrNil, Response::Conflict { .. }) => out.null(),
        (Shape::WrittenFlag, Response::Written { .. }) => out.integer(1),
        (Shape::WrittenFlag, Response::Conflict { .. }) => out.integer(0),
        (Shape::ValueOrNil, Response::Value { value, .. }) => out.bulk(value),
        (Shape::ValueOrNil, Response::Missing) => out.null(),
        (Shape::AwaitedValueOrNil, Response::Value { value, .. }) => out.bulk(value),
        (Shape::AwaitedValueOrNil, _) => out.null(),
        (Shape::ValueOrEmpty, Response::Value { value, .. }) => out.bulk(value),
        (Shape::ValueOrEmpty, Response::Missing) => out.bulk(b""),
        (Shape::Integer, Response::Counter { value }) => out.integer(*value),
        (Shape::Length, response) => out.integer(length_of(response)),
        (Shape::ExistedFlag, Response::Deleted { existed }) => out.integer(i64::from(*existed)),
        (Shape::PresentFlag, response) => out.integer(i64::from(matches!(response, Response::Value { .. }))),
        (Shape::Fields(view), Response::MapEntries(entries)) => write_fields(*view, entries, out),
        (Shape::Fields(view), Response::Missing) => write_fields(*view, &[], out),
        (Shape::KeyAndValueOrNil(key), Response::Value { value, .. }) => {
            out.array(2);
            out.bulk(key);
            out.bulk(value);
        }
        (Shape::KeyAndValueOrNil(_), _) => out.null_array(),
        (Shape::PoppedOrNil(keys), Response::Popped { key_index, value, .. }) => {
            out.array(2);
            out.bulk(keys.get(*key_index as usize).map_or(&[][..], Vec::as_slice));
            out.bulk(value);
        }
        (Shape::PoppedOrNil(_), _) => out.null_array(),
        (Shape::OldValue, Response::Replaced { old: Some(old), .. }) => out.bulk(old),
        (Shape::OldValue, Response::Replaced { old: None, .. }) => out.null(),
        (Shape::ReplacedOkOrNil, Response::Replaced { written: true, .. }) => out.ok(),
        (Shape::ReplacedOkOrNil, Response::Replaced { written: false, .. }) => out.null(),
        _ => write_coordination(shape, response, out),
    }
}

/// Answers of locks, semaphores, barriers and latches; then [`write_key_answer`].
fn write_coordination(shape: &Shape, response: &Response, out: &mut ReplyWriter<'_>) {
    match (shape, response) {
        (Shape::GrantOrNil, Response::LockGranted { fence, .. }) => out.integer(clamp(*fence)),
        (Shape::GrantOrNil, Response::SemaphoreGranted { permit_id, .. }) => out.integer(clamp(*permit_id)),
        (Shape::GrantOrNil, _) => out.null(),
        (Shape::LockHolder, Response::LockHolder { holder: Some(holder) }) => {
            out.array(3);
            out.bulk(&holder.owner);
            out.integer(clamp(holder.fence));
            out.integer(clamp(holder.lease_remaining_ms));
        }
        (Shape::LockHolder, Response::LockHolder { holder: None }) => out.null(),
        (Shape::Available, Response::SemaphoreAvailable { available, .. }) => out.integer(i64::from(*available)),
        (
            Shape::BarrierPassed,
            Response::BarrierPassed {
                generation,
                arrival_index,
            },
        ) => {
            out.array(2);
            out.integer(clamp(*generation));
            out.integer(i64::from(*arrival_index));
        }
        (Shape::LatchSet, Response::LatchSet { set, .. }) => out.integer(i64::from(*set)),
        (Shape::LatchCount, Response::LatchCount { count }) => out.integer(clamp(*count)),
        (Shape::LatchCount, Response::LatchOpen) => out.integer(0),
        (Shape::LatchOpenOrNil, Response::LatchOpen) => out.ok(),
        (Shape::LatchOpenOrNil, _) => out.null(),
        _ => write_key_answer(shape, response, out),
    }
}

/// Answers about keys (type, TTL, scan pages); an answer no shape takes is written as
/// an internal error.
fn write_key_answer(shape: &Shape, response: &Response, out: &mut ReplyWriter<'_>) {
    match (shape, response) {
        (Shape::TypeName, Response::KeyKind { kind }) => out.simple(kind.type_name()),
        (Shape::TypeName, Response::Missing) => out.simple("none"),
        (Shape::Ttl { .. }, Response::Missing) => out.integer(-2),
        (Shape::Ttl { .. }, Response::Ttl { ttl_ms: None }) => out.integer(-1),
        (Shape::Ttl { in_seconds }, Response::Ttl { ttl_ms: Some(ttl_ms) }) => {
            // Redis rounds a TTL in seconds to the nearest second.
            let shown = if *in_seconds { (ttl_ms + 500) / 1000 } else { *ttl_ms };
            out.integer(clamp(shown))
        }
        (Shape::ChangedFlag, Response::ExpiryChanged { changed }) => out.integer(i64::from(*changed)),
        (Shape::ChangedFlag, Response::Missing) => out.integer(0),
        (Shape::KeysPage { slot, next_slot }, Response::Keys { keys, cursor }) => {
            let next = match (cursor, next_slot) {
                (0, Some(next_slot)) => cluster_scan_cursor(*next_slot, 0),
                (0, None) => 0,
                (cursor, _) => cluster_scan_cursor(*slot, *cursor),
            };
            out.array(2);
            out.bulk(next.to_string().as_bytes());
            out.array(keys.len());
            for key in keys {
                out.bulk(key);
            }
        }
        (shape, response) => out.error(format!(
            "ERR internal: a {} answer cannot be written as {shape:?}",
            response.name()
        )),
    }
}

fn write_fields(view: FieldsShape, entries: &[engram_proto::MapEntry], out: &mut ReplyWriter<'_>) {
    match view {
        FieldsShape::All => {
            out.map(entries.len());
            for entry in entries {
                out.bulk(&entry.field);
                out.bulk(&entry.value);
            }
        }
        FieldsShape::Names | FieldsShape::Values => {
            out.array(entries.len());
            for entry in entries {
                out.bulk(if view == FieldsShape::Names {
                    &entry.field
                } else {
                    &entry.value
                });
            }
        }
        FieldsShape::Count => out.integer(entries.len() as i64),
    }
}

fn length_of(response: &Response) -> i64 {
    let length = match response {
        Response::Appended { length, .. }
        | Response::RangeWritten { length, .. }
        | Response::ValueLength { length }
        | Response::QueueLength { length } => *length,
        _ => 0,
    };
    clamp(length)
}

/// Redis integers are signed; Engram's counts, fences and ids stay far below 2^63.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Redis's error line for a native error: the prefix clients sort errors by (`WRONGTYPE`,
/// `OOM`, Redis Cluster's `TRYAGAIN`, and Engram's own for what Redis has no word for),
/// then the server's message.
pub fn error_line(reply: &ErrorReply) -> String {
    let prefix = match ErrorCode::from_u16(reply.code) {
        Some(ErrorCode::WrongType) => "WRONGTYPE",
        Some(ErrorCode::CrossSlot) => "CROSSSLOT",
        Some(ErrorCode::OutOfMemory) => "OOM",
        Some(ErrorCode::TryAgain | ErrorCode::Moved | ErrorCode::WrongShard | ErrorCode::Busy) => "TRYAGAIN",
        Some(ErrorCode::Unauthorized) => "NOAUTH",
        Some(ErrorCode::NotHolder) => "NOTHOLDER",
        Some(ErrorCode::Timeout) => "TIMEOUT",
        Some(ErrorCode::BarrierBroken) => "BROKEN",
        Some(ErrorCode::AlreadyCompleted) => "COMPLETED",
        Some(ErrorCode::ObjectDeleted) => "DELETED",
        Some(ErrorCode::SlotLost) => "SLOTLOST",
        Some(ErrorCode::ShuttingDown) => "SHUTDOWN",
        _ => "ERR",
    };
    format!("{prefix} {}", reply.message)
}
