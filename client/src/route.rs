//! A slot map turned into a routing table: slot to shard address, in one lookup.

use engram_proto::limits::SLOT_COUNT;
use engram_proto::{SlotMap, LOST_SHARD_INDEX};

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct Route {
    pub map: SlotMap,
    /// Slot-indexed: the index into `addresses` of the slot's owner.
    owners: Vec<u32>,
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
        let owners = map.owner_table();
        debug_assert_eq!(owners.len(), SLOT_COUNT as usize);
        Ok(Route { map, owners, addresses })
    }

    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// The address of `slot`'s owner; `None` for a slot out of range or lost (see
    /// [`Route::is_lost`]).
    pub fn address_of_slot(&self, slot: u32) -> Option<&str> {
        let owner = *self.owners.get(slot as usize)?;
        self.addresses.get(owner as usize).map(String::as_str)
    }

    /// Whether the map marks `slot` lost: no shard serves it, since every copy of its
    /// data is gone, so a request for it cannot succeed anywhere.
    pub fn is_lost(&self, slot: u32) -> bool {
        self.owners.get(slot as usize) == Some(&LOST_SHARD_INDEX)
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
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

    #[test]
    fn invalid_maps_are_refused() {
        let mut map = two_shard_map(1, "a:1", "b:2");
        map.ranges.pop();
        assert!(matches!(Route::new(map, "a:1"), Err(Error::InvalidSlotMap { .. })));
        let map = two_shard_map(1, "no-port", "b:2");
        assert!(matches!(Route::new(map, "a:1"), Err(Error::InvalidSlotMap { .. })));
    }
}
