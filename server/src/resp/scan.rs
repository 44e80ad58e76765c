//! `SCAN` and `DBSIZE` across a cluster, sans I/O: which shard a cursor is at, which
//! comes next, and a key that routes a request to a given shard.
//!
//! A shard lists its own keys a page at a time (the store's `Scan`), with a cursor of
//! `SHARD_SCAN_CURSOR_BITS` bits. The door walks the shards in the order of the first
//! slot each serves, and hands the client one cursor: that first slot above the shard's
//! cursor. While the map stays as it is, every key present throughout a scan is listed
//! (perhaps more than once, as in Redis); a scan that overlaps a migration or failover
//! can miss keys that moved from a shard not yet walked to one already walked.

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{split_cluster_scan_cursor, KeyCommand, SlotHasher, SlotMap, LOST_SHARD_INDEX};

use super::command::{Listing, Part, Refusal};
use super::reply::{Fold, Shape};

/// Most keys tried when looking for one that routes to a given shard: a shard serving
/// a single slot needs SLOT_COUNT tries on average, and this many fail to find it with
/// a probability below e^-64.
const ROUTING_KEY_TRIES_MAX: u32 = 64 * SLOT_COUNT;

/// Where a scan call goes: the shard, its cursor, and the first slot of the shard after
/// it (`None`: it is the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanStep {
    pub shard_index: u32,
    /// The slot the client's cursor names for this shard.
    pub slot: u32,
    pub shard_cursor: u64,
    pub next_slot: Option<u32>,
}

/// Where the scan at client cursor `cursor` goes on; `None` when no shard is left (a
/// cursor past the last shard's first slot, whose slots are all lost).
pub fn scan_step(map: &SlotMap, cursor: u64) -> Option<ScanStep> {
    let (slot, shard_cursor) = split_cluster_scan_cursor(cursor);
    let order = scan_order(map);
    let current = match owner_of(map, slot) {
        Some(shard_index) => ScanStep {
            shard_index,
            slot,
            shard_cursor,
            next_slot: None,
        },
        // A lost slot: the scan goes on at the next shard, from its start.
        None => match order.iter().find(|(first, _)| *first > slot) {
            Some(&(first, shard_index)) => ScanStep {
                shard_index,
                slot: first,
                shard_cursor: 0,
                next_slot: None,
            },
            None => return None,
        },
    };
    let next_slot = order
        .iter()
        .find(|(first, shard_index)| *first > current.slot && *shard_index != current.shard_index)
        .map(|(first, _)| *first);
    Some(ScanStep { next_slot, ..current })
}

/// The requests of a listing, and how their answers fold into its reply.
#[derive(Debug)]
pub struct Planned {
    pub parts: Vec<Part>,
    pub fold: Option<Fold>,
}

/// The requests a listing makes under `map`, for a client of `hasher`'s namespace;
/// `None` for a scan already past its last shard.
pub fn plan(listing: Listing, map: &SlotMap, hasher: &SlotHasher) -> Result<Option<Planned>, Refusal> {
    let routed_to = |shard_index| {
        routing_key(map, hasher, shard_index)
            .ok_or_else(|| Refusal(format!("ERR no key of this namespace routes to shard {shard_index}")))
    };
    match listing {
        Listing::Scan {
            cursor,
            count,
            pattern,
            kind,
        } => {
            let Some(step) = scan_step(map, cursor) else {
                return Ok(None);
            };
            let command = KeyCommand::Scan {
                key: routed_to(step.shard_index)?,
                cursor: step.shard_cursor,
                count,
                pattern,
                kind,
            };
            let shape = Shape::KeysPage {
                slot: step.slot,
                next_slot: step.next_slot,
            };
            let part = Part {
                command: command.into(),
                shape,
            };
            Ok(Some(Planned {
                parts: vec![part],
                fold: None,
            }))
        }
        Listing::Count => {
            let parts = scan_order(map)
                .into_iter()
                .map(|(_, shard_index)| {
                    Ok(Part {
                        command: KeyCommand::Count {
                            key: routed_to(shard_index)?,
                        }
                        .into(),
                        shape: Shape::Part(Fold::SumOfCounts),
                    })
                })
                .collect::<Result<_, Refusal>>()?;
            Ok(Some(Planned {
                parts,
                fold: Some(Fold::SumOfCounts),
            }))
        }
    }
}

