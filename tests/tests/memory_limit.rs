//! `--memory-limit`: writes past the limit get OutOfMemory, reads and deletes keep
//! working, and deleting makes room for writes again.

use std::time::Duration;

use engram_client::{Error, ErrorCode, ServerCode};
use engram_tests::{run_async, EngramServer, ServerOptions};

const VALUE_BYTES: usize = 1024;
/// Far more 1 KiB values than fit in 1 MiB, so the loop below always reaches the limit.
const WRITES_MAX: usize = 5_000;

fn value_for(n: usize) -> Vec<u8> {
    let mut value = format!("value-{n}-").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    value
}

fn is_out_of_memory(error: &Error) -> bool {
    error.code() == Some(ServerCode::Known(ErrorCode::OutOfMemory))
}

#[test]
fn writes_fail_at_the_limit_reads_and_deletes_work_and_deletes_make_room() {
    let server = EngramServer::start(ServerOptions::default().cores(1).memory_limit("1MiB"));
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;
        let key = |n: usize| format!("mem-{n}");

        let mut written = 0;
        let refusal = loop {
            assert!(
                written < WRITES_MAX,
                "{WRITES_MAX} values of {VALUE_BYTES} bytes fit in 1 MiB"
            );
            match client.bytes(key(written)).set(value_for(written)).await {
                Ok(_) => written += 1,
                Err(error) => break error,
            }
        };
        assert!(is_out_of_memory(&refusal), "expected OutOfMemory, got {refusal:?}");
        // Not much below the limit either: at least half of 1 MiB is usable for data.
        assert!(
            written * VALUE_BYTES >= 512 * 1024,
            "only {written} values of {VALUE_BYTES} bytes fit in 1 MiB"
        );

        // The refusal is stable, and covers other growing writes too.
        let error = client
            .bytes(key(written))
            .set(value_for(written))
            .await
            .expect_err("still full");
        assert!(is_out_of_memory(&error), "{error:?}");
        assert_eq!(
            client.bytes(key(written)).get().await.expect("get"),
            None,
            "refused write left nothing"
        );
        // Every earlier value is intact and readable.
        for n in 0..written {
            let read = client.bytes(key(n)).get().await.expect("get while full");
            assert_eq!(read.map(|read| read.value), Some(value_for(n)), "key {n}");
        }
        // An overwrite with a value of the same size needs no new memory.
        client
            .bytes(key(1))
            .set(value_for(1))
            .await
            .expect("same-size overwrite when full");

        let info = client.info().await.expect("info");
        assert_eq!(info.shards.len(), 1);
        let shard = &info.shards[0];
        assert_eq!(shard.memory_limit_bytes, 1 << 20);
        assert!(
            shard.memory_used_bytes <= shard.memory_limit_bytes,
            "memory_used_bytes {} above memory_limit_bytes {}",
            shard.memory_used_bytes,
            shard.memory_limit_bytes
        );

        // Deletes work when full, and make room.
        for n in 0..10 {
            assert!(
                client.bytes(key(n)).del().await.expect("del when full"),
                "key {n} existed"
            );
        }
        for n in written..written + 5 {
            client
                .bytes(key(n))
                .set(value_for(n))
                .await
                .expect("write after deletes made room");
        }
        for n in written..written + 5 {
            let read = client.bytes(key(n)).get().await.expect("get");
            assert_eq!(read.map(|read| read.value), Some(value_for(n)));
        }
    });
}

#[test]
fn appends_never_take_memory_past_the_limit() {
    // Fill a 1 MiB shard with 1 KiB values, then append single bytes to them. Each append
    // asks for one byte, but the value's buffer may grow by far more (a Vec doubles): the
    // limit is about memory used, so whatever an append is charged must fit under it.
    let server = EngramServer::start(ServerOptions::default().cores(1).memory_limit("1MiB"));
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;
        let key = |n: usize| format!("append-{n}");
        let mut written = 0;
        loop {
            assert!(
                written < WRITES_MAX,
                "{WRITES_MAX} values of {VALUE_BYTES} bytes fit in 1 MiB"
            );
            match client.bytes(key(written)).set(value_for(written)).await {
                Ok(_) => written += 1,
                Err(error) if is_out_of_memory(&error) => break,
                Err(error) => panic!("set {written}: {error}"),
            }
        }
        let mut appended = 0;
        for n in 0..written.min(50) {
            match client.bytes(key(n)).append("+").await {
                Ok(_) => appended += 1,
                Err(error) if is_out_of_memory(&error) => {}
                Err(error) => panic!("append to key {n}: {error}"),
            }
        }
        let shard = client.info().await.expect("info").shards.remove(0);
        assert!(
            shard.memory_used_bytes <= shard.memory_limit_bytes,
            "after {appended} one-byte appends to full 1 KiB values, memory_used_bytes {} exceeds \
             memory_limit_bytes {} by {} bytes",
            shard.memory_used_bytes,
            shard.memory_limit_bytes,
            shard.memory_used_bytes - shard.memory_limit_bytes
        );
        // Whatever was accepted reads back whole.
        for n in 0..written.min(50) {
            let read = engram_tests::stored_value(&client, key(n)).await;
            assert!(
                read == value_for(n) || read == [value_for(n), b"+".to_vec()].concat(),
                "key {n}"
            );
        }
    });
}
