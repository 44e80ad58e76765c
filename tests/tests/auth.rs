//! `--auth-token`: the handshake must carry the token, on every port.

use std::time::Duration;

use engram_client::{Error, ErrorCode, ServerCode};
use engram_proto::Response;
use engram_tests::raw::{hello, hello_frame, RawConnection};
use engram_tests::{run_async, EngramServer, ServerOptions};

const TOKEN: &str = "secret";

fn is_unauthorized(error: &Error) -> bool {
    error.code() == Some(ServerCode::Known(ErrorCode::Unauthorized))
}

#[test]
fn client_needs_the_token() {
    let server = EngramServer::start(ServerOptions::default().cores(2).auth_token(TOKEN));
    run_async(Duration::from_secs(60), async {
        let error = server
            .client_builder()
            .connect()
            .await
            .expect_err("no credentials must be refused");
        assert!(is_unauthorized(&error), "{error:?}");
        let error = server
            .client_builder()
            .credentials(b"Secret".to_vec())
            .connect()
            .await
            .expect_err("wrong credentials must be refused");
        assert!(is_unauthorized(&error), "{error:?}");
        let error = server
            .client_builder()
            .credentials(b"secret-and-more".to_vec())
            .connect()
            .await
            .expect_err("a longer token must be refused");
        assert!(is_unauthorized(&error), "{error:?}");

        for direct in [true, false] {
            let client = server
                .client_builder()
                .credentials(TOKEN.as_bytes().to_vec())
                .direct(direct)
                .connect()
                .await
                .expect("the right credentials are accepted");
            client.ping().await.expect("ping");
            let key = format!("authorized-{direct}");
            client.bytes(key.as_str()).set("in").await.expect("set");
            assert_eq!(engram_tests::stored_value(&client, key.as_str()).await, b"in");
        }
    });
}

#[test]
fn every_port_checks_the_token() {
    let server = EngramServer::start(ServerOptions::default().cores(2).auth_token(TOKEN));
    for address in std::iter::once(server.front()).chain(server.shards().iter().copied()) {
        let mut refused = RawConnection::connect(address);
        refused.send_raw(&hello_frame(0, &hello(1, b"default", b"")));
        let closed = refused.read_until_closed();
        let codes: Vec<_> = closed.frames.iter().map(|frame| frame.error_code()).collect();
        assert_eq!(codes, vec![Some(ErrorCode::Unauthorized)], "{address}: {closed:?}");

        let mut accepted = RawConnection::connect(address);
        accepted.handshake(&hello(1, b"default", TOKEN.as_bytes()));
        assert_eq!(
            accepted.command(engram_proto::Command::Admin(engram_proto::AdminCommand::Ping)),
            Response::Pong
        );
    }
}

#[test]
fn cli_needs_the_token() {
    let server = EngramServer::start(ServerOptions::default().cores(2).auth_token(TOKEN));
    let refused = server.cli(&["ping"]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"),
        "stderr should name the refusal: {refused:?}"
    );
    let accepted = server.cli(&["--credentials", TOKEN, "incr", "cli-auth"]);
    assert_eq!(accepted.status.code(), Some(0), "{accepted:?}");
    assert_eq!(accepted.stdout, b"1\n");
}
