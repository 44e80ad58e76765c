//! Protocol limits. Every length that arrives from the network is checked against one of
//! these before anything is allocated for it, so a peer cannot make a server reserve memory
//! by claiming a large size.

/// Version spoken by this build; a handshake with another version is refused.
pub const PROTOCOL_VERSION: u16 = 10;

/// Number of hash slots. A power of two (so the modulo is cheap) and the same as Redis
/// Cluster, which keeps hashtag intuition portable.
pub const SLOT_COUNT: u32 = 16_384;

/// Largest key. Keys are identifiers, not payloads; a bound keeps the per-key overhead
/// predictable and lets the decoder reject absurd requests early.
pub const KEY_BYTES_MAX: usize = 16 * 1024;

/// Largest value of a bytes object (after append, too).
pub const VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest namespace (tenant) name. The server prefixes stored keys with the
/// namespace's length in one byte, so this must stay at most 255: a longer name would
/// wrap and collide with another tenant's keys.
pub const NAMESPACE_BYTES_MAX: usize = 255;

/// Largest frame payload a connection may send before its Hello is accepted: a Hello
/// with the longest namespace and credentials fits, and a stranger who never
/// authenticates makes the node hold no more than this (and its read buffer) per
/// connection.
pub const HELLO_PAYLOAD_BYTES_MAX: usize = 4 * 1024;

/// Largest credential blob accepted in a handshake.
pub const CREDENTIALS_BYTES_MAX: usize = 1024;

/// Room for everything in a request payload that is neither key nor value (rkyv framing,
/// enum tags, integers).
pub const PAYLOAD_OVERHEAD_BYTES_MAX: usize = 4 * 1024;

/// Largest payload of one frame. Big enough for the largest key plus the largest value,
/// so an oversize key or value gets a precise error rather than a closed connection.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = KEY_BYTES_MAX + VALUE_BYTES_MAX + PAYLOAD_OVERHEAD_BYTES_MAX;

/// Requests a server will hold unanswered for one connection before it stops reading
/// from it (backpressure), and what one link (`crate::link`) keeps outstanding at most:
/// a client's in-flight requests per connection.
pub const IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// Requests a link still expects answers to after their callers stopped waiting (a
/// client's call timed out, or was dropped), so each late answer is recognised and
/// dropped. Past it the link is given up: a peer that leaves that many unanswered is
/// stuck.
pub const ABANDONED_REQUESTS_PER_CONNECTION_MAX: usize = IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;

/// First size of a link's read buffer. It grows to fit a larger frame once that frame's
/// header has been validated (`crate::link::FrameBuffer`).
pub const LINK_READ_BUFFER_BYTES_INITIAL: usize = 16 * 1024;

/// A link's read buffer grown past this for one large frame is shrunk back once drained,
/// so an idle link does not keep megabytes.
pub const LINK_READ_BUFFER_BYTES_RETAINED_MAX: usize = 256 * 1024;

/// Longest call timeout: how long a client keeps retrying one call, on top of any wait
/// the call asks the server for ([`WAIT_MS_MAX`]). Operation-id records are retained
/// longer than a call can last (see the server), which is what makes a retry
/// exactly-once.
pub const CALL_TIMEOUT_MS_MAX: u64 = 60_000;

/// Longest a request may be parked at the server: a lock or semaphore acquire's wait, a
/// barrier, latch or future wait, a blocking pop. Fifteen minutes, because that is how
/// long an AWS Lambda function may run: a function can wait for as long as it lives, as
/// Redis's `BLPOP` lets it. Unlike `BLPOP 0` a wait always ends (a longer one is a loop
/// of waits), so every parked request has a deadline. A client's call gets its wait on
/// top of its call timeout.
pub const WAIT_MS_MAX: u64 = 15 * 60_000;

/// Most arguments of one Redis-protocol command, its name included: Redis's multibulk
/// limit (before 7.0 made it `INT_MAX`), so any command clients and tools build for Redis
/// (an `MSET` or `DEL` of many keys) fits. The parser keeps one range (24 bytes) per
/// argument, at most four times what the argument's own header and terminator cost on
/// the wire, so the ranges stay within a small multiple of [`RESP_COMMAND_BYTES_MAX`].
pub const RESP_ARRAY_LEN_MAX: usize = 1 << 20;

/// Largest argument of a Redis-protocol command: exactly the largest value
/// ([`VALUE_BYTES_MAX`]), the largest thing any command takes. A larger argument could
/// only be read to be refused; refused at its length line, it costs the client its
/// connection (with an error naming this limit) and the server nothing.
pub const RESP_BULK_BYTES_MAX: usize = VALUE_BYTES_MAX;

