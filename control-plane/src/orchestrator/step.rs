//! One two-phase migration step of a few slots from one shard to another, as a state
//! machine: reserve ids → prepare (watched) → commit (persist) → install on source and
//! target → broadcast; or, on any failure before the commit, abort at source and target.
//!
//! How the source prepares depends on the target. A target that the map names an
//! in-sync backup of every slot of the step already holds them: the source only freezes
//! them until its stream to the target has applied every change (`HandOver`), and the
//! commit swaps the two (the source becomes the backup, its frozen copy being the final
//! state). With replicas, a target that holds no copy is first *filled* as one more
//! backup while the slots are served (a fill order, as for restoring the replica
//! count), and once the map names it, the step goes on as a hand-over: the slots are
//! frozen for a round trip of the stream, not for a copy. Without replicas (no streams
//! run), or onto a node that already backs the slots up on another shard, the source
//! copies the frozen slots (`MigrateOut`). The plan cuts its steps so that each takes
//! one way.

use engram_proto::{MigrationStatus, ShardProcessRef, SlotMap};

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

/// How the target comes to hold the step's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transfer {
    /// The source copies them while they are frozen.
    Copy,
    /// The source fills the target as one more backup of them while serving them, then
    /// hands them over.
    Fill,
    /// The target backs them all up, in sync: the source waits until it holds every
    /// change, and the two swap roles.
    HandOver,
}

impl Transfer {
    /// How `to` takes `slot` in: a hand-over when it backs the slot up; else a fill
    /// (when fills run: replicas set, `fill_before_move` on, and no other shard of its
    /// node backs the slot up, which the map allows only once per node); else a copy.
    pub(super) fn of_slot(context: &Context, to: ShardRef, slot: u32) -> Transfer {
        let membership = context.membership;
        if membership.backs_up(to, slot) {
            Transfer::HandOver
        } else if context.config.fill_before_move
            && membership.replicas() > 0
            && !membership.backed_up_on_node(to.node_id, slot)
        {
            Transfer::Fill
        } else {
            Transfer::Copy
        }
    }

    /// How `to` takes every one of `slots` in; `None` for a mix, which the plan never makes.
    fn of(context: &Context, to: ShardRef, slots: &[u32]) -> Option<Transfer> {
        let first = Transfer::of_slot(context, to, *slots.first()?);
        slots
            .iter()
            .all(|&slot| Transfer::of_slot(context, to, slot) == first)
            .then_some(first)
    }
}

enum State {
    /// Waiting for the map to name the target a backup of every slot (the fill's
    /// primary reports it in sync), then for the source to have that map.
    Filling {
        watch: Token,
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
    /// Installing the committed map on `[source, target][next]`.
    Installing {
        call: Token,
        next: usize,
        map: SlotMap,
        bytes: u64,
    },
    /// Sending the abort to `[source, target][next]`.
    Aborting {
        call: Token,
        next: usize,
        map_epoch: u64,
        reason: String,
    },
}

pub(super) struct Step {
    from: ShardRef,
    to: ShardRef,
    /// The incarnations of source and target when the step began: a node that joins
    /// again meanwhile is a new process with empty memory, which holds neither the
    /// source's slots nor the target's import.
    incarnations: [u64; 2],
    slots: Vec<u32>,
    transfer: Transfer,
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
        let transfer = Transfer::of(context, to, slots)
            .ok_or_else(|| Outcome::Failed("a step mixes slots its target backs up and slots it does not".into()))?;
        let incarnation = |node_id| membership.member(node_id).map_or(0, |member| member.incarnation);
        let mut step = Step {
            from,
            to,
            incarnations: [incarnation(from.node_id), incarnation(to.node_id)],
            slots: slots.to_vec(),
            transfer,
            addresses: [source.to_string(), target.to_string()],
            migration_id: 0,
            started_ms: context.now_ms,
            state: State::ReservingIds { persist: Token(0) },
        };
        if transfer == Transfer::Fill {
            step.fill(context);
        } else {
            step.begin(context)?;
        }
        Ok(step)
    }

    /// Orders the fill of the target and watches it: the slots are served meanwhile.
    fn fill(&mut self, context: &mut Context) {
        context.effects.push(super::Effect::OrderFill {
            from: self.from,
            to: self.to,
            slots: self.slots.clone(),
        });
        let watch = context.timer(context.config.watch_interval_ms);
        self.state = State::Filling { watch };
    }

