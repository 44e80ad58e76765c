//! The primary's side: one stream per backup shard, the keys each still has to ship,
//! and the answers waiting for backups to apply what they decided.
//!
//! The shell tells it which keys and operations a request (or a woken waiter) changed,
//! asks whether an answer may leave now or must wait (a *ticket* names a held answer),
//! forms batches when it can send, and feeds back the backups' answers, which release
//! tickets. Nothing here does I/O or reads a clock.
//!
//! Why an answer that reads also waits: a value the primary holds but a backup has not
//! applied yet may vanish in a failover, and a client that read it would then see time
//! go backwards. A read waits only if its key has such a change in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use engram_proto::{ReplicaAnswer, ReplicaBatch, ReplicaRefusal, ReplicaStreamId};

use super::slots::SlotSet;
use super::ShardProcess;
use crate::store::{slot_of_stored_key, Origin, Store};

/// Batches a stream has sent and not yet seen applied. Past it the stream waits: a
/// backup that falls behind slows the primary's writes rather than its memory growing.
pub const UNACKED_BATCHES_MAX: usize = 64;

/// Keys of a snapshot shipped per batch, so a large snapshot goes out in parts between
/// the batches of ongoing writes instead of stalling them.
pub const SNAPSHOT_KEYS_PER_BATCH_MAX: usize = 256;

/// Bytes of key images one batch carries (one larger image travels alone), so a batch
/// with its records stays well inside a frame and a burst of large values does not stall the stream.
pub const REPLICA_BATCH_BYTES_MAX: usize = 1 << 20;

/// A held answer, named by the shell.
pub type Ticket = u64;

/// What one backup's stream must carry, under the current map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub slots: SlotSet,
    /// The slots the map names this backup for (the others are being filled).
    pub named: SlotSet,
    /// The generation of the control plane's fill order, when the stream fills slots:
    /// an order of another generation starts a fresh stream.
    pub fill_generation: Option<u64>,
}

impl Wanted {
    /// In the map's configuration of some of its slots: answers wait for this backup. A
    /// backup being filled is not, until its snapshot is applied ([`PrimaryEvent::InSync`]).
    pub fn required(&self) -> bool {
        !self.named.is_empty()
    }
}

/// What a backup's answer means for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryEvent {
    /// These answers may leave now.
    Released(Vec<Ticket>),
    /// The backup holds everything of these slots: the control plane may add it to the
    /// slots' configuration.
    InSync(ShardProcess, SlotSet),
    /// The backup's map names another primary: this shard must stop serving the
    /// stream's slots until its own map says otherwise.
    Deposed(ShardProcess),
    /// Resend the stream's unsent batches later ([`Primary::unacked`]): the backup's map is
    /// behind, or a batch went missing.
    Resend(ShardProcess),
    /// The backup refuses the stream's content; it stays stalled until the map changes.
    Broken(ShardProcess, String),
}

#[derive(Debug)]
struct Snapshot {
    keys: Vec<Box<[u8]>>,
    next: usize,
}

#[derive(Debug)]
struct Stream {
    id: ReplicaStreamId,
    slots: SlotSet,
    required: bool,
    /// The slots the map names this backup for (a fill's are not, until in sync).
    named: SlotSet,
    /// The generation of the fill order it runs, if any.
    fill_generation: Option<u64>,
    /// `Some` until every key the snapshot covers has been put in a batch.
    snapshot: Option<Snapshot>,
    /// The batch that ended the snapshot, once formed.
    snapshot_done_seq: Option<u64>,
    /// The stream narrowed since its last batch: the next one re-declares its slots.
    redeclare: bool,
    /// Set when a fill's stream turned required: the keys changed before then, whose
    /// answers did not wait for it, and the last batch that carries one of them.
    unheld: Option<(BTreeSet<Box<[u8]>>, u64)>,
    /// The backup holds every acknowledged change of the slots, and every answer waits
    /// for it from now on.
    in_sync: bool,
    next_seq: u64,
    acked: u64,
    dirty_keys: BTreeSet<Box<[u8]>>,
    /// Operations answered on each changed key: their records travel with its image.
    dirty_operations: HashMap<Box<[u8]>, Vec<Origin>>,
    /// Key → the last unacknowledged batch that carries its image.
    shipped: HashMap<Box<[u8]>, u64>,
    unacked: VecDeque<ReplicaBatch>,
    /// Tickets by the batch they wait for.
    waiting: BTreeMap<u64, Vec<Ticket>>,
    /// Tickets by the changed key they wait for, until a batch carries it.
    waiting_on_key: HashMap<Box<[u8]>, Vec<Ticket>>,
    /// Tickets of a stream this one replaced: they wait for the end of the snapshot,
    /// which carries every key again.
    after_snapshot: Vec<Ticket>,
}

