//! Starting and stopping a node: checks the kernel can run it, binds every port before
//! any shard starts (so a taken port fails fast and clearly), starts one pinned
//! executor per shard, announces readiness, and stops all shards on SIGINT/SIGTERM.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_control::embedded_map;
use engram_proto::limits::incarnation_version_floor;
use engram_proto::{Command, Heartbeat, JoinRequest, Response, ShardAddress, ShardLoad, SlotMap};

use crate::cluster::{BlockingLink, NodeMap};
use crate::config::Config;
use crate::error::ServerError;
use crate::events::{await_start, await_stop, NodeEvent, NodeEvents};
use crate::launch::{self, ShardLaunch};
use crate::metrics::NodeMetrics;
use crate::runtime::{self, Executor};
use crate::shard::{ShardSetup, FORWARD_QUEUE_DEPTH};
use crate::stats::{NodeStats, ShardStats};

/// Most shards one node runs (ports and shard ids are 16-bit).
pub const SHARDS_MAX: usize = 1024;
/// Connections the kernel queues per listener before the shards accept them.
pub const LISTEN_BACKLOG: i32 = 1024;

/// How long a starting node keeps trying to reach the control plane.
pub const JOIN_TIMEOUT_MS: u64 = 30_000;
/// How often a cluster node reports to the control plane.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Bound on each control-plane exchange, so a stalled control plane cannot stall the
/// heartbeat thread for long.
pub const CONTROL_CALL_TIMEOUT_MS: u64 = 1_000;

/// Fails fast, with the likely cause, when this process cannot use io_uring at all.
pub fn check_io_uring() -> Result<(), ServerError> {
    io_uring::IoUring::new(4).map(drop).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring; engramd needs Linux 5.8 or newer".to_string(),
            Some(libc::EPERM) | Some(libc::EACCES) => "io_uring is forbidden here: in a container, run with a seccomp \
                 profile that allows io_uring_setup, io_uring_enter and io_uring_register; on the host, check \
                 sysctl kernel.io_uring_disabled"
                .to_string(),
            Some(libc::ENOMEM) => format!(
                "the rings could not be allocated; the locked-memory limit is {} (raise it: ulimit -l; in \
                 Docker --ulimit memlock=8388608, or -1 where the daemon's own limit allows it)",
                memlock_limit_text()
            ),
            _ => "engramd needs Linux 5.8 or newer with io_uring enabled".to_string(),
        };
        ServerError::IoUringUnavailable { source, hint }
    })
}

fn memlock_limit_text() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return "unknown".into();
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", limit.rlim_cur / 1024)
    }
}

fn listen(address: SocketAddr) -> Result<StdListener, ServerError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |source| ServerError::Bind { address, source };
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP)).map_err(bind_error)?;
    // Reuse of TIME_WAIT addresses only, deliberately not SO_REUSEPORT: a second engramd
    // on the same port must fail, not silently share the traffic.
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
    // Every shard accepts on a dup of the front listener (one open file description),
    // which must be non-blocking already (see `runtime::TcpListener`).
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

/// CPUs this process may run on (respects taskset and container cpusets).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

