//! The link's state machine driven with byte slices, as a peer would send them.

use super::*;
use crate::error::ErrorCode;
use crate::frame::FRAME_HEADER_BYTES;
use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX};
use crate::message::{AdminCommand, Command, ErrorReply, Family, Request};
use crate::protocol::{ClientProtocol, PeerProtocol};
use crate::{PeerRequest, PeerResponse, Split};

type ClientLink = Link<ClientProtocol, &'static str>;

fn frame<T>(kind: FrameKind, request_id: u64, message: &T) -> Vec<u8>
where
    T: Encode,
{
    let mut out = Vec::new();
    message.encode_frame(kind, request_id, 5, &mut out).unwrap();
    out
}

fn hello_reply() -> Vec<u8> {
    let reply = HelloReply {
        node_id: 1,
        shard_id: 0,
        shard_count: 1,
        map_epoch: 5,
        server_version: "test".into(),
    };
    frame(FrameKind::HelloReply, HANDSHAKE_REQUEST_ID, &reply)
}

fn error(code: ErrorCode) -> Response {
    Response::Error(ErrorReply {
        code: code.as_u16(),
        message: format!("because {code}"),
        map_epoch: 0,
    })
}

fn ping() -> Request {
    Request {
        op_id: 0,
        completed_below_op_id: 0,
        command: Command::from(AdminCommand::Ping),
    }
}

fn fresh_link() -> ClientLink {
    let identity = Identity {
        client_id: 9,
        namespace: b"tenant",
        credentials: b"token",
    };
    Link::new(identity, FrameBufferSizes::LINK).unwrap()
}

/// A link whose handshake is done.
fn ready_link() -> ClientLink {
    let mut link = fresh_link();
    let events = feed(&mut link, &hello_reply(), usize::MAX).unwrap();
    assert!(matches!(events[..], [LinkEvent::Ready(_)]));
    link
}

/// Gives `bytes` to the link `piece` bytes per read, taking every event as it comes.
fn feed<P: Protocol, W>(
    link: &mut Link<P, W>,
    mut bytes: &[u8],
    piece: usize,
) -> Result<Vec<LinkEvent<P::Response, W>>, LinkError> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let room = link.input().read_buffer();
        let read = room.len().min(bytes.len()).min(piece);
        room[..read].copy_from_slice(&bytes[..read]);
        link.input().filled(read);
        bytes = &bytes[read..];
        while let Some(event) = link.next_event()? {
            events.push(event);
        }
    }
    Ok(events)
}

/// The frames in `bytes`, decoded with `split_frame`.
fn frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Ok(Split::Frame { header, payload }) = crate::split_frame(bytes) {
        frames.push((header, bytes[payload.clone()].to_vec()));
        bytes = &bytes[payload.end..];
    }
    assert!(bytes.is_empty(), "{} bytes are not a whole frame", bytes.len());
    frames
}

#[test]
fn a_new_link_sends_its_hello_first_and_holds_requests_until_the_reply() {
    let mut link = Link::<PeerProtocol>::new(Identity::node(b"secret"), FrameBufferSizes::LINK).unwrap();
    let abort = PeerRequest::MigrateAbort {
        migration_id: 3,
        map_epoch: 4,
    };
    assert_eq!(link.send(&abort, 4, ()), Ok(1), "requests count from 1");
    let sent = frames(link.output());
    assert_eq!(sent.len(), 1, "only the Hello goes before the reply");
    assert_eq!(sent[0].0.kind, FrameKind::Hello);
    let hello = Hello::decode(&sent[0].1).unwrap();
    assert_eq!(
        (
            hello.protocol_version,
            hello.family,
            hello.client_id,
            &hello.credentials[..]
        ),
        (PROTOCOL_VERSION, Family::Peer, 0, &b"secret"[..])
    );
    let hello_bytes = link.output().len();
    assert!(link.queued_bytes() > hello_bytes);
    link.written(hello_bytes - 1);
    assert_eq!(link.output().len(), 1, "only what was written is dropped");
    link.written(1);
    assert!(matches!(
        feed(&mut link, &hello_reply(), usize::MAX).unwrap()[..],
        [LinkEvent::Ready(_)]
    ));
    let sent = frames(link.output());
    assert_eq!(
        (sent.len(), sent[0].0.kind, sent[0].0.request_id),
        (1, FrameKind::Request, 1)
    );
    let mut taken = Vec::new();
    link.take_output(&mut taken);
    assert_eq!((frames(&taken).len(), link.output().len()), (1, 0));
}

