//! Client-side limits and tunables, as named constants with their unit last.

/// Call timeout when the builder is not given one. Long enough to ride out a slot
/// migration's cut-over, short enough that a dead cluster is reported promptly.
pub const CALL_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Timeout of a cluster administration call ([`crate::admin::Admin`]) when none is
/// given: longer than a data call's, because a rebalance, drain or reclaim answers only
/// once the control plane has planned and written its state file.
pub const ADMIN_CALL_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// First retry delay. Small because the first retry usually follows a map refresh or a
/// reconnect, which already took a round trip.
pub const RETRY_BACKOFF_MS_MIN: u64 = 1;

/// Retry delays double up to this, so a flapping node is probed a few times a second
/// rather than hammered.
pub const RETRY_BACKOFF_MS_MAX: u64 = 250;

/// Retry delays after `TryAgain` stop growing here: that answer means the key's slot is
/// frozen for a hand-over that lasts milliseconds, not that the server is overloaded, so
/// waiting longer only adds to the call's latency.
pub const RETRY_TRY_AGAIN_MS_MAX: u64 = 4;

/// The writer coalesces queued frames into one write until the batch reaches this size:
/// one syscall for many small requests, without holding a huge buffer.
pub const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Connection attempts in a row that may fail (refused, reset during the handshake)
/// before a call gives up on the address with `Error::Unreachable`, well before its
/// timeout. A node that refuses connections is down or restarting, and a restarted node
/// has lost its slots: waiting out the call timeout for it helps nobody. Between the
/// attempts the client refreshes its map (routing directly), so a slot that moved or was
/// marked lost meanwhile is found.
pub const UNREACHABLE_ATTEMPTS_MAX: u32 = 4;

/// First delay between connection attempts to an unreachable address; it doubles up to
/// [`UNREACHABLE_BACKOFF_MS_MAX`], so the attempts span a few tens of milliseconds: long
/// enough to ride out a connection reset, short enough to fail fast.
pub const UNREACHABLE_BACKOFF_MS_MIN: u64 = 5;

/// Longest delay between connection attempts to an unreachable address.
pub const UNREACHABLE_BACKOFF_MS_MAX: u64 = 20;
