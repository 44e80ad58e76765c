//! A primary and its backup with real stores, the batches handed over by hand.

use std::collections::BTreeMap;

use engram_proto::{CounterCommand, DataCommand, DataRequest, ReplicaAnswer, ReplicaRefusal, Response};

use super::*;
use crate::store::{slot_of_stored_key, Origin, Outcome, Store};

const PRIMARY: ShardProcess = ShardProcess {
    node_id: 1,
    shard_id: 0,
    incarnation: 5,
};
const BACKUP: ShardProcess = ShardProcess {
    node_id: 2,
    shard_id: 0,
    incarnation: 8,
};
const CLIENT: u64 = 77;
const UNLIMITED_BYTES: u64 = u64::MAX / 2;

struct Map {
    epoch: u64,
    primary: Option<ShardProcess>,
    /// Slots handed over: the map names [`BACKUP`] their primary.
    handed_over: SlotSet,
}

impl PrimaryView for Map {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn primary_of(&self, slot: u32) -> Option<ShardProcess> {
        if self.handed_over.contains(slot) {
            Some(BACKUP)
        } else {
            self.primary
        }
    }
}

fn stored(key: &str) -> Vec<u8> {
    let mut stored = vec![0u8];
    stored.extend_from_slice(key.as_bytes());
    stored
}

fn add(key: &str, op_id: u64) -> DataRequest {
    DataRequest {
        op_id,
        completed_below_op_id: 0,
        command: DataCommand::from(CounterCommand::Add {
            key: stored(key),
            delta: 1,
        }),
    }
}

fn counter(store: &mut Store, key: &str, now_ms: u64) -> Response {
    let read = DataRequest {
        op_id: 0,
        completed_below_op_id: 0,
        command: DataCommand::from(CounterCommand::Get { key: stored(key) }),
    };
    match store.apply(0, &read, now_ms) {
        Outcome::Ready(response) => response,
        Outcome::Parked(_) => panic!("a counter read parked"),
    }
}

fn every_slot() -> SlotSet {
    (0..engram_proto::limits::SLOT_COUNT).collect()
}

/// The streams a primary runs: one to [`BACKUP`] over `slots`.
fn to_backup(slots: SlotSet, required: bool) -> BTreeMap<ShardProcess, Wanted> {
    let named = if required { slots.clone() } else { SlotSet::default() };
    let fill_generation = (!required).then_some(1);
    BTreeMap::from([(
        BACKUP,
        Wanted {
            slots,
            named,
            fill_generation,
        },
    )])
}

struct Pair {
    primary_store: Store,
    primary: Primary,
    backup_store: Store,
    backup: Backup,
    map: Map,
}

impl Pair {
    /// A primary already holding `keys` (one increment each), and an empty backup that
    /// is required from the start.
    fn new(keys: &[&str], required: bool) -> Pair {
        let mut primary_store = Store::new(UNLIMITED_BYTES, 1);
        for (op_id, key) in keys.iter().enumerate() {
            primary_store.apply(CLIENT, &add(key, op_id as u64 + 1), 0);
        }
        let mut primary = Primary::new(PRIMARY);
        let wanted = to_backup(every_slot(), required);
        assert!(primary.configure(3, wanted, &primary_store).is_empty());
        Pair {
            primary_store,
            primary,
            backup_store: Store::new(UNLIMITED_BYTES, 2),
            backup: Backup::new(BACKUP.incarnation),
            map: Map {
                epoch: 3,
                primary: Some(PRIMARY),
                handed_over: SlotSet::default(),
            },
        }
    }

    /// Applies a mutation at the primary the way a shard does, holding its answer.
    fn write(&mut self, key: &str, op_id: u64, ticket: Ticket) -> bool {
        let request = add(key, op_id);
        self.primary_store.apply(CLIENT, &request, 10);
        let stored_key = stored(key);
        self.primary.changed_key(&stored_key);
        self.primary.changed_operation(
            &stored_key,
            Origin {
                client_id: CLIENT,
                op_id,
            },
        );
        self.primary.hold(ticket, &stored_key)
    }

