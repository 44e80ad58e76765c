//! The state in etcd (`--etcd`): the encoded `Membership` under `{prefix}/state`, written
//! only by the leader (`{prefix}/leader`, see [`crate::leadership`]).
//!
//! Every save is one etcd transaction that puts the state only if (a) the state key's
//! mod revision is the one this process last read or wrote, and (b) the leader key's
//! create revision is the one this process created it with. A deposed leader (its lease
//! lapsed, another process holds the key) or one whose copy is stale is refused by etcd
//! itself, whatever it believes; the refusal is [`SaveError::Refused`] and the controller
//! steps down. A write that gets no answer in time may or may not have been applied:
//! [`SaveError::Unknown`], handled the same way (the next leader, maybe this process
//! again, reads what etcd holds).
//!
//! The controller saves under its lock, synchronously, like the file backend. The writes
//! therefore go through a thread of their own with its own runtime ([`EtcdWriter`]), so a
//! save never waits for a tokio worker that is itself waiting for the lock.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnResponse};

use super::{SaveError, StateError};

/// The key prefix when `--etcd-prefix` is not given.
pub const ETCD_PREFIX_DEFAULT: &str = "/engram/default";
/// How long a state write may take before its outcome counts as unknown.
pub const SAVE_TIMEOUT_MS: u64 = 2_000;
/// Largest state written to etcd: below etcd's default request limit (1.5 MiB), with room
/// for the transaction around it.
pub const STATE_BYTES_MAX: usize = 1_400 * 1024;
/// Writes queued for the writer thread at most; the controller saves one at a time
/// under its lock, so one is all there ever is.
const WRITES_QUEUED_MAX: usize = 1;

/// The keys of one cluster's control plane under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The encoded `Membership`.
    pub state: String,
    /// The leader's `address id`, under its lease.
    pub leader: String,
    /// The credentials file's text, with `--credentials-etcd` (written by operators,
    /// never by the control plane).
    pub credentials: String,
}

impl Keys {
    pub fn under(prefix: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/');
        Keys {
            state: format!("{prefix}/state"),
            leader: format!("{prefix}/leader"),
            credentials: format!("{prefix}/credentials"),
        }
    }
}

struct Write {
    txn: Txn,
    answer: mpsc::SyncSender<Result<TxnResponse, String>>,
}

/// A handle on the thread that performs state writes (cheap to clone).
#[derive(Clone)]
pub struct EtcdWriter {
    writes: mpsc::SyncSender<Write>,
}

impl EtcdWriter {
    /// Starts the writer thread, connected to `endpoints` (connections are made as
    /// needed: etcd may be down now).
    pub fn start(endpoints: &[String]) -> Result<EtcdWriter, StateError> {
        let failed = |reason: String| StateError::Etcd {
            endpoints: endpoints.join(","),
            reason,
        };
        let (writes, queue) = mpsc::sync_channel::<Write>(WRITES_QUEUED_MAX);
        let (started, start) = mpsc::sync_channel::<Result<(), String>>(1);
        let endpoints = endpoints.to_vec();
        std::thread::Builder::new()
            .name("etcd-writer".into())
            .spawn(move || write_all(&endpoints, &queue, &started))
            .map_err(|error| failed(format!("cannot start the writer thread: {error}")))?;
        match start.recv() {
            Ok(Ok(())) => Ok(EtcdWriter { writes }),
            Ok(Err(reason)) => Err(failed(reason)),
            Err(_) => Err(failed("the writer thread ended at its start".into())),
        }
    }

    /// Runs `txn`, waiting at most `timeout`; `Err` says why no answer came.
    fn run(&self, txn: Txn, timeout: Duration) -> Result<Result<TxnResponse, String>, String> {
        let (answer, receiver) = mpsc::sync_channel(1);
        self.writes
            .try_send(Write { txn, answer })
            .map_err(|_| "the writer is busy with an earlier write".to_string())?;
        match receiver.recv_timeout(timeout) {
            Ok(result) => Ok(result),
            Err(RecvTimeoutError::Timeout) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Err(RecvTimeoutError::Disconnected) => Err("the writer thread is gone".to_string()),
        }
    }
}

