//! The key table: one 16-byte [`KeyEntry`] per key in a `hashbrown::HashTable`.
//!
//! Why 16 bytes: the table is paid for at every bucket, empty ones included, and
//! hashbrown keeps between 8/7 and 16/7 buckets per key (it doubles when 7/8 full), so
//! each byte of an element costs up to 2.3 bytes per key.
//!
//! Why one allocation per entry: nearly every key holds a bytes value or a counter, and
//! a [`CompactEntry`] keeps its version, deadline, key and value in a single box, where
//! a key box, an entry and a value buffer would pay the allocator's header and rounding
//! three times. Coordination objects are rare and have many fields; an [`ObjectEntry`]
//! keeps each as an [`Entry`] in its own box, so their code works on a plain `&mut Object`.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::keys::namespace_prefix;
use super::{entry_bytes, expiry_bytes, object_entry_bytes, Entry, Object};

/// What the table holds for one key.
#[derive(Debug)]
pub(crate) enum KeyEntry {
    /// A bytes value or a counter.
    Compact(CompactEntry),
    /// A lock, semaphore, barrier, latch, future, map or queue.
    Object(Box<ObjectEntry>),
}

// The box pointer's null niche tags the variants, so no separate tag word is needed.
const _: () = assert!(std::mem::size_of::<KeyEntry>() == 16);

#[derive(Debug)]
pub(crate) struct ObjectEntry {
    pub(crate) key: Box<[u8]>,
    pub(crate) entry: Entry,
}

impl KeyEntry {
    /// Prefetches what a lookup and a read of a compact entry touch: its header, key
    /// and value, up to the second cache line it reaches (most bytes values and
    /// counters fit). Of an object entry only the box: its key, which the lookup
    /// compares, is an allocation of its own, and objects are rare on the read path.
    fn prefetch_allocation(&self) {
        match self {
            KeyEntry::Compact(compact) => {
                let start = compact.0.as_ptr();
                prefetch(start);
                if start as usize % CACHE_LINE_BYTES + compact.0.len() > CACHE_LINE_BYTES {
                    prefetch(start.wrapping_add(CACHE_LINE_BYTES));
                }
            }
            KeyEntry::Object(object) => prefetch(std::ptr::from_ref(object.as_ref()).cast()),
        }
    }

    pub(crate) fn object(key: &[u8], entry: Entry) -> KeyEntry {
        KeyEntry::Object(Box::new(ObjectEntry { key: key.into(), entry }))
    }

    pub(crate) fn key(&self) -> &[u8] {
        match self {
            KeyEntry::Compact(compact) => compact.key(),
            KeyEntry::Object(object) => &object.key,
        }
    }

    pub(crate) fn version(&self) -> u64 {
        match self {
            KeyEntry::Compact(compact) => compact.version(),
            KeyEntry::Object(object) => object.entry.version,
        }
    }

    /// 0: no expiry.
    pub(crate) fn expires_at_ms(&self) -> u64 {
        match self {
            KeyEntry::Compact(compact) => compact.expires_at_ms(),
            KeyEntry::Object(object) => object.entry.expires_at_ms,
        }
    }

    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        let expires_at_ms = self.expires_at_ms();
        expires_at_ms != 0 && expires_at_ms <= now_ms
    }

    pub(crate) fn object_mut(&mut self) -> Option<&mut Object> {
        match self {
            KeyEntry::Compact(_) => None,
            KeyEntry::Object(object) => Some(&mut object.entry.object),
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        match self {
            KeyEntry::Compact(_) => false,
            KeyEntry::Object(object) => object.entry.object.is_idle(),
        }
    }

    /// Memory charged for the entry, expiry index excluded.
    pub(crate) fn entry_bytes(&self) -> u64 {
        match self {
            KeyEntry::Compact(compact) => entry_bytes(compact.key(), compact.payload_bytes()),
            KeyEntry::Object(object) => object_entry_bytes(&object.key, object.entry.object.payload_bytes()),
        }
    }

    /// Memory charged for the entry and its place in the expiry index.
    pub(crate) fn charged_bytes(&self) -> u64 {
        let expiry = if self.expires_at_ms() == 0 {
            0
        } else {
            expiry_bytes(self.key())
        };
        self.entry_bytes() + expiry
    }
}