    /// Ships every ready batch and feeds back the answers; returns the events.
    fn exchange(&mut self) -> Vec<PrimaryEvent> {
        let mut events = Vec::new();
        for (backup, batch) in self.primary.poll_batches(&self.primary_store, 10) {
            let answer = self.backup.receive(batch, &self.map, &mut self.backup_store, 10);
            events.extend(self.primary.on_answer(backup, answer));
        }
        events
    }
}

/// The backup drops its copy of the `marked` slots, as a shard does when its map stops
/// naming it for them or an import onto it is aborted.
fn drop_at_backup(pair: &mut Pair, marked: &[bool]) {
    pair.backup.set_aside(marked);
    pair.backup_store
        .remove_slots(|slot| marked.get(slot as usize).copied().unwrap_or(false), 20);
}

/// Ships what is due and checks that the backup holds `hits` again, in sync.
fn assert_refilled(pair: &mut Pair) {
    let events = pair.exchange();
    assert!(
        events.iter().any(|event| matches!(event, PrimaryEvent::InSync(..))),
        "{events:?}"
    );
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 1 }
    );
}

fn released(events: &[PrimaryEvent]) -> Vec<Ticket> {
    events
        .iter()
        .filter_map(|event| match event {
            PrimaryEvent::Released(tickets) => Some(tickets.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn an_answer_is_held_until_the_backup_applied_its_write_and_a_retry_there_gets_the_first_answer() {
    let mut pair = Pair::new(&[], true);
    assert_eq!(
        pair.exchange(),
        [PrimaryEvent::InSync(BACKUP, every_slot())],
        "the empty snapshot releases nothing and makes the backup whole"
    );
    assert!(
        pair.write("hits", 1, 100),
        "a write to a required backup's slot is held"
    );
    assert!(pair.write("hits", 2, 101));
    assert_eq!(pair.primary.held(), 2);
    let events = pair.exchange();
    let mut tickets = released(&events);
    tickets.sort_unstable();
    assert_eq!(tickets, vec![100, 101], "one batch carried both writes");
    assert_eq!(pair.primary.held(), 0);
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        counter(&mut pair.primary_store, "hits", 20)
    );
    // The backup, promoted, answers a retry of operation 2 from its record.
    let retry = pair.backup_store.apply(CLIENT, &add("hits", 2), 30);
    assert_eq!(retry, Outcome::Ready(Response::Counter { value: 2 }));
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 30),
        Response::Counter { value: 2 }
    );
}

#[test]
fn a_read_waits_only_while_its_key_has_a_change_in_flight() {
    let mut pair = Pair::new(&[], true);
    pair.exchange();
    assert!(pair.write("hot", 1, 1));
    assert!(
        pair.primary.hold(2, &stored("hot")),
        "a read of an unreplicated value waits"
    );
    assert!(
        !pair.primary.hold(3, &stored("cold")),
        "a read of an untouched key does not"
    );
    let mut tickets = released(&pair.exchange());
    tickets.sort_unstable();
    assert_eq!(tickets, vec![1, 2]);
    assert!(!pair.primary.hold(4, &stored("hot")), "once applied, reads go at once");
}

#[test]
fn a_snapshot_fills_a_new_backup_which_reports_in_sync_and_is_then_waited_for() {
    let keys: Vec<String> = (0..600).map(|index| format!("key-{index}")).collect();
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut pair = Pair::new(&names, false);
    assert!(
        !pair.write("key-1", 1_000, 9),
        "a backup being filled is not waited for"
    );
    let mut in_sync = false;
    for _ in 0..10 {
        in_sync |= pair.exchange().contains(&PrimaryEvent::InSync(BACKUP, every_slot()));
    }
    assert!(in_sync);
    assert_eq!(pair.backup_store.stats().keys, 600);
    assert_eq!(
        counter(&mut pair.backup_store, "key-1", 20),
        Response::Counter { value: 2 }
    );
    assert!(pair.write("key-2", 1_001, 10), "an in-sync backup is waited for");
}

#[test]
fn a_snapshot_drops_what_the_backup_held_that_the_primary_does_not() {
    let mut pair = Pair::new(&["kept"], true);
    pair.backup_store.apply(CLIENT, &add("stale", 500), 0);
    pair.backup_store.apply(CLIENT, &add("kept", 501), 0);
    pair.exchange();
    assert_eq!(
        counter(&mut pair.backup_store, "stale", 20),
        Response::Counter { value: 0 }
    );
    assert_eq!(
        counter(&mut pair.backup_store, "kept", 20),
        Response::Counter { value: 1 }
    );
}

#[test]
fn a_backup_whose_map_names_another_primary_refuses_and_the_sender_learns_it_is_deposed() {
    let mut pair = Pair::new(&[], true);
    pair.exchange();
    pair.map = Map {
        epoch: 4,
        primary: Some(BACKUP),
        handed_over: SlotSet::default(),
    };
    assert!(pair.write("hits", 1, 1));
    let events = pair.exchange();
    assert_eq!(events, vec![PrimaryEvent::Deposed(BACKUP)]);
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 0 }
    );
    assert_eq!(pair.primary.held(), 1, "an answer nobody applied is never released");
}

