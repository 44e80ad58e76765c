//! A model client: one counter increment at a time, each with its own operation id,
//! retried with that same id (to the shard its possibly stale map names) until it is
//! answered; a map refresh after `Moved`, a broken link or a timeout; `SlotLost` is
//! final, as in the real client. What it learns goes to the world's ledger.

use std::collections::BTreeMap;

use engram_proto::{DataCommand, DataRequest, ErrorCode, Response, SlotMap, LOST_SHARD_INDEX};

use crate::net::{endpoint_of, Action, Endpoint, Reply, Request as Message, Timer};
use crate::rng::Rng;
use engram_proto::CounterCommand;

/// How long a client waits for one attempt before it refreshes its map and retries.
const ATTEMPT_TIMEOUT_MS: u64 = 1_000;
const RETRY_BACKOFF_MS: u64 = 40;
const THINK_TIME_MS_MAX: u64 = 120;

/// What a client learned about one of its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// Acknowledged: the counter's value right after this increment.
    Acked { key: usize, op_id: u64, value: i64 },
    /// Given up on `SlotLost`: applied or not, nobody can say.
    Unknown { key: usize, op_id: u64 },
    /// An answer no correct cluster gives.
    Unexpected(String),
}

struct Op {
    op_id: u64,
    key: usize,
}

enum State {
    Idle,
    /// A wake-up is armed.
    Waiting,
    Sending(u64),
    Refreshing(u64),
}

pub struct Client {
    pub client_id: u64,
    keys: Vec<(Vec<u8>, u32)>,
    /// Nodes whose front ports may answer a map refresh.
    nodes: usize,
    map: Option<SlotMap>,
    next_op: u64,
    op: Option<Op>,
    state: State,
    next_call: u64,
    /// No new operations once set; the one in flight still completes.
    pub stopped: bool,
    pub learned: Vec<Learned>,
}

impl Client {
    /// `keys`: each key (unprefixed) with its slot.
    pub fn new(client_id: u64, keys: Vec<(Vec<u8>, u32)>, nodes: usize) -> Client {
        Client {
            client_id,
            keys,
            nodes,
            map: None,
            next_op: 1,
            op: None,
            state: State::Idle,
            next_call: 0,
            stopped: false,
            learned: Vec::new(),
        }
    }

    /// Whether nothing is in flight and nothing more will be.
    pub fn is_done(&self) -> bool {
        self.stopped && self.op.is_none()
    }

    fn wait(&mut self, after_ms: u64, actions: &mut Vec<Action>) {
        self.state = State::Waiting;
        actions.push(Action::Timer {
            after_ms,
            timer: Timer::ClientWake,
        });
    }

    /// Arms the first wake-up.
    pub fn start(&mut self, after_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.wait(after_ms, &mut actions);
        actions
    }

    pub fn timer(&mut self, timer: Timer, rng: &mut Rng) -> Vec<Action> {
        let mut actions = Vec::new();
        match (timer, &self.state) {
            (Timer::ClientWake, State::Waiting) => self.attempt(rng, &mut actions),
            (Timer::CallTimeout(call), State::Sending(pending) | State::Refreshing(pending)) if call == *pending => {
                self.refresh(rng, &mut actions)
            }
            _ => {}
        }
        actions
    }

    fn call(&mut self, to: Endpoint, request: Message, actions: &mut Vec<Action>) -> u64 {
        self.next_call += 1;
        actions.push(Action::Call {
            to,
            call: self.next_call,
            request,
        });
        actions.push(Action::Timer {
            after_ms: ATTEMPT_TIMEOUT_MS,
            timer: Timer::CallTimeout(self.next_call),
        });
        self.next_call
    }

