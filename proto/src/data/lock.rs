//! Fenced, leased, FIFO locks. `owner` names the holder (for example one per function
//! invocation); a lease that is not renewed releases the lock.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LockCommand {
    Acquire {
        key: Vec<u8>,
        owner: Vec<u8>,
        lease_ms: u64,
        /// 0: answer at once (try-acquire).
        wait_ms: u64,
    },
    Release {
        key: Vec<u8>,
        owner: Vec<u8>,
        fence: u64,
    },
    Renew {
        key: Vec<u8>,
        owner: Vec<u8>,
        fence: u64,
        lease_ms: u64,
    },
    Holder {
        key: Vec<u8>,
    },
}

keyed_variants!(LockCommand {
    Acquire,
    Release,
    Renew,
    Holder
});

impl LockCommand {
    pub fn is_mutation(&self) -> bool {
        !matches!(self, LockCommand::Holder { .. })
    }

    pub fn wait_ms(&self) -> u64 {
        match self {
            LockCommand::Acquire { wait_ms, .. } => *wait_ms,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            LockCommand::Acquire { .. } => "lock_acquire",
            LockCommand::Release { .. } => "lock_release",
            LockCommand::Renew { .. } => "lock_renew",
            LockCommand::Holder { .. } => "lock_holder",
        }
    }
}