/// A bytes value or a counter with its key, version and deadline in one allocation:
///
/// `[version u64][expires_at_ms u64][key_length u16][kind u8][key][payload]`
///
/// little-endian, where the payload is, by kind:
/// - counter: the i64.
/// - bytes: the value, exactly; its length is what the box leaves after the key.
/// - bytes with room: `[value_length u32][value][spare room]`, made by an append that
///   grew the value, so repeated appends stay amortized O(1) as with a `Vec`.
///
/// Only values that appends grew pay for a length field: a plain write's value (nearly
/// every one) does not need it, and 4 bytes more would take a typical entry (18-byte
/// key, 32-byte value) from glibc's 80-byte size class to the 96-byte one.
///
/// Only the constructors build the box, so it always holds the whole header, the key
/// and the payload its kind describes. They check that the lengths fit their fields
/// (a wrapped key length would make [`CompactEntry::key`] return another slice than the
/// one hashed), and the operations that only apply to one kind refuse the other, so a
/// broken assumption in a caller comes back as a [`CompactError`] instead of a silent
/// no-op or a corrupt entry.
#[derive(Debug)]
pub(crate) struct CompactEntry(Box<[u8]>);

const VERSION_AT: usize = 0;
const EXPIRES_AT_MS_AT: usize = 8;
const KEY_LENGTH_AT: usize = 16;
const KIND_AT: usize = 18;
const HEADER_BYTES: usize = 19;

const KIND_COUNTER: u8 = 0;
const KIND_BYTES: u8 = 1;
const KIND_BYTES_WITH_ROOM: u8 = 2;
const COUNTER_BYTES: usize = 8;
const VALUE_LENGTH_BYTES: usize = 4;

// The length fields must hold the longest key and value the store accepts, so the
// store's own limit checks make the refusals below unreachable from requests.
const _: () = assert!(super::keys::STORED_KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(engram_proto::limits::VALUE_BYTES_MAX <= u32::MAX as usize);

/// What a compact entry's payload is (its kind byte, decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Bytes,
    BytesWithRoom,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Counter => KIND_COUNTER,
            Kind::Bytes => KIND_BYTES,
            Kind::BytesWithRoom => KIND_BYTES_WITH_ROOM,
        }
    }
}

/// Why a compact entry could not be built or changed; the entry is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompactError {
    /// The key is longer than the header's u16 length field holds.
    KeyTooLong { length: usize },
    /// A value with room is longer than its u32 length field holds.
    ValueTooLong { length: usize },
    /// A counter operation on a bytes value, or a bytes operation on a counter.
    WrongKind,
}

/// A key with the length the header stores for it, made only by checking that the
/// length fits or by reading an entry's own header, so the two always agree.
#[derive(Clone, Copy)]
struct HeaderKey<'a> {
    key: &'a [u8],
    length: u16,
}

impl HeaderKey<'_> {
    fn new(key: &[u8]) -> Result<HeaderKey<'_>, CompactError> {
        let length = u16::try_from(key.len()).map_err(|_| CompactError::KeyTooLong { length: key.len() })?;
        Ok(HeaderKey { key, length })
    }
}

/// A value length as a with-room value's length field stores it.
fn value_length_field(length: usize) -> Result<[u8; VALUE_LENGTH_BYTES], CompactError> {
    let length = u32::try_from(length).map_err(|_| CompactError::ValueTooLong { length })?;
    Ok(length.to_le_bytes())
}

/// What a compact entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contents<'a> {
    Bytes(&'a [u8]),
    Counter(i64),
}

