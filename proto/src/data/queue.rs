//! Double-ended queues, with pops that wait for a push.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum QueueCommand {
    Push {
        key: Vec<u8>,
        value: Vec<u8>,
        end: QueueEnd,
    },
    Pop {
        key: Vec<u8>,
        end: QueueEnd,
        /// 0: answer at once (Missing when empty).
        timeout_ms: u64,
    },
    Len {
        key: Vec<u8>,
    },
    /// Pops from the first of `key` and `more_keys` (in that order) that holds an item,
    /// or waits up to `timeout_ms` for a push to any of them (Redis's `BLPOP` of several
    /// keys). Every key must share `key`'s slot; answered `Popped`, with which key.
    PopAny {
        key: Vec<u8>,
        more_keys: Vec<Vec<u8>>,
        end: QueueEnd,
        /// 0: answer at once (Missing when all are empty).
        timeout_ms: u64,
    },
}

/// Which end of a queue an operation works on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueEnd {
    Front,
    Back,
}

keyed_variants!(QueueCommand { Push, Pop, Len, PopAny });

impl QueueCommand {
    pub fn is_mutation(&self) -> bool {
        !matches!(self, QueueCommand::Len { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        match self {
            QueueCommand::Pop { timeout_ms, .. } | QueueCommand::PopAny { timeout_ms, .. } => *timeout_ms,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            QueueCommand::Push { .. } => "queue_push",
            QueueCommand::Pop { .. } => "queue_pop",
            QueueCommand::Len { .. } => "queue_len",
            QueueCommand::PopAny { .. } => "queue_pop_any",
        }
    }
}
