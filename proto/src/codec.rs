//! Frames with their payloads: encoding into a caller's buffer (no per-message
//! allocation beyond the buffer's growth) and validating decoding.

use std::ops::Range;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;

use crate::error::ProtocolError;
use crate::frame::{FrameHeader, FrameKind, FRAME_HEADER_BYTES};

/// What [`split_frame`] found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// Not a whole frame yet; the buffer must hold `frame_bytes` before trying again.
    /// Only ever larger than the header once the header has been validated, so a reader
    /// may reserve this much without trusting the peer.
    Incomplete { frame_bytes: usize },
    /// A whole frame with a valid header.
    Frame { header: FrameHeader, payload: Range<usize> },
}

/// Looks for one frame at the start of `buffer` and validates its header; the payload is
/// validated when it is decoded. Never panics, whatever the bytes.
pub fn split_frame(buffer: &[u8]) -> Result<Split, ProtocolError> {
    let Some(header_bytes) = buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(Split::Incomplete {
            frame_bytes: FRAME_HEADER_BYTES,
        });
    };
    let header = FrameHeader::decode(header_bytes)?;
    let frame_bytes = FRAME_HEADER_BYTES + header.payload_bytes as usize;
    if buffer.len() < frame_bytes {
        return Ok(Split::Incomplete { frame_bytes });
    }
    Ok(Split::Frame {
        header,
        payload: FRAME_HEADER_BYTES..frame_bytes,
    })
}

/// Appends one frame holding `message` to `out`.
pub fn encode_message<T>(
    kind: FrameKind,
    request_id: u64,
    map_epoch: u64,
    message: &T,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<Vec<u8>, ArenaHandle<'a>, rancor::Error>>,
{
    let header_at = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let payload_at = out.len();
    let buffer = std::mem::take(out);
    let buffer = match rkyv::api::high::to_bytes_in::<_, rancor::Error>(message, buffer) {
        Ok(buffer) => buffer,
        Err(error) => {
            return Err(ProtocolError::InvalidPayload {
                reason: error.to_string(),
            })
        }
    };
    *out = buffer;
    match FrameHeader::for_payload(kind, request_id, map_epoch, out.len() - payload_at) {
        Ok(header) => {
            out[header_at..payload_at].copy_from_slice(&header.encode());
            Ok(())
        }
        Err(error) => {
            out.truncate(header_at);
            Err(error)
        }
    }
}

/// Validates (bytecheck) and deserializes a payload. The archive format is the
/// unaligned one, so payloads are read in place from any read buffer.
pub fn decode_payload<T>(payload: &[u8]) -> Result<T, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    deserialize_payload(access_payload::<T>(payload)?)
}

/// Validates `payload` as an archived `T` and gives it in place, without deserializing:
/// for a reader that needs a few fields, or builds the value with buffers of its own.
pub fn access_payload<T>(payload: &[u8]) -> Result<&T::Archived, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(payload).map_err(|error| ProtocolError::InvalidPayload {
        reason: error.to_string(),
    })
}

