//! The world: a discrete-event simulation of the control plane, four nodes with
//! replica groups and three clients, over a network that drops, delays (so reorders)
//! and duplicates messages, while nodes crash (restarting empty, as new processes), are
//! paused, or are cut off from the control plane or from each other, one fault at a
//! time, and the control plane hands groups over from primary to backup, all drawn from
//! one seed. Virtual time only.
//!
//! After every event: at most one process serves each group (as primary, under its
//! lease). At the end: every counter holds every acknowledged increment and at most the
//! unacknowledged ones too, no two increments of a counter returned the same value, each
//! read saw at least what was acknowledged before it began and at most what was invoked
//! before it ended, and no group ever lost all its copies.

use engram_proto::{CounterCommand, DataCommand, DataRequest, Response};
use engram_server::store::{slot_of_stored_key, Outcome};
use engram_tests::seeds::EventQueue;

use crate::control::Control;
use crate::model::{group_of_slot, Body, Endpoint, Message, Process, SimMap, GROUPS, NODES};
use crate::node::{Node, HEARTBEAT_MS, RESEND_MS};
use crate::rng::Rng;
use crate::Bug;

const CLIENTS: usize = 3;
const KEYS: usize = 12;
/// Faults start no later than this; after it the network is reliable and every process up.
const FAULTS_END_MS: u64 = 15_000;
const CLIENTS_END_MS: u64 = 16_000;
/// Calm after the clients are done, before the end checks.
const SETTLE_MS: u64 = 3_000;
/// A run that has not settled by then is stuck.
const RUN_MS_MAX: u64 = 120_000;
const CONTROL_TICK_MS: u64 = 50;
const CLIENT_TIMEOUT_MS: u64 = 300;
const CLIENT_RETRY_MS: u64 = 20;
const DROP_PER_MILLE: u64 = 20;
const DUPLICATE_PER_MILLE: u64 = 10;
const DELAY_MS_MAX: u64 = 25;

pub struct Options {
    pub seed: u64,
    pub bug: Option<Bug>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub invariant: &'static str,
    pub time_ms: u64,
    pub detail: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub increments: u64,
    pub reads: u64,
    pub failovers: u64,
    pub repairs: u64,
    pub hand_overs: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub partitions: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver(Box<Message>),
    Heartbeat(Process),
    Resend(Process),
    ControlTick,
    ClientNext(usize),
    ClientTimeout(usize, u64),
    Fault,
    HandOver,
    Restart(usize),
    Resume(usize),
    Heal,
}

/// A node's machine: its running process, or none while it is down.
struct Machine {
    process: Option<Node>,
    incarnation: u64,
    /// Paused: what reaches it waits until it resumes.
    paused: Option<Vec<Event>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    None,
    FromControl(usize),
    FromNodes(usize),
}

struct Op {
    op_id: u64,
    key: usize,
    read: bool,
    invoked_at: u64,
    req_id: u64,
    /// Every attempt's request id: an answer to an earlier attempt that arrives late
    /// still acknowledges the operation, as a real client waiting long enough takes it.
    attempts: Vec<u64>,
}

struct Client {
    map: SimMap,
    next_op_id: u64,
    next_req_id: u64,
    op: Option<Op>,
}

/// What clients saw, per key.
#[derive(Default)]
struct History {
    /// (value, invoked, done) of acknowledged increments.
    increments: Vec<(i64, u64, u64)>,
    /// Invocation times of increments never acknowledged.
    unknown: Vec<u64>,
    reads: Vec<(i64, u64, u64)>,
}

pub struct World {
    rng: Rng,
    bug: Option<Bug>,
    now: u64,
    queue: EventQueue<Event>,
    control: Control,
    machines: Vec<Machine>,
    clients: Vec<Client>,
    histories: Vec<History>,
    cut: Cut,
    summary: Summary,
    pub trace: Vec<String>,
}

fn key_bytes(key: usize) -> Vec<u8> {
    let mut stored = vec![0u8];
    stored.extend_from_slice(format!("counter-{key}").as_bytes());
    stored
}

fn initial_map() -> SimMap {
    let process = |node: usize| Process { node, incarnation: 1 };
    SimMap {
        epoch: 1,
        primary: std::array::from_fn(|group| Some(process(group % NODES))),
        backups: std::array::from_fn(|group| vec![process((group + 1) % NODES)]),
    }
}