#[test]
fn duplicates_are_acknowledged_without_applying_and_gaps_are_refused() {
    let mut pair = Pair::new(&[], true);
    let first = pair.primary.poll_batches(&pair.primary_store, 0).remove(0).1;
    pair.write("hits", 1, 1);
    let second = pair.primary.poll_batches(&pair.primary_store, 0).remove(0).1;
    let gap = pair
        .backup
        .receive(second.clone(), &pair.map, &mut pair.backup_store, 0);
    assert!(matches!(
        gap,
        ReplicaAnswer::Refused {
            refusal: ReplicaRefusal::OutOfOrder { expected: 1 },
            ..
        }
    ));
    for batch in [first.clone(), second.clone(), second, first] {
        pair.backup.receive(batch, &pair.map, &mut pair.backup_store, 0);
    }
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 0),
        Response::Counter { value: 1 }
    );
}

#[test]
fn a_newer_opening_supersedes_an_older_one_and_a_backup_dropped_from_the_map_releases_its_answers() {
    let mut pair = Pair::new(&[], true);
    // The stream narrows to a hundred slots (no new opening) and sends its first batch.
    let fewer: SlotSet = (0..100).collect();
    assert!(pair
        .primary
        .configure(4, to_backup(fewer, true), &pair.primary_store)
        .is_empty());
    pair.map.epoch = 4;
    let old = pair.primary.poll_batches(&pair.primary_store, 0).remove(0).1;
    pair.write("hits", 1, 1);
    // The map moves on and gives the stream every slot: new slots need a snapshot, so
    // the stream reopens.
    pair.map.epoch = 5;
    let wanted = to_backup(every_slot(), true);
    assert!(pair.primary.configure(5, wanted, &pair.primary_store).is_empty());
    pair.exchange();
    let stale = pair.backup.receive(old, &pair.map, &mut pair.backup_store, 0);
    assert!(
        matches!(
            stale,
            ReplicaAnswer::Refused {
                refusal: ReplicaRefusal::Superseded,
                ..
            }
        ),
        "{stale:?}"
    );
    assert!(pair.write("hits", 2, 2));
    let released = pair.primary.configure(6, BTreeMap::new(), &pair.primary_store);
    assert_eq!(pair.primary.held(), 0, "released: {released:?}");
}