#[test]
fn answers_split_across_reads_are_matched_to_their_requests_in_any_order() {
    let mut link = ready_link();
    let first = link.send(&ping(), 0, "first").unwrap();
    let second = link.send(&ping(), 0, "second").unwrap();
    let third = link.send(&ping(), 0, "third").unwrap();
    assert_eq!(link.outstanding().len(), 3);
    let mut stream = frame(FrameKind::Response, third, &Response::Missing);
    stream.extend(frame(FrameKind::Response, first, &Response::Pong));
    stream.extend(frame(FrameKind::Response, second, &error(ErrorCode::Busy)));
    // One byte per read: no event before a frame is whole.
    let events = feed(&mut link, &stream, 1).unwrap();
    let answers: Vec<_> = events
        .into_iter()
        .map(|event| match event {
            LinkEvent::Answer {
                request_id,
                map_epoch,
                response,
                waiter,
            } => (request_id, map_epoch, response, waiter),
            LinkEvent::Ready(_) => panic!("ready twice"),
        })
        .collect();
    assert_eq!(
        answers,
        [
            (third, 5, Response::Missing, "third"),
            (first, 5, Response::Pong, "first"),
            (second, 5, error(ErrorCode::Busy), "second"),
        ]
    );
    assert!(link.outstanding().is_empty());
}

#[test]
fn a_frame_larger_than_the_buffer_grows_it_to_that_frame_only() {
    let sizes = FrameBufferSizes {
        initial_bytes: 64,
        growth_bytes_max: usize::MAX,
        retained_bytes_max: 128,
    };
    let mut link = ClientLink::new(Identity::default(), sizes).unwrap();
    feed(&mut link, &hello_reply(), usize::MAX).unwrap();
    let id = link.send(&ping(), 0, "large").unwrap();
    let value = vec![7u8; 10_000];
    let large = frame(FrameKind::Response, id, &Response::Value { value, version: 1 });
    // The header alone says how large the frame is: the buffer grows to it, no further.
    feed(&mut link, &large[..FRAME_HEADER_BYTES], usize::MAX).unwrap();
    assert_eq!(link.input().read_buffer().len(), large.len() - FRAME_HEADER_BYTES);
    let events = feed(&mut link, &large[FRAME_HEADER_BYTES..], 1000).unwrap();
    assert!(
        matches!(&events[..], [LinkEvent::Answer { response: Response::Value { value, .. }, .. }] if value.len() == 10_000)
    );
    // Drained, it shrinks back.
    assert_eq!(link.input().read_buffer().len(), 64);
}

