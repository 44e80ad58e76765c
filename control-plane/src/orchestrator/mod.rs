//! The migration orchestrator as a sans-I/O state machine: it runs plans one two-phase
//! migration step at a time, and the start-up reconcile, without touching the network,
//! the disk or a clock.
//!
//! The caller (the driver: `service.rs` over real links, or the simulation) feeds it
//! [`Event`]s — a node's answer or a failed call, a state change persisted or refused, a
//! timer that fired — together with the current [`Membership`] and the time, and performs
//! the [`Effect`]s it returns: calls to shard ports, state changes to persist, timers to
//! arm, the map to broadcast, and [`Report`]s to log and count. Every effect that expects
//! an answer carries a [`Token`]; an event whose token the orchestrator no longer waits
//! for (a call it gave up on, a timer of a finished step) is ignored.
//!
//! A step (see [`step`]): reserve migration ids if none are left (persisted before use,
//! so ids never repeat), `MigrateOut` (a copy) or `HandOver` (onto an in-sync backup) to
//! the source while watching that source and target keep heartbeating, then on
//! `MigrationPrepared` persist the new owners (the commit point), install the map on
//! source and target and broadcast it. Any failure before the commit sends
//! `MigrateAbort` (naming the epoch it was decided under) to both.
//!
//! Invariants:
//! - The map giving a step's slots to the target is persisted only after the source
//!   answered `MigrationPrepared` for that step, and only while the target (and the
//!   source) still run the processes the step started with.
//! - At most one step runs at a time, and none before the reconcile finished.
//! - A migration is listed as running (so heartbeats do not abort it) from before its
//!   `MigrateOut` is sent until its outcome is decided.

mod plan;
mod reconcile;
mod step;
#[cfg(test)]
mod tests;

use std::ops::Range;

use engram_proto::{MigrationStatus, ShardProcessRef, SlotMap};

use crate::membership::Membership;
use crate::planner::{plan_balance, Move, PlanError, ShardRef};
use plan::PlanRun;
use reconcile::Reconcile;

/// Slots one migration step moves: a step freezes its slots for the time it takes to
/// copy them, so steps stay small enough that the freeze is short.
pub const MIGRATION_SLOTS_PER_STEP: usize = 128;
/// Slots one step hands over (after a fill, or onto their backup): such a step freezes
/// its slots only until the target applied the stream's last changes, whatever their
/// size, and each costs a few heartbeats of waiting, so steps are large.
pub const HAND_OVER_SLOTS_PER_STEP: usize = 2048;
/// How long the source may take to copy one step to the target (or to fill it as a
/// backup, before a hand-over).
pub const MIGRATE_OUT_TIMEOUT_MS: u64 = 120_000;
/// Migration ids reserved with one write of the state file.
pub const MIGRATION_IDS_RESERVED_PER_WRITE: u64 = 1024;
/// Bound on every other call to a node.
pub const NODE_CALL_TIMEOUT_MS: u64 = 5_000;
/// How often a running migration checks that its source and target still heartbeat.
pub const TARGET_WATCH_INTERVAL_MS: u64 = 250;

/// The orchestrator's tunables; [`Config::default`] is what `engram-control` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Slots of a step that copies them frozen.
    pub slots_per_step: usize,
    /// Slots of a step that fills its target or hands over to it.
    pub slots_per_hand_over: usize,
    pub migration_ids_per_write: u64,
    pub migrate_out_timeout_ms: u64,
    pub node_call_timeout_ms: u64,
    pub watch_interval_ms: u64,
    /// Whether a step onto a shard that holds no copy of its slots fills it as a backup
    /// while serving, then hands the slots over (with replicas only; see [`step`]),
    /// instead of copying them frozen.
    pub fill_before_move: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            slots_per_step: MIGRATION_SLOTS_PER_STEP,
            slots_per_hand_over: HAND_OVER_SLOTS_PER_STEP,
            migration_ids_per_write: MIGRATION_IDS_RESERVED_PER_WRITE,
            migrate_out_timeout_ms: MIGRATE_OUT_TIMEOUT_MS,
            node_call_timeout_ms: NODE_CALL_TIMEOUT_MS,
            watch_interval_ms: TARGET_WATCH_INTERVAL_MS,
            fill_before_move: true,
        }
    }
}

/// Names one awaited answer, persist or timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

impl std::fmt::Display for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "#{}", self.0)
    }
}

/// A call to a shard's own port (the driver turns it into the wire command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCall {
    MigrateOut {
        migration_id: u64,
        slots: Vec<u32>,
        target_address: String,
    },
    /// A migration onto an in-sync backup of every slot: the source freezes them until
    /// the target holds every change, then answers as for `MigrateOut`.
    HandOver {
        migration_id: u64,
        slots: Vec<u32>,
        target: ShardProcessRef,
    },
    InstallMap(SlotMap),
    MigrateAbort {
        migration_id: u64,
        map_epoch: u64,
    },
}

