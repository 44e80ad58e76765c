//! A real `engramd` process for one test: its own loopback address, free ports, bounded
//! start and stop, and helpers to reach it (client builder, CLI, raw connections).

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use engram_tls::ServerTlsFiles;

use crate::binaries;
use crate::STEP_TIMEOUT;

/// Longest wait for the ready line before a start is declared failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// After SIGTERM, how long the server gets before SIGKILL when a test drops it.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start `engramd`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Shards; tests stay at 2 or below so one test process uses at most 2 cores.
    pub cores: usize,
    /// `--memory-limit`, e.g. `"1MiB"`.
    pub memory_limit: Option<String>,
    pub auth_token: Option<String>,
    /// Explicit `--port` (0: free ports picked by the server).
    pub port: u16,
    /// Explicit `--bind`; by default a loopback address of its own (see [`next_loopback`]).
    pub bind: Option<Ipv4Addr>,
    /// `--metrics-port` (default: metrics off).
    pub metrics_port: Option<u16>,
    /// `--control`: join the cluster of this engram-control.
    pub control: Option<String>,
    /// `--spin-us` (0: off).
    pub spin_us: u64,
    /// `--resp-port 0`: a Redis-protocol door on a free port.
    pub resp: bool,
    /// The group (gid) the process runs under, so firewall rules can pick out its
    /// sockets (`iptables -m owner --gid-owner`): every node connects out from
    /// 127.0.0.1, whatever address it binds.
    pub group: Option<u32>,
    /// `--max-connections` (default: the server's own).
    pub max_connections: Option<u64>,
    /// `--handshake-timeout-ms` (default: the server's own).
    pub handshake_timeout_ms: Option<u64>,
    /// `--tls-cert`, `--tls-key` and `--tls-client-ca`: every port speaks TLS.
    pub tls: Option<ServerTlsFiles>,
    /// `--tls-ca`: the CA of the control plane's and other nodes' certificates.
    pub tls_ca: Option<PathBuf>,
    /// `--metrics-token`.
    pub metrics_token: Option<String>,
    /// `--idle-timeout-ms` (default: never).
    pub idle_timeout_ms: Option<u64>,
    /// `--credentials-file`.
    pub credentials_file: Option<PathBuf>,
    /// `--node-token`.
    pub node_token: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cores: 2,
            memory_limit: None,
            auth_token: None,
            port: 0,
            bind: None,
            metrics_port: None,
            control: None,
            spin_us: 0,
            resp: false,
            group: None,
            max_connections: None,
            handshake_timeout_ms: None,
            tls: None,
            tls_ca: None,
            metrics_token: None,
            idle_timeout_ms: None,
            credentials_file: None,
            node_token: None,
        }
    }
}

impl ServerOptions {
    pub fn cores(mut self, cores: usize) -> Self {
        assert!((1..=2).contains(&cores), "tests keep to at most 2 cores");
        self.cores = cores;
        self
    }

    pub fn memory_limit(mut self, limit: &str) -> Self {
        self.memory_limit = Some(limit.to_string());
        self
    }

    pub fn auth_token(mut self, token: &str) -> Self {
        self.auth_token = Some(token.to_string());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn bind(mut self, bind: Ipv4Addr) -> Self {
        self.bind = Some(bind);
        self
    }

    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    pub fn spin_us(mut self, spin_us: u64) -> Self {
        self.spin_us = spin_us;
        self
    }

    pub fn group(mut self, group: Option<u32>) -> Self {
        self.group = group;
        self
    }

    /// Opens the Redis-protocol door on a free port ([`EngramServer::resp`]).
    pub fn max_connections(mut self, connections: u64) -> Self {
        self.max_connections = Some(connections);
        self
    }

    pub fn handshake_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.handshake_timeout_ms = Some(timeout_ms);
        self
    }

    pub fn resp(mut self) -> Self {
        self.resp = true;
        self
    }

    pub fn tls(mut self, files: ServerTlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    pub fn idle_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.idle_timeout_ms = Some(timeout_ms);
        self
    }

