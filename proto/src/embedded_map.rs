//! The slot map of a node running alone: it serves every slot itself until a control
//! plane hands it a cluster map. Here, next to [`SlotMap`], because both the node (which
//! starts with it) and the control plane (whose maps must supersede it) depend on it.

use crate::limits::SLOT_COUNT;
use crate::message::{ShardAddress, SlotMap, SlotRange};

/// Epoch of the map a node serves with when it runs alone: the first epoch, so any map
/// a control plane later hands out supersedes it.
pub const EMBEDDED_MAP_EPOCH: u64 = 1;

/// The map of a single node serving every slot itself: contiguous, equal ranges, one per
/// shard (the first `SLOT_COUNT % shards` shards take one slot more).
pub fn embedded_map(shards: Vec<ShardAddress>) -> SlotMap {
    assert!(!shards.is_empty(), "a node has at least one shard");
    let shard_count = shards.len() as u32;
    let base = SLOT_COUNT / shard_count;
    let extra = SLOT_COUNT % shard_count;
    let mut ranges = Vec::with_capacity(shards.len());
    let mut start = 0;
    for shard_index in 0..shard_count {
        let size = base + u32::from(shard_index < extra);
        ranges.push(SlotRange {
            start,
            end: start + size - 1,
            shard_index,
        });
        start += size;
    }
    SlotMap {
        epoch: EMBEDDED_MAP_EPOCH,
        shards,
        ranges,
        version_floor: 0,
        backups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shards(count: u16) -> Vec<ShardAddress> {
        (0..count)
            .map(|shard_id| ShardAddress {
                node_id: 1,
                shard_id,
                address: format!("127.0.0.1:{}", 7401 + shard_id),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn embedded_map_is_valid_and_fair(count in 1u16..=256) {
            let map = embedded_map(shards(count));
            prop_assert_eq!(map.validate(), Ok(()));
            let table = map.owner_table();
            let mut owned = vec![0u32; count as usize];
            for owner in table {
                owned[owner as usize] += 1;
            }
            let fewest = *owned.iter().min().unwrap();
            let most = *owned.iter().max().unwrap();
            prop_assert!(most - fewest <= 1, "unfair split {fewest}..{most}");
        }
    }
}
