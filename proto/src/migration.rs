//! State of migrating slots, as it travels from the shard giving them up to the shard
//! taking them over.
//!
//! Times travel as remaining milliseconds, never as deadlines: each node counts its
//! own monotonic clock from its own start, so an absolute deadline means nothing on
//! another node. Fences, permit ids and versions all come from the source shard's
//! version counter, so a batch carries that counter (`last_version`) and the target
//! raises its own to at least it: nothing the target hands out later can repeat one.
//!
//! A batch is network input to the target: [`decode_batch`] validates it (bytecheck)
//! before reading, and the target checks every length and count before applying it.
//!
//! Compatibility rule (as in `message`): variants and fields are only ever appended.

use std::mem::size_of;

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

use crate::codec::decode_payload;
use crate::error::ProtocolError;
use crate::message::{ArchivedMapEntry, MapEntry, Response};

/// One shipment of migrated state. A migration sends as many as it needs; each is
/// applied whole or not at all.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SlotBatch {
    pub entries: Vec<MigratedEntry>,
    pub records: Vec<MigratedRecord>,
    /// The source shard's version counter when the batch was made: every version,
    /// fence and permit id in the batch is at most this.
    pub last_version: u64,
}

/// One key with its object.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigratedEntry {
    /// The stored key: `[namespace length][namespace][client key]`.
    pub key: Vec<u8>,
    pub version: u64,
    /// Time to live left when the batch was made; 0: no expiry.
    pub ttl_remaining_ms: u64,
    pub object: MigratedObject,
}