    /// Sends the operation in flight (or starts the next one) to its slot's owner.
    fn attempt(&mut self, rng: &mut Rng, actions: &mut Vec<Action>) {
        if self.op.is_none() {
            if self.stopped {
                self.state = State::Idle;
                return;
            }
            let key = rng.below(self.keys.len() as u64) as usize;
            self.op = Some(Op {
                op_id: self.next_op,
                key,
            });
            self.next_op += 1;
        }
        let Some(map) = &self.map else {
            return self.refresh(rng, actions);
        };
        let Some(op) = &self.op else { return };
        let (key, slot) = &self.keys[op.key];
        let owner = map
            .ranges
            .iter()
            .find(|range| range.start <= *slot && *slot <= range.end)
            .map_or(LOST_SHARD_INDEX, |range| range.shard_index);
        if owner == LOST_SHARD_INDEX {
            // The map marks the slot lost: fail at once, as the real client does.
            return self.give_up(actions, rng);
        }
        let Some(shard) = map.shards.get(owner as usize) else {
            return self.refresh(rng, actions);
        };
        let Some(to) = endpoint_of(&shard.address) else {
            return self.refresh(rng, actions);
        };
        let request = Message::Data {
            client_id: self.client_id,
            request: DataRequest {
                op_id: op.op_id,
                // One operation at a time: every earlier one has been answered.
                completed_below_op_id: op.op_id,
                command: DataCommand::from(CounterCommand::Add {
                    key: key.clone(),
                    delta: 1,
                }),
            },
        };
        let call = self.call(to, request, actions);
        self.state = State::Sending(call);
    }

    /// Asks the control plane or a node's front port for the current map.
    fn refresh(&mut self, rng: &mut Rng, actions: &mut Vec<Action>) {
        let to = match rng.below(self.nodes as u64 + 1) {
            0 => Endpoint::Control,
            node => Endpoint::Front(node as usize - 1),
        };
        let call = self.call(to, Message::GetSlotMap, actions);
        self.state = State::Refreshing(call);
    }

    fn give_up(&mut self, actions: &mut Vec<Action>, rng: &mut Rng) {
        if let Some(op) = self.op.take() {
            self.learned.push(Learned::Unknown {
                key: op.key,
                op_id: op.op_id,
            });
        }
        self.wait(rng.between(1, THINK_TIME_MS_MAX), actions);
    }

    fn install(&mut self, map: SlotMap) {
        // As the real client, which takes only a valid map (the control plane's before
        // any node joined lists no slot).
        if map.validate().is_ok() && self.map.as_ref().is_none_or(|known| map.epoch > known.epoch) {
            self.map = Some(map);
        }
    }

    /// An answer to one of this client's calls.
    pub fn answered(&mut self, call: u64, reply: Reply, rng: &mut Rng) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.state {
            State::Refreshing(pending) if pending == call => {
                if let Reply::SlotMap(map) = reply {
                    self.install(map);
                }
                self.wait(RETRY_BACKOFF_MS, &mut actions);
            }
            State::Sending(pending) if pending == call => self.on_answer(reply, rng, &mut actions),
            _ => {}
        }
        actions
    }

    fn on_answer(&mut self, reply: Reply, rng: &mut Rng, actions: &mut Vec<Action>) {
        let response = match reply {
            Reply::Data(response) => response,
            _ => return self.refresh(rng, actions),
        };
        match response {
            Response::Counter { value } => {
                if let Some(op) = self.op.take() {
                    self.learned.push(Learned::Acked {
                        key: op.key,
                        op_id: op.op_id,
                        value,
                    });
                }
                self.wait(rng.between(1, THINK_TIME_MS_MAX), actions);
            }
            Response::Error(error) => match ErrorCode::from_u16(error.code) {
                Some(ErrorCode::TryAgain | ErrorCode::Busy) => self.wait(RETRY_BACKOFF_MS, actions),
                Some(ErrorCode::Moved | ErrorCode::WrongShard | ErrorCode::ShuttingDown) => self.refresh(rng, actions),
                Some(ErrorCode::SlotLost) => self.give_up(actions, rng),
                _ => self.unexpected(format!("error answer {error:?}"), rng, actions),
            },
            other => self.unexpected(format!("answer {other:?}"), rng, actions),
        }
    }

    fn unexpected(&mut self, what: String, rng: &mut Rng, actions: &mut Vec<Action>) {
        self.learned.push(Learned::Unexpected(what));
        self.op = None;
        self.wait(rng.between(1, THINK_TIME_MS_MAX), actions);
    }
}

/// How many keys each client may write (the same keys for every client).
pub const KEYS: usize = 12;

/// The keys the clients write, each with its slot in namespace `namespace`.
pub fn keys(rng: &mut Rng, namespace: &[u8]) -> Vec<(Vec<u8>, u32)> {
    let hasher = engram_proto::SlotHasher::new(namespace);
    let mut keys: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while keys.len() < KEYS {
        let key = format!("counter-{}", rng.below(1 << 20)).into_bytes();
        keys.insert(hasher.slot(&key), key);
    }
    keys.into_iter().map(|(slot, key)| (key, slot)).collect()
}
