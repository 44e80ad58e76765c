//! Starting: every start reaches the ready line, and every port answers right after it.
//!
//! Regression test for a start-up hang: the shards share the front listener (one open
//! file description), glommio's accept toggles O_NONBLOCK on it around a direct accept(2)
//! and restores the old flags, so with a blocking listener two shards racing there could
//! leave one of them in a *blocking* accept(2), which froze that shard (no ready line, or
//! later, no service on its port) until someone connected to the front port.

use engram_proto::AdminCommand;
use engram_proto::{Command, Response};
use engram_tests::raw::RawConnection;
use engram_tests::{EngramServer, ServerOptions};

const STARTS: usize = 50;
const FRONT_ROUNDS: usize = 200;

#[test]
fn repeated_starts_all_become_ready_and_serve_every_port() {
    for start in 0..STARTS {
        let server = match EngramServer::try_start(ServerOptions::default().cores(2)) {
            Ok(server) => server,
            Err(error) => panic!("start {start} of {STARTS} failed: {error}"),
        };
        // Shard ports first: a shard frozen in accept(2) on the front listener would be
        // woken by a front-port connection, hiding the problem.
        for address in server.shards().iter().chain(std::iter::once(&server.front())) {
            let mut connection = RawConnection::handshaken(*address, 1);
            assert_eq!(
                connection.command(Command::from(AdminCommand::Ping)),
                Response::Pong,
                "start {start}: ping on {address}"
            );
        }
    }
}

#[test]
fn front_port_accepts_never_freeze_a_shard() {
    // The same race after start-up: both shards accept on the front listener, and one
    // left in a blocking accept(2) stops serving its own port until the next front-port
    // connection. Each round: a burst of front connections, then every shard port must
    // answer.
    let server = EngramServer::start(ServerOptions::default().cores(2));
    for round in 0..FRONT_ROUNDS {
        // A burst, so both shards are in their accept path at the same time.
        let burst: Vec<RawConnection> = (0..8).map(|_| RawConnection::connect(server.front())).collect();
        for address in server.shards() {
            let mut connection = RawConnection::handshaken(*address, 3);
            assert_eq!(
                connection.command(Command::from(AdminCommand::Ping)),
                Response::Pong,
                "round {round}: ping on shard port {address}"
            );
        }
        drop(burst);
    }
}