impl World {
    pub fn new(options: &Options) -> World {
        let map = initial_map();
        let machines = (0..NODES)
            .map(|node| Machine {
                process: Some(Node::start(Process { node, incarnation: 1 }, map.clone(), options.bug)),
                incarnation: 1,
                paused: None,
            })
            .collect();
        let clients = (0..CLIENTS)
            .map(|_| Client {
                map: map.clone(),
                next_op_id: 1,
                next_req_id: 1,
                op: None,
            })
            .collect();
        let mut world = World {
            rng: Rng::new(options.seed),
            bug: options.bug,
            now: 0,
            queue: EventQueue::default(),
            control: Control::new(map, options.bug),
            machines,
            clients,
            histories: (0..KEYS).map(|_| History::default()).collect(),
            cut: Cut::None,
            summary: Summary::default(),
            trace: Vec::new(),
        };
        for node in 0..NODES {
            let process = Process { node, incarnation: 1 };
            world.schedule(0, Event::Heartbeat(process));
            world.schedule(RESEND_MS, Event::Resend(process));
        }
        world.schedule(0, Event::ControlTick);
        for client in 0..CLIENTS {
            world.schedule(HEARTBEAT_MS * 3, Event::ClientNext(client));
        }
        let first_fault = world.rng.between(1_000, 2_000);
        world.schedule(first_fault, Event::Fault);
        let first_hand_over = world.rng.between(500, 1_500);
        world.schedule(first_hand_over, Event::HandOver);
        world
    }

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.queue.schedule(after_ms, event);
    }

    pub fn run(mut self) -> (Result<Summary, Failure>, Vec<String>) {
        let outcome = self.run_events();
        (outcome, self.trace)
    }

    fn run_events(&mut self) -> Result<Summary, Failure> {
        while let Some(event) = self.queue.pop() {
            self.now = self.queue.now_ms();
            if self.now > RUN_MS_MAX {
                return Err(self.failure("settles", "the run did not settle".into()));
            }
            self.handle(event);
            self.check_one_primary()?;
            if !self.control.lost_groups.is_empty() {
                return Err(self.failure("no group lost", format!("{:?}", self.control.lost_groups)));
            }
            if self.done() {
                return self.check_end();
            }
        }
        Err(self.failure("settles", "nothing left to do before the end".into()))
    }

    fn failure(&self, invariant: &'static str, detail: String) -> Failure {
        Failure {
            invariant,
            time_ms: self.now,
            detail,
        }
    }

    fn done(&self) -> bool {
        self.now > CLIENTS_END_MS + SETTLE_MS && self.clients.iter().all(|client| client.op.is_none())
    }

    fn handle(&mut self, event: Event) {
        let paused_node = match &event {
            Event::Deliver(message) => match message.to {
                Endpoint::Node(node) => Some(node),
                _ => None,
            },
            Event::Heartbeat(process) | Event::Resend(process) => Some(process.node),
            _ => None,
        };
        if let Some(deferred) = paused_node.and_then(|node| self.machines[node].paused.as_mut()) {
            deferred.push(event);
            return;
        }
        let mut out = Vec::new();
        match event {
            Event::Deliver(message) => self.deliver(*message, &mut out),
            Event::Heartbeat(process) => {
                let now = self.now;
                if let Some(node) = self.process(process) {
                    out.push(node.heartbeat(now));
                    self.schedule(HEARTBEAT_MS, Event::Heartbeat(process));
                }
            }
            Event::Resend(process) => {
                if let Some(node) = self.process(process) {
                    node.resend(&mut out);
                    self.schedule(RESEND_MS, Event::Resend(process));
                }
            }
            Event::ControlTick => {
                self.control.tick(self.now, &mut self.trace);
                if self.now <= CLIENTS_END_MS + SETTLE_MS {
                    self.schedule(CONTROL_TICK_MS, Event::ControlTick);
                }
            }
            Event::ClientNext(client) => self.start_operation(client, &mut out),
            Event::ClientTimeout(client, req_id) => self.client_timeout(client, req_id, &mut out),
            Event::Fault => self.fault(),
            Event::HandOver => self.hand_over(&mut out),
            Event::Restart(node) => self.restart(node),
            Event::Resume(node) => self.resume(node),
            Event::Heal => {
                self.trace.push(format!("{}: heal {:?}", self.now, self.cut));
                self.cut = Cut::None;
            }
        }
        for message in out {
            self.send(message);
        }
    }

    fn process(&mut self, process: Process) -> Option<&mut Node> {
        self.machines[process.node]
            .process
            .as_mut()
            .filter(|node| node.me == process)
    }

    fn faulty_network(&self) -> bool {
        self.now < FAULTS_END_MS
    }

    fn cut_off(&self, from: Endpoint, to: Endpoint) -> bool {
        let pair = |a: Endpoint, b: Endpoint| [(a, b), (b, a)].contains(&(from, to));
        match self.cut {
            Cut::None => false,
            Cut::FromControl(node) => pair(Endpoint::Node(node), Endpoint::Control),
            Cut::FromNodes(node) => {
                (0..NODES).any(|other| other != node && pair(Endpoint::Node(node), Endpoint::Node(other)))
            }
        }
    }

    fn send(&mut self, message: Message) {
        if self.cut_off(message.from, message.to) {
            return;
        }
        let copies = if !self.faulty_network() {
            1
        } else if self.rng.chance(DROP_PER_MILLE) {
            0
        } else if self.rng.chance(DUPLICATE_PER_MILLE) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.between(1, DELAY_MS_MAX);
            self.schedule(delay, Event::Deliver(Box::new(message.clone())));
        }
    }

    fn deliver(&mut self, message: Message, out: &mut Vec<Message>) {
        if self.cut_off(message.from, message.to) {
            return;
        }
        let Message { from, to, body } = message;
        match to {
            Endpoint::Control => self.control.receive(self.now, from, body, out, &mut self.trace),
            Endpoint::Node(node) => {
                let now = self.now;
                if let Some(process) = self.machines[node].process.as_mut() {
                    process.receive(now, from, body, out, &mut self.trace);
                }
            }
            Endpoint::Client(client) => self.client_receive(client, body, out),
        }
    }

    // ---- clients ----

    fn start_operation(&mut self, client: usize, out: &mut Vec<Message>) {
        if self.now > CLIENTS_END_MS {
            return;
        }
        let key = self.rng.below(KEYS as u64) as usize;
        let read = self.rng.chance(300);
        let state = &mut self.clients[client];
        let op_id = if read { 0 } else { state.next_op_id };
        if !read {
            state.next_op_id += 1;
        }
        state.op = Some(Op {
            op_id,
            key,
            read,
            invoked_at: self.now,
            req_id: 0,
            attempts: Vec::new(),
        });
        self.attempt(client, out);
    }

    /// Sends the client's operation (again, with the same operation id) to the primary
    /// its map names.
    fn attempt(&mut self, client: usize, out: &mut Vec<Message>) {
        let state = &mut self.clients[client];
        let Some(op) = &mut state.op else { return };
        op.req_id = state.next_req_id;
        op.attempts.push(op.req_id);
        state.next_req_id += 1;
        let key = key_bytes(op.key);
        let slot = slot_of_stored_key(&key).expect("a stored key");
        let command = if op.read {
            DataCommand::from(CounterCommand::Get { key })
        } else {
            DataCommand::from(CounterCommand::Add { key, delta: 1 })
        };
        let request = DataRequest {
            op_id: op.op_id,
            // Operations run one at a time, so every earlier one was answered.
            completed_below_op_id: if op.read { 0 } else { op.op_id },
            command,
        };
        let req_id = op.req_id;
        if let Some(primary) = state.map.primary_of_slot(slot) {
            out.push(Message {
                from: Endpoint::Client(client),
                to: Endpoint::Node(primary.node),
                body: Body::Request { req_id, request },
            });
        }
        self.schedule(CLIENT_TIMEOUT_MS, Event::ClientTimeout(client, req_id));
    }

    /// Not served where the map said: ask for a newer map and retry shortly.
    fn refresh_and_retry(&mut self, client: usize, req_id: u64, out: &mut Vec<Message>) {
        out.push(Message {
            from: Endpoint::Client(client),
            to: Endpoint::Control,
            body: Body::GetMap,
        });
        self.schedule(CLIENT_RETRY_MS, Event::ClientTimeout(client, req_id));
    }

    fn client_timeout(&mut self, client: usize, req_id: u64, out: &mut Vec<Message>) {
        let current = self.clients[client].op.as_ref().map(|op| op.req_id);
        if current == Some(req_id) {
            out.push(Message {
                from: Endpoint::Client(client),
                to: Endpoint::Control,
                body: Body::GetMap,
            });
            self.attempt(client, out);
        }
    }

    fn client_receive(&mut self, client: usize, body: Body, out: &mut Vec<Message>) {
        match body {
            Body::Map(map) if map.epoch > self.clients[client].map.epoch => self.clients[client].map = map,
            Body::Reply { req_id, response } => {
                let Some(op) = self.clients[client].op.as_ref() else {
                    return;
                };
                let current = op.req_id == req_id;
                match response {
                    None if current => self.refresh_and_retry(client, req_id, out),
                    Some(response) if op.attempts.contains(&req_id) => self.complete(client, response),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn complete(&mut self, client: usize, response: Response) {
        let Some(op) = self.clients[client].op.take() else {
            return;
        };
        let Response::Counter { value } = response else {
            self.trace
                .push(format!("{}: client {client} got {response:?}", self.now));
            self.histories[op.key].unknown.push(op.invoked_at);
            return;
        };
        let entry = (value, op.invoked_at, self.now);
        if op.read {
            self.histories[op.key].reads.push(entry);
            self.summary.reads += 1;
        } else {
            self.histories[op.key].increments.push(entry);
            self.summary.increments += 1;
        }
        let think = self.rng.between(1, 10);
        self.schedule(think, Event::ClientNext(client));
    }

    // ---- faults ----

    fn fault(&mut self) {
        if self.now >= FAULTS_END_MS {
            return;
        }
        let next = self.rng.between(300, 1_500);
        self.schedule(next, Event::Fault);
        // One fault at a time: the last one is over, as the control plane sees it too.
        let quiet = self.cut == Cut::None
            && self.machines.iter().all(|machine| {
                machine.paused.is_none() && machine.process.as_ref().is_some_and(|node| self.control.knows(node.me))
            });
        if !quiet || !self.control.healthy(self.now) {
            return;
        }
        let node = self.rng.below(NODES as u64) as usize;
        match self.rng.below(10) {
            0..=2 => {
                self.trace.push(format!("{}: crash node {node}", self.now));
                self.machines[node].process = None;
                self.summary.crashes += 1;
                let down = self.rng.between(200, 2_000);
                self.schedule(down, Event::Restart(node));
            }
            3..=5 => {
                let length = self.rng.between(100, 2_500);
                self.trace
                    .push(format!("{}: pause node {node} for {length} ms", self.now));
                self.machines[node].paused = Some(Vec::new());
                self.summary.pauses += 1;
                self.schedule(length, Event::Resume(node));
            }
            6..=7 => {
                let length = self.rng.between(300, 2_500);
                self.trace.push(format!(
                    "{}: cut node {node} off the control plane for {length} ms",
                    self.now
                ));
                self.cut = Cut::FromControl(node);
                self.summary.partitions += 1;
                self.schedule(length, Event::Heal);
            }
            _ => {
                let length = self.rng.between(300, 2_000);
                self.trace.push(format!(
                    "{}: cut node {node} off the other nodes for {length} ms",
                    self.now
                ));
                self.cut = Cut::FromNodes(node);
                self.summary.partitions += 1;
                self.schedule(length, Event::Heal);
            }
        }
    }

    /// Asks the control plane to hand a group over, now and then while faults run.
    fn hand_over(&mut self, out: &mut Vec<Message>) {
        if self.now >= FAULTS_END_MS {
            return;
        }
        let next = self.rng.between(200, 1_000);
        self.schedule(next, Event::HandOver);
        let group = self.rng.below(GROUPS as u64) as usize;
        out.extend(self.control.start_hand_over(group, self.now, &mut self.trace));
    }

    fn restart(&mut self, node: usize) {
        let machine = &mut self.machines[node];
        machine.incarnation += 1;
        let process = Process {
            node,
            incarnation: machine.incarnation,
        };
        self.trace.push(format!("{}: restart {process:?}", self.now));
        let empty = SimMap {
            epoch: 0,
            primary: [None; GROUPS],
            backups: std::array::from_fn(|_| Vec::new()),
        };
        machine.process = Some(Node::start(process, empty, self.bug));
        self.schedule(0, Event::Heartbeat(process));
        self.schedule(RESEND_MS, Event::Resend(process));
    }

    fn resume(&mut self, node: usize) {
        self.trace.push(format!("{}: resume node {node}", self.now));
        let deferred = self.machines[node].paused.take().unwrap_or_default();
        for event in deferred {
            self.schedule(0, event);
        }
    }

    // ---- checks ----

    /// At most one running process serves each group.
    fn check_one_primary(&self) -> Result<(), Failure> {
        for group in 0..GROUPS {
            let serving: Vec<Process> = self
                .machines
                .iter()
                .filter(|machine| machine.paused.is_none())
                .filter_map(|machine| machine.process.as_ref())
                .filter(|node| node.serving(group, self.now))
                .map(|node| node.me)
                .collect();
            if serving.len() > 1 {
                return Err(self.failure("one primary per group", format!("group {group}: {serving:?}")));
            }
        }
        Ok(())
    }

    fn check_end(&mut self) -> Result<Summary, Failure> {
        if !self.control.lost_groups.is_empty() {
            return Err(self.failure("no group lost", format!("{:?}", self.control.lost_groups)));
        }
        let finals = self.final_values()?;
        for (key, history) in self.histories.iter().enumerate() {
            let final_value = finals[key];
            check_history(key, history, final_value).map_err(|detail| self.failure("counter history", detail))?;
        }
        self.summary.failovers = self.control.failovers;
        self.summary.repairs = self.control.repairs_done;
        self.summary.hand_overs = self.control.hand_overs_done;
        Ok(self.summary.clone())
    }

    /// Each counter as its group's primary holds it now.
    fn final_values(&mut self) -> Result<Vec<i64>, Failure> {
        let map = self.control.map.clone();
        let mut values = Vec::new();
        for key in 0..KEYS {
            let stored = key_bytes(key);
            let group = group_of_slot(slot_of_stored_key(&stored).expect("a stored key"));
            let primary = map.primary[group].ok_or_else(|| self.failure("no group lost", format!("group {group}")))?;
            let now = self.now;
            let Some(node) = self.process(primary) else {
                return Err(self.failure(
                    "settles",
                    format!("primary {primary:?} of group {group} is not running"),
                ));
            };
            let read = DataRequest {
                op_id: 0,
                completed_below_op_id: 0,
                command: DataCommand::from(CounterCommand::Get { key: stored }),
            };
            match node.store.apply(0, &read, now) {
                Outcome::Ready(Response::Counter { value }) => values.push(value),
                other => return Err(self.failure("counter history", format!("final read got {other:?}"))),
            }
        }
        Ok(values)
    }
}

/// A counter's history against its final value.
fn check_history(key: usize, history: &History, final_value: i64) -> Result<(), String> {
    let acked = history.increments.len() as i64;
    let unknown = history.unknown.len() as i64;
    if final_value < acked || final_value > acked + unknown {
        return Err(format!(
            "counter {key} holds {final_value}: {acked} increments acknowledged, {unknown} unknown"
        ));
    }
    let mut values: Vec<i64> = history.increments.iter().map(|(value, _, _)| *value).collect();
    values.sort_unstable();
    if let Some(pair) = values.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("counter {key}: two increments returned {}", pair[0]));
    }
    let invoked: Vec<u64> = history
        .increments
        .iter()
        .map(|(_, invoked, _)| *invoked)
        .chain(history.unknown.iter().copied())
        .collect();
    for &(value, invoked_at, done_at) in history.increments.iter().chain(&history.reads) {
        let floor = history
            .increments
            .iter()
            .filter(|(_, _, done)| *done < invoked_at)
            .map(|(value, _, _)| *value)
            .max()
            .unwrap_or(0);
        let ceiling = invoked.iter().filter(|invoked| **invoked <= done_at).count() as i64;
        if value < floor || value > ceiling {
            return Err(format!(
                "counter {key}: an operation over {invoked_at}..{done_at} saw {value}, \
                 outside {floor}..={ceiling} (acknowledged before it began .. invoked before it ended)"
            ));
        }
    }
    if values.last().is_some_and(|max| *max > final_value) {
        return Err(format!(
            "counter {key}: an increment returned more than the final {final_value}"
        ));
    }
    Ok(())
}
