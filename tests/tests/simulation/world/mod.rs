//! The world: a discrete-event simulation of one control plane, three nodes and three
//! clients over a network that drops, delays (and so reorders) and duplicates messages,
//! with node crashes and pauses, control-plane crashes and state-file faults, all drawn
//! from one seed. Virtual time only; nothing reads a clock or the OS's randomness.
//!
//! After every step it checks that at most one shard serves each slot the clients use,
//! that a shard serving a slot is the slot's owner in the persisted map (or its last
//! owner, while the slot is lost), that map epochs only grow at each node process, and
//! that no two acknowledged increments of a counter saw the same value. Once the faults
//! stop and the clients are done it checks that every counter equals its acknowledged
//! increments (plus at most those given up on `SlotLost`), unless its slot is lost.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::client::{self, Client};
use crate::control::{Control, Disk, Io};
use crate::net::{describe, Action, Body, Endpoint, Message, Reply, Timer};
use crate::node::{Caller, Node, NAMESPACE};
use crate::rng::Rng;
use crate::Bug;
use checks::Ledger;

mod checks;
mod faults;

const NODES: usize = 3;
const CLIENTS: usize = 3;
/// Faults happen before this; after it the network is reliable and every process up.
const FAULTS_END_MS: u64 = 6_500;
/// Clients start no operation after this.
const CLIENTS_END_MS: u64 = 7_500;
/// How long the cluster runs calm after the last client finished, before the end checks.
const SETTLE_MS: u64 = 2_500;
/// A run that has not settled by then is stuck.
const RUN_MS_MAX: u64 = 60_000;
/// Slots per migration step: larger than `engram-control`'s, so a rebalance of 16,384
/// slots takes a handful of steps rather than a hundred.
const SLOTS_PER_STEP: usize = 2_048;
/// How long the control plane waits for a source's `MigrationPrepared`: `engram-control`
/// waits two minutes for a copy of any size; a step here copies a dozen keys, and a
/// wait longer than the run would leave a lost `MigrateOut` unsettled. Above
/// `MIGRATION_PEER_TIMEOUT_MS`, so a source that cannot reach its target says so first.
const MIGRATE_OUT_TIMEOUT_MS: u64 = 8_000;

/// FNV-1a's starting value, the digest of an empty trace.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

pub struct Options {
    pub seed: u64,
    pub bug: Option<Bug>,
    /// Keep every trace line (for printing), not only their digest.
    pub trace: bool,
}

/// The first invariant a run broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub invariant: &'static str,
    pub step: u64,
    pub time_ms: u64,
    pub detail: String,
    /// FNV-1a of the trace up to the failure.
    pub digest: u64,
}

/// What a run did, for the report of a batch of seeds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub steps: u64,
    pub time_ms: u64,
    pub acked: u64,
    pub unknown: u64,
    pub commits: u64,
    pub aborts: u64,
    pub node_crashes: u64,
    pub node_pauses: u64,
    pub control_crashes: u64,
    pub lost_keys: u64,
    pub digest: u64,
}