/// The writer thread: its own runtime and client, one write at a time.
fn write_all(endpoints: &[String], queue: &mpsc::Receiver<Write>, started: &mpsc::SyncSender<Result<(), String>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(format!("cannot start the writer's runtime: {error}")));
            return;
        }
    };
    let client = match runtime.block_on(Client::connect(endpoints, None)) {
        Ok(client) => client,
        Err(error) => {
            let _ = started.send(Err(error.to_string()));
            return;
        }
    };
    let _ = started.send(Ok(()));
    for write in queue {
        let mut client = client.clone();
        // Bounded, so a write to an unreachable etcd does not hold up the next one for
        // ever; the saver gave up after SAVE_TIMEOUT_MS already.
        let limit = Duration::from_millis(2 * SAVE_TIMEOUT_MS);
        let result = match runtime.block_on(async { tokio::time::timeout(limit, client.txn(write.txn)).await }) {
            Ok(answer) => answer.map_err(|error| error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        };
        // The saver may have given up waiting: its outcome is unknown to it.
        let _ = write.answer.send(result);
    }
}

/// One leader's term: what its saves are conditioned on.
pub struct EtcdTerm {
    writer: EtcdWriter,
    keys: Keys,
    /// Mod revision of the state key as this process last read or wrote it (0: absent).
    state_revision: i64,
    /// Create revision of the leader key this process put.
    key_revision: i64,
}

impl EtcdTerm {
    /// A term that began when this process created the leader key at `key_revision`,
    /// and then read the state key at `state_revision`.
    pub fn new(writer: EtcdWriter, keys: Keys, key_revision: i64, state_revision: i64) -> EtcdTerm {
        EtcdTerm {
            writer,
            keys,
            state_revision,
            key_revision,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn key_revision(&self) -> i64 {
        self.key_revision
    }

    /// The conditional write of `bytes` (see the module documentation).
    pub fn transaction(&self, bytes: &[u8]) -> Txn {
        Txn::new()
            .when([
                Compare::mod_revision(self.keys.state.as_str(), CompareOp::Equal, self.state_revision),
                Compare::create_revision(self.keys.leader.as_str(), CompareOp::Equal, self.key_revision),
            ])
            .and_then([TxnOp::put(self.keys.state.as_str(), bytes, None)])
    }

    /// The conditional write of `bytes`. An error answer (a connection etcd's restart
    /// broke, say) is followed by one more try of the same transaction within the save's
    /// time: should the first have been applied, the state's revision moved and the
    /// second is refused, so a second try that takes proves the first did not.
    pub fn save(&mut self, bytes: &[u8]) -> Result<(), SaveError> {
        if bytes.len() > STATE_BYTES_MAX {
            return Err(SaveError::TooLarge {
                bytes: bytes.len(),
                limit: STATE_BYTES_MAX,
            });
        }
        let key = self.keys.state.clone();
        let deadline = Instant::now() + Duration::from_millis(SAVE_TIMEOUT_MS);
        let first = self
            .writer
            .run(self.transaction(bytes), Duration::from_millis(SAVE_TIMEOUT_MS));
        let answer = match first {
            Ok(Err(reason)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.writer.run(self.transaction(bytes), left) {
                    Ok(Ok(response)) if response.succeeded() => Ok(Ok(response)),
                    // Refused or failed again: whether the first try took is unknown.
                    _ => Err(reason),
                }
            }
            answer => answer,
        };
        match answer {
            Ok(Ok(response)) if response.succeeded() => {
                let revision = response.header().map_or(0, |header| header.revision());
                self.state_revision = revision;
                Ok(())
            }
            Ok(Ok(_)) => Err(SaveError::Refused { key }),
            Ok(Err(reason)) | Err(reason) => Err(SaveError::Unknown { key, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix_whether_or_not_it_ends_in_a_slash() {
        let keys = Keys::under("/engram/blue/");
        assert_eq!(keys.state, "/engram/blue/state");
        assert_eq!(keys.leader, "/engram/blue/leader");
        assert_eq!(Keys::under("/engram/blue"), keys);
    }
}
