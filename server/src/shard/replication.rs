//! The shard's side of replication: as a primary it notes what each request changed,
//! holds answers until the slot's backups applied the change, and runs one link task
//! per backup that ships batches one at a time; as a backup it applies the batches its
//! map allows. The decisions are `crate::replication`'s; this file moves them.
//!
//! A shard with no backups (a node alone, a cluster without replicas) pays one check
//! per request: `Primary::is_streaming`.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use engram_proto::{
    ErrorCode, FillOrder, InSyncReport, PeerProtocol, PeerRequest, PeerResponse, ReplicaAnswer, ReplicaBatch, Response,
    ShardProcessRef,
};

use super::Shard;
use crate::cluster::{Owner, Routing};
use crate::link::PeerLink;
use crate::notify::LocalNotify;
use crate::outbox::Destination;
use crate::replication::{Backup, Primary, PrimaryEvent, ShardProcess, Ticket, Wanted};
use crate::runtime::{self, TaskHandle};
use crate::store::{slot_of_stored_key, Completion, Origin};

/// How long one step of a replication link (connect, hand-shake, one batch) may take
/// before the link is dropped and made again.
pub const REPLICATION_PEER_TIMEOUT_MS: u64 = 2_000;
/// Pause before a replication link is made again after a failure or a refusal.
pub const REPLICATION_RETRY_MS: u64 = 50;

/// An answer waiting for backups, with its key's slot.
enum Held {
    Immediate(u32, Destination, Response),
    /// A parked request's answer, kept whole so it can be taken back if its asker is
    /// gone by the time it may leave.
    Completion(u32, Destination, Completion),
}

/// One backup's link task and its wake-up.
struct ReplicaLink {
    wake: Rc<LocalNotify>,
    stopped: Rc<Cell<bool>>,
    task: Option<TaskHandle>,
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        self.stopped.set(true);
        self.wake.notify();
        if let Some(task) = &self.task {
            task.cancel();
        }
    }
}

pub(super) struct Replication {
    primary: Primary,
    backup: Backup,
    held: HashMap<Ticket, Held>,
    next_ticket: Ticket,
    links: BTreeMap<ShardProcess, ReplicaLink>,
    /// The backups the current map asks for, at their shard ports; the driver task
    /// makes `links` follow it (a map arrives where no `Rc` of the shard is at hand).
    wanted_links: BTreeMap<ShardProcess, String>,
    links_changed: Rc<LocalNotify>,
    /// A backup named another primary for this shard's slots while its map was at this
    /// epoch: serve nothing until a newer map.
    deposed_at_epoch: Option<u64>,
    /// The generation of the node's fill orders the streams follow.
    fills_seen: u64,
}

impl Replication {
    pub(super) fn new(me: ShardProcess) -> Replication {
        Replication {
            primary: Primary::new(me),
            backup: Backup::new(me.incarnation),
            held: HashMap::new(),
            next_ticket: 1,
            links: BTreeMap::new(),
            wanted_links: BTreeMap::new(),
            links_changed: Rc::new(LocalNotify::default()),
            deposed_at_epoch: None,
            fills_seen: 0,
        }
    }
}

impl Shard {
    /// A request or a woken waiter changed `key` (an operation `origin` was recorded):
    /// the change must reach the backups of its slot.
    pub(super) fn note_change(&self, key: &[u8], origin: Option<Origin>) {
        let mut replication = self.replication.borrow_mut();
        if !replication.primary.is_streaming() {
            return;
        }
        replication.primary.changed_key(key);
        if let Some(origin) = origin {
            replication.primary.changed_operation(key, origin);
        }
    }

    /// Holds an answer given at once if its key has a change the backups have not
    /// applied; gives it back to deliver now otherwise.
    pub(super) fn hold_answer(
        &self,
        key: Option<&[u8]>,
        destination: Destination,
        response: Response,
    ) -> Option<(Destination, Response)> {
        let Some((ticket, slot)) = self.ticket_for(key) else {
            return Some((destination, response));
        };
        let mut replication = self.replication.borrow_mut();
        replication
            .held
            .insert(ticket, Held::Immediate(slot, destination, response));
        None
    }

