//! `engram-bench report`: the statistics of the benchmark scripts in `tools/`. A script
//! starts the servers, runs engram-bench (and redis-benchmark) in its rounds and leaves
//! every raw result in a work directory: engram-bench's `--json`, the tools' output, and
//! facts files of raw `/proc` lines and clock readings. Everything computed from them,
//! medians, ratios, CPU and memory figures, the table and the JSON report, is here.
//!
//! - [`compare`]: `tools/compare.sh`, Engram against Redis and the loopback floor.
//! - [`calibrate`]: `tools/calibrate.sh`, engram-bench against redis-benchmark.
//! - [`rebalance`]: `tools/cluster-bench.sh`, a live rebalance under load.
//! - [`figures`]: medians, per-round ratios and their spread, CPU and memory arithmetic.
//! - [`facts`]: the facts files and the raw lines in them.
//! - [`named`]: a JSON object that keeps the order of its members.
//! - [`error`]: the error enum.
//! - `work_dir` (tests only): a scratch work directory.

pub mod calibrate;
pub mod compare;
pub mod error;
pub mod facts;
pub mod figures;
pub mod named;
pub mod rebalance;
#[cfg(test)]
mod work_dir;

use std::path::Path;

use serde::Serialize;

use crate::bench::cli::ReportCommand;
use crate::bench::report::error::ReportError;

/// Prints the report of `command` to stdout (notes to stderr) and writes its JSON.
pub fn run(command: &ReportCommand) -> Result<(), ReportError> {
    let mut stdout = std::io::stdout().lock();
    let stdout_error = |source| ReportError::Write {
        path: "stdout".into(),
        source,
    };
    match command {
        ReportCommand::Compare { dir, json } => {
            let inputs = compare::input::read(dir)?;
            let report = compare::report(&inputs)?;
            compare::table::write(&mut stdout, &report, &inputs.settings, &inputs.machine).map_err(stdout_error)?;
            write_json(json.as_deref(), &report)
        }
        ReportCommand::Calibrate { dir, json } => {
            let inputs = calibrate::input::read(dir)?;
            for note in &inputs.notes {
                eprintln!("engram-bench report: {note}");
            }
            let report = calibrate::report(&inputs)?;
            calibrate::table::write(&mut stdout, &report, &inputs.settings).map_err(stdout_error)?;
            for (shape, summary) in report.shapes.iter() {
                if !summary.engram_bench_counts_match_server {
                    eprintln!(
                        "engram-bench report: {shape}: redis-server counted a different number of commands than engram-bench reported (see server_commands and reported_requests in the JSON)"
                    );
                }
            }
            write_json(json.as_deref(), &report)
        }
        ReportCommand::Rebalance { dir } => rebalance::write(&mut stdout, &rebalance::read(dir)?),
    }
}

fn write_json(path: Option<&Path>, report: &impl Serialize) -> Result<(), ReportError> {
    let Some(path) = path else {
        return Ok(());
    };
    let write_error = |source| ReportError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut text = serde_json::to_string_pretty(report).map_err(|source| write_error(source.into()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(write_error)
}
