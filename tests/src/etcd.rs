//! [`Etcd`]: a real, single-member `etcd` on free loopback ports with a scratch data
//! directory, for the tests of the control plane's etcd backend. It is killed and its
//! directory removed on drop; [`Etcd::stop`] and [`Etcd::restart`] make an outage (the
//! data survives, the addresses stay).
//!
//! `etcd` must be installed (`scripts/test.sh` installs Debian's `etcd-server`); when it
//! is not, starting one panics saying so, so a missing prerequisite fails loudly instead
//! of skipping the tests that need it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::processes::Scratch;
use crate::server::{capture, free_port_run, next_loopback, poll_exit, signal, text_of};

/// Longest an etcd may take to answer healthy after it was started.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest etcd may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The `etcd` binary: on `PATH`, or where `ENGRAM_ETCD` points.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENGRAM_ETCD") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "etcd is not installed: the etcd tests need the real etcd binary on PATH \
             (scripts/test.sh installs Debian's etcd-server; or set ENGRAM_ETCD to its path)"
        )
    })
}

pub struct Etcd {
    child: Option<Child>,
    client: SocketAddr,
    peer: SocketAddr,
    data: Scratch,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Etcd {
    /// Starts etcd on a loopback address of its own and waits until it is healthy.
    pub fn start() -> Etcd {
        let host = next_loopback();
        // The client port and the peer port after it.
        let ports = free_port_run(host, 2);
        let mut etcd = Etcd {
            child: None,
            client: SocketAddr::from((host, ports)),
            peer: SocketAddr::from((host, ports + 1)),
            data: Scratch::new("engram-etcd"),
            stderr: Arc::default(),
        };
        etcd.launch();
        etcd
    }

    /// The client URL, as `engram-control --etcd` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn client_address(&self) -> SocketAddr {
        self.client
    }

    pub fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    fn launch(&mut self) {
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut command = Command::new(etcd_binary());
        command
            .args(["--name", "engram-test", "--data-dir"])
            .arg(self.data.path().join("member-data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("engram-test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", etcd_binary().display()));
        self.stderr = capture(child.stderr.take().expect("piped stderr"));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let address = self.client;
        let healthy = crate::poll_until(HEALTHY_TIMEOUT, Duration::from_millis(50), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("etcd exited during start-up ({status}): {}", text_of(&self.stderr));
                }
            }
            probe_health(address).then_some(())
        });
        if healthy.is_none() {
            panic!(
                "etcd at {address} not healthy within {HEALTHY_TIMEOUT:?}: {}",
                self.stderr_text()
            );
        }
    }

    /// Kills etcd (SIGKILL, as a crash); its data directory and addresses are kept for
    /// [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same addresses with the same data, and waits until it
    /// is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

/// Whether etcd's `/health` answers healthy.
fn probe_health(address: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    if write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if poll_exit(&mut child, STOP_GRACE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_starts_healthy_survives_a_restart_and_is_gone_after_drop() {
        let mut etcd = Etcd::start();
        let address = etcd.client_address();
        assert!(probe_health(address), "healthy after start");
        etcd.stop();
        assert!(!probe_health(address), "nothing answers while stopped");
        etcd.restart();
        assert!(probe_health(address), "healthy after a restart");
        let data = etcd.data.path().to_path_buf();
        drop(etcd);
        assert!(!probe_health(address), "nothing answers after drop");
        assert!(!data.exists(), "the data directory is removed on drop");
    }
}