    /// [`Shard::hold_answer`] for a parked request's answer.
    pub(super) fn hold_completion(
        &self,
        destination: Destination,
        completion: Completion,
    ) -> Option<(Destination, Completion)> {
        let Some((ticket, slot)) = self.ticket_for(Some(completion.key())) else {
            return Some((destination, completion));
        };
        let mut replication = self.replication.borrow_mut();
        replication
            .held
            .insert(ticket, Held::Completion(slot, destination, completion));
        None
    }

    fn ticket_for(&self, key: Option<&[u8]>) -> Option<(Ticket, u32)> {
        let key = key?;
        let mut replication = self.replication.borrow_mut();
        if !replication.primary.is_streaming() {
            return None;
        }
        let slot = slot_of_stored_key(key)?;
        let ticket = replication.next_ticket;
        if !replication.primary.hold(ticket, key) {
            return None;
        }
        replication.next_ticket += 1;
        Some((ticket, slot))
    }

    /// Makes the replication figures visible to metrics.
    pub(super) fn publish_replication(&self, own: &crate::stats::ShardStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let replication = self.replication.borrow();
        own.held_answers.store(replication.held.len() as u64, Relaxed);
        own.replica_streams
            .store(replication.primary.backups().count() as u64, Relaxed);
        let lag = replication.primary.lag().map(|(_, lag)| lag).max().unwrap_or(0);
        own.replication_lag_batches.store(lag, Relaxed);
    }

    /// Whether `routing`'s map names this shard a backup of `slot`.
    pub(super) fn backs_up(&self, routing: &Routing, slot: u32) -> bool {
        routing.map.backups_of(slot).iter().any(|&index| {
            routing
                .shard_process(index)
                .is_some_and(|backup| backup.node_id == self.node_id() && backup.shard_id == self.shard_id as u16)
        })
    }

    /// Drops this shard's copy of the slots `previous` named it a backup of and
    /// `routing` does not (a backup moved to another shard or trimmed): no failover promotes that copy any more, and kept it would
    /// hold memory for nothing. Late batches of a stream still covering them are
    /// applied without them. Slots it owns now, lost slots and imports keep theirs. A
    /// stream opened under this map cannot be followed yet (a backup refuses a stream
    /// opened under a newer map than its own), so nothing current is dropped.
    pub(super) fn drop_copies_no_longer_backed_up(&self, previous: &Routing, routing: &Routing) {
        if previous.map.backups.is_empty() {
            return;
        }
        let me = Owner::Local(self.shard_id as u16);
        let released: Vec<bool> = {
            let incoming = self.incoming.borrow();
            (0..engram_proto::limits::SLOT_COUNT)
                .map(|slot| {
                    let owner = routing.owner(slot);
                    self.backs_up(previous, slot)
                        && !self.backs_up(routing, slot)
                        && owner != me
                        && owner != Owner::Lost
                        && !incoming.imports(slot)
                })
                .collect()
        };
        let count = released.iter().filter(|&&slot| slot).count();
        if count == 0 {
            return;
        }
        self.replication.borrow_mut().backup.set_aside(&released);
        let now_ms = self.now_ms();
        self.store
            .borrow_mut()
            .remove_slots(|slot| released.get(slot as usize).copied().unwrap_or(false), now_ms);
        self.deliver_completions();
        tracing::info!(
            shard = self.shard_id,
            slots = count,
            "dropped this shard's copy of slots it no longer backs up"
        );
    }

    /// Whether `slots` may be handed over to `target`: see [`Primary::may_hand_over`].
    pub(super) fn may_hand_over(&self, target: ShardProcess, slots: &crate::replication::SlotSet) -> bool {
        self.replication.borrow().primary.may_hand_over(target, slots)
    }

