//! The bytes object handle: get, set (ttl, if-absent, if-version), del, append, and
//! reads and writes of a range.

use std::time::Duration;

use engram_proto::limits::{TTL_MS_MAX, VALUE_BYTES_MAX};
use engram_proto::{Command, Response, SetCondition};

use crate::client::{unexpected, Client};
use crate::error::Error;
use engram_proto::BytesCommand;

/// A value and the version of the write that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// How a [`Bytes::set_with`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOptions {
    /// Expiry after the write; `None` keeps the key until deleted. Rounded up to whole
    /// milliseconds, so a tiny TTL still expires rather than meaning "forever".
    pub ttl: Option<Duration>,
    pub condition: SetCondition,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            ttl: None,
            condition: SetCondition::Always,
        }
    }
}

/// Whether a conditional write happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    Written {
        version: u64,
    },
    /// The condition failed; `current_version` is 0 when the key is absent.
    Conflict {
        current_version: u64,
    },
}

/// A bytes object, from [`Client::bytes`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bytes {
    client: Client,
    key: Vec<u8>,
    timeout: Option<Duration>,
}

impl Client {
    /// A bytes object handle.
    pub fn bytes(&self, key: impl Into<Vec<u8>>) -> Bytes {
        Bytes::new(self.clone(), key.into())
    }
}