pub fn run(config: Config) -> Result<(), ServerError> {
    check_io_uring()?;
    let cpus = allowed_cpus();
    let shard_count = config.cores.unwrap_or(cpus.len());
    if shard_count == 0 || shard_count > SHARDS_MAX {
        return Err(ServerError::Cores {
            cores: shard_count,
            shards_max: SHARDS_MAX,
        });
    }
    if shard_count > cpus.len() {
        tracing::warn!(
            shards = shard_count,
            cpus = cpus.len(),
            "more shards than CPUs: shards will share cores"
        );
    }
    let last_port = u32::from(config.port) + shard_count as u32;
    if config.port != 0 && last_port > u32::from(u16::MAX) {
        return Err(ServerError::Ports {
            first: u32::from(config.port),
            last: last_port,
        });
    }

    let front = listen(SocketAddr::new(config.bind, config.port))?;
    let front_address = front.local_addr().map_err(|source| ServerError::Bind {
        address: SocketAddr::new(config.bind, config.port),
        source,
    })?;
    let mut shard_listeners = Vec::with_capacity(shard_count);
    for shard_id in 0..shard_count {
        let port = if config.port == 0 {
            0
        } else {
            config.port + 1 + shard_id as u16
        };
        shard_listeners.push(listen(SocketAddr::new(config.bind, port))?);
    }
    let shard_addresses: Vec<String> = shard_listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|address| address.to_string())
                .unwrap_or_default()
        })
        .collect();

    let credentials = config.auth_token.clone().unwrap_or_default().into_bytes();
    let NodePlace {
        node_id,
        map,
        shard_addresses,
        version_floor,
        session,
    } = place_node(&config, front_address, shard_addresses, &credentials)?;
    let node_map = Arc::new(NodeMap::new(map));
    if let Some(session) = &session {
        node_map.mark_checked(map_check_grace_ms(session.liveness_timeout_ms));
    }
    let node = Arc::new(NodeStats {
        node_id,
        started: Instant::now(),
        shards: (0..shard_count).map(|_| ShardStats::default()).collect(),
        shard_addresses: shard_addresses.clone(),
        metrics: NodeMetrics::new(),
    });
    let metrics_node = node.clone();
    let metrics_address =
        crate::metrics::start_http(config.bind, config.metrics_port, move || metrics_node.render_metrics())?;
    let memory_limit_bytes = config.memory_limit.map_or(u64::MAX, |limit| limit / shard_count as u64);
    let shutdown = Arc::new(AtomicBool::new(false));
    let (events, event_receiver) = NodeEvents::channel(shard_count);
    watch_signals(shutdown.clone(), events.clone())?;

    let mesh = runtime::full_mesh(shard_count, FORWARD_QUEUE_DEPTH);
    let hash_seed = random_u64();
    for (shard_id, shard_listener) in shard_listeners.into_iter().enumerate() {
        let front_listener = front.try_clone().map_err(|source| ServerError::Bind {
            address: front_address,
            source,
        })?;
        let launch = ShardLaunch {
            setup: ShardSetup {
                shard_id,
                node_map: node_map.clone(),
                node: node.clone(),
                memory_limit_bytes,
                hash_seed,
                version_floor,
                auth_token: config.auth_token.clone().map(String::into_bytes),
                read_spin: Duration::from_micros(config.spin_us),
            },
            shard_listener,
            front_listener,
            mesh: mesh.clone(),
            shutdown: shutdown.clone(),
        };
        let shard_events = events.clone();
        let cpu = cpus[shard_id % cpus.len()];
        let spin = Duration::from_micros(config.spin_us);
        let name = format!("shard-{shard_id}");
        let handle = Executor::spawn(&name, cpu, spin, move || launch::run(launch, shard_events)).map_err(|error| {
            ServerError::ShardStart {
                shard: shard_id,
                reason: error.to_string(),
            }
        })?;
        let finished = events.clone();
        std::thread::spawn(move || {
            finished.send(match handle.join() {
                Ok(()) => NodeEvent::ShardStopped { shard: shard_id },
                Err(error) => NodeEvent::ShardFailed(ServerError::ShardStart {
                    shard: shard_id,
                    reason: error.to_string(),
                }),
            });
        });
    }
    drop(front);
    drop(events);
    await_start(&event_receiver, shard_count)?;
    if let Some(session) = session {
        let heartbeat = Heartbeater {
            control: session.control,
            credentials: credentials.clone(),
            node: node.clone(),
            node_map: node_map.clone(),
            shutdown: shutdown.clone(),
            refusal_logged: std::cell::Cell::new(None),
            incarnation: session.incarnation,
            liveness_timeout_ms: std::cell::Cell::new(session.liveness_timeout_ms),
        };
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat.run())
            .map_err(ServerError::Thread)?;
    }
    tracing::info!(%front_address, shards = shard_count, node_id, ?metrics_address, "engramd serving");
    // The ready line is the contract with scripts and tests: one line, key=value.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "engramd ready front={front_address} shards={} node={node_id}",
        shard_addresses.join(",")
    );
    let _ = stdout.flush();
    drop(stdout);

    await_stop(&event_receiver, shard_count)?;
    tracing::info!("engramd stopped");
    Ok(())
}

