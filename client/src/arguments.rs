//! Arguments of the coordination commands in wire form, checked against the protocol's
//! limits before anything is sent: waits and leases as whole milliseconds, owner ids.
//!
//! Durations round up, so a wait or lease is never shorter than asked for.

use std::time::Duration;

use engram_proto::limits::{LEASE_MS_MAX, OWNER_BYTES_MAX, WAIT_MS_MAX};

use crate::error::Error;

/// A wait in whole milliseconds, at most `WAIT_MS_MAX` (15 minutes); zero stays zero,
/// which the server reads as "answer at once".
pub(crate) fn wait_ms(wait: Duration) -> Result<u64, Error> {
    match u64::try_from(whole_milliseconds(wait)) {
        Ok(milliseconds) if milliseconds <= WAIT_MS_MAX => Ok(milliseconds),
        _ => Err(Error::WaitTooLong { wait }),
    }
}

/// A wait that must really wait: at least 1 ms, because a zero wait means "do not wait"
/// on the wire and callers who want that use the `try_` operations.
pub(crate) fn real_wait_ms(wait: Duration) -> Result<u64, Error> {
    Ok(wait_ms(wait)?.max(1))
}

/// A lease in whole milliseconds, at least 1 (the server refuses a zero lease, and a
/// tiny one should expire rather than be an error).
pub(crate) fn lease_ms(lease: Duration) -> Result<u64, Error> {
    match u64::try_from(whole_milliseconds(lease).max(1)) {
        Ok(milliseconds) if milliseconds <= LEASE_MS_MAX => Ok(milliseconds),
        _ => Err(Error::LeaseTooLong { lease }),
    }
}

/// An owner id, which must be 1..=`OWNER_BYTES_MAX` bytes.
pub(crate) fn owner(owner: Vec<u8>) -> Result<Vec<u8>, Error> {
    if owner.is_empty() || owner.len() > OWNER_BYTES_MAX {
        return Err(Error::InvalidOwner { length: owner.len() });
    }
    Ok(owner)
}

fn whole_milliseconds(duration: Duration) -> u128 {
    duration.as_nanos().div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_keep_zero_and_are_bounded() {
        assert_eq!(wait_ms(Duration::ZERO).unwrap(), 0);
        assert_eq!(real_wait_ms(Duration::ZERO).unwrap(), 1);
        assert_eq!(wait_ms(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(wait_ms(Duration::from_micros(2_001)).unwrap(), 3);
        // As long as a Lambda function lives, past the plain call timeout.
        assert_eq!(wait_ms(Duration::from_secs(15 * 60)).unwrap(), WAIT_MS_MAX);
        assert!(matches!(
            wait_ms(Duration::from_millis(WAIT_MS_MAX + 1)),
            Err(Error::WaitTooLong { .. })
        ));
        assert!(matches!(wait_ms(Duration::MAX), Err(Error::WaitTooLong { .. })));
    }

    #[test]
    fn leases_are_at_least_one_millisecond_and_bounded() {
        assert_eq!(lease_ms(Duration::ZERO).unwrap(), 1);
        assert_eq!(lease_ms(Duration::from_micros(1_500)).unwrap(), 2);
        assert_eq!(lease_ms(Duration::from_millis(LEASE_MS_MAX)).unwrap(), LEASE_MS_MAX);
        assert!(matches!(
            lease_ms(Duration::from_millis(LEASE_MS_MAX + 1)),
            Err(Error::LeaseTooLong { .. })
        ));
        assert!(matches!(lease_ms(Duration::MAX), Err(Error::LeaseTooLong { .. })));
    }

    #[test]
    fn owners_must_be_non_empty_and_bounded() {
        assert!(matches!(owner(Vec::new()), Err(Error::InvalidOwner { length: 0 })));
        assert_eq!(owner(b"worker-1".to_vec()).unwrap(), b"worker-1");
        assert!(owner(vec![b'o'; OWNER_BYTES_MAX]).is_ok());
        assert!(matches!(
            owner(vec![b'o'; OWNER_BYTES_MAX + 1]),
            Err(Error::InvalidOwner { .. })
        ));
    }
}
