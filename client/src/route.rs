//! A slot map turned into a routing table: slot to shard address, by a binary search over
//! the map's runs of slots with one owner.
//!
//! Runs, not a table of every slot: a table is 64 KiB per client, and a process that
//! holds many clients (a load generator, a function host) misses the cache on nearly
//! every lookup; a map has few runs (one per shard on a fresh cluster), which stay in
//! the first-level cache.

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{SlotMap, LOST_SHARD_INDEX};

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct Route {
    pub map: SlotMap,
    /// Where each run of consecutive slots with one owner starts, ascending from 0.
    run_starts: Vec<u16>,
    /// Each run's owner: an index into `addresses`, or `LOST_SHARD_INDEX`.
    run_owners: Vec<u32>,
    /// Per shard of the map, its address with unspecified hosts resolved.
    addresses: Vec<String>,
}

impl Route {
    /// Validates `map` and resolves shard addresses; a shard that listens on an
    /// unspecified host (0.0.0.0 or [::]) is reached at `source_address`'s host, the node
    /// the map came from.
    pub fn new(map: SlotMap, source_address: &str) -> Result<Route, Error> {
        map.validate().map_err(|reason| Error::InvalidSlotMap { reason })?;
        let source_host = host_of(source_address).unwrap_or(source_address);
        let addresses = map
            .shards
            .iter()
            .map(|shard| resolve_unspecified(&shard.address, source_host))
            .collect::<Result<Vec<_>, _>>()?;
        let (run_starts, run_owners) = owner_runs(&map);
        Ok(Route {
            map,
            run_starts,
            run_owners,
            addresses,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// The address of `slot`'s owner; `None` for a slot out of range or lost (see
    /// [`Route::is_lost`]).
    pub fn address_of_slot(&self, slot: u32) -> Option<&str> {
        let owner = self.owner(slot)?;
        self.addresses.get(owner as usize).map(String::as_str)
    }

    /// Whether the map marks `slot` lost: no shard serves it, since every copy of its
    /// data is gone, so a request for it cannot succeed anywhere.
    pub fn is_lost(&self, slot: u32) -> bool {
        self.owner(slot) == Some(LOST_SHARD_INDEX)
    }

    /// The owner of `slot` as the map's shard index; `None` out of range.
    fn owner(&self, slot: u32) -> Option<u32> {
        if slot >= SLOT_COUNT {
            return None;
        }
        // The first run starts at slot 0, so some run starts at or below `slot`.
        let run = self.run_starts.partition_point(|&start| u32::from(start) <= slot) - 1;
        Some(self.run_owners[run])
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
}

// Run starts are slots, kept in 16 bits.
const _: () = assert!(SLOT_COUNT <= 1 << 16);

/// A validated map's ranges (sorted, covering every slot) as runs: neighbouring ranges of
/// one owner merge.
fn owner_runs(map: &SlotMap) -> (Vec<u16>, Vec<u32>) {
    let mut starts: Vec<u16> = Vec::new();
    let mut owners: Vec<u32> = Vec::new();
    for range in &map.ranges {
        if owners.last() == Some(&range.shard_index) {
            continue;
        }
        starts.push(u16::try_from(range.start).expect("a validated map's slots fit 16 bits"));
        owners.push(range.shard_index);
    }
    debug_assert_eq!(starts.first(), Some(&0), "a validated map covers slot 0");
    (starts, owners)
}

/// The host part of `host:port` (brackets kept for IPv6), or `None` without a port.
pub fn host_of(address: &str) -> Option<&str> {
    address.rsplit_once(':').map(|(host, _port)| host)
}

fn resolve_unspecified(address: &str, source_host: &str) -> Result<String, Error> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(Error::InvalidSlotMap {
            reason: format!("shard address {address:?} is not host:port"),
        });
    };
    Ok(match host {
        "" | "0.0.0.0" | "[::]" | "::" => format!("{source_host}:{port}"),
        _ => address.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fake_server::{half_lost_map, two_shard_map};
    use engram_proto::SlotHasher;

    #[test]
    fn keys_route_to_the_owner_of_their_slot() {
        let route = Route::new(two_shard_map(4, "10.0.0.1:7401", "10.0.0.1:7402"), "10.0.0.1:7400").unwrap();
        assert_eq!(route.epoch(), 4);
        let hasher = SlotHasher::new(b"default");
        for index in 0..200 {
            let key = format!("key{index}");
            let slot = hasher.slot(key.as_bytes());
            let expected = if slot < SLOT_COUNT / 2 {
                "10.0.0.1:7401"
            } else {
                "10.0.0.1:7402"
            };
            assert_eq!(route.address_of_slot(slot), Some(expected), "{key}");
        }
        assert_eq!(route.address_of_slot(SLOT_COUNT), None);
    }

    #[test]
    fn lost_slots_have_no_address() {
        let route = Route::new(half_lost_map(2, "10.0.0.1:7401"), "10.0.0.1:7400").unwrap();
        assert_eq!(route.address_of_slot(0), Some("10.0.0.1:7401"));
        assert!(!route.is_lost(0));
        assert_eq!(route.address_of_slot(SLOT_COUNT - 1), None);
        assert!(route.is_lost(SLOT_COUNT / 2) && route.is_lost(SLOT_COUNT - 1));
        assert!(!route.is_lost(SLOT_COUNT), "out of range is not lost");
    }

    #[test]
    fn unspecified_hosts_take_the_source_host() {
        let route = Route::new(two_shard_map(1, "0.0.0.0:7401", "[::]:7402"), "db.internal:7400").unwrap();
        assert_eq!(route.addresses(), ["db.internal:7401", "db.internal:7402"]);
        let route = Route::new(two_shard_map(1, "0.0.0.0:7401", "1.2.3.4:7402"), "[::1]:7400").unwrap();
        assert_eq!(route.addresses(), ["[::1]:7401", "1.2.3.4:7402"]);
    }

    proptest::proptest! {
        /// Whatever the map's ranges (neighbours of one owner, lost runs, many cuts),
        /// the runs answer for every slot what a table of every slot does.
        #[test]
        fn runs_answer_as_a_table_of_every_slot(
            cuts in proptest::collection::btree_set(1..SLOT_COUNT, 0..40),
            owners in proptest::collection::vec(0u32..4, 41),
        ) {
            let mut map = two_shard_map(1, "10.0.0.1:7401", "10.0.0.1:7402");
            let starts: Vec<u32> = std::iter::once(0).chain(cuts.iter().copied()).collect();
            map.ranges = starts
                .iter()
                .enumerate()
                .map(|(index, &start)| engram_proto::SlotRange {
                    start,
                    end: starts.get(index + 1).map_or(SLOT_COUNT - 1, |next| next - 1),
                    // 2 and 3 stand for a lost run, so lost runs come often.
                    shard_index: if owners[index] < 2 { owners[index] } else { LOST_SHARD_INDEX },
                })
                .collect();
            let route = Route::new(map.clone(), "10.0.0.1:7400").unwrap();
            let table = map.owner_table();
            for slot in 0..SLOT_COUNT {
                let owner = table[slot as usize];
                proptest::prop_assert_eq!(route.is_lost(slot), owner == LOST_SHARD_INDEX);
                let expected = route.addresses().get(owner as usize).map(String::as_str);
                proptest::prop_assert_eq!(route.address_of_slot(slot), expected, "slot {}", slot);
            }
            proptest::prop_assert_eq!(route.address_of_slot(SLOT_COUNT), None);
        }
    }

    #[test]
    fn invalid_maps_are_refused() {
        let mut map = two_shard_map(1, "a:1", "b:2");
        map.ranges.pop();
        assert!(matches!(Route::new(map, "a:1"), Err(Error::InvalidSlotMap { .. })));
        let map = two_shard_map(1, "no-port", "b:2");
        assert!(matches!(Route::new(map, "a:1"), Err(Error::InvalidSlotMap { .. })));
    }
}