    /// Admits by the credentials file at `path`, and presents `node_token` on the
    /// node's own links.
    pub fn credentials_file(mut self, path: PathBuf, node_token: &str) -> Self {
        self.credentials_file = Some(path);
        self.node_token = Some(node_token.to_string());
        self
    }

    /// Presents `node_token` on the node's own links; without a credentials file or a
    /// shared token, a node of a cluster then admits by its control plane's credentials.
    pub fn node_token(mut self, node_token: &str) -> Self {
        self.node_token = Some(node_token.to_string());
        self
    }

    pub fn metrics_token(mut self, token: &str) -> Self {
        self.metrics_token = Some(token.to_string());
        self
    }

    /// Connects to the control plane and other nodes over TLS, trusting `ca`.
    pub fn tls_ca(mut self, ca: PathBuf) -> Self {
        self.tls_ca = Some(ca);
        self
    }

    pub fn control(mut self, address: &str) -> Self {
        self.control = Some(address.to_string());
        self
    }

    fn arguments(&self, bind: Ipv4Addr) -> Vec<String> {
        let mut arguments = vec![
            "--bind".to_string(),
            bind.to_string(),
            "--port".to_string(),
            self.port.to_string(),
            "--cores".to_string(),
            self.cores.to_string(),
        ];
        if let Some(limit) = &self.memory_limit {
            arguments.extend(["--memory-limit".to_string(), limit.clone()]);
        }
        if let Some(token) = &self.auth_token {
            arguments.extend(["--auth-token".to_string(), token.clone()]);
        }
        if let Some(port) = self.metrics_port {
            arguments.extend(["--metrics-port".to_string(), port.to_string()]);
        }
        if let Some(control) = &self.control {
            arguments.extend(["--control".to_string(), control.clone()]);
        }
        if self.spin_us > 0 {
            arguments.extend(["--spin-us".to_string(), self.spin_us.to_string()]);
        }
        if self.resp {
            arguments.extend(["--resp-port".to_string(), "0".to_string()]);
        }
        if let Some(connections) = self.max_connections {
            arguments.extend(["--max-connections".to_string(), connections.to_string()]);
        }
        if let Some(timeout_ms) = self.handshake_timeout_ms {
            arguments.extend(["--handshake-timeout-ms".to_string(), timeout_ms.to_string()]);
        }
        if let Some(tls) = &self.tls {
            let path = |path: &std::path::Path| path.display().to_string();
            arguments.extend(["--tls-cert".to_string(), path(&tls.cert)]);
            arguments.extend(["--tls-key".to_string(), path(&tls.key)]);
            if let Some(client_ca) = &tls.client_ca {
                arguments.extend(["--tls-client-ca".to_string(), path(client_ca)]);
            }
        }
        if let Some(ca) = &self.tls_ca {
            arguments.extend(["--tls-ca".to_string(), ca.display().to_string()]);
        }
        if let Some(token) = &self.metrics_token {
            arguments.extend(["--metrics-token".to_string(), token.clone()]);
        }
        if let Some(path) = &self.credentials_file {
            arguments.extend(["--credentials-file".to_string(), path.display().to_string()]);
        }
        if let Some(token) = &self.node_token {
            arguments.extend(["--node-token".to_string(), token.clone()]);
        }
        if let Some(timeout_ms) = self.idle_timeout_ms {
            arguments.extend(["--idle-timeout-ms".to_string(), timeout_ms.to_string()]);
        }
        arguments
    }
}

/// How many connections the node whose metrics are at `metrics` turned away for
/// `reason` (the `reason` label of `engram_connections_refused_total`), summed over its
/// shards.
pub fn refused_total(metrics: SocketAddr, reason: &str) -> u64 {
    refused_in(&scrape(metrics, None, None), reason)
}

