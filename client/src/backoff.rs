//! Retry delays: exponential with jitter, so clients that failed together do not retry
//! together.

use std::time::Duration;

use rand::Rng;

use crate::limits::{RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN};

/// The delay before retry number `attempt` (0 for the first retry): a ceiling that doubles
/// from `RETRY_BACKOFF_MS_MIN` up to `RETRY_BACKOFF_MS_MAX`, and a uniform pick in its upper
/// half ("equal jitter": spread out, yet never much shorter than the ceiling).
pub fn retry_delay(attempt: u32) -> Duration {
    let ceiling = ceiling(attempt);
    let floor = ceiling / 2;
    rand::rng().random_range(floor..=ceiling)
}

fn ceiling(attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
    let ceiling_ms = RETRY_BACKOFF_MS_MIN.saturating_mul(factor).min(RETRY_BACKOFF_MS_MAX);
    Duration::from_millis(ceiling_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_for_any_attempt() {
        for attempt in [0, 1, 2, 5, 10, 31, 62, 63, 64, 1_000, u32::MAX] {
            for _ in 0..100 {
                let delay = retry_delay(attempt);
                assert!(
                    delay <= Duration::from_millis(RETRY_BACKOFF_MS_MAX),
                    "{attempt}: {delay:?}"
                );
                assert!(
                    delay >= Duration::from_millis(RETRY_BACKOFF_MS_MIN) / 2,
                    "{attempt}: {delay:?}"
                );
            }
        }
    }

    #[test]
    fn ceiling_doubles_then_saturates() {
        assert_eq!(ceiling(0), Duration::from_millis(RETRY_BACKOFF_MS_MIN));
        assert_eq!(ceiling(1), Duration::from_millis(RETRY_BACKOFF_MS_MIN * 2));
        assert_eq!(ceiling(100), Duration::from_millis(RETRY_BACKOFF_MS_MAX));
        for attempt in 0..70 {
            assert!(ceiling(attempt) <= ceiling(attempt + 1));
        }
    }
}
