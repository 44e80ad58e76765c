//! A shard's thread from start to stop: joins the node's shard mesh, builds the
//! [`Shard`], serves its peers, accepts connections on the shard's own port and on the
//! front port (and the Redis-protocol door), and keeps the shard's time until the node shuts down; then ends all of it
//! and outwaits its tasks, so that the thread leaves no socket open and no memory held
//! (several nodes may run, and stop, in one process). It starts the connections, so it
//! sits above both `shard` and `connection`.

use std::cell::{Cell, RefCell};
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::Duration;

use engram_proto::ErrorCode;
use engram_tls::PLAIN_AT_TLS_PORT;

use crate::connection;
use crate::events::{NodeEvent, NodeEvents};
use crate::outbox::Outbox;
use crate::refusal::Refused;
use crate::resp;
use crate::runtime::{self, MeshBuilder, MeshReceivers, MeshSenders, TaskHandle, TcpListener, TcpStream};
use crate::shard::{Forwarded, Shard, ShardSetup};
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::tls::{self, Accepted};

/// How long a shard waits before accepting again after an accept failed; the pause
/// doubles with each failure in a row, up to `ACCEPT_RETRY_DOUBLINGS_MAX` times (1.28 s).
pub const ACCEPT_RETRY_MS: u64 = 10;
pub const ACCEPT_RETRY_DOUBLINGS_MAX: u32 = 7;
/// How often, per idle timeout, a shard looks for connections idle past it: a connection
/// is closed between one and 1 + 1/IDLE_CHECKS_PER_TIMEOUT timeouts after it went idle.
pub const IDLE_CHECKS_PER_TIMEOUT: u32 = 4;
/// How often a shard waiting for its peers to join the mesh looks whether the node was
/// told to stop: a peer that failed to start never joins, and the node stops the rest.
pub const MESH_JOIN_SHUTDOWN_CHECK_MS: u64 = 100;

/// Everything a shard thread needs to start; all of it is `Send`.
pub struct ShardLaunch {
    pub setup: ShardSetup,
    pub shard_listener: StdListener,
    pub front_listener: StdListener,
    /// The Redis-protocol door, when the node has one.
    pub resp_listener: Option<StdListener>,
    pub mesh: MeshBuilder<Forwarded>,
    pub shutdown: Shutdown,
}

/// The shard's main future: serves until `shutdown` is triggered, then stops (see
/// `stop`) and returns once nothing of the shard is left running.
pub async fn run(launch: ShardLaunch, events: NodeEvents) {
    let shard_id = launch.setup.shard_id;
    let Some((peers, receivers)) = join_mesh(launch.mesh, &launch.shutdown, shard_id).await else {
        return;
    };
    let shard = Rc::new(Shard::new(launch.setup, peers));
    let mut services = Services {
        tasks: shard.serve_peers(receivers),
        listeners: Vec::new(),
    };
    services.tasks.extend(shard.spawn(shard.clone().drive_replication()));
    let connections = Rc::new(OpenConnections::default());
    let doors = [
        (Some(launch.shard_listener), Port::Shard),
        (Some(launch.front_listener), Port::Front),
        (launch.resp_listener, Port::Resp),
    ];
    for (listener, port) in doors {
        let Some(listener) = listener else { continue };
        // The accept loop owns the listener until the shard's stop cancels it, after
        // shutting it down.
        services.listeners.push(listener.as_raw_fd());
        let listener = runtime::adopt_listener(listener);
        let accepting = shard.spawn(accept_loop(shard.clone(), listener, port, connections.clone()));
        services.tasks.extend(accepting);
    }
    if let Some(idle_timeout) = shard.admission().idle_timeout {
        let closing = close_idle(connections.clone(), idle_timeout, shard.id());
        services.tasks.extend(shard.spawn(closing));
    }
    events.send(NodeEvent::ShardStarted { shard: shard_id });
    shard.keep_time(&launch.shutdown).await;
    stop(&shard, services, &connections).await;
    tracing::debug!(shard = shard_id, "shard stopped");
}