/// Every shard serving a slot, once, as `(first slot, shard index)` in slot order.
pub fn scan_order(map: &SlotMap) -> Vec<(u32, u32)> {
    let mut order: Vec<(u32, u32)> = Vec::new();
    for range in map.ranges.iter().filter(|range| range.shard_index != LOST_SHARD_INDEX) {
        if !order.iter().any(|(_, shard_index)| *shard_index == range.shard_index) {
            order.push((range.start, range.shard_index));
        }
    }
    order
}

fn owner_of(map: &SlotMap, slot: u32) -> Option<u32> {
    let at = map.ranges.partition_point(|range| range.end < slot);
    map.ranges
        .get(at)
        .filter(|range| range.start <= slot && range.shard_index != LOST_SHARD_INDEX)
        .map(|range| range.shard_index)
}

/// A key of the hasher's namespace whose slot `shard_index` serves: requests that only
/// need to reach that shard (a scan page, a key count) are routed by it.
pub fn routing_key(map: &SlotMap, hasher: &SlotHasher, shard_index: u32) -> Option<Vec<u8>> {
    (0..ROUTING_KEY_TRIES_MAX)
        .map(|tried| tried.to_string().into_bytes())
        .find(|key| owner_of(map, hasher.slot(key)) == Some(shard_index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::{cluster_scan_cursor as client_cursor, ShardAddress, SlotRange};

    fn map(ranges: &[(u32, u32, u32)]) -> SlotMap {
        let shards = (0..3)
            .map(|shard_id| ShardAddress {
                node_id: 1,
                shard_id,
                address: format!("127.0.0.1:{}", 7000 + shard_id),
                incarnation: 0,
            })
            .collect();
        SlotMap {
            epoch: 1,
            shards,
            ranges: ranges
                .iter()
                .map(|&(start, end, shard_index)| SlotRange {
                    start,
                    end,
                    shard_index,
                })
                .collect(),
            version_floor: 0,
            backups: Vec::new(),
        }
    }

    #[test]
    fn a_scan_walks_each_shard_once_in_first_slot_order() {
        // Shard 2 first, then 0 (which serves two ranges), then 1.
        let map = map(&[(0, 99, 2), (100, 199, 0), (200, 299, 1), (300, SLOT_COUNT - 1, 0)]);
        assert_eq!(scan_order(&map), vec![(0, 2), (100, 0), (200, 1)]);
        let start = scan_step(&map, 0).unwrap();
        assert_eq!(
            (start.shard_index, start.shard_cursor, start.next_slot),
            (2, 0, Some(100))
        );
        let midway = scan_step(&map, client_cursor(100, 12345)).unwrap();
        assert_eq!(
            (midway.shard_index, midway.shard_cursor, midway.next_slot),
            (0, 12345, Some(200))
        );
        let last = scan_step(&map, client_cursor(200, 0)).unwrap();
        assert_eq!((last.shard_index, last.next_slot), (1, None));
    }

    #[test]
    fn lost_slots_are_stepped_over() {
        let map = map(&[
            (0, 99, LOST_SHARD_INDEX),
            (100, 199, 1),
            (200, SLOT_COUNT - 1, LOST_SHARD_INDEX),
        ]);
        let start = scan_step(&map, 0).unwrap();
        assert_eq!((start.shard_index, start.slot, start.next_slot), (1, 100, None));
        assert_eq!(scan_step(&map, client_cursor(300, 7)), None);
        assert_eq!(
            scan_step(&map, u64::MAX),
            None,
            "the last slot is lost, and no shard follows"
        );
    }

    #[test]
    fn routing_keys_reach_their_shard() {
        let map = map(&[(0, 0, 1), (1, SLOT_COUNT - 1, 0)]);
        let hasher = SlotHasher::new(b"tenant");
        for shard_index in [0, 1] {
            let key = routing_key(&map, &hasher, shard_index).expect("a routing key");
            assert_eq!(owner_of(&map, hasher.slot(&key)), Some(shard_index));
        }
        assert_eq!(routing_key(&map, &hasher, 2), None, "shard 2 serves no slot");
    }
}