#[test]
fn a_chunked_buffer_grows_one_step_per_read_whatever_the_header_claims() {
    let mut buffer = FrameBuffer::new(FrameBufferSizes::chunked(64));
    let claimed = FrameHeader {
        kind: FrameKind::Response,
        request_id: 1,
        map_epoch: 0,
        payload_bytes: FRAME_PAYLOAD_BYTES_MAX as u32,
    };
    let header = claimed.encode();
    buffer.read_buffer()[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    buffer.filled(FRAME_HEADER_BYTES);
    assert_eq!(buffer.next_frame(), Ok(None));
    for step in 1..4 {
        let room = buffer.read_buffer().len();
        assert_eq!(room, 64, "step {step}: one chunk past what arrived");
        buffer.filled(room);
        assert_eq!(buffer.next_frame(), Ok(None));
    }
}

#[test]
fn the_look_ahead_sees_the_whole_frames_not_handed_out_and_changes_nothing() {
    // Each frame's payload is its own (its op id), so a payload handed back from the
    // wrong frame shows.
    let request = |op_id| Request { op_id, ..ping() };
    let mut bytes = Vec::new();
    for request_id in 1..=3 {
        bytes.extend(frame(FrameKind::Request, request_id, &request(request_id)));
    }
    let whole = bytes.len();
    // Half of a fourth frame: not whole, so not seen.
    let fourth = frame(FrameKind::Request, 4, &request(4));
    bytes.extend_from_slice(&fourth[..fourth.len() / 2]);
    let mut buffer = FrameBuffer::new(FrameBufferSizes::chunked(4096));
    buffer.read_buffer()[..bytes.len()].copy_from_slice(&bytes);
    buffer.filled(bytes.len());
    let payloads = |buffer: &FrameBuffer| buffer.whole_frames_ahead().map(<[u8]>::to_vec).collect::<Vec<_>>();
    let expected: Vec<Vec<u8>> = frames(&bytes[..whole])
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(expected.len(), 3);
    assert!(expected[0] != expected[1] && expected[1] != expected[2]);
    assert_eq!(payloads(&buffer), expected);
    let (header, payload) = buffer.next_frame().unwrap().unwrap();
    assert_eq!((header.request_id, payload), (1, &expected[0][..]));
    assert_eq!(payloads(&buffer), expected[1..]);
    // A refused header ends the look ahead; next_frame reports it in its turn.
    let mut garbage = FrameBuffer::new(FrameBufferSizes::chunked(4096));
    garbage.read_buffer()[..FRAME_HEADER_BYTES].fill(0xff);
    garbage.filled(FRAME_HEADER_BYTES);
    assert_eq!(garbage.whole_frames_ahead().count(), 0);
    assert!(garbage.next_frame().is_err());
}

#[test]
fn an_answer_to_a_request_not_outstanding_is_a_protocol_error() {
    let mut link = ready_link();
    let asked = link.send(&ping(), 0, "asked").unwrap();
    let stray = frame(FrameKind::Response, asked + 1, &Response::Pong);
    assert_eq!(
        feed(&mut link, &stray, usize::MAX).unwrap_err(),
        LinkError::NotOutstanding { request_id: asked + 1 }
    );
    // Answered once, an id is no longer outstanding.
    let mut link = ready_link();
    let asked = link.send(&ping(), 0, "asked").unwrap();
    let mut twice = frame(FrameKind::Response, asked, &Response::Pong);
    twice.extend(frame(FrameKind::Response, asked, &Response::Pong));
    assert_eq!(
        feed(&mut link, &twice, usize::MAX).unwrap_err(),
        LinkError::NotOutstanding { request_id: asked }
    );
}

#[test]
fn an_answer_before_the_hello_reply_is_refused() {
    let mut link = fresh_link();
    let asked = link.send(&ping(), 0, "early").unwrap();
    let early = frame(FrameKind::Response, asked, &Response::Pong);
    assert_eq!(
        feed(&mut link, &early, usize::MAX).unwrap_err(),
        LinkError::AnsweredBeforeHelloReply { request_id: asked }
    );
    assert!(!link.is_ready());
    let mut link = fresh_link();
    let request = frame(FrameKind::Request, 1, &ping());
    assert!(matches!(
        feed(&mut link, &request, usize::MAX).unwrap_err(),
        LinkError::Protocol(ProtocolError::UnexpectedKind { .. })
    ));
}

#[test]
fn a_refused_handshake_says_why() {
    let mut link = fresh_link();
    let refusal = frame(
        FrameKind::Response,
        HANDSHAKE_REQUEST_ID,
        &error(ErrorCode::Unauthorized),
    );
    let Err(LinkError::Refused(reply)) = feed(&mut link, &refusal, usize::MAX) else {
        panic!("not a refusal");
    };
    assert_eq!(reply.code, ErrorCode::Unauthorized.as_u16());
    let refused = LinkError::Refused(reply).to_string();
    assert!(refused.contains("Unauthorized: because Unauthorized"), "{refused}");
}

#[test]
fn a_parting_error_ends_the_link_and_a_second_hello_reply_is_out_of_step() {
    let mut link = ready_link();
    link.send(&ping(), 0, "pending").unwrap();
    let parting = frame(FrameKind::Response, HANDSHAKE_REQUEST_ID, &error(ErrorCode::Malformed));
    assert!(matches!(
        feed(&mut link, &parting, usize::MAX),
        Err(LinkError::Ended(reply)) if reply.code == ErrorCode::Malformed.as_u16()
    ));
    let mut link = ready_link();
    assert!(matches!(
        feed(&mut link, &hello_reply(), usize::MAX),
        Err(LinkError::Protocol(ProtocolError::UnexpectedKind { .. }))
    ));
}

#[test]
fn the_end_of_the_stream_is_a_close_between_frames_and_a_truncation_inside_one() {
    let mut link = ready_link();
    assert_eq!(link.end_of_stream(), LinkError::Closed);
    let asked = link.send(&ping(), 0, "cut").unwrap();
    let answer = frame(FrameKind::Response, asked, &Response::Pong);
    assert!(feed(&mut link, &answer[..answer.len() - 1], usize::MAX)
        .unwrap()
        .is_empty());
    assert_eq!(
        link.end_of_stream(),
        LinkError::Truncated {
            buffered_bytes: answer.len() - 1
        }
    );
}

#[test]
fn garbage_and_oversize_frames_are_refused_before_anything_is_allocated_for_them() {
    let mut link = fresh_link();
    assert!(matches!(
        feed(&mut link, &[0xab; 64], usize::MAX),
        Err(LinkError::Protocol(ProtocolError::BadMagic { .. }))
    ));
    let mut link = fresh_link();
    let mut header = FrameHeader {
        kind: FrameKind::HelloReply,
        request_id: 0,
        map_epoch: 0,
        payload_bytes: 0,
    }
    .encode();
    header[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        feed(&mut link, &header, usize::MAX),
        Err(LinkError::Protocol(ProtocolError::FrameTooLarge { .. }))
    ));
    assert!(link.input().read_buffer().len() < 1024 * 1024);
}