#[test]
fn a_change_left_for_a_later_batch_keeps_its_answer_until_that_batch_is_applied() {
    let mut pair = Pair::new(&[], true);
    pair.exchange();
    let value = vec![7u8; 512 * 1024];
    let keys = 12;
    for index in 0..keys {
        let request = DataRequest {
            op_id: 100 + index,
            completed_below_op_id: 0,
            command: DataCommand::from(engram_proto::BytesCommand::Set {
                key: stored(&format!("big-{index:02}")),
                value: value.clone(),
                ttl_ms: 0,
                condition: engram_proto::SetCondition::Always,
            }),
        };
        pair.primary_store.apply(CLIENT, &request, 10);
        let key = stored(&format!("big-{index:02}"));
        pair.primary.changed_key(&key);
        assert!(pair.primary.hold(index, &key));
    }
    let first = pair.exchange();
    let released_first = released(&first);
    assert!(
        !released_first.is_empty() && released_first.len() < keys as usize,
        "{released_first:?}"
    );
    assert_eq!(pair.primary.held(), keys as usize - released_first.len());
    for _ in 0..keys {
        pair.exchange();
    }
    assert_eq!(pair.primary.held(), 0);
    assert_eq!(pair.backup_store.stats().keys, keys);
}

#[test]
fn a_record_travels_in_the_batch_of_its_keys_change_never_before_it() {
    let mut pair = Pair::new(&[], true);
    pair.exchange();
    let value = vec![7u8; 512 * 1024];
    for index in 0..6u64 {
        let key = stored(&format!("big-{index:02}"));
        let request = DataRequest {
            op_id: 100 + index,
            completed_below_op_id: 0,
            command: DataCommand::from(engram_proto::BytesCommand::Set {
                key: key.clone(),
                value: value.clone(),
                ttl_ms: 0,
                condition: engram_proto::SetCondition::Always,
            }),
        };
        pair.primary_store.apply(CLIENT, &request, 10);
        pair.primary.changed_key(&key);
        pair.primary.changed_operation(
            &key,
            Origin {
                client_id: CLIENT,
                op_id: 100 + index,
            },
        );
    }
    let batch = pair.primary.poll_batches(&pair.primary_store, 10).remove(0).1;
    let carried: Vec<&[u8]> = batch.entries.iter().map(|entry| entry.key.as_slice()).collect();
    assert!(carried.len() < 6, "the batch was cut: {}", carried.len());
    for record in &batch.records {
        let key = stored(&format!("big-{:02}", record.op_id - 100));
        assert!(
            carried.contains(&key.as_slice()),
            "record of op {} without its image",
            record.op_id
        );
    }
    assert_eq!(batch.records.len(), carried.len());
}

/// Under writes that never pause, a fill still ends: once its snapshot is applied the
/// stream waits for the keys changed before without a hold, and then reports in sync;
/// by then every write answered without waiting is at the backup.
#[test]
fn a_fill_under_steady_writes_gets_in_sync_with_every_unheld_write_applied() {
    let keys: Vec<String> = (0..700).map(|index| format!("key-{index}")).collect();
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut pair = Pair::new(&names, false);
    let mut op_id = 1_000;
    let mut unheld_writes: Vec<&str> = Vec::new();
    let mut in_sync_at = None;
    for round in 0..20 {
        // A write between every exchange: never a moment with nothing in flight.
        op_id += 1;
        let key = names[round * 31 % names.len()];
        if !pair.write(key, op_id, op_id) {
            unheld_writes.push(key);
        }
        if pair.exchange().contains(&PrimaryEvent::InSync(BACKUP, every_slot())) {
            in_sync_at = Some(round);
            break;
        }
    }
    assert!(in_sync_at.is_some(), "the fill never got in sync under steady writes");
    assert!(!unheld_writes.is_empty(), "the test must write while the fill runs");
    for key in unheld_writes {
        assert_eq!(
            counter(&mut pair.backup_store, key, 20),
            counter(&mut pair.primary_store, key, 20),
            "{key} was answered without waiting and must be at the backup once in sync"
        );
    }
    assert_eq!(pair.primary.in_sync().count(), 1);
}

