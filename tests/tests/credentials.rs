//! `--credentials-file`: credentials per tenant and role. A tenant reaches only its own
//! namespaces' objects (read, write, list, wait), each command needs its right, a data
//! token cannot administer, the Redis door's AUTH admits by the same file, and SIGHUP
//! reloads it for new connections while open ones keep what they were granted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engram_client::{Client, Error, ErrorCode, ServerCode};
use engram_proto::credentials::credential_line;
use engram_proto::{Right, Rights};
use engram_tests::processes::Scratch;
use engram_tests::resp::{Reply, RespConnection};
use engram_tests::server::{free_port, next_loopback, refused_total};
use engram_tests::{run_async, EngramServer, ServerOptions};

const ALICE: &str = "alice-token-4f1c0d9e8b7a";
const BOB: &str = "bob-token-a3e9c2d7f0b1";
const READER: &str = "reader-token-6b2e8f4a1c9d";
const OPS: &str = "ops-token-0e7d3b9a5f2c";
const NODES: &str = "node-token-9c4f1a7e3d0b";

/// Bounds the wait for a SIGHUP to take effect: the signal thread reloads at once.
const RELOAD_LIMIT: Duration = Duration::from_secs(20);

fn credentials_text(alice_namespaces: &str) -> String {
    let coordinate_data = Rights::DATA;
    [
        credential_line("alice", ALICE.as_bytes(), coordinate_data, alice_namespaces),
        credential_line("bob", BOB.as_bytes(), coordinate_data, "app-b"),
        credential_line("reader", READER.as_bytes(), Rights::NONE.with(Right::Read), "app-a"),
        credential_line("ops", OPS.as_bytes(), Rights::NONE.with(Right::Admin), "*"),
        credential_line("nodes", NODES.as_bytes(), Rights::NONE.with(Right::Node), "*"),
    ]
    .join("\n")
}

fn write_credentials(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("credentials");
    std::fs::write(&path, text).unwrap();
    path
}

fn server(scratch: &Scratch) -> EngramServer {
    let path = write_credentials(scratch.path(), &credentials_text("app-a"));
    let bind = next_loopback();
    EngramServer::start(
        ServerOptions::default()
            .cores(2)
            .bind(bind)
            .resp()
            .metrics_port(free_port(bind))
            .credentials_file(path, NODES),
    )
}

async fn connect(server: &EngramServer, token: &str, namespace: &str) -> Result<Client, Error> {
    server
        .client_builder()
        .credentials(token.as_bytes().to_vec())
        .namespace(namespace)
        .connect()
        .await
}

fn code(error: &Error) -> Option<ServerCode> {
    error.code()
}

fn is(code_expected: ErrorCode) -> Option<ServerCode> {
    Some(ServerCode::Known(code_expected))
}

