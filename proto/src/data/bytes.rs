//! Byte strings with a version per write, optional expiry and compare-and-set, read and
//! written whole or by range.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BytesCommand {
    Get {
        key: Vec<u8>,
    },
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        /// 0: no expiry.
        ttl_ms: u64,
        condition: SetCondition,
    },
    Del {
        key: Vec<u8>,
    },
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// The bytes from `start` through `end`, both included and each counted from the end
    /// when negative (-1 is the last byte), as Redis's `GETRANGE`: a range reaching past
    /// either end is cut to the value.
    GetRange {
        key: Vec<u8>,
        start: i64,
        end: i64,
    },
    /// Overwrites the value from `offset` with `value`, padding with zero bytes when
    /// `offset` is past its end, as Redis's `SETRANGE`: creates the key when absent
    /// (unless `value` is empty) and keeps its expiry.
    SetRange {
        key: Vec<u8>,
        offset: u64,
        value: Vec<u8>,
    },
    /// The value's length in bytes.
    Len {
        key: Vec<u8>,
    },
    /// Adds `delta` to a value that holds a decimal integer (an absent key counts as 0),
    /// as Redis's `INCRBY`: the value stays bytes (`"41"` becomes `"42"`) and keeps its
    /// expiry. A value that is not an integer in canonical form, or a sum that does not
    /// fit in an i64, is refused. Counters are the typed alternative.
    AddInteger {
        key: Vec<u8>,
        delta: i64,
    },
    /// Writes `value` (or, when `None`, deletes the key) if `condition` holds, and
    /// answers the value it replaced (`Replaced`), as Redis's `SET … GET`, `GETSET` and
    /// `GETDEL`. The expiry is `ttl_ms` from now (0: none), or the replaced value's
    /// when `keep_ttl` (Redis's `KEEPTTL`).
    Replace {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        ttl_ms: u64,
        keep_ttl: bool,
        condition: SetCondition,
    },
}

/// Condition of a bytes `Set`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    /// Only if the key does not exist (Redis `SET NX`).
    IfAbsent,
    /// Only if the key exists with exactly this version (compare-and-set).
    IfVersion(u64),
    /// Only if the key exists (Redis `SET XX`).
    IfPresent,
}

keyed_variants!(BytesCommand {
    Get,
    Set,
    Del,
    Append,
    GetRange,
    SetRange,
    Len,
    AddInteger,
    Replace
});

impl BytesCommand {
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            BytesCommand::Get { .. } | BytesCommand::GetRange { .. } | BytesCommand::Len { .. }
        )
    }

    pub fn wait_ms(&self) -> u64 {
        0
    }

    pub fn name(&self) -> &'static str {
        match self {
            BytesCommand::Get { .. } => "get",
            BytesCommand::Set { .. } => "set",
            BytesCommand::Del { .. } => "del",
            BytesCommand::Append { .. } => "append",
            BytesCommand::GetRange { .. } => "getrange",
            BytesCommand::SetRange { .. } => "setrange",
            BytesCommand::Len { .. } => "strlen",
            BytesCommand::AddInteger { .. } => "incrby",
            BytesCommand::Replace { .. } => "replace",
        }
    }
}
