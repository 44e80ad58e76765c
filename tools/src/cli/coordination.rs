//! Subcommands of the coordination objects: lock, sem, barrier, latch, future, queue, map.
//!
//! Lock and semaphore acquires wait with `--wait-ms` (default: do not wait). The other
//! waits (barrier, latch, future get, queue pop) are bounded by the global
//! `--timeout-ms`, which for them is how long to wait at the server.

use clap::builder::RangedU64ValueParser;
use clap::Subcommand;

/// Leases must be positive: a zero lease would be a lock that is free as soon as taken.
fn positive() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::new().range(1..)
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Takes the lock for OWNER; prints the fencing token. Without --wait-ms it does not
    /// wait: a lock held by another owner exits 4. An owner that holds the lock already
    /// gets its token again, with the lease renewed.
    Acquire {
        name: String,
        /// Who holds the lock (e.g. one id per worker); needed to release or renew it.
        #[arg(long, env = "ENGRAM_OWNER")]
        owner: String,
        /// The lock frees itself this long after the grant unless renewed.
        #[arg(long, env = "ENGRAM_LEASE_MS", value_name = "MS", value_parser = positive())]
        lease_ms: u64,
        /// Wait up to this long behind earlier waiters (at most 900000, 15 minutes:
        /// wait_ms_max).
        #[arg(long, env = "ENGRAM_WAIT_MS", value_name = "MS", default_value_t = 0)]
        wait_ms: u64,
    },
    /// Releases the lock held by OWNER under TOKEN; prints OK. Exit code 3 when that
    /// grant no longer holds the lock (NotHolder).
    Release {
        name: String,
        #[arg(long, env = "ENGRAM_OWNER")]
        owner: String,
        /// The fencing token printed by acquire.
        #[arg(long)]
        token: u64,
    },
    /// Extends the lease of OWNER's grant TOKEN to MS from now; prints the token.
    Renew {
        name: String,
        #[arg(long, env = "ENGRAM_OWNER")]
        owner: String,
        #[arg(long)]
        token: u64,
        #[arg(long, env = "ENGRAM_LEASE_MS", value_name = "MS", value_parser = positive())]
        lease_ms: u64,
    },
    /// Prints who holds the lock, one labeled field per line (`owner: …`, `fence: …`,
    /// `lease remaining: … ms`); exit code 1 when nobody holds it.
    Holder {
        name: String,
        /// Print JSON (`owner`, `fence`, `lease_remaining_ms`) instead.
        #[arg(long, env = "ENGRAM_JSON")]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SemaphoreCommand {
    /// Takes PERMITS permits for OWNER; prints the permit id. Without --wait-ms it does
    /// not wait: too few free permits exit 4.
    Acquire {
        name: String,
        /// Permits of the semaphore; fixed by its first use, and must match it.
        #[arg(long)]
        capacity: u32,
        #[arg(long, default_value_t = 1)]
        permits: u32,
        #[arg(long, env = "ENGRAM_OWNER")]
        owner: String,
        /// The permits return this long after the grant unless renewed.
        #[arg(long, env = "ENGRAM_LEASE_MS", value_name = "MS", value_parser = positive())]
        lease_ms: u64,
        /// Wait up to this long behind earlier waiters (at most 900000, 15 minutes:
        /// wait_ms_max).
        #[arg(long, env = "ENGRAM_WAIT_MS", value_name = "MS", default_value_t = 0)]
        wait_ms: u64,
    },
    /// Returns the permits of PERMIT; prints OK. Exit code 3 when they were already
    /// returned (NotHolder).
    Release {
        name: String,
        #[arg(long)]
        capacity: u32,
        /// The permit id printed by acquire.
        #[arg(long)]
        permit: u64,
    },
    /// Extends the lease of PERMIT to MS from now; prints the permit id.
    Renew {
        name: String,
        #[arg(long)]
        capacity: u32,
        #[arg(long)]
        permit: u64,
        #[arg(long, env = "ENGRAM_LEASE_MS", value_name = "MS", value_parser = positive())]
        lease_ms: u64,
    },
    /// Prints the number of free permits.
    Available {
        name: String,
        #[arg(long)]
        capacity: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum BarrierCommand {
    /// Waits until PARTIES callers arrived (up to --timeout-ms); prints
    /// `GENERATION INDEX`. Exit code 4 when this wait ran out, 3 when another party's
    /// did (BarrierBroken).
    Wait {
        name: String,
        /// Callers that must arrive before any passes.
        #[arg(long)]
        parties: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum LatchCommand {
    /// Sets the count if the latch is open (at zero); prints it. Exit code 2 when the
    /// latch is still counting down.
    Set { name: String, count: u64 },
    /// Counts down by one; prints the count after.
    CountDown { name: String },
    /// Prints the count.
    Count { name: String },
    /// Waits until the count is zero (up to --timeout-ms); prints OK. Exit code 4 when
    /// the wait ran out.
    Wait { name: String },
}

#[derive(Debug, Subcommand)]
pub enum FutureCommand {
    /// Completes the future with VALUE; prints OK. Exit code 3 when it was already
    /// completed (AlreadyCompleted).
    Set { name: String, value: String },
    /// Prints the value. Without --timeout-ms it does not wait: exit code 1 when not yet
    /// completed; with it, exit code 4 when the wait ran out.
    Get { name: String },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Appends VALUE at the back (--front: the front); prints the length after.
    Push {
        name: String,
        value: String,
        #[arg(long)]
        front: bool,
    },
    /// Takes the front value (--back: the back value) and prints it. Without
    /// --timeout-ms it does not wait: exit code 1 when empty; with it, exit code 4 when
    /// the queue stayed empty.
    Pop {
        name: String,
        #[arg(long)]
        back: bool,
    },
    /// Prints the length.
    Len { name: String },
}

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Writes FIELD; prints the version of the write.
    Set { name: String, field: String, value: String },
    /// Prints FIELD's value; exit code 1 when there is none.
    Get { name: String, field: String },
    /// Deletes FIELD; prints 1 if it existed, 0 otherwise.
    Del { name: String, field: String },
    /// Prints every field as `FIELD<TAB>VALUE`, one per line, sorted by field.
    All { name: String },
    /// Adds DELTA (default 1, may be negative) to a field holding a decimal integer;
    /// prints the new value.
    #[command(allow_negative_numbers = true)]
    Incr {
        name: String,
        field: String,
        #[arg(default_value_t = 1)]
        delta: i64,
    },
}
