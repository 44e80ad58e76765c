//! One two-phase migration step of a few slots from one shard to another, as a state
//! machine: [demote] → reserve ids → prepare (`MigrateOut`, watched) → commit (persist)
//! → install on source and target → broadcast; or, on any failure before the commit,
//! abort at source and target.
//!
//! Demote: a target that backs up some of the step's slots first leaves their backups
//! (a map written and installed on source and target), since a shard's import replaces
//! what it holds in the slots and a failover must never promote a copy half replaced.

use engram_proto::{MigrationStatus, SlotMap};

use super::{Answer, Change, Changed, Context, Event, NodeCall, Report, Token};
use crate::membership::Membership;
use crate::planner::ShardRef;

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Committed,
    /// The source is silent: its slots stay where they are; the plan goes on without them.
    SourceDead(String),
    /// The step was aborted (or never started); the plan stops here.
    Failed(String),
}

enum State {
    /// Writing the map that takes the target out of the slots' backups.
    Demoting {
        persist: Token,
    },
    ReservingIds {
        persist: Token,
    },
    Preparing {
        call: Token,
        watch: Token,
    },
    Committing {
        persist: Token,
        entries: u64,
        bytes: u64,
    },
    /// Installing a map on `[source, target][next]`, then going on as `then` says.
    Installing {
        call: Token,
        next: usize,
        map: SlotMap,
        then: AfterInstall,
    },
    /// Sending the abort to `[source, target][next]`.
    Aborting {
        call: Token,
        next: usize,
        map_epoch: u64,
        reason: String,
    },
}

/// What a map's install on source and target leads to.
#[derive(Clone, Copy)]
enum AfterInstall {
    /// The demotion's map: the source stops counting on the target's copy and the
    /// target stops guarding it, so the copy may begin.
    Copy,
    /// The committed map: the step is over once it is broadcast.
    Finish { bytes: u64 },
}

pub(super) struct Step {
    from: ShardRef,
    to: ShardRef,
    /// The incarnations of source and target when the step began: a node that joins
    /// again meanwhile is a new process with empty memory, which holds neither the
    /// source's slots nor the target's import.
    incarnations: [u64; 2],
    slots: Vec<u32>,
    /// The shard ports of source and target.
    addresses: [String; 2],
    migration_id: u64,
    started_ms: u64,
    state: State,
}

impl Step {
    /// Starts moving `slots` from `from` to `to`: the step, or how it ended at once.
    pub(super) fn start(from: ShardRef, to: ShardRef, slots: &[u32], context: &mut Context) -> Result<Step, Outcome> {
        let membership = context.membership;
        check_heard_from(from, to, membership, context.now_ms)?;
        let (Some(source), Some(target)) = (membership.shard_address(from), membership.shard_address(to)) else {
            return Err(Outcome::Failed("a shard of the plan left the cluster".into()));
        };
        let incarnation = |node_id| membership.member(node_id).map_or(0, |member| member.incarnation);
        let mut step = Step {
            from,
            to,
            incarnations: [incarnation(from.node_id), incarnation(to.node_id)],
            slots: slots.to_vec(),
            addresses: [source.to_string(), target.to_string()],
            migration_id: 0,
            started_ms: context.now_ms,
            state: State::ReservingIds { persist: Token(0) },
        };
        if membership.backs_up_any(to, slots) {
            let persist = context.persist(Change::DropBackups {
                slots: slots.to_vec(),
                shard: to,
            });
            step.state = State::Demoting { persist };
            return Ok(step);
        }
        step.begin(context)?;
        Ok(step)
    }

