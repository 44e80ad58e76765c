//! A data node (one shard) around the real store and the real replication state
//! machines, doing what the shard's shell does: serve a slot only as its primary under
//! a lease from the control plane, hold answers until the backups applied what decided
//! them, ship batches, resend what was not applied, and hand a group over to its backup
//! (frozen until the backup holds every change, as `shard/hand_over.rs` does).

use std::collections::{BTreeMap, HashMap};

use engram_proto::limits::incarnation_version_floor;
use engram_proto::{DataRequest, Response};
use engram_server::replication::{Backup, Primary, PrimaryEvent, ShardProcess, Ticket, Wanted};
use engram_server::store::{slot_of_stored_key, Origin, Outcome, Store};

use crate::model::{group_of_slot, group_slots, Body, Endpoint, Message, Process, SimMap, GROUPS};
use crate::Bug;

/// A heartbeat's answer later than this does not extend the lease (as the node's
/// control call times out).
pub const CALL_TIMEOUT_MS: u64 = 200;
/// Silence after which the control plane declares a node dead.
pub const LIVENESS_MS: u64 = 1_000;
/// How long past a heartbeat's sending the node may serve on its answer: the lease.
/// Half the margin the control plane leaves, against clocks that run at different rates.
pub const LEASE_MS: u64 = (LIVENESS_MS - CALL_TIMEOUT_MS) / 2;
pub const HEARTBEAT_MS: u64 = 100;
/// How often unapplied batches are sent again (a real link resends after a reconnect).
pub const RESEND_MS: u64 = 150;
const MEMORY_BYTES: u64 = 1 << 30;

pub struct Node {
    pub me: Process,
    pub store: Store,
    primary: Primary,
    backup: Backup,
    pub map: SimMap,
    lease_until: u64,
    /// A backup named this node deposed while its map was at this epoch: it serves
    /// nothing until it installs a newer one.
    deposed_at_epoch: Option<u64>,
    repairs: Vec<(usize, Process)>,
    /// The hand-over this node holds a group frozen for: (id, group, target).
    frozen: Option<(u64, usize, Process)>,
    /// Held answers: ticket → (group, client, request id, answer).
    held: HashMap<Ticket, (usize, usize, u64, Response)>,
    next_ticket: Ticket,
    bug: Option<Bug>,
}

impl Node {
    pub fn start(me: Process, map: SimMap, bug: Option<Bug>) -> Node {
        let mut store = Store::new(MEMORY_BYTES, me.incarnation);
        store.raise_version_floor(incarnation_version_floor(me.incarnation));
        Node {
            me,
            store,
            primary: Primary::new(me.shard()),
            backup: Backup::new(me.incarnation),
            map,
            lease_until: 0,
            deposed_at_epoch: None,
            repairs: Vec::new(),
            frozen: None,
            held: HashMap::new(),
            next_ticket: 1,
            bug,
        }
    }

    /// Whether this process serves `group` at `now`: its map names it primary, its
    /// lease holds, no backup has told it that it was deposed, and it is not handing
    /// the group over.
    pub fn serving(&self, group: usize, now: u64) -> bool {
        let leased = now < self.lease_until || self.bug == Some(Bug::NoLease);
        let deposed = self.deposed_at_epoch.is_some_and(|epoch| self.map.epoch <= epoch);
        let frozen = self.frozen.is_some_and(|(_, frozen, _)| frozen == group) && self.bug != Some(Bug::ServeFrozen);
        leased && !deposed && !frozen && self.map.primary[group] == Some(self.me)
    }

    pub fn heartbeat(&self, now: u64) -> Message {
        let hand_over = self.frozen.map(|(id, group, to)| {
            let prepared = self.primary.may_hand_over(to.shard(), &group_slots(group));
            (id, prepared)
        });
        Message {
            from: Endpoint::Node(self.me.node),
            to: Endpoint::Control,
            body: Body::Heartbeat {
                incarnation: self.me.incarnation,
                sent_at: now,
                hand_over,
            },
        }
    }

    /// Sends again every batch a backup has not applied.
    pub fn resend(&self, out: &mut Vec<Message>) {
        for backup in self.backups() {
            for batch in self.primary.unacked(backup.shard()) {
                out.push(self.replica_message(backup, batch));
            }
        }
    }

    pub fn receive(&mut self, now: u64, from: Endpoint, body: Body, out: &mut Vec<Message>, trace: &mut Vec<String>) {
        match body {
            Body::HeartbeatAck {
                incarnation,
                sent_at,
                map,
                repairs,
                abort_hand_over,
            } if incarnation == self.me.incarnation => {
                if map.epoch >= self.map.epoch {
                    self.install(map, repairs, out);
                }
                if abort_hand_over.is_some() && abort_hand_over == self.frozen.map(|(id, _, _)| id) {
                    self.frozen = None;
                }
                if now.saturating_sub(sent_at) <= CALL_TIMEOUT_MS {
                    self.lease_until = self.lease_until.max(sent_at + LEASE_MS);
                }
            }
            Body::Request { req_id, request } => self.serve(now, from, req_id, request, out),
            // As the shard checks: it leads the group, and its map names the target an
            // in-sync backup of it.
            Body::HandOver { id, group, to }
                if self.frozen.is_none() && self.serving(group, now) && self.map.backups[group].contains(&to) =>
            {
                trace.push(format!("{:?} freezes group {group} for hand-over {id}", self.me));
                self.frozen = Some((id, group, to));
            }
            Body::Replica { from: primary, batch } => {
                let answer = self.backup.receive(batch, &self.map, &mut self.store, now);
                out.push(Message {
                    from: Endpoint::Node(self.me.node),
                    to: Endpoint::Node(primary.node),
                    body: Body::ReplicaAnswer {
                        to: primary,
                        from: self.me,
                        answer,
                    },
                });
            }
            Body::ReplicaAnswer { to, from, answer } if to == self.me => {
                for event in self.primary.on_answer(from.shard(), answer) {
                    self.on_event(from, event, out, trace);
                }
            }
            _ => {}
        }
        self.flush(now, out);
    }

