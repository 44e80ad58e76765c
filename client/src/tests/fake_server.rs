//! An in-process fake Engram node for tests: it speaks the real frames over loopback TCP
//! and has a few scripted behaviours selected by key, so the client's connection handling,
//! routing and retries can be tested without the real server.
//!
//! Keys with special meaning:
//! - `hold*`: the response is withheld until [`FakeServer::release`], which sends every
//!   held response in reverse order of arrival (out-of-order delivery).
//! - `silent*`: never answered.
//! - `close-once*`: the first request closes the connection unanswered; later ones succeed.
//! - `wrongtype*`: answered with a `WrongType` error.
//! - `busy-once*`: the first request gets `Busy`, later ones succeed.
//! - `lost-reply-once*`: the first request is applied, then the connection closes
//!   before its answer goes out; later ones succeed.
//!
//! With [`Shared::silent_map`] set, slot-map requests are never answered.
//!
//! A keyed request whose slot the shared map marks lost is answered `SlotLost`, as the
//! real server does.
//!
//! Like the real server, the fake applies a mutation (non-zero operation id) once per
//! client: a resent one gets the answer recorded the first time.
//!
//! Commands the fake does not model (the coordination objects) are answered from
//! [`Shared::answers`], a scripted response per key, so tests check how the client
//! shapes requests and maps responses rather than re-testing the server's semantics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use engram_link_tokio::fill;
use engram_proto::limits::SLOT_COUNT;
use engram_proto::{
    decode_payload, encode_message, Command, ErrorCode, ErrorReply, FrameBuffer, FrameBufferSizes, FrameHeader,
    FrameKind, Hello, HelloReply, NodeInfo, Request, Response, ShardAddress, SlotHasher, SlotMap, SlotRange,
    FRONT_SHARD_ID, LOST_SHARD_INDEX,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use engram_proto::{AdminCommand, BytesCommand, CounterCommand, DataCommand};

/// What the fake saw of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub key: Vec<u8>,
    pub op_id: u64,
    pub completed_below_op_id: u64,
    pub map_epoch: u64,
    /// The shard index of the fake that received it (`None`: the front fake).
    pub shard: Option<u32>,
    pub command: Command,
}

#[derive(Default)]
pub struct Shared {
    /// The cluster's map; shared by the fakes of one test so they agree on ownership.
    pub map: Option<SlotMap>,
    pub refuse_hello: bool,
    /// Leaves every slot-map request unanswered.
    pub silent_map: bool,
    pub seen: Vec<Seen>,
    pub hellos: usize,
    pub values: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// The answer to any command on the key (checked before the modelled commands).
    pub answers: HashMap<Vec<u8>, Response>,
    counters: HashMap<Vec<u8>, i64>,
    /// Answers of applied mutations by (client id, operation id), for resends.
    applied: HashMap<(u64, u64), Response>,
    once_fired: Vec<Vec<u8>>,
    held: Vec<(mpsc::Sender<Vec<u8>>, Vec<u8>)>,
}

pub struct FakeServer {
    pub address: String,
    pub shared: Arc<Mutex<Shared>>,
    /// The accept loop, which owns the listener.
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeServer {
    /// Serves on a fresh loopback port. `shard_index` is this fake's index in the shared
    /// map's shards (it refuses keys it does not own); `None` makes it a front port.
    pub async fn start(shared: Arc<Mutex<Shared>>, shard_index: Option<u32>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&shared), shard_index));
                }
            }
        });
        FakeServer {
            address,
            shared,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// Closes the listener, so new connections are refused (as by a dead node); the
    /// connections already open keep being served.
    pub async fn stop_listening(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            // Once the aborted task is gone, so is its listener.
            let _ = accept.await;
        }
    }

    pub async fn front() -> FakeServer {
        FakeServer::start(Arc::default(), None).await
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap()
    }

    /// Sends every held response, newest first.
    pub async fn release(&self) {
        let held = std::mem::take(&mut self.lock().held);
        for (sender, frame) in held.into_iter().rev() {
            let _ = sender.send(frame).await;
        }
    }

    pub fn held(&self) -> usize {
        self.lock().held.len()
    }
}

