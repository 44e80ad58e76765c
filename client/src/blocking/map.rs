//! Blocking [`crate::Map`].

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::error::Error;
use crate::map::Fields;

/// Blocking [`crate::Map`].
#[derive(Clone, Debug)]
pub struct Map {
    pub(super) inner: crate::Map,
    pub(super) runtime: Arc<Runtime>,
}

impl Map {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Map {
        Map {
            inner: self.inner.timeout(timeout),
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn get(&self, field: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
        self.runtime.block_on(self.inner.get(field))
    }

    pub fn set(&self, field: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.runtime.block_on(self.inner.set(field, value))
    }

    pub fn del(&self, field: impl Into<Vec<u8>>) -> Result<bool, Error> {
        self.runtime.block_on(self.inner.del(field))
    }

    pub fn get_all(&self) -> Result<Fields, Error> {
        self.runtime.block_on(self.inner.get_all())
    }

    pub fn incr(&self, field: impl Into<Vec<u8>>, delta: i64) -> Result<i64, Error> {
        self.runtime.block_on(self.inner.incr(field, delta))
    }
}
