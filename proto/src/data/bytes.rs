//! Byte strings with a version per write, optional expiry and compare-and-set.

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
}

/// Condition of a bytes `Set`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    /// Only if the key does not exist (Redis `SET NX`).
    IfAbsent,
    /// Only if the key exists with exactly this version (compare-and-set).
    IfVersion(u64),
}

keyed_variants!(BytesCommand { Get, Set, Del, Append });

impl BytesCommand {
    pub fn is_mutation(&self) -> bool {
        !matches!(self, BytesCommand::Get { .. })
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
        }
    }
}