#[test]
fn outstanding_requests_are_bounded_and_an_unsendable_one_is_not_outstanding() {
    let mut link = ready_link();
    for _ in 0..IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX {
        link.send(&ping(), 0, "queued").unwrap();
    }
    assert_eq!(
        link.send(&ping(), 0, "one too many"),
        Err(LinkError::TooManyOutstanding)
    );
    assert!(LinkError::TooManyOutstanding
        .to_string()
        .contains("in_flight_requests_per_connection_max"));
    let mut link = ready_link();
    let queued = link.output().len();
    let huge = Request {
        op_id: 0,
        completed_below_op_id: 0,
        command: Command::from(crate::BytesCommand::Set {
            key: b"k".to_vec(),
            value: vec![0; FRAME_PAYLOAD_BYTES_MAX],
            ttl_ms: 0,
            condition: crate::SetCondition::Always,
        }),
    };
    assert!(matches!(
        link.send(&huge, 0, "huge"),
        Err(LinkError::Protocol(ProtocolError::FrameTooLarge { .. }))
    ));
    assert!(link.outstanding().is_empty());
    assert_eq!(link.output().len(), queued, "nothing of it is sent");
}

#[test]
fn a_peer_link_decodes_its_own_family() {
    let mut link = Link::<PeerProtocol>::new(Identity::node(b""), FrameBufferSizes::LINK).unwrap();
    feed(&mut link, &hello_reply(), usize::MAX).unwrap();
    let asked = link
        .send(
            &PeerRequest::MigrateAbort {
                migration_id: 1,
                map_epoch: 1,
            },
            1,
            (),
        )
        .unwrap();
    let events = feed(
        &mut link,
        &frame(FrameKind::Response, asked, &PeerResponse::Accepted),
        3,
    )
    .unwrap();
    assert!(matches!(
        &events[..],
        [LinkEvent::Answer {
            response: PeerResponse::Accepted,
            ..
        }]
    ));
}

/// The blocking adapter against a peer on a loopback socket that admits with
/// [`crate::admit`] and answers each request with its own request id as a counter.
#[test]
fn the_blocking_adapter_shakes_hands_and_calls() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut input = FrameBuffer::new(FrameBufferSizes::LINK);
        let port = crate::Port {
            name: "a test port",
            families: &[Family::Client],
            takes_forwarded: false,
        };
        let mut admitted = None;
        let mut answered = 0;
        loop {
            while let Some((header, payload)) = input.next_frame().unwrap() {
                let reply = match admitted {
                    None => {
                        admitted = Some(
                            crate::admit(header.kind, payload, &port, &crate::Gate::Token(b"token".to_vec()))
                                .unwrap()
                                .hello,
                        );
                        hello_reply()
                    }
                    Some(_) => {
                        answered += 1;
                        let value = header.request_id as i64;
                        frame(FrameKind::Response, header.request_id, &Response::Counter { value })
                    }
                };
                stream.write_all(&reply).unwrap();
            }
            if answered == 2 {
                return admitted.unwrap();
            }
            assert!(blocking::fill(&mut stream, &mut input).unwrap() > 0);
        }
    });
    let identity = Identity {
        client_id: 4,
        namespace: b"ns",
        credentials: b"token",
    };
    let timeout = std::time::Duration::from_secs(10);
    let mut link = blocking::BlockingLink::<ClientProtocol>::connect(&address, identity, timeout).unwrap();
    assert_eq!(link.call(ping()).unwrap(), Response::Counter { value: 1 });
    assert_eq!(link.call(ping()).unwrap(), Response::Counter { value: 2 });
    let hello = peer.join().unwrap();
    assert_eq!((hello.client_id, &hello.namespace[..]), (4, &b"ns"[..]));
    let refused = blocking::BlockingLink::<ClientProtocol>::connect(&address, identity, timeout);
    assert!(matches!(refused, Err(CallError::Connect { .. })), "the peer is gone");
}

