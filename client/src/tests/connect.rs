//! Connecting: a refused handshake, an unreachable seed, and a direct client without a
//! map.

use super::fake_server::FakeServer;
use crate::{Client, Error, ErrorCode, ServerCode};

#[tokio::test]
async fn a_refused_handshake_fails_connect_with_the_server_code() {
    let fake = FakeServer::front().await;
    fake.lock().refuse_hello = true;
    let error = Client::builder(&fake.address).connect().await.unwrap_err();
    assert_eq!(error.code(), Some(ServerCode::Known(ErrorCode::Unauthorized)));
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn an_unreachable_seed_fails_connect_with_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let error = Client::builder(address).connect().await.unwrap_err();
    assert!(matches!(error, Error::Connection { .. }), "{error}");
}

#[tokio::test]
async fn without_a_map_a_direct_client_falls_back_to_the_seed() {
    let fake = FakeServer::front().await;
    let client = Client::builder(&fake.address).connect().await.unwrap();
    assert_eq!(client.map_epoch(), 0);
    client.bytes("k").set("v").await.unwrap();
}
