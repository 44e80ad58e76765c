//! `engram-bench`: parses the flags, builds the runtime the load runs on (`--threads`),
//! runs the load or the echo server, prints the summary (and writes `--json`); or prints
//! the report of a benchmark script's work directory.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use engram_tools::bench::cli::{BenchCli, BenchCommand};
use engram_tools::bench::echo;
use engram_tools::bench::error::BenchError;
use engram_tools::bench::report;
use engram_tools::bench::runner;
use engram_tools::bench::settings::Settings;
use engram_tools::bench::timer::minimize_timer_slack;

/// Exit code of a failed run (bad flags included).
const EXIT_CODE_ERROR: u8 = 1;

fn main() -> ExitCode {
    let cli = match BenchCli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version also arrive here, and are successes.
            return if error.use_stderr() {
                ExitCode::from(EXIT_CODE_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engram-bench: {error}");
            ExitCode::from(EXIT_CODE_ERROR)
        }
    }
}

fn run(cli: BenchCli) -> Result<(), BenchError> {
    match cli.command {
        Some(BenchCommand::EchoServer { listen, spin_us }) => {
            let runtime = runtime(1)?;
            return runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(BenchError::EchoServer)?;
                let address = listener.local_addr().map_err(BenchError::EchoServer)?;
                // Scripts that bind port 0 read the address from this line.
                println!("echo-server listening on {address}");
                let _ = std::io::stdout().flush();
                echo::serve_spinning(listener, std::time::Duration::from_micros(spin_us)).await
            });
        }
        Some(BenchCommand::Report(command)) => return Ok(report::run(&command)?),
        None => {}
    }
    let settings = Settings::new(cli.load)?;
    let runtime = runtime(settings.load.threads)?;
    let summary = runtime.block_on(runner::run(&settings))?;
    if let Some(path) = &settings.load.json {
        let output_error = |source| BenchError::Output {
            path: path.display().to_string(),
            source,
        };
        let mut text = serde_json::to_string_pretty(&summary)?;
        text.push('\n');
        std::fs::write(path, text).map_err(output_error)?;
    }
    let mut stdout = std::io::stdout().lock();
    summary.write_human(&mut stdout).map_err(|source| BenchError::Output {
        path: "stdout".into(),
        source,
    })?;
    Ok(())
}

/// One thread: a current-thread runtime, with no cross-thread wakeups, the cheapest for a
/// load pinned to one core. More: a multi-thread runtime with that many workers.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, BenchError> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    // The open-loop pacer's microsecond timers need it on every thread that runs tasks.
    minimize_timer_slack();
    builder
        .on_thread_start(minimize_timer_slack)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)
}