impl CompactEntry {
    /// Refused only for a key longer than the header's length field holds.
    pub(crate) fn bytes(
        key: &[u8],
        value: &[u8],
        version: u64,
        expires_at_ms: u64,
    ) -> Result<CompactEntry, CompactError> {
        let key = HeaderKey::new(key)?;
        Ok(CompactEntry::build(
            key,
            Kind::Bytes,
            &[value],
            0,
            version,
            expires_at_ms,
        ))
    }

    /// Refused only for a key longer than the header's length field holds.
    pub(crate) fn counter(
        key: &[u8],
        value: i64,
        version: u64,
        expires_at_ms: u64,
    ) -> Result<CompactEntry, CompactError> {
        let key = HeaderKey::new(key)?;
        let payload = value.to_le_bytes();
        Ok(CompactEntry::build(
            key,
            Kind::Counter,
            &[&payload],
            0,
            version,
            expires_at_ms,
        ))
    }

    /// The bytes value `head` then `tail`, with room for `capacity` bytes in all.
    fn bytes_with_room(
        key: HeaderKey<'_>,
        head: &[u8],
        tail: &[u8],
        capacity: usize,
        version: u64,
        expires_at_ms: u64,
    ) -> Result<CompactEntry, CompactError> {
        let length = head.len() + tail.len();
        if capacity <= length {
            return Ok(CompactEntry::build(
                key,
                Kind::Bytes,
                &[head, tail],
                0,
                version,
                expires_at_ms,
            ));
        }
        let length_field = value_length_field(length)?;
        let parts = [&length_field[..], head, tail];
        Ok(CompactEntry::build(
            key,
            Kind::BytesWithRoom,
            &parts,
            capacity - length,
            version,
            expires_at_ms,
        ))
    }