#[test]
fn a_tenant_reaches_only_its_namespaces_and_no_token_reaches_anything() {
    let scratch = Scratch::new("credentials-tenants");
    let server = server(&scratch);
    run_async(Duration::from_secs(60), async {
        for token in ["", "alice-token", "ALICE-TOKEN-4F1C0D9E8B7A"] {
            let refused = connect(&server, token, "app-a").await.expect_err("an unknown token");
            assert_eq!(code(&refused), is(ErrorCode::Unauthorized), "{token:?}: {refused}");
        }
        let foreign = connect(&server, ALICE, "app-b")
            .await
            .expect_err("another tenant's namespace");
        assert_eq!(code(&foreign), is(ErrorCode::Forbidden), "{foreign}");
        assert!(
            foreign.to_string().contains("may not use namespace `app-b`"),
            "{foreign}"
        );

        let alice = connect(&server, ALICE, "app-a").await.unwrap();
        let bob = connect(&server, BOB, "app-b").await.unwrap();
        alice.bytes("shared-name").set("alice's").await.unwrap();
        assert!(
            bob.bytes("shared-name").get().await.unwrap().is_none(),
            "bob read alice's key"
        );
        bob.bytes("shared-name").set("bob's").await.unwrap();
        let kept = alice.bytes("shared-name").get().await.unwrap().unwrap();
        assert_eq!(kept.value, b"alice's", "bob's write reached alice's key");

        // A wait in one namespace is not served by the other's objects.
        bob.queue("jobs").push_back("for bob").await.unwrap();
        let popped = alice
            .queue("jobs")
            .pop_front(Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(popped, None, "alice's pop took bob's item");
        assert_eq!(bob.queue("jobs").len().await.unwrap(), 1);
        let alices_lock = alice.lock("door");
        let held = alices_lock
            .acquire("alice", Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        let bobs = bob
            .lock("door")
            .try_acquire("bob", Duration::from_secs(30))
            .await
            .unwrap();
        assert!(bobs.is_some(), "bob's lock of the same name waited on alice's");
        drop(held);
    });
    assert!(refused_total(server.metrics_address().unwrap(), "unauthorized") >= 3);
    assert!(refused_total(server.metrics_address().unwrap(), "forbidden") >= 1);
}

#[test]
fn each_command_needs_its_right_and_a_data_token_cannot_administer() {
    let scratch = Scratch::new("credentials-rights");
    let server = server(&scratch);
    run_async(Duration::from_secs(60), async {
        let alice = connect(&server, ALICE, "app-a").await.unwrap();
        alice.bytes("note").set("written").await.unwrap();
        alice.ping().await.expect("a ping needs no right");
        let info = alice.info().await.expect_err("node statistics need admin");
        assert_eq!(code(&info), is(ErrorCode::Forbidden), "{info}");
        assert!(
            info.to_string()
                .contains("credential `alice` lacks the admin right, which info needs"),
            "{info}"
        );

        let reader = connect(&server, READER, "app-a").await.unwrap();
        let read = reader.bytes("note").get().await.unwrap().unwrap();
        assert_eq!(read.value, b"written");
        let write = reader.bytes("note").set("over").await.expect_err("a write needs write");
        assert_eq!(code(&write), is(ErrorCode::Forbidden), "{write}");
        assert!(write.to_string().contains("lacks the write right"), "{write}");
        let lock = reader.lock("l").try_acquire("r", Duration::from_secs(5)).await;
        let lock = lock.expect_err("a lock needs coordinate");
        assert!(lock.to_string().contains("lacks the coordinate right"), "{lock}");
        // The connection stays open after a refused command.
        assert_eq!(reader.bytes("note").get().await.unwrap().unwrap().value, b"written");

        let ops = connect(&server, OPS, "app-a").await.unwrap();
        let info = ops.info().await.expect("admin reads node statistics");
        assert_eq!(info.shards.len(), 2);
        let data = ops.bytes("note").get().await.expect_err("admin is not read");
        assert_eq!(code(&data), is(ErrorCode::Forbidden), "{data}");
    });
    let refused = server.cli(&["--credentials", ALICE, "--namespace", "app-a", "info"]);
    assert_ne!(refused.status.code(), Some(0), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Forbidden"),
        "{refused:?}"
    );
}

#[test]
fn the_redis_door_admits_by_the_same_file() {
    let scratch = Scratch::new("credentials-door");
    let server = server(&scratch);
    let door = server.resp().unwrap();
    let mut stranger = RespConnection::connect(door);
    assert!(matches!(stranger.command(&["GET", "k"]), Reply::Error(line) if line.starts_with("NOAUTH")));
    assert!(matches!(stranger.command(&["INFO"]), Reply::Error(line) if line.starts_with("NOAUTH")));
    assert!(
        matches!(stranger.command(&["AUTH", "app-a", "guess"]), Reply::Error(line) if line.starts_with("WRONGPASS"))
    );
    let foreign = stranger.command(&["AUTH", "app-b", ALICE]);
    assert!(
        matches!(&foreign, Reply::Error(line) if line.starts_with("NOPERM") && line.contains("`app-b`")),
        "{foreign:?}"
    );

    let mut alice = RespConnection::connect(door);
    assert_eq!(alice.command(&["AUTH", "app-a", ALICE]), Reply::ok());
    let mut bob = RespConnection::connect(door);
    assert_eq!(bob.command(&["AUTH", "app-b", BOB]), Reply::ok());
    for index in 0..20 {
        let key = format!("alice-{index}");
        assert_eq!(alice.command(&["SET", &key, "v"]), Reply::ok());
    }
    assert_eq!(bob.command(&["SET", "bob-only", "v"]), Reply::ok());
    assert_eq!(bob.command(&["DBSIZE"]), Reply::Integer(1));
    assert_eq!(
        listed_keys(&mut bob),
        vec![b"bob-only".to_vec()],
        "bob listed alice's keys"
    );
    assert_eq!(bob.command(&["GET", "alice-0"]), Reply::Nil);
    assert_eq!(alice.command(&["DBSIZE"]), Reply::Integer(20));

    let mut reader = RespConnection::connect(door);
    assert_eq!(reader.command(&["AUTH", "app-a", READER]), Reply::ok());
    assert_eq!(reader.command(&["GET", "alice-0"]), Reply::bulk("v"));
    let refused = reader.command(&["MSET", "a", "1", "b", "2"]);
    assert!(
        matches!(&refused, Reply::Error(line) if line.starts_with("NOPERM") && line.contains("write right")),
        "{refused:?}"
    );
    assert_eq!(
        reader.command(&["EXISTS", "a"]),
        Reply::Integer(0),
        "a refused MSET wrote"
    );

    // A node's token is no client's at the door: it reads no tenant's keys.
    let mut node = RespConnection::connect(door);
    assert_eq!(node.command(&["AUTH", "app-a", NODES]), Reply::ok());
    let refused = node.command(&["GET", "alice-0"]);
    assert!(
        matches!(&refused, Reply::Error(line) if line.starts_with("NOPERM") && line.contains("read right")),
        "{refused:?}"
    );

    // Guessing is cut short: the connection closes at the tenth refused AUTH.
    let mut guesser = RespConnection::connect(door);
    for guess in 0..engram_proto::limits::RESP_AUTH_FAILURES_PER_CONNECTION_MAX {
        let refused = guesser.command(&["AUTH", "app-a", &format!("guess-{guess}")]);
        assert!(
            matches!(&refused, Reply::Error(line) if line.starts_with("WRONGPASS")),
            "{refused:?}"
        );
    }
    assert!(guesser.is_closed(), "the connection outlived its refused AUTHs");
}

/// Every key a SCAN of the connection's namespace lists, across pages.
fn listed_keys(connection: &mut RespConnection) -> Vec<Vec<u8>> {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    loop {
        let Reply::Array(page) = connection.command(&["SCAN", &cursor, "COUNT", "100"]) else {
            panic!("SCAN answers an array");
        };
        let [Reply::Bulk(next), Reply::Array(listed)] = &page[..] else {
            panic!("SCAN page {page:?}");
        };
        keys.extend(listed.iter().map(|key| match key {
            Reply::Bulk(key) => key.clone(),
            other => panic!("a listed key {other:?}"),
        }));
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            return keys;
        }
    }
}

#[test]
fn sighup_reloads_the_file_and_open_connections_follow_it() {
    let scratch = Scratch::new("credentials-reload");
    let server = server(&scratch);
    let door = server.resp().unwrap();
    run_async(Duration::from_secs(60), async {
        let open = connect(&server, ALICE, "app-a").await.unwrap();
        open.counter("visits").add(1).await.unwrap();
        let bobs = connect(&server, BOB, "app-b").await.unwrap();
        bobs.counter("visits").add(1).await.unwrap();
        let reader = connect(&server, READER, "app-a").await.unwrap();
        assert!(reader.counter("visits").add(1).await.is_err(), "a reader wrote");
        assert!(connect(&server, ALICE, "app-c").await.is_err());
        let mut alice_at_door = RespConnection::connect(door);
        assert_eq!(alice_at_door.command(&["AUTH", "app-a", ALICE]), Reply::ok());

        // Alice moves to app-c, the reader may write; a file that did not parse would
        // change nothing.
        let moved = credentials_text("app-c").replace(" read app-a", " read,write app-a");
        write_credentials(scratch.path(), &moved);
        // SAFETY: kill(2) on the pid of the server this test started.
        assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) }, 0);
        let deadline = Instant::now() + RELOAD_LIMIT;
        while connect(&server, ALICE, "app-c").await.is_err() {
            assert!(Instant::now() < deadline, "the reload did not take effect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refused = connect(&server, ALICE, "app-a")
            .await
            .expect_err("app-a is no longer alice's");
        assert_eq!(code(&refused), is(ErrorCode::Forbidden), "{refused}");
        // Open connections follow the file at their next request: alice's in app-a ends,
        // at the door too; bob's goes on; the reader's now writes.
        let revoked = open
            .counter("visits")
            .add(1)
            .await
            .expect_err("alice's app-a connection went on");
        assert_eq!(code(&revoked), is(ErrorCode::Forbidden), "{revoked}");
        let at_door = alice_at_door.command(&["GET", "k"]);
        assert!(
            matches!(&at_door, Reply::Error(line) if line.contains("credentials revoked")),
            "{at_door:?}"
        );
        assert!(alice_at_door.is_closed(), "the door kept alice's connection");
        assert_eq!(
            bobs.counter("visits").add(1).await.unwrap(),
            2,
            "bob's connection was cut"
        );
        assert_eq!(
            reader.counter("visits").add(1).await.unwrap(),
            2,
            "the reader still may not write"
        );

        write_credentials(scratch.path(), "alice sha256:00 all *");
        assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) }, 0);
        let deadline = Instant::now() + RELOAD_LIMIT;
        while !server.stderr_text().contains("credentials reload failed") {
            assert!(
                Instant::now() < deadline,
                "the broken file was not read: {}",
                server.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            connect(&server, ALICE, "app-c").await.is_ok(),
            "a broken file replaced the credentials"
        );
    });
}

