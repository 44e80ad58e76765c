//! Running other processes from a test: a scratch directory, child processes in their own
//! process groups (killed on drop), a bounded wait for all of them, and the
//! `engram-test-worker` binary (`tests/src/bin/engram-test-worker.rs`), a blocking-client
//! process whose role is given by its arguments.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{binaries, unique_key};

/// Exit codes of the worker processes (the `engram-test-worker` roles, and the shell loops
/// around the CLI, which use the same numbers).
pub mod exit {
    /// `lock`: acquiring (or connecting) failed.
    pub const ACQUIRE_FAILED: i32 = 10;
    /// `lock`: releasing failed.
    pub const RELEASE_FAILED: i32 = 11;
    /// `lock`: the witness marker already existed after acquiring: two holders at once.
    pub const OVERLAP: i32 = 20;
    /// `lock`: reading or writing the witness (marker or log) failed.
    pub const WITNESS_IO: i32 = 21;
    /// `lock`: a fence was not above the previous one this process got.
    pub const FENCE_NOT_INCREASING: i32 = 30;
    /// `barrier`: a wait (or connecting) failed.
    pub const WAIT_FAILED: i32 = 10;
    /// `barrier`: writing the record of passages failed.
    pub const RECORD_IO: i32 = 21;
}

/// A scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new, empty directory under the system temporary directory, named after `prefix`.
    pub fn new(prefix: &str) -> Scratch {
        let path = std::env::temp_dir().join(unique_key(prefix));
        std::fs::create_dir_all(&path).expect("create scratch directory");
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Child processes, each the leader of its own process group; every group still
/// running is killed (SIGKILL) on drop, so a failing test leaves nothing behind.
#[derive(Default)]
pub struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    pub fn new() -> Processes {
        Processes::default()
    }

    /// Starts `command` as the leader of a new process group, known as `label`.
    pub fn spawn(&mut self, label: String, mut command: Command) {
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot spawn {label}: {error}"));
        self.children.push((label, child));
    }

    /// Kills process `label` (SIGKILL) and reaps it; returns how it ended.
    pub fn kill(&mut self, label: &str) -> ExitStatus {
        let position = self
            .children
            .iter()
            .position(|(name, _)| name == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        let (_, mut child) = self.children.remove(position);
        // SAFETY: kill(2) of our child, not reaped yet, so its pid still names it.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        child.wait().expect("reap the killed process")
    }

    /// Waits for every process, up to `limit` in all; panics naming those still running.
    pub fn wait_all(&mut self, limit: Duration) -> Vec<(String, ExitStatus)> {
        let deadline = Instant::now() + limit;
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        loop {
            for ((_, child), status) in self.children.iter_mut().zip(statuses.iter_mut()) {
                if status.is_none() {
                    *status = child.try_wait().expect("try_wait");
                }
            }
            if statuses.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                let running: Vec<&str> = self
                    .children
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, status)| status.is_none())
                    .map(|((label, _), _)| label.as_str())
                    .collect();
                panic!("still running after {limit:?}: {running:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let labels = self.children.drain(..).map(|(label, _)| label);
        labels.zip(statuses.into_iter().flatten()).collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) of the process group led by our unreaped child.
                unsafe {
                    libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                }
                let _ = child.wait();
            }
        }
    }
}

/// A command whose environment has no `ENGRAM_*` variable (every engram flag has one),
/// with stdin from `/dev/null`.
pub fn scrubbed(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ENGRAM_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// The `engram-test-worker` binary in role `role` (its subcommand), scrubbed, stdout
/// discarded; the caller adds the role's arguments and a stderr.
pub fn worker_command(role: &str) -> Command {
    let mut command = scrubbed(binaries::test_worker());
    command.arg(role).stdout(Stdio::null());
    command
}

/// Where process `label`'s stderr goes: `DIR/LABEL.stderr`.
pub fn stderr_file(dir: &Path, label: &str) -> File {
    File::create(dir.join(format!("{label}.stderr"))).expect("create stderr file")
}

/// What process `label` wrote to its [`stderr_file`] (empty if nothing or no file).
pub fn stderr_text(dir: &Path, label: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{label}.stderr"))).unwrap_or_default()
}