/// Which door a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The shard's own port: clients of its slots, and peers.
    Shard,
    /// The node's front port: clients of any key.
    Front,
    /// The Redis-protocol door: Redis clients of any key.
    Resp,
}

/// What a shard runs besides its connections: its accept loops and peer queues.
struct Services {
    tasks: Vec<TaskHandle>,
    /// The descriptors of the listeners the accept loops own.
    listeners: Vec<RawFd>,
}

/// Ends everything the shard runs: its listeners refuse connections and its accept loops
/// and peer queues are cancelled, then its connections are ended (their sockets shut
/// down, their proxy links closed, the tasks awaiting answers for them woken), and it
/// waits until every task of the shard ended. Nothing waits for a client: a connection is
/// dropped wherever it waits, in a read, a write or for an answer.
async fn stop(shard: &Shard, services: Services, connections: &OpenConnections) {
    for listener in services.listeners {
        runtime::shut_down_socket(listener);
    }
    for task in services.tasks {
        task.cancel();
    }
    connections.end_all();
    shard.stop_replication();
    shard.tasks().ended().await;
}

/// The connections a shard serves, so that its stop can end them.
#[derive(Default)]
struct OpenConnections {
    next_id: Cell<u64>,
    open: RefCell<foldhash::HashMap<u64, OpenConnection>>,
}

struct OpenConnection {
    task: TaskHandle,
    outbox: Weak<Outbox>,
    /// The socket's descriptor, open as long as the connection is listed: its task
    /// closes the socket only as it ends, in the same step as it takes itself off the list.
    socket: RawFd,
}

impl OpenConnections {
    /// Serves `stream` as one of the shard's tasks until it ends or the shard stops; on
    /// a TLS node, once its TLS handshake completed.
    fn serve(self: &Rc<Self>, shard: &Rc<Shard>, stream: TcpStream, port: Port) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let socket = stream.as_raw_fd();
        let outbox = Rc::new(match port {
            Port::Resp => Outbox::for_replies(),
            Port::Shard | Port::Front => Outbox::new(shard.map_epoch()),
        });
        let open = Rc::downgrade(self);
        let connection = Rc::downgrade(&outbox);
        let served = shard.spawn({
            let shard = shard.clone();
            async move {
                // Counted from the accept: a TLS handshake holds a connection too.
                shard.connection_opened();
                if let Some(stream) = secure(&shard, stream, port).await {
                    match port {
                        Port::Resp => resp::connection::serve(shard.clone(), stream, outbox).await,
                        Port::Shard | Port::Front => {
                            connection::serve(shard.clone(), stream, port == Port::Front, outbox).await
                        }
                    }
                }
                shard.connection_closed();
                if let Some(open) = open.upgrade() {
                    open.open.borrow_mut().remove(&id);
                }
            }
        });
        // The task runs only once this one yields, so it is listed before it can end.
        if let Some(task) = served {
            let connection = OpenConnection {
                task,
                outbox: connection,
                socket,
            };
            self.open.borrow_mut().insert(id, connection);
        }
    }

    /// Shuts down the sockets of connections idle for `timeout` or longer: their tasks
    /// see the end of their stream and end as a closed connection does. Returns how
    /// many.
    fn close_idle(&self, timeout: Duration) -> usize {
        let now = std::time::Instant::now();
        let open = self.open.borrow();
        let idle = open.values().filter(|connection| {
            let outbox = connection.outbox.upgrade();
            outbox.is_some_and(|outbox| outbox.idle_for(now) >= timeout)
        });
        idle.map(|connection| runtime::shut_down_socket(connection.socket))
            .count()
    }

    /// Ends every connection: its socket is shut down, its task dropped where it waits,
    /// and its outbox closed, which wakes the tasks awaiting answers for it.
    fn end_all(&self) {
        for (_, connection) in self.open.borrow_mut().drain() {
            runtime::shut_down_socket(connection.socket);
            connection.task.cancel();
            if let Some(outbox) = connection.outbox.upgrade() {
                outbox.close();
            }
        }
    }
}

