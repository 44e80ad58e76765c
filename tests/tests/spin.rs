//! Spinning on both sides (`engramd --spin-us`, `ClientBuilder::spin`) changes how
//! answers are waited for, never what they are: pipelined calls, values larger than a
//! read, and calls that park at the server all get their own answers.

use std::time::Duration;

use engram_tests::{run_async, unique_key, EngramServer, ServerOptions};

#[test]
fn spinning_server_and_client_answer_everything_right() {
    let server = EngramServer::start(ServerOptions::default().cores(1).spin_us(200));
    run_async(Duration::from_secs(60), async {
        let client = server
            .client_builder()
            .spin(Duration::from_micros(200))
            .connect()
            .await
            .expect("client connects");
        // Concurrent calls share one connection, so reads see several frames at once.
        let mut calls = tokio::task::JoinSet::new();
        for index in 0..64usize {
            let client = client.clone();
            calls.spawn(async move {
                let key = unique_key(&format!("spin-{index}"));
                let value = vec![index as u8; 100 + index * 10];
                client.bytes(key.as_str()).set(value.clone()).await.expect("set");
                let read = client.bytes(key.as_str()).get().await.expect("get").expect("value");
                assert_eq!(read.value, value);
                client.counter("spin-counter").incr().await.expect("incr")
            });
        }
        let mut counts = calls.join_all().await;
        counts.sort_unstable();
        assert_eq!(counts, (1..=64).collect::<Vec<i64>>(), "every increment applied once");
        // A value larger than the server's read chunk arrives over several reads.
        let large = vec![7u8; 300 * 1024];
        let key = unique_key("spin-large");
        client.bytes(key.as_str()).set(large.clone()).await.expect("large set");
        assert_eq!(engram_tests::stored_value(&client, key.as_str()).await, large);
        // A parked call is answered while the connection spins and then parks.
        let latch = unique_key("spin-latch");
        client.latch(latch.as_str()).try_set_count(1).await.expect("set count");
        let waiter = {
            let client = client.clone();
            let latch = latch.clone();
            tokio::spawn(async move { client.latch(latch.as_str()).wait(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.latch(latch.as_str()).count_down().await.expect("count down");
        waiter.await.expect("waiter task").expect("latch opens");
    });
}
