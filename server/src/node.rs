//! Starting and stopping a node. [`start`] runs one inside the calling process, from
//! sockets already bound ([`NodeListeners`]) and a [`Shutdown`] its caller triggers: it
//! checks the machine can run it (`host.rs`), takes its place (alone, or joined to a
//! cluster, whose heartbeat then runs: `place.rs`, `heartbeat.rs`), serves metrics when
//! given a socket for them, starts one pinned executor per shard, and returns a
//! [`RunningNode`] once every shard serves. [`run`], engramd's whole life, binds the ports
//! its flags name, turns SIGINT/SIGTERM into that shutdown, starts the node the same way
//! and prints the ready line. Only `run` touches what a process has once (signal
//! handlers, stdout), so several nodes started with [`start`] share a process.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use engram_metrics_http::{Access, Responder};
use engram_proto::Gatekeeper;
use engram_tls::ServerTls;

use crate::cluster::NodeMap;
use crate::config::{Config, NodeSettings};
use crate::error::ServerError;
use crate::events::{await_start, await_stop, NodeEvent, NodeEvents};
use crate::given_credentials::GivenCredentials;
use crate::heartbeat::{map_check_grace_ms, Heartbeater};
use crate::host::{allowed_cpus, bind_ports, check_io_uring};
use crate::launch::{self, ShardLaunch};
use crate::peering::Peering;
use crate::place::{place_node, random_u64, NodePlace};
use crate::runtime::{self, Executor};
use crate::shard::{Admission, ShardSetup, FORWARD_QUEUE_DEPTH};
use crate::stats::NodeStats;

pub use crate::host::NodeListeners;
pub use crate::shutdown::Shutdown;

/// Most shards one node runs (ports and shard ids are 16-bit).
pub const SHARDS_MAX: usize = 1024;

/// engramd: binds the ports of `config`, installs the signal handling, runs the node until
/// a SIGINT or SIGTERM stops it, and prints the ready line once it serves.
pub fn run(config: Config) -> Result<(), ServerError> {
    let shard_count = shard_count(config.cores, allowed_cpus().len())?;
    let listeners = bind_ports(
        config.bind,
        config.port,
        shard_count,
        config.metrics_port,
        config.resp_port,
    )?;
    let shutdown = Shutdown::new();
    watch_signals(shutdown.clone())?;
    let node = start(config.node, listeners, shutdown)?;
    watch_reloads(node.tls.clone(), node.gatekeeper.clone())?;
    announce_ready(&node);
    node.wait()?;
    tracing::info!("engramd stopped");
    Ok(())
}