/// `engram_connections_refused_total` for `reason` in a scrape's text, summed over shards.
pub fn refused_in(scraped: &str, reason: &str) -> u64 {
    scraped
        .lines()
        .filter(|line| line.starts_with("engram_connections_refused_total{"))
        .filter(|line| line.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The whole answer (head and body) to `GET /metrics` at `metrics`: over TLS when `tls`
/// is given, with `Authorization: Bearer TOKEN` when `token` is.
pub fn scrape(metrics: SocketAddr, tls: Option<&engram_tls::ClientTls>, token: Option<&str>) -> String {
    use std::io::Write;
    let authorization = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: engram\r\n{authorization}Connection: close\r\n\r\n");
    let socket = std::net::TcpStream::connect(metrics).expect("connect to metrics");
    socket.set_read_timeout(Some(STEP_TIMEOUT)).expect("read timeout");
    let mut text = Vec::new();
    match tls {
        None => {
            let mut socket = socket;
            socket.write_all(request.as_bytes()).expect("ask for metrics");
            let _ = socket.read_to_end(&mut text);
        }
        Some(tls) => {
            let name = engram_tls::server_name(&metrics.to_string()).expect("a server name");
            let connection = engram_tls::rustls::ClientConnection::new(tls.config(), name).expect("a TLS client");
            let mut stream = engram_tls::rustls::StreamOwned::new(connection, socket);
            stream.write_all(request.as_bytes()).expect("ask for metrics");
            let _ = stream.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A loopback address no other server of this process (and, with high probability, of
/// any concurrently running test process) uses: 127.A.B.C from the pid and a counter.
/// The whole 127.0.0.0/8 block is routed to `lo` on Linux, so no setup is needed.
pub fn next_loopback() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const SPAN: u32 = 254;
    let per_process = 1024;
    let slot = (std::process::id() % 16_000) * per_process + NEXT.fetch_add(1, Relaxed) % per_process;
    let a = 1 + (slot / (SPAN * SPAN)) % SPAN;
    let b = 1 + (slot / SPAN) % SPAN;
    let c = 1 + slot % SPAN;
    Ipv4Addr::new(127, a as u8, b as u8, c as u8)
}

/// The ports tests choose for servers lie below Linux's ephemeral range (32768 up by
/// default). A port in that range may be handed, between the probe and the server's
/// bind, to any socket bound to port 0 on the same address, the server's own other
/// listeners first: engramd binds its front and shard ports to 0 before its metrics
/// port.
const CHOSEN_PORTS: std::ops::Range<u32> = 12_000..32_000;

/// The `attempt`th candidate port of a search on `bind`, spread at random over
/// [`CHOSEN_PORTS`].
fn candidate_port(bind: Ipv4Addr, attempt: u32) -> u16 {
    use std::hash::BuildHasher;
    let draw = std::collections::hash_map::RandomState::new().hash_one((bind, attempt));
    let span = u64::from(CHOSEN_PORTS.end - CHOSEN_PORTS.start);
    u16::try_from(u64::from(CHOSEN_PORTS.start) + draw % span).expect("chosen ports fit 16 bits")
}

/// A port free on `bind` now, below the ephemeral range (see [`CHOSEN_PORTS`]); `bind`
/// being a loopback address of its own ([`next_loopback`]), nothing else takes it
/// before the server does.
pub fn free_port(bind: Ipv4Addr) -> u16 {
    free_port_run(bind, 1)
}

/// Why a server did not start.
#[derive(Debug)]
pub struct StartError {
    pub reason: String,
    /// Exit status when the process ended during the start.
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "engramd did not start: {} (status {:?})\n--- engramd stderr ---\n{}",
            self.reason, self.status, self.stderr
        )
    }
}

/// A running `engramd`; SIGTERM (then SIGKILL after [`STOP_GRACE`]) on drop.
pub struct EngramServer {
    child: Option<Child>,
    bind: Ipv4Addr,
    front: SocketAddr,
    resp: Option<SocketAddr>,
    shards: Vec<SocketAddr>,
    node_id: u64,
    options: ServerOptions,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Removes every `ENGRAM_*` variable, so the caller's environment cannot change a flag
/// the test did not set (every engramd and engram flag has one).
pub fn scrub_environment(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ENGRAM_") {
            command.env_remove(name);
        }
    }
}

pub(crate) fn capture(mut stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(read) => sink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..read]),
            }
        }
    });
    buffer
}