#[derive(Debug, Clone)]
enum Fault {
    StartControl,
    CrashControl,
    StartNode(usize),
    CrashNode(usize),
    PauseNode(usize, u64),
    ResumeNode(usize),
    Rebalance,
    Drain(usize),
    Calm,
    StopClients,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver(Message),
    Timer {
        at: Endpoint,
        generation: u64,
        timer: Timer,
    },
    Fault(Fault),
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Per mille of messages dropped, duplicated, and held back long (which reorders), and
/// of migration messages after which their receiver crashes (a target holding part of a
/// copy, a source that just froze its slots: the moments a crash hurts most).
struct NetworkFaults {
    drop: u64,
    duplicate: u64,
    long_delay: u64,
    crash_in_migration: u64,
}

/// Crashes at chosen moments one run takes at most: each loses slots for good.
const CHOSEN_CRASHES_MAX: u64 = 1;

struct NodeSlot {
    process: Option<Node>,
    generation: u64,
    shard_count: u16,
    paused: bool,
    /// Events that reached the node while it was paused, in order.
    deferred: Vec<Event>,
    last_epoch: u64,
}

pub struct World {
    seed: u64,
    bug: Option<Bug>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    rng: Rng,
    network: NetworkFaults,
    calm: bool,
    control: Option<Control>,
    control_generation: u64,
    disk: Disk,
    nodes: Vec<NodeSlot>,
    clients: Vec<Client>,
    keys: Vec<(Vec<u8>, u32)>,
    ledger: Vec<Ledger>,
    chosen_crashes: u64,
    /// Since when the clients are done and the control plane idle.
    quiet_since: Option<u64>,
    step: u64,
    trace: Option<Vec<String>>,
    summary: Summary,
}

impl World {
    pub fn new(options: &Options) -> World {
        let mut rng = Rng::new(options.seed);
        let keys = client::keys(&mut rng, NAMESPACE);
        let pick = |rng: &mut Rng, choices: &[u64]| choices[rng.below(choices.len() as u64) as usize];
        let network = NetworkFaults {
            drop: pick(&mut rng, &[0, 5, 20, 60]),
            duplicate: pick(&mut rng, &[0, 5, 20]),
            long_delay: pick(&mut rng, &[0, 20, 80, 200]),
            crash_in_migration: pick(&mut rng, &[0, 0, 100, 300]),
        };
        let disk = Disk {
            fail_per_mille: pick(&mut rng, &[0, 0, 20]),
            crash_per_mille: pick(&mut rng, &[0, 0, 10, 30]),
            watched: keys.iter().map(|(_, slot)| *slot).collect(),
            ..Disk::default()
        };
        let nodes = (0..NODES)
            .map(|_| NodeSlot {
                process: None,
                generation: 0,
                shard_count: 1 + rng.below(2) as u16,
                paused: false,
                deferred: Vec::new(),
                last_epoch: 0,
            })
            .collect();
        let clients = (0..CLIENTS)
            .map(|index| Client::new(1000 + index as u64, keys.clone(), NODES))
            .collect();
        World {
            seed: options.seed,
            bug: options.bug,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            network,
            calm: false,
            control: None,
            control_generation: 0,
            disk,
            nodes,
            clients,
            ledger: keys.iter().map(|_| Ledger::default()).collect(),
            keys,
            quiet_since: None,
            chosen_crashes: 0,
            step: 0,
            trace: options.trace.then(Vec::new),
            summary: Summary {
                digest: FNV_OFFSET_BASIS,
                ..Summary::default()
            },
        }
    }

    /// Runs the seed's scenario to its end; the first invariant broken, if any.
    pub fn run(mut self) -> (Result<Summary, Failure>, Vec<String>) {
        self.schedule_scenario();
        let outcome = self.run_events().and_then(|()| self.check_settled());
        self.summary.steps = self.step;
        self.summary.time_ms = self.now;
        let trace = self.trace.take().unwrap_or_default();
        (outcome.map(|()| self.summary.clone()), trace)
    }

    fn run_events(&mut self) -> Result<(), Failure> {
        while let Some(Reverse(scheduled)) = self.queue.pop() {
            self.now = scheduled.at;
            self.step += 1;
            // A client changes no node's state nor the state file: nothing to check after it.
            let client = Self::is_client_event(&scheduled.event);
            self.dispatch(scheduled.event)?;
            if !client {
                self.check_step()?;
            }
            if self.settled() {
                return Ok(());
            }
            if self.now > RUN_MS_MAX {
                return Err(self.failure("the cluster settles", "still busy at the end of the run".into()));
            }
        }
        Err(self.failure("the cluster settles", "nothing left to happen".into()))
    }

    /// Whether the clients are done and the control plane idle, for `SETTLE_MS` now.
    fn settled(&mut self) -> bool {
        let idle = self
            .control
            .as_ref()
            .is_some_and(|control| !control.orchestrator.is_busy());
        if self.now < CLIENTS_END_MS || !idle || !self.clients.iter().all(Client::is_done) {
            self.quiet_since = None;
            return false;
        }
        let since = *self.quiet_since.get_or_insert(self.now);
        self.now >= since + SETTLE_MS
    }

    fn failure(&self, invariant: &'static str, detail: String) -> Failure {
        Failure {
            seed: self.seed,
            invariant,
            step: self.step,
            time_ms: self.now,
            detail,
            digest: self.summary.digest,
        }
    }

