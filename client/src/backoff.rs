//! Retry delays: exponential with jitter, so clients that failed together do not retry
//! together.

use std::time::Duration;

use rand::Rng;

use engram_proto::ErrorCode;

use crate::error::Error;
use crate::limits::{
    RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN, RETRY_TRY_AGAIN_MS_MAX, UNREACHABLE_BACKOFF_MS_MAX,
    UNREACHABLE_BACKOFF_MS_MIN,
};

/// The delay before retrying after `error` on retry number `attempt`: [`retry_delay`],
/// except that after `TryAgain` (a slot frozen for a hand-over of milliseconds, not an
/// overloaded server) it never exceeds `RETRY_TRY_AGAIN_MS_MAX`, and after a refused
/// connection it follows its own short ramp (`UNREACHABLE_BACKOFF_MS_MIN` to `_MAX`): the
/// call gives up after a few of those, so they must be spread over tens of milliseconds,
/// not over the call's timeout.
pub fn retry_delay_after(error: &Error, attempt: u32) -> Duration {
    if error.is_unreachable() {
        return jittered(ceiling(UNREACHABLE_BACKOFF_MS_MIN, UNREACHABLE_BACKOFF_MS_MAX, attempt));
    }
    let delay = retry_delay(attempt);
    if error.is_server(ErrorCode::TryAgain) {
        return delay.min(Duration::from_millis(RETRY_TRY_AGAIN_MS_MAX));
    }
    delay
}

/// The delay before retry number `attempt` (0 for the first retry): a ceiling that doubles
/// from `RETRY_BACKOFF_MS_MIN` up to `RETRY_BACKOFF_MS_MAX`, and a uniform pick in its upper
/// half ("equal jitter": spread out, yet never much shorter than the ceiling).
pub fn retry_delay(attempt: u32) -> Duration {
    jittered(ceiling(RETRY_BACKOFF_MS_MIN, RETRY_BACKOFF_MS_MAX, attempt))
}

/// A uniform pick in the upper half of `ceiling`.
fn jittered(ceiling: Duration) -> Duration {
    let floor = ceiling / 2;
    rand::rng().random_range(floor..=ceiling)
}

/// `min_ms` doubled `attempt` times, at most `max_ms`.
fn ceiling(min_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
    Duration::from_millis(min_ms.saturating_mul(factor).min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: ErrorCode) -> Error {
        Error::from_reply(engram_proto::ErrorReply {
            code: code.as_u16(),
            message: String::new(),
            map_epoch: 0,
        })
    }

    #[test]
    fn retries_after_try_again_stay_short_and_others_grow() {
        let try_again = server_error(ErrorCode::TryAgain);
        let busy = server_error(ErrorCode::Busy);
        for attempt in [0, 3, 8, 20, u32::MAX] {
            let delay = retry_delay_after(&try_again, attempt);
            assert!(
                delay <= Duration::from_millis(RETRY_TRY_AGAIN_MS_MAX),
                "{attempt}: {delay:?}"
            );
        }
        // Past the cap, an overloaded server is backed off from much longer.
        let delay = retry_delay_after(&busy, 20);
        assert!(delay >= Duration::from_millis(RETRY_BACKOFF_MS_MAX) / 2, "{delay:?}");
    }

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
        let ceiling = |attempt| ceiling(RETRY_BACKOFF_MS_MIN, RETRY_BACKOFF_MS_MAX, attempt);
        assert_eq!(ceiling(0), Duration::from_millis(RETRY_BACKOFF_MS_MIN));
        assert_eq!(ceiling(1), Duration::from_millis(RETRY_BACKOFF_MS_MIN * 2));
        assert_eq!(ceiling(100), Duration::from_millis(RETRY_BACKOFF_MS_MAX));
        for attempt in 0..70 {
            assert!(ceiling(attempt) <= ceiling(attempt + 1));
        }
    }

    #[test]
    fn retries_after_a_refused_connection_stay_within_their_short_ramp() {
        let unreachable = Error::Unreachable {
            address: "127.0.0.1:1".into(),
            attempts: 1,
            source: crate::error::ConnectionError::Closed,
        };
        for attempt in [0, 1, 2, 3, 30, u32::MAX] {
            let delay = retry_delay_after(&unreachable, attempt);
            assert!(
                delay >= Duration::from_millis(UNREACHABLE_BACKOFF_MS_MIN) / 2,
                "{delay:?}"
            );
            assert!(delay <= Duration::from_millis(UNREACHABLE_BACKOFF_MS_MAX), "{delay:?}");
        }
    }
}
