//! The model control plane: the real `Membership` and the real migration `Orchestrator`,
//! with a driver that does here what `service.rs` does over sockets (persist each change
//! to a copy first, feed persists back at once, calls with timeouts, timers, map
//! broadcasts), and the join, heartbeat and housekeeping handlers of `service.rs`.
//! Its state file is the world's [`Disk`], which outlives a crash of the process.

use std::collections::{BTreeMap, VecDeque};

use engram_control::membership::{Membership, MembershipError};
use engram_control::orchestrator::{
    balance_moves, Answer, Config, Effect, Event, NodeCall, Orchestrator, Report, Token,
};
use engram_proto::{Heartbeat, JoinRequest, LOST_SHARD_INDEX};

use crate::net::{endpoint_of, Action, Endpoint, Reply, Request, Timer};
use crate::rng::Rng;
use crate::Bug;

/// As `service.rs`'s.
const HOUSEKEEPING_INTERVAL_MS: u64 = 1_000;
const CONTROL_STALL_MS_MAX: u64 = 3 * HOUSEKEEPING_INTERVAL_MS;

/// Who a persisted map says owns a slot (its last owner, when `lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedOwner {
    pub node: usize,
    pub shard: u16,
    pub lost: bool,
}

/// The state file, and the faults its writes may meet.
#[derive(Default)]
pub struct Disk {
    pub bytes: Option<Vec<u8>>,
    /// The slots whose persisted owner the world checks servers against.
    pub watched: Vec<u32>,
    /// Per watched slot: its owner in the state on disk.
    pub owners: Vec<Option<PersistedOwner>>,
    /// Per mille of writes that fail before the rename (nothing changes).
    pub fail_per_mille: u64,
    /// Per mille of writes after which the process dies (the new state is on disk).
    pub crash_per_mille: u64,
    /// Set by a write that the process did not survive.
    pub crashed: bool,
    /// Bumped by every write that took.
    pub writes: u64,
}

impl Disk {
    fn write(&mut self, bytes: Vec<u8>, state: &Membership, rng: &mut Rng) -> Result<(), String> {
        if rng.chance(self.fail_per_mille) {
            return Err("cannot persist the state: injected write failure".into());
        }
        self.bytes = Some(bytes);
        self.owners = self.watched.iter().map(|&slot| persisted_owner(state, slot)).collect();
        self.writes += 1;
        if rng.chance(self.crash_per_mille) {
            self.crashed = true;
        }
        Ok(())
    }
}

/// What a handler of the control plane needs from the world.
pub struct Io<'a> {
    pub now: u64,
    pub disk: &'a mut Disk,
    pub rng: &'a mut Rng,
    pub actions: Vec<Action>,
    /// Steps committed and aborted meanwhile, for the run's summary.
    pub committed: u64,
    pub aborted: u64,
}

impl<'a> Io<'a> {
    pub fn new(now: u64, disk: &'a mut Disk, rng: &'a mut Rng) -> Io<'a> {
        Io {
            now,
            disk,
            rng,
            actions: Vec::new(),
            committed: 0,
            aborted: 0,
        }
    }
}

pub struct Control {
    pub generation: u64,
    started_at: u64,
    pub membership: Membership,
    pub orchestrator: Orchestrator,
    liveness_timeout_ms: u64,
    last_liveness_check_ms: u64,
    next_call: u64,
    /// The orchestrator's calls in flight (a broadcast's are not awaited).
    pending: BTreeMap<u64, Token>,
    bug: Option<Bug>,
}