#[test]
fn a_late_batch_leaves_the_slots_a_migration_imports_alone_until_a_stream_opens_afresh() {
    let mut pair = Pair::new(&[], true);
    pair.exchange();
    let imported = slot_of_stored_key(&stored("hits")).unwrap();
    assert!(
        imported < engram_proto::limits::SLOT_COUNT - 1,
        "the reopening below leaves the last slot out"
    );
    assert_ne!(slot_of_stored_key(&stored("other")).unwrap(), imported);
    pair.write("hits", 1, 1);
    pair.write("other", 2, 2);
    let late = pair.primary.poll_batches(&pair.primary_store, 10).remove(0).1;
    // The import brought a newer image of `hits` than the late batch's.
    let mut importing = vec![false; engram_proto::limits::SLOT_COUNT as usize];
    importing[imported as usize] = true;
    pair.backup.set_aside(&importing);
    for op_id in 900..903 {
        pair.backup_store.apply(CLIENT, &add("hits", op_id), 10);
    }
    let answer = pair.backup.receive(late, &pair.map, &mut pair.backup_store, 10);
    assert!(matches!(answer, ReplicaAnswer::Applied { seq: 2, .. }), "{answer:?}");
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 3 }
    );
    assert_eq!(
        counter(&mut pair.backup_store, "other", 20),
        Response::Counter { value: 1 }
    );

    // A stream that narrows goes on without a snapshot: the slot stays set aside.
    pair.map.epoch = 5;
    let wanted = to_backup((0..engram_proto::limits::SLOT_COUNT - 1).collect(), true);
    pair.primary.configure(5, wanted, &pair.primary_store);
    pair.exchange();
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 3 }
    );
    // A new opening covering the slot (the stream gains the last one back) is the
    // primary's word on it again.
    pair.map.epoch = 6;
    pair.primary
        .configure(6, to_backup(every_slot(), true), &pair.primary_store);
    pair.exchange();
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 1 }
    );
}

#[test]
fn a_backup_the_map_stops_naming_gets_a_fresh_snapshot_if_a_fill_of_its_slots_goes_on() {
    let mut pair = Pair::new(&["hits"], true);
    pair.exchange();
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 1 }
    );
    // The map stops naming the backup, which drops its copy at that map; the control
    // plane orders a fill of the same slots to it.
    pair.map.epoch = 4;
    let fill = to_backup(every_slot(), false);
    assert!(pair.primary.configure(4, fill, &pair.primary_store).is_empty());
    drop_at_backup(&mut pair, &[true; engram_proto::limits::SLOT_COUNT as usize]);
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 0 }
    );
    assert_refilled(&mut pair);
}

#[test]
fn a_stream_that_loses_a_named_slot_but_goes_on_filling_it_reopens() {
    let mut pair = Pair::new(&["hits"], true);
    pair.exchange();
    let dropped = slot_of_stored_key(&stored("hits")).unwrap();
    // The map stops naming the backup for one slot while naming it for the others, and
    // a fill of that slot to it goes on: the stream covers the same slots as before.
    pair.map.epoch = 4;
    let mut named = every_slot();
    named.remove(dropped);
    let wanted = BTreeMap::from([(
        BACKUP,
        Wanted {
            slots: every_slot(),
            named,
            // No generation to compare: the un-naming alone must reopen the stream.
            fill_generation: None,
        },
    )]);
    assert!(pair.primary.configure(4, wanted, &pair.primary_store).is_empty());
    let mut marked = vec![false; engram_proto::limits::SLOT_COUNT as usize];
    marked[dropped as usize] = true;
    drop_at_backup(&mut pair, &marked);
    assert_refilled(&mut pair);
}