/// Largest Redis-protocol array command, its length lines included. A connection parses
/// a command where it was read, so its read buffer must hold all of it: this bounds what
/// one connection can make a server buffer, which the count and argument limits alone do
/// not (a million arguments of 4 MiB). 16 MiB holds an `MSET` of three values of the
/// largest size with their keys; a larger batch is one the client can split.
pub const RESP_COMMAND_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Longest inline command (a line not starting with `*`: what people type at a telnet
/// prompt, and `redis-benchmark`'s inline `PING`), its line end excluded: Redis's
/// `PROTO_INLINE_MAX_SIZE`. Inline commands are for people; values travel in arrays. A
/// longer line is refused before its newline arrives.
pub const RESP_INLINE_BYTES_MAX: usize = 64 * 1024;

/// Longest length line of a Redis-protocol request (`*<count>` or `$<length>`), its
/// `\r\n` included. The longest meaningful one is 23 bytes (the type byte, a sign, 19
/// digits, `\r\n`), so a longer one is refused before its end arrives instead of being
/// waited for.
pub const RESP_HEADER_LINE_BYTES_MAX: usize = 32;

/// Most arguments of a Redis-protocol command before the connection authenticated:
/// Redis's. Enough for any `AUTH` or `HELLO` (7 arguments at most), little enough that a
/// client nobody knows cannot make the server parse much.
pub const RESP_UNAUTHENTICATED_ARRAY_LEN_MAX: usize = 10;

/// Largest argument of a Redis-protocol command before the connection authenticated:
/// Redis's, far above any credential ([`CREDENTIALS_BYTES_MAX`]).
pub const RESP_UNAUTHENTICATED_BULK_BYTES_MAX: usize = 16 * 1024;

/// Refused `AUTH`s after which a Redis-protocol connection is closed: a client with the
/// right token needs one, and each attempt more is a guess.
pub const RESP_AUTH_FAILURES_PER_CONNECTION_MAX: u32 = 10;

/// Longest time-to-live a key may be given (about 10 years), so deadlines never overflow.
pub const TTL_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Longest owner id of a lock or semaphore permit.
pub const OWNER_BYTES_MAX: usize = 256;

/// Longest lease a lock or permit may be given; a holder that needs longer renews.
pub const LEASE_MS_MAX: u64 = 3_600_000;

/// Most parties of one barrier, and most permits of one semaphore.
pub const PARTIES_MAX: u32 = 1 << 20;

/// Most fields one map returns at once (`MapGetAll`), so an answer always fits a frame.
pub const MAP_FIELDS_MAX: usize = 65_536;

/// Most steps one scan page takes at a shard (a step looks at one place of the shard's
/// key table, empty or not), whatever the client's count asks: a page holds its shard
/// for about a millisecond at most, as its keys are read from memory one by one.
pub const SCAN_COUNT_MAX: u32 = 10_000;

/// Most bytes of keys one scan page carries: the page ends at the first key past it, so
/// a page of the longest keys still fits a frame.
pub const SCAN_PAGE_BYTES_MAX: usize = 1 << 20;

/// Most keys one pop may wait on (`BLPOP` of several keys): a waiter sits in each
/// key's queue, so the keys bound what one request holds.
pub const POP_KEYS_MAX: usize = 256;

/// Longest scan pattern (a glob over key names, as long as the longest key).
pub const SCAN_PATTERN_BYTES_MAX: usize = KEY_BYTES_MAX;

/// Longest zone label a node joins with (`engramd --zone`): a name like a rack or an
/// availability zone, which every status answer carries per node.
pub const ZONE_BYTES_MAX: usize = 64;

/// Low bits of a version, fence or permit id that count within one incarnation; the
/// bits above them hold the incarnation. A shard draws every version of an incarnation
/// from `incarnation << VERSION_COUNTER_BITS` up, so anything a later incarnation draws
/// is above anything an earlier one drew: 2^44 (1.7e13) draws per shard per incarnation,
/// 200 days of a million writes a second.
pub const VERSION_COUNTER_BITS: u32 = 44;

/// Most incarnations a cluster hands out (joins and reclaims), so that an incarnation
/// shifted by [`VERSION_COUNTER_BITS`] fits a u64.
pub const INCARNATIONS_MAX: u64 = (1 << (64 - VERSION_COUNTER_BITS)) - 1;

/// The lowest version, fence or permit id incarnation `incarnation` may hand out.
pub const fn incarnation_version_floor(incarnation: u64) -> u64 {
    incarnation << VERSION_COUNTER_BITS
}

// The waits' limit, checked when this crate compiles.
const _: () = {
    // A Hello of the longest namespace and credentials, with room for rkyv's layout and
    // the other fields, fits the limit before the handshake.
    assert!(NAMESPACE_BYTES_MAX + CREDENTIALS_BYTES_MAX + 256 <= HELLO_PAYLOAD_BYTES_MAX);
    // A full scan page (its last key past the byte limit, and rkyv's 8-byte entry per
    // key, rounded up) fits a frame.
    assert!(
        SCAN_PAGE_BYTES_MAX + KEY_BYTES_MAX + 16 * SCAN_COUNT_MAX as usize + PAYLOAD_OVERHEAD_BYTES_MAX
            <= FRAME_PAYLOAD_BYTES_MAX
    );
    // An AWS Lambda function runs at most 15 minutes; a wait may last as long.
    assert!(WAIT_MS_MAX >= 15 * 60 * 1000);
    // Waits are not bounded by the call timeout: a call gets its wait on top.
    assert!(WAIT_MS_MAX > CALL_TIMEOUT_MS_MAX);
    // A holder can keep a lock (renewing) through the longest wait of the next in line.
    assert!(LEASE_MS_MAX >= WAIT_MS_MAX);
};
