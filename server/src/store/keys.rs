//! The layout of a stored key, `[namespace length][namespace][client key]`: the
//! connection prefixes every client key with its namespace, so namespaces never share
//! objects, and everything the store derives from a key (its slot, the key shown in an
//! error) reads that prefix back.

use engram_proto::limits::{KEY_BYTES_MAX, NAMESPACE_BYTES_MAX};
use engram_proto::SlotHasher;

/// Longest stored key: a client key with its namespace prefix (one length byte and the
/// namespace), which the connection prepends after checking the client key itself.
pub const STORED_KEY_BYTES_MAX: usize = KEY_BYTES_MAX + 1 + NAMESPACE_BYTES_MAX;

/// The slot of a stored key (`[namespace length][namespace][client key]`), as the
/// client computed it; `None` when the key is too short for its own prefix.
pub fn slot_of_stored_key(key: &[u8]) -> Option<u32> {
    let (&namespace_length, rest) = key.split_first()?;
    let namespace = rest.get(..usize::from(namespace_length))?;
    let client_key = &rest[usize::from(namespace_length)..];
    Some(SlotHasher::new(namespace).slot(client_key))
}

/// The key as the client wrote it: stored keys start with the namespace prefix
/// `[length][namespace]` the connection adds. A key too short for its own length byte
/// (only unit tests store such bare keys) is shown whole.
pub(super) fn client_key(stored: &[u8]) -> &[u8] {
    match stored.split_first() {
        Some((&length, rest)) if rest.len() >= usize::from(length) => &rest[usize::from(length)..],
        _ => stored,
    }
}

/// A stored key's namespace prefix, `[length][namespace]` (the whole key when it is too
/// short for its own length byte).
pub(super) fn namespace_prefix(stored: &[u8]) -> &[u8] {
    let prefix_bytes = stored.first().map_or(0, |&length| 1 + usize::from(length));
    &stored[..prefix_bytes.min(stored.len())]
}