    /// Reserves ids if none are left, then prepares.
    fn begin(&mut self, context: &mut Context) -> Result<(), Outcome> {
        // Reserved (persisted) before use, so ids never repeat across restarts and a
        // late batch of an old migration can never pass for one of a new migration.
        if context.migration_ids.is_empty() {
            let count = context.config.migration_ids_per_write;
            let persist = context.persist(Change::ReserveMigrationIds { count });
            self.state = State::ReservingIds { persist };
            return Ok(());
        }
        self.prepare(context)
    }

    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The migration as `engram cluster status` lists it, once it has an id.
    pub(super) fn status(&self) -> Option<MigrationStatus> {
        if matches!(
            self.state,
            State::Demoting { .. }
                | State::Installing {
                    then: AfterInstall::Copy,
                    ..
                }
                | State::ReservingIds { .. }
                | State::Aborting { .. }
        ) {
            return None;
        }
        Some(MigrationStatus {
            migration_id: self.migration_id,
            source: self.addresses[0].clone(),
            target: self.addresses[1].clone(),
            slots: self.slots.len() as u32,
        })
    }

    fn prepare(&mut self, context: &mut Context) -> Result<(), Outcome> {
        self.migration_id = context
            .migration_ids
            .next()
            .ok_or_else(|| Outcome::Failed("no migration id".into()))?;
        self.started_ms = context.now_ms;
        let order = NodeCall::MigrateOut {
            migration_id: self.migration_id,
            slots: self.slots.clone(),
            target_address: self.addresses[1].clone(),
        };
        let call = context.call(&self.addresses[0], order, context.config.migrate_out_timeout_ms);
        let watch = context.timer(context.config.watch_interval_ms);
        self.state = State::Preparing { call, watch };
        Ok(())
    }

    /// Feeds one event; `Some` once the step is over.
    pub(super) fn handle(&mut self, event: &Event, context: &mut Context) -> Option<Outcome> {
        let result = match (&self.state, event) {
            (State::Demoting { persist }, Event::Persisted { token, result }) if token == persist => {
                return self.on_demoted(result, context);
            }
            (State::ReservingIds { persist }, Event::Persisted { token, result }) if token == persist => {
                return self.on_ids(result, context);
            }
            (State::Preparing { watch, .. }, Event::TimerFired { token }) if token == watch => self.on_watch(context),
            (State::Preparing { call, .. }, Event::Answered { token, result }) if token == call => {
                self.on_prepared(result, context)
            }
            (State::Committing { persist, .. }, Event::Persisted { token, result }) if token == persist => {
                self.on_committed(result, context)
            }
            (State::Installing { call, .. }, Event::Answered { token, result }) if token == call => {
                return self.on_installed(result, context);
            }
            (State::Aborting { call, .. }, Event::Answered { token, result }) if token == call => {
                return self.on_abort_sent(result, context);
            }
            _ => return None,
        };
        match result {
            Ok(()) => None,
            Err(reason) => self.abort(reason, context),
        }
    }

    fn on_demoted(&mut self, result: &Result<Changed, String>, context: &mut Context) -> Option<Outcome> {
        let map = match result {
            Ok(Changed::Committed(map)) => map.clone(),
            Ok(other) => return Some(Outcome::Failed(format!("dropping the target's backups gave {other:?}"))),
            Err(error) => return Some(Outcome::Failed(error.clone())),
        };
        let call = self.install(0, &map, context);
        self.state = State::Installing {
            call,
            next: 0,
            map,
            then: AfterInstall::Copy,
        };
        None
    }

    /// After the demotion's installs, which may have taken seconds: what `start` checked
    /// is checked again, and answered as `start` answers it. A node that missed the map
    /// learns it from its next heartbeat; until then a target that still guards its
    /// copy refuses the import and the step aborts.
    fn after_demotion(&mut self, context: &mut Context) -> Option<Outcome> {
        let membership = context.membership;
        if let Err(outcome) = check_heard_from(self.from, self.to, membership, context.now_ms) {
            return Some(outcome);
        }
        if let Err(reason) = self.check_same_processes(membership) {
            return Some(Outcome::Failed(reason));
        }
        self.begin(context).err()
    }

    fn report_install_failure(&self, next: usize, result: &Result<Answer, String>, context: &mut Context) {
        if let Err(error) = result {
            context.report(Report::MapNotInstalled {
                address: self.addresses[next].clone(),
                error: error.clone(),
            });
        }
    }