/// Everything of an object that must survive the move. Requests parked on it are not
/// here: they were answered `Moved` before the copy, and their clients re-send them
/// to the new owner. A barrier's arrivals are such requests, so a barrier travels with
/// only its generation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MigratedObject {
    Bytes {
        value: Vec<u8>,
    },
    Counter {
        value: i64,
    },
    Lock {
        holder: Option<MigratedLockHolder>,
    },
    Semaphore {
        /// Fixed by the semaphore's first acquire.
        capacity: u32,
        held: Vec<MigratedPermit>,
    },
    Barrier {
        generation: u64,
        /// Parties of the current generation (meaningful only while arrivals wait).
        parties: u32,
    },
    Latch {
        count: u64,
    },
    Future {
        /// The value and the version of its completion; `None` while not completed.
        completion: Option<MigratedCompletion>,
    },
    Map {
        /// Sorted by field, each field once.
        fields: Vec<MapEntry>,
    },
    Queue {
        /// Front first.
        items: Vec<Vec<u8>>,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigratedLockHolder {
    pub owner: Vec<u8>,
    pub fence: u64,
    /// The lease length the holder last asked for.
    pub lease_ms: u64,
    /// 0: the lease has run out (its end is due at once on arrival).
    pub lease_remaining_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigratedPermit {
    pub permit_id: u64,
    pub owner: Vec<u8>,
    pub permits: u32,
    /// 0: the lease has run out (its end is due at once on arrival).
    pub lease_remaining_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigratedCompletion {
    pub value: Vec<u8>,
    pub version: u64,
}

/// The first answer to one operation on a key of the migrating slots, so a retry at
/// the new owner gets it instead of applying the operation twice.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MigratedRecord {
    pub client_id: u64,
    pub op_id: u64,
    /// The slot of the key the operation was applied to, so the record can move again
    /// with its slot.
    pub slot: u32,
    pub response: Response,
}

/// Encodes a batch (rkyv, the same unaligned format as frame payloads).
pub fn encode_batch(batch: &SlotBatch) -> Result<Vec<u8>, ProtocolError> {
    rkyv::to_bytes::<rancor::Error>(batch)
        .map(|bytes| bytes.into_vec())
        .map_err(|error| ProtocolError::InvalidPayload {
            reason: error.to_string(),
        })
}

/// Validates (bytecheck) and decodes a batch. Never panics, whatever the bytes; the
/// caller bounds how many bytes it accepts, as it does for frames.
pub fn decode_batch(bytes: &[u8]) -> Result<SlotBatch, ProtocolError> {
    decode_payload::<SlotBatch>(bytes)
}

/// Encoded size of a batch with no entries and no records.
pub const BATCH_FIXED_BYTES: usize = size_of::<ArchivedSlotBatch>();

impl MigratedEntry {
    /// An upper bound of what this entry adds to an encoded batch. Exact but for
    /// short-string inlining: the unaligned format has no padding, so an archive's
    /// size is its parts' inline sizes plus the bytes they point to.
    pub fn encoded_bytes_max(&self) -> usize {
        let object = match &self.object {
            MigratedObject::Bytes { value } => value.len(),
            MigratedObject::Lock { holder } => holder.as_ref().map_or(0, |holder| holder.owner.len()),
            MigratedObject::Semaphore { held, .. } => held
                .iter()
                .map(|permit| size_of::<ArchivedMigratedPermit>() + permit.owner.len())
                .sum(),
            MigratedObject::Future { completion } => completion.as_ref().map_or(0, |completion| completion.value.len()),
            MigratedObject::Map { fields } => map_entries_bytes(fields),
            MigratedObject::Queue { items } => items
                .iter()
                .map(|item| size_of::<rkyv::vec::ArchivedVec<u8>>() + item.len())
                .sum(),
            MigratedObject::Counter { .. } | MigratedObject::Barrier { .. } | MigratedObject::Latch { .. } => 0,
        };
        size_of::<ArchivedMigratedEntry>() + self.key.len() + object
    }
}

impl MigratedRecord {
    /// An upper bound of what this record adds to an encoded batch.
    pub fn encoded_bytes_max(&self) -> usize {
        let response = match &self.response {
            Response::Value { value, .. } => value.len(),
            Response::Error(reply) => reply.message.len(),
            Response::MapEntries(entries) => map_entries_bytes(entries),
            Response::LockHolder { holder } => holder.as_ref().map_or(0, |holder| holder.owner.len()),
            // Node answers are never recorded by a store; measured rather than guessed.
            Response::Info(_) | Response::SlotMap(_) => {
                rkyv::to_bytes::<rancor::Error>(&self.response).map_or(usize::MAX / 2, |bytes| bytes.len())
            }
            _ => 0,
        };
        size_of::<ArchivedMigratedRecord>() + response
    }
}

fn map_entries_bytes(entries: &[MapEntry]) -> usize {
    entries
        .iter()
        .map(|entry| size_of::<ArchivedMapEntry>() + entry.field.len() + entry.value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ErrorReply, LockHolder};
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn object_strategy() -> impl Strategy<Value = MigratedObject> {
        let holder = (bytes(40), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(owner, fence, lease_ms, lease_remaining_ms)| MigratedLockHolder {
                owner,
                fence,
                lease_ms,
                lease_remaining_ms,
            },
        );
        let permit = (any::<u64>(), bytes(20), any::<u32>(), any::<u64>()).prop_map(
            |(permit_id, owner, permits, lease_remaining_ms)| MigratedPermit {
                permit_id,
                owner,
                permits,
                lease_remaining_ms,
            },
        );
        prop_oneof![
            bytes(300).prop_map(|value| MigratedObject::Bytes { value }),
            any::<i64>().prop_map(|value| MigratedObject::Counter { value }),
            proptest::option::of(holder).prop_map(|holder| MigratedObject::Lock { holder }),
            (any::<u32>(), proptest::collection::vec(permit, 0..4))
                .prop_map(|(capacity, held)| MigratedObject::Semaphore { capacity, held }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(generation, parties)| MigratedObject::Barrier { generation, parties }),
            any::<u64>().prop_map(|count| MigratedObject::Latch { count }),
            proptest::option::of(
                (bytes(30), any::<u64>()).prop_map(|(value, version)| MigratedCompletion { value, version })
            )
            .prop_map(|completion| MigratedObject::Future { completion }),
            proptest::collection::vec(
                (bytes(9), bytes(30)).prop_map(|(field, value)| MapEntry { field, value }),
                0..5
            )
            .prop_map(|fields| MigratedObject::Map { fields }),
            proptest::collection::vec(bytes(30), 0..6).prop_map(|items| MigratedObject::Queue { items }),
        ]
    }

    fn entry_strategy() -> impl Strategy<Value = MigratedEntry> {
        (bytes(40), any::<u64>(), any::<u64>(), object_strategy()).prop_map(
            |(key, version, ttl_remaining_ms, object)| MigratedEntry {
                key,
                version,
                ttl_remaining_ms,
                object,
            },
        )
    }

    fn record_strategy() -> impl Strategy<Value = MigratedRecord> {
        let response = prop_oneof![
            Just(Response::Released),
            (bytes(50), any::<u64>()).prop_map(|(value, version)| Response::Value { value, version }),
            (any::<u16>(), ".{0,30}").prop_map(|(code, message)| Response::Error(ErrorReply {
                code,
                message,
                map_epoch: 0
            })),
            (bytes(12), any::<u64>()).prop_map(|(owner, fence)| Response::LockHolder {
                holder: Some(LockHolder {
                    owner,
                    fence,
                    lease_remaining_ms: 1
                })
            }),
            any::<i64>().prop_map(|value| Response::Counter { value }),
        ];
        (any::<u64>(), any::<u64>(), any::<u32>(), response).prop_map(|(client_id, op_id, slot, response)| {
            MigratedRecord {
                client_id,
                op_id,
                slot,
                response,
            }
        })
    }

    fn batch_strategy() -> impl Strategy<Value = SlotBatch> {
        (
            proptest::collection::vec(entry_strategy(), 0..6),
            proptest::collection::vec(record_strategy(), 0..6),
            any::<u64>(),
        )
            .prop_map(|(entries, records, last_version)| SlotBatch {
                entries,
                records,
                last_version,
            })
    }

    proptest! {
        #[test]
        fn batches_round_trip_within_their_size_bound(batch in batch_strategy()) {
            let encoded = encode_batch(&batch).unwrap();
            prop_assert_eq!(decode_batch(&encoded).unwrap(), batch.clone());
            let bound = BATCH_FIXED_BYTES
                + batch.entries.iter().map(MigratedEntry::encoded_bytes_max).sum::<usize>()
                + batch.records.iter().map(MigratedRecord::encoded_bytes_max).sum::<usize>();
            prop_assert!(encoded.len() <= bound, "{} encoded, bound {}", encoded.len(), bound);
        }

        #[test]
        fn mutated_batches_never_panic(batch in batch_strategy(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut encoded = encode_batch(&batch).unwrap();
            for (at, value) in flips {
                let at = at % encoded.len();
                encoded[at] = value;
            }
            let _ = decode_batch(&encoded);
            let _ = decode_batch(&encoded[..encoded.len() / 2]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(garbage in bytes(512)) {
            let _ = decode_batch(&garbage);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            decode_batch(&[0xff; 64]),
            Err(ProtocolError::InvalidPayload { .. })
        ));
        assert!(decode_batch(&[]).is_err());
    }
}
