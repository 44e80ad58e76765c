//! The seed's scenario (nodes joining, rebalances, a drain, crashes and pauses, the calm
//! after the faults) and how each fault and operator action is carried out.

use engram_control::membership::{Membership, LIVENESS_TIMEOUT_MS_MIN};
use engram_control::orchestrator::{Config, NodeCall};

use super::*;
use crate::control::{Control, Io};
use crate::net::{Body, Endpoint, Request};
use crate::node::Node;

impl World {
    pub(super) fn schedule_scenario(&mut self) {
        self.schedule(0, Event::Fault(Fault::StartControl));
        self.schedule(0, Event::Fault(Fault::StartNode(0)));
        for node in 1..NODES {
            let at = self.rng.between(100, 1_500);
            self.schedule(at, Event::Fault(Fault::StartNode(node)));
        }
        for client in 0..CLIENTS {
            let at = self.rng.between(200, 600);
            let actions = self.clients[client].start(at);
            self.apply(Endpoint::Client(client), 1, actions);
        }
        let first = self.rng.between(800, 2_500);
        self.schedule(first, Event::Fault(Fault::Rebalance));
        let second = self.rng.between(3_000, 5_500);
        self.schedule(second, Event::Fault(Fault::Rebalance));
        if self.rng.chance(250) {
            let (at, node) = (self.rng.between(2_500, 5_500), self.rng.below(NODES as u64) as usize);
            self.schedule(at, Event::Fault(Fault::Drain(node)));
        }
        self.schedule_crashes();
        self.schedule(FAULTS_END_MS, Event::Fault(Fault::Calm));
        self.schedule(FAULTS_END_MS + 300, Event::Fault(Fault::Rebalance));
        self.schedule(CLIENTS_END_MS, Event::Fault(Fault::StopClients));
    }

    pub(super) fn schedule_crashes(&mut self) {
        for _ in 0..self.rng.below(3) {
            let (at, node) = (
                self.rng.between(800, FAULTS_END_MS),
                self.rng.below(NODES as u64) as usize,
            );
            let duration = self.rng.between(200, 4_000);
            self.schedule(at, Event::Fault(Fault::PauseNode(node, duration)));
        }
        if self.rng.chance(350) {
            let (at, node) = (
                self.rng.between(800, FAULTS_END_MS),
                self.rng.below(NODES as u64) as usize,
            );
            self.schedule(at, Event::Fault(Fault::CrashNode(node)));
        }
        for _ in 0..self.rng.below(3) {
            let at = self.rng.between(400, FAULTS_END_MS);
            self.schedule(at, Event::Fault(Fault::CrashControl));
        }
    }

    /// Crashes the receiver of a migration message soon after, now and then.
    pub(super) fn maybe_crash_in_migration(&mut self, to: Endpoint, body: &Body) {
        let Endpoint::Shard(node, _) = to else { return };
        let migration = matches!(
            body,
            Body::Request(Request::MigrateIn(_) | Request::Node(NodeCall::MigrateOut { .. }))
        );
        if !migration || self.calm || self.chosen_crashes >= CHOSEN_CRASHES_MAX {
            return;
        }
        if self.rng.chance(self.network.crash_in_migration) {
            self.chosen_crashes += 1;
            let after = self.rng.between(0, 30);
            self.schedule(after, Event::Fault(Fault::CrashNode(node)));
        }
    }

    pub(super) fn fault(&mut self, fault: Fault) {
        match fault {
            Fault::StartControl => self.start_control(),
            Fault::CrashControl => self.crash_control(),
            Fault::StartNode(node) => self.start_node(node),
            Fault::CrashNode(node) => self.crash_node(node),
            Fault::PauseNode(node, duration) => {
                let slot = &mut self.nodes[node];
                if slot.process.is_some() && !slot.paused && !self.calm {
                    slot.paused = true;
                    self.summary.node_pauses += 1;
                    self.schedule(duration, Event::Fault(Fault::ResumeNode(node)));
                }
            }
            Fault::ResumeNode(node) => self.resume(node),
            Fault::Rebalance => self.operator(None),
            Fault::Drain(node) => self.operator(Some(node)),
            Fault::Calm => {
                self.calm = true;
                self.disk.fail_per_mille = 0;
                self.disk.crash_per_mille = 0;
                (0..NODES).for_each(|node| self.resume(node));
            }
            Fault::StopClients => self.clients.iter_mut().for_each(|client| client.stopped = true),
        }
    }

    pub(super) fn start_control(&mut self) {
        if self.control.is_some() {
            return;
        }
        self.control_generation += 1;
        let generation = self.control_generation;
        let config = Config {
            slots_per_step: SLOTS_PER_STEP,
            migrate_out_timeout_ms: MIGRATE_OUT_TIMEOUT_MS,
            ..Config::default()
        };
        let mut io = Io::new(self.now, &mut self.disk, &mut self.rng);
        let control = Control::start(generation, config, LIVENESS_TIMEOUT_MS_MIN, self.bug, &mut io);
        let actions = io.actions;
        self.control = Some(control);
        self.apply(Endpoint::Control, generation, actions);
    }

    pub(super) fn crash_control(&mut self) {
        if self.control.take().is_some() {
            self.summary.control_crashes += 1;
            let after = self.rng.between(100, 3_000);
            self.schedule(after, Event::Fault(Fault::StartControl));
        }
    }

    pub(super) fn start_node(&mut self, node: usize) {
        if self.nodes[node].process.is_some() {
            return;
        }
        let boot_id = self.rng.next_u64();
        let slot = &mut self.nodes[node];
        slot.generation += 1;
        slot.last_epoch = 0;
        let (process, actions) = Node::start(node, slot.shard_count, slot.generation, boot_id, self.now, self.bug);
        let generation = slot.generation;
        slot.process = Some(process);
        self.apply(Endpoint::Front(node), generation, actions);
    }

    pub(super) fn crash_node(&mut self, node: usize) {
        let slot = &mut self.nodes[node];
        if slot.process.take().is_some() {
            slot.paused = false;
            slot.deferred.clear();
            self.summary.node_crashes += 1;
            let after = self.rng.between(20, 2_500);
            self.schedule(after, Event::Fault(Fault::StartNode(node)));
        }
    }

    pub(super) fn resume(&mut self, node: usize) {
        if std::mem::take(&mut self.nodes[node].paused) {
            self.release(node);
        }
    }

    /// Hands a node what waited for it, once it runs and has joined.
    pub(super) fn release(&mut self, node: usize) {
        let slot = &self.nodes[node];
        let joined = slot.process.as_ref().is_some_and(|process| process.routing.is_some());
        if slot.paused || !joined || slot.deferred.is_empty() {
            return;
        }
        for event in std::mem::take(&mut self.nodes[node].deferred) {
            self.schedule(0, event);
        }
    }

    /// `engram cluster rebalance`, or `drain` of a node.
    pub(super) fn operator(&mut self, drain: Option<usize>) {
        let Some(control) = &self.control else { return };
        let drain_id = drain.and_then(|node| node_id_of(&control.membership, node));
        if drain.is_some() && drain_id.is_none() {
            return;
        }
        let outcome = self.with_control(|control, io| control.rebalance(drain_id, io));
        if let Some(outcome) = outcome {
            self.trace(format!("  rebalance: {outcome:?}"));
        }
    }
}

/// The node id the control plane gave node `node` (by its front address).
fn node_id_of(membership: &Membership, node: usize) -> Option<u64> {
    let address = crate::net::front_address(node);
    membership
        .members()
        .iter()
        .find(|member| member.front_address == address)
        .map(|member| member.node_id)
}
