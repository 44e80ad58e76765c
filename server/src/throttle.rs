//! A warning that repeats while its cause lasts (a heartbeat refused twice a second),
//! logged at most once per interval instead.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// When a repeated warning was last logged. Not `Sync`: each belongs to one thread.
pub struct Throttle {
    interval: Duration,
    logged: Cell<Option<Instant>>,
}

impl Throttle {
    pub fn new(interval_ms: u64) -> Throttle {
        Throttle {
            interval: Duration::from_millis(interval_ms),
            logged: Cell::new(None),
        }
    }

    /// Whether the warning may be logged now; if so, it counts as logged.
    pub fn allows(&self) -> bool {
        let due = self.logged.get().is_none_or(|logged| logged.elapsed() >= self.interval);
        if due {
            self.logged.set(Some(Instant::now()));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_allowed_once_per_interval() {
        let throttle = Throttle::new(60_000);
        assert!(throttle.allows());
        assert!(!throttle.allows());
        let immediate = Throttle::new(0);
        assert!(immediate.allows());
        assert!(immediate.allows());
    }
}