/// Where a node stands: alone with its embedded map, or a member of a cluster.
struct NodePlace {
    node_id: u64,
    map: SlotMap,
    /// As clients and other nodes reach them.
    shard_addresses: Vec<String>,
    version_floor: u64,
    /// `None` for a node that runs alone.
    session: Option<Session>,
}

/// What a cluster node's join gave it.
struct Session {
    control: String,
    incarnation: u64,
    liveness_timeout_ms: u64,
}

/// Builds the embedded map of a node that runs alone, or joins the control plane.
fn place_node(
    config: &Config,
    front_address: SocketAddr,
    shard_addresses: Vec<String>,
    credentials: &[u8],
) -> Result<NodePlace, ServerError> {
    let Some(control) = &config.control else {
        let node_id = config.node_id.unwrap_or_else(random_u64);
        let shards = shard_addresses
            .iter()
            .enumerate()
            .map(|(shard_id, address)| ShardAddress {
                node_id,
                shard_id: shard_id as u16,
                address: address.clone(),
            })
            .collect();
        return Ok(NodePlace {
            node_id,
            map: embedded_map(shards),
            shard_addresses,
            version_floor: standalone_version_floor(),
            session: None,
        });
    };
    let host = match &config.advertise {
        Some(host) => host.clone(),
        None if config.bind.is_unspecified() => return Err(ServerError::AdvertiseRequired(config.bind)),
        None => config.bind.to_string(),
    };
    let advertised = |address: &str| {
        let port = address.rsplit_once(':').map_or("0", |(_, port)| port);
        format!("{host}:{port}")
    };
    let shard_count = shard_addresses.len() as u64;
    let request = JoinRequest {
        front_address: advertised(&front_address.to_string()),
        shard_addresses: shard_addresses.iter().map(|address| advertised(address)).collect(),
        memory_limit_bytes: config.memory_limit.map_or(0, |limit| limit / shard_count),
        boot_id: random_u64(),
    };
    let joined = join_cluster(control, credentials, &request)?;
    tracing::info!(%control, node_id = joined.node_id, incarnation = joined.incarnation, epoch = joined.map.epoch, "joined the cluster");
    Ok(NodePlace {
        node_id: joined.node_id,
        map: joined.map,
        shard_addresses: request.shard_addresses,
        version_floor: incarnation_version_floor(joined.incarnation),
        session: Some(Session {
            control: control.clone(),
            incarnation: joined.incarnation,
            liveness_timeout_ms: joined.liveness_timeout_ms,
        }),
    })
}

/// The first SIGINT or SIGTERM asks the shards to stop; a second one tells the main
/// thread to stop without them.
fn watch_signals(shutdown: Arc<AtomicBool>, events: NodeEvents) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if shutdown.swap(true, Relaxed) {
                    tracing::warn!(signal, "second signal: exiting at once");
                    events.interrupt();
                    continue;
                }
                tracing::info!(signal, "shutting down");
            }
        })
        .map_err(ServerError::Signals)?;
    Ok(())
}

/// The floor of a node that runs alone: nanoseconds since the Unix epoch at start. A
/// shard draws far fewer than one version per nanosecond (each costs a request, which
/// takes well over a hundred), so its counter stays below the wall clock, and a later
/// start begins above everything an earlier one drew, as long as the wall clock is not
/// set back across a restart by more than the earlier process ran ahead of it
/// (ARCHITECTURE.md argues it).
fn standalone_version_floor() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX >> 1)
}