impl Stream {
    fn open(id: ReplicaStreamId, wanted: Wanted, store: &Store) -> Stream {
        let required = wanted.required();
        let Wanted {
            slots,
            named,
            fill_generation,
        } = wanted;
        let keys = store.keys_in_slots(|slot| slots.contains(slot));
        Stream {
            id,
            slots,
            required,
            named,
            fill_generation,
            snapshot: Some(Snapshot { keys, next: 0 }),
            snapshot_done_seq: None,
            redeclare: false,
            unheld: None,
            in_sync: false,
            next_seq: 1,
            acked: 0,
            dirty_keys: BTreeSet::new(),
            dirty_operations: HashMap::new(),
            shipped: HashMap::new(),
            unacked: VecDeque::new(),
            waiting: BTreeMap::new(),
            waiting_on_key: HashMap::new(),
            after_snapshot: Vec::new(),
        }
    }

    /// Whether this stream can go on as `wanted`: the same slots or fewer (slots given
    /// away simply leave it: see [`Stream::narrow`]), no slot it keeps that the map named
    /// and no longer names, and no fill order of another generation (in both cases the
    /// backup may have dropped what the stream gave it, and only a new opening, with its
    /// snapshot, brings that back). New slots need a snapshot: a new opening.
    fn keeps(&self, wanted: &Wanted) -> bool {
        wanted.slots.is_subset_of(&self.slots)
            && self.named.intersection(&wanted.slots).is_subset_of(&wanted.named)
            && wanted
                .fill_generation
                .is_none_or(|generation| self.fill_generation == Some(generation))
    }

    /// Stops streaming the slots not in `slots`, without a new opening (whose snapshot
    /// of every slot left would hold the next hand-over off this stream for its whole
    /// length): their pending changes are dropped, and the next batch re-declares the
    /// slots, so the backup stops following the others. Gives back the tickets that
    /// waited for a dropped change.
    fn narrow(&mut self, slots: &SlotSet) -> Vec<Ticket> {
        let gone = self.slots.difference(slots);
        if gone.is_empty() {
            return Vec::new();
        }
        let of_gone = |key: &[u8]| slot_of_stored_key(key).is_some_and(|slot| gone.contains(slot));
        self.slots = slots.clone();
        self.named = self.named.intersection(slots);
        self.redeclare = true;
        self.dirty_keys.retain(|key| !of_gone(key));
        self.dirty_operations.retain(|key, _| !of_gone(key));
        if let Some(snapshot) = &mut self.snapshot {
            let (sent, rest) = snapshot.keys.split_at(snapshot.next);
            let rest: Vec<Box<[u8]>> = rest.iter().filter(|key| !of_gone(key)).cloned().collect();
            let mut keys = sent.to_vec();
            keys.extend(rest);
            snapshot.keys = keys;
        }
        if let Some((unheld, _)) = &mut self.unheld {
            unheld.retain(|key| !of_gone(key));
        }
        let mut freed = Vec::new();
        self.waiting_on_key.retain(|key, tickets| {
            let keep = !of_gone(key);
            if !keep {
                freed.append(tickets);
            }
            keep
        });
        freed
    }

