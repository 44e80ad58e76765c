//! A read's request and its answer, without rkyv's serializer or validator: the archive
//! of a `Get` and of its answer (a value, or a missing key) is a handful of fixed
//! fields, and reads are most of the traffic. Under callgrind, a pipelined GET cost the
//! server 2,613 instructions with rkyv at both ends, 2,399 with the answer written here
//! and 2,282 with the request read here as well; the client writes its reads and reads
//! their answers here too (about a tenth more GETs per second from one client core).
//!
//! All four are pinned to rkyv's own format by property tests: what is written here is
//! the bytes rkyv writes, and a payload read here is one rkyv validates and decodes to
//! the same message. The readers take only the layout rkyv writes (the bytes, then the
//! root, nothing else); any other payload goes through rkyv's validating decoder, which
//! refuses what it must.

use crate::codec::encode_message;
use crate::data::{BytesCommand, CounterCommand, DataCommand};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, FrameKind, FRAME_HEADER_BYTES};
use crate::limits::FRAME_PAYLOAD_BYTES_MAX;
use crate::message::{ArchivedRequest, ArchivedResponse, Command, Request, Response};

/// Appends one `Response` frame: a value or a missing key written by hand, any other
/// answer by rkyv.
pub fn encode_response(
    request_id: u64,
    map_epoch: u64,
    response: &Response,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let (tag, value, version) = match response {
        Response::Value { value, version } => (VALUE_TAG, &value[..], *version),
        Response::Missing => (MISSING_TAG, &[][..], 0),
        _ => return encode_message(FrameKind::Response, request_id, map_epoch, response, out),
    };
    let root = begin_frame(
        FrameKind::Response,
        request_id,
        map_epoch,
        value,
        ARCHIVED_RESPONSE_BYTES,
        out,
    )?;
    root[0] = tag;
    if tag == VALUE_TAG {
        write_bytes_pointer(root, VALUE_POINTER_AT, value.len());
        root[VERSION_AT..VERSION_AT + 8].copy_from_slice(&version.to_le_bytes());
    }
    Ok(())
}

/// A `Get` of a bytes value or a counter, read in place from its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest<'a> {
    pub op_id: u64,
    pub completed_below_op_id: u64,
    pub object: ReadObject,
    pub key: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadObject {
    Bytes,
    Counter,
}

impl<'a> ReadRequest<'a> {
    /// The read `payload` holds, if it holds a `Get` laid out as rkyv writes it; `None`
    /// for anything else, which the caller decodes with rkyv.
    pub fn parse(payload: &'a [u8]) -> Option<ReadRequest<'a>> {
        let key_bytes = payload.len().checked_sub(ARCHIVED_REQUEST_BYTES)?;
        let (key, root) = payload.split_at(key_bytes);
        if root[COMMAND_TAG_AT] != DATA_TAG || root[OBJECT_COMMAND_TAG_AT] != GET_TAG {
            return None;
        }
        let object = match root[OBJECT_TAG_AT] {
            BYTES_TAG => ReadObject::Bytes,
            COUNTER_TAG => ReadObject::Counter,
            _ => return None,
        };
        // A pointer anywhere but the bytes before the root is left to rkyv's validator.
        if !points_back_over(root, KEY_POINTER_AT, key_bytes) {
            return None;
        }
        Some(ReadRequest {
            op_id: u64_at(root, OP_ID_AT),
            completed_below_op_id: u64_at(root, COMPLETED_BELOW_AT),
            object,
            key,
        })
    }

    /// The request, its key in `key` (a buffer the caller recycles).
    pub fn to_request(&self, mut key: Vec<u8>) -> Request {
        key.clear();
        key.extend_from_slice(self.key);
        let command = match self.object {
            ReadObject::Bytes => Command::from(BytesCommand::Get { key }),
            ReadObject::Counter => Command::from(CounterCommand::Get { key }),
        };
        Request {
            op_id: self.op_id,
            completed_below_op_id: self.completed_below_op_id,
            command,
        }
    }
}

/// Appends one `Request` frame: a `Get` written by hand, anything else by rkyv.
pub fn encode_request(
    request_id: u64,
    map_epoch: u64,
    request: &Request,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let (object_tag, key) = match &request.command {
        Command::Data(DataCommand::Bytes(BytesCommand::Get { key })) => (BYTES_TAG, key),
        Command::Data(DataCommand::Counter(CounterCommand::Get { key })) => (COUNTER_TAG, key),
        _ => return encode_message(FrameKind::Request, request_id, map_epoch, request, out),
    };
    let root = begin_frame(
        FrameKind::Request,
        request_id,
        map_epoch,
        key,
        ARCHIVED_REQUEST_BYTES,
        out,
    )?;
    root[OP_ID_AT..OP_ID_AT + 8].copy_from_slice(&request.op_id.to_le_bytes());
    root[COMPLETED_BELOW_AT..COMPLETED_BELOW_AT + 8].copy_from_slice(&request.completed_below_op_id.to_le_bytes());
    root[COMMAND_TAG_AT] = DATA_TAG;
    root[OBJECT_TAG_AT] = object_tag;
    root[OBJECT_COMMAND_TAG_AT] = GET_TAG;
    write_bytes_pointer(root, KEY_POINTER_AT, key.len());
    Ok(())
}

/// The answer `payload` holds, if it is a value or a missing key laid out as rkyv
/// writes them; `None` for anything else, which the caller decodes with rkyv.
pub fn parse_read_answer(payload: &[u8]) -> Option<Response> {
    let value_bytes = payload.len().checked_sub(ARCHIVED_RESPONSE_BYTES)?;
    let (value, root) = payload.split_at(value_bytes);
    match root[0] {
        VALUE_TAG if points_back_over(root, VALUE_POINTER_AT, value_bytes) => Some(Response::Value {
            value: value.to_vec(),
            version: u64_at(root, VERSION_AT),
        }),
        MISSING_TAG if value_bytes == 0 => Some(Response::Missing),
        _ => None,
    }
}

/// Appends a frame's header and `bytes`, then a zeroed root of `root_bytes` (rkyv lays
/// out children before their parent, and zeroes padding), and gives the root to fill.
fn begin_frame<'o>(
    kind: FrameKind,
    request_id: u64,
    map_epoch: u64,
    bytes: &[u8],
    root_bytes: usize,
    out: &'o mut Vec<u8>,
) -> Result<&'o mut [u8], ProtocolError> {
    let payload_bytes = bytes.len() + root_bytes;
    let header = FrameHeader::for_payload(kind, request_id, map_epoch, payload_bytes)?;
    out.reserve(FRAME_HEADER_BYTES + payload_bytes);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(bytes);
    let root_at = out.len();
    out.resize(root_at + root_bytes, 0);
    Ok(&mut out[root_at..])
}