/// A node's answer to a [`NodeCall`], as far as the orchestrator cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Prepared {
        entries: u64,
        bytes: u64,
    },
    Accepted,
    /// An error answer, with its message.
    Refused {
        message: String,
    },
    /// Any other answer, by name.
    Unexpected {
        name: &'static str,
    },
}

/// A change of the persisted state the orchestrator needs. The driver applies it to a
/// copy of the membership, persists the copy, and only then makes it current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    ReserveMigrationIds {
        count: u64,
    },
    CommitMove {
        slots: Vec<u32>,
        to: ShardRef,
    },
    /// A hand-over's commit: `to` leads `slots`, and `from` backs them up in its place.
    CommitHandOver {
        slots: Vec<u32>,
        from: ShardRef,
        to: ShardRef,
    },
}

/// What a persisted [`Change`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    MigrationIds(Range<u64>),
    /// The map the change wrote.
    Committed(SlotMap),
}

impl Change {
    /// Applies the change to `membership` (the driver's copy, persisted afterwards).
    pub fn apply(&self, membership: &mut Membership) -> Changed {
        match self {
            Change::ReserveMigrationIds { count } => Changed::MigrationIds(membership.reserve_migration_ids(*count)),
            Change::CommitMove { slots, to } => Changed::Committed(membership.commit_move(slots, *to).clone()),
            Change::CommitHandOver { slots, from, to } => {
                Changed::Committed(membership.commit_hand_over(slots, *from, *to).clone())
            }
        }
    }
}

/// What the driver tells the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The answer to the call `token`, or why there was none (the link's error).
    Answered {
        token: Token,
        result: Result<Answer, String>,
    },
    /// The change `token` was persisted and made current, or why not (nothing changed).
    Persisted {
        token: Token,
        result: Result<Changed, String>,
    },
    TimerFired {
        token: Token,
    },
}

/// What the orchestrator asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Call a shard's port; answer with [`Event::Answered`] within about `timeout_ms`.
    Call {
        token: Token,
        address: String,
        call: NodeCall,
        timeout_ms: u64,
    },
    /// Persist a change; answer with [`Event::Persisted`] before anything else happens.
    Persist {
        token: Token,
        change: Change,
    },
    /// Fire [`Event::TimerFired`] at `at_ms` (the driver's clock, as given to `handle`).
    ArmTimer {
        token: Token,
        at_ms: u64,
    },
    /// Send the current map to every member's front port, answers not awaited.
    BroadcastMap,
    /// Order `from` to fill `to` with `slots` as a backup, in place of any other fill
    /// order ([`Membership::order_step_fill`]): not persisted, like every fill order.
    OrderFill {
        from: ShardRef,
        to: ShardRef,
        slots: Vec<u32>,
    },
    Report(Report),
}

/// Something worth a log line or a metric; the orchestrator does not wait on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The commit point passed: the new map is persisted.
    Committed {
        migration_id: u64,
        slots: usize,
        entries: u64,
        bytes: u64,
        elapsed_ms: u64,
        epoch: u64,
        source: String,
        target: String,
    },
    MapNotInstalled {
        address: String,
        error: String,
    },
    /// A committed step is over (its map installed or left to heartbeats).
    StepMoved {
        slots: usize,
        bytes: u64,
        elapsed_ms: u64,
    },
    /// A step failed before its commit; its aborts are being sent.
    StepAborted {
        migration_id: u64,
        reason: String,
    },
    AbortNotDelivered {
        migration_id: u64,
        address: String,
        error: String,
    },
    SkippingDeadSource {
        reason: String,
    },
    /// A plan is over; `failure` says why it stopped early or skipped moves.
    PlanEnded {
        moved: usize,
        total: usize,
        elapsed_ms: u64,
        failure: Option<String>,
    },
    /// The reconcile could not reach a shard; its heartbeats settle it later.
    NotReconciled {
        address: String,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrchestratorError {
    #[error("a rebalance (or the start-up reconcile) is running; retry when it has finished")]
    Busy,
}

/// What a handler needs besides its own state: configuration, token and id sources, the
/// membership as it is now, the time, and where effects go.
pub(crate) struct Context<'a> {
    config: &'a Config,
    next_token: &'a mut u64,
    migration_ids: &'a mut Range<u64>,
    membership: &'a Membership,
    now_ms: u64,
    effects: Vec<Effect>,
}