    fn on_ids(&mut self, result: &Result<Changed, String>, context: &mut Context) -> Option<Outcome> {
        match result {
            Ok(Changed::MigrationIds(ids)) => {
                *context.migration_ids = ids.clone();
                self.prepare(context).err()
            }
            Ok(other) => Some(Outcome::Failed(format!("reserving ids gave {other:?}"))),
            Err(error) => Some(Outcome::Failed(error.clone())),
        }
    }

    /// A migration towards a paused node is aborted rather than left freezing its
    /// slots at the source until the copy times out, and one from a paused node rather
    /// than waited for.
    fn on_watch(&mut self, context: &mut Context) -> Result<(), String> {
        let membership = context.membership;
        if let Some(node_id) = [self.from.node_id, self.to.node_id]
            .into_iter()
            .find(|&node_id| !membership.is_responsive(node_id, context.now_ms))
        {
            return Err(format!("node {node_id} went silent during the copy"));
        }
        self.check_same_processes(membership)?;
        if let State::Preparing { watch, .. } = &mut self.state {
            *watch = context.timer(context.config.watch_interval_ms);
        }
        Ok(())
    }

    fn on_prepared(&mut self, result: &Result<Answer, String>, context: &mut Context) -> Result<(), String> {
        let (entries, bytes) = match result {
            Ok(Answer::Prepared { entries, bytes }) => (*entries, *bytes),
            Ok(Answer::Refused { message }) => return Err(message.clone()),
            Ok(Answer::Accepted) => return Err("the source answered accepted".into()),
            Ok(Answer::Unexpected { name }) => return Err(format!("the source answered {name}")),
            Err(error) => return Err(error.clone()),
        };
        if !context.membership.is_responsive(self.to.node_id, context.now_ms) {
            return Err(format!("target node {} went silent before the commit", self.to.node_id));
        }
        // A target that restarted answers heartbeats, but its import died with its
        // previous process: committing would serve the slots empty.
        self.check_same_processes(context.membership)?;
        // A source declared dead meanwhile had its slots promoted to a backup, which
        // served writes its copy lacks.
        if let Some(slot) = self
            .slots
            .iter()
            .find(|&&slot| !context.membership.serves(self.from, slot))
        {
            return Err(format!(
                "slot {slot} left node {} during the copy (failed over?)",
                self.from.node_id
            ));
        }
        // The commit point: once the new map is on disk, the target owns the slots.
        let persist = context.persist(Change::CommitMove {
            slots: self.slots.clone(),
            to: self.to,
        });
        self.state = State::Committing {
            persist,
            entries,
            bytes,
        };
        Ok(())
    }

    /// Fails if source or target runs another process than when the step began.
    fn check_same_processes(&self, membership: &Membership) -> Result<(), String> {
        let roles = [("source", self.from.node_id), ("target", self.to.node_id)];
        for ((role, node_id), began) in roles.into_iter().zip(self.incarnations) {
            let now = membership.member(node_id).map_or(0, |member| member.incarnation);
            if now != began {
                return Err(format!(
                    "{role} node {node_id} restarted during the copy (incarnation {began}, now {now})"
                ));
            }
        }
        Ok(())
    }

    fn on_committed(&mut self, result: &Result<Changed, String>, context: &mut Context) -> Result<(), String> {
        let State::Committing { entries, bytes, .. } = self.state else {
            return Ok(());
        };
        let map = match result {
            Ok(Changed::Committed(map)) => map.clone(),
            Ok(other) => return Err(format!("committing gave {other:?}")),
            Err(error) => return Err(error.clone()),
        };
        context.report(Report::Committed {
            migration_id: self.migration_id,
            slots: self.slots.len(),
            entries,
            bytes,
            elapsed_ms: context.now_ms.saturating_sub(self.started_ms),
            epoch: map.epoch,
            source: self.addresses[0].clone(),
            target: self.addresses[1].clone(),
        });
        let call = self.install(0, &map, context);
        self.state = State::Installing {
            call,
            next: 0,
            map,
            then: AfterInstall::Finish { bytes },
        };
        Ok(())
    }

