//! [`ControlPlane`]: an `engram-control` process on loopback with a scratch data
//! directory (or its state in etcd: [`ControlPlane::start_etcd`]), restartable on the
//! same address, pausable, plus the `engram cluster` CLI against it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use engram_client::admin::{Admin, ClusterStatus};

use crate::binaries;
use crate::server::{capture, poll_exit, run_bounded, scrub_environment, signal, text_of, READY_TIMEOUT, STOP_GRACE};

/// Longest a `engram cluster` command may run (a rebalance waits for its moves).
const CLI_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest one administration call of a test may take.
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ControlPlane {
    child: Option<Child>,
    /// Flags beyond --listen and where the state is, kept for restarts.
    extra_arguments: Vec<String>,
    /// `host:port` it listens on; kept across restarts.
    address: String,
    state: State,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The group (gid) it runs under, kept for restarts (see [`crate::ServerOptions::group`]).
    group: Option<u32>,
}

/// Where a control plane keeps its state.
enum State {
    DataDir(PathBuf),
    Etcd { endpoint: String, prefix: String },
}

impl ControlPlane {
    /// Starts engram-control on `host` (a free port) with its state in `data_dir`.
    pub fn start(host: std::net::Ipv4Addr, data_dir: PathBuf) -> ControlPlane {
        Self::start_with(host, data_dir, &[])
    }

    /// Starts engram-control with extra flags (kept across restarts).
    pub fn start_with(host: std::net::Ipv4Addr, data_dir: PathBuf, extra_arguments: &[&str]) -> ControlPlane {
        Self::start_in_group(host, data_dir, extra_arguments, None)
    }

    /// [`ControlPlane::start_with`], the process running under `group` when there is one,
    /// so firewall rules can pick out its sockets.
    pub fn start_in_group(
        host: std::net::Ipv4Addr,
        data_dir: PathBuf,
        extra_arguments: &[&str],
        group: Option<u32>,
    ) -> ControlPlane {
        let mut control = ControlPlane {
            child: None,
            extra_arguments: extra_arguments.iter().map(|argument| argument.to_string()).collect(),
            address: format!("{host}:0"),
            state: State::DataDir(data_dir),
            stderr: Arc::default(),
            group,
        };
        control.launch();
        control
    }

    /// Starts `engram-control --etcd endpoint --etcd-prefix prefix` on `host` (a free
    /// port), with extra flags (kept across restarts). It is ready once it listens,
    /// as a standby until it wins the election.
    pub fn start_etcd(
        host: std::net::Ipv4Addr,
        endpoint: &str,
        prefix: &str,
        extra_arguments: &[&str],
    ) -> ControlPlane {
        let mut control = ControlPlane {
            child: None,
            extra_arguments: extra_arguments.iter().map(|argument| argument.to_string()).collect(),
            address: format!("{host}:0"),
            state: State::Etcd {
                endpoint: endpoint.to_string(),
                prefix: prefix.to_string(),
            },
            stderr: Arc::default(),
            group: None,
        };
        control.launch();
        control
    }

    fn launch(&mut self) {
        let mut command = Command::new(binaries::engram_control());
        scrub_environment(&mut command);
        command.args(["--listen", &self.address]);
        match &self.state {
            State::DataDir(data_dir) => command.arg("--data").arg(data_dir),
            State::Etcd { endpoint, prefix } => command.args(["--etcd", endpoint, "--etcd-prefix", prefix]),
        };
        // The tests written before replication study a cluster that keeps no backups
        // (slots lost with their node, migrations alone); the failover tests ask for them.
        if !self.extra_arguments.iter().any(|argument| argument == "--replicas") {
            command.args(["--replicas", "0"]);
        }
        command
            .args(&self.extra_arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(group) = self.group {
            std::os::unix::process::CommandExt::gid(&mut command, group);
        }
        let mut child = command.spawn().expect("spawn engram-control");
        self.stderr = capture(child.stderr.take().expect("piped stderr"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_sender, ready) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut sender = Some(ready_sender);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("engram-control ready") {
                    if let Some(sender) = sender.take() {
                        let _ = sender.send(line);
                    }
                }
            }
        });
        let line = match ready.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("engram-control not ready: {}", text_of(&self.stderr));
            }
        };
        let listen = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("listen="))
            .expect("ready line names its address");
        self.address = listen.to_string();
        self.child = Some(child);
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where it serves metrics, when started with `--metrics-port` (on its --listen host).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        let port = self
            .extra_arguments
            .windows(2)
            .find(|pair| pair[0] == "--metrics-port")?[1]
            .parse()
            .ok()?;
        let host: std::net::IpAddr = self.address.rsplit_once(':')?.0.parse().ok()?;
        Some(std::net::SocketAddr::new(host, port))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP, returning once every thread of it stopped (see
    /// [`crate::server::stop_process`]); [`ControlPlane::resume`] undoes it.
    pub fn pause(&self) {
        crate::server::stop_process(self.pid().expect("a running control plane"));
    }

    /// SIGCONT after [`ControlPlane::pause`].
    pub fn resume(&self) {
        crate::server::resume_process(self.pid().expect("a running control plane"));
    }

    /// SIGKILL, as a crash: no chance to write anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same address with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    /// Runs `engram cluster <arguments> --control <address>` off the async threads (it
    /// blocks while a rebalance runs), output captured. The future owns what it needs, so
    /// it can be spawned and awaited while the test does something else.
    pub fn cli(&self, arguments: &[&str]) -> impl std::future::Future<Output = Output> + Send + 'static {
        cli_at(&self.address, arguments)
    }

    /// An administration handle on this process alone (no credentials): a standby's
    /// `NotLeader` is an answer, not followed to the leader.
    pub fn admin(&self) -> Admin {
        Admin::new(&self.address)
            .timeout(ADMIN_CALL_TIMEOUT)
            .follow_leader(false)
    }

    /// The cluster as the control plane reports it.
    pub async fn status(&self) -> ClusterStatus {
        let deadline = Instant::now() + crate::STEP_TIMEOUT;
        let admin = self.admin();
        loop {
            match admin.status().await {
                Ok(status) => return status,
                Err(error) if Instant::now() >= deadline => panic!("cluster status failed: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Runs `engram cluster <arguments> --control <control>` (one address or several,
/// comma-separated) off the async threads, output captured; see [`ControlPlane::cli`].
pub fn cli_at(control: &str, arguments: &[&str]) -> impl std::future::Future<Output = Output> + Send + 'static {
    let control = control.to_string();
    let arguments: Vec<String> = arguments.iter().map(|argument| argument.to_string()).collect();
    async move {
        let run = tokio::task::spawn_blocking(move || {
            let mut command = Command::new(binaries::engram_cli());
            scrub_environment(&mut command);
            command
                .arg("cluster")
                .args(&arguments)
                .args(["--control", &control])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            run_bounded(command, CLI_TIMEOUT)
        });
        run.await.expect("the CLI task does not panic")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused one would not see the SIGTERM until it runs again.
            signal(&child, libc::SIGCONT);
            signal(&child, libc::SIGTERM);
            if poll_exit(&mut child, STOP_GRACE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
