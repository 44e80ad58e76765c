//! The world: three control-plane processes, each running the real [`Leadership`] state
//! machine with a driver that does what `election.rs` and the controller's saves do, and
//! the etcd model, over a network that drops, delays and so reorders messages, while
//! processes pause (their clocks jump) and crash (and restart as new processes). Virtual
//! time only; everything random comes from the seed.
//!
//! Checks: every state write etcd accepted came from the process whose lease held the
//! leader key at that revision, and accepted epochs strictly increase (both in the etcd
//! model); after every event, at most one process believes it leads within its own lease
//! bound; once the faults stop, some process leads, holds the key, and writes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use engram_control::leadership::{
    Campaign, Candidate, Holder, Input, Leadership, Output, ETCD_CALL_TIMEOUT_MS, LEASE_TTL_MS,
};
use engram_control::state::etcd::SAVE_TIMEOUT_MS;

use crate::etcd::{Etcd, Owner};
use crate::rng::Rng;
use crate::Bug;

const PROCESSES: usize = 3;
/// How often a process feeds the time to its machine (as `election.rs` does).
const TICK_MS: u64 = 100;
/// Faults happen before this; after it the network is reliable and nothing pauses or
/// crashes (processes paused or down come back by their own schedule).
const FAULTS_END_MS: u64 = 60_000;
/// The run ends here; by then a leader must have been writing for a while.
const RUN_MS: u64 = FAULTS_END_MS + 30_000;
/// After the faults stop, a leader must have written by then (the longest pause, a
/// lapsed lease and a campaign fit in it).
const CALM_LEADER_MS: u64 = FAULTS_END_MS + 25_000;

pub struct Options {
    pub seed: u64,
    pub bug: Option<Bug>,
    pub trace: bool,
}

/// The first invariant a run broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub invariant: String,
    pub at_ms: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub accepted: u64,
    pub refused: u64,
    /// Writes a process tried right after a pause, before its first tick.
    pub writes_after_pause: u64,
    pub terms: u64,
    pub pauses: u64,
    pub crashes: u64,
    pub messages_lost: u64,
}

/// What a process asked etcd.
#[derive(Debug, Clone)]
enum Request {
    Campaign(Candidate),
    KeepAlive(i64),
    ReadLeader,
    ReadState,
    Write {
        state_revision: i64,
        key_revision: Option<i64>,
        epoch: u64,
    },
    Revoke(i64),
}

#[derive(Debug, Clone)]
enum Reply {
    Campaigned(Campaign),
    KeptAlive(bool),
    Leader { holder: Option<Holder>, revision: i64 },
    State { epoch: u64, revision: i64 },
    Written(Option<i64>),
    Revoked,
}

/// What each call of a process was, to feed its answer back.
#[derive(Debug, Clone, Copy)]
enum Call {
    Campaign(u64),
    KeepAlive(u64),
    ReadLeader,
    ReadState(i64),
    Write(u64),
    Revoke,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(Owner),
    ToEtcd {
        from: Owner,
        call: u64,
        request: Request,
    },
    ToProcess {
        to: Owner,
        call: Option<u64>,
        reply: Reply,
    },
    /// A read of the state or a write unanswered for its whole timeout.
    CallTimeout(Owner, u64),
    Resume(Owner),
    Restart(usize),
}

/// The leader's copy of the state: what it writes from.
#[derive(Debug, Clone, Copy)]
struct Copy {
    epoch: u64,
    state_revision: i64,
    key_revision: i64,
}

struct Process {
    generation: u64,
    alive: bool,
    paused: bool,
    /// Its monotonic clock is the world's time plus this.
    offset: u64,
    machine: Leadership,
    next_call: u64,
    calls: BTreeMap<u64, Call>,
    copy: Option<Copy>,
    writing: bool,
    /// What reached it while paused, handled once it runs again.
    deferred: Vec<Event>,
}

pub struct World {
    seed: u64,
    bug: Option<Bug>,
    rng: Rng,
    now: u64,
    sequence: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    etcd: Etcd,
    processes: Vec<Process>,
    summary: Summary,
    trace: Option<Vec<String>>,
}

impl World {
    pub fn new(options: &Options) -> World {
        let mut world = World {
            seed: options.seed,
            bug: options.bug,
            rng: Rng::new(options.seed),
            now: 0,
            sequence: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            etcd: Etcd::default(),
            processes: Vec::new(),
            summary: Summary::default(),
            trace: options.trace.then(Vec::new),
        };
        for index in 0..PROCESSES {
            let process = world.new_process(index, 0);
            world.processes.push(process);
            let first_tick = world.rng.below(TICK_MS);
            world.schedule(first_tick, Event::Tick((index, 0)));
        }
        world
    }