#[test]
fn a_node_will_not_start_on_a_file_it_cannot_use() {
    let scratch = Scratch::new("credentials-start");
    let path = write_credentials(scratch.path(), "alice sha256:xyz read *\n");
    let options = ServerOptions::default().cores(1).credentials_file(path, NODES);
    let Err(refused) = EngramServer::try_start(options) else {
        panic!("engramd started on a credentials file with a malformed digest");
    };
    assert!(refused.status.is_some_and(|status| !status.success()), "{refused}");
    assert!(
        refused
            .stderr
            .contains("credentials:1: `sha256:xyz` is not sha256: and 64 hex digits"),
        "{refused}"
    );
    let mut shared = ServerOptions::default().cores(1).auth_token("shared");
    shared.node_token = Some(NODES.to_string());
    let Err(refused) = EngramServer::try_start(shared) else {
        panic!("engramd started with a node token and no credentials file");
    };
    assert!(
        refused.stderr.contains("--node-token needs --credentials-file"),
        "{refused}"
    );
    // A node token the file does not admit as a node would be refused by every peer.
    let path = write_credentials(scratch.path(), &credentials_text("app-a"));
    let options = ServerOptions::default().cores(1).credentials_file(path, ALICE);
    let Err(refused) = EngramServer::try_start(options) else {
        panic!("engramd started with a tenant's token as its node token");
    };
    assert!(
        refused.stderr.contains("--node-token is not admitted") && refused.stderr.contains("lacks the node right"),
        "{refused}"
    );
}

