//! The start-up reconcile: the persisted map installed on every member's shards, one
//! after the other, each followed by `MigrateAbort{0}` (abort whatever that map did not
//! commit). The abort goes only after the shard holds the persisted map: a shard behind
//! it might otherwise unfreeze slots whose migration committed (it would refuse anyway:
//! the abort names the epoch it was decided under).

use engram_proto::SlotMap;

use super::{Context, Event, NodeCall, Report, Token};

enum Stage {
    Install,
    Abort,
}

pub(super) struct Reconcile {
    map: SlotMap,
    addresses: Vec<String>,
    next: usize,
    awaiting: Token,
    stage: Stage,
}

impl Reconcile {
    /// Starts with the first shard; `None` when there is none.
    pub(super) fn start(context: &mut Context) -> Option<Reconcile> {
        let membership = context.membership;
        let addresses: Vec<String> = membership
            .members()
            .iter()
            .flat_map(|member| member.shard_addresses.iter().cloned())
            .collect();
        let mut reconcile = Reconcile {
            map: membership.map().clone(),
            addresses,
            next: 0,
            awaiting: Token(0),
            stage: Stage::Install,
        };
        (!reconcile.install_next(context)).then_some(reconcile)
    }

    /// Installs the map on the next shard; returns whether none is left.
    fn install_next(&mut self, context: &mut Context) -> bool {
        let Some(address) = self.addresses.get(self.next) else {
            return true;
        };
        let timeout_ms = context.config.node_call_timeout_ms;
        self.awaiting = context.call(address, NodeCall::InstallMap(self.map.clone()), timeout_ms);
        self.stage = Stage::Install;
        false
    }

    /// Feeds one event; returns whether the reconcile is over.
    pub(super) fn handle(&mut self, event: &Event, context: &mut Context) -> bool {
        let Event::Answered { token, result } = event else {
            return false;
        };
        if *token != self.awaiting {
            return false;
        }
        let address = &self.addresses[self.next];
        match (&self.stage, result) {
            (Stage::Install, Ok(_)) => {
                let abort = NodeCall::MigrateAbort {
                    migration_id: 0,
                    map_epoch: self.map.epoch,
                };
                let timeout_ms = context.config.node_call_timeout_ms;
                self.awaiting = context.call(address, abort, timeout_ms);
                self.stage = Stage::Abort;
                return false;
            }
            (_, Err(error)) => {
                // Its heartbeats settle it once it is back.
                context.report(Report::NotReconciled {
                    address: address.clone(),
                    error: error.clone(),
                });
            }
            (Stage::Abort, Ok(_)) => {}
        }
        self.next += 1;
        self.install_next(context)
    }
}