/// Starts a node in the calling process on `listeners`, one shard per shard listener,
/// each pinned to one of the CPUs this process may use (round-robin). Returns once every
/// shard serves; the node stops when `shutdown` is triggered, or when its handle is
/// dropped. Installs no signal handler and writes nothing to stdout.
///
/// Several nodes may run in one process: each has its own metrics registry, slot map
/// and shards. A start that fails stops whatever it started.
pub fn start(settings: NodeSettings, listeners: NodeListeners, shutdown: Shutdown) -> Result<RunningNode, ServerError> {
    check_io_uring()?;
    let NodeListeners {
        front,
        shards,
        metrics,
        resp,
    } = listeners;
    let shard_count = shards.len();
    if shard_count == 0 || shard_count > SHARDS_MAX {
        return Err(ServerError::ShardListeners {
            listeners: shard_count,
            shards_max: SHARDS_MAX,
        });
    }
    let front_address = prepare_listener(&front)?;
    let resp_address = resp.as_ref().map(prepare_listener).transpose()?;
    let shard_addresses = shards
        .iter()
        .map(|listener| prepare_listener(listener).map(|address| address.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    // The node's own signal: a failed start or a dropped handle stops this node only.
    let stop = shutdown.child();
    let tls = settings.tls.server()?;
    let peer_tls = settings.tls.peers()?;
    if tls.is_some() && settings.control.is_some() && peer_tls.is_none() {
        return Err(ServerError::TlsCaRequired);
    }
    let own_gatekeeper = own_gatekeeper(&settings)?;
    let peering = Peering::new(settings.link_credentials(), peer_tls);
    let mut place = place_node(&settings, front_address, shard_addresses, &peering, &stop)?;
    let (gatekeeper, given_credentials) = match (own_gatekeeper, &settings.node_token) {
        (Some(gatekeeper), _) => (gatekeeper, None),
        (None, node_token) => {
            let given =
                GivenCredentials::from_join(place.credentials.take(), node_token.as_deref().unwrap_or_default())?;
            (given.gatekeeper().clone(), Some(given))
        }
    };
    let starting = Starting::new(&settings, place, shard_count, tls, peering, gatekeeper);
    let metrics = match metrics {
        Some(listener) => {
            let node = starting.node.clone();
            let access = Access {
                tls: starting.tls.clone(),
                token: settings.metrics_token.clone().map(String::into_bytes),
            };
            Some(crate::metrics::serve_http(
                listener,
                move || node.render_metrics(),
                access,
            )?)
        }
        None => None,
    };
    let (metrics_address, metrics) = metrics.unzip();
    let (events, event_receiver) = NodeEvents::channel(shard_count);
    stop.listen(events.clone());
    let listeners = Listeners {
        front,
        front_address,
        shards,
        resp,
    };
    let started = start_shards(listeners, &starting, &settings, &stop, &events).and_then(|()| {
        drop(events);
        await_start(&event_receiver, shard_count)
    });
    let stopped_during_start = match started {
        Ok(stopped) => stopped,
        Err(error) => return Err(abandon_start(error, &stop, metrics)),
    };
    let Starting {
        node,
        node_map,
        membership,
        tls,
        gatekeeper,
        ..
    } = starting;
    if let Some(membership) = membership {
        Heartbeater::new(membership, node.clone(), node_map, given_credentials, stop.clone()).start()?;
    }
    tracing::info!(%front_address, shards = shard_count, node_id = node.node_id, ?metrics_address, "engramd serving");
    Ok(RunningNode {
        front_address,
        resp_address,
        node,
        metrics_address,
        metrics,
        stop,
        events: event_receiver,
        shards_running: shard_count - stopped_during_start,
        tls,
        gatekeeper,
    })
}

/// Who may connect, as the node's own flags say: the credentials file, else the shared
/// token, else anyone. A node of a cluster whose processes read credentials must have a
/// token of its own to show. `None` for a node that takes its credentials from the
/// control plane once joined (`GivenCredentials`).
fn own_gatekeeper(settings: &NodeSettings) -> Result<Option<Arc<Gatekeeper>>, ServerError> {
    match (&settings.credentials_file, &settings.node_token) {
        (Some(_), None) if settings.control.is_some() => return Err(ServerError::NodeTokenRequired),
        (None, Some(_)) if settings.takes_control_credentials() => return Ok(None),
        (None, Some(_)) => return Err(ServerError::NodeTokenWithoutCredentials),
        _ => {}
    }
    let token = settings.auth_token.as_deref().map(str::as_bytes);
    let gatekeeper = Gatekeeper::new(settings.credentials_file.as_deref(), token)?;
    if let Some(node_token) = &settings.node_token {
        // The other nodes read the same file: a token it does not admit as a peer would
        // be refused by every one of them.
        let admitted = gatekeeper.gate().admit_node(node_token.as_bytes());
        admitted.map_err(|denial| ServerError::NodeTokenRefused {
            by: "--credentials-file".to_string(),
            reason: denial.to_string(),
        })?;
    }
    Ok(Some(Arc::new(gatekeeper)))
}

/// A node started with [`start`]: where it serves, and its end. Dropping it stops the
/// node without waiting for it.
pub struct RunningNode {
    front_address: SocketAddr,
    resp_address: Option<SocketAddr>,
    node: Arc<NodeStats>,
    metrics_address: Option<SocketAddr>,
    metrics: Option<Responder>,
    /// The node's own signal, a child of the one it was started with.
    stop: Shutdown,
    events: Receiver<NodeEvent>,
    /// Shards whose stop is still to come.
    shards_running: usize,
    tls: Option<ServerTls>,
    gatekeeper: Arc<Gatekeeper>,
}

impl RunningNode {
    /// Reads the node's TLS certificate and key again: connections accepted from now on
    /// are served with them, those open keep theirs. A failed reload changes nothing.
    /// `false`: the node serves no TLS.
    pub fn reload_tls(&self) -> Result<bool, engram_tls::TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Reads the credentials file again: connections that shake hands from now on are
    /// admitted by it, those open keep what they were granted. A failed reload changes
    /// nothing. `None`: the node reads no credentials file.
    pub fn reload_credentials(&self) -> Result<Option<usize>, engram_proto::credentials::CredentialsError> {
        self.gatekeeper.reload()
    }

    /// The front port's address, which reaches every key.
    pub fn front_address(&self) -> SocketAddr {
        self.front_address
    }

    /// The Redis-protocol door's address, when the node has one.
    pub fn resp_address(&self) -> Option<SocketAddr> {
        self.resp_address
    }

    /// Each shard's own port, by shard id, as clients and other nodes reach it (in a
    /// cluster, on the advertised host).
    pub fn shard_addresses(&self) -> &[String] {
        &self.node.shard_addresses
    }

    pub fn node_id(&self) -> u64 {
        self.node.node_id
    }

    /// Where `GET /metrics` is served, when the node was given a socket for it.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Stops this node alone (not the others its `Shutdown` was given to) and waits for it.
    pub fn stop(self) -> Result<(), ServerError> {
        self.stop.trigger();
        self.wait()
    }

    /// Waits until the node stopped: every shard's thread ended, its listeners and
    /// connections closed, and its metrics responder stopped, so its ports are free. An
    /// error is the first failure of a shard, or an interruption (engramd's second
    /// signal), which ends the wait without the shards.
    pub fn wait(mut self) -> Result<(), ServerError> {
        await_stop(&self.events, self.shards_running)?;
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        Ok(())
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(metrics) = self.metrics.take() {
            metrics.close();
        }
    }
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RunningNode")
            .field("node_id", &self.node.node_id)
            .field("front_address", &self.front_address)
            .field("resp_address", &self.resp_address)
            .field("shard_addresses", &self.node.shard_addresses)
            .field("metrics_address", &self.metrics_address)
            .finish_non_exhaustive()
    }
}

/// What the shards of a starting node share.
struct Starting {
    node: Arc<NodeStats>,
    node_map: Arc<NodeMap>,
    version_floor: u64,
    incarnation: u64,
    membership: Option<crate::heartbeat::Membership>,
    memory_limit_bytes: u64,
    hash_seed: u64,
    tls: Option<ServerTls>,
    peering: Peering,
    gatekeeper: Arc<Gatekeeper>,
}

impl Starting {
    fn new(
        settings: &NodeSettings,
        place: NodePlace,
        shard_count: usize,
        tls: Option<ServerTls>,
        peering: Peering,
        gatekeeper: Arc<Gatekeeper>,
    ) -> Starting {
        let NodePlace {
            node_id,
            map,
            shard_addresses,
            version_floor,
            membership,
            ..
        } = place;
        if membership.is_some() {
            crate::cluster::log_installed(&map);
        }
        let incarnation = membership.as_ref().map_or(0, |membership| membership.incarnation);
        let node_map = Arc::new(NodeMap::new(map));
        if let Some(membership) = &membership {
            node_map.mark_checked(map_check_grace_ms(membership.liveness_timeout_ms));
        }
        Starting {
            node: Arc::new(NodeStats::new(node_id, shard_addresses)),
            node_map,
            version_floor,
            incarnation,
            membership,
            memory_limit_bytes: settings
                .memory_limit
                .map_or(u64::MAX, |limit| limit / shard_count as u64),
            hash_seed: random_u64(),
            tls,
            peering,
            gatekeeper,
        }
    }

    fn setup(&self, settings: &NodeSettings, shard_id: usize) -> ShardSetup {
        ShardSetup {
            shard_id,
            node_map: self.node_map.clone(),
            node: self.node.clone(),
            memory_limit_bytes: self.memory_limit_bytes,
            hash_seed: self.hash_seed,
            version_floor: self.version_floor,
            incarnation: self.incarnation,
            gatekeeper: self.gatekeeper.clone(),
            link_credentials: self.peering.credentials().to_vec(),
            read_spin: Duration::from_micros(settings.spin_us),
            admission: Admission {
                max_connections: settings
                    .max_connections
                    .unwrap_or_else(crate::config::default_max_connections),
                handshake_timeout: Duration::from_millis(
                    settings
                        .handshake_timeout_ms
                        .unwrap_or(crate::config::HANDSHAKE_TIMEOUT_MS_DEFAULT),
                ),
                idle_timeout: settings
                    .idle_timeout_ms
                    .filter(|&timeout_ms| timeout_ms > 0)
                    .map(Duration::from_millis),
            },
            tls: self.tls.clone(),
            peer_tls: self.peering.tls().cloned(),
        }
    }
}

/// Makes a listener ready for the shards' rings and says where it listens. The shards
/// share the front listener's open file description, so it must be non-blocking (see
/// `runtime::TcpListener`); a caller's `TcpListener::bind` gives a blocking one.
fn prepare_listener(listener: &StdListener) -> Result<SocketAddr, ServerError> {
    let unknown_address = SocketAddr::from(([0, 0, 0, 0], 0));
    let address = listener.local_addr().map_err(|source| ServerError::Bind {
        address: unknown_address,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Bind { address, source })?;
    Ok(address)
}

/// Stops what a failed start started, and says why it failed: a node told to stop while
/// its shards started failed because of that.
fn abandon_start(error: ServerError, stop: &Shutdown, metrics: Option<Responder>) -> ServerError {
    let told_to_stop = stop.is_triggered();
    stop.trigger();
    if let Some(metrics) = metrics {
        metrics.close();
    }
    match error {
        ServerError::ShardStart { .. } if told_to_stop => ServerError::StoppedBeforeServing,
        error => error,
    }
}

/// The shards to run: `--cores`, or one per CPU this process may use.
fn shard_count(cores: Option<usize>, cpus: usize) -> Result<usize, ServerError> {
    let shard_count = cores.unwrap_or(cpus);
    if shard_count == 0 || shard_count > SHARDS_MAX {
        return Err(ServerError::Cores {
            cores: shard_count,
            shards_max: SHARDS_MAX,
        });
    }
    if shard_count > cpus {
        tracing::warn!(
            shards = shard_count,
            cpus,
            "more shards than CPUs: shards will share cores"
        );
    }
    Ok(shard_count)
}

/// The listeners the shards take over.
struct Listeners {
    front: StdListener,
    front_address: SocketAddr,
    shards: Vec<StdListener>,
    resp: Option<StdListener>,
}

/// Starts one executor per shard, pinned round-robin to the CPUs this process may use,
/// each with a watcher thread that tells `events` when the shard's thread ends.
fn start_shards(
    listeners: Listeners,
    starting: &Starting,
    settings: &NodeSettings,
    stop: &Shutdown,
    events: &NodeEvents,
) -> Result<(), ServerError> {
    let Listeners {
        front,
        front_address,
        shards,
        resp,
    } = listeners;
    let cpus = allowed_cpus();
    let spin = Duration::from_micros(settings.spin_us);
    let mesh = runtime::full_mesh(shards.len(), FORWARD_QUEUE_DEPTH);
    for (shard_id, shard_listener) in shards.into_iter().enumerate() {
        let front_listener = front.try_clone().map_err(|source| ServerError::Bind {
            address: front_address,
            source,
        })?;
        // Every shard accepts on the Redis-protocol door too, as on the front port.
        let resp_listener = resp
            .as_ref()
            .map(StdListener::try_clone)
            .transpose()
            .map_err(|source| ServerError::Bind {
                address: front_address,
                source,
            })?;
        let launch = ShardLaunch {
            setup: starting.setup(settings, shard_id),
            shard_listener,
            front_listener,
            resp_listener,
            mesh: mesh.clone(),
            shutdown: stop.clone(),
        };
        let shard_events = events.clone();
        let cpu = cpus[shard_id % cpus.len()];
        let name = format!("shard-{shard_id}");
        let executor =
            Executor::spawn(&name, cpu, spin, move || launch::run(launch, shard_events)).map_err(|error| {
                ServerError::ShardStart {
                    shard: shard_id,
                    reason: error.to_string(),
                }
            })?;
        let finished = events.clone();
        std::thread::spawn(move || {
            finished.send(match executor.join() {
                Ok(()) => NodeEvent::ShardStopped { shard: shard_id },
                Err(error) => NodeEvent::ShardFailed(ServerError::ShardStart {
                    shard: shard_id,
                    reason: error.to_string(),
                }),
            });
        });
    }
    Ok(())
}

/// Prints the ready line, the contract with scripts and tests: one line, key=value.
fn announce_ready(node: &RunningNode) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "engramd ready front={} shards={} node={}{}",
        node.front_address(),
        node.shard_addresses().join(","),
        node.node_id(),
        node.resp_address()
            .map(|address| format!(" resp={address}"))
            .unwrap_or_default()
    );
    let _ = stdout.flush();
}

