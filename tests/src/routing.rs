//! Choosing keys by owner, so a test can address one shard's own port on purpose (a
//! shard answers `WrongShard` for keys it does not own) or make the front port forward.

use std::net::SocketAddr;

use engram_proto::{Command, Response, SlotHasher, SlotMap};

use crate::raw::RawConnection;
use engram_proto::AdminCommand;

/// The node's slot map, fetched over a raw connection to `address`.
pub fn fetch_slot_map(address: SocketAddr) -> SlotMap {
    let mut connection = RawConnection::handshaken(address, 1);
    match connection.command(Command::from(AdminCommand::GetSlotMap)) {
        Response::SlotMap(map) => map,
        other => panic!("GetSlotMap answered {other:?}"),
    }
}

/// Index into `map.shards` of the owner of `key` in `namespace`.
pub fn owner_of(map: &SlotMap, namespace: &[u8], key: &[u8]) -> usize {
    let slot = SlotHasher::new(namespace).slot(key);
    map.owner_table()[slot as usize] as usize
}

/// The address of the shard owning `key` in `namespace`.
pub fn owner_address(map: &SlotMap, namespace: &[u8], key: &[u8]) -> SocketAddr {
    let owner = owner_of(map, namespace, key);
    map.shards[owner].address.parse().expect("shard address is host:port")
}

/// The first key `"{prefix}-{n}"` (n = 0, 1, ...) owned by shard index `shard` of `map`.
pub fn key_on_shard(map: &SlotMap, namespace: &[u8], shard: usize, prefix: &str) -> String {
    let owners = map.owner_table();
    let hasher = SlotHasher::new(namespace);
    (0..100_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| owners[hasher.slot(key.as_bytes()) as usize] as usize == shard)
        .unwrap_or_else(|| panic!("no key with prefix {prefix:?} lands on shard {shard}"))
}