/// Deserializes what [`access_payload`] validated.
pub fn deserialize_payload<T>(archived: &T::Archived) -> Result<T, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived: rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|error| ProtocolError::InvalidPayload {
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use crate::{AdminCommand, BytesCommand, CounterCommand, DataCommand};
    use proptest::prelude::*;

    fn encode(request_id: u64, message: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(FrameKind::Request, request_id, 1, message, &mut out).unwrap();
        out
    }

    #[test]
    fn request_round_trip_through_frame() {
        let request = Request {
            op_id: 42,
            completed_below_op_id: 40,
            command: Command::from(BytesCommand::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_ms: 5,
                condition: SetCondition::IfVersion(3),
            }),
        };
        let bytes = encode(9, &request);
        let Split::Frame { header, payload } = split_frame(&bytes).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(header.request_id, 9);
        assert_eq!(header.kind, FrameKind::Request);
        assert_eq!(payload.end, bytes.len());
        assert_eq!(decode_payload::<Request>(&bytes[payload]).unwrap(), request);
    }

    #[test]
    fn frames_back_to_back_and_partial() {
        let first = encode(
            1,
            &Request {
                op_id: 0,
                completed_below_op_id: 0,
                command: Command::from(AdminCommand::Ping),
            },
        );
        let second = encode(
            2,
            &Request {
                op_id: 0,
                completed_below_op_id: 0,
                command: Command::from(BytesCommand::Get { key: b"x".to_vec() }),
            },
        );
        let mut stream = first.clone();
        stream.extend_from_slice(&second);
        let Split::Frame { payload, .. } = split_frame(&stream).unwrap() else {
            panic!()
        };
        assert_eq!(payload.end, first.len());
        assert_eq!(
            split_frame(&stream[..10]).unwrap(),
            Split::Incomplete {
                frame_bytes: FRAME_HEADER_BYTES
            }
        );
        assert_eq!(
            split_frame(&stream[..FRAME_HEADER_BYTES + 1]).unwrap(),
            Split::Incomplete {
                frame_bytes: first.len()
            }
        );
    }

    #[test]
    fn garbage_is_refused_by_validation() {
        let garbage = [0xffu8; 64];
        assert!(matches!(
            decode_payload::<Request>(&garbage),
            Err(ProtocolError::InvalidPayload { .. })
        ));
        assert!(decode_payload::<Request>(&[]).is_err());
    }

    fn bytes_strategy(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        let condition = prop_oneof![
            Just(SetCondition::Always),
            Just(SetCondition::IfAbsent),
            Just(SetCondition::IfPresent),
            any::<u64>().prop_map(SetCondition::IfVersion)
        ];
        prop_oneof![
            Just(Command::from(AdminCommand::Ping)),
            Just(Command::from(AdminCommand::Info)),
            Just(Command::from(AdminCommand::GetSlotMap)),
            bytes_strategy(64).prop_map(|key| Command::Data(DataCommand::Bytes(BytesCommand::Get { key }))),
            (bytes_strategy(64), bytes_strategy(256), any::<u64>(), condition).prop_map(
                |(key, value, ttl_ms, condition)| Command::Data(DataCommand::Bytes(BytesCommand::Set {
                    key,
                    value,
                    ttl_ms,
                    condition
                }))
            ),
            bytes_strategy(64).prop_map(|key| Command::Data(DataCommand::Bytes(BytesCommand::Del { key }))),
            (bytes_strategy(64), bytes_strategy(64))
                .prop_map(|(key, value)| Command::Data(DataCommand::Bytes(BytesCommand::Append { key, value }))),
            (bytes_strategy(64), any::<i64>(), any::<i64>()).prop_map(|(key, start, end)| Command::Data(
                DataCommand::Bytes(BytesCommand::GetRange { key, start, end })
            )),
            (bytes_strategy(64), any::<u64>(), bytes_strategy(64)).prop_map(|(key, offset, value)| Command::Data(
                DataCommand::Bytes(BytesCommand::SetRange { key, offset, value })
            )),
            bytes_strategy(64).prop_map(|key| Command::Data(DataCommand::Bytes(BytesCommand::Len { key }))),
            (bytes_strategy(64), any::<i64>())
                .prop_map(|(key, delta)| Command::Data(DataCommand::Bytes(BytesCommand::AddInteger { key, delta }))),
            bytes_strategy(64).prop_map(|key| Command::from(crate::KeyCommand::Kind { key })),
            (bytes_strategy(64), any::<u64>()).prop_map(|(key, ttl_ms)| Command::from(crate::KeyCommand::Expire {
                key,
                ttl_ms,
                condition: crate::ExpireCondition::IfLater
            })),
            (bytes_strategy(64), bytes_strategy(16), bytes_strategy(64))
                .prop_map(|(key, field, value)| { Command::from(crate::MapCommand::Put { key, field, value }) }),
            bytes_strategy(64).prop_map(|key| Command::Data(DataCommand::Counter(CounterCommand::Get { key }))),
            (bytes_strategy(64), any::<i64>())
                .prop_map(|(key, delta)| Command::Data(DataCommand::Counter(CounterCommand::Add { key, delta }))),
            (bytes_strategy(64), any::<i64>())
                .prop_map(|(key, value)| Command::Data(DataCommand::Counter(CounterCommand::Set { key, value }))),
            (bytes_strategy(64), any::<i64>(), any::<i64>()).prop_map(|(key, expected, new)| Command::Data(
                DataCommand::Counter(CounterCommand::Cas { key, expected, new })
            )),
        ]
    }

    fn response_strategy() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Pong),
            Just(Response::Missing),
            (bytes_strategy(256), any::<u64>()).prop_map(|(value, version)| Response::Value { value, version }),
            any::<u64>().prop_map(|version| Response::Written { version }),
            (any::<u64>(), any::<u64>()).prop_map(|(version, length)| Response::Appended { version, length }),
            (any::<u64>(), any::<u64>()).prop_map(|(version, length)| Response::RangeWritten { version, length }),
            any::<u64>().prop_map(|length| Response::ValueLength { length }),
            proptest::option::of(any::<u64>()).prop_map(|ttl_ms| Response::Ttl { ttl_ms }),
            any::<bool>().prop_map(|created| Response::FieldStored { created }),
            Just(Response::KeyKind {
                kind: crate::ObjectKind::Queue
            }),
            any::<u64>().prop_map(|current_version| Response::Conflict { current_version }),
            any::<bool>().prop_map(|existed| Response::Deleted { existed }),
            any::<i64>().prop_map(|value| Response::Counter { value }),
            (any::<bool>(), any::<i64>()).prop_map(|(swapped, current)| Response::CounterCas { swapped, current }),
            (any::<u16>(), ".{0,40}", any::<u64>()).prop_map(|(code, message, map_epoch)| Response::Error(
                ErrorReply {
                    code,
                    message,
                    map_epoch
                }
            )),
            (any::<u64>(), bytes_strategy(3)).prop_map(|(epoch, _)| Response::SlotMap(SlotMap {
                epoch,
                shards: vec![ShardAddress {
                    node_id: 1,
                    shard_id: 0,
                    address: "127.0.0.1:7401".into(),
                    incarnation: 0
                }],
                ranges: vec![SlotRange {
                    start: 0,
                    end: crate::limits::SLOT_COUNT - 1,
                    shard_index: 0
                }],
                version_floor: 0,
                backups: Vec::new(),
            })),
        ]
    }

    proptest! {
        #[test]
        fn every_answer_is_encoded_as_rkyv_encodes_it(response in response_strategy()) {
            let mut by_hand = Vec::new();
            crate::read_path::encode_response(5, 6, &response, &mut by_hand).unwrap();
            let mut by_rkyv = Vec::new();
            encode_message(FrameKind::Response, 5, 6, &response, &mut by_rkyv).unwrap();
            prop_assert_eq!(by_hand, by_rkyv);
        }

        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in bytes_strategy(512)) {
            // Whatever it returns, it must return.
            if let Ok(Split::Frame { payload, .. }) = split_frame(&bytes) {
                let _ = decode_payload::<Request>(&bytes[payload.clone()]);
                let _ = decode_payload::<Response>(&bytes[payload.clone()]);
                let _ = decode_payload::<Hello>(&bytes[payload]);
            }
            let _ = decode_payload::<Request>(&bytes);
            let _ = decode_payload::<Response>(&bytes);
            let _ = decode_payload::<Hello>(&bytes);
            let _ = decode_payload::<HelloReply>(&bytes);
            let _ = crate::ReadRequest::parse(&bytes);
            let _ = crate::parse_read_answer(&bytes);
        }

        #[test]
        fn mutated_valid_frames_never_panic(command in command_strategy(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(3, &Request { op_id: 1, completed_below_op_id: 1, command });
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(Split::Frame { payload, .. }) = split_frame(&bytes) {
                let _ = decode_payload::<Request>(&bytes[payload]);
            }
            // Payload validation alone, whatever the header says.
            let _ = decode_payload::<Request>(&bytes[FRAME_HEADER_BYTES..]);
        }

        #[test]
        fn every_request_round_trips(op_id in any::<u64>(), completed_below_op_id in any::<u64>(), request_id in any::<u64>(), command in command_strategy()) {
            let request = Request { op_id, completed_below_op_id, command };
            let bytes = encode(request_id, &request);
            let Ok(Split::Frame { header, payload }) = split_frame(&bytes) else { panic!("not a frame") };
            prop_assert_eq!(header.request_id, request_id);
            prop_assert_eq!(decode_payload::<Request>(&bytes[payload]).unwrap(), request);
        }

        #[test]
        fn every_response_round_trips(response in response_strategy()) {
            let mut bytes = Vec::new();
            encode_message(FrameKind::Response, 5, 2, &response, &mut bytes).unwrap();
            let Ok(Split::Frame { payload, .. }) = split_frame(&bytes) else { panic!("not a frame") };
            prop_assert_eq!(decode_payload::<Response>(&bytes[payload]).unwrap(), response);
        }

        #[test]
        fn hello_round_trips(client_id in any::<u64>(), namespace in bytes_strategy(32), credentials in bytes_strategy(32)) {
            let hello = Hello { protocol_version: 1, client_id, namespace, credentials, family: Family::Client };
            let mut bytes = Vec::new();
            encode_message(FrameKind::Hello, 0, 0, &hello, &mut bytes).unwrap();
            let Ok(Split::Frame { payload, .. }) = split_frame(&bytes) else { panic!("not a frame") };
            prop_assert_eq!(decode_payload::<Hello>(&bytes[payload]).unwrap(), hello);
        }
    }
}