/// The first SIGINT or SIGTERM triggers `shutdown`; a second one interrupts the wait for
/// the shards. The handlers are the process's: only engramd's path installs them.
/// SIGHUP reloads the TLS certificate and key and the credentials file; without either
/// it is logged and ignored (rather than ending the process, as it would by default).
fn watch_reloads(tls: Option<ServerTls>, gatekeeper: Arc<Gatekeeper>) -> Result<(), ServerError> {
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("reloads".into())
        .spawn(move || {
            for _ in signals.forever() {
                reload_tls(tls.as_ref());
                reload_credentials(&gatekeeper);
            }
        })
        .map_err(ServerError::Signals)?;
    Ok(())
}

fn reload_tls(tls: Option<&ServerTls>) {
    match tls {
        None => tracing::info!("SIGHUP: no TLS certificate to reload"),
        Some(tls) => match tls.reload() {
            Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "TLS certificate reloaded"),
            Err(error) => tracing::error!(%error, "TLS reload failed; the previous certificate still serves"),
        },
    }
}

fn reload_credentials(gatekeeper: &Gatekeeper) {
    match gatekeeper.reload() {
        Ok(None) => tracing::info!("SIGHUP: no credentials file to reload"),
        Ok(Some(listed)) => tracing::info!(
            file = %gatekeeper.file().unwrap_or(std::path::Path::new("")).display(),
            listed,
            "credentials reloaded"
        ),
        Err(error) => tracing::error!(%error, "credentials reload failed; the previous credentials still admit"),
    }
}

