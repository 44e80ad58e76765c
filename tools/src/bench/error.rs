//! The one error enum of `engram-bench`: every way a run can fail, with messages that
//! name the flag or the limit involved.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Flags that parse but do not make a run (e.g. `--pipeline` with `tcp-echo://`).
    #[error("{0}")]
    Usage(String),
    /// A workload of Engram's coordination objects against a target that has none.
    #[error("--workload {workload} needs an engram:// target: {target} has no locks or barriers")]
    EngramOnly { workload: &'static str, target: String },
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    /// The connection broke mid-run; a benchmark with a dead connection has no meaning,
    /// so this ends the run rather than being counted.
    #[error("connection to {address} failed: {source}")]
    Connection { address: String, source: io::Error },
    #[error("connection to {address} was closed by the server")]
    Closed { address: String },
    /// The server sent bytes that are not valid RESP (or a reply type the tool does
    /// not send commands for).
    #[error("protocol error from {address}: {reason}")]
    Protocol { address: String, reason: String },
    #[error("engram client: {0}")]
    Engram(#[from] engram_client::Error),
    #[error("cannot write {path}: {source}")]
    Output { path: String, source: io::Error },
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot create the open-loop timer: {0}")]
    Timer(io::Error),
    #[error("echo server: {0}")]
    EchoServer(io::Error),
    #[error("a load task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Report(#[from] crate::bench::report::error::ReportError),
}
