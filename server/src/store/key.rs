//! What any key answers: the kind of object it holds, and its expiry. Only bytes values
//! and counters expire; asking a coordination object to is refused, since it ends when
//! it holds nothing worth keeping and an expiry could pull a lock from under its holder.

use engram_proto::{ErrorCode, ExpireCondition, ObjectKind, Response};

use super::{error, expiry_bytes, Contents, KeyEntry, Object, Store};

/// The kind of object an entry holds.
pub(super) fn object_kind(entry: &KeyEntry) -> ObjectKind {
    match entry {
        KeyEntry::Compact(compact) => match compact.contents() {
            Contents::Bytes(_) => ObjectKind::Bytes,
            Contents::Counter(_) => ObjectKind::Counter,
        },
        KeyEntry::Object(object) => match &object.entry.object {
            Object::Lock(_) => ObjectKind::Lock,
            Object::Semaphore(_) => ObjectKind::Semaphore,
            Object::Barrier(_) => ObjectKind::Barrier,
            Object::Latch(_) => ObjectKind::Latch,
            Object::Future(_) => ObjectKind::Future,
            Object::Map(_) => ObjectKind::Map,
            Object::Queue(_) => ObjectKind::Queue,
        },
    }
}

impl Store {
    pub(crate) fn key_kind(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.live_entry(key, now_ms) {
            Some(entry) => Response::KeyKind {
                kind: object_kind(entry),
            },
            None => Response::Missing,
        }
    }

    pub(crate) fn key_ttl(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.live_entry(key, now_ms) {
            None => Response::Missing,
            Some(entry) => {
                let expires_at_ms = entry.expires_at_ms();
                Response::Ttl {
                    ttl_ms: (expires_at_ms != 0).then(|| expires_at_ms.saturating_sub(now_ms)),
                }
            }
        }
    }

    pub(crate) fn key_expire(&mut self, key: &[u8], ttl_ms: u64, condition: ExpireCondition, now_ms: u64) -> Response {
        let current = match self.expiring_entry(key, now_ms) {
            Ok(Some(current)) => current,
            Ok(None) => return Response::Missing,
            Err(refusal) => return refusal,
        };
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let applies = match condition {
            ExpireCondition::Always => true,
            ExpireCondition::IfNone => current == 0,
            ExpireCondition::IfSome => current != 0,
            ExpireCondition::IfLater => current != 0 && expires_at_ms > current,
            ExpireCondition::IfSooner => current == 0 || expires_at_ms < current,
        };
        if !applies {
            return Response::ExpiryChanged { changed: false };
        }
        if current == 0 {
            if let Err(refusal) = self.admit_growth(0, expiry_bytes(key)) {
                return refusal;
            }
        }
        self.set_expiry(key, current, expires_at_ms, now_ms);
        Response::ExpiryChanged { changed: true }
    }

    pub(crate) fn key_persist(&mut self, key: &[u8], now_ms: u64) -> Response {
        match self.live_entry(key, now_ms) {
            None => Response::Missing,
            // A coordination object never expires: nothing to take away.
            Some(KeyEntry::Object(_)) => Response::ExpiryChanged { changed: false },
            Some(KeyEntry::Compact(compact)) => {
                let current = compact.expires_at_ms();
                if current != 0 {
                    self.set_expiry(key, current, 0, now_ms);
                }
                Response::ExpiryChanged { changed: current != 0 }
            }
        }
    }

    /// The expiry (0: none) of a key that may be given one; `None` when it is absent.
    fn expiring_entry(&mut self, key: &[u8], now_ms: u64) -> Result<Option<u64>, Response> {
        match self.live_entry(key, now_ms) {
            None => Ok(None),
            Some(KeyEntry::Compact(compact)) => Ok(Some(compact.expires_at_ms())),
            Some(KeyEntry::Object(_)) => Err(error(
                ErrorCode::WrongType,
                "coordination objects do not expire: they end when they hold nothing worth keeping",
            )),
        }
    }

    fn set_expiry(&mut self, key: &[u8], old_ms: u64, new_ms: u64, now_ms: u64) {
        if let Some(KeyEntry::Compact(compact)) = self.live_entry(key, now_ms) {
            compact.set_expires_at_ms(new_ms);
        }
        self.move_deadline(key, old_ms, new_ms);
    }
}
