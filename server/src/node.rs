//! Starting and stopping a node: checks the machine can run it and binds every port
//! before any shard starts (`host.rs`), takes its place (alone, or joined to a cluster,
//! whose heartbeat then runs: `heartbeat.rs`), starts one pinned executor per shard,
//! announces readiness, and stops all shards on SIGINT/SIGTERM.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_proto::limits::incarnation_version_floor;
use engram_proto::link::blocking::BlockingLink;
use engram_proto::{
    embedded_map, ControlProtocol, ControlRequest, ControlResponse, Identity, JoinRequest, ShardAddress, SlotMap,
};

use crate::cluster::NodeMap;
use crate::config::Config;
use crate::error::ServerError;
use crate::events::{await_start, await_stop, NodeEvent, NodeEvents};
use crate::heartbeat::{map_check_grace_ms, Heartbeater, Membership, CONTROL_CALL_TIMEOUT_MS};
use crate::host::{allowed_cpus, bind_ports, check_io_uring, Ports};
use crate::launch::{self, ShardLaunch};
use crate::runtime::{self, Executor};
use crate::shard::{ShardSetup, FORWARD_QUEUE_DEPTH};
use crate::stats::NodeStats;

/// Most shards one node runs (ports and shard ids are 16-bit).
pub const SHARDS_MAX: usize = 1024;
/// How long a starting node keeps trying to reach the control plane.
pub const JOIN_TIMEOUT_MS: u64 = 30_000;
/// How long a starting node waits between tries to reach the control plane.
pub const JOIN_RETRY_INTERVAL_MS: u64 = 200;

pub fn run(config: Config) -> Result<(), ServerError> {
    check_io_uring()?;
    let cpus = allowed_cpus();
    let shard_count = shard_count(config.cores, cpus.len())?;
    let Ports {
        front,
        front_address,
        shards: shard_listeners,
        shard_addresses,
    } = bind_ports(config.bind, config.port, shard_count)?;
    let credentials = config.auth_token.clone().unwrap_or_default().into_bytes();
    let NodePlace {
        node_id,
        map,
        shard_addresses,
        version_floor,
        membership,
    } = place_node(&config, front_address, shard_addresses, &credentials)?;
    let node_map = Arc::new(NodeMap::new(map));
    if let Some(membership) = &membership {
        node_map.mark_checked(map_check_grace_ms(membership.liveness_timeout_ms));
    }
    let node = Arc::new(NodeStats::new(node_id, shard_addresses.clone()));
    let metrics_node = node.clone();
    let metrics_address =
        crate::metrics::start_http(config.bind, config.metrics_port, move || metrics_node.render_metrics())?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let (events, event_receiver) = NodeEvents::channel(shard_count);
    watch_signals(shutdown.clone(), events.clone())?;

    let memory_limit_bytes = config.memory_limit.map_or(u64::MAX, |limit| limit / shard_count as u64);
    let hash_seed = random_u64();
    let setup = |shard_id| ShardSetup {
        shard_id,
        node_map: node_map.clone(),
        node: node.clone(),
        memory_limit_bytes,
        hash_seed,
        version_floor,
        auth_token: config.auth_token.clone().map(String::into_bytes),
        read_spin: Duration::from_micros(config.spin_us),
    };
    let listeners = Listeners {
        front,
        front_address,
        shards: shard_listeners,
    };
    start_shards(
        listeners,
        setup,
        &cpus,
        Duration::from_micros(config.spin_us),
        &shutdown,
        &events,
    )?;
    drop(events);
    await_start(&event_receiver, shard_count)?;
    if let Some(membership) = membership {
        Heartbeater::new(membership, node.clone(), node_map.clone(), shutdown.clone()).start()?;
    }
    tracing::info!(%front_address, shards = shard_count, node_id, ?metrics_address, "engramd serving");
    announce_ready(front_address, &shard_addresses, node_id);
    await_stop(&event_receiver, shard_count)?;
    tracing::info!("engramd stopped");
    Ok(())
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
}

