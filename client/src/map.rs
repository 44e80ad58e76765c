//! The map handle: a hash of fields to bytes under one key (Redis HGET/HSET/HDEL/
//! HGETALL/HINCRBY). A map's fields and values together stay within `VALUE_BYTES_MAX`.

use std::time::Duration;

use engram_proto::{Command, Response};

use crate::bytes::checked_value;
use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::object::Object;
use engram_proto::MapCommand;

/// Every `(field, value)` of a map, sorted by field.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A map, from [`Client::map`]. A missing map reads as empty. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Map {
    object: Object,
}

impl Client {
    /// A map (field to bytes) handle.
    pub fn map(&self, key: impl Into<Vec<u8>>) -> Map {
        Map::new(self.clone(), key.into())
    }
}

impl Map {
    pub(crate) fn new(client: Client, key: Vec<u8>) -> Map {
        Map {
            object: Object::new(client, key),
        }
    }

    pub fn key(&self) -> &[u8] {
        self.object.key()
    }

    /// A copy of this handle whose calls use `timeout` instead of the client default.
    pub fn timeout(&self, timeout: Duration) -> Map {
        Map {
            object: self.object.with_timeout(timeout),
        }
    }

    /// The field's value, or `None` when the field (or the map) does not exist.
    pub async fn get(&self, field: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
        let command = Command::from(MapCommand::Get {
            key: self.object.key_vec(),
            field: field.into(),
        });
        match self.object.call(command).await? {
            Response::Value { value, .. } => Ok(Some(value)),
            Response::Missing => Ok(None),
            other => Err(unexpected("map_get", &other)),
        }
    }

    /// Writes the field; returns the version of the write (shard-wide, increasing).
    pub async fn set(&self, field: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        let command = Command::from(MapCommand::Set {
            key: self.object.key_vec(),
            field: field.into(),
            value: checked_value(value.into())?,
        });
        match self.object.call(command).await? {
            Response::Written { version } => Ok(version),
            other => Err(unexpected("map_set", &other)),
        }
    }

    /// Deletes the field; returns whether it existed.
    pub async fn del(&self, field: impl Into<Vec<u8>>) -> Result<bool, Error> {
        let command = Command::from(MapCommand::Del {
            key: self.object.key_vec(),
            field: field.into(),
        });
        match self.object.call(command).await? {
            Response::Deleted { existed } => Ok(existed),
            other => Err(unexpected("map_del", &other)),
        }
    }

    /// Every `(field, value)`, sorted by field.
    pub async fn get_all(&self) -> Result<Fields, Error> {
        let command = Command::from(MapCommand::GetAll {
            key: self.object.key_vec(),
        });
        match self.object.call(command).await? {
            Response::MapEntries(entries) => Ok(entries.into_iter().map(|entry| (entry.field, entry.value)).collect()),
            other => Err(unexpected("map_get_all", &other)),
        }
    }

    /// Adds `delta` to a field holding a decimal i64 (a missing field counts as 0);
    /// returns the new value. `WrongType` when the field holds something else, `Overflow`
    /// rather than wrapping.
    pub async fn incr(&self, field: impl Into<Vec<u8>>, delta: i64) -> Result<i64, Error> {
        let command = Command::from(MapCommand::Incr {
            key: self.object.key_vec(),
            field: field.into(),
            delta,
        });
        match self.object.call(command).await? {
            Response::Counter { value } => Ok(value),
            other => Err(unexpected("map_incr", &other)),
        }
    }
}
