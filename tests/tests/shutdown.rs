//! Stopping and starting: SIGTERM exits 0 promptly (idle or with clients connected), and
//! a second server on a taken port fails clearly instead of sharing it.

use std::net::TcpListener;
use std::time::Duration;

use engram_proto::AdminCommand;
use engram_proto::{Command, Response};
use engram_tests::raw::RawConnection;
use engram_tests::server::next_loopback;
use engram_tests::{run_async, EngramServer, ServerOptions};

/// Generous: only there so a server that ignores SIGTERM fails the test.
const EXIT_WAIT: Duration = Duration::from_secs(15);

#[test]
fn sigterm_exits_zero_when_idle() {
    let mut server = EngramServer::start(ServerOptions::default().cores(2));
    let status = server
        .terminate(EXIT_WAIT)
        .unwrap_or_else(|| panic!("engramd still running {EXIT_WAIT:?} after SIGTERM"));
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        server.stderr_text()
    );
}

#[test]
fn sigterm_exits_zero_with_clients_connected() {
    let mut server = EngramServer::start(ServerOptions::default().cores(2));
    // Open connections of every kind: a client with connections to each shard, a raw
    // front-port connection, and one stuck in the middle of a frame.
    let mut raw = RawConnection::handshaken(server.front(), 9);
    assert_eq!(raw.command(Command::from(AdminCommand::Ping)), Response::Pong);
    let mut half = RawConnection::handshaken(server.shards()[1], 10);
    half.send_raw(b"ENGR");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = runtime.block_on(async {
        let client = server.client().await;
        for n in 0..20 {
            client.counter(format!("before-stop-{n}")).incr().await.expect("incr");
        }
        client
    });

    let status = server
        .terminate(EXIT_WAIT)
        .unwrap_or_else(|| panic!("engramd still running {EXIT_WAIT:?} after SIGTERM with clients connected"));
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        server.stderr_text()
    );

    // The server is gone: the client's next call fails (promptly, not after hanging).
    let result = runtime.block_on(async {
        let counter = client.counter("after-stop").timeout(Duration::from_secs(2));
        tokio::time::timeout(Duration::from_secs(30), counter.incr())
            .await
            .expect("a call to a stopped server returns within its timeout")
    });
    assert!(result.is_err(), "a call after the server stopped succeeded: {result:?}");
    drop(client);
    drop(runtime);
}

/// A port P on `address` with P+1 also free (engramd --port P --cores 1 needs both).
fn free_port_pair(address: std::net::Ipv4Addr) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((address, 0)).expect("bind an ephemeral port");
        let port = first.local_addr().expect("local address").port();
        if port < u16::MAX && TcpListener::bind((address, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of consecutive ports on {address}");
}

#[test]
fn a_second_server_on_a_taken_port_fails_clearly() {
    let bind = next_loopback();
    // The pair is free when probed but could be taken before engramd binds it; retry a
    // few times with new ports rather than fail on that race.
    let mut attempt = 0;
    let (first, port) = loop {
        let port = free_port_pair(bind);
        match EngramServer::try_start(ServerOptions::default().cores(1).bind(bind).port(port)) {
            Ok(server) => break (server, port),
            Err(error) if attempt < 5 => {
                attempt += 1;
                eprintln!("first server did not start on {bind}:{port}, retrying: {error}");
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(first.front(), std::net::SocketAddr::from((bind, port)));
    assert_eq!(first.shards(), &[std::net::SocketAddr::from((bind, port + 1))]);

    let error = match EngramServer::try_start(ServerOptions::default().cores(1).bind(bind).port(port)) {
        Ok(second) => panic!(
            "a second engramd started on the port the first one serves (front {}, shards {:?})",
            second.front(),
            second.shards()
        ),
        Err(error) => error,
    };
    let status = error
        .status
        .unwrap_or_else(|| panic!("second engramd did not exit: {error}"));
    assert!(!status.success(), "second engramd exited with {status:?}");
    let address = format!("{bind}:{port}");
    assert!(
        error.stderr.contains(&address),
        "stderr of the second engramd should name {address}:\n{}",
        error.stderr
    );
    assert!(
        error.stderr.to_lowercase().contains("in use") || error.stderr.contains("cannot listen"),
        "stderr of the second engramd should say why:\n{}",
        error.stderr
    );

    // The first server is unaffected.
    run_async(Duration::from_secs(30), async {
        let client = first.client().await;
        client.ping().await.expect("first server still serves");
        assert_eq!(client.counter("taken-port").incr().await.expect("incr"), 1);
    });
}
