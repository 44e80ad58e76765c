//! The counter (i64) handle: get, add, incr, set, compare-and-set.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::client::{unexpected, Client};
use crate::error::Error;
use engram_proto::CounterCommand;

/// Result of [`Counter::compare_and_set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub swapped: bool,
    /// The counter's value after the operation (the new value when swapped).
    pub current: i64,
}

/// A counter, from [`Client::counter`]. A missing counter reads as 0; arithmetic that
/// would overflow fails with `Overflow` rather than wrapping. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Counter {
    client: Client,
    key: Vec<u8>,
    timeout: Option<Duration>,
}

impl Client {
    /// A counter (i64) handle.
    pub fn counter(&self, key: impl Into<Vec<u8>>) -> Counter {
        Counter::new(self.clone(), key.into())
    }
}

impl Counter {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> Counter {
        Counter {
            client,
            key,
            timeout: None,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default.
    pub fn timeout(&self, timeout: Duration) -> Counter {
        Counter {
            timeout: Some(timeout),
            ..self.clone()
        }
    }

    pub async fn get(&self) -> Result<i64, Error> {
        let command = Command::from(CounterCommand::Get { key: self.key.clone() });
        self.value_of("counter_get", command, false).await
    }

    /// Adds `delta` (which may be negative); returns the new value.
    pub async fn add(&self, delta: i64) -> Result<i64, Error> {
        let command = Command::from(CounterCommand::Add {
            key: self.key.clone(),
            delta,
        });
        self.value_of("counter_add", command, true).await
    }

    /// Adds one; returns the new value.
    pub async fn incr(&self) -> Result<i64, Error> {
        self.add(1).await
    }

    pub async fn set(&self, value: i64) -> Result<(), Error> {
        let command = Command::from(CounterCommand::Set {
            key: self.key.clone(),
            value,
        });
        match self.call(command, true).await? {
            Response::Counter { .. } | Response::Written { .. } => Ok(()),
            other => Err(unexpected("counter_set", &other)),
        }
    }

    /// Sets the counter to `new` only if it holds `expected`.
    pub async fn compare_and_set(&self, expected: i64, new: i64) -> Result<CasOutcome, Error> {
        let command = Command::from(CounterCommand::Cas {
            key: self.key.clone(),
            expected,
            new,
        });
        match self.call(command, true).await? {
            Response::CounterCas { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(unexpected("counter_cas", &other)),
        }
    }

    async fn value_of(&self, name: &'static str, command: Command, mutation: bool) -> Result<i64, Error> {
        match self.call(command, mutation).await? {
            Response::Counter { value } => Ok(value),
            other => Err(unexpected(name, &other)),
        }
    }

    async fn call(&self, command: Command, mutation: bool) -> Result<Response, Error> {
        self.client
            .call_with(Some(&self.key), command, mutation, self.timeout)
            .await
    }
}
