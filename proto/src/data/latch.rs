//! Count-down latches: set once, counted down, waited on until they reach zero.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LatchCommand {
    TrySetCount { key: Vec<u8>, count: u64 },
    CountDown { key: Vec<u8> },
    Count { key: Vec<u8> },
    Wait { key: Vec<u8>, timeout_ms: u64 },
}

keyed_variants!(LatchCommand {
    TrySetCount,
    CountDown,
    Count,
    Wait
});

impl LatchCommand {
    pub fn is_mutation(&self) -> bool {
        matches!(self, LatchCommand::TrySetCount { .. } | LatchCommand::CountDown { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        match self {
            LatchCommand::Wait { timeout_ms, .. } => *timeout_ms,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            LatchCommand::TrySetCount { .. } => "latch_try_set_count",
            LatchCommand::CountDown { .. } => "latch_count_down",
            LatchCommand::Count { .. } => "latch_count",
            LatchCommand::Wait { .. } => "latch_wait",
        }
    }
}