    fn new_process(&mut self, index: usize, generation: u64) -> Process {
        let offset = self.rng.below(1_000_000);
        let candidate = Candidate {
            id: format!("p{index}g{generation}"),
            address: format!("p{index}"),
        };
        Process {
            generation,
            alive: true,
            paused: false,
            offset,
            machine: Leadership::new(candidate, self.now + offset),
            next_call: 0,
            calls: BTreeMap::new(),
            copy: None,
            writing: false,
            deferred: Vec::new(),
        }
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>7} {}", self.now, line()));
        }
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((self.now + after, self.sequence)));
        self.events.insert(self.sequence, event);
    }

    fn faulty(&self) -> bool {
        self.now < FAULTS_END_MS
    }

    /// Sends a message: lost, delayed a little, or (rarely) a lot, while faults last.
    fn send(&mut self, event: Event) {
        let faulty = self.faulty();
        if faulty && self.rng.chance(30) {
            self.summary.messages_lost += 1;
            return;
        }
        let delay = if faulty && self.rng.chance(30) {
            self.rng.between(100, 3_000)
        } else {
            self.rng.between(1, 20)
        };
        self.schedule(delay, event);
    }

    pub fn run(mut self) -> (Result<Summary, Failure>, Vec<String>) {
        let mut led_calm = false;
        while let Some(Reverse((at, sequence))) = self.queue.pop() {
            if at > RUN_MS {
                break;
            }
            self.now = at;
            let event = self.events.remove(&sequence).expect("a queued event");
            if self.etcd.expire(self.now) {
                self.note(|| "etcd: the leader's lease expired".into());
                self.watchers(None);
            }
            self.handle(event);
            if let Some(invariant) = self.etcd.violation.take().or_else(|| self.two_leaders()) {
                return self.fail(invariant);
            }
            led_calm |= self
                .etcd
                .accepted
                .last()
                .is_some_and(|write| write.at > FAULTS_END_MS + LEASE_TTL_MS);
            if self.now > CALM_LEADER_MS && !led_calm {
                return self.fail(format!(
                    "no write was accepted between {} ms (the faults stopped) plus a lease and {CALL} ms",
                    FAULTS_END_MS,
                    CALL = CALM_LEADER_MS
                ));
            }
        }
        self.summary.accepted = self.etcd.accepted.len() as u64;
        self.summary.refused = self.etcd.refused;
        let trace = self.trace.take().unwrap_or_default();
        (Ok(self.summary), trace)
    }

    fn fail(mut self, invariant: String) -> (Result<Summary, Failure>, Vec<String>) {
        let failure = Failure {
            seed: self.seed,
            invariant,
            at_ms: self.now,
        };
        let trace = self.trace.take().unwrap_or_default();
        (Err(failure), trace)
    }

    /// More than one process believing it leads within its own lease bound.
    fn two_leaders(&self) -> Option<String> {
        let believers: Vec<usize> = self
            .processes
            .iter()
            .enumerate()
            .filter(|(_, process)| process.alive)
            .filter(|(_, process)| {
                process
                    .machine
                    .lease_bound()
                    .is_some_and(|bound| self.now + process.offset < bound)
            })
            .map(|(index, _)| index)
            .collect();
        (believers.len() > 1)
            .then(|| format!("processes {believers:?} all believe they lead within their lease bounds"))
    }

    fn local_now(&self, index: usize) -> u64 {
        self.now + self.processes[index].offset
    }

    fn current(&self, owner: Owner) -> bool {
        let process = &self.processes[owner.0];
        process.alive && process.generation == owner.1
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ToEtcd { from, call, request } => self.etcd_handles(from, call, request),
            Event::Restart(index) => self.restart(index),
            Event::Resume(owner) => self.resume(owner),
            Event::Tick(owner) | Event::ToProcess { to: owner, .. } | Event::CallTimeout(owner, _)
                if !self.current(owner) => {}
            other => {
                let owner = match &other {
                    Event::Tick(owner) | Event::ToProcess { to: owner, .. } | Event::CallTimeout(owner, _) => *owner,
                    _ => unreachable!("handled above"),
                };
                if self.processes[owner.0].paused {
                    self.processes[owner.0].deferred.push(other);
                } else {
                    self.process_handles(owner, other);
                }
            }
        }
    }

    fn etcd_handles(&mut self, from: Owner, call: u64, request: Request) {
        let now = self.now;
        let reply = match request {
            Request::Campaign(candidate) => {
                let outcome = self.etcd.campaign(from, candidate, now);
                if let Campaign::Won { key_revision, .. } = outcome {
                    self.summary.terms += 1;
                    self.note(|| format!("etcd: {from:?} took the leader key at revision {key_revision}"));
                    self.watchers(self.etcd.holder());
                }
                Reply::Campaigned(outcome)
            }
            Request::KeepAlive(lease) => Reply::KeptAlive(self.etcd.keep_alive(lease, now)),
            Request::ReadLeader => Reply::Leader {
                holder: self.etcd.holder(),
                revision: self.etcd.revision(),
            },
            Request::ReadState => {
                let (epoch, revision) = self.etcd.state();
                Reply::State { epoch, revision }
            }
            Request::Write {
                state_revision,
                key_revision,
                epoch,
            } => {
                let written = self.etcd.write(from, state_revision, key_revision, epoch, now);
                self.note(|| format!("etcd: write of epoch {epoch} from {from:?}: {written:?}"));
                Reply::Written(written)
            }
            Request::Revoke(lease) => {
                if self.etcd.revoke(lease) {
                    self.note(|| format!("etcd: {from:?} revoked the leader's lease"));
                    self.watchers(None);
                }
                Reply::Revoked
            }
        };
        self.send(Event::ToProcess {
            to: from,
            call: Some(call),
            reply,
        });
    }

    /// Every running process watches the leader key.
    fn watchers(&mut self, holder: Option<Holder>) {
        let revision = self.etcd.revision();
        for index in 0..self.processes.len() {
            if self.processes[index].alive {
                let to = (index, self.processes[index].generation);
                let reply = Reply::Leader {
                    holder: holder.clone(),
                    revision,
                };
                self.send(Event::ToProcess { to, call: None, reply });
            }
        }
    }

    fn process_handles(&mut self, owner: Owner, event: Event) {
        let index = owner.0;
        match event {
            Event::Tick(_) => {
                self.feed(index, Input::Tick);
                self.maybe_write(index);
                self.maybe_fault(owner);
                if self.current(owner) && !self.processes[index].paused {
                    self.schedule(TICK_MS, Event::Tick(owner));
                } else if self.current(owner) {
                    self.processes[index].deferred.push(Event::Tick(owner));
                }
            }
            Event::ToProcess { call, reply, .. } => self.answered(index, call, reply),
            Event::CallTimeout(_, call) => {
                if self.processes[index].calls.remove(&call).is_some() {
                    // A read or write without an answer: the driver gives the
                    // leadership up (the write's outcome is unknown).
                    self.processes[index].writing = false;
                    self.processes[index].copy = None;
                    self.feed(index, Input::WriteRefused);
                }
            }
            _ => unreachable!("not an event of a process"),
        }
    }

    fn answered(&mut self, index: usize, call: Option<u64>, reply: Reply) {
        let Some(call) = call else {
            // A watch event.
            if let Reply::Leader { holder, revision } = reply {
                self.feed(index, Input::Observed { holder, revision });
            }
            return;
        };
        let Some(what) = self.processes[index].calls.remove(&call) else {
            return;
        };
        let input = match (what, reply) {
            (Call::Campaign(attempt), Reply::Campaigned(outcome)) => Some(Input::Campaigned { attempt, outcome }),
            (Call::KeepAlive(attempt), Reply::KeptAlive(alive)) => Some(Input::KeptAlive { attempt, alive }),
            (Call::ReadLeader, Reply::Leader { holder, revision }) => Some(Input::Observed { holder, revision }),
            (Call::ReadState(key_revision), Reply::State { epoch, revision }) => {
                let process = &mut self.processes[index];
                if process.machine.key_revision() == Some(key_revision) {
                    process.copy = Some(Copy {
                        epoch,
                        state_revision: revision,
                        key_revision,
                    });
                }
                None
            }
            (Call::Write(epoch), Reply::Written(written)) => {
                let process = &mut self.processes[index];
                process.writing = false;
                match (written, process.copy.as_mut()) {
                    (Some(revision), Some(copy)) => {
                        copy.epoch = epoch;
                        copy.state_revision = revision;
                        None
                    }
                    (Some(_), None) => None,
                    (None, _) => {
                        process.copy = None;
                        Some(Input::WriteRefused)
                    }
                }
            }
            (Call::Revoke, _) => None,
            (what, reply) => unreachable!("{what:?} answered with {reply:?}"),
        };
        if let Some(input) = input {
            self.feed(index, input);
        }
    }

    /// Feeds the machine and performs its outputs as `election.rs` does.
    fn feed(&mut self, index: usize, input: Input) {
        let local = self.local_now(index);
        let outputs = self.processes[index].machine.handle(input, local);
        for output in outputs {
            self.perform(index, output);
        }
    }

    fn call(&mut self, index: usize, what: Call, request: Request) -> u64 {
        let process = &mut self.processes[index];
        process.next_call += 1;
        let call = process.next_call;
        process.calls.insert(call, what);
        let from = (index, process.generation);
        self.send(Event::ToEtcd { from, call, request });
        call
    }

    fn perform(&mut self, index: usize, output: Output) {
        let owner = (index, self.processes[index].generation);
        match output {
            Output::Campaign { attempt } => {
                let candidate = self.processes[index].machine.me().clone();
                self.call(index, Call::Campaign(attempt), Request::Campaign(candidate));
            }
            Output::KeepAlive { attempt, lease } => {
                self.call(index, Call::KeepAlive(attempt), Request::KeepAlive(lease));
            }
            Output::Observe => {
                self.call(index, Call::ReadLeader, Request::ReadLeader);
            }
            Output::BecomeLeader { key_revision, .. } => {
                self.note(|| format!("{owner:?} leads from revision {key_revision}"));
                let call = self.call(index, Call::ReadState(key_revision), Request::ReadState);
                self.schedule(ETCD_CALL_TIMEOUT_MS, Event::CallTimeout(owner, call));
            }
            Output::StepDown { lease, reason } => {
                self.note(|| format!("{owner:?} steps down: {}", reason.describe()));
                self.processes[index].copy = None;
                self.call(index, Call::Revoke, Request::Revoke(lease));
            }
            Output::Revoke { lease } => {
                self.call(index, Call::Revoke, Request::Revoke(lease));
            }
            Output::Follow { .. } => {}
        }
    }

    /// A leader with its copy of the state writes now and then (a join, a commit).
    fn maybe_write(&mut self, index: usize) {
        if self.rng.chance(300) {
            self.write(index);
        }
    }

    fn write(&mut self, index: usize) {
        let process = &self.processes[index];
        let Some(copy) = process.copy else {
            return;
        };
        if !process.machine.is_leader() || process.writing {
            return;
        }
        let key_revision = match self.bug {
            Some(Bug::UnconditionedWrites) => None,
            None => Some(copy.key_revision),
        };
        let epoch = copy.epoch + 1;
        self.processes[index].writing = true;
        let request = Request::Write {
            state_revision: copy.state_revision,
            key_revision,
            epoch,
        };
        let call = self.call(index, Call::Write(epoch), request);
        let owner = (index, self.processes[index].generation);
        self.schedule(SAVE_TIMEOUT_MS, Event::CallTimeout(owner, call));
    }

    /// While faults last: a pause (the process's clock runs on, it does nothing) or a
    /// crash (it restarts later as a new process).
    fn maybe_fault(&mut self, owner: Owner) {
        if !self.faulty() {
            return;
        }
        if self.rng.chance(4) {
            let length = self.rng.between(500, 12_000);
            self.summary.pauses += 1;
            self.note(|| format!("{owner:?} pauses for {length} ms"));
            self.processes[owner.0].paused = true;
            self.schedule(length, Event::Resume(owner));
        } else if self.rng.chance(2) {
            self.summary.crashes += 1;
            self.note(|| format!("{owner:?} crashes"));
            self.processes[owner.0].alive = false;
            let after = self.rng.between(200, 5_000);
            self.schedule(after, Event::Restart(owner.0));
        }
    }

    fn restart(&mut self, index: usize) {
        let generation = self.processes[index].generation + 1;
        let process = self.new_process(index, generation);
        self.processes[index] = process;
        self.note(|| format!("p{index} restarts as generation {generation}"));
        self.schedule(0, Event::Tick((index, generation)));
    }

    /// A paused process runs again: maybe it serves a request that writes before its
    /// first tick (a real one may), then what reached it meanwhile, in order.
    fn resume(&mut self, owner: Owner) {
        if !self.current(owner) {
            return;
        }
        let index = owner.0;
        self.processes[index].paused = false;
        if self.processes[index].machine.is_leader() && self.rng.chance(500) {
            self.summary.writes_after_pause += 1;
            self.note(|| format!("{owner:?} resumes and writes before its first tick"));
            self.write(index);
        }
        // Its tick chain is among them (a tick that found it paused waits there), so
        // the ticks go on from here.
        let deferred = std::mem::take(&mut self.processes[index].deferred);
        for event in deferred {
            if self.current(owner) && !self.processes[index].paused {
                self.process_handles(owner, event);
            } else if self.current(owner) {
                self.processes[index].deferred.push(event);
            }
        }
    }
}
