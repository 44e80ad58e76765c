//! Listing and counting a namespace's keys (Redis's `SCAN` and `DBSIZE`).
//!
//! A scan walks the key table's places in order, a bounded number per page, so a page
//! holds the shard for a bounded time however many keys it has. Its cursor is a place
//! in the table, good only while entries stay where they are: the table moves them only
//! when it grows or is rebuilt, and the cursor carries a check of which table and which
//! layout it was made in. A cursor from another layout starts the walk over, so a key
//! present throughout a scan is always listed, perhaps more than once, as with Redis.
//!
//! Starting over must not go on forever while keys keep coming: a page takes at least
//! a [`SCAN_PAGES_PER_TABLE`]th of the table's places, so a walk takes that many pages
//! (more only past [`SCAN_COUNT_MAX`] steps a page), and the table grows only after a
//! number of inserts proportional to its places. A client's small count is a hint, as
//! Redis says of its own.

use engram_proto::limits::{SCAN_COUNT_MAX, SCAN_PAGE_BYTES_MAX};
use engram_proto::{glob_matches, ObjectKind, Response, SHARD_SCAN_CURSOR_BITS};

use super::key::object_kind;
use super::keys::{client_key, namespace_prefix};
use super::Store;

/// Most pages a walk over a shard's table takes, whatever the count asks (while pages
/// stay within `SCAN_COUNT_MAX` steps).
pub(crate) const SCAN_PAGES_PER_TABLE: usize = 64;

/// Low bits of a shard's scan cursor: the place to go on from.
const PLACE_BITS: u32 = 32;
/// The bits above them: the check of the table and layout the place belongs to.
const LAYOUT_CHECK_BITS: u32 = SHARD_SCAN_CURSOR_BITS - PLACE_BITS;

/// What a scan page lists besides the namespace: names matching a glob, objects of a
/// kind.
pub(crate) struct ScanFilter<'a> {
    pub pattern: Option<&'a [u8]>,
    pub kind: Option<ObjectKind>,
}

impl Store {
    /// A page of the keys of `routing_key`'s namespace, from `cursor` (0: the start),
    /// taking at most `count` steps.
    pub(crate) fn scan_keys(
        &self,
        routing_key: &[u8],
        cursor: u64,
        count: u32,
        filter: ScanFilter<'_>,
        now_ms: u64,
    ) -> Response {
        let prefix = namespace_prefix(routing_key);
        let layout_check = self.entries.layout() & ((1 << LAYOUT_CHECK_BITS) - 1);
        let places = self.entries.buckets().min(1 << PLACE_BITS);
        let mut at = match (cursor >> PLACE_BITS, cursor & ((1 << PLACE_BITS) - 1)) {
            (check, place) if check == layout_check => place as usize,
            // A new scan, or the entries moved since the cursor was made.
            _ => 0,
        };
        let steps = (count as usize).max(places / SCAN_PAGES_PER_TABLE);
        let end = places.min(at + steps.clamp(1, SCAN_COUNT_MAX as usize));
        let (mut keys, mut page_bytes) = (Vec::new(), 0);
        while at < end && page_bytes <= SCAN_PAGE_BYTES_MAX {
            if let Some(entry) = self.entries.bucket(at) {
                let stored = entry.key();
                let name = client_key(stored);
                let listed = namespace_prefix(stored) == prefix
                    && !entry.is_expired(now_ms)
                    && filter.kind.is_none_or(|kind| object_kind(entry) == kind)
                    && filter.pattern.is_none_or(|pattern| glob_matches(pattern, name));
                if listed {
                    page_bytes += name.len();
                    keys.push(name.to_vec());
                }
            }
            at += 1;
        }
        // `at` is past the first place, so a cursor to go on from is never 0.
        let cursor = if at >= places {
            0
        } else {
            layout_check << PLACE_BITS | at as u64
        };
        Response::Keys { keys, cursor }
    }

    /// How many keys `routing_key`'s namespace has here.
    pub(crate) fn count_keys(&self, routing_key: &[u8]) -> Response {
        Response::KeyCount {
            count: self.entries.namespace_len(namespace_prefix(routing_key)),
        }
    }
}
