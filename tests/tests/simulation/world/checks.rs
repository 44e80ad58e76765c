//! The invariants: those checked after every step (at most one server per slot, and
//! only the persisted owner; epochs only grow; no two acknowledged increments of a
//! counter saw the same value) and those checked once the cluster settled (every
//! counter holds what was acknowledged, every slot is served again unless lost, nothing
//! left frozen or open).

use std::collections::BTreeSet;

use engram_proto::{DataCommand, Response};

use super::*;
use crate::client::Learned;
use crate::node::stored_key;
use engram_proto::CounterCommand;

/// What the clients learned about one key.
#[derive(Default)]
pub(super) struct Ledger {
    acked: u64,
    unknown: u64,
    values: BTreeSet<i64>,
}

impl World {
    /// Takes what a client learned into the ledger, checking it on the way.
    pub(super) fn learn(&mut self, client: usize) -> Result<(), Failure> {
        for learned in std::mem::take(&mut self.clients[client].learned) {
            match learned {
                Learned::Acked { key, op_id, value } => {
                    self.summary.acked += 1;
                    let ledger = &mut self.ledger[key];
                    ledger.acked += 1;
                    if !ledger.values.insert(value) {
                        let detail = format!(
                            "key {key}: op {op_id} of client {client} acknowledged value {value}, which another acknowledged increment saw"
                        );
                        return Err(self.failure("nothing acknowledged is lost or applied twice", detail));
                    }
                }
                Learned::Unknown { key, .. } => {
                    self.summary.unknown += 1;
                    self.ledger[key].unknown += 1;
                }
                Learned::Unexpected(what) => {
                    return Err(self.failure("answers are ones a correct cluster gives", what));
                }
            }
        }
        Ok(())
    }

    /// The shards (node, shard) that serve `slot` now.
    pub(super) fn servers(&self, slot: u32) -> Vec<(usize, u16)> {
        let mut servers = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(process) = node.process.as_ref().filter(|_| !node.paused) else {
                continue;
            };
            for shard in 0..process.shards.len() as u16 {
                if process.serves(shard, slot, self.now) {
                    servers.push((index, shard));
                }
            }
        }
        servers
    }

    /// The invariants that hold at every instant.
    pub(super) fn check_step(&mut self) -> Result<(), Failure> {
        for index in 0..self.keys.len() {
            let slot = self.keys[index].1;
            let servers = self.servers(slot);
            if servers.len() > 1 {
                let detail = format!("slot {slot} is served by {servers:?}");
                return Err(self.failure("at most one shard serves a slot", detail));
            }
            if let Some(&(node, shard)) = servers.first() {
                let persisted = self.disk.owners.get(index).copied().flatten();
                if persisted.map(|owner| (owner.node, owner.shard)) != Some((node, shard)) {
                    let detail =
                        format!("slot {slot} is served by n{node}s{shard}; the persisted map says {persisted:?}");
                    return Err(self.failure("only the persisted owner serves a slot", detail));
                }
            }
        }
        for (index, node) in self.nodes.iter_mut().enumerate() {
            let Some(epoch) = node
                .process
                .as_ref()
                .and_then(|process| process.routing.as_ref())
                .map(|r| r.epoch())
            else {
                continue;
            };
            if epoch < node.last_epoch {
                let detail = format!("n{index} went from epoch {} to {epoch}", node.last_epoch);
                return Err(self.failure("map epochs only grow at each node", detail));
            }
            node.last_epoch = epoch;
        }
        Ok(())
    }

    /// Once calm: every counter holds what was acknowledged, every slot is served
    /// again unless lost, and nothing is left frozen or open.
    pub(super) fn check_settled(&mut self) -> Result<(), Failure> {
        for index in 0..self.keys.len() {
            self.check_counter(index)?;
        }
        match &self.control {
            Some(control) if !control.orchestrator.is_busy() => {}
            _ => return Err(self.failure("the cluster settles", "the control plane is down or still busy".into())),
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let open: Vec<u64> = node
                .process
                .iter()
                .flat_map(|process| process.shards.iter().flat_map(|shard| shard.open_migrations()))
                .collect();
            if !open.is_empty() {
                let detail = format!("n{index} still holds migrations {open:?}");
                return Err(self.failure("the cluster settles", detail));
            }
        }
        Ok(())
    }

    pub(super) fn check_counter(&mut self, index: usize) -> Result<(), Failure> {
        let (key, slot) = self.keys[index].clone();
        let servers = self.servers(slot);
        let Some(&(node, shard)) = servers.first() else {
            if self.disk.owners[index].is_some_and(|owner| owner.lost) {
                self.summary.lost_keys += 1;
                return Ok(());
            }
            let detail = format!("slot {slot} is served by nobody and not lost");
            return Err(self.failure("every slot is served again once the cluster settles", detail));
        };
        let value = self.read(node, shard, &key);
        let ledger = &self.ledger[index];
        let highest = ledger.values.last().copied().unwrap_or(0);
        let acked = ledger.acked as i64;
        let possible = acked + ledger.unknown as i64;
        if value < acked || value > possible || value < highest {
            let detail = format!(
                "key {index} (slot {slot}) holds {value}: {acked} increments acknowledged (highest value {highest}), {} given up on",
                ledger.unknown
            );
            return Err(self.failure("nothing acknowledged is lost or applied twice", detail));
        }
        Ok(())
    }

    pub(super) fn read(&mut self, node: usize, shard: u16, key: &[u8]) -> i64 {
        let now = self.now;
        let Some(process) = self.nodes[node].process.as_mut() else {
            return -1;
        };
        let request = engram_proto::DataRequest {
            op_id: 0,
            completed_below_op_id: 0,
            command: DataCommand::from(CounterCommand::Get { key: stored_key(key) }),
        };
        match process.read(shard, &request, now) {
            Response::Counter { value } => value,
            _ => -1,
        }
    }
}
