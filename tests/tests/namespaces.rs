//! Namespaces keep tenants apart: the same key in two namespaces names two objects.

use std::time::Duration;

use engram_client::Client;
use engram_tests::{run_async, unique_key, EngramServer, ServerOptions};

async fn client_in(server: &EngramServer, namespace: &[u8], direct: bool) -> Client {
    server
        .client_builder()
        .namespace(namespace.to_vec())
        .direct(direct)
        .connect()
        .await
        .expect("client connects")
}

#[test]
fn same_key_in_two_namespaces_is_two_objects() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        for direct in [true, false] {
            let alpha = client_in(&server, b"alpha", direct).await;
            let beta = client_in(&server, b"beta", direct).await;
            let key = unique_key("shared");

            alpha.bytes(key.as_str()).set("from alpha").await.expect("alpha set");
            assert_eq!(
                beta.bytes(key.as_str()).get().await.expect("beta get"),
                None,
                "beta sees alpha's key"
            );
            beta.bytes(key.as_str()).set("from beta").await.expect("beta set");
            assert_eq!(engram_tests::stored_value(&alpha, key.as_str()).await, b"from alpha");
            assert_eq!(engram_tests::stored_value(&beta, key.as_str()).await, b"from beta");

            // Counters, and deletes, are per namespace too.
            let counter = unique_key("shared-counter");
            assert_eq!(alpha.counter(counter.as_str()).add(10).await.expect("add"), 10);
            assert_eq!(beta.counter(counter.as_str()).add(1).await.expect("add"), 1);
            assert!(beta.bytes(key.as_str()).del().await.expect("del"));
            assert_eq!(
                engram_tests::stored_value(&alpha, key.as_str()).await,
                b"from alpha",
                "beta's delete removed alpha's key (direct: {direct})"
            );
            assert_eq!(alpha.counter(counter.as_str()).get().await.expect("get"), 10);
        }
    });
}

#[test]
fn namespace_and_key_boundaries_do_not_blur() {
    // ("a", "bc") and ("ab", "c") concatenate to the same bytes; they must still differ.
    let server = EngramServer::start(ServerOptions::default().cores(2));
    run_async(Duration::from_secs(60), async {
        let suffix = unique_key("");
        let short = client_in(&server, b"a", true).await;
        let long = client_in(&server, b"ab", true).await;
        let empty = client_in(&server, b"", true).await;
        let short_key = format!("bc{suffix}");
        let long_key = format!("c{suffix}");
        let empty_key = format!("abc{suffix}");
        short.bytes(short_key.as_str()).set("short").await.expect("set");
        long.bytes(long_key.as_str()).set("long").await.expect("set");
        empty.bytes(empty_key.as_str()).set("empty").await.expect("set");
        assert_eq!(engram_tests::stored_value(&short, short_key.as_str()).await, b"short");
        assert_eq!(engram_tests::stored_value(&long, long_key.as_str()).await, b"long");
        assert_eq!(engram_tests::stored_value(&empty, empty_key.as_str()).await, b"empty");
    });
}

#[test]
fn cli_namespace_flag_separates_tenants() {
    let server = EngramServer::start(ServerOptions::default().cores(2));
    let key = unique_key("cli-ns");
    let set = server.cli(&["--namespace", "one", "set", &key, "1"]);
    assert_eq!(set.status.code(), Some(0), "{set:?}");
    let other = server.cli(&["--namespace", "two", "get", &key]);
    assert_eq!(
        other.status.code(),
        Some(1),
        "another namespace must not see the key: {other:?}"
    );
    let same = server.cli(&["--namespace", "one", "get", &key]);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(same.stdout, b"1\n");
}