/// Closes the shard's connections idle past `timeout`, for the life of the shard.
async fn close_idle(connections: Rc<OpenConnections>, timeout: Duration, shard: usize) {
    let check_every = timeout / IDLE_CHECKS_PER_TIMEOUT;
    loop {
        runtime::sleep(check_every).await;
        let closed = connections.close_idle(timeout);
        if closed > 0 {
            tracing::debug!(shard, closed, "closed connections idle for {timeout:?}");
        }
    }
}

/// The shard's queues to and from its peers, once every shard joined; `None` when the
/// join failed, or the node was told to stop before every peer came.
async fn join_mesh(
    mesh: MeshBuilder<Forwarded>,
    shutdown: &Shutdown,
    shard_id: usize,
) -> Option<(MeshSenders<Forwarded>, MeshReceivers<Forwarded>)> {
    let joined = async {
        match mesh.join().await {
            Ok(mesh) => Some(mesh),
            Err(error) => {
                tracing::error!(shard = shard_id, %error, "could not join the shard mesh");
                None
            }
        }
    };
    let stopped = async {
        while !shutdown.is_triggered() {
            runtime::sleep(Duration::from_millis(MESH_JOIN_SHUTDOWN_CHECK_MS)).await;
        }
        tracing::debug!(shard = shard_id, "told to stop before every shard joined the mesh");
        None
    };
    futures_lite::future::or(joined, stopped).await
}

/// The connection's stream: the socket itself on a plain node; on a TLS node, TLS once
/// its handshake completed, or `None` when it did not (a plain client is told why).
async fn secure(shard: &Rc<Shard>, socket: TcpStream, port: Port) -> Option<Stream> {
    let Some(server_tls) = shard.server_tls() else {
        return Some(Stream::Plain(socket));
    };
    match tls::accept(shard, socket, server_tls).await {
        Accepted::Tls(stream) => Some(stream),
        Accepted::Plain(socket) => {
            let peer = socket.peer_addr().ok();
            shard.refused(Refused::PlainAtTlsPort, peer, PLAIN_AT_TLS_PORT);
            let detail = PLAIN_AT_TLS_PORT.to_string();
            turn_away(
                shard.clone(),
                Stream::Plain(socket),
                port,
                ErrorCode::TlsRequired,
                detail,
            )
            .await;
            None
        }
        Accepted::Failed => None,
    }
}

/// Turns a connection away with `code` and `detail`, in its door's protocol (Redis's
/// own words for a full node), then closes it.
async fn turn_away(shard: Rc<Shard>, stream: Stream, port: Port, code: ErrorCode, detail: String) {
    match port {
        Port::Resp => {
            let line = match code {
                ErrorCode::Busy => "-ERR max number of clients reached".to_string(),
                _ => format!("-{}", resp::reply::error_line(&shard.error_reply(code, detail))),
            };
            resp::connection::turn_away(stream, &line).await;
        }
        Port::Shard | Port::Front => connection::turn_away(shard, stream, code, detail).await,
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, port: Port, connections: Rc<OpenConnections>) {
    let mut failures: u32 = 0;
    loop {
        match listener.accept().await {
            Ok(stream) if shard.has_room_for_a_connection() => {
                failures = 0;
                connections.serve(&shard, stream, port);
            }
            Ok(stream) => {
                failures = 0;
                let detail = shard.refused_for_room(stream.peer_addr().ok());
                // A TLS client would read a plain answer as a broken handshake, and a
                // handshake is work a full node should not take on: it sees the close.
                if shard.server_tls().is_none() {
                    // Told by a task of its own: a slow reader holds up no one.
                    let told = turn_away(shard.clone(), Stream::Plain(stream), port, ErrorCode::Busy, detail);
                    let _ = shard.spawn(told);
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: keep serving existing
                // connections and try again after a pause that doubles while the
                // failures last, with one warning per run of them, rather than spinning.
                if failures == 0 {
                    tracing::warn!(shard = shard.id(), %error, "accept failed; retrying with backoff");
                }
                let pause_ms = ACCEPT_RETRY_MS << failures.min(ACCEPT_RETRY_DOUBLINGS_MAX);
                failures = failures.saturating_add(1);
                runtime::sleep(Duration::from_millis(pause_ms)).await;
            }
        }
    }
}