fn watch_signals(shutdown: Shutdown) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if shutdown.is_triggered() {
                    tracing::warn!(signal, "second signal: exiting at once");
                    shutdown.interrupt();
                    continue;
                }
                tracing::info!(signal, "shutting down");
                shutdown.trigger();
            }
        })
        .map_err(ServerError::Signals)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_listeners(shards: usize) -> NodeListeners {
        let bind = || StdListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        NodeListeners {
            front: bind(),
            shards: (0..shards).map(|_| bind()).collect(),
            metrics: Some(bind()),
            resp: Some(bind()),
        }
    }

    #[test]
    fn a_stopped_node_lets_go_of_its_shards_and_their_data() {
        let node = start(NodeSettings::default(), loopback_listeners(2), Shutdown::new()).expect("starts");
        // Connections hold the shards, to the front port and to each shard's port; the
        // metrics responder holds the node's figures.
        assert!(node.metrics_address().is_some());
        let addresses = std::iter::once(node.front_address())
            .chain(node.resp_address())
            .chain(node.shard_addresses().iter().map(|address| address.parse().unwrap()));
        let held: Vec<_> = addresses
            .map(|address| std::net::TcpStream::connect(address).expect("connect"))
            .collect();
        let figures = Arc::downgrade(&node.node);
        node.stop().expect("stops");
        assert!(
            figures.upgrade().is_none(),
            "a shard, a task of one or the metrics responder outlived the node"
        );
        drop(held);
    }
}
