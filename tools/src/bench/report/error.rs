//! The error enum of `engram-bench report`: every way a script's work directory can fail
//! to make a report, naming the file and the fact involved.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not the JSON expected: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("{path} line {line} is not KEY=VALUE")]
    Line { path: String, line: usize },
    #[error("{path} has no {key}= line")]
    NoFact { path: String, key: String },
    #[error("{path}: {key}={value:?} is not {expected}")]
    BadFact {
        path: String,
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A counter read after a run is below the one read before it: the two lines are
    /// not of the same process, or not in the order the script should write them.
    #[error("{path}: {after} is below {before}")]
    Backwards {
        path: String,
        before: String,
        after: String,
    },
    /// A run the report needs is not in the work directory: a round or a target the
    /// script did not run, or a file it did not write.
    #[error("missing run: {run} ({reason})")]
    MissingRun { run: String, reason: String },
    #[error("the memory run of {server} stored no keys, so bytes per key have no meaning")]
    NoKeys { server: String },
    #[error("{path} lists no nodes")]
    NoNodes { path: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
}