#[test]
fn a_fill_order_of_another_generation_starts_a_fresh_stream() {
    let mut pair = Pair::new(&["hits"], false);
    pair.exchange();
    pair.exchange();
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 1 }
    );
    // The backup dropped what the fill gave it (an aborted import onto it); the
    // control plane withdrew the fill and orders it again, in a new generation.
    drop_at_backup(&mut pair, &[true; engram_proto::limits::SLOT_COUNT as usize]);
    let again = to_backup(every_slot(), false);
    assert!(pair.primary.configure(3, again, &pair.primary_store).is_empty());
    assert!(
        pair.exchange().is_empty(),
        "the same generation goes on: nothing to send"
    );
    let mut next = to_backup(every_slot(), false);
    next.get_mut(&BACKUP).unwrap().fill_generation = Some(2);
    assert!(pair.primary.configure(3, next, &pair.primary_store).is_empty());
    pair.exchange();
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 1 }
    );
}

#[test]
fn a_hand_over_waits_until_the_backup_holds_every_change_of_the_frozen_slots() {
    let keys: Vec<String> = (0..600).map(|index| format!("key-{index}")).collect();
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut pair = Pair::new(&names, true);
    let slot = slot_of_stored_key(&stored("key-1")).expect("a stored key has a slot");
    let frozen: SlotSet = [slot].into_iter().collect();
    assert!(!pair.primary.may_hand_over(BACKUP, &frozen), "a snapshot still to send");
    for _ in 0..10 {
        pair.exchange();
    }
    assert!(pair.primary.may_hand_over(BACKUP, &frozen));
    pair.write("key-1", 1_000, 7);
    assert!(!pair.primary.may_hand_over(BACKUP, &frozen), "a change not shipped yet");
    let batches = pair.primary.poll_batches(&pair.primary_store, 10);
    assert!(
        !pair.primary.may_hand_over(BACKUP, &frozen),
        "a change shipped and not applied yet"
    );
    for (backup, batch) in batches {
        let answer = pair.backup.receive(batch, &pair.map, &mut pair.backup_store, 10);
        pair.primary.on_answer(backup, answer);
    }
    assert!(pair.primary.may_hand_over(BACKUP, &frozen));
    assert_eq!(
        counter(&mut pair.backup_store, "key-1", 20),
        counter(&mut pair.primary_store, "key-1", 20)
    );
    let other_backup = ShardProcess {
        incarnation: BACKUP.incarnation + 1,
        ..BACKUP
    };
    assert!(
        !pair.primary.may_hand_over(other_backup, &frozen),
        "a process that is not streamed to holds nothing"
    );
}