impl Control {
    /// A process starting from what the disk holds: it reconciles, then serves.
    pub fn start(generation: u64, config: Config, liveness_timeout_ms: u64, bug: Option<Bug>, io: &mut Io) -> Control {
        let mut membership = match &io.disk.bytes {
            Some(bytes) => Membership::decode(bytes).expect("the state file decodes"),
            None => Membership::new(),
        };
        membership.set_liveness_timeout_ms(liveness_timeout_ms);
        let mut control = Control {
            generation,
            started_at: io.now,
            membership,
            orchestrator: Orchestrator::new(config),
            liveness_timeout_ms,
            last_liveness_check_ms: 0,
            next_call: 0,
            pending: BTreeMap::new(),
            bug,
        };
        let effects = control.orchestrator.reconcile(&control.membership, 0);
        control.perform(effects, io);
        io.actions.push(Action::Timer {
            after_ms: HOUSEKEEPING_INTERVAL_MS,
            timer: Timer::Housekeeping,
        });
        control
    }

    fn clock(&self, now: u64) -> u64 {
        now - self.started_at
    }

    /// Applies `change` to a copy, persists the copy, and only then makes it current.
    fn change<T>(
        &mut self,
        io: &mut Io,
        change: impl FnOnce(&mut Membership) -> Result<T, MembershipError>,
    ) -> Result<T, String> {
        let mut next = self.membership.clone();
        let value = change(&mut next).map_err(|problem| problem.to_string())?;
        let bytes = next.encode().map_err(|problem| problem.to_string())?;
        io.disk.write(bytes, &next, io.rng)?;
        self.membership = next;
        Ok(value)
    }

    /// Performs the orchestrator's effects as `service.rs` does: persists (fed back at
    /// once) and reports here, the rest as messages and timers.
    fn perform(&mut self, effects: Vec<Effect>, io: &mut Io) {
        let mut pending = VecDeque::from(effects);
        while let Some(effect) = pending.pop_front() {
            let next = match effect {
                Effect::Persist { token, change } => {
                    let result = self.change(io, |membership| Ok(change.apply(membership)));
                    self.feed(Event::Persisted { token, result }, io.now)
                }
                Effect::Call {
                    token,
                    address,
                    call,
                    timeout_ms,
                } => self.call(token, &address, call, timeout_ms, io),
                Effect::ArmTimer { token, at_ms } => {
                    let after_ms = at_ms.saturating_sub(self.clock(io.now));
                    let timer = Timer::Orchestrator(token);
                    io.actions.push(Action::Timer { after_ms, timer });
                    Vec::new()
                }
                Effect::BroadcastMap => {
                    self.broadcast(io);
                    Vec::new()
                }
                // The model nodes run no replicas (the replication simulation covers
                // fills and hand-overs), so no step fills; kept as the service keeps it.
                Effect::OrderFill { from, to, slots } => {
                    self.membership.order_step_fill(from, to, &slots);
                    Vec::new()
                }
                Effect::Report(report) => {
                    io.committed += u64::from(matches!(report, Report::Committed { .. }));
                    io.aborted += u64::from(matches!(report, Report::StepAborted { .. }));
                    io.actions.push(Action::Trace(describe(&report)));
                    Vec::new()
                }
            };
            for effect in next.into_iter().rev() {
                pending.push_front(effect);
            }
        }
    }

    fn feed(&mut self, event: Event, now: u64) -> Vec<Effect> {
        let now_ms = self.clock(now);
        self.orchestrator.handle(event, &self.membership, now_ms)
    }

    fn call(&mut self, token: Token, address: &str, call: NodeCall, timeout_ms: u64, io: &mut Io) -> Vec<Effect> {
        let Some(to) = endpoint_of(address) else {
            let result = Err(format!("{address}: no such address"));
            return self.feed(Event::Answered { token, result }, io.now);
        };
        // The injected bug: the commit does not wait for the source's answer.
        let early = matches!(call, NodeCall::MigrateOut { .. }) && self.bug == Some(Bug::CommitBeforePrepared);
        self.next_call += 1;
        self.pending.insert(self.next_call, token);
        io.actions.push(Action::Call {
            to,
            call: self.next_call,
            request: Request::Node(call),
        });
        io.actions.push(Action::Timer {
            after_ms: timeout_ms,
            timer: Timer::CallTimeout(self.next_call),
        });
        if early {
            self.pending.remove(&self.next_call);
            let result = Ok(Answer::Prepared { entries: 0, bytes: 0 });
            return self.feed(Event::Answered { token, result }, io.now);
        }
        Vec::new()
    }

