//! Tests of the store, one file per object or topic, with the helpers they share. The
//! coordination objects run next to small reference models under a virtual clock: step
//! by step, every answer (immediate or delivered later to a parked request) must be the
//! one the model predicts. Time advances one millisecond at a time with the store's
//! timers fired at each, as the shard's timekeeper does.

use engram_proto::{Command, DataRequest, ErrorCode, Request, Response, SetCondition};
use proptest::prelude::*;

use super::*;
use engram_proto::BytesCommand;

mod barrier;
mod bytes;
mod counter;
mod exactly_once;
mod future;
mod key;
mod latch;
mod limits;
mod lock;
mod map;
mod memory;
mod migration;
mod model;
mod objects;
mod pop_any;
mod queue;
mod scan;
mod semaphore;
mod ttl;

const KEY: &[u8] = b"object";

const UNLIMITED: u64 = u64::MAX / 2;

impl Store {
    fn drain_completions(&mut self) -> Vec<(WaiterId, Response)> {
        self.take_completions()
            .into_iter()
            .map(|completion| (completion.waiter, completion.response))
            .collect()
    }

    /// Applies a request that must be answered at once.
    fn run(&mut self, client_id: u64, request: &DataRequest, now_ms: u64) -> Response {
        match self.apply(client_id, request, now_ms) {
            Outcome::Ready(response) => response,
            Outcome::Parked(waiter) => panic!("{:?} parked as waiter {waiter}", request.command),
        }
    }
}

/// A request for an object; the store applies nothing else.
fn request(op_id: u64, command: Command) -> DataRequest {
    data_request(Request {
        op_id,
        completed_below_op_id: 0,
        command,
    })
}

fn data_request(request: Request) -> DataRequest {
    match request.into_asked() {
        engram_proto::Asked::Data(request) => request,
        engram_proto::Asked::Admin(admin) => panic!("{admin:?} is no request for an object"),
    }
}

fn code(response: &Response) -> Option<ErrorCode> {
    match response {
        Response::Error(reply) => ErrorCode::from_u16(reply.code),
        _ => None,
    }
}

fn set(key: &str, value: &str, ttl_ms: u64, condition: SetCondition) -> Command {
    Command::from(BytesCommand::Set {
        key: key.into(),
        value: value.into(),
        ttl_ms,
        condition,
    })
}

fn owner_name(owner: u8) -> Vec<u8> {
    vec![b'a' + owner]
}

/// Advances the clock by `by_ms`, one millisecond at a time, firing due timers at each.
fn advance(store: &mut Store, now: &mut u64, by_ms: u64, mut each: impl FnMut(&mut Store, u64)) {
    let until = *now + by_ms;
    while *now < until {
        *now += 1;
        store.expire_due(*now, usize::MAX);
        each(store, *now);
    }
}

/// Fires the store's timers at `now` and checks that exactly the model's waits due by
/// then were answered, with `Timeout`, in the store's timer order (deadline, then
/// waiter); drops them from the model's `(waiter, deadline)` list.
fn expire_waits(store: &mut Store, now: u64, waiting: &mut Vec<(WaiterId, u64)>) -> Result<(), TestCaseError> {
    store.expire_due(now, usize::MAX);
    let mut due: Vec<(u64, WaiterId)> = waiting
        .iter()
        .filter(|(_, deadline)| *deadline <= now)
        .map(|(waiter, deadline)| (*deadline, *waiter))
        .collect();
    due.sort_unstable();
    waiting.retain(|(_, deadline)| *deadline > now);
    let delivered = store.drain_completions();
    let delivered_waiters: Vec<WaiterId> = delivered.iter().map(|(waiter, _)| *waiter).collect();
    let due_waiters: Vec<WaiterId> = due.into_iter().map(|(_, waiter)| waiter).collect();
    prop_assert_eq!(delivered_waiters, due_waiters);
    let all_timed_out = delivered
        .iter()
        .all(|(_, response)| code(response) == Some(ErrorCode::Timeout));
    prop_assert!(all_timed_out, "{:?}", delivered);
    Ok(())
}