    /// The header, the key, `parts` as the payload, and `spare` zero bytes of room.
    fn build(
        key: HeaderKey<'_>,
        kind: Kind,
        parts: &[&[u8]],
        spare: usize,
        version: u64,
        expires_at_ms: u64,
    ) -> CompactEntry {
        let payload_bytes: usize = parts.iter().map(|part| part.len()).sum();
        let total = HEADER_BYTES + key.key.len() + payload_bytes + spare;
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&expires_at_ms.to_le_bytes());
        bytes.extend_from_slice(&key.length.to_le_bytes());
        bytes.push(kind.byte());
        bytes.extend_from_slice(key.key);
        for part in parts {
            bytes.extend_from_slice(part);
        }
        bytes.resize(total, 0);
        CompactEntry(bytes.into_boxed_slice())
    }

    fn read_u64(&self, at: usize) -> u64 {
        let mut field = [0; 8];
        field.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(field)
    }

    fn write_u64(&mut self, at: usize, value: u64) {
        self.0[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn kind(&self) -> Kind {
        match self.0[KIND_AT] {
            KIND_COUNTER => Kind::Counter,
            KIND_BYTES => Kind::Bytes,
            KIND_BYTES_WITH_ROOM => Kind::BytesWithRoom,
            // Not reachable from requests: only `build` writes the byte, from a `Kind`.
            other => unreachable!("compact entry with unknown kind byte {other}"),
        }
    }

    fn key_length(&self) -> u16 {
        u16::from_le_bytes([self.0[KEY_LENGTH_AT], self.0[KEY_LENGTH_AT + 1]])
    }

    fn payload_at(&self) -> usize {
        HEADER_BYTES + usize::from(self.key_length())
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0[HEADER_BYTES..self.payload_at()]
    }

    /// The key with the length its header already holds, to rebuild the entry with.
    fn header_key(&self) -> HeaderKey<'_> {
        HeaderKey {
            key: self.key(),
            length: self.key_length(),
        }
    }

    pub(crate) fn version(&self) -> u64 {
        self.read_u64(VERSION_AT)
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        self.write_u64(VERSION_AT, version);
    }

    pub(crate) fn expires_at_ms(&self) -> u64 {
        self.read_u64(EXPIRES_AT_MS_AT)
    }

    pub(crate) fn set_expires_at_ms(&mut self, expires_at_ms: u64) {
        self.write_u64(EXPIRES_AT_MS_AT, expires_at_ms);
    }

    pub(crate) fn contents(&self) -> Contents<'_> {
        let at = self.payload_at();
        match self.kind() {
            Kind::Counter => {
                let mut field = [0; COUNTER_BYTES];
                field.copy_from_slice(&self.0[at..at + COUNTER_BYTES]);
                Contents::Counter(i64::from_le_bytes(field))
            }
            Kind::Bytes => Contents::Bytes(&self.0[at..]),
            Kind::BytesWithRoom => {
                let mut field = [0; VALUE_LENGTH_BYTES];
                field.copy_from_slice(&self.0[at..at + VALUE_LENGTH_BYTES]);
                let value_at = at + VALUE_LENGTH_BYTES;
                Contents::Bytes(&self.0[value_at..value_at + u32::from_le_bytes(field) as usize])
            }
        }
    }

    /// Stores a counter's new value in place; a bytes value is refused (`WrongKind`)
    /// and left as it is.
    pub(crate) fn set_counter_value(&mut self, value: i64, version: u64) -> Result<(), CompactError> {
        if self.kind() != Kind::Counter {
            return Err(CompactError::WrongKind);
        }
        let at = self.payload_at();
        self.0[at..at + COUNTER_BYTES].copy_from_slice(&value.to_le_bytes());
        self.set_version(version);
        Ok(())
    }

    /// The bytes a value can reach before it needs a larger box.
    pub(crate) fn capacity(&self) -> usize {
        let payload = self.0.len() - self.payload_at();
        match self.kind() {
            Kind::BytesWithRoom => payload - VALUE_LENGTH_BYTES,
            Kind::Bytes | Kind::Counter => payload,
        }
    }

    /// What memory accounting charges beyond the key: a bytes value's capacity (a
    /// counter's eight bytes are part of the fixed overhead).
    pub(crate) fn payload_bytes(&self) -> u64 {
        match self.kind() {
            Kind::Counter => 0,
            Kind::Bytes | Kind::BytesWithRoom => self.capacity() as u64,
        }
    }

    /// Replaces a bytes value, its version and deadline, leaving no spare room: in place
    /// when the new value is as long as the exact old one, else in a new box.
    pub(crate) fn replace_value(&mut self, value: &[u8], version: u64, expires_at_ms: u64) {
        if self.kind() != Kind::Bytes || value.len() != self.capacity() {
            *self = CompactEntry::build(self.header_key(), Kind::Bytes, &[value], 0, version, expires_at_ms);
            return;
        }
        let at = self.payload_at();
        self.0[at..].copy_from_slice(value);
        self.set_version(version);
        self.write_u64(EXPIRES_AT_MS_AT, expires_at_ms);
    }

    /// Appends to a bytes value, in place when its room holds `suffix`, else moving it
    /// to a new box with room for `capacity` bytes (at least the new length). A counter
    /// is refused (`WrongKind`), as is a length past the length field; either leaves the
    /// entry as it was.
    pub(crate) fn append(&mut self, suffix: &[u8], capacity: usize, version: u64) -> Result<(), CompactError> {
        let Contents::Bytes(value) = self.contents() else {
            return Err(CompactError::WrongKind);
        };
        let value_length = value.len();
        let length = value_length + suffix.len();
        if suffix.is_empty() {
            // Nothing to write.
        } else if self.kind() == Kind::BytesWithRoom && length <= self.capacity() {
            let length_field = value_length_field(length)?;
            let at = self.payload_at();
            let suffix_at = at + VALUE_LENGTH_BYTES + value_length;
            self.0[suffix_at..suffix_at + suffix.len()].copy_from_slice(suffix);
            self.0[at..at + VALUE_LENGTH_BYTES].copy_from_slice(&length_field);
        } else {
            let expires_at_ms = self.expires_at_ms();
            *self = CompactEntry::bytes_with_room(self.header_key(), value, suffix, capacity, version, expires_at_ms)?;
        }
        self.set_version(version);
        Ok(())
    }
}

