//! A plan's run: its moves grouped by (source, target), cut into steps of at most
//! `slots_per_step` slots that the target backs up all (a hand-over) or none (a copy),
//! run one after the other.

use engram_proto::MigrationStatus;

use super::step::{Outcome, Step};
use super::{Context, Event, Report};
use crate::planner::{group_moves, Move, ShardRef};

pub(super) struct PlanRun {
    groups: Vec<(ShardRef, ShardRef, Vec<u32>)>,
    group: usize,
    /// Slots of the current group already handed to a step.
    offset: usize,
    moved: usize,
    total: usize,
    failure: Option<String>,
    started_ms: u64,
    step: Option<Step>,
}

impl PlanRun {
    pub(super) fn new(moves: &[Move], now_ms: u64) -> PlanRun {
        PlanRun {
            groups: group_moves(moves),
            group: 0,
            offset: 0,
            moved: 0,
            total: moves.len(),
            failure: None,
            started_ms: now_ms,
            step: None,
        }
    }

    pub(super) fn running(&self) -> Option<MigrationStatus> {
        self.step.as_ref().and_then(Step::status)
    }

    /// Feeds one event to the running step; returns whether the plan is over.
    pub(super) fn handle(&mut self, event: &Event, context: &mut Context) -> bool {
        let Some(step) = self.step.as_mut() else {
            return false;
        };
        let Some(outcome) = step.handle(event, context) else {
            return false;
        };
        let slots = step.slots();
        self.step = None;
        self.settle(outcome, slots, context);
        self.advance(context)
    }

    /// Starts the next step (skipping those that end at once); returns whether the plan
    /// is over.
    pub(super) fn advance(&mut self, context: &mut Context) -> bool {
        loop {
            let Some((from, to, slots)) = self.groups.get(self.group) else {
                self.finish(context);
                return true;
            };
            if self.offset >= slots.len() {
                self.group += 1;
                self.offset = 0;
                continue;
            }
            let end = self.step_end(slots, *to, context);
            let (from, to, chunk) = (*from, *to, slots[self.offset..end].to_vec());
            self.offset = end;
            match Step::start(from, to, &chunk, context) {
                Ok(step) => {
                    self.step = Some(step);
                    return false;
                }
                Err(outcome) => self.settle(outcome, chunk.len(), context),
            }
        }
    }

    /// Where the step starting at `offset` ends: at most `slots_per_step` slots, all
    /// backed up by the target (a hand-over) or none (a copy).
    fn step_end(&self, slots: &[u32], to: ShardRef, context: &Context) -> usize {
        let limit = slots.len().min(self.offset + context.config.slots_per_step);
        let backed_up = |slot: u32| context.membership.backs_up(to, slot);
        let first = backed_up(slots[self.offset]);
        (self.offset + 1..limit)
            .find(|&index| backed_up(slots[index]) != first)
            .unwrap_or(limit)
    }

    fn settle(&mut self, outcome: Outcome, slots: usize, context: &mut Context) {
        match outcome {
            Outcome::Committed => self.moved += slots,
            // Nothing can be copied off a dead node; the rest of the plan does not
            // depend on it.
            Outcome::SourceDead(reason) => {
                context.report(Report::SkippingDeadSource { reason: reason.clone() });
                self.failure = Some(reason);
                self.group += 1;
                self.offset = 0;
            }
            Outcome::Failed(reason) => {
                self.failure = Some(reason);
                self.group = self.groups.len();
            }
        }
    }

    fn finish(&mut self, context: &mut Context) {
        context.report(Report::PlanEnded {
            moved: self.moved,
            total: self.total,
            elapsed_ms: context.now_ms.saturating_sub(self.started_ms),
            failure: self.failure.take(),
        });
    }
}