/// A map giving the first half of the slots to `first` and the rest to `second`.
pub fn two_shard_map(epoch: u64, first: &str, second: &str) -> SlotMap {
    let half = SLOT_COUNT / 2;
    SlotMap {
        epoch,
        shards: vec![
            ShardAddress {
                node_id: 1,
                shard_id: 0,
                address: first.into(),
            },
            ShardAddress {
                node_id: 1,
                shard_id: 1,
                address: second.into(),
            },
        ],
        ranges: vec![
            SlotRange {
                start: 0,
                end: half - 1,
                shard_index: 0,
            },
            SlotRange {
                start: half,
                end: SLOT_COUNT - 1,
                shard_index: 1,
            },
        ],
        version_floor: 0,
        backups: Vec::new(),
    }
}

/// A map giving the first half of the slots to `first` and marking the rest lost.
pub fn half_lost_map(epoch: u64, first: &str) -> SlotMap {
    let mut map = single_shard_map(epoch, first);
    map.ranges = vec![
        SlotRange {
            start: 0,
            end: SLOT_COUNT / 2 - 1,
            shard_index: 0,
        },
        SlotRange {
            start: SLOT_COUNT / 2,
            end: SLOT_COUNT - 1,
            shard_index: LOST_SHARD_INDEX,
        },
    ];
    map
}

/// A map giving every slot to the shard at `address`.
pub fn single_shard_map(epoch: u64, address: &str) -> SlotMap {
    SlotMap {
        epoch,
        shards: vec![ShardAddress {
            node_id: 1,
            shard_id: 0,
            address: address.into(),
        }],
        ranges: vec![SlotRange {
            start: 0,
            end: SLOT_COUNT - 1,
            shard_index: 0,
        }],
        version_floor: 0,
        backups: Vec::new(),
    }
}

fn frame(kind: FrameKind, request_id: u64, message: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(kind, request_id, 0, message, &mut out).unwrap();
    out
}

pub fn error(code: ErrorCode) -> Response {
    Response::Error(ErrorReply {
        code: code.as_u16(),
        message: format!("fake {code}"),
        map_epoch: 0,
    })
}

