//! Write-once futures: the first complete sets the value and wakes every waiter; later
//! completes get `AlreadyCompleted`.

use engram_proto::limits::VALUE_BYTES_MAX;
use engram_proto::{ErrorCode, MigratedCompletion, MigratedObject, Response};

use super::validation::check_minted;

use super::{error, Effects, Object, Outcome, WaiterId};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FutureState {
    /// The value and the version of its completion.
    value: Option<(Vec<u8>, u64)>,
    waiters: Vec<WaiterId>,
}

impl FutureState {
    pub fn create() -> Object {
        Object::Future(Box::default())
    }

    pub fn payload_bytes(&self) -> u64 {
        self.value.as_ref().map_or(0, |(value, _)| value.capacity() as u64) + self.waiters.len() as u64 * 8
    }

    pub fn take_waiters(&mut self) -> Vec<WaiterId> {
        std::mem::take(&mut self.waiters)
    }

    /// The future as it travels to another shard; waiters stay behind (answered `TryAgain`).
    pub fn export(&self) -> MigratedObject {
        MigratedObject::Future {
            completion: self.value.as_ref().map(|(value, version)| MigratedCompletion {
                value: value.clone(),
                version: *version,
            }),
        }
    }

    pub fn import(completion: Option<MigratedCompletion>, last_version: u64) -> Result<FutureState, String> {
        let value = match completion {
            None => None,
            Some(completion) => {
                if completion.value.len() > VALUE_BYTES_MAX {
                    return Err(format!(
                        "value of {} bytes exceeds value_bytes_max ({VALUE_BYTES_MAX})",
                        completion.value.len()
                    ));
                }
                check_minted("completion version", completion.version, last_version)?;
                Some((completion.value, completion.version))
            }
        };
        Ok(FutureState {
            value,
            waiters: Vec::new(),
        })
    }

    pub fn complete(&mut self, value: &[u8], effects: &mut Effects<'_>) -> Response {
        if let Some((_, version)) = &self.value {
            return error(
                ErrorCode::AlreadyCompleted,
                format!("future was completed at version {version}"),
            );
        }
        if let Err(refusal) = effects.admit(value.len() as u64) {
            return refusal;
        }
        let version = effects.next_version();
        for waiter in std::mem::take(&mut self.waiters) {
            effects.complete(
                waiter,
                Response::Value {
                    value: value.to_vec(),
                    version,
                },
            );
        }
        self.value = Some((value.to_vec(), version));
        Response::FutureCompleted
    }

    pub fn get(&mut self, key: &[u8], timeout_ms: u64, effects: &mut Effects<'_>) -> Outcome {
        if let Some((value, version)) = &self.value {
            return Outcome::Ready(Response::Value {
                value: value.clone(),
                version: *version,
            });
        }
        if timeout_ms == 0 {
            return Outcome::Ready(Response::Missing);
        }
        let waiter = effects.park(key, timeout_ms);
        self.waiters.push(waiter);
        Outcome::Parked(waiter)
    }

    pub fn cancel(&mut self, waiter: WaiterId) {
        self.waiters.retain(|candidate| *candidate != waiter);
    }

    pub fn time_out(&mut self, _key: &[u8], waiter: WaiterId, effects: &mut Effects<'_>) {
        if let Some(position) = self.waiters.iter().position(|candidate| *candidate == waiter) {
            self.waiters.remove(position);
            effects.complete(waiter, error(ErrorCode::Timeout, "future was not completed in time"));
        }
    }
}
