//! TLS on a node's ports, with a CA made by the test: clients that trust it are served
//! on every port (shard ports, the front port, the CLI), a plain client at a TLS port
//! and a TLS client at a plain port are told what went wrong, a client trusting another
//! CA is refused, mutual TLS serves only clients with a certificate, SIGHUP swaps the
//! certificate for new connections while open ones keep going, and `/metrics` is served
//! over TLS to scrapes carrying the metrics token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use engram_client::{Client, ClientTls, Error, ErrorCode};
use engram_tests::processes::Scratch;
use engram_tests::server::{describe, free_port, next_loopback, refused_in, run_cli, scrape};
use engram_tests::{EngramServer, ServerOptions};
use engram_tls::test_ca::TestCa;
use engram_tls::ServerTlsFiles;

/// The token the nodes with metrics require of a scrape.
const METRICS_TOKEN: &str = "scrape-token";
/// Bounds the wait for a SIGHUP to take effect: the signal thread reloads at once.
const RELOAD_WAIT: Duration = Duration::from_secs(20);

/// A node certificate for every name a test reaches the node under.
fn node_files(ca: &TestCa, server_bind: std::net::Ipv4Addr, client_ca: Option<&TestCa>) -> ServerTlsFiles {
    let issued = ca.issue("node", &["localhost", &server_bind.to_string()]);
    ServerTlsFiles {
        cert: issued.cert,
        key: issued.key,
        client_ca: client_ca.map(TestCa::ca_path),
    }
}

fn tls_server(ca: &TestCa, client_ca: Option<&TestCa>, metrics: bool) -> EngramServer {
    let bind = next_loopback();
    let mut options = ServerOptions::default()
        .cores(2)
        .bind(bind)
        .resp()
        .tls(node_files(ca, bind, client_ca));
    if metrics {
        options = options.metrics_port(free_port(bind)).metrics_token(METRICS_TOKEN);
    }
    EngramServer::start(options)
}

fn tls_address(server: &EngramServer) -> String {
    format!("tls://{}", server.front())
}

async fn tls_client(server: &EngramServer, tls: ClientTls, direct: bool) -> Result<Client, Error> {
    Client::builder(tls_address(server))
        .tls(tls)
        .direct(direct)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// Connects and asks something, so a refusal shows whichever way the client meets it.
async fn round_trip(server: &EngramServer, tls: ClientTls) -> Result<(), Error> {
    let client = tls_client(server, tls, true).await?;
    client.ping().await
}

#[tokio::test]
async fn a_client_trusting_the_ca_is_served_on_every_port() {
    let scratch = Scratch::new("tls-served");
    let ca = TestCa::new(scratch.path(), "engram");
    let server = tls_server(&ca, None, false);
    let trusting = ClientTls::trusting(&ca.ca_path()).unwrap();

    // Direct routing reaches every shard's own port; front-only, the front port.
    let direct = tls_client(&server, trusting.clone(), true).await.unwrap();
    let front = tls_client(&server, trusting, false).await.unwrap();
    for index in 0..64 {
        let key = format!("tls-key-{index}");
        direct.bytes(key.as_str()).set(format!("value-{index}")).await.unwrap();
        let read = front
            .bytes(key.as_str())
            .get()
            .await
            .unwrap()
            .map(|versioned| versioned.value);
        assert_eq!(read.as_deref(), Some(format!("value-{index}").as_bytes()));
    }
    let info = direct.info().await.unwrap();
    assert_eq!(info.shards.len(), 2);

    let address = tls_address(&server);
    let ca_path = ca.ca_path().display().to_string();
    let set = run_cli(&["--addr", &address, "--tls-ca", &ca_path, "set", "cli-key", "over-tls"]);
    assert!(set.status.success(), "{}", describe(&set));
    let get = run_cli(&["--addr", &address, "--tls-ca", &ca_path, "get", "cli-key"]);
    assert!(get.status.success(), "{}", describe(&get));
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("over-tls"),
        "{}",
        describe(&get)
    );
    // A tls:// address without the CA is a usage error, not a hang.
    let no_ca = run_cli(&["--addr", &address, "get", "cli-key"]);
    assert!(!no_ca.status.success());
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("CA"),
        "{}",
        describe(&no_ca)
    );
}

#[tokio::test]
async fn a_plain_client_at_a_tls_port_is_told_to_use_tls() {
    let scratch = Scratch::new("tls-plain-client");
    let ca = TestCa::new(scratch.path(), "engram");
    let server = tls_server(&ca, None, true);

    let plain = server.client_builder().direct(false).connect().await;
    let refused = match plain {
        Ok(client) => client.ping().await.unwrap_err(),
        Err(error) => error,
    };
    assert!(refused.is_server(ErrorCode::TlsRequired), "{refused}");
    assert!(refused.to_string().contains("tls://"), "{refused}");

    // The Redis door says it in Redis's protocol, then closes.
    let mut redis = TcpStream::connect(server.resp().expect("a Redis door")).unwrap();
    redis.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    redis.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut reply = String::new();
    redis.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("-ERR this port speaks TLS"), "{reply:?}");

    // Metrics are served over TLS too, and only to a scrape that carries the token.
    let metrics = server.metrics_address().unwrap();
    let trusting = ClientTls::trusting(&ca.ca_path()).unwrap();
    let scraped = scrape(metrics, Some(&trusting), Some(METRICS_TOKEN));
    assert!(refused_in(&scraped, "plain_at_tls_port") >= 2, "{scraped}");
    let without_token = scrape(metrics, Some(&trusting), None);
    assert!(without_token.starts_with("HTTP/1.1 401 "), "{without_token}");
    assert!(!scrape(metrics, None, Some(METRICS_TOKEN)).contains("engram_"));
}

