//! What any key answers, whatever object it holds: the kind of object, and its expiry.
//! Only bytes values and counters expire; coordination objects never do (they end when
//! they hold nothing worth keeping).

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

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
}

keyed_variants!(KeyCommand {
    Kind,
    Expire,
    Ttl,
    Persist
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
        }
    }
}