/// `engram token`, as the README shows it: the line goes to the file, the token to its
/// holder, and the token then works with the CLI as the line says.
#[test]
fn engram_token_makes_a_line_for_the_file_and_a_token_for_its_holder() {
    let scratch = Scratch::new("credentials-token");
    let token = |name: &str, rights: &str, namespaces: &str| {
        let made = engram_tests::server::run_cli(&["token", name, "--rights", rights, "--namespaces", namespaces]);
        assert!(made.status.success(), "{made:?}");
        let line = String::from_utf8(made.stdout).unwrap();
        let token = String::from_utf8(made.stderr).unwrap().trim().to_string();
        assert_eq!(token.len(), 64, "a 256-bit token in hex: {token:?}");
        assert!(!line.contains(&token), "the file's line holds the token itself");
        (line, token)
    };
    let (orders_line, orders) = token("orders", "read,write,coordinate", "orders");
    let (nodes_line, nodes) = token("nodes", "node", "*");
    let (_, other) = token("other", "all", "*");
    assert_ne!(orders, other, "two tokens alike");
    let path = write_credentials(scratch.path(), &format!("{orders_line}{nodes_line}"));
    let server = EngramServer::start(ServerOptions::default().cores(1).credentials_file(path, &nodes));
    let counted = server.cli(&["--credentials", &orders, "--namespace", "orders", "incr", "sales"]);
    assert_eq!(
        (counted.status.code(), &counted.stdout[..]),
        (Some(0), &b"1\n"[..]),
        "{counted:?}"
    );
    let refused = server.cli(&["--credentials", &other, "--namespace", "orders", "incr", "sales"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized"),
        "{refused:?}"
    );
    let bad = engram_tests::server::run_cli(&["token", "x", "--rights", "read,fly"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown right `fly`"),
        "{bad:?}"
    );
    let spaced = engram_tests::server::run_cli(&["token", "two words"]);
    assert!(
        String::from_utf8_lossy(&spaced.stderr).contains("not one word"),
        "{spaced:?}"
    );
}
