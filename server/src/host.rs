//! What the machine gives a node: io_uring, the CPUs this process may run on, and the
//! listening sockets ([`NodeListeners`]), all checked or bound before any shard starts,
//! so a node that cannot run fails fast and says why.

use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};

use crate::error::ServerError;

/// Connections the kernel queues per listener before the shards accept them.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Entries of the ring that probes for io_uring: the smallest that says whether rings
/// can be made at all.
const PROBE_RING_ENTRIES: u32 = 4;

/// The sockets a node serves on, bound before it starts: by engramd from its flags
/// ([`bind_ports`]), or by whoever runs a node in-process (a test binds 127.0.0.1:0).
pub struct NodeListeners {
    /// The front port, which every shard accepts on.
    pub front: StdListener,
    /// Each shard's own port, by shard id: as many as the node runs shards.
    pub shards: Vec<StdListener>,
    /// Where `GET /metrics` is served; none when `None`.
    pub metrics: Option<StdListener>,
    /// The Redis-protocol door, which every shard accepts on; none when `None`.
    pub resp: Option<StdListener>,
}

/// Binds the front port `port` and, for each of `shard_count` shards, port+1+N (all
/// free ports when `port` is 0), the metrics port unless `metrics_port` is 0, and the
/// Redis-protocol port when one is given.
pub fn bind_ports(
    bind: IpAddr,
    port: u16,
    shard_count: usize,
    metrics_port: u16,
    resp_port: Option<u16>,
) -> Result<NodeListeners, ServerError> {
    let last_port = u32::from(port) + shard_count as u32;
    if port != 0 && last_port > u32::from(u16::MAX) {
        return Err(ServerError::Ports {
            first: u32::from(port),
            last: last_port,
        });
    }
    let front = listen(SocketAddr::new(bind, port))?;
    let mut shards = Vec::with_capacity(shard_count);
    for shard_id in 0..shard_count {
        let shard_port = if port == 0 { 0 } else { port + 1 + shard_id as u16 };
        shards.push(listen(SocketAddr::new(bind, shard_port))?);
    }
    let metrics = match metrics_port {
        0 => None,
        port => {
            let address = SocketAddr::new(bind, port);
            Some(engram_metrics_http::bind(address).map_err(|source| ServerError::Bind { address, source })?)
        }
    };
    let resp = resp_port.map(|port| listen(SocketAddr::new(bind, port))).transpose()?;
    Ok(NodeListeners {
        front,
        shards,
        metrics,
        resp,
    })
}

/// Fails fast, with the likely cause, when this process cannot use io_uring at all.
pub fn check_io_uring() -> Result<(), ServerError> {
    io_uring::IoUring::new(PROBE_RING_ENTRIES).map(drop).map_err(|source| {
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

/// A listening socket on `address`, ready for shards to accept on.
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
pub fn allowed_cpus() -> Vec<usize> {
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
