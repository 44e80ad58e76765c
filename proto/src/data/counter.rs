//! Signed 64-bit counters; a missing counter reads as 0 and arithmetic never wraps.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CounterCommand {
    Get { key: Vec<u8> },
    Add { key: Vec<u8>, delta: i64 },
    Set { key: Vec<u8>, value: i64 },
    Cas { key: Vec<u8>, expected: i64, new: i64 },
}

keyed_variants!(CounterCommand { Get, Add, Set, Cas });

impl CounterCommand {
    pub fn is_mutation(&self) -> bool {
        !matches!(self, CounterCommand::Get { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        0
    }

    pub fn name(&self) -> &'static str {
        match self {
            CounterCommand::Get { .. } => "counter_get",
            CounterCommand::Add { .. } => "counter_add",
            CounterCommand::Set { .. } => "counter_set",
            CounterCommand::Cas { .. } => "counter_cas",
        }
    }
}