    /// Sends the current map to every member's front port, answers not awaited.
    fn broadcast(&mut self, io: &mut Io) {
        for member in self.membership.members() {
            let Some(to) = endpoint_of(&member.front_address) else {
                continue;
            };
            self.next_call += 1;
            let request = Request::InstallMap(self.membership.map().clone());
            io.actions.push(Action::Call {
                to,
                call: self.next_call,
                request,
            });
        }
    }

    pub fn timer(&mut self, timer: Timer, io: &mut Io) {
        let effects = match timer {
            Timer::Orchestrator(token) => self.feed(Event::TimerFired { token }, io.now),
            Timer::CallTimeout(call) => match self.pending.remove(&call) {
                Some(token) => {
                    let result = Err("timed out".to_string());
                    self.feed(Event::Answered { token, result }, io.now)
                }
                None => Vec::new(),
            },
            Timer::Housekeeping => {
                self.housekeeping(io);
                Vec::new()
            }
            _ => Vec::new(),
        };
        self.perform(effects, io);
    }

    /// An answer to one of this process's calls.
    pub fn answered(&mut self, call: u64, reply: Reply, io: &mut Io) {
        let Some(token) = self.pending.remove(&call) else {
            return;
        };
        let result = match reply {
            Reply::Node(answer) => Ok(answer),
            Reply::LinkError(reason) => Err(reason),
            other => Ok(Answer::Unexpected {
                name: if matches!(other, Reply::Data(_)) {
                    "data"
                } else {
                    "other"
                },
            }),
        };
        let effects = self.feed(Event::Answered { token, result }, io.now);
        self.perform(effects, io);
    }

    /// A request to the control plane's port; returns the answer.
    pub fn request(&mut self, request: Request, io: &mut Io) -> Reply {
        match request {
            Request::Join(join) => self.join(&join, io),
            Request::Heartbeat(heartbeat) => self.heartbeat(&heartbeat, io),
            Request::GetSlotMap => Reply::SlotMap(self.membership.map().clone()),
            _ => Reply::Refused("not a control-plane command".into()),
        }
    }

    fn join(&mut self, request: &JoinRequest, io: &mut Io) -> Reply {
        let now_ms = self.clock(io.now);
        match self.change(io, |membership| membership.join(request, now_ms)) {
            Ok(joined) => {
                if !joined.failure.lost.is_empty() {
                    io.actions.push(Action::Trace(format!(
                        "cp node {} restarted: {} slots lost",
                        joined.node_id,
                        joined.failure.lost.len()
                    )));
                    self.broadcast(io);
                }
                Reply::Joined {
                    node_id: joined.node_id,
                    map: self.membership.map().clone(),
                    incarnation: joined.incarnation,
                    liveness_timeout_ms: self.liveness_timeout_ms,
                }
            }
            Err(problem) => Reply::Refused(problem),
        }
    }

    fn heartbeat(&mut self, heartbeat: &Heartbeat, io: &mut Io) -> Reply {
        let now_ms = self.clock(io.now);
        if let Err(problem) = self.membership.heartbeat(heartbeat, now_ms) {
            return Reply::Refused(problem.to_string());
        }
        let (node_id, incarnation) = (heartbeat.node_id, heartbeat.incarnation);
        let restored = self.membership.restorable(node_id, incarnation)
            && self
                .change(io, |membership| Ok(membership.restore(node_id, incarnation)))
                .is_ok();
        if heartbeat.map_epoch > self.membership.epoch() {
            let reported = heartbeat.map_epoch;
            let raised = self.change(io, |membership| {
                membership.raise_epoch_past(reported);
                Ok(())
            });
            if let Err(problem) = raised {
                return Reply::Refused(problem);
            }
        }
        let answer = Reply::HeartbeatAck {
            map_epoch: self.membership.epoch(),
            abort_migrations: self.orchestrator.abort_migrations(&heartbeat.migrations),
            liveness_timeout_ms: self.liveness_timeout_ms,
        };
        if restored {
            io.actions
                .push(Action::Trace(format!("cp node {node_id} is back: slots restored")));
            self.broadcast(io);
        }
        answer
    }

