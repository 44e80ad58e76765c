//! The store's time on one shard.

use std::cell::Cell;
use std::time::Instant;

/// The store's time: milliseconds since the node started, never earlier than a time
/// it already gave. A read's requests all run at the time of that read, and a
/// connection that paused mid-read (a full forward queue, a large answer being
/// written) must not take the store back in time.
pub(super) struct StoreClock {
    started: Instant,
    latest_ms: Cell<u64>,
    /// The instant `latest_ms` was last asked for: every request of a read asks for
    /// the read's instant, so the conversion runs once per read, not once per request.
    latest_asked: Cell<Option<Instant>>,
}

impl StoreClock {
    pub(super) fn new(started: Instant) -> StoreClock {
        StoreClock {
            started,
            latest_ms: Cell::new(0),
            latest_asked: Cell::new(None),
        }
    }

    /// The latest time given out.
    pub(super) fn latest(&self) -> u64 {
        self.latest_ms.get()
    }

    pub(super) fn ms_at(&self, instant: Instant) -> u64 {
        if self.latest_asked.get() == Some(instant) {
            return self.latest_ms.get();
        }
        let ms = instant.saturating_duration_since(self.started).as_millis() as u64;
        let ms = ms.max(self.latest_ms.get());
        self.latest_ms.set(ms);
        self.latest_asked.set(Some(instant));
        ms
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_store_clock_never_goes_back() {
        let started = Instant::now();
        let clock = StoreClock::new(started);
        assert_eq!(clock.ms_at(started + Duration::from_millis(5)), 5);
        // A read taken earlier but handled later (its connection paused) gets the
        // store's latest time, not its own.
        assert_eq!(clock.ms_at(started + Duration::from_millis(3)), 5);
        assert_eq!(clock.ms_at(started + Duration::from_millis(3)), 5);
        assert_eq!(clock.ms_at(started + Duration::from_millis(9)), 9);
        assert_eq!(clock.ms_at(started + Duration::from_millis(9)), 9);
        assert_eq!(clock.ms_at(started + Duration::from_millis(5)), 9);
        assert_eq!(clock.ms_at(started), 9);
        let fresh = StoreClock::new(started + Duration::from_millis(1));
        assert_eq!(
            fresh.ms_at(started),
            0,
            "an instant before the start reads as the start"
        );
    }
}