impl Context<'_> {
    fn token(&mut self) -> Token {
        *self.next_token += 1;
        Token(*self.next_token)
    }

    fn call(&mut self, address: &str, call: NodeCall, timeout_ms: u64) -> Token {
        let token = self.token();
        self.effects.push(Effect::Call {
            token,
            address: address.to_string(),
            call,
            timeout_ms,
        });
        token
    }

    fn persist(&mut self, change: Change) -> Token {
        let token = self.token();
        self.effects.push(Effect::Persist { token, change });
        token
    }

    fn timer(&mut self, after_ms: u64) -> Token {
        let token = self.token();
        let at_ms = self.now_ms + after_ms;
        self.effects.push(Effect::ArmTimer { token, at_ms });
        token
    }

    fn report(&mut self, report: Report) {
        self.effects.push(Effect::Report(report));
    }
}

enum Work {
    /// Nothing may run until the reconcile has settled what an earlier run left open.
    Starting,
    Reconciling(Reconcile),
    Idle,
    /// Boxed: a running step holds a whole map while it installs it.
    Planning(Box<PlanRun>),
}

/// See the module documentation.
pub struct Orchestrator {
    config: Config,
    next_token: u64,
    /// Reserved migration ids not handed out yet (not persisted: a restart reserves anew).
    migration_ids: Range<u64>,
    work: Work,
}

impl Orchestrator {
    /// An orchestrator that runs nothing until [`Orchestrator::reconcile`] has finished.
    pub fn new(config: Config) -> Orchestrator {
        Orchestrator {
            config,
            next_token: 0,
            migration_ids: 0..0,
            work: Work::Starting,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a plan or the reconcile runs (and another plan must wait).
    pub fn is_busy(&self) -> bool {
        !matches!(self.work, Work::Idle)
    }

    fn context<'a>(&'a mut self, membership: &'a Membership, now_ms: u64) -> (Context<'a>, &'a mut Work) {
        let context = Context {
            config: &self.config,
            next_token: &mut self.next_token,
            migration_ids: &mut self.migration_ids,
            membership,
            now_ms,
            effects: Vec::new(),
        };
        (context, &mut self.work)
    }

    /// After a start: installs the persisted map on every member's shards, then aborts
    /// every migration that map did not commit (an earlier run may have died mid-way).
    pub fn reconcile(&mut self, membership: &Membership, now_ms: u64) -> Vec<Effect> {
        let (mut context, work) = self.context(membership, now_ms);
        let reconcile = Reconcile::start(&mut context);
        *work = match reconcile {
            Some(reconcile) => Work::Reconciling(reconcile),
            None => Work::Idle,
        };
        context.effects
    }

    /// Starts running `moves`, one step at a time.
    pub fn start_plan(
        &mut self,
        moves: Vec<Move>,
        membership: &Membership,
        now_ms: u64,
    ) -> Result<Vec<Effect>, OrchestratorError> {
        if self.is_busy() {
            return Err(OrchestratorError::Busy);
        }
        let (mut context, work) = self.context(membership, now_ms);
        let mut plan = PlanRun::new(&moves, now_ms);
        *work = if plan.advance(&mut context) {
            Work::Idle
        } else {
            Work::Planning(Box::new(plan))
        };
        Ok(context.effects)
    }

    /// Feeds one event; returns what to do next.
    pub fn handle(&mut self, event: Event, membership: &Membership, now_ms: u64) -> Vec<Effect> {
        let (mut context, work) = self.context(membership, now_ms);
        let finished = match work {
            Work::Reconciling(reconcile) => reconcile.handle(&event, &mut context),
            Work::Planning(plan) => plan.handle(&event, &mut context),
            Work::Starting | Work::Idle => false,
        };
        if finished {
            *work = Work::Idle;
        }
        context.effects
    }

    /// The migration running now, if any.
    pub fn migrations(&self) -> Vec<MigrationStatus> {
        match &self.work {
            Work::Planning(plan) => plan.running().into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Of the migrations a node holds open, those no step here runs: they were decided
    /// already (the map says how) or belong to an earlier run, so the node may let go.
    pub fn abort_migrations(&self, held: &[u64]) -> Vec<u64> {
        let running: Vec<u64> = self
            .migrations()
            .iter()
            .map(|migration| migration.migration_id)
            .collect();
        held.iter().copied().filter(|id| !running.contains(id)).collect()
    }
}

/// The moves of an even spread of slots over the shards that may receive them now,
/// leaving out lost slots (nothing to copy, nobody to copy from).
pub fn balance_moves(membership: &Membership, now_ms: u64) -> Result<Vec<Move>, PlanError> {
    let shards = membership.plan_shards(now_ms);
    Ok(membership.movable(plan_balance(&shards, membership.owners())?))
}
