//! `engram`: the command-line client. Parses, runs one command on a current-thread
//! runtime (a CLI makes one call at a time), reports failures as `engram: <message>`.

use std::process::ExitCode;

use clap::Parser;
use engram_tools::cli::Cli;
use engram_tools::commands::run;
use engram_tools::failure::{Failure, EXIT_CODE_ERROR};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return report(Failure::Runtime(error)),
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    eprintln!("engram: {failure}");
    ExitCode::from(failure.exit_code())
}
