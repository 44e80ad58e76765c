//! The blocking facade over the same handles, outside and inside a runtime.

use std::time::Duration;

use super::fake_server::FakeServer;
use crate::Client;

#[test]
fn the_blocking_facade_drives_the_same_handles() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeServer::front());
    let client = crate::blocking::Client::connect(Client::builder(&fake.address).direct(false)).unwrap();
    client.ping().unwrap();
    let bytes = client.bytes("b");
    assert_eq!(bytes.set("one").unwrap(), 1);
    assert_eq!(bytes.get().unwrap().unwrap().value, b"one");
    assert!(bytes.timeout(Duration::from_secs(1)).del().unwrap());
    assert_eq!(client.counter("c").add(2).unwrap(), 2);
    let clone = client.clone();
    std::thread::spawn(move || clone.counter("c").incr().unwrap())
        .join()
        .unwrap();
    assert_eq!(client.counter("c").get().unwrap(), 3);
}

/// Inside a runtime (async code, a Lambda handler) tokio refuses a nested `block_on`;
/// the facade hands its calls to its own worker instead, and dropping it there does not
/// wait for that worker. The fake serves from another worker of the test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_facade_works_inside_a_runtime() {
    let fake = FakeServer::front().await;
    let client = crate::blocking::Client::connect(Client::builder(&fake.address).direct(false)).unwrap();
    client.ping().unwrap();
    assert_eq!(client.counter("c").add(2).unwrap(), 2);
    let bytes = client.bytes("b");
    assert_eq!(bytes.set("one").unwrap(), 1);
    assert_eq!(bytes.get().unwrap().unwrap().value, b"one");
    drop(client);
}
