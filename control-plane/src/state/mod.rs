//! Where the control plane's state (the encoded `Membership`) lives between runs, and
//! what a failed write means: a file in a data directory ([`file`], one process) or a key
//! in etcd ([`etcd`], several processes of which the elected leader writes); and how each
//! etcd endpoint answers ([`etcd_health`]).
//!
//! Whatever the store, the controller applies a change to a copy of its state, saves the
//! copy, and only then makes it current; a save that did not take leaves memory as the
//! store has it, and one whose outcome is unknown stops the process acting on it (the
//! file backend halts, the etcd backend steps down and re-reads as the next leader).

pub mod etcd;
pub mod etcd_health;
pub mod file;

use std::path::PathBuf;

pub use etcd::{EtcdTerm, EtcdWriter, Keys};
pub use etcd_health::EtcdHealth;
pub use file::StateFile;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("another engram-control is using {path} (its lock file is held)")]
    DataDirInUse { path: PathBuf },
    #[error("cannot use etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
}

/// Why a save did not take effect for certain.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("state not written to {path}: {source}; the previous state stays in force")]
    NotWritten { path: PathBuf, source: std::io::Error },
    #[error(
        "state file {path} renamed but its directory not synced: {source}; \
         which state the next start reads is unknown, so this process stops"
    )]
    Unsynced { path: PathBuf, source: std::io::Error },
    #[error(
        "state of {bytes} bytes not written to etcd: over state_bytes_max ({limit}); the previous state stays in force"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "etcd refused the write of {key}: this process no longer holds the leader key, or another \
         write came first; the previous state stays in force and this process steps down"
    )]
    Refused { key: String },
    #[error("the write of {key} to etcd has an unknown outcome ({reason}); this process steps down and re-reads")]
    Unknown { key: String, reason: String },
}

impl SaveError {
    /// Whether the store may hold a state other than the one this process has in
    /// memory, or another process may be writing it: the process must stop acting on
    /// its copy.
    pub fn deposes(&self) -> bool {
        matches!(self, SaveError::Refused { .. } | SaveError::Unknown { .. })
    }
}

/// The store this process writes its state to while it leads.
pub enum StateStore {
    File(StateFile),
    Etcd(EtcdTerm),
}

impl StateStore {
    pub fn save(&mut self, bytes: &[u8]) -> Result<(), SaveError> {
        match self {
            StateStore::File(file) => file.save(bytes),
            StateStore::Etcd(term) => term.save(bytes),
        }
    }

    /// Where the state is, for messages.
    pub fn describe(&self) -> String {
        match self {
            StateStore::File(file) => file.path().display().to_string(),
            StateStore::Etcd(term) => format!("etcd key {}", term.keys().state),
        }
    }
}
