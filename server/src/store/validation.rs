//! Checks of migrated state against the protocol's limits, which the objects that take
//! state from another shard (locks, semaphores, futures) share with the import of
//! whole entries. Each answers why a value is refused, for the batch's refusal.

use engram_proto::limits::{LEASE_MS_MAX, OWNER_BYTES_MAX};

pub(super) fn check_owner(owner: &[u8]) -> Result<(), String> {
    if owner.is_empty() || owner.len() > OWNER_BYTES_MAX {
        return Err(format!(
            "owner id of {} bytes is outside 1..={OWNER_BYTES_MAX} (owner_bytes_max)",
            owner.len()
        ));
    }
    Ok(())
}

pub(super) fn check_lease_ms(what: &str, lease_ms: u64) -> Result<(), String> {
    if lease_ms > LEASE_MS_MAX {
        return Err(format!("{what} of {lease_ms} ms exceeds lease_ms_max ({LEASE_MS_MAX})"));
    }
    Ok(())
}

/// Versions, fences and permit ids come from the source's version counter, so none may
/// exceed the counter the batch carries; one that did could be handed out again here.
pub(super) fn check_minted(what: &str, value: u64, last_version: u64) -> Result<(), String> {
    if value > last_version {
        return Err(format!(
            "{what} {value} exceeds the batch's last_version {last_version}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_inclusive_and_the_refusal_names_them() {
        assert!(check_owner(&[b'o'; OWNER_BYTES_MAX]).is_ok());
        let refusal = check_owner(&[b'o'; OWNER_BYTES_MAX + 1]).unwrap_err();
        assert!(refusal.contains("owner_bytes_max"), "{refusal}");
        assert!(check_owner(b"").is_err(), "an owner id is never empty");
        assert!(check_lease_ms("lease", LEASE_MS_MAX).is_ok());
        let refusal = check_lease_ms("lease", LEASE_MS_MAX + 1).unwrap_err();
        assert!(
            refusal.starts_with("lease of") && refusal.contains("lease_ms_max"),
            "{refusal}"
        );
        assert!(check_minted("fence", 7, 7).is_ok());
        let refusal = check_minted("fence", 8, 7).unwrap_err();
        assert!(
            refusal.contains("fence 8") && refusal.contains("last_version 7"),
            "{refusal}"
        );
    }
}