    /// Keeps late replica batches off slots this shard starts importing by migration.
    pub(super) fn set_aside_for_import(&self, importing: &[bool]) {
        self.replication.borrow_mut().backup.set_aside(importing);
    }

    /// Wakes the link tasks: something changed that a backup may need.
    pub(super) fn kick_replication(&self) {
        for link in self.replication.borrow().links.values() {
            link.wake.notify();
        }
    }

    /// Refuses to serve after a backup said this shard is no longer the primary of its
    /// slots, until a newer map says what it is.
    pub(super) fn check_not_deposed(&self, epoch: u64) -> Result<(), Response> {
        match self.replication.borrow().deposed_at_epoch {
            Some(deposed) if epoch <= deposed => Err(self.error(
                ErrorCode::TryAgain,
                format!("a backup's map names another primary after map epoch {deposed}; retry shortly"),
            )),
            _ => Ok(()),
        }
    }

    /// Runs the streams the map and the control plane's fill orders ask for: one per
    /// backup of the slots this shard now leads, each in sync already or filled by a
    /// snapshot.
    pub(super) fn configure_replication(&self, routing: &Routing) {
        // Read before the orders: a change meanwhile is seen again at the next look.
        let generation = self.node_map.fills_generation();
        let fills = self.node_map.fills();
        let mut wanted = wanted_streams(routing, self.shard_id as u16);
        let mut addresses = backup_addresses(routing);
        add_fills(&mut wanted, &mut addresses, &fills, routing, self.shard_id as u16);
        let released = {
            let store = self.store.borrow();
            let mut replication = self.replication.borrow_mut();
            replication.primary.configure(routing.epoch(), wanted.clone(), &store)
        };
        // A stream closes for one of two reasons: the map dropped the backup while this
        // shard still leads the slot (its answers may leave), or the slot went to
        // another shard (a promoted backup may not hold what they answer for: the
        // client retries there with the same operation id and gets what it holds).
        let me = Owner::Local(self.shard_id as u16);
        self.release_where(released, |slot| routing.owner(slot) == me);
        {
            let mut replication = self.replication.borrow_mut();
            replication.fills_seen = generation;
            replication.wanted_links = wanted
                .keys()
                .filter_map(|backup| Some((*backup, addresses.get(backup)?.clone())))
                .collect();
            replication.links_changed.notify();
        }
        self.publish_in_sync();
    }

    /// Follows fill orders that changed since the streams were last configured.
    pub(super) fn follow_fill_orders(&self) {
        let seen = self.replication.borrow().fills_seen;
        if self.node_map.fills_generation() != seen {
            let routing = self.routing();
            self.configure_replication(&routing);
        }
    }

    /// Tells the heartbeat which backups hold everything of their slots.
    fn publish_in_sync(&self) {
        let reports: Vec<InSyncReport> = {
            let replication = self.replication.borrow();
            let map_epoch = replication.primary.configured_epoch();
            replication
                .primary
                .in_sync()
                .map(|(backup, slots)| InSyncReport {
                    shard_id: self.shard_id as u16,
                    map_epoch,
                    backup: ShardProcessRef {
                        node_id: backup.node_id,
                        shard_id: backup.shard_id,
                        incarnation: backup.incarnation,
                    },
                    slots: slots.ranges(),
                })
                .collect()
        };
        *self
            .own_stats()
            .in_sync
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reports;
    }

    /// Keeps one link task per backup the map asks for, until the shard stops.
    pub async fn drive_replication(self: Rc<Self>) {
        let changed = self.replication.borrow().links_changed.clone();
        loop {
            changed.notified().await;
            let mut replication = self.replication.borrow_mut();
            let wanted = replication.wanted_links.clone();
            replication.links.retain(|backup, _| wanted.contains_key(backup));
            for (backup, address) in wanted {
                if replication.links.contains_key(&backup) {
                    continue;
                }
                let wake = Rc::new(LocalNotify::default());
                let stopped = Rc::new(Cell::new(false));
                let task = self.spawn(run_link(self.clone(), backup, address, wake.clone(), stopped.clone()));
                wake.notify();
                replication.links.insert(backup, ReplicaLink { wake, stopped, task });
            }
        }
    }