/// Starts one executor per shard, pinned round-robin to `cpus`, each with a watcher
/// thread that tells `events` when the shard's thread ends.
fn start_shards(
    listeners: Listeners,
    setup: impl Fn(usize) -> ShardSetup,
    cpus: &[usize],
    spin: Duration,
    shutdown: &Arc<AtomicBool>,
    events: &NodeEvents,
) -> Result<(), ServerError> {
    let Listeners {
        front,
        front_address,
        shards,
    } = listeners;
    let mesh = runtime::full_mesh(shards.len(), FORWARD_QUEUE_DEPTH);
    for (shard_id, shard_listener) in shards.into_iter().enumerate() {
        let front_listener = front.try_clone().map_err(|source| ServerError::Bind {
            address: front_address,
            source,
        })?;
        let launch = ShardLaunch {
            setup: setup(shard_id),
            shard_listener,
            front_listener,
            mesh: mesh.clone(),
            shutdown: shutdown.clone(),
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
fn announce_ready(front_address: SocketAddr, shard_addresses: &[String], node_id: u64) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "engramd ready front={front_address} shards={} node={node_id}",
        shard_addresses.join(",")
    );
    let _ = stdout.flush();
}

/// Where a node stands: alone with its embedded map, or a member of a cluster.
struct NodePlace {
    node_id: u64,
    map: SlotMap,
    /// As clients and other nodes reach them.
    shard_addresses: Vec<String>,
    version_floor: u64,
    /// What the heartbeat needs; `None` for a node that runs alone.
    membership: Option<Membership>,
}

/// Builds the embedded map of a node that runs alone, or joins the control plane.
fn place_node(
    config: &Config,
    front_address: SocketAddr,
    shard_addresses: Vec<String>,
    credentials: &[u8],
) -> Result<NodePlace, ServerError> {
    match &config.control {
        None => Ok(place_alone(config.node_id, shard_addresses)),
        Some(control) => join(config, control, front_address, shard_addresses, credentials),
    }
}

/// A node that runs alone serves every slot, under the embedded control plane's map.
fn place_alone(node_id: Option<u64>, shard_addresses: Vec<String>) -> NodePlace {
    let node_id = node_id.unwrap_or_else(random_u64);
    let shards = shard_addresses
        .iter()
        .enumerate()
        .map(|(shard_id, address)| ShardAddress {
            node_id,
            shard_id: shard_id as u16,
            address: address.clone(),
        })
        .collect();
    NodePlace {
        node_id,
        map: embedded_map(shards),
        shard_addresses,
        version_floor: standalone_version_floor(),
        membership: None,
    }
}

/// Joins the cluster whose control plane is at `control`, announcing the addresses
/// clients and other nodes reach this node's ports at.
fn join(
    config: &Config,
    control: &str,
    front_address: SocketAddr,
    shard_addresses: Vec<String>,
    credentials: &[u8],
) -> Result<NodePlace, ServerError> {
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
        membership: Some(Membership {
            control: control.to_string(),
            credentials: credentials.to_vec(),
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

/// Registers with the control plane, retrying until `JOIN_TIMEOUT_MS`: a node may start
/// before its control plane (as containers do). Retries carry the same boot id, so a
/// join whose answer was lost is not taken for a restart.
fn join_cluster(control: &str, credentials: &[u8], request: &JoinRequest) -> Result<Joined, ServerError> {
    let deadline = Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
    let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
    loop {
        let attempt = BlockingLink::<ControlProtocol>::connect(control, Identity::node(credentials), timeout)
            .and_then(|mut link| link.call(ControlRequest::Join(request.clone())));
        let reason = match attempt {
            Ok(ControlResponse::Joined {
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
            Ok(ControlResponse::Error(reply)) => format!("refused: {}", reply.message),
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
        std::thread::sleep(Duration::from_millis(JOIN_RETRY_INTERVAL_MS));
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
