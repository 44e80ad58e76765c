//! Key to slot: `slot = xxh3_64_with_seed(hashtag(key), xxh3_64(namespace)) % SLOT_COUNT`.
//!
//! Seeding with the namespace's hash keeps tenants apart while letting a client hash
//! the namespace once. The `{tag}` rule is Redis Cluster's, so `{user42}:cart` and
//! `{user42}:lock` share a slot and can be used together atomically.

use crate::limits::SLOT_COUNT;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The part of the key that is hashed: the bytes between the first `{` and the next
/// `}` when that is non-empty, otherwise the whole key.
pub fn hashtag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(close_offset) = key[open + 1..].iter().position(|&b| b == b'}') {
            if close_offset > 0 {
                return &key[open + 1..open + 1 + close_offset];
            }
        }
    }
    key
}

/// Slot hashing for one namespace.
#[derive(Clone, Copy, Debug)]
pub struct SlotHasher {
    namespace_seed: u64,
}

impl SlotHasher {
    pub fn new(namespace: &[u8]) -> SlotHasher {
        SlotHasher {
            namespace_seed: xxh3_64(namespace),
        }
    }

    pub fn slot(&self, key: &[u8]) -> u32 {
        (xxh3_64_with_seed(hashtag(key), self.namespace_seed) % u64::from(SLOT_COUNT)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hashtag_rules() {
        assert_eq!(hashtag(b"plain"), b"plain");
        assert_eq!(hashtag(b"{user1}:cart"), b"user1");
        assert_eq!(hashtag(b"a{b}c{d}"), b"b");
        assert_eq!(hashtag(b"{}empty"), b"{}empty");
        assert_eq!(hashtag(b"open{only"), b"open{only");
        assert_eq!(hashtag(b"x{}{y}"), b"x{}{y}");
    }

    #[test]
    fn tagged_keys_share_a_slot() {
        let h = SlotHasher::new(b"tenant");
        assert_eq!(h.slot(b"{job7}:counter"), h.slot(b"{job7}:lock"));
    }

    #[test]
    fn namespaces_hash_apart() {
        let a = SlotHasher::new(b"a");
        let b = SlotHasher::new(b"b");
        let differing = (0..100)
            .filter(|i| a.slot(format!("k{i}").as_bytes()) != b.slot(format!("k{i}").as_bytes()))
            .count();
        assert!(differing > 90, "only {differing} of 100 keys moved between namespaces");
    }

    proptest! {
        #[test]
        fn slot_in_range(ns in proptest::collection::vec(any::<u8>(), 0..32), key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(SlotHasher::new(&ns).slot(&key) < SLOT_COUNT);
        }
    }
}

/// Sorted slots as inclusive ranges of consecutive slots.
pub fn slot_ranges(slots: &[u32]) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &slot in slots {
        match ranges.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(slot) => *end = slot,
            _ => ranges.push((slot, slot)),
        }
    }
    ranges
}

/// Slots as ranges for people: `0-5460,9000`. `slots` must be sorted.
pub fn format_slot_ranges(slots: &[u32]) -> String {
    let parts: Vec<String> = slot_ranges(slots)
        .into_iter()
        .map(|(start, end)| match start == end {
            true => start.to_string(),
            false => format!("{start}-{end}"),
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod slot_ranges_tests {
    use super::format_slot_ranges;

    #[test]
    fn slot_ranges_join_runs_and_keep_singletons() {
        assert_eq!(format_slot_ranges(&[]), "");
        assert_eq!(format_slot_ranges(&[7]), "7");
        assert_eq!(format_slot_ranges(&[0, 1, 2, 5, 9, 10]), "0-2,5,9-10");
    }
}
