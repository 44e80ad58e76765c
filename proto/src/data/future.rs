//! Write-once futures: completed once, read (and waited on) by anyone.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FutureCommand {
    Complete {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
        /// 0: answer at once.
        timeout_ms: u64,
    },
}

keyed_variants!(FutureCommand { Complete, Get });

impl FutureCommand {
    pub fn is_mutation(&self) -> bool {
        matches!(self, FutureCommand::Complete { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        match self {
            FutureCommand::Get { timeout_ms, .. } => *timeout_ms,
            FutureCommand::Complete { .. } => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FutureCommand::Complete { .. } => "future_complete",
            FutureCommand::Get { .. } => "future_get",
        }
    }
}