/// What the control plane answered a join.
struct Joined {
    node_id: u64,
    map: SlotMap,
    incarnation: u64,
    liveness_timeout_ms: u64,
}

/// How long shards may serve on a map after it was last checked with the control
/// plane, given its liveness timeout. The control plane declares a node dead once it
/// has heard nothing for the timeout, counted from the last heartbeat it received,
/// which the node sent at most `CONTROL_CALL_TIMEOUT_MS` before the exchange ended;
/// half of what is left keeps the node's own deadline well ahead of that, on clocks
/// that only run at about the same rate.
fn map_check_grace_ms(liveness_timeout_ms: u64) -> u64 {
    liveness_timeout_ms.saturating_sub(CONTROL_CALL_TIMEOUT_MS) / 2
}

/// Registers with the control plane, retrying until `JOIN_TIMEOUT_MS`: a node may start
/// before its control plane (as containers do). Retries carry the same boot id, so a
/// join whose answer was lost is not taken for a restart.
fn join_cluster(control: &str, credentials: &[u8], request: &JoinRequest) -> Result<Joined, ServerError> {
    let deadline = Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
    let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
    loop {
        let attempt = BlockingLink::connect(control, credentials, timeout)
            .and_then(|mut link| link.call(Command::ClusterJoin(request.clone())));
        let reason = match attempt {
            Ok(Response::Joined {
                node_id,
                map,
                incarnation,
                liveness_timeout_ms,
            }) => match map.validate() {
                Ok(()) => {
                    return Ok(Joined {
                        node_id,
                        map,
                        incarnation,
                        liveness_timeout_ms,
                    })
                }
                Err(reason) => format!("the control plane sent an invalid map: {reason}"),
            },
            Ok(Response::Error(reply)) => format!("refused: {}", reply.message),
            Ok(other) => format!("unexpected answer {}", other.name()),
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(ServerError::Join {
                control: control.to_string(),
                reason,
                join_timeout_ms: JOIN_TIMEOUT_MS,
            });
        }
        tracing::debug!(%control, %reason, "join attempt failed; retrying");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reports liveness and load to the control plane and fetches the map when the control
/// plane's is newer. The node keeps serving with the map it has while the control plane
/// is unreachable.
struct Heartbeater {
    control: String,
    credentials: Vec<u8>,
    node: Arc<NodeStats>,
    node_map: Arc<NodeMap>,
    shutdown: Arc<AtomicBool>,
    refusal_logged: std::cell::Cell<Option<Instant>>,
    incarnation: u64,
    /// The control plane's, from its last answer.
    liveness_timeout_ms: std::cell::Cell<u64>,
}

/// How often a heartbeat refusal is logged while it lasts.
const REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;

impl Heartbeater {
    fn run(self) {
        let mut link: Option<BlockingLink> = None;
        let mut reachable = true;
        while !self.shutdown.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
            let outcome = match link.take() {
                // A link kept across a pause may have been closed at the other end: its
                // failure says nothing about the control plane, so a new link tries.
                Some(mut existing) => self
                    .beat(&mut existing)
                    .map(|()| existing)
                    .or_else(|_| self.connect_and_beat()),
                None => self.connect_and_beat(),
            };
            match outcome {
                Ok(existing) => {
                    if !reachable {
                        tracing::info!(control = %self.control, "control plane reachable again");
                    }
                    reachable = true;
                    link = Some(existing);
                }
                Err(error) => {
                    if reachable {
                        tracing::warn!(control = %self.control, %error, "control plane unreachable; serving with the current map");
                    }
                    reachable = false;
                    // A control plane that is down moves nothing meanwhile: the map stays
                    // good to serve on. (One that is up but cut off from this node may
                    // declare it dead: ARCHITECTURE.md's departures say what that costs.)
                    self.mark_checked();
                }
            }
        }
    }

    fn connect_and_beat(&self) -> Result<BlockingLink, crate::cluster::LinkError> {
        let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
        let mut link = BlockingLink::connect(&self.control, &self.credentials, timeout)?;
        self.beat(&mut link)?;
        Ok(link)
    }

    /// Tells the shards the map was checked just now (see [`map_check_grace_ms`]).
    fn mark_checked(&self) {
        let now_ms = self.node.started.elapsed().as_millis() as u64;
        self.node_map
            .mark_checked(now_ms + map_check_grace_ms(self.liveness_timeout_ms.get()));
    }

    /// One exchange: report, and install the control plane's map if it is newer. The
    /// map counts as checked only once it is installed; a refused beat (this process
    /// was replaced by a restart, or the control plane lost its state) does not count,
    /// so the shards stop serving on it.
    fn beat(&self, link: &mut BlockingLink) -> Result<(), crate::cluster::LinkError> {
        let shards = self
            .node
            .shards
            .iter()
            .map(|shard| ShardLoad {
                keys: shard.keys.load(Relaxed),
                memory_used_bytes: shard.memory_used_bytes.load(Relaxed),
                operations_total: shard.operations_total.load(Relaxed),
            })
            .collect();
        let mut migrations: Vec<u64> = Vec::new();
        for shard in &self.node.shards {
            migrations.extend(
                shard
                    .migrations
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .iter(),
            );
        }
        let heartbeat = Heartbeat {
            node_id: self.node.node_id,
            map_epoch: self.node_map.epoch(),
            shards,
            migrations,
            incarnation: self.incarnation,
        };
        let (control_epoch, abort_migrations) = match link.call(Command::ClusterHeartbeat(heartbeat))? {
            Response::HeartbeatAck {
                map_epoch,
                abort_migrations,
                liveness_timeout_ms,
            } => {
                self.liveness_timeout_ms.set(liveness_timeout_ms);
                (map_epoch, abort_migrations)
            }
            Response::Error(reply) => {
                // A control plane that lost its state refuses every beat; say so now and
                // then, not twice a second.
                let due = self
                    .refusal_logged
                    .get()
                    .is_none_or(|logged| logged.elapsed() >= Duration::from_millis(REFUSAL_LOG_INTERVAL_MS));
                if due {
                    self.refusal_logged.set(Some(Instant::now()));
                    tracing::warn!(control = %self.control, message = %reply.message, "heartbeat refused");
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        if control_epoch > self.node_map.epoch() {
            if let Response::SlotMap(map) = link.call(Command::GetSlotMap)? {
                let epoch = map.epoch;
                match self.node_map.install(map) {
                    Ok(true) => tracing::info!(epoch, "installed the control plane's map"),
                    Ok(false) => {}
                    Err(reason) => tracing::warn!(epoch, %reason, "the control plane sent an invalid map"),
                }
            }
        }
        if control_epoch <= self.node_map.epoch() {
            self.mark_checked();
        }
        if !abort_migrations.is_empty() {
            self.settle(&abort_migrations, control_epoch);
        }
        Ok(())
    }

    /// Aborts migrations the control plane no longer runs, on every shard (an id unknown
    /// to a shard is a no-op there). The map was installed first, and each shard refuses
    /// the abort until it routes with `map_epoch`, so a migration the map committed is
    /// committed by the map, not undone by the abort.
    fn settle(&self, migration_ids: &[u64], map_epoch: u64) {
        let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
        for address in &self.node.shard_addresses {
            let link = BlockingLink::connect(address, &self.credentials, timeout);
            let Ok(mut link) = link else { continue };
            for &migration_id in migration_ids {
                let abort = Command::MigrateAbort {
                    migration_id,
                    map_epoch,
                };
                if let Err(error) = link.call(abort) {
                    tracing::debug!(%address, migration_id, %error, "could not settle a migration; the next heartbeat retries");
                }
            }
        }
        tracing::info!(?migration_ids, "settled migrations the control plane no longer runs");
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; hashing the time through it
    // yields an unpredictable value without another dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    hasher.finish()
}