/// The next whole frame, copied out; `None` once the client closed or broke the stream.
async fn read_frame(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    input: &mut FrameBuffer,
) -> Option<(FrameHeader, Vec<u8>)> {
    loop {
        if let Some((header, payload)) = input.next_frame().ok()? {
            return Some((header, payload.to_vec()));
        }
        if fill(reader, input).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, shared: Arc<Mutex<Shared>>, shard_index: Option<u32>) {
    let (mut read_half, mut write_half) = stream.into_split();
    let (outbound, mut queue) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if write_half.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut input = FrameBuffer::new(FrameBufferSizes::LINK);
    let Some((header, payload)) = read_frame(&mut read_half, &mut input).await else {
        return;
    };
    assert_eq!(header.kind, FrameKind::Hello);
    let hello: Hello = decode_payload(&payload).unwrap();
    let refuse = {
        let mut shared = shared.lock().unwrap();
        shared.hellos += 1;
        shared.refuse_hello
    };
    if refuse {
        let _ = outbound
            .send(frame(FrameKind::Response, 0, &error(ErrorCode::Unauthorized)))
            .await;
        drop(outbound);
        let _ = writer.await;
        return;
    }
    let reply = HelloReply {
        node_id: 1,
        shard_id: shard_index.map_or(FRONT_SHARD_ID, |index| index as u16),
        shard_count: 2,
        map_epoch: 0,
        server_version: "fake".into(),
    };
    let mut hello_frame = Vec::new();
    encode_message(FrameKind::HelloReply, 0, 0, &reply, &mut hello_frame).unwrap();
    outbound.send(hello_frame).await.unwrap();
    let hasher = SlotHasher::new(&hello.namespace);
    while let Some((header, payload)) = read_frame(&mut read_half, &mut input).await {
        let request: Request = decode_payload(&payload).unwrap();
        let key = request.command.key().map(<[u8]>::to_vec).unwrap_or_default();
        let answer = {
            let mut state = shared.lock().unwrap();
            state.seen.push(Seen {
                key: key.clone(),
                op_id: request.op_id,
                completed_below_op_id: request.completed_below_op_id,
                map_epoch: header.map_epoch,
                shard: shard_index,
                command: request.command.clone(),
            });
            let owner = match (request.command.key(), &state.map) {
                (Some(key), Some(map)) => Some(map.owner_table()[hasher.slot(key) as usize]),
                _ => None,
            };
            let owned = match (shard_index, owner) {
                (Some(index), Some(owner)) => owner == index,
                _ => true,
            };
            let response = if owner == Some(LOST_SHARD_INDEX) {
                Some(error(ErrorCode::SlotLost))
            } else if !owned {
                Some(error(ErrorCode::WrongShard))
            } else if key.starts_with(b"silent")
                || (state.silent_map && matches!(request.command, Command::Admin(AdminCommand::GetSlotMap)))
            {
                None
            } else if key.starts_with(b"close-once") && first_time(&mut state, &key) {
                return;
            } else if key.starts_with(b"busy-once") && first_time(&mut state, &key) {
                Some(error(ErrorCode::Busy))
            } else if key.starts_with(b"wrongtype") {
                Some(error(ErrorCode::WrongType))
            } else if let Some(answer) = state.answers.get(&key) {
                Some(answer.clone())
            } else if let Some(recorded) = state.applied.get(&(hello.client_id, request.op_id)) {
                Some(recorded.clone())
            } else {
                let op_id = request.op_id;
                let response = apply(&mut state, request.command);
                if op_id != 0 {
                    state.applied.insert((hello.client_id, op_id), response.clone());
                }
                if key.starts_with(b"lost-reply-once") && first_time(&mut state, &key) {
                    return;
                }
                Some(response)
            };
            match response {
                Some(response) if key.starts_with(b"hold") => {
                    let answer = frame(FrameKind::Response, header.request_id, &response);
                    state.held.push((outbound.clone(), answer));
                    None
                }
                Some(response) => Some(frame(FrameKind::Response, header.request_id, &response)),
                None => None,
            }
        };
        if let Some(answer) = answer {
            if outbound.send(answer).await.is_err() {
                return;
            }
        }
    }
}

/// True the first time a `*-once` key is seen.
fn first_time(state: &mut Shared, key: &[u8]) -> bool {
    let fresh = !state.once_fired.iter().any(|fired| fired == key);
    if fresh {
        state.once_fired.push(key.to_vec());
    }
    fresh
}

fn apply(state: &mut Shared, command: Command) -> Response {
    match command {
        Command::Admin(AdminCommand::Ping) => Response::Pong,
        Command::Admin(AdminCommand::Info) => Response::Info(NodeInfo {
            node_id: 1,
            server_version: "fake".into(),
            uptime_ms: 1,
            map_epoch: state.map.as_ref().map_or(0, |map| map.epoch),
            connections: 1,
            shards: Vec::new(),
        }),
        Command::Admin(AdminCommand::GetSlotMap) => match &state.map {
            Some(map) => Response::SlotMap(map.clone()),
            None => error(ErrorCode::Internal),
        },
        Command::Data(DataCommand::Bytes(BytesCommand::Get { key })) => match state.values.get(&key) {
            Some((value, version)) => Response::Value {
                value: value.clone(),
                version: *version,
            },
            None => Response::Missing,
        },
        Command::Data(DataCommand::Bytes(BytesCommand::Set { key, value, .. })) => {
            let version = state.values.get(&key).map_or(0, |(_, version)| *version) + 1;
            state.values.insert(key, (value, version));
            Response::Written { version }
        }
        Command::Data(DataCommand::Bytes(BytesCommand::Del { key })) => Response::Deleted {
            existed: state.values.remove(&key).is_some(),
        },
        Command::Data(DataCommand::Counter(CounterCommand::Add { key, delta })) => {
            let value = state.counters.entry(key).or_default();
            *value += delta;
            Response::Counter { value: *value }
        }
        Command::Data(DataCommand::Counter(CounterCommand::Get { key })) => Response::Counter {
            value: state.counters.get(&key).copied().unwrap_or(0),
        },
        _ => error(ErrorCode::Internal),
    }
}
