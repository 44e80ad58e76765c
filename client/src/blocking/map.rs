//! Blocking [`crate::Map`].

use std::sync::Arc;
use std::time::Duration;

use super::Driver;
use crate::error::Error;
use crate::map::Fields;

/// Blocking [`crate::Map`].
#[derive(Clone, Debug)]
pub struct Map {
    pub(super) inner: crate::Map,
    pub(super) driver: Arc<Driver>,
}

impl Map {
    pub fn key(&self) -> &[u8] {
        self.inner.key()
    }

    pub fn timeout(&self, timeout: Duration) -> Map {
        Map {
            inner: self.inner.timeout(timeout),
            driver: Arc::clone(&self.driver),
        }
    }

    pub fn get(&self, field: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
        let field = field.into();
        self.driver.call(&self.inner, |map| async move { map.get(field).await })
    }

    pub fn set(&self, field: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        let (field, value) = (field.into(), value.into());
        self.driver
            .call(&self.inner, |map| async move { map.set(field, value).await })
    }

    pub fn del(&self, field: impl Into<Vec<u8>>) -> Result<bool, Error> {
        let field = field.into();
        self.driver.call(&self.inner, |map| async move { map.del(field).await })
    }

    pub fn get_all(&self) -> Result<Fields, Error> {
        self.driver.call(&self.inner, |map| async move { map.get_all().await })
    }

    pub fn incr(&self, field: impl Into<Vec<u8>>, delta: i64) -> Result<i64, Error> {
        let field = field.into();
        self.driver
            .call(&self.inner, |map| async move { map.incr(field, delta).await })
    }
}
