//! Cyclic barriers: `parties` callers pass together, generation after generation.

use rkyv::{Archive, Deserialize, Serialize};

use super::keyed_variants;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BarrierCommand {
    Wait {
        key: Vec<u8>,
        parties: u32,
        timeout_ms: u64,
    },
}

keyed_variants!(BarrierCommand { Wait });

impl BarrierCommand {
    pub fn is_mutation(&self) -> bool {
        true
    }

    pub fn wait_ms(&self) -> u64 {
        let BarrierCommand::Wait { timeout_ms, .. } = self;
        *timeout_ms
    }

    pub fn name(&self) -> &'static str {
        "barrier_wait"
    }
}