/// An archived byte vector's relative pointer and length, for bytes that end where the
/// root starts: the pointer is relative to its own position.
fn write_bytes_pointer(root: &mut [u8], pointer_at: usize, length: usize) {
    // Fits: the payload is bounded by FRAME_PAYLOAD_BYTES_MAX.
    let offset = -((pointer_at + length) as i32);
    root[pointer_at..pointer_at + 4].copy_from_slice(&offset.to_le_bytes());
    root[pointer_at + 4..pointer_at + 8].copy_from_slice(&(length as u32).to_le_bytes());
}

/// Whether the byte vector at `pointer_at` is exactly the `length` bytes before the
/// root, the only layout read by hand.
fn points_back_over(root: &[u8], pointer_at: usize, length: usize) -> bool {
    let offset = -((pointer_at + length) as i64);
    i64::from(i32_at(root, pointer_at)) == offset && u32_at(root, pointer_at + 4) as usize == length
}

/// The archived `Response`: its largest variant, so every variant pads to this size.
const ARCHIVED_RESPONSE_BYTES: usize = std::mem::size_of::<ArchivedResponse>();
/// Variant tags of the archived `Response` (its variants in declaration order: they
/// hold because variants are only ever appended), and where a value's fields lie after
/// the tag.
const VALUE_TAG: u8 = 1;
const MISSING_TAG: u8 = 2;
const VALUE_POINTER_AT: usize = 1;
const VERSION_AT: usize = 9;
/// A relative pointer back over a whole payload fits its `i32`.
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX < i32::MAX as usize);

