//! Maps of fields to bytes.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MapCommand {
    Get {
        key: Vec<u8>,
        field: Vec<u8>,
    },
    Set {
        key: Vec<u8>,
        field: Vec<u8>,
        value: Vec<u8>,
    },
    Del {
        key: Vec<u8>,
        field: Vec<u8>,
    },
    GetAll {
        key: Vec<u8>,
    },
    /// Adds to a field holding a decimal i64 (a missing field counts as 0), as Redis HINCRBY.
    Incr {
        key: Vec<u8>,
        field: Vec<u8>,
        delta: i64,
    },
    /// `Set`, answering whether the field is new (`FieldStored`), as Redis's `HSET`.
    Put {
        key: Vec<u8>,
        field: Vec<u8>,
        value: Vec<u8>,
    },
}

keyed_variants!(MapCommand {
    Get,
    Set,
    Del,
    GetAll,
    Incr,
    Put
});

impl MapCommand {
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            MapCommand::Set { .. } | MapCommand::Del { .. } | MapCommand::Incr { .. } | MapCommand::Put { .. }
        )
    }

    pub fn wait_ms(&self) -> u64 {
        0
    }

    pub fn name(&self) -> &'static str {
        match self {
            MapCommand::Get { .. } => "map_get",
            MapCommand::Set { .. } => "map_set",
            MapCommand::Del { .. } => "map_del",
            MapCommand::GetAll { .. } => "map_get_all",
            MapCommand::Incr { .. } => "map_incr",
            MapCommand::Put { .. } => "map_put",
        }
    }
}
