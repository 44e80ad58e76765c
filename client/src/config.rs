//! The validated settings a client runs with.

use std::time::Duration;

use engram_proto::limits::CALL_TIMEOUT_MS_MAX;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub seed_address: String,
    pub namespace: Vec<u8>,
    pub timeout: Duration,
    pub direct: bool,
}

/// Clamps a timeout to `CALL_TIMEOUT_MS_MAX`, the longest a client may retry one
/// operation (plus its wait, if it waits): the server's exactly-once guarantee for a
/// retried operation id is only promised within that window.
pub(crate) fn cap_timeout(timeout: Duration) -> Duration {
    timeout.min(Duration::from_millis(CALL_TIMEOUT_MS_MAX))
}