    fn serve(&mut self, now: u64, from: Endpoint, req_id: u64, request: DataRequest, out: &mut Vec<Message>) {
        let Endpoint::Client(client) = from else { return };
        let key = request.command.key().to_vec();
        let Some(slot) = slot_of_stored_key(&key) else { return };
        if !self.serving(group_of_slot(slot), now) {
            out.push(reply(self.me.node, client, req_id, None));
            return;
        }
        let client_id = client as u64 + 1;
        let response = match self.store.apply(client_id, &request, now) {
            Outcome::Ready(response) => response,
            Outcome::Parked(_) => unreachable!("counters never park"),
        };
        if request.command.is_mutation() {
            self.primary.changed_key(&key);
            let origin = Origin {
                client_id,
                op_id: request.op_id,
            };
            self.primary.changed_operation(&key, origin);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if self.bug != Some(Bug::AnswerBeforeBackup) && self.primary.hold(ticket, &key) {
            self.held
                .insert(ticket, (group_of_slot(slot), client, req_id, response));
        } else {
            out.push(reply(self.me.node, client, req_id, Some(response)));
        }
    }

    fn on_event(&mut self, backup: Process, event: PrimaryEvent, out: &mut Vec<Message>, trace: &mut Vec<String>) {
        match event {
            PrimaryEvent::Released(tickets) => self.release(tickets, out),
            PrimaryEvent::InSync(_, slots) => {
                let groups = (0..GROUPS)
                    .filter(|group| group_slots(*group).iter().all(|slot| slots.contains(slot)))
                    .collect();
                out.push(Message {
                    from: Endpoint::Node(self.me.node),
                    to: Endpoint::Control,
                    body: Body::InSync {
                        primary: self.me,
                        backup,
                        groups,
                    },
                });
            }
            PrimaryEvent::Deposed(_) => {
                trace.push(format!("{:?} deposed at epoch {}", self.me, self.map.epoch));
                self.deposed_at_epoch = Some(self.map.epoch);
            }
            // The resend timer sends them again.
            PrimaryEvent::Resend(_) => {}
            PrimaryEvent::Broken(backup, reason) => {
                trace.push(format!("{:?} stream to {backup:?} stalls: {reason}", self.me));
            }
        }
    }

    /// Answers what no backup holds back any more: as it is while this process still
    /// leads the group, else "ask elsewhere" (the promoted backup may not hold it), as the
    /// shard does.
    fn release(&mut self, tickets: Vec<Ticket>, out: &mut Vec<Message>) {
        for ticket in tickets {
            if let Some((group, client, req_id, response)) = self.held.remove(&ticket) {
                let leads = self.map.primary[group] == Some(self.me) || self.bug == Some(Bug::ReleaseAfterDeposed);
                out.push(reply(self.me.node, client, req_id, leads.then_some(response)));
            }
        }
    }

    /// Installs a newer map (or the same with other repairs) and runs the streams it
    /// asks for.
    fn install(&mut self, map: SimMap, repairs: Vec<(usize, Process)>, out: &mut Vec<Message>) {
        self.map = map;
        self.repairs = repairs;
        // A map that no longer names it primary of the frozen group committed the
        // hand-over (or a failover overtook it): the group is not its to unfreeze.
        if self
            .frozen
            .is_some_and(|(_, group, _)| self.map.primary[group] != Some(self.me))
        {
            self.frozen = None;
        }
        let mut wanted: BTreeMap<ShardProcess, Wanted> = BTreeMap::new();
        for group in 0..GROUPS {
            if self.map.primary[group] != Some(self.me) {
                continue;
            }
            let in_sync = self.map.backups[group].iter().map(|backup| (*backup, true));
            let filling = self
                .repairs
                .iter()
                .filter(|(repaired, _)| *repaired == group)
                .map(|(_, backup)| (*backup, false));
            for (backup, required) in in_sync.chain(filling) {
                let entry = wanted.entry(backup.shard()).or_default();
                for slot in group_slots(group).iter() {
                    entry.slots.insert(slot);
                    if required {
                        entry.named.insert(slot);
                    }
                }
            }
        }
        let released = self.primary.configure(self.map.epoch, wanted, &self.store);
        self.release(released, out);
    }

    fn backups(&self) -> Vec<Process> {
        let mut backups: Vec<Process> = (0..GROUPS)
            .filter(|group| self.map.primary[*group] == Some(self.me))
            .flat_map(|group| self.map.backups[group].iter().copied())
            .chain(self.repairs.iter().map(|(_, backup)| *backup))
            .collect();
        backups.sort_unstable();
        backups.dedup();
        backups
    }

    fn flush(&mut self, now: u64, out: &mut Vec<Message>) {
        for (backup, batch) in self.primary.poll_batches(&self.store, now) {
            let backup = Process {
                node: backup.node_id as usize - 1,
                incarnation: backup.incarnation,
            };
            out.push(self.replica_message(backup, batch));
        }
    }

    fn replica_message(&self, backup: Process, batch: engram_proto::ReplicaBatch) -> Message {
        Message {
            from: Endpoint::Node(self.me.node),
            to: Endpoint::Node(backup.node),
            body: Body::Replica { from: self.me, batch },
        }
    }
}

fn reply(node: usize, client: usize, req_id: u64, response: Option<Response>) -> Message {
    Message {
        from: Endpoint::Node(node),
        to: Endpoint::Client(client),
        body: Body::Reply { req_id, response },
    }
}