#[test]
fn an_abandoned_request_s_late_answer_is_dropped_and_abandoned_requests_are_bounded() {
    let mut link = ready_link();
    let gone = link.send(&ping(), 0, "gone").unwrap();
    let kept = link.send(&ping(), 0, "kept").unwrap();
    assert_eq!(link.outstanding_mut().abandon(gone), Ok(Some("gone")));
    let mut stream = frame(FrameKind::Response, gone, &Response::Pong);
    stream.extend(frame(FrameKind::Response, kept, &Response::Missing));
    let events = feed(&mut link, &stream, usize::MAX).unwrap();
    assert!(matches!(
        &events[..],
        [LinkEvent::Answer { request_id, waiter: "kept", .. }] if *request_id == kept
    ));
    assert_eq!(link.outstanding().abandoned(), 0, "answered, it is no longer expected");
    let mut outstanding = Outstanding::default();
    for request_id in 1..=crate::limits::ABANDONED_REQUESTS_PER_CONNECTION_MAX as u64 {
        outstanding.insert(request_id, ()).unwrap();
        assert_eq!(outstanding.abandon(request_id), Ok(Some(())));
    }
    outstanding.insert(0xffff_ffff, ()).unwrap();
    assert_eq!(outstanding.abandon(0xffff_ffff), Err(LinkError::TooManyAbandoned));
    assert_eq!(outstanding.abandon(12), Ok(None), "an id not waited for is left alone");
}

mod handshake_buffer {
    use crate::frame::FRAME_HEADER_BYTES;
    use crate::limits::HELLO_PAYLOAD_BYTES_MAX;
    use crate::link::{FrameBuffer, FrameBufferSizes};
    use crate::{encode_message, FrameKind, Hello, ProtocolError};
    use proptest::prelude::*;

    fn frame_of(payload_bytes: usize) -> Vec<u8> {
        let hello = Hello {
            protocol_version: crate::limits::PROTOCOL_VERSION,
            client_id: 7,
            namespace: Vec::new(),
            credentials: vec![b'x'; payload_bytes],
            family: crate::Family::Client,
        };
        let mut out = Vec::new();
        encode_message(FrameKind::Hello, 1, 0, &hello, &mut out).unwrap();
        out
    }

    /// Feeds `bytes` as reads of up to `read_bytes`; the frames' sizes, or the error.
    fn feed(buffer: &mut FrameBuffer, bytes: &[u8], read_bytes: usize) -> Result<Vec<usize>, ProtocolError> {
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = buffer.read_buffer();
            let taken = room.len().min(read_bytes).min(rest.len());
            room[..taken].copy_from_slice(&rest[..taken]);
            buffer.filled(taken);
            rest = &rest[taken..];
            while let Some((_, payload)) = buffer.next_frame()? {
                frames.push(payload.len());
            }
        }
        Ok(frames)
    }

    #[test]
    fn a_hello_fits_and_a_larger_first_frame_is_refused_at_its_header() {
        let small = frame_of(1024);
        let mut buffer = FrameBuffer::for_handshake();
        assert_eq!(feed(&mut buffer, &small, 100).unwrap().len(), 1);
        let large = frame_of(HELLO_PAYLOAD_BYTES_MAX);
        let mut buffer = FrameBuffer::for_handshake();
        // Refused from the header alone: nothing past it is waited for or held.
        let refused = feed(&mut buffer, &large[..FRAME_HEADER_BYTES], FRAME_HEADER_BYTES);
        assert!(
            matches!(refused, Err(ProtocolError::HelloTooLarge { .. })),
            "{refused:?}"
        );
        assert!(buffer.read_buffer().len() <= FRAME_HEADER_BYTES + HELLO_PAYLOAD_BYTES_MAX);
        // Once open, the same frame passes.
        let mut buffer = FrameBuffer::for_handshake();
        buffer.open(FrameBufferSizes::chunked(64 * 1024));
        assert_eq!(feed(&mut buffer, &large, 1000).unwrap().len(), 1);
    }

    proptest! {
        /// Arbitrary bytes before a handshake: never a panic, and never a buffer larger
        /// than one Hello frame.
        #[test]
        fn arbitrary_bytes_never_grow_a_handshake_buffer(
            bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
            read_bytes in 1usize..5_000,
        ) {
            let mut buffer = FrameBuffer::for_handshake();
            let _ = feed(&mut buffer, &bytes, read_bytes);
            prop_assert!(buffer.read_buffer().len() <= FRAME_HEADER_BYTES + HELLO_PAYLOAD_BYTES_MAX + 1);
        }
    }
}