pub(crate) fn text_of(buffer: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// The `resp=IP:PORT` of a ready line, when the node opened the Redis-protocol door.
fn parse_resp_address(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("resp="))
        .and_then(|address| address.parse().ok())
}

/// `engramd ready front=IP:PORT shards=IP:PORT,IP:PORT node=ID [resp=IP:PORT]`
fn parse_ready_line(line: &str) -> Option<(SocketAddr, Vec<SocketAddr>, u64)> {
    let rest = line.trim().strip_prefix("engramd ready ")?;
    let (mut front, mut shards, mut node) = (None, None, None);
    for field in rest.split_whitespace() {
        let (name, value) = field.split_once('=')?;
        match name {
            "front" => front = Some(value.parse().ok()?),
            "shards" => {
                shards = Some(
                    value
                        .split(',')
                        .map(|address| address.parse().ok())
                        .collect::<Option<Vec<SocketAddr>>>()?,
                )
            }
            "node" => node = Some(value.parse().ok()?),
            _ => {}
        }
    }
    Some((front?, shards?, node?))
}

impl EngramServer {
    /// Starts a server and waits for its ready line; panics (with its stderr) if it
    /// does not become ready within [`READY_TIMEOUT`].
    pub fn start(options: ServerOptions) -> EngramServer {
        match Self::try_start(options) {
            Ok(server) => server,
            Err(error) => panic!("{error}"),
        }
    }

