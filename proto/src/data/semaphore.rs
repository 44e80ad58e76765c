//! Leased counting semaphores: `capacity` permits, fixed by the first use.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SemaphoreCommand {
    Acquire {
        key: Vec<u8>,
        owner: Vec<u8>,
        capacity: u32,
        permits: u32,
        lease_ms: u64,
        wait_ms: u64,
    },
    Release {
        key: Vec<u8>,
        permit_id: u64,
    },
    Renew {
        key: Vec<u8>,
        permit_id: u64,
        lease_ms: u64,
    },
    Available {
        key: Vec<u8>,
        capacity: u32,
    },
}

keyed_variants!(SemaphoreCommand {
    Acquire,
    Release,
    Renew,
    Available
});

impl SemaphoreCommand {
    pub fn is_mutation(&self) -> bool {
        !matches!(self, SemaphoreCommand::Available { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        match self {
            SemaphoreCommand::Acquire { wait_ms, .. } => *wait_ms,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SemaphoreCommand::Acquire { .. } => "semaphore_acquire",
            SemaphoreCommand::Release { .. } => "semaphore_release",
            SemaphoreCommand::Renew { .. } => "semaphore_renew",
            SemaphoreCommand::Available { .. } => "semaphore_available",
        }
    }
}
