//! What any key answers, whatever object it holds: the kind of object, and its expiry.
//! Only bytes values and counters expire; coordination objects never do (they end when
//! they hold nothing worth keeping).

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

/// Bits of a shard's scan cursor: a `Scan` answers cursors below `1 << 50`, so a door
/// can put a slot (14 bits) above one and hand the client a single 64-bit cursor.
pub const SHARD_SCAN_CURSOR_BITS: u32 = 50;

// Every 64-bit cluster cursor names a slot, and every slot fits one.
const _: () = assert!(crate::limits::SLOT_COUNT as u64 == 1 << (64 - SHARD_SCAN_CURSOR_BITS));

/// A scan cursor over a whole cluster: shard cursor `shard_cursor` at the shard whose
/// first slot is `slot`. 0 only at the start, as a shard's cursor is never 0 midway.
pub fn cluster_scan_cursor(slot: u32, shard_cursor: u64) -> u64 {
    u64::from(slot) << SHARD_SCAN_CURSOR_BITS | shard_cursor
}

/// A cluster cursor's slot and shard cursor.
pub fn split_cluster_scan_cursor(cursor: u64) -> (u32, u64) {
    (
        (cursor >> SHARD_SCAN_CURSOR_BITS) as u32,
        cursor & ((1 << SHARD_SCAN_CURSOR_BITS) - 1),
    )
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KeyCommand {
    /// The kind of object the key holds.
    Kind { key: Vec<u8> },
    /// Expires the key `ttl_ms` from now (at least 1), if `condition` holds, as Redis's
    /// `PEXPIRE` with `NX`/`XX`/`GT`/`LT`.
    Expire {
        key: Vec<u8>,
        ttl_ms: u64,
        condition: ExpireCondition,
    },
    /// What is left of the key's time to live.
    Ttl { key: Vec<u8> },
    /// Takes the key's expiry away.
    Persist { key: Vec<u8> },
    /// A page of the keys of `key`'s namespace held by the shard that serves `key`'s
    /// slot (`key` only routes: any key of a slot of that shard will do), resuming at
    /// `cursor` (0: from the start). The shard takes at most `count` steps (clamped to
    /// [`crate::limits::SCAN_COUNT_MAX`]), and lists only keys whose name matches the
    /// glob `pattern` and whose object is of `kind`, when given.
    Scan {
        key: Vec<u8>,
        cursor: u64,
        count: u32,
        pattern: Option<Vec<u8>>,
        kind: Option<ObjectKind>,
    },
    /// How many keys of `key`'s namespace the shard serving `key`'s slot holds (`key`
    /// only routes, as for `Scan`).
    Count { key: Vec<u8> },
}

/// When an `Expire` applies, as Redis's options say (a key without an expiry counts as
/// expiring never: later than any time).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    Always,
    /// Only if the key has no expiry (`NX`).
    IfNone,
    /// Only if the key has one (`XX`).
    IfSome,
    /// Only if the new expiry is later than the current one (`GT`).
    IfLater,
    /// Only if the new expiry is sooner than the current one (`LT`).
    IfSooner,
}

/// The kinds of object a key can hold.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Bytes,
    Counter,
    Lock,
    Semaphore,
    Barrier,
    Latch,
    Future,
    Map,
    Queue,
}

impl ObjectKind {
    /// The name `TYPE` answers: Redis's for the kinds it has (`string`, `hash`, `list`),
    /// Engram's own for the rest.
    pub fn type_name(self) -> &'static str {
        match self {
            ObjectKind::Bytes => "string",
            ObjectKind::Counter => "counter",
            ObjectKind::Lock => "lock",
            ObjectKind::Semaphore => "semaphore",
            ObjectKind::Barrier => "barrier",
            ObjectKind::Latch => "latch",
            ObjectKind::Future => "future",
            ObjectKind::Map => "hash",
            ObjectKind::Queue => "list",
        }
    }

    /// The kind `TYPE` names `name` (lowercase), as `SCAN ... TYPE` reads it.
    pub fn from_type_name(name: &[u8]) -> Option<ObjectKind> {
        ObjectKind::ALL
            .into_iter()
            .find(|kind| kind.type_name().as_bytes() == name)
    }

    pub const ALL: [ObjectKind; 9] = [
        ObjectKind::Bytes,
        ObjectKind::Counter,
        ObjectKind::Lock,
        ObjectKind::Semaphore,
        ObjectKind::Barrier,
        ObjectKind::Latch,
        ObjectKind::Future,
        ObjectKind::Map,
        ObjectKind::Queue,
    ];
}

keyed_variants!(KeyCommand {
    Kind,
    Expire,
    Ttl,
    Persist,
    Scan,
    Count
});

impl KeyCommand {
    pub fn is_mutation(&self) -> bool {
        matches!(self, KeyCommand::Expire { .. } | KeyCommand::Persist { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        0
    }

    pub fn name(&self) -> &'static str {
        match self {
            KeyCommand::Kind { .. } => "type",
            KeyCommand::Expire { .. } => "expire",
            KeyCommand::Ttl { .. } => "ttl",
            KeyCommand::Persist { .. } => "persist",
            KeyCommand::Scan { .. } => "scan",
            KeyCommand::Count { .. } => "count",
        }
    }
}