    /// A look at the fill: once the map names the target a backup of every slot and the
    /// source reports having that map (it checks the map before it hands over), the
    /// step goes on as a hand-over. Source or target silent or restarted, or the fill
    /// too slow: the step ends here, nothing frozen and nothing to abort (the fill
    /// order goes with the next step's or the plan's end).
    fn on_fill_watch(&mut self, context: &mut Context) -> Option<Outcome> {
        let membership = context.membership;
        if let Err(outcome) = check_heard_from(self.from, self.to, membership, context.now_ms) {
            return Some(outcome);
        }
        if let Err(reason) = self.check_same_processes(membership) {
            return Some(Outcome::Failed(reason));
        }
        let named = self.slots.iter().all(|&slot| membership.backs_up(self.to, slot));
        if named && membership.reported_epoch(self.from.node_id) >= membership.epoch() {
            self.transfer = Transfer::HandOver;
            return self.begin(context).err();
        }
        let waited_ms = context.now_ms.saturating_sub(self.started_ms);
        if waited_ms > context.config.migrate_out_timeout_ms {
            return Some(Outcome::Failed(format!(
                "the fill of {} slots onto node {} was not in sync within {} ms",
                self.slots.len(),
                self.to.node_id,
                context.config.migrate_out_timeout_ms
            )));
        }
        self.state = State::Filling {
            watch: context.timer(context.config.watch_interval_ms),
        };
        None
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
            State::Filling { .. } | State::ReservingIds { .. } | State::Aborting { .. }
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
        let order = match self.transfer {
            Transfer::Copy => NodeCall::MigrateOut {
                migration_id: self.migration_id,
                slots: self.slots.clone(),
                target_address: self.addresses[1].clone(),
            },
            // A fill is prepared once it landed, as a hand-over.
            Transfer::Fill | Transfer::HandOver => NodeCall::HandOver {
                migration_id: self.migration_id,
                slots: self.slots.clone(),
                target: ShardProcessRef {
                    node_id: self.to.node_id,
                    shard_id: self.to.shard_id,
                    incarnation: self.incarnations[1],
                },
            },
        };
        let call = context.call(&self.addresses[0], order, context.config.migrate_out_timeout_ms);
        let watch = context.timer(context.config.watch_interval_ms);
        self.state = State::Preparing { call, watch };
        Ok(())
    }

    /// Feeds one event; `Some` once the step is over.
    pub(super) fn handle(&mut self, event: &Event, context: &mut Context) -> Option<Outcome> {
        let result = match (&self.state, event) {
            (State::Filling { watch }, Event::TimerFired { token }) if token == watch => {
                return self.on_fill_watch(context);
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
            return Err(format!("node {node_id} went silent during the step"));
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
                "slot {slot} left node {} during the step (failed over?)",
                self.from.node_id
            ));
        }
        // The commit point: once the new map is on disk, the target owns the slots.
        let change = match self.transfer {
            Transfer::Copy => Change::CommitMove {
                slots: self.slots.clone(),
                to: self.to,
            },
            Transfer::Fill | Transfer::HandOver => {
                // A target the map stopped naming a backup (and which may have dropped
                // its copy) must not lead the slots.
                if let Some(slot) = self
                    .slots
                    .iter()
                    .find(|&&slot| !context.membership.backs_up(self.to, slot))
                {
                    return Err(format!("the target no longer backs up slot {slot}"));
                }
                Change::CommitHandOver {
                    slots: self.slots.clone(),
                    from: self.from,
                    to: self.to,
                }
            }
        };
        let persist = context.persist(change);
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
                    "{role} node {node_id} restarted during the step (incarnation {began}, now {now})"
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
            bytes,
        };
        Ok(())
    }

    fn install(&self, next: usize, map: &SlotMap, context: &mut Context) -> Token {
        let timeout_ms = context.config.node_call_timeout_ms;
        context.call(&self.addresses[next], NodeCall::InstallMap(map.clone()), timeout_ms)
    }

    fn on_installed(&mut self, result: &Result<Answer, String>, context: &mut Context) -> Option<Outcome> {
        let State::Installing { next, map, bytes, .. } = &self.state else {
            return None;
        };
        // The node fetches the map with its next heartbeat instead.
        self.report_install_failure(*next, result, context);
        if *next == 0 {
            let (map, bytes) = (map.clone(), *bytes);
            let call = self.install(1, &map, context);
            self.state = State::Installing {
                call,
                next: 1,
                map,
                bytes,
            };
            return None;
        }
        let bytes = *bytes;
        context.effects.push(super::Effect::BroadcastMap);
        context.report(Report::StepMoved {
            slots: self.slots.len(),
            bytes,
            elapsed_ms: context.now_ms.saturating_sub(self.started_ms),
        });
        Some(Outcome::Committed)
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