impl Bytes {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> Bytes {
        Bytes {
            client,
            key,
            timeout: None,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default.
    pub fn timeout(&self, timeout: Duration) -> Bytes {
        Bytes {
            timeout: Some(timeout),
            ..self.clone()
        }
    }

    pub async fn get(&self) -> Result<Option<Versioned>, Error> {
        let command = Command::from(BytesCommand::Get { key: self.key.clone() });
        match self.call(command, false).await? {
            Response::Value { value, version } => Ok(Some(Versioned { value, version })),
            Response::Missing => Ok(None),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Writes unconditionally; returns the new version.
    pub async fn set(&self, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        match self.set_with(value, SetOptions::default()).await? {
            SetOutcome::Written { version } => Ok(version),
            SetOutcome::Conflict { .. } => Err(Error::UnexpectedResponse {
                command: "set",
                response: "conflict",
            }),
        }
    }

    pub async fn set_with(&self, value: impl Into<Vec<u8>>, options: SetOptions) -> Result<SetOutcome, Error> {
        let value = checked_value(value.into())?;
        let command = Command::from(BytesCommand::Set {
            key: self.key.clone(),
            value,
            ttl_ms: ttl_ms(options.ttl)?,
            condition: options.condition,
        });
        match self.call(command, true).await? {
            Response::Written { version } => Ok(SetOutcome::Written { version }),
            Response::Conflict { current_version } => Ok(SetOutcome::Conflict { current_version }),
            other => Err(unexpected("set", &other)),
        }
    }

    /// Writes only if the key does not exist.
    pub async fn set_if_absent(&self, value: impl Into<Vec<u8>>) -> Result<SetOutcome, Error> {
        let options = SetOptions {
            ttl: None,
            condition: SetCondition::IfAbsent,
        };
        self.set_with(value, options).await
    }

    /// Deletes the key; returns whether it existed.
    pub async fn del(&self) -> Result<bool, Error> {
        match self
            .call(Command::from(BytesCommand::Del { key: self.key.clone() }), true)
            .await?
        {
            Response::Deleted { existed } => Ok(existed),
            other => Err(unexpected("del", &other)),
        }
    }

    /// Appends to the value (creating it when absent); returns `(version, length)` after
    /// the append.
    pub async fn append(&self, value: impl Into<Vec<u8>>) -> Result<(u64, u64), Error> {
        let command = Command::from(BytesCommand::Append {
            key: self.key.clone(),
            value: checked_value(value.into())?,
        });
        match self.call(command, true).await? {
            Response::Appended { version, length } => Ok((version, length)),
            other => Err(unexpected("append", &other)),
        }
    }

    /// The bytes from `start` through `end`, both included, each counted from the end
    /// when negative (-1 is the last byte), cut to the value (Redis's `GETRANGE`); `None`
    /// when the key is absent.
    pub async fn get_range(&self, start: i64, end: i64) -> Result<Option<Versioned>, Error> {
        let command = Command::from(BytesCommand::GetRange {
            key: self.key.clone(),
            start,
            end,
        });
        match self.call(command, false).await? {
            Response::Value { value, version } => Ok(Some(Versioned { value, version })),
            Response::Missing => Ok(None),
            other => Err(unexpected("get_range", &other)),
        }
    }

    /// Overwrites the value from `offset` on, padding with zero bytes past its end and
    /// creating it when absent (Redis's `SETRANGE`); keeps its expiry. Returns `(version,
    /// length)` after the write; `None` when `value` is empty and the key absent (nothing
    /// is written).
    pub async fn set_range(&self, offset: u64, value: impl Into<Vec<u8>>) -> Result<Option<(u64, u64)>, Error> {
        let value = checked_value(value.into())?;
        let end = offset.saturating_add(value.len() as u64);
        if end > VALUE_BYTES_MAX as u64 {
            return Err(Error::ValueTooLarge {
                length: usize::try_from(end).unwrap_or(usize::MAX),
            });
        }
        let command = Command::from(BytesCommand::SetRange {
            key: self.key.clone(),
            offset,
            value,
        });
        match self.call(command, true).await? {
            Response::RangeWritten { version, length } => Ok(Some((version, length))),
            Response::Missing => Ok(None),
            other => Err(unexpected("set_range", &other)),
        }
    }

    /// The value's length in bytes; `None` when the key is absent.
    pub async fn len(&self) -> Result<Option<u64>, Error> {
        match self
            .call(Command::from(BytesCommand::Len { key: self.key.clone() }), false)
            .await?
        {
            Response::ValueLength { length } => Ok(Some(length)),
            Response::Missing => Ok(None),
            other => Err(unexpected("len", &other)),
        }
    }

    async fn call(&self, command: Command, mutation: bool) -> Result<Response, Error> {
        self.client
            .call_with(Some(&self.key), command, mutation, self.timeout)
            .await
    }
}

pub(crate) fn checked_value(value: Vec<u8>) -> Result<Vec<u8>, Error> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::ValueTooLarge { length: value.len() });
    }
    Ok(value)
}

/// The wire TTL: 0 for none, otherwise whole milliseconds rounded up (at least 1).
pub(crate) fn ttl_ms(ttl: Option<Duration>) -> Result<u64, Error> {
    let Some(ttl) = ttl else { return Ok(0) };
    let milliseconds = ttl.as_nanos().div_ceil(1_000_000).max(1);
    match u64::try_from(milliseconds) {
        Ok(milliseconds) if milliseconds <= TTL_MS_MAX => Ok(milliseconds),
        _ => Err(Error::TtlTooLong { ttl }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_and_is_bounded() {
        assert_eq!(ttl_ms(None).unwrap(), 0);
        assert_eq!(ttl_ms(Some(Duration::ZERO)).unwrap(), 1);
        assert_eq!(ttl_ms(Some(Duration::from_nanos(1))).unwrap(), 1);
        assert_eq!(ttl_ms(Some(Duration::from_micros(1_500))).unwrap(), 2);
        assert_eq!(ttl_ms(Some(Duration::from_millis(TTL_MS_MAX))).unwrap(), TTL_MS_MAX);
        assert!(matches!(
            ttl_ms(Some(Duration::from_millis(TTL_MS_MAX + 1))),
            Err(Error::TtlTooLong { .. })
        ));
        assert!(matches!(ttl_ms(Some(Duration::MAX)), Err(Error::TtlTooLong { .. })));
    }

    #[test]
    fn oversize_values_are_refused_before_sending() {
        assert!(checked_value(vec![0; VALUE_BYTES_MAX]).is_ok());
        assert!(matches!(
            checked_value(vec![0; VALUE_BYTES_MAX + 1]),
            Err(Error::ValueTooLarge { length }) if length == VALUE_BYTES_MAX + 1
        ));
    }
}