#[tokio::test]
async fn a_tls_client_at_a_plain_port_is_told_the_port_is_plain() {
    let scratch = Scratch::new("tls-plain-port");
    let ca = TestCa::new(scratch.path(), "engram");
    let server = EngramServer::start(ServerOptions::default().cores(1));
    let trusting = ClientTls::trusting(&ca.ca_path()).unwrap();
    let error = round_trip(&server, trusting).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    assert!(error.to_string().contains("does not speak TLS"), "{error}");
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_and_counted() {
    let scratch = Scratch::new("tls-other-ca");
    let ca = TestCa::new(scratch.path(), "engram");
    let server = tls_server(&ca, None, true);
    let stranger = ClientTls::trusting(&TestCa::new(scratch.path(), "other").ca_path()).unwrap();
    let error = round_trip(&server, stranger).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    // The server hears of it as a failed handshake (the client's alert).
    let metrics = server.metrics_address().unwrap();
    let trusting = ClientTls::trusting(&ca.ca_path()).unwrap();
    let deadline = Instant::now() + RELOAD_WAIT;
    while refused_in(&scrape(metrics, Some(&trusting), Some(METRICS_TOKEN)), "tls_handshake") == 0 {
        assert!(Instant::now() < deadline, "the failed handshake was never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_showing_a_certificate_of_the_client_ca() {
    let scratch = Scratch::new("tls-mutual");
    let ca = TestCa::new(scratch.path(), "engram");
    let clients_ca = TestCa::new(scratch.path(), "clients");
    let server = tls_server(&ca, Some(&clients_ca), false);

    let anonymous = ClientTls::trusting(&ca.ca_path()).unwrap();
    assert!(round_trip(&server, anonymous).await.is_err());
    let outsider = ca.issue("outsider", &["outsider"]);
    let wrong_ca = ClientTls::with_identity(&ca.ca_path(), &outsider.cert, &outsider.key).unwrap();
    assert!(round_trip(&server, wrong_ca).await.is_err());

    let member = clients_ca.issue("function", &["function"]);
    let known = ClientTls::with_identity(&ca.ca_path(), &member.cert, &member.key).unwrap();
    let client = tls_client(&server, known, true).await.unwrap();
    client.counter("mutual").add(5).await.unwrap();
    assert_eq!(client.counter("mutual").get().await.unwrap(), 5);
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_to_new_connections_and_keeps_open_ones() {
    let scratch = Scratch::new("tls-reload");
    let first_ca = TestCa::new(scratch.path(), "first");
    let server = tls_server(&first_ca, None, false);
    let files = server.options().tls.clone().unwrap();
    let trusts_first = ClientTls::trusting(&first_ca.ca_path()).unwrap();
    let open = tls_client(&server, trusts_first.clone(), false).await.unwrap();
    open.bytes("before").set("reload").await.unwrap();

    let second_ca = TestCa::new(scratch.path(), "second");
    let renewed = second_ca.issue("node", &["localhost", &server.bind().to_string()]);
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    // SAFETY: kill(2) on the server process this test started and still owns.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) }, 0);

    let trusts_second = ClientTls::trusting(&second_ca.ca_path()).unwrap();
    let deadline = Instant::now() + RELOAD_WAIT;
    while round_trip(&server, trusts_second.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stale = round_trip(&server, trusts_first).await.unwrap_err();
    assert!(matches!(stale, Error::Tls { .. }), "{stale}");
    // The connection opened before the reload still serves.
    let read = open
        .bytes("before")
        .get()
        .await
        .unwrap()
        .map(|versioned| versioned.value);
    assert_eq!(read.as_deref(), Some(&b"reload"[..]));
    assert!(server.stderr_text().contains("TLS certificate reloaded"));
}

#[test]
fn a_node_refuses_to_start_with_a_key_that_is_not_its_certificate_s() {
    let scratch = Scratch::new("tls-bad-files");
    let ca = TestCa::new(scratch.path(), "engram");
    let bind = next_loopback();
    let mut files = node_files(&ca, bind, None);
    files.key = ca.issue("other", &["localhost"]).key;
    let started = EngramServer::try_start(ServerOptions::default().cores(1).bind(bind).tls(files));
    let error = started.err().expect("a node with a mismatched key does not start");
    assert!(error.stderr.contains("does not go with the key"), "{}", error.stderr);
}

#[test]
fn a_stalled_tls_handshake_is_closed_at_the_handshake_timeout_and_counted() {
    let scratch = Scratch::new("tls-stalled");
    let ca = TestCa::new(scratch.path(), "engram");
    let bind = next_loopback();
    let metrics = std::net::SocketAddr::from((bind, free_port(bind)));
    let server = EngramServer::start(
        ServerOptions::default()
            .cores(1)
            .bind(bind)
            .metrics_port(metrics.port())
            .handshake_timeout_ms(500)
            .tls(node_files(&ca, bind, None)),
    );
    // The first byte of a handshake record, and nothing more.
    let mut stalled = TcpStream::connect(server.front()).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stalled.write_all(&[engram_tls::TLS_HANDSHAKE_RECORD_TYPE]).unwrap();
    let mut rest = Vec::new();
    let closed = stalled.read_to_end(&mut rest);
    assert!(closed.is_ok() || closed.is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset));
    let trusting = ClientTls::trusting(&ca.ca_path()).unwrap();
    let scraped = scrape(metrics, Some(&trusting), None);
    assert!(refused_in(&scraped, "handshake_timeout") >= 1, "{scraped}");
}