/// Keys one [`KeyTable::prefetch`] looks at, at most: a read's pipelined batch, and
/// about as many cache misses as a core keeps in flight.
pub(crate) const PREFETCH_KEYS_MAX: usize = 16;

/// Asks the CPU to start loading the cache line at `address`. A hint that never faults,
/// whatever the address; a no-op where no prefetch instruction is wired in.
#[inline(always)]
fn prefetch(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and cannot fault, whatever the
    // address; SSE, which it needs, is part of every x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Bytes per cache line, for prefetching an entry's second line.
const CACHE_LINE_BYTES: usize = 64;

/// The keys, hashed with foldhash: fast for short keys, and seeded per process so
/// clients cannot pick keys that collide.
pub(crate) struct KeyTable {
    entries: HashTable<KeyEntry>,
    hasher: foldhash::fast::FixedState,
    /// Tells this table from any other in the process, so a scan cursor made by another
    /// shard's table is not taken for one of this table's.
    identity: u64,
    /// Grows whenever an insert may move entries (a full table grows or is rebuilt in
    /// place): a scan cursor, a place in the table, is only good within one layout.
    layout_epoch: u64,
    namespace_keys: NamespaceKeys,
}

/// How many keys each namespace has here (`DBSIZE`), kept as keys come and go rather
/// than counted on demand, which would hold the shard for a pass over every key.
#[derive(Default)]
struct NamespaceKeys {
    /// The default (empty) namespace's, kept apart so most inserts touch no map.
    default: u64,
    /// By the namespace's stored prefix; a namespace leaves when its last key does.
    named: foldhash::HashMap<Box<[u8]>, u64>,
}

impl NamespaceKeys {
    fn added(&mut self, key: &[u8]) {
        match namespace_prefix(key) {
            [0] | [] => self.default += 1,
            prefix => *self.named.entry(prefix.into()).or_default() += 1,
        }
    }

    fn removed(&mut self, key: &[u8]) {
        match namespace_prefix(key) {
            [0] | [] => self.default -= 1,
            prefix => {
                if let Some(count) = self.named.get_mut(prefix) {
                    *count -= 1;
                    if *count == 0 {
                        self.named.remove(prefix);
                    }
                }
            }
        }
    }

    fn count(&self, prefix: &[u8]) -> u64 {
        match prefix {
            [0] | [] => self.default,
            prefix => self.named.get(prefix).copied().unwrap_or(0),
        }
    }
}

/// Tables made so far in this process: each table's identity counts from it.
static TABLES_MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Where a key's entry sits in the table: valid until the next insert or removal, so
/// a caller can look a key up once and come back to it after other bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position(usize);

impl KeyTable {
    pub(crate) fn new(hash_seed: u64) -> KeyTable {
        let hasher = foldhash::fast::FixedState::with_seed(hash_seed);
        let made = TABLES_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        KeyTable {
            entries: HashTable::new(),
            identity: hasher.hash_one(made),
            hasher,
            layout_epoch: 0,
            namespace_keys: NamespaceKeys::default(),
        }
    }

    /// How many keys the namespace of stored prefix `[length][namespace]` has here,
    /// expired ones not yet removed included (as Redis's `DBSIZE` counts them).
    pub(crate) fn namespace_len(&self, prefix: &[u8]) -> u64 {
        self.namespace_keys.count(prefix)
    }

    /// Places in the table, empty or not: a scan visits `0..buckets()`.
    pub(crate) fn buckets(&self) -> usize {
        self.entries.num_buckets()
    }

    /// The entry at a place, if one is there.
    pub(crate) fn bucket(&self, index: usize) -> Option<&KeyEntry> {
        self.entries.get_bucket(index)
    }

    /// Which table, in which layout: equal between two moments only if no entry has
    /// moved between them.
    pub(crate) fn layout(&self) -> u64 {
        self.hasher.hash_one((self.identity, self.layout_epoch))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &KeyEntry> {
        self.entries.iter()
    }

    pub(crate) fn find(&self, key: &[u8]) -> Option<Position> {
        let hash = self.hasher.hash_one(key);
        self.entries
            .find_bucket_index(hash, |entry| entry.key() == key)
            .map(Position)
    }

    /// Starts loading into the cache what [`KeyTable::find`] will read for each of
    /// `keys` (up to [`PREFETCH_KEYS_MAX`]), so that the lookups of a pipelined batch
    /// wait on memory together instead of one after another: a lookup's time goes to
    /// two dependent cache misses, its bucket and then the entry the bucket points to.
    ///
    /// A first pass finds each key's likely bucket from the control bytes alone (one
    /// byte per bucket, which stay cached) and prefetches the bucket; a second reads the
    /// buckets, on their way by then, and prefetches the entries. A hint only: nothing
    /// here changes what a lookup finds, and a wrong guess (an absent key, a tag shared
    /// with another key) costs its hash, its probe and a wasted prefetch.
    pub(crate) fn prefetch<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let mut buckets = [0; PREFETCH_KEYS_MAX];
        let mut guessed = 0;
        for key in keys.take(PREFETCH_KEYS_MAX) {
            let Some(index) = self.likely_bucket(key) else {
                continue;
            };
            if let Some(entry) = self.entries.get_bucket(index) {
                prefetch(std::ptr::from_ref(entry).cast());
            }
            buckets[guessed] = index;
            guessed += 1;
        }
        for &index in &buckets[..guessed] {
            if let Some(entry) = self.entries.get_bucket(index) {
                entry.prefetch_allocation();
            }
        }
    }

    /// The first bucket whose tag (seven bits of the hash) matches the key's: the key's
    /// own but for a tag collision (one in 128 per full bucket probed before its own),
    /// found from the control bytes without reading any bucket.
    fn likely_bucket(&self, key: &[u8]) -> Option<usize> {
        self.entries.find_bucket_index(self.hasher.hash_one(key), |_| true)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&KeyEntry> {
        self.find(key).and_then(|position| self.at(position))
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyEntry> {
        self.find(key).and_then(|position| self.at_mut(position))
    }

    pub(crate) fn at(&self, position: Position) -> Option<&KeyEntry> {
        self.entries.get_bucket(position.0)
    }

    pub(crate) fn at_mut(&mut self, position: Position) -> Option<&mut KeyEntry> {
        self.entries.get_bucket_mut(position.0)
    }

    /// Adds an entry whose key is absent (callers have looked it up).
    pub(crate) fn insert_new(&mut self, entry: KeyEntry) -> Position {
        debug_assert!(self.find(entry.key()).is_none(), "the key is already present");
        let hash = self.hasher.hash_one(entry.key());
        // hashbrown moves entries (growing, or rebuilding in place) only in an insert
        // that finds no room left, so a layout change needs a full table first.
        if self.entries.len() == self.entries.capacity() {
            self.layout_epoch += 1;
        }
        self.namespace_keys.added(entry.key());
        let hasher = &self.hasher;
        let inserted = self
            .entries
            .insert_unique(hash, entry, |entry| hasher.hash_one(entry.key()));
        Position(inserted.bucket_index())
    }

    pub(crate) fn remove_at(&mut self, position: Position) -> Option<KeyEntry> {
        let occupied = self.entries.get_bucket_entry(position.0).ok()?;
        let removed = occupied.remove().0;
        self.namespace_keys.removed(removed.key());
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_bytes_round_trip_their_fields() {
        let mut entry = CompactEntry::bytes(b"\x02nskey", b"value", 7, 1_000).unwrap();
        assert_eq!(entry.key(), b"\x02nskey");
        assert_eq!(entry.contents(), Contents::Bytes(b"value"));
        assert_eq!((entry.version(), entry.expires_at_ms()), (7, 1_000));
        assert_eq!((entry.capacity(), entry.payload_bytes()), (5, 5));
        entry.set_version(u64::MAX);
        assert_eq!(entry.version(), u64::MAX);
        assert_eq!(entry.key(), b"\x02nskey", "fields do not overlap the key");
    }

    #[test]
    fn compact_counters_update_in_place() {
        let mut entry = CompactEntry::counter(b"c", -5, 1, 0).unwrap();
        assert_eq!(entry.contents(), Contents::Counter(-5));
        assert_eq!(
            entry.payload_bytes(),
            0,
            "a counter's 8 bytes are in the fixed overhead"
        );
        entry.set_counter_value(i64::MIN, 2).unwrap();
        assert_eq!(entry.contents(), Contents::Counter(i64::MIN));
        assert_eq!((entry.version(), entry.key()), (2, &b"c"[..]));
    }

    #[test]
    fn replace_writes_in_place_only_at_the_same_length() {
        let mut entry = CompactEntry::bytes(b"k", b"abc", 1, 0).unwrap();
        entry.replace_value(b"xyz", 2, 50);
        assert_eq!(entry.contents(), Contents::Bytes(b"xyz"));
        assert_eq!((entry.version(), entry.expires_at_ms(), entry.capacity()), (2, 50, 3));
        entry.replace_value(b"longer value", 3, 0);
        assert_eq!(entry.contents(), Contents::Bytes(b"longer value"));
        assert_eq!((entry.version(), entry.expires_at_ms(), entry.capacity()), (3, 0, 12));
        entry.replace_value(b"", 4, 0);
        assert_eq!(entry.contents(), Contents::Bytes(b""));
        assert_eq!(
            (entry.capacity(), entry.key()),
            (0, &b"k"[..]),
            "no spare capacity is left"
        );
    }

    #[test]
    fn appends_fill_their_room_before_growing() {
        let mut entry = CompactEntry::bytes(b"k", b"ab", 1, 9).unwrap();
        entry.append(b"", 2, 2).unwrap();
        assert_eq!(entry.contents(), Contents::Bytes(b"ab"));
        assert_eq!(
            (entry.capacity(), entry.version()),
            (2, 2),
            "an empty append only takes a version"
        );
        entry.append(b"cd", 8, 3).unwrap();
        assert_eq!(entry.contents(), Contents::Bytes(b"abcd"));
        assert_eq!((entry.capacity(), entry.version(), entry.expires_at_ms()), (8, 3, 9));
        entry.append(b"efgh", 16, 4).unwrap();
        assert_eq!(entry.contents(), Contents::Bytes(b"abcdefgh"));
        assert_eq!((entry.capacity(), entry.version()), (8, 4), "filled in place");
        entry.append(b"i", 9, 5).unwrap();
        assert_eq!(entry.contents(), Contents::Bytes(b"abcdefghi"));
        assert_eq!((entry.capacity(), entry.version(), entry.key()), (9, 5, &b"k"[..]));
        entry.append(b"j", 20, 6).unwrap();
        assert_eq!(entry.contents(), Contents::Bytes(b"abcdefghij"));
        assert_eq!(
            (entry.capacity(), entry.payload_bytes(), entry.expires_at_ms()),
            (20, 20, 9)
        );
        entry.replace_value(b"plain", 7, 0);
        assert_eq!(entry.contents(), Contents::Bytes(b"plain"));
        assert_eq!((entry.capacity(), entry.version()), (5, 7), "a write leaves no room");
    }

    #[test]
    fn table_finds_inserts_and_removes_by_key() {
        let mut table = KeyTable::new(42);
        for n in 0..1_000u32 {
            let key = n.to_le_bytes();
            table.insert_new(KeyEntry::Compact(
                CompactEntry::counter(&key, i64::from(n), 1, 0).unwrap(),
            ));
        }
        assert_eq!(table.len(), 1_000);
        for n in 0..1_000u32 {
            let Some(KeyEntry::Compact(entry)) = table.get(&n.to_le_bytes()) else {
                panic!("key {n} missing")
            };
            assert_eq!(entry.contents(), Contents::Counter(i64::from(n)));
        }
        let position = table.find(&7u32.to_le_bytes()).expect("present");
        assert!(table.remove_at(position).is_some());
        assert!(table.get(&7u32.to_le_bytes()).is_none());
        assert_eq!(table.len(), 999);
        let object = KeyEntry::object(b"lock", Entry::new(super::super::lock::LockState::create()));
        let position = table.insert_new(object);
        assert_eq!(table.at(position).map(KeyEntry::key), Some(&b"lock"[..]));
    }

    #[test]
    fn the_prefetch_guess_is_the_key_s_own_bucket_and_a_long_batch_stops_at_the_bound() {
        let mut table = KeyTable::new(7);
        let key = |n: u32| format!("\0key:{n}").into_bytes();
        table.prefetch([&key(1)[..]].into_iter());
        assert_eq!(
            table.likely_bucket(&key(1)),
            None,
            "an empty table has nothing to guess"
        );
        for n in 0..10_000 {
            table.insert_new(KeyEntry::Compact(CompactEntry::bytes(&key(n), &[7; 32], 1, 0).unwrap()));
        }
        table.insert_new(KeyEntry::object(
            b"lock",
            Entry::new(super::super::lock::LockState::create()),
        ));
        let guessed_right = (0..10_000)
            .filter(|&n| table.likely_bucket(&key(n)) == table.find(&key(n)).map(|position| position.0))
            .count();
        // A wrong guess needs another key of the same group to share the tag first:
        // about one in 128 per such key, so a few percent at most.
        assert!(
            guessed_right >= 9_500,
            "only {guessed_right} of 10,000 guesses were the key's bucket"
        );
        // More present keys than one prefetch takes (it must stop at its bound rather
        // than index past it), absent ones and an object among them.
        let keys: Vec<Vec<u8>> = (9_970..10_050).map(key).chain([b"lock".to_vec()]).collect();
        table.prefetch(keys.iter().map(Vec::as_slice));
    }

    #[test]
    fn lengths_past_their_fields_are_refused() {
        let longest = vec![b'k'; usize::from(u16::MAX)];
        let entry = CompactEntry::bytes(&longest, b"v", 1, 0).unwrap();
        assert_eq!(
            entry.key(),
            &longest[..],
            "the longest key the field holds reads back whole"
        );
        let too_long = vec![b'k'; usize::from(u16::MAX) + 1];
        let refused = Err(CompactError::KeyTooLong { length: too_long.len() });
        assert_eq!(CompactEntry::bytes(&too_long, b"v", 1, 0).map(|_| ()), refused);
        assert_eq!(CompactEntry::counter(&too_long, 1, 1, 0).map(|_| ()), refused);
        assert_eq!(
            value_length_field(u32::MAX as usize + 1),
            Err(CompactError::ValueTooLong {
                length: u32::MAX as usize + 1
            })
        );
        assert_eq!(value_length_field(7), Ok(7u32.to_le_bytes()));
    }

    #[test]
    fn operations_on_the_wrong_kind_are_refused_and_change_nothing() {
        let mut bytes = CompactEntry::bytes(b"k", b"abc", 1, 9).unwrap();
        assert_eq!(bytes.set_counter_value(5, 2), Err(CompactError::WrongKind));
        assert_eq!(bytes.contents(), Contents::Bytes(b"abc"));
        assert_eq!((bytes.version(), bytes.expires_at_ms(), bytes.key()), (1, 9, &b"k"[..]));
        let mut counter = CompactEntry::counter(b"c", 5, 1, 9).unwrap();
        assert_eq!(counter.append(b"x", 8, 2), Err(CompactError::WrongKind));
        assert_eq!(counter.append(b"", 8, 2), Err(CompactError::WrongKind));
        assert_eq!(counter.contents(), Contents::Counter(5));
        assert_eq!(
            (counter.version(), counter.expires_at_ms(), counter.payload_bytes()),
            (1, 9, 0)
        );
    }
}