    fn install(&self, next: usize, map: &SlotMap, context: &mut Context) -> Token {
        let timeout_ms = context.config.node_call_timeout_ms;
        context.call(&self.addresses[next], NodeCall::InstallMap(map.clone()), timeout_ms)
    }

    fn on_installed(&mut self, result: &Result<Answer, String>, context: &mut Context) -> Option<Outcome> {
        let State::Installing { next, map, then, .. } = &self.state else {
            return None;
        };
        // The node fetches the map with its next heartbeat instead.
        self.report_install_failure(*next, result, context);
        if *next == 0 {
            let (map, then) = (map.clone(), *then);
            let call = self.install(1, &map, context);
            self.state = State::Installing {
                call,
                next: 1,
                map,
                then,
            };
            return None;
        }
        match *then {
            AfterInstall::Copy => self.after_demotion(context),
            AfterInstall::Finish { bytes } => {
                context.effects.push(super::Effect::BroadcastMap);
                context.report(Report::StepMoved {
                    slots: self.slots.len(),
                    bytes,
                    elapsed_ms: context.now_ms.saturating_sub(self.started_ms),
                });
                Some(Outcome::Committed)
            }
        }
    }

    /// Best effort: a node that misses the abort still learns it from its heartbeats
    /// (the control plane no longer runs the migration) or the next start's reconcile.
    fn abort(&mut self, reason: String, context: &mut Context) -> Option<Outcome> {
        context.report(Report::StepAborted {
            migration_id: self.migration_id,
            reason: reason.clone(),
        });
        let map_epoch = context.membership.epoch();
        let call = self.send_abort(0, map_epoch, context);
        self.state = State::Aborting {
            call,
            next: 0,
            map_epoch,
            reason,
        };
        None
    }

    fn send_abort(&self, next: usize, map_epoch: u64, context: &mut Context) -> Token {
        let abort = NodeCall::MigrateAbort {
            migration_id: self.migration_id,
            map_epoch,
        };
        let timeout_ms = context.config.node_call_timeout_ms;
        context.call(&self.addresses[next], abort, timeout_ms)
    }

    fn on_abort_sent(&mut self, result: &Result<Answer, String>, context: &mut Context) -> Option<Outcome> {
        let State::Aborting {
            next,
            map_epoch,
            reason,
            ..
        } = &self.state
        else {
            return None;
        };
        if let Err(error) = result {
            context.report(Report::AbortNotDelivered {
                migration_id: self.migration_id,
                address: self.addresses[*next].clone(),
                error: error.clone(),
            });
        }
        if *next == 0 {
            let (map_epoch, reason) = (*map_epoch, reason.clone());
            let call = self.send_abort(1, map_epoch, context);
            self.state = State::Aborting {
                call,
                next: 1,
                map_epoch,
                reason,
            };
            return None;
        }
        Some(Outcome::Failed(format!(
            "migration {} of {} slots from {} to {} aborted: {reason}",
            self.migration_id,
            self.slots.len(),
            self.addresses[0],
            self.addresses[1]
        )))
    }
}

/// Whether source and target were heard from lately: nothing can be copied off a silent
/// source (the plan goes on without its slots), and nothing onto a silent target.
fn check_heard_from(from: ShardRef, to: ShardRef, membership: &Membership, now_ms: u64) -> Result<(), Outcome> {
    if !membership.is_responsive(from.node_id, now_ms) {
        return Err(Outcome::SourceDead(format!(
            "node {} is silent: its slots cannot be copied off it",
            from.node_id
        )));
    }
    if !membership.is_responsive(to.node_id, now_ms) {
        return Err(Outcome::Failed(format!("node {} is silent", to.node_id)));
    }
    Ok(())
}