/// The archived `Request`, and where its fields lie in it: the two operation ids, then
/// the command's tags (`Command::Data`, the object, `Get`), then the key's relative
/// pointer and length.
const ARCHIVED_REQUEST_BYTES: usize = std::mem::size_of::<ArchivedRequest>();
const OP_ID_AT: usize = 0;
const COMPLETED_BELOW_AT: usize = 8;
const COMMAND_TAG_AT: usize = 16;
const OBJECT_TAG_AT: usize = 17;
const OBJECT_COMMAND_TAG_AT: usize = 18;
const KEY_POINTER_AT: usize = 19;
/// Tags in declaration order, as above.
const DATA_TAG: u8 = 1;
const BYTES_TAG: u8 = 0;
const COUNTER_TAG: u8 = 1;
const GET_TAG: u8 = 0;
const _: () = assert!(KEY_POINTER_AT + 8 <= ARCHIVED_REQUEST_BYTES && VERSION_AT + 8 <= ARCHIVED_RESPONSE_BYTES);

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_payload, split_frame, Split};
    use crate::data::SetCondition;
    use proptest::prelude::*;

    fn bytes_strategy(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn rkyv_encoded(request_id: u64, map_epoch: u64, response: &Response) -> Vec<u8> {
        let mut out = vec![0xaa; 3];
        encode_message(FrameKind::Response, request_id, map_epoch, response, &mut out).unwrap();
        out
    }

    fn hand_encoded(request_id: u64, map_epoch: u64, response: &Response) -> Vec<u8> {
        let mut out = vec![0xaa; 3];
        encode_response(request_id, map_epoch, response, &mut out).unwrap();
        out
    }

    /// Every payload that differs from a valid one in one byte, or is one byte shorter
    /// or longer: what is read by hand must be what rkyv reads. Covers the tags and the
    /// pointer, which random changes rarely hit.
    fn each_one_byte_change(payload: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
        let changed = (0..payload.len()).flat_map(move |at| {
            (0..=u8::MAX).map(move |value| {
                let mut changed = payload.to_vec();
                changed[at] = value;
                changed
            })
        });
        let shorter = std::iter::once(payload[..payload.len() - 1].to_vec());
        let longer = (0..=u8::MAX).map(move |value| [payload, &[value]].concat());
        changed.chain(shorter).chain(longer)
    }

    fn reads_and_answers() -> (Vec<Request>, Vec<Response>) {
        let mut reads = Vec::new();
        let mut answers = vec![Response::Missing, Response::Pong, Response::Written { version: 7 }];
        for bytes in [0, 1, 5, 40] {
            let key = (0..bytes).map(|byte| byte as u8).collect::<Vec<u8>>();
            reads.push(Request {
                op_id: 3,
                completed_below_op_id: 2,
                command: Command::from(BytesCommand::Get { key: key.clone() }),
            });
            reads.push(Request {
                op_id: 0,
                completed_below_op_id: 0,
                command: Command::from(CounterCommand::Get { key: key.clone() }),
            });
            answers.push(Response::Value { value: key, version: 9 });
        }
        (reads, answers)
    }

    #[test]
    fn every_one_byte_change_is_read_by_hand_only_as_rkyv_reads_it() {
        let (reads, answers) = reads_and_answers();
        for request in &reads {
            let payload = request_payload(request);
            let read = ReadRequest::parse(&payload).expect("rkyv's own layout is read here");
            assert_eq!(&read.to_request(Vec::new()), request, "an empty key included");
            for changed in each_one_byte_change(&payload) {
                if let Some(read) = ReadRequest::parse(&changed) {
                    assert_eq!(decode_payload::<Request>(&changed), Ok(read.to_request(Vec::new())));
                }
            }
        }
        for response in &answers {
            let frame = rkyv_encoded(1, 1, response);
            let payload = &frame[3 + FRAME_HEADER_BYTES..];
            let read_here = matches!(response, Response::Value { .. } | Response::Missing);
            assert_eq!(parse_read_answer(payload), read_here.then(|| response.clone()));
            for changed in each_one_byte_change(payload) {
                if let Some(read) = parse_read_answer(&changed) {
                    assert_eq!(decode_payload::<Response>(&changed), Ok(read));
                }
            }
        }
    }

    #[test]
    fn a_value_too_large_for_a_frame_is_refused_as_rkyv_s_would_be() {
        let value = vec![7u8; FRAME_PAYLOAD_BYTES_MAX];
        let response = Response::Value { value, version: 1 };
        let mut out = Vec::new();
        let by_hand = encode_response(1, 1, &response, &mut out);
        assert!(
            matches!(by_hand, Err(ProtocolError::FrameTooLarge { .. })),
            "{by_hand:?}"
        );
        assert!(matches!(
            encode_message(FrameKind::Response, 1, 1, &response, &mut Vec::new()),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    fn request_payload(request: &Request) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_message(FrameKind::Request, 1, 1, request, &mut frame).unwrap();
        frame.split_off(FRAME_HEADER_BYTES)
    }

    fn read_strategy() -> impl Strategy<Value = Request> {
        (any::<u64>(), any::<u64>(), any::<bool>(), bytes_strategy(300)).prop_map(|(op_id, below, counter, key)| {
            let command = if counter {
                Command::from(CounterCommand::Get { key })
            } else {
                Command::from(BytesCommand::Get { key })
            };
            Request {
                op_id,
                completed_below_op_id: below,
                command,
            }
        })
    }

    /// Commands next to a `Get` in the archive: the same object's other commands, and
    /// a keyless one.
    fn other_strategy() -> impl Strategy<Value = Request> {
        (bytes_strategy(40), bytes_strategy(40)).prop_flat_map(|(key, value)| {
            prop_oneof![
                Just(Command::from(BytesCommand::Set {
                    key: key.clone(),
                    value: value.clone(),
                    ttl_ms: 0,
                    condition: SetCondition::Always,
                })),
                Just(Command::from(BytesCommand::Del { key: key.clone() })),
                Just(Command::from(CounterCommand::Add { key, delta: 3 })),
                Just(Command::from(crate::AdminCommand::Ping)),
            ]
            .prop_map(|command| Request {
                op_id: 1,
                completed_below_op_id: 1,
                command,
            })
        })
    }

    /// Reads' answers, and answers next to them in the archive.
    fn answer_strategy() -> impl Strategy<Value = Response> {
        prop_oneof![
            (bytes_strategy(300), any::<u64>()).prop_map(|(value, version)| Response::Value { value, version }),
            Just(Response::Missing),
            any::<u64>().prop_map(|version| Response::Written { version }),
            any::<i64>().prop_map(|value| Response::Counter { value }),
            Just(Response::Pong),
        ]
    }

    proptest! {
        #[test]
        fn archives_written_by_hand_are_rkyv_s_own(
            value in proptest::option::of(bytes_strategy(300)),
            version in any::<u64>(),
            request_id in any::<u64>(),
            map_epoch in any::<u64>(),
        ) {
            // After other bytes, as in an outbox holding earlier answers.
            let response = match value {
                Some(value) => Response::Value { value, version },
                None => Response::Missing,
            };
            let by_hand = hand_encoded(request_id, map_epoch, &response);
            prop_assert_eq!(&by_hand, &rkyv_encoded(request_id, map_epoch, &response));
            let Ok(Split::Frame { header, payload }) = split_frame(&by_hand[3..]) else {
                panic!("the frame splits")
            };
            prop_assert_eq!((header.request_id, header.map_epoch), (request_id, map_epoch));
            prop_assert_eq!(decode_payload::<Response>(&by_hand[3..][payload]), Ok(response));
        }

        #[test]
        fn requests_written_by_hand_are_rkyv_s_own(request in prop_oneof![read_strategy(), other_strategy()]) {
            let mut by_hand = vec![0xaa; 3];
            encode_request(4, 9, &request, &mut by_hand).unwrap();
            let mut by_rkyv = vec![0xaa; 3];
            encode_message(FrameKind::Request, 4, 9, &request, &mut by_rkyv).unwrap();
            prop_assert_eq!(by_hand, by_rkyv);
        }

        #[test]
        fn an_answer_in_rkyv_s_layout_is_read_as_rkyv_reads_it(response in answer_strategy()) {
            let frame = rkyv_encoded(1, 1, &response);
            let payload = &frame[3 + FRAME_HEADER_BYTES..];
            let read_here = matches!(response, Response::Value { .. } | Response::Missing);
            let expected = read_here.then_some(response);
            prop_assert_eq!(parse_read_answer(payload), expected);
        }

        #[test]
        fn a_mangled_answer_is_read_here_only_as_rkyv_reads_it(
            response in answer_strategy(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in 0usize..3,
        ) {
            let frame = rkyv_encoded(1, 1, &response);
            let mut payload = frame[3 + FRAME_HEADER_BYTES..].to_vec();
            for (at, value) in flips {
                let at = at % payload.len();
                payload[at] = value;
            }
            payload.truncate(payload.len() - cut.min(payload.len()));
            if let Some(read) = parse_read_answer(&payload) {
                prop_assert_eq!(decode_payload::<Response>(&payload), Ok(read));
            }
        }

        #[test]
        fn a_read_in_rkyv_s_layout_is_read_as_rkyv_reads_it(request in read_strategy()) {
            let payload = request_payload(&request);
            let read = ReadRequest::parse(&payload);
            prop_assert!(read.is_some(), "every Get rkyv writes is read here");
            prop_assert_eq!(read.unwrap().to_request(Vec::new()), request);
        }

        #[test]
        fn other_commands_are_left_to_rkyv(request in other_strategy()) {
            let payload = request_payload(&request);
            prop_assert_eq!(ReadRequest::parse(&payload), None);
        }

        #[test]
        fn a_mangled_read_is_read_here_only_as_rkyv_reads_it(
            request in read_strategy(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in 0usize..3,
        ) {
            let mut payload = request_payload(&request);
            for (at, value) in flips {
                let at = at % payload.len();
                payload[at] = value;
            }
            payload.truncate(payload.len() - cut.min(payload.len()));
            if let Some(read) = ReadRequest::parse(&payload) {
                prop_assert_eq!(decode_payload::<Request>(&payload), Ok(read.to_request(Vec::new())));
            }
        }
    }
}