    /// Starts a server; an error when it exits or stays silent instead of getting ready.
    pub fn try_start(options: ServerOptions) -> Result<EngramServer, StartError> {
        let bind = options.bind.unwrap_or_else(next_loopback);
        let mut command = Command::new(binaries::engramd());
        scrub_environment(&mut command);
        command
            .args(options.arguments(bind))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(group) = options.group {
            std::os::unix::process::CommandExt::gid(&mut command, group);
        }
        let mut child = command.spawn().map_err(|error| StartError {
            reason: format!("cannot spawn engramd: {error}"),
            status: None,
            stderr: String::new(),
        })?;
        let stderr = capture(child.stderr.take().expect("piped stderr"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_sender, ready) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sender = Some(ready_sender);
            // Keep draining after the ready line so the server never blocks on stdout.
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("engramd ready") {
                    if let Some(sender) = sender.take() {
                        let _ = sender.send(line);
                    }
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let failure = |child: &mut Child, reason: String| {
            let status = child.try_wait().ok().flatten();
            let reason = match status {
                Some(_) => reason,
                None => format!("{reason}\n--- engramd threads ---\n{}", thread_report(child.id())),
            };
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Give the capture thread a moment to collect the last words.
            std::thread::sleep(Duration::from_millis(100));
            StartError {
                reason,
                status,
                stderr: text_of(&stderr),
            }
        };
        loop {
            match ready.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let Some((front, shards, node_id)) = parse_ready_line(&line) else {
                        return Err(failure(&mut child, format!("unparsable ready line {line:?}")));
                    };
                    return Ok(EngramServer {
                        child: Some(child),
                        bind,
                        resp: parse_resp_address(&line),
                        front,
                        shards,
                        node_id,
                        options,
                        stderr,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without a ready line: the process is exiting.
                    let _ = poll_exit(&mut child, Duration::from_secs(5));
                    return Err(failure(&mut child, "stdout closed before the ready line".into()));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failure(
                    &mut child,
                    format!("exited with {status} before the ready line"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(failure(&mut child, format!("no ready line within {READY_TIMEOUT:?}")));
            }
        }
    }

    pub fn bind(&self) -> Ipv4Addr {
        self.bind
    }

    pub fn front(&self) -> SocketAddr {
        self.front
    }

    /// The Redis-protocol door, when [`ServerOptions::resp`] asked for one.
    pub fn resp(&self) -> Option<SocketAddr> {
        self.resp
    }

    pub fn shards(&self) -> &[SocketAddr] {
        &self.shards
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Where `--metrics-port` serves, when it was given.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.options
            .metrics_port
            .map(|port| SocketAddr::from((self.bind, port)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Everything the server wrote to stderr so far (its log).
    pub fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    /// Resident set size of the server process, from /proc/PID/status (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("VmRSS line in /proc/PID/status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|number| number.parse().ok())
            .expect("VmRSS value in kB");
        kib * 1024
    }

    /// A client builder aimed at the front port (credentials are up to the test).
    pub fn client_builder(&self) -> engram_client::ClientBuilder {
        engram_client::Client::builder(self.front.to_string()).timeout(Duration::from_secs(10))
    }

    /// A connected client with default settings (direct routing, namespace "default").
    pub async fn client(&self) -> engram_client::Client {
        let mut builder = self.client_builder();
        if let Some(token) = &self.options.auth_token {
            builder = builder.credentials(token.as_bytes().to_vec());
        }
        builder.connect().await.expect("client connects")
    }

    /// A connected smart client whose calls give up after `timeout` (no credentials).
    pub async fn client_with_timeout(&self, timeout: Duration) -> engram_client::Client {
        self.client_builder()
            .timeout(timeout)
            .connect()
            .await
            .expect("client connects")
    }

    /// A connected client that sends everything to the front port (no direct routing to
    /// shards), whose calls give up after `timeout`.
    pub async fn front_only_client(&self, timeout: Duration) -> engram_client::Client {
        self.client_builder()
            .timeout(timeout)
            .direct(false)
            .connect()
            .await
            .expect("connect to the node's front port")
    }

    /// Runs `engram --addr <front> ARGS...` with a bounded wait.
    pub fn cli(&self, arguments: &[&str]) -> Output {
        let front = self.front.to_string();
        let mut all = vec!["--addr", front.as_str()];
        all.extend_from_slice(arguments);
        run_cli(&all)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; `None` if it did not exit
    /// (the process is then still running and is killed on drop).
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        signal(child, libc::SIGTERM);
        let status = poll_exit(child, grace);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Whether the process is still running.
    /// SIGKILL, as a crash; returns once the process is gone.
    pub fn kill_now(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for EngramServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        signal(&child, libc::SIGTERM);
        if poll_exit(&mut child, STOP_GRACE).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Name, state and kernel wait channel of every thread of a process (and, when gdb is
/// installed, their stacks): what a hung start was waiting for.
fn thread_report(pid: u32) -> String {
    let mut report = String::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let read = |name: &str| {
                std::fs::read_to_string(task.path().join(name))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let state = read("stat").split(' ').nth(2).unwrap_or("?").to_string();
            report.push_str(&format!(
                "{} {} state={} wchan={}\n",
                task.file_name().to_string_lossy(),
                read("comm"),
                state,
                read("wchan")
            ));
        }
    }
    let mut gdb = Command::new("gdb");
    gdb.args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Ok(child) = gdb.spawn() {
        let gdb_pid = child.id();
        let (done, outcome) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        match outcome.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(output)) => report.push_str(&String::from_utf8_lossy(&output.stdout)),
            _ => {
                // SAFETY: gdb is our unreaped child.
                unsafe {
                    libc::kill(gdb_pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
    report
}

pub(crate) fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet (so it cannot have
    // been reused by another process).
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// How long a SIGSTOP may take to stop every thread of a process on a loaded machine.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// SIGSTOP: the process stays, its sockets still accept, but nothing it runs answers.
/// Returns once every thread of it is stopped: kill(2) only queues the signal, and on a
/// busy machine a thread that is not running takes the stop only when it is next
/// scheduled, so without the wait a test would ask a process that still answers.
pub fn stop_process(pid: u32) {
    // SAFETY: kill(2) on a child of this process that has not been reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGSTOP);
    }
    let stopped = crate::poll_until(STOP_TIMEOUT, Duration::from_millis(5), || {
        every_thread_stopped(pid).then_some(())
    });
    assert!(
        stopped.is_some(),
        "process {pid} did not stop within {STOP_TIMEOUT:?} of SIGSTOP"
    );
}

/// Whether every thread of `pid` is in the stopped state ('T' in /proc/PID/task/*/stat).
fn every_thread_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// SIGCONT: a process stopped with [`stop_process`] runs on (as the same process).
pub fn resume_process(pid: u32) {
    // SAFETY: kill(2) on a child of this process that has not been reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGCONT);
    }
}

/// Sends SIGCONT to a process paused with [`stop_process`] when dropped, so a failing
/// test never leaves a stopped process behind (its `EngramServer`, dropped later, then
/// stops it).
pub struct Resume(pub u32);

impl Drop for Resume {
    fn drop(&mut self) {
        resume_process(self.0);
    }
}

/// Waits up to `limit` for `child` to exit.
pub fn poll_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `engram ARGS...` (no implicit `--addr`), waiting at most [`STEP_TIMEOUT`].
pub fn run_cli(arguments: &[&str]) -> Output {
    let mut command = Command::new(binaries::engram_cli());
    scrub_environment(&mut command);
    command
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_bounded(command, STEP_TIMEOUT)
}

/// Exit code, stdout and stderr of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command to completion, killing it and panicking if it takes longer than `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot spawn {command:?}: {error}"));
    let pid = child.id();
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(limit) {
        Ok(output) => output.expect("wait for the command"),
        Err(_) => {
            // SAFETY: the child is not reaped until wait_with_output returns, which it
            // has not, so the pid still names it.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("{command:?} did not finish within {limit:?}");
        }
    }
}

/// A port P on `address` with P+1 .. P+`count`-1 free as well, probed now: for
/// `engramd --port P --cores N`, which needs P and its shards' P+1..=P+N (`count` = N + 1),
/// so that a restart can come back on exactly the same addresses. Another process may
/// still take them before engramd binds; callers that care retry with a new port.
pub fn free_port_run(address: Ipv4Addr, count: u16) -> u16 {
    assert!(count >= 1);
    for attempt in 0..100 {
        let port = candidate_port(address, attempt);
        let Some(last) = port.checked_add(count - 1) else {
            continue;
        };
        if (port..=last).all(|next| std::net::TcpListener::bind((address, next)).is_ok()) {
            return port;
        }
    }
    panic!("no {count} free consecutive ports on {address}");
}

impl EngramServer {
    /// Starts a server on a fixed address (`options` with `bind` and a non-zero `port`),
    /// as a restart after [`EngramServer::kill_now`] does: while the start fails because
    /// an address is still taken (sockets of the killed process may linger for a moment),
    /// it tries again, for up to `limit`. Any other failure panics at once.
    pub fn start_on_same_address(options: ServerOptions, limit: Duration) -> EngramServer {
        assert!(
            options.bind.is_some() && options.port != 0,
            "a restart on the same address needs an explicit bind and port: {options:?}"
        );
        let deadline = Instant::now() + limit;
        loop {
            match Self::try_start(options.clone()) {
                Ok(server) => return server,
                Err(error) if error.stderr.to_lowercase().contains("in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => panic!("{error}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let (front, shards, node) =
            parse_ready_line("engramd ready front=127.0.0.5:33095 shards=127.0.0.5:37255,127.0.0.5:34689 node=42")
                .unwrap();
        assert_eq!(front, "127.0.0.5:33095".parse::<SocketAddr>().unwrap());
        assert_eq!(shards.len(), 2);
        assert_eq!(node, 42);
        assert!(parse_ready_line("engramd ready front=nonsense shards= node=1").is_none());
    }

    #[test]
    fn loopback_addresses_are_distinct_and_usable() {
        let first = next_loopback();
        let second = next_loopback();
        assert_ne!(first, second);
        for address in [first, second] {
            assert_eq!(address.octets()[0], 127);
            assert!(address.octets()[1..].iter().all(|&octet| octet != 0 && octet != 255));
        }
    }
}