/// The primary hands the slot of `hits` over to its backup: the stream narrows to the
/// other slots without a new opening or a snapshot, a batch formed before the hand-over
/// and applied after the backup installed the new map does not depose the primary, and
/// a change of the handed-over slot is refused.
#[test]
fn a_stream_that_hands_slots_over_narrows_without_a_snapshot_and_late_batches_do_not_depose() {
    let mut pair = Pair::new(&["hits", "other"], true);
    for _ in 0..4 {
        pair.exchange();
    }
    let handed = slot_of_stored_key(&stored("hits")).unwrap();
    let other = slot_of_stored_key(&stored("other")).unwrap();
    assert_ne!(handed, other, "the test needs keys in two slots");
    assert!(pair.write("other", 10, 1));
    let late = pair.primary.poll_batches(&pair.primary_store, 10).remove(0).1;

    let kept = every_slot().difference(&[handed].into_iter().collect());
    pair.map.epoch = 4;
    pair.map.handed_over = [handed].into_iter().collect();
    let answer = pair.backup.receive(late, &pair.map, &mut pair.backup_store, 10);
    assert!(matches!(answer, ReplicaAnswer::Applied { .. }), "{answer:?}");
    assert_eq!(
        pair.primary.on_answer(BACKUP, answer),
        vec![PrimaryEvent::Released(vec![1])]
    );

    assert!(pair
        .primary
        .configure(4, to_backup(kept, true), &pair.primary_store)
        .is_empty());
    let redeclared = pair.primary.poll_batches(&pair.primary_store, 10);
    assert_eq!(redeclared.len(), 1, "the narrowed stream says so");
    let (_, batch) = &redeclared[0];
    assert!(batch.seq > 1 && !batch.covered.is_empty(), "no new opening: {batch:?}");
    assert!(batch.entries.is_empty(), "no snapshot: {} entries", batch.entries.len());
    for (backup, batch) in redeclared {
        let answer = pair.backup.receive(batch, &pair.map, &mut pair.backup_store, 10);
        assert!(pair.primary.on_answer(backup, answer).is_empty());
    }

    // A change of the handed-over slot would come from a deposed primary.
    pair.primary_store.apply(CLIENT, &add("hits", 11), 10);
    pair.primary.changed_key(&stored("hits"));
    let mut forged = pair.primary.poll_batches(&pair.primary_store, 10);
    assert!(forged.is_empty(), "the stream no longer carries the slot");
    assert!(pair.write("other", 12, 2));
    forged = pair.primary.poll_batches(&pair.primary_store, 10);
    let (_, mut batch) = forged.remove(0);
    let hits = stored("hits");
    batch
        .entries
        .extend(pair.primary_store.export_keys([hits.as_slice()], 10).entries);
    let answer = pair.backup.receive(batch, &pair.map, &mut pair.backup_store, 10);
    assert!(
        matches!(
            answer,
            ReplicaAnswer::Refused {
                refusal: ReplicaRefusal::NotPrimary { backup_epoch: 4 },
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(
        counter(&mut pair.backup_store, "hits", 20),
        Response::Counter { value: 1 },
        "the backup leads the slot now; a refused batch changes nothing"
    );
}

/// With two backups, a hand-over to one waits until the other has applied every change
/// of the frozen slots too.
#[test]
fn a_hand_over_waits_for_every_backup_of_the_slots() {
    let mut pair = Pair::new(&["hits"], true);
    let second = ShardProcess { node_id: 3, ..BACKUP };
    let mut both = to_backup(every_slot(), true);
    both.insert(second, both[&BACKUP].clone());
    pair.primary.configure(3, both, &pair.primary_store);
    let mut second_backup = Backup::new(second.incarnation);
    let mut second_store = Store::new(UNLIMITED_BYTES, 3);
    let frozen: SlotSet = [slot_of_stored_key(&stored("hits")).unwrap()].into_iter().collect();
    for _ in 0..4 {
        for (backup, batch) in pair.primary.poll_batches(&pair.primary_store, 10) {
            let (receiver, store) = if backup == second {
                (&mut second_backup, &mut second_store)
            } else {
                (&mut pair.backup, &mut pair.backup_store)
            };
            let answer = receiver.receive(batch, &pair.map, store, 10);
            pair.primary.on_answer(backup, answer);
        }
    }
    assert!(pair.primary.may_hand_over(BACKUP, &frozen));
    pair.write("hits", 10, 1);
    for (backup, batch) in pair.primary.poll_batches(&pair.primary_store, 10) {
        if backup == BACKUP {
            let answer = pair.backup.receive(batch, &pair.map, &mut pair.backup_store, 10);
            pair.primary.on_answer(backup, answer);
        }
    }
    assert!(
        !pair.primary.may_hand_over(BACKUP, &frozen),
        "the second backup has not applied the change yet"
    );
    for (backup, batch) in pair.primary.unacked(second).into_iter().map(|batch| (second, batch)) {
        let answer = second_backup.receive(batch, &pair.map, &mut second_store, 10);
        pair.primary.on_answer(backup, answer);
    }
    assert!(pair.primary.may_hand_over(BACKUP, &frozen));
}
