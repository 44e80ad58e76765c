//! A plan's run: its moves grouped by (source, target), cut into steps of at most
//! `slots_per_step` slots that the target takes in the same way (a hand-over, a fill
//! then a hand-over, or a copy), run one after the other.

use engram_proto::MigrationStatus;

use super::step::{Outcome, Step, Transfer};
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

    /// Where the step starting at `offset` ends: slots that the target takes in the
    /// same way ([`Transfer::of_slot`]), at most as many as a step of that way moves.
    fn step_end(&self, slots: &[u32], to: ShardRef, context: &Context) -> usize {
        let first = Transfer::of_slot(context, to, slots[self.offset]);
        let per_step = match first {
            Transfer::Copy => context.config.slots_per_step,
            Transfer::Fill | Transfer::HandOver => context.config.slots_per_hand_over,
        };
        let limit = slots.len().min(self.offset + per_step);
        (self.offset + 1..limit)
            .find(|&index| Transfer::of_slot(context, to, slots[index]) != first)
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