    fn trace(&mut self, line: String) {
        // FNV-1a: stable across builds and platforms, unlike the std hasher.
        let mut digest = self.summary.digest;
        for byte in line.bytes().chain([b'\n']) {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.summary.digest = digest;
        if let Some(trace) = &mut self.trace {
            trace.push(line);
        }
    }

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        let scheduled = Scheduled {
            at: self.now + after_ms,
            seq: self.seq,
            event,
        };
        self.queue.push(Reverse(scheduled));
    }

    fn generation_of(&self, endpoint: Endpoint) -> Option<u64> {
        match endpoint {
            Endpoint::Control => self.control.as_ref().map(|control| control.generation),
            Endpoint::Front(node) => self.nodes[node].process.as_ref().map(|process| process.generation),
            Endpoint::Shard(node, shard) => self.nodes[node]
                .process
                .as_ref()
                .filter(|process| (shard as usize) < process.shards.len())
                .map(|process| process.generation),
            Endpoint::Client(_) => Some(1),
        }
    }

    /// Performs what a process asked for.
    fn apply(&mut self, from: Endpoint, from_generation: u64, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Call { to, call, request } => {
                    let Some(to_generation) = self.generation_of(to) else {
                        self.refuse(from, from_generation, to, call, "connection refused");
                        continue;
                    };
                    self.send(Message {
                        from,
                        from_generation,
                        to,
                        to_generation,
                        call,
                        body: Body::Request(request),
                    });
                }
                Action::Answer {
                    to,
                    to_generation,
                    call,
                    reply,
                } => self.send(Message {
                    from,
                    from_generation,
                    to,
                    to_generation,
                    call,
                    body: Body::Reply(reply),
                }),
                Action::Timer { after_ms, timer } => {
                    let event = Event::Timer {
                        at: from,
                        generation: from_generation,
                        timer,
                    };
                    self.schedule(after_ms, event);
                }
                Action::Trace(line) => self.trace(format!("  {line}")),
            }
        }
    }

    /// Tells a caller its link failed (refused, or broken by a crash): local, so reliable.
    fn refuse(&mut self, caller: Endpoint, generation: u64, callee: Endpoint, call: u64, reason: &str) {
        let message = Message {
            from: callee,
            from_generation: 0,
            to: caller,
            to_generation: generation,
            call,
            body: Body::Reply(Reply::LinkError(format!("{callee}: {reason}"))),
        };
        let after_ms = self.rng.between(1, 3);
        self.schedule(after_ms, Event::Deliver(message));
    }

    /// Puts a message on the network: dropped, delayed, or delivered twice.
    fn send(&mut self, message: Message) {
        if !self.calm && self.rng.chance(self.network.drop) {
            self.trace(format!(
                "  dropped {}->{} {}",
                message.from,
                message.to,
                describe(&message.body)
            ));
            return;
        }
        let copies = if !self.calm && self.rng.chance(self.network.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let long = !self.calm && self.rng.chance(self.network.long_delay);
            let after_ms = if long {
                self.rng.between(50, 1_500)
            } else {
                self.rng.between(1, 4)
            };
            self.schedule(after_ms, Event::Deliver(message.clone()));
        }
    }

    fn is_client_event(event: &Event) -> bool {
        match event {
            Event::Deliver(message) => matches!(message.to, Endpoint::Client(_)),
            Event::Timer { at, .. } => matches!(at, Endpoint::Client(_)),
            Event::Fault(_) => false,
        }
    }

    /// The node an event is for, if any.
    fn node_of(event: &Event) -> Option<usize> {
        let endpoint = match event {
            Event::Deliver(message) => message.to,
            Event::Timer { at, .. } => *at,
            Event::Fault(_) => return None,
        };
        match endpoint {
            Endpoint::Front(node) | Endpoint::Shard(node, _) => Some(node),
            _ => None,
        }
    }

    /// Whether `event` waits at its node: a paused node runs nothing, and a node that
    /// has not joined yet has its ports bound but its shards not started, so requests
    /// wait in the kernel's queues.
    fn waits(&self, node: usize, event: &Event) -> bool {
        let slot = &self.nodes[node];
        let joined = slot.process.as_ref().is_some_and(|process| process.routing.is_some());
        let request = matches!(
            event,
            Event::Deliver(Message {
                body: Body::Request(_),
                ..
            })
        );
        slot.paused || (request && !joined)
    }

    fn dispatch(&mut self, event: Event) -> Result<(), Failure> {
        let node = Self::node_of(&event);
        if let Some(node) = node {
            if self.waits(node, &event) {
                self.nodes[node].deferred.push(event);
                return Ok(());
            }
        }
        let outcome = self.dispatch_now(event);
        if let Some(node) = node {
            self.release(node);
        }
        outcome
    }

    fn dispatch_now(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Deliver(message) => self.deliver(message),
            Event::Timer { at, generation, timer } => self.fire(at, generation, timer),
            Event::Fault(fault) => {
                self.trace(format!("{} t={} fault {fault:?}", self.step, self.now));
                self.fault(fault);
                Ok(())
            }
        }
    }

    fn deliver(&mut self, message: Message) -> Result<(), Failure> {
        let Message {
            from,
            from_generation,
            to,
            to_generation,
            call,
            body,
        } = message;
        if self.generation_of(to) != Some(to_generation) {
            if matches!(body, Body::Request(_)) {
                self.refuse(from, from_generation, to, call, "connection broke");
            }
            return Ok(());
        }
        self.trace(format!("{} t={} {from}->{to} {}", self.step, self.now, describe(&body)));
        self.maybe_crash_in_migration(to, &body);
        match (to, body) {
            (Endpoint::Control, Body::Request(request)) => {
                let reply = self.with_control(|control, io| control.request(request, io));
                if let Some(reply) = reply {
                    let answer = Action::Answer {
                        to: from,
                        to_generation: from_generation,
                        call,
                        reply,
                    };
                    self.apply(Endpoint::Control, to_generation, vec![answer]);
                }
            }
            (Endpoint::Control, Body::Reply(reply)) => {
                self.with_control(|control, io| control.answered(call, reply, io));
            }
            (Endpoint::Front(node) | Endpoint::Shard(node, _), body) => {
                let now = self.now;
                let Some(process) = self.nodes[node].process.as_mut() else {
                    return Ok(());
                };
                let actions = match body {
                    Body::Request(request) => {
                        let caller = Caller {
                            endpoint: from,
                            generation: from_generation,
                            call,
                        };
                        process.request(to, caller, request, now)
                    }
                    Body::Reply(reply) => process.answered(call, reply, now),
                };
                self.apply(Endpoint::Front(node), to_generation, actions);
            }
            (Endpoint::Client(client), Body::Reply(reply)) => {
                let actions = self.clients[client].answered(call, reply, &mut self.rng);
                self.apply(Endpoint::Client(client), 1, actions);
                return self.learn(client);
            }
            (Endpoint::Client(_), Body::Request(_)) => {}
        }
        Ok(())
    }

    /// Runs `handle` on the control plane with the world's disk; a state-file write the
    /// process did not survive kills it on the spot, its other effects undone.
    fn with_control<T>(&mut self, handle: impl FnOnce(&mut Control, &mut Io) -> T) -> Option<T> {
        let control = self.control.as_mut()?;
        let generation = control.generation;
        let mut io = Io::new(self.now, &mut self.disk, &mut self.rng);
        let value = handle(control, &mut io);
        let actions = io.actions;
        self.summary.commits += io.committed;
        self.summary.aborts += io.aborted;
        if self.disk.crashed {
            self.disk.crashed = false;
            self.trace("  cp died right after a state-file write".into());
            self.crash_control();
            return None;
        }
        self.apply(Endpoint::Control, generation, actions);
        Some(value)
    }

    fn fire(&mut self, at: Endpoint, generation: u64, timer: Timer) -> Result<(), Failure> {
        if self.generation_of(at) != Some(generation) {
            return Ok(());
        }
        match at {
            Endpoint::Control => {
                self.with_control(|control, io| control.timer(timer, io));
            }
            Endpoint::Front(node) | Endpoint::Shard(node, _) => {
                let now = self.now;
                if let Some(process) = self.nodes[node].process.as_mut() {
                    let actions = process.timer(timer, now);
                    self.apply(Endpoint::Front(node), generation, actions);
                }
            }
            Endpoint::Client(client) => {
                let actions = self.clients[client].timer(timer, &mut self.rng);
                self.apply(at, 1, actions);
                return self.learn(client);
            }
        }
        Ok(())
    }
}