    /// Whether a change of a key of `slots` waits to be sent or applied.
    fn has_in_flight(&self, slots: &SlotSet) -> bool {
        let of_slots = |key: &[u8]| slot_of_stored_key(key).is_some_and(|slot| slots.contains(slot));
        self.dirty_keys.iter().any(|key| of_slots(key)) || self.shipped.keys().any(|key| of_slots(key))
    }

    /// Makes `ticket` wait for the batch that carries `key`'s latest change, if that
    /// batch is not applied yet; whether it waits.
    fn hold(&mut self, ticket: Ticket, key: &[u8]) -> bool {
        if self.dirty_keys.contains(key) {
            self.waiting_on_key.entry(key.into()).or_default().push(ticket);
            return true;
        }
        match self.shipped.get(key).copied().filter(|seq| *seq > self.acked) {
            Some(seq) => {
                self.waiting.entry(seq).or_default().push(ticket);
                true
            }
            None => false,
        }
    }

    fn has_work(&self) -> bool {
        self.snapshot.is_some() || !self.dirty_keys.is_empty() || self.redeclare
    }

    fn snapshot_applied(&self) -> bool {
        self.snapshot_done_seq.is_some_and(|done| self.acked >= done)
    }

    /// Whether the stream just became in sync. A fill's stream (not required) turns
    /// required once its snapshot is applied; the changes answered before then without
    /// waiting must reach the backup too, so it is in sync only once the batches formed
    /// until then, and those carrying the keys dirty then, are applied. Waiting for a
    /// moment with nothing in flight instead would never come under steady writes.
    fn check_in_sync(&mut self) -> bool {
        if self.in_sync || !self.snapshot_applied() {
            return false;
        }
        if !self.required {
            self.required = true;
            self.unheld = Some((self.dirty_keys.clone(), self.next_seq - 1));
        }
        let done = match &self.unheld {
            Some((keys, last_seq)) => keys.is_empty() && self.acked >= *last_seq,
            None => true,
        };
        if done {
            self.unheld = None;
            self.in_sync = true;
        }
        done
    }