    /// Ends every link task, for the shard's stop.
    pub fn stop_replication(&self) {
        let mut replication = self.replication.borrow_mut();
        replication.wanted_links.clear();
        replication.links.clear();
    }

    /// A batch from the primary of slots this shard backs up.
    pub fn replicate_in(&self, batch: ReplicaBatch) -> PeerResponse {
        let routing = self.routing();
        let now_ms = self.now_ms();
        let mut store = self.store.borrow_mut();
        let answer = self
            .replication
            .borrow_mut()
            .backup
            .receive(batch, &*routing, &mut store, now_ms);
        if let ReplicaAnswer::Refused { refusal, .. } = &answer {
            tracing::debug!(shard = self.shard_id, ?refusal, "replica batch refused");
        }
        PeerResponse::Replicated(answer)
    }

    fn next_replica_batch(&self, backup: ShardProcess) -> Option<ReplicaBatch> {
        let now_ms = self.now_ms();
        let store = self.store.borrow();
        self.replication.borrow_mut().primary.next_batch(backup, &store, now_ms)
    }

    /// A backup answered; `false` when the link should pause before it goes on.
    fn on_replica_answer(&self, backup: ShardProcess, answer: ReplicaAnswer) -> bool {
        let events = self.replication.borrow_mut().primary.on_answer(backup, answer);
        let mut go_on = true;
        for event in events {
            match event {
                PrimaryEvent::Released(tickets) => {
                    let routing = self.routing();
                    let me = Owner::Local(self.shard_id as u16);
                    self.release_where(tickets, |slot| routing.owner(slot) == me);
                }
                PrimaryEvent::InSync(backup, slots) => {
                    tracing::info!(
                        shard = self.shard_id,
                        ?backup,
                        slots = slots.iter().count(),
                        "backup in sync"
                    );
                    self.publish_in_sync();
                }
                PrimaryEvent::Deposed(backup) => {
                    let epoch = self.map_epoch();
                    tracing::warn!(
                        shard = self.shard_id,
                        ?backup,
                        epoch,
                        "a backup names another primary: deposed"
                    );
                    self.replication.borrow_mut().deposed_at_epoch = Some(epoch);
                    go_on = false;
                }
                PrimaryEvent::Resend(_) => go_on = false,
                PrimaryEvent::Broken(backup, reason) => {
                    tracing::warn!(shard = self.shard_id, ?backup, %reason, "replication to a backup stalls");
                    go_on = false;
                }
            }
        }
        go_on
    }

    /// Delivers the answers no backup holds back any more whose slot `may_answer`
    /// accepts; the others get `TryAgain`, so their clients ask the slot's new owner.
    fn release_where(&self, tickets: Vec<Ticket>, may_answer: impl Fn(u32) -> bool) {
        if tickets.is_empty() {
            return;
        }
        for ticket in tickets {
            let held = self.replication.borrow_mut().held.remove(&ticket);
            match held {
                Some(Held::Immediate(slot, destination, _) | Held::Completion(slot, destination, _))
                    if !may_answer(slot) =>
                {
                    let moved = format!("slot {slot} moved to another shard before its backups confirmed; retry");
                    let _ = destination.deliver(self.error(ErrorCode::TryAgain, moved), true);
                }
                Some(Held::Immediate(_, destination, response)) => {
                    let _ = destination.deliver(response, true);
                }
                Some(Held::Completion(_, destination, mut completion)) => {
                    let response = std::mem::replace(&mut completion.response, Response::Pong);
                    if let Err(response) = destination.deliver(response, true) {
                        completion.response = response;
                        self.take_back(completion);
                    }
                }
                None => {}
            }
        }
        self.deliver_completions();
    }
}

