//! Time to live: a key is readable before its deadline, gone after it and never back,
//! and the server's active expiry removes keys nobody reads again.

use std::time::{Duration, Instant};

use engram_client::{SetCondition, SetOptions};
use engram_tests::{run_async, total_keys, unique_key, EngramServer, ServerOptions};

const TTL: Duration = Duration::from_millis(200);
/// Longest a poll for the expiry may take; far above the TTL plus the 100 ms maintenance tick.
const EXPIRY_WAIT: Duration = Duration::from_secs(5);

fn with_ttl(ttl: Duration) -> SetOptions {
    SetOptions {
        ttl: Some(ttl),
        condition: SetCondition::Always,
    }
}

#[test]
fn key_is_readable_then_expires_and_never_reappears() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;

        // "Readable right away" can only be checked when set and get together took less
        // than the TTL (server clocks count whole milliseconds, hence the margin); on a
        // loopback that is the normal case, so at least one of a few attempts must be.
        let mut checked_before_deadline = false;
        let mut key = unique_key("ttl");
        for _ in 0..10 {
            key = unique_key("ttl");
            let bytes = client.bytes(key.as_str());
            let started = Instant::now();
            bytes
                .set_with("short-lived", with_ttl(TTL))
                .await
                .expect("set with ttl");
            let read = bytes.get().await.expect("get");
            if started.elapsed() < TTL - Duration::from_millis(50) {
                let read = read.expect("a key read before its deadline must exist");
                assert_eq!(read.value, b"short-lived");
                checked_before_deadline = true;
                break;
            }
        }
        assert!(
            checked_before_deadline,
            "no set+get pair completed within the TTL in 10 attempts"
        );

        let bytes = client.bytes(key.as_str());
        let deadline = Instant::now() + EXPIRY_WAIT;
        loop {
            if bytes.get().await.expect("get").is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "key still readable {EXPIRY_WAIT:?} after a {TTL:?} ttl"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Once gone, gone: keep reading for a while, through a few maintenance ticks.
        for _ in 0..25 {
            assert_eq!(bytes.get().await.expect("get"), None, "an expired key came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Conditional writes see it as absent, too.
        let outcome = bytes.set_if_absent("again").await.expect("set_if_absent");
        assert!(
            matches!(outcome, engram_client::SetOutcome::Written { .. }),
            "{outcome:?}"
        );

        // A key without ttl on the same shard is untouched by the expiry.
        let keeper = client.bytes(unique_key("no-ttl"));
        keeper.set("stays").await.expect("set");
        tokio::time::sleep(TTL * 2).await;
        assert_eq!(
            keeper.get().await.expect("get").expect("no-ttl key exists").value,
            b"stays"
        );
    });
}

#[test]
fn active_expiry_removes_keys_that_are_never_read() {
    // A server of its own, so its key count is this test's alone.
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;
        let baseline = total_keys(&client).await;
        const KEYS: u64 = 50;
        for n in 0..KEYS {
            client
                .bytes(unique_key(&format!("expire-{n}")))
                .set_with(vec![b'v'; 100], with_ttl(TTL))
                .await
                .expect("set with ttl");
        }
        let permanent = client.bytes(unique_key("permanent"));
        permanent.set("here").await.expect("set");

        // The writes may be counted before or after some already expired, so the count
        // only has to be reached or be on its way down; what must happen is the drop to
        // exactly the keys without ttl, without any of the expiring keys being read.
        let deadline = Instant::now() + EXPIRY_WAIT;
        let mut last = total_keys(&client).await;
        while last != baseline + 1 {
            assert!(
                Instant::now() < deadline,
                "key count is {last}, expected {} once active expiry ran",
                baseline + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            last = total_keys(&client).await;
        }
        assert_eq!(
            permanent.get().await.expect("get").expect("permanent key").value,
            b"here"
        );
        // Memory follows the keys: what is left is one small key and bookkeeping.
        let info = client.info().await.expect("info");
        let used: u64 = info.shards.iter().map(|shard| shard.memory_used_bytes).sum();
        assert!(
            used < KEYS * 100,
            "memory_used_bytes {used} after the expiry of {KEYS} keys of 100 bytes"
        );
    });
}

#[test]
fn cli_ttl_ms_expires() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let key = unique_key("cli-ttl");
    let set = server.cli(&["set", &key, "brief", "--ttl-ms", "200"]);
    assert_eq!(set.status.code(), Some(0), "{set:?}");
    let gone = engram_tests::poll_until(EXPIRY_WAIT, Duration::from_millis(50), || {
        let get = server.cli(&["get", &key]);
        match get.status.code() {
            Some(1) => Some(()),
            Some(0) => {
                assert_eq!(get.stdout, b"brief\n");
                None
            }
            other => panic!("get exited with {other:?}: {get:?}"),
        }
    });
    assert!(
        gone.is_some(),
        "key set with --ttl-ms 200 still readable after {EXPIRY_WAIT:?}"
    );
}