    fn form(&mut self, store: &Store, now_ms: u64) -> ReplicaBatch {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut keys = self.take_dirty_keys(store, now_ms);
        let mut snapshot_done = false;
        let mut records = Vec::new();
        if let Some(snapshot) = &mut self.snapshot {
            let end = snapshot_part_end(snapshot, store, now_ms);
            keys.extend(snapshot.keys[snapshot.next..end].iter().cloned());
            snapshot.next = end;
            if end == snapshot.keys.len() {
                // The records go with the last part, after every image they answer for:
                // a record must never reach a backup before its key's change.
                let slots = &self.slots;
                records = store.records_in_slots(|slot| slots.contains(slot));
                snapshot_done = true;
                self.snapshot = None;
                self.snapshot_done_seq = Some(seq);
                let carried = std::mem::take(&mut self.after_snapshot);
                if !carried.is_empty() {
                    self.waiting.entry(seq).or_default().extend(carried);
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let changes = store.export_keys(keys.iter().map(|key| &**key), now_ms);
        let mut acknowledged = Vec::new();
        for key in &keys {
            for Origin { client_id, op_id } in self.dirty_operations.remove(key).unwrap_or_default() {
                let (record, mark) = store.export_operation(client_id, op_id);
                // A client that reused an operation id on another slot's key gets its
                // first answer there; that record is not this stream's to carry.
                records.extend(record.filter(|record| self.slots.contains(record.slot)));
                acknowledged.push((client_id, mark));
            }
        }
        acknowledged.sort_unstable();
        acknowledged.dedup_by_key(|(client_id, _)| *client_id);
        // A snapshot's records may include one that is also dirty.
        records.sort_unstable_by_key(|record| (record.client_id, record.op_id));
        records.dedup_by_key(|record| (record.client_id, record.op_id));
        if let Some((unheld, last_seq)) = &mut self.unheld {
            let before = unheld.len();
            for key in &keys {
                unheld.remove(key);
            }
            if unheld.len() != before {
                *last_seq = seq;
            }
        }
        for key in keys {
            if let Some(tickets) = self.waiting_on_key.remove(&key) {
                self.waiting.entry(seq).or_default().extend(tickets);
            }
            self.shipped.insert(key, seq);
        }
        let batch = ReplicaBatch {
            stream: self.id,
            seq,
            covered: if seq == 1 || std::mem::take(&mut self.redeclare) {
                self.slots.ranges()
            } else {
                Vec::new()
            },
            entries: changes.entries,
            removed_keys: changes.removed_keys,
            records,
            acknowledged,
            last_version: changes.last_version,
            snapshot_done,
        };
        self.unacked.push_back(batch.clone());
        batch
    }

    /// Changed keys for the next batch, in key order, as many as fit
    /// `REPLICA_BATCH_BYTES_MAX` (always at least one); the rest wait for the next.
    fn take_dirty_keys(&mut self, store: &Store, now_ms: u64) -> Vec<Box<[u8]>> {
        let mut taken = Vec::new();
        let mut bytes = 0usize;
        while let Some(key) = self.dirty_keys.first() {
            let key_bytes = store.image_bytes(key, now_ms);
            if !taken.is_empty() && bytes.saturating_add(key_bytes) > REPLICA_BATCH_BYTES_MAX {
                break;
            }
            bytes = bytes.saturating_add(key_bytes);
            taken.extend(self.dirty_keys.pop_first());
        }
        taken
    }

    /// Everything up to `seq` is applied: returns the tickets that waited for it.
    fn applied(&mut self, seq: u64) -> Vec<Ticket> {
        if seq <= self.acked || seq >= self.next_seq {
            return Vec::new();
        }
        self.acked = seq;
        while self.unacked.front().is_some_and(|batch| batch.seq <= seq) {
            self.unacked.pop_front();
        }
        self.shipped.retain(|_, shipped_in| *shipped_in > seq);
        let still_waiting = self.waiting.split_off(&(seq + 1));
        let done = std::mem::replace(&mut self.waiting, still_waiting);
        done.into_values().flatten().collect()
    }

    /// Every ticket the stream holds, for a stream that goes away.
    fn drain_tickets(&mut self) -> Vec<Ticket> {
        let mut tickets: Vec<Ticket> = std::mem::take(&mut self.waiting).into_values().flatten().collect();
        tickets.extend(std::mem::take(&mut self.waiting_on_key).into_values().flatten());
        tickets.append(&mut self.after_snapshot);
        tickets
    }
}

/// Where a snapshot's next part ends: at most `SNAPSHOT_KEYS_PER_BATCH_MAX` keys and
/// about `REPLICA_BATCH_BYTES_MAX` of images (always at least one key).
fn snapshot_part_end(snapshot: &Snapshot, store: &Store, now_ms: u64) -> usize {
    let mut end = snapshot.next;
    let mut bytes = 0usize;
    while end < snapshot.keys.len() && end - snapshot.next < SNAPSHOT_KEYS_PER_BATCH_MAX {
        let key_bytes = store.image_bytes(&snapshot.keys[end], now_ms);
        if end > snapshot.next && bytes.saturating_add(key_bytes) > REPLICA_BATCH_BYTES_MAX {
            break;
        }
        bytes = bytes.saturating_add(key_bytes);
        end += 1;
    }
    end
}

/// A primary shard's replication: its streams and held answers.
#[derive(Debug)]
pub struct Primary {
    me: ShardProcess,
    /// Streams opened so far: two openings under one map epoch still differ.
    openings: u64,
    configured_epoch: u64,
    streams: BTreeMap<ShardProcess, Stream>,
    /// Ticket → how many streams it still waits for.
    held: HashMap<Ticket, usize>,
}

impl Primary {
    pub fn new(me: ShardProcess) -> Primary {
        Primary {
            me,
            openings: 0,
            configured_epoch: 0,
            streams: BTreeMap::new(),
            held: HashMap::new(),
        }
    }

    /// Runs the streams a new map (at `epoch`) and the fill orders ask for. A stream is
    /// opened afresh with a snapshot when it gains slots, when a slot the map named
    /// its backup for is no longer named but still filled, or when its fill order is of
    /// another generation (see [`Stream::keeps`]); one no longer wanted closes, and the
    /// answers that waited only for it are released (the map no longer counts that
    /// backup).
    pub fn configure(&mut self, epoch: u64, wanted: BTreeMap<ShardProcess, Wanted>, store: &Store) -> Vec<Ticket> {
        self.configured_epoch = epoch;
        let mut freed = Vec::new();
        let gone: Vec<ShardProcess> = self
            .streams
            .keys()
            .filter(|backup| !wanted.contains_key(backup))
            .copied()
            .collect();
        for backup in gone {
            if let Some(mut stream) = self.streams.remove(&backup) {
                freed.extend(stream.drain_tickets());
            }
        }
        for (backup, wanted) in wanted {
            match self.streams.get_mut(&backup) {
                Some(stream) if stream.keeps(&wanted) => {
                    freed.extend(stream.narrow(&wanted.slots));
                    stream.required |= wanted.required();
                    stream.named = wanted.named;
                    stream.fill_generation = wanted.fill_generation.or(stream.fill_generation);
                }
                existing => {
                    let carried = existing.map(Stream::drain_tickets).unwrap_or_default();
                    let id = ReplicaStreamId {
                        primary_node: self.me.node_id,
                        primary_shard: self.me.shard_id,
                        incarnation: self.me.incarnation,
                        opened_epoch: epoch,
                        backup_incarnation: backup.incarnation,
                        opening: self.openings,
                    };
                    self.openings += 1;
                    let mut stream = Stream::open(id, wanted, store);
                    stream.after_snapshot = carried;
                    self.streams.insert(backup, stream);
                }
            }
        }
        self.release(freed)
    }

    /// The streams whose backup is in sync, with their slots.
    pub fn in_sync(&self) -> impl Iterator<Item = (ShardProcess, &SlotSet)> + '_ {
        self.streams
            .iter()
            .filter(|(_, stream)| stream.in_sync)
            .map(|(backup, stream)| (*backup, &stream.slots))
    }

    /// The map epoch of the last [`Primary::configure`].
    pub fn configured_epoch(&self) -> u64 {
        self.configured_epoch
    }

    /// Whether any stream runs: a shard with no backups skips the rest.
    pub fn is_streaming(&self) -> bool {
        !self.streams.is_empty()
    }

    /// A request or a timer changed `key` (or removed it).
    pub fn changed_key(&mut self, key: &[u8]) {
        let Some(slot) = slot_of_stored_key(key) else { return };
        for stream in self.streams.values_mut() {
            if stream.slots.contains(slot) {
                stream.dirty_keys.insert(key.into());
            }
        }
    }

    /// A recorded operation on `key` was answered: its record must reach the backups
    /// in the batch that carries the key's change (call after [`Primary::changed_key`]).
    pub fn changed_operation(&mut self, key: &[u8], origin: Origin) {
        let Some(slot) = slot_of_stored_key(key) else { return };
        for stream in self.streams.values_mut() {
            if stream.slots.contains(slot) {
                stream.dirty_operations.entry(key.into()).or_default().push(origin);
            }
        }
    }

    /// Whether an answer touching `key` must wait for backups (`true`: it is held under
    /// `ticket` until [`PrimaryEvent::Released`] names it).
    pub fn hold(&mut self, ticket: Ticket, key: &[u8]) -> bool {
        let mut waits = 0;
        for stream in self.streams.values_mut().filter(|stream| stream.required) {
            if stream.hold(ticket, key) {
                waits += 1;
            }
        }
        if waits > 0 {
            self.held.insert(ticket, waits);
        }
        waits > 0
    }

    /// Batches ready to send, at most one per stream whose window has room.
    pub fn poll_batches(&mut self, store: &Store, now_ms: u64) -> Vec<(ShardProcess, ReplicaBatch)> {
        let mut batches = Vec::new();
        for (backup, stream) in &mut self.streams {
            if stream.has_work() && stream.unacked.len() < UNACKED_BATCHES_MAX {
                batches.push((*backup, stream.form(store, now_ms)));
            }
        }
        batches
    }

    /// What to send a backup next over a link that asks one batch at a time: the oldest
    /// batch it has not applied (sent again after a lost link or a refusal to retry),
    /// else a new one if anything changed; `None` when it is up to date.
    pub fn next_batch(&mut self, backup: ShardProcess, store: &Store, now_ms: u64) -> Option<ReplicaBatch> {
        let stream = self.streams.get_mut(&backup)?;
        if let Some(batch) = stream.unacked.front() {
            return Some(batch.clone());
        }
        stream.has_work().then(|| stream.form(store, now_ms))
    }

    /// The backups this shard streams to.
    pub fn backups(&self) -> impl Iterator<Item = ShardProcess> + '_ {
        self.streams.keys().copied()
    }

    /// The batches a stream sent that its backup has not applied, oldest first: what to
    /// send again after a lost link or a refusal to be retried.
    pub fn unacked(&self, backup: ShardProcess) -> Vec<ReplicaBatch> {
        self.streams
            .get(&backup)
            .map(|stream| stream.unacked.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A backup answered a batch.
    pub fn on_answer(&mut self, backup: ShardProcess, answer: ReplicaAnswer) -> Vec<PrimaryEvent> {
        let Some(stream) = self.streams.get_mut(&backup) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        match answer {
            ReplicaAnswer::Applied { stream: id, seq } if id == stream.id => {
                let tickets = stream.applied(seq);
                if stream.check_in_sync() {
                    events.push(PrimaryEvent::InSync(backup, stream.slots.clone()));
                }
                let released = self.release(tickets);
                if !released.is_empty() {
                    events.push(PrimaryEvent::Released(released));
                }
            }
            ReplicaAnswer::Refused {
                stream: id, refusal, ..
            } if id == stream.id => events.push(match refusal {
                ReplicaRefusal::MapBehind { .. } | ReplicaRefusal::OutOfOrder { .. } => PrimaryEvent::Resend(backup),
                ReplicaRefusal::NotPrimary { .. } | ReplicaRefusal::Superseded => PrimaryEvent::Deposed(backup),
                ReplicaRefusal::Invalid { reason } => PrimaryEvent::Broken(backup, reason),
                ReplicaRefusal::NotThisProcess { incarnation } => {
                    PrimaryEvent::Broken(backup, format!("the backup restarted (now incarnation {incarnation})"))
                }
            }),
            // An answer to an earlier opening of the stream: nothing waits on it.
            _ => {}
        }
        events
    }

    /// Whether `slots` may be handed over to `target`: its stream is in sync and every
    /// stream (the target's and every other backup's) has applied every change of a key
    /// of theirs. A hand-over waits for this with the slots frozen (no change can
    /// follow): the target then holds everything it will lead, and no change of the
    /// slots reaches another backup from this shard after the map names the target
    /// their primary (it would be refused, and would depose this shard for a while).
    pub fn may_hand_over(&self, target: ShardProcess, slots: &SlotSet) -> bool {
        let Some(stream) = self.streams.get(&target) else {
            return false;
        };
        slots.is_subset_of(&stream.slots)
            && stream.in_sync
            && self.streams.values().all(|stream| !stream.has_in_flight(slots))
    }

    /// Answers held right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Per backup: batches sent and not applied (replication lag, in batches).
    pub fn lag(&self) -> impl Iterator<Item = (ShardProcess, u64)> + '_ {
        self.streams
            .iter()
            .map(|(backup, stream)| (*backup, stream.next_seq - 1 - stream.acked))
    }

    /// Counts down each ticket's streams; returns those no stream holds any more.
    fn release(&mut self, tickets: Vec<Ticket>) -> Vec<Ticket> {
        let mut released = Vec::new();
        for ticket in tickets {
            let Some(remaining) = self.held.get_mut(&ticket) else {
                continue;
            };
            *remaining -= 1;
            if *remaining == 0 {
                self.held.remove(&ticket);
                released.push(ticket);
            }
        }
        released
    }
}