/// Per backup shard, the slots this shard leads that it backs up.
fn wanted_streams(routing: &Routing, shard_id: u16) -> BTreeMap<ShardProcess, Wanted> {
    let mut wanted: BTreeMap<ShardProcess, Wanted> = BTreeMap::new();
    if routing.map.backups.is_empty() {
        return wanted;
    }
    for slot in 0..engram_proto::limits::SLOT_COUNT {
        if routing.owner(slot) != Owner::Local(shard_id) {
            continue;
        }
        for &index in routing.map.backups_of(slot) {
            let Some(backup) = routing.shard_process(index) else {
                continue;
            };
            let entry = wanted.entry(backup).or_default();
            entry.slots.insert(slot);
            entry.named.insert(slot);
        }
    }
    wanted
}

/// Adds the fills the control plane ordered this shard to run: slots it leads, to a
/// backup the map does not name for them yet. A fill joins the stream the map already
/// runs to that backup, if any (whose snapshot then covers both).
fn add_fills(
    wanted: &mut BTreeMap<ShardProcess, Wanted>,
    addresses: &mut HashMap<ShardProcess, String>,
    fills: &[FillOrder],
    routing: &Routing,
    shard_id: u16,
) {
    for fill in fills.iter().filter(|fill| fill.shard_id == shard_id) {
        let backup = ShardProcess {
            node_id: fill.backup.node_id,
            shard_id: fill.backup.shard_id,
            incarnation: fill.backup.incarnation,
        };
        // An order made under another map may name slots this shard no longer leads.
        let slots: Vec<u32> = fill
            .slots
            .iter()
            .flat_map(|&(start, end)| start..=end.min(engram_proto::limits::SLOT_COUNT - 1))
            .filter(|&slot| routing.owner(slot) == Owner::Local(shard_id))
            .collect();
        if slots.is_empty() {
            continue;
        }
        let entry = wanted.entry(backup).or_default();
        entry.fill_generation = Some(fill.generation);
        for slot in slots {
            entry.slots.insert(slot);
        }
        addresses.entry(backup).or_insert_with(|| fill.backup_address.clone());
    }
}

fn backup_addresses(routing: &Routing) -> HashMap<ShardProcess, String> {
    (0..routing.map.shards.len() as u32)
        .filter_map(|index| {
            let process = routing.shard_process(index)?;
            Some((process, routing.address(index).to_string()))
        })
        .collect()
}

/// Ships `backup`'s batches one at a time over a link of its own, made again after a
/// failure, until the stream is dropped.
async fn run_link(
    shard: Rc<Shard>,
    backup: ShardProcess,
    address: String,
    wake: Rc<LocalNotify>,
    stopped: Rc<Cell<bool>>,
) {
    let timeout = Duration::from_millis(REPLICATION_PEER_TIMEOUT_MS);
    let retry = Duration::from_millis(REPLICATION_RETRY_MS);
    let mut link: Option<PeerLink<PeerProtocol>> = None;
    while !stopped.get() {
        let Some(batch) = shard.next_replica_batch(backup) else {
            wake.notified().await;
            continue;
        };
        if link.is_none() {
            let credentials = shard.link_credentials().to_vec();
            match PeerLink::connect(&address, &credentials, timeout, shard.peer_tls()).await {
                Ok(connected) => link = Some(connected),
                Err(error) => {
                    tracing::debug!(%address, %error, "replication link failed to connect");
                    runtime::sleep(retry).await;
                    continue;
                }
            }
        }
        let Some(connected) = link.as_mut() else { continue };
        let answer = connected.call(&PeerRequest::Replicate(batch)).await;
        if stopped.get() {
            return;
        }
        let go_on = match answer {
            Ok(PeerResponse::Replicated(answer)) => shard.on_replica_answer(backup, answer),
            Ok(other) => {
                tracing::warn!(%address, answer = other.name(), "a backup answered a batch with something else");
                link = None;
                false
            }
            Err(error) => {
                tracing::debug!(%address, %error, "replication link failed");
                link = None;
                false
            }
        };
        if !go_on {
            runtime::sleep(retry).await;
        }
    }
}
