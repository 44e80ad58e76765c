//! Listing and counting keys: a scan lists every key present throughout it, however
//! the table grows or is rebuilt meanwhile, and only its own namespace's; filters and
//! counts agree with what is stored.

use std::collections::BTreeSet;

use super::*;
use engram_proto::{KeyCommand, LockCommand, ObjectKind};

/// A key as a connection stores it: `[namespace length][namespace][client key]`.
fn stored(namespace: &str, key: &str) -> Vec<u8> {
    let mut stored = vec![namespace.len() as u8];
    stored.extend_from_slice(namespace.as_bytes());
    stored.extend_from_slice(key.as_bytes());
    stored
}

fn put(store: &mut Store, namespace: &str, key: &str) {
    let command = Command::from(BytesCommand::Set {
        key: stored(namespace, key),
        value: b"v".to_vec(),
        ttl_ms: 0,
        condition: SetCondition::Always,
    });
    assert!(matches!(
        store.run(1, &request(0, command), 0),
        Response::Written { .. }
    ));
}

fn delete(store: &mut Store, namespace: &str, key: &str) {
    let command = Command::from(BytesCommand::Del {
        key: stored(namespace, key),
    });
    store.run(1, &request(0, command), 0);
}

fn page(store: &mut Store, namespace: &str, cursor: u64, count: u32, pattern: Option<&str>) -> (Vec<String>, u64) {
    let command = Command::from(KeyCommand::Scan {
        key: stored(namespace, "any"),
        cursor,
        count,
        pattern: pattern.map(|pattern| pattern.as_bytes().to_vec()),
        kind: None,
    });
    match store.run(1, &request(0, command), 0) {
        Response::Keys { keys, cursor } => (
            keys.into_iter().map(|key| String::from_utf8(key).unwrap()).collect(),
            cursor,
        ),
        other => panic!("a scan answered {other:?}"),
    }
}

fn count(store: &mut Store, namespace: &str) -> u64 {
    let command = Command::from(KeyCommand::Count {
        key: stored(namespace, "any"),
    });
    match store.run(1, &request(0, command), 0) {
        Response::KeyCount { count } => count,
        other => panic!("a count answered {other:?}"),
    }
}

#[test]
fn a_scan_lists_every_key_present_throughout_while_the_table_grows_and_shrinks() {
    let mut store = Store::new(UNLIMITED, 7);
    for i in 0..2_000 {
        put(&mut store, "a", &format!("kept{i}"));
        put(&mut store, "a", &format!("gone{i}"));
        put(&mut store, "b", &format!("other{i}"));
    }
    let places_before = store.entries.buckets();
    let (mut listed, mut cursor, mut pages, mut added, mut deleted) = (BTreeSet::new(), 0, 0, 0, 0);
    loop {
        let (keys, next) = page(&mut store, "a", cursor, 7, None);
        listed.extend(keys);
        pages += 1;
        // Between pages the table changes: keys come (growing it, so entries move) and
        // keys go (leaving room that new ones reuse).
        for _ in 0..40 {
            put(&mut store, "a", &format!("new{added}"));
            added += 1;
        }
        for _ in 0..5 {
            if deleted < 2_000 {
                delete(&mut store, "a", &format!("gone{deleted}"));
                deleted += 1;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
        assert!(pages < 100_000, "the scan does not end");
    }
    let missed: Vec<String> = (0..2_000)
        .map(|i| format!("kept{i}"))
        .filter(|key| !listed.contains(key))
        .collect();
    assert!(
        missed.is_empty(),
        "{} keys present throughout were not listed: {missed:?}",
        missed.len()
    );
    assert!(
        listed.iter().all(|key| !key.starts_with("other")),
        "another namespace's keys were listed"
    );
    assert!(
        store.entries.buckets() > places_before,
        "the table grew during the scan ({places_before} places before)"
    );
    assert_eq!(count(&mut store, "b"), 2_000);
    assert_eq!(count(&mut store, "a"), 2_000 + (2_000 - deleted) + added);
    assert_eq!(count(&mut store, "c"), 0);
}

#[test]
fn a_page_takes_at_most_its_count_of_steps_and_filters_by_name_and_kind() {
    let mut store = Store::new(UNLIMITED, 7);
    for i in 0..100 {
        put(&mut store, "", &format!("user:{i}"));
        put(&mut store, "", &format!("order:{i}"));
    }
    let lock = Command::from(LockCommand::Acquire {
        key: stored("", "user:lock"),
        owner: b"o".to_vec(),
        lease_ms: 60_000,
        wait_ms: 0,
    });
    store.run(1, &request(0, lock), 0);
    let (keys, cursor) = page(&mut store, "", 0, 5, None);
    assert!(keys.len() <= 5 && cursor != 0, "{keys:?}, cursor {cursor}");

    let mut users = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let (keys, next) = page(&mut store, "", cursor, 64, Some("user:*"));
        users.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(users.len(), 101);
    assert!(users.iter().all(|key| key.starts_with("user:")));

    let locks = Command::from(KeyCommand::Scan {
        key: stored("", "any"),
        cursor: 0,
        count: engram_proto::limits::SCAN_COUNT_MAX,
        pattern: None,
        kind: Some(ObjectKind::Lock),
    });
    match store.run(1, &request(0, locks), 0) {
        Response::Keys { keys, cursor: 0 } => assert_eq!(keys, vec![b"user:lock".to_vec()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&mut store, ""), 201);
}

#[test]
fn a_pattern_longer_than_the_limit_is_refused() {
    let mut store = Store::new(UNLIMITED, 7);
    let command = Command::from(KeyCommand::Scan {
        key: stored("", "any"),
        cursor: 0,
        count: 10,
        pattern: Some(vec![b'*'; engram_proto::limits::SCAN_PATTERN_BYTES_MAX + 1]),
        kind: None,
    });
    let answer = store.run(1, &request(0, command), 0);
    assert_eq!(code(&answer), Some(ErrorCode::InvalidArgument), "{answer:?}");
}

#[test]
fn a_cursor_from_before_the_table_moved_its_entries_starts_over() {
    let mut store = Store::new(UNLIMITED, 7);
    for i in 0..100 {
        put(&mut store, "", &format!("k{i}"));
    }
    let (_, midway) = page(&mut store, "", 0, 8, None);
    let (_, still_midway) = page(&mut store, "", midway, 8, None);
    assert_ne!(still_midway, 0);
    let places = store.entries.buckets();
    let mut i = 100;
    while store.entries.buckets() == places {
        put(&mut store, "", &format!("k{i}"));
        i += 1;
    }
    let from_start = page(&mut store, "", 0, 8, None);
    assert_eq!(
        page(&mut store, "", midway, 8, None),
        from_start,
        "a cursor from the old layout walks from the first place"
    );
    // Within one layout, a cursor goes on where it stopped.
    let (_, resumed) = from_start;
    assert_ne!(page(&mut store, "", resumed, 8, None), page(&mut store, "", 0, 8, None));
}
