//! Maps of fields to bytes (Redis hashes). Sorted, so `get_all` is deterministic. A
//! map's total size stays within `VALUE_BYTES_MAX` and its field count within
//! `MAP_FIELDS_MAX`, so reading it whole always fits one frame.

use std::collections::BTreeMap;

use engram_proto::limits::{KEY_BYTES_MAX, MAP_FIELDS_MAX, VALUE_BYTES_MAX};
use engram_proto::{ErrorCode, MapEntry, MigratedObject, Response};

use super::{error, Effects, Object};

/// Charged per field on top of its bytes (tree node and two vectors).
const FIELD_OVERHEAD_BYTES: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapState {
    fields: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Sum of field and value lengths, which `VALUE_BYTES_MAX` bounds.
    content_bytes: u64,
}

impl MapState {
    pub fn create() -> Object {
        Object::Map(Box::default())
    }

    pub fn payload_bytes(&self) -> u64 {
        self.content_bytes + self.fields.len() as u64 * FIELD_OVERHEAD_BYTES
    }

    pub fn is_idle(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn export(&self) -> MigratedObject {
        let Response::MapEntries(fields) = self.get_all() else {
            unreachable!("get_all answers entries")
        };
        MigratedObject::Map { fields }
    }

    /// Rebuilds a map another shard shipped, within the limits a map built here keeps.
    pub fn import(fields: Vec<MapEntry>) -> Result<MapState, String> {
        if fields.len() > MAP_FIELDS_MAX {
            return Err(format!(
                "{} fields exceed map_fields_max ({MAP_FIELDS_MAX})",
                fields.len()
            ));
        }
        let mut map = MapState::default();
        for MapEntry { field, value } in fields {
            if field.len() > KEY_BYTES_MAX {
                return Err(format!(
                    "field of {} bytes exceeds key_bytes_max ({KEY_BYTES_MAX})",
                    field.len()
                ));
            }
            map.content_bytes += (field.len() + value.len()) as u64;
            if map.content_bytes > VALUE_BYTES_MAX as u64 {
                return Err(format!("map holds over value_bytes_max ({VALUE_BYTES_MAX}) bytes"));
            }
            if map.fields.insert(field, value).is_some() {
                return Err("a field appears twice".to_string());
            }
        }
        Ok(map)
    }

    pub fn get(&self, field: &[u8]) -> Response {
        match self.fields.get(field) {
            Some(value) => Response::Value {
                value: value.clone(),
                version: 0,
            },
            None => Response::Missing,
        }
    }

    pub fn get_all(&self) -> Response {
        Response::MapEntries(
            self.fields
                .iter()
                .map(|(field, value)| MapEntry {
                    field: field.clone(),
                    value: value.clone(),
                })
                .collect(),
        )
    }

    pub fn set(&mut self, field: &[u8], value: &[u8], effects: &mut Effects<'_>) -> Response {
        let old_length = self.fields.get(field).map(|old| old.len() as u64);
        let new_field = old_length.is_none();
        if new_field && self.fields.len() >= MAP_FIELDS_MAX {
            return error(
                ErrorCode::InvalidArgument,
                format!("map holds map_fields_max ({MAP_FIELDS_MAX}) fields"),
            );
        }
        let content_after = self.content_bytes - old_length.unwrap_or(0)
            + value.len() as u64
            + if new_field { field.len() as u64 } else { 0 };
        if content_after > VALUE_BYTES_MAX as u64 {
            return error(
                ErrorCode::ValueTooLarge,
                format!("map would hold {content_after} bytes, over value_bytes_max ({VALUE_BYTES_MAX})"),
            );
        }
        let payload_before = self.payload_bytes();
        let payload_after = content_after + (self.fields.len() as u64 + u64::from(new_field)) * FIELD_OVERHEAD_BYTES;
        if payload_after > payload_before {
            if let Err(refusal) = effects.admit(payload_after - payload_before) {
                return refusal;
            }
        }
        self.content_bytes = content_after;
        self.fields.insert(field.to_vec(), value.to_vec());
        Response::Written {
            version: effects.next_version(),
        }
    }

    pub fn delete(&mut self, field: &[u8]) -> Response {
        match self.fields.remove(field) {
            Some(value) => {
                self.content_bytes -= (field.len() + value.len()) as u64;
                Response::Deleted { existed: true }
            }
            None => Response::Deleted { existed: false },
        }
    }

    pub fn increment(&mut self, field: &[u8], delta: i64, effects: &mut Effects<'_>) -> Response {
        let current = match self.fields.get(field) {
            None => 0,
            Some(text) => match std::str::from_utf8(text).ok().and_then(|text| text.parse::<i64>().ok()) {
                Some(number) => number,
                None => {
                    return error(ErrorCode::WrongType, "map field does not hold a decimal integer");
                }
            },
        };
        let Some(value) = current.checked_add(delta) else {
            return error(
                ErrorCode::Overflow,
                format!("map field {current} + {delta} does not fit in i64"),
            );
        };
        match self.set(field, value.to_string().as_bytes(), effects) {
            Response::Written { .. } => Response::Counter { value },
            refusal => refusal,
        }
    }
}