    fn housekeeping(&mut self, io: &mut Io) {
        io.actions.push(Action::Timer {
            after_ms: HOUSEKEEPING_INTERVAL_MS,
            timer: Timer::Housekeeping,
        });
        let now_ms = self.clock(io.now);
        self.declare_dead(now_ms, io);
        if !self.orchestrator.is_busy() && self.membership.clone().forget_departed(now_ms) {
            let _ = self.change(io, |membership| Ok(membership.forget_departed(now_ms)));
        }
    }

    fn declare_dead(&mut self, now_ms: u64, io: &mut Io) {
        let since_last_check_ms = now_ms.saturating_sub(self.last_liveness_check_ms);
        self.last_liveness_check_ms = now_ms;
        if since_last_check_ms > CONTROL_STALL_MS_MAX {
            self.membership.hear_from_everyone(now_ms);
            return;
        }
        if !self.membership.has_dead_to_declare(now_ms) {
            return;
        }
        if let Ok(dead) = self.change(io, |membership| Ok(membership.declare_dead(now_ms))) {
            for (node_id, failure) in &dead {
                io.actions.push(Action::Trace(format!(
                    "cp node {node_id} declared dead: {} slots lost",
                    failure.lost.len()
                )));
            }
            self.broadcast(io);
        }
    }

    /// `engram cluster rebalance` (or `drain NODE`): plans an even spread and starts it.
    pub fn rebalance(&mut self, drain: Option<u64>, io: &mut Io) -> Result<usize, String> {
        let now_ms = self.clock(io.now);
        if self.orchestrator.is_busy() {
            return Err("busy".into());
        }
        if let Some(node_id) = drain {
            self.change(io, |membership| membership.drain(node_id))?;
        }
        let moves = balance_moves(&self.membership, now_ms).map_err(|problem| problem.to_string())?;
        if moves.is_empty() {
            return Ok(0);
        }
        let count = moves.len();
        let effects = self
            .orchestrator
            .start_plan(moves, &self.membership, now_ms)
            .map_err(|problem| problem.to_string())?;
        self.perform(effects, io);
        Ok(count)
    }
}

fn persisted_owner(state: &Membership, slot: u32) -> Option<PersistedOwner> {
    let owner = state.owners().get(slot as usize)?;
    let member = state.member(owner.node_id)?;
    let Some(Endpoint::Front(node)) = endpoint_of(&member.front_address) else {
        return None;
    };
    let lost = state
        .map()
        .ranges
        .iter()
        .find(|range| range.start <= slot && slot <= range.end)
        .is_some_and(|range| range.shard_index == LOST_SHARD_INDEX);
    Some(PersistedOwner {
        node,
        shard: owner.shard_id,
        lost,
    })
}

fn describe(report: &Report) -> String {
    match report {
        Report::Committed {
            migration_id,
            slots,
            epoch,
            source,
            target,
            ..
        } => format!("cp migration {migration_id} committed: {slots} slots {source} -> {target} at epoch {epoch}"),
        Report::StepAborted { migration_id, reason } => format!("cp migration {migration_id} aborting: {reason}"),
        Report::PlanEnded {
            moved, total, failure, ..
        } => {
            format!("cp plan ended: {moved}/{total} slots moved, failure {failure:?}")
        }
        other => format!("cp {other:?}"),
    }
}
