//! A pop of several keys (`BLPOP a b c`): it takes from the first key holding an item,
//! or waits in every key's queue; whichever push answers it, timeout or cancel ends it,
//! it leaves no waiter (and no queue kept alive for one) behind, and no value is lost.

use engram_proto::{DataCommand, QueueCommand, QueueEnd};

use super::*;

/// Keys as a connection stores them (default namespace), all of the slot of tag `t`.
fn stored(key: &str) -> Vec<u8> {
    let mut stored = vec![0];
    stored.extend_from_slice(format!("{{t}}{key}").as_bytes());
    stored
}

fn pop_any(keys: &[&str], timeout_ms: u64) -> Command {
    Command::Data(DataCommand::Queue(QueueCommand::PopAny {
        key: stored(keys[0]),
        more_keys: keys[1..].iter().map(|key| stored(key)).collect(),
        end: QueueEnd::Front,
        timeout_ms,
    }))
}

fn push(store: &mut Store, key: &str, value: &str, now: u64) -> Response {
    let command = Command::from(QueueCommand::Push {
        key: stored(key),
        value: value.into(),
        end: QueueEnd::Back,
    });
    store.run(1, &request(0, command), now)
}

fn length(store: &mut Store, key: &str) -> Response {
    store.run(1, &request(0, Command::from(QueueCommand::Len { key: stored(key) })), 0)
}

fn popped(key_index: u32, value: &str, response: &Response) -> bool {
    matches!(response, Response::Popped { key_index: index, value: got, .. } if *index == key_index && got == value.as_bytes())
}

#[test]
fn it_takes_from_the_first_key_that_holds_an_item() {
    let mut store = Store::new(UNLIMITED, 3);
    push(&mut store, "b", "from b", 0);
    push(&mut store, "c", "from c", 0);
    let answer = store.run(1, &request(0, pop_any(&["a", "b", "c"], 0)), 0);
    assert!(popped(1, "from b", &answer), "{answer:?}");
    let answer = store.run(1, &request(0, pop_any(&["a", "b", "c"], 0)), 0);
    assert!(popped(2, "from c", &answer), "{answer:?}");
    assert_eq!(
        store.run(1, &request(0, pop_any(&["a", "b", "c"], 0)), 0),
        Response::Missing
    );
    assert_eq!(store.stats().keys, 0, "no queue is left behind");
}

#[test]
fn a_push_to_any_key_answers_it_once_and_the_other_queues_forget_it() {
    let mut store = Store::new(UNLIMITED, 3);
    let Outcome::Parked(waiter) = store.apply(1, &request(0, pop_any(&["a", "b", "c"], 1_000)), 0) else {
        panic!("an empty pop with a timeout waits")
    };
    assert_eq!(store.stats().keys, 3, "a queue waits on each key");
    assert_eq!(push(&mut store, "c", "first", 1), Response::QueueLength { length: 0 });
    let completions = store.take_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].waiter, waiter);
    assert!(
        popped(2, "first", &completions[0].response),
        "{:?}",
        completions[0].response
    );
    assert_eq!(
        completions[0].key(),
        stored("c"),
        "the answer reports the key it changed"
    );
    // The waiter is gone from a and b: their pushes are queued, not swallowed.
    assert_eq!(push(&mut store, "a", "kept", 2), Response::QueueLength { length: 1 });
    assert!(store.take_completions().is_empty());
    assert_eq!(length(&mut store, "a"), Response::QueueLength { length: 1 });
    assert_eq!(store.stats().keys, 1, "only a's queue, which holds an item, is left");
}

#[test]
fn a_timeout_or_a_cancel_leaves_no_queue_behind() {
    let mut store = Store::new(UNLIMITED, 3);
    let Outcome::Parked(_) = store.apply(1, &request(0, pop_any(&["a", "b"], 10)), 0) else {
        panic!()
    };
    store.expire_due(10, usize::MAX);
    let completions = store.take_completions();
    assert_eq!(completions.len(), 1);
    assert_eq!(code(&completions[0].response), Some(ErrorCode::Timeout));
    assert_eq!(store.stats().keys, 0);

    let Outcome::Parked(waiter) = store.apply(1, &request(0, pop_any(&["a", "b"], 1_000)), 20) else {
        panic!()
    };
    store.cancel(waiter, 21);
    assert_eq!(store.stats().keys, 0);
    assert_eq!(push(&mut store, "b", "v", 22), Response::QueueLength { length: 1 });
}

#[test]
fn an_undelivered_value_goes_back_to_the_key_it_came_from() {
    let mut store = Store::new(UNLIMITED, 3);
    let Outcome::Parked(_) = store.apply(1, &request(0, pop_any(&["a", "b"], 1_000)), 0) else {
        panic!()
    };
    push(&mut store, "b", "v", 1);
    let mut completions = store.take_completions();
    store.undeliverable(completions.remove(0), 2);
    assert_eq!(length(&mut store, "b"), Response::QueueLength { length: 1 });
    assert_eq!(length(&mut store, "a"), Response::QueueLength { length: 0 });
}

#[test]
fn keys_of_several_slots_another_type_or_too_many_are_refused() {
    let mut store = Store::new(UNLIMITED, 3);
    let mut apart = pop_any(&["a"], 0);
    if let Command::Data(DataCommand::Queue(QueueCommand::PopAny { more_keys, .. })) = &mut apart {
        more_keys.push(b"\x00elsewhere".to_vec());
    }
    assert_eq!(code(&store.run(1, &request(0, apart), 0)), Some(ErrorCode::CrossSlot));
    store.run(
        1,
        &request(
            0,
            set(std::str::from_utf8(&stored("s")).unwrap(), "v", 0, SetCondition::Always),
        ),
        0,
    );
    let answer = store.run(1, &request(0, pop_any(&["a", "s"], 0)), 0);
    assert_eq!(code(&answer), Some(ErrorCode::WrongType), "{answer:?}");
    let names: Vec<String> = (0..=engram_proto::limits::POP_KEYS_MAX)
        .map(|i| format!("k{i}"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let answer = store.run(1, &request(0, pop_any(&names, 0)), 0);
    assert_eq!(code(&answer), Some(ErrorCode::InvalidArgument), "{answer:?}");
}

#[test]
fn the_same_key_twice_is_answered_once() {
    let mut store = Store::new(UNLIMITED, 3);
    let Outcome::Parked(_) = store.apply(1, &request(0, pop_any(&["a", "a"], 1_000)), 0) else {
        panic!()
    };
    push(&mut store, "a", "one", 1);
    assert_eq!(store.take_completions().len(), 1);
    assert_eq!(push(&mut store, "a", "two", 2), Response::QueueLength { length: 1 });
}
