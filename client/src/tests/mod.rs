//! The client against the in-process fake node, one file per topic, with the helpers
//! they share.

use std::time::Duration;

use engram_proto::limits::SLOT_COUNT;
use engram_proto::SlotHasher;

use self::fake_server::FakeServer;
use crate::{Client, Command, SetCondition};
use engram_proto::{BytesCommand, CounterCommand};

mod batch;
mod blocking;
mod calls;
mod connect;
mod coordination;
mod failures;
pub(crate) mod fake_server;
mod routing;

async fn front_client(fake: &FakeServer) -> Client {
    Client::builder(&fake.address).direct(false).connect().await.unwrap()
}

/// Waits for a condition the fake reaches on its own; polls without a deadline because
/// the test harness's own timeout is the bound, not a guess at how fast a machine is.
async fn until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A key of the default namespace in the second half of the slots, the half that
/// [`two_shard_map`] gives its second shard.
fn key_in_second_half() -> String {
    key_in_half(true)
}

/// A key of the default namespace in the first half of the slots.
fn key_in_first_half() -> String {
    key_in_half(false)
}

fn key_in_half(second: bool) -> String {
    let hasher = SlotHasher::new(b"default");
    (0..)
        .map(|index| format!("key{index}"))
        .find(|key| (hasher.slot(key.as_bytes()) >= SLOT_COUNT / 2) == second)
        .unwrap()
}

fn set(key: &str, value: &str) -> (Command, bool) {
    let command = Command::from(BytesCommand::Set {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ttl_ms: 0,
        condition: SetCondition::Always,
    });
    (command, true)
}

fn get(key: &str) -> (Command, bool) {
    (
        Command::from(BytesCommand::Get {
            key: key.as_bytes().to_vec(),
        }),
        false,
    )
}

fn add(key: &str, delta: i64) -> (Command, bool) {
    (
        Command::from(CounterCommand::Add {
            key: key.as_bytes().to_vec(),
            delta,
        }),
        true,
    )
}
