use clap::Parser;
use engram_server::config::{Config, LogFormat};
use engram_server::error::ServerError;

/// The shell's exit code for a process ended by an interrupt.
const EXIT_INTERRUPTED: i32 = 130;

fn main() {
    let config = Config::parse();
    init_logging(config.log_format);
    match engram_server::node::run(config) {
        // Told to stop while it started, it stopped: what a signal asks for.
        Ok(()) | Err(ServerError::StoppedBeforeServing) => {}
        // The signal thread has logged why; the shards are not waited for.
        Err(ServerError::Interrupted) => std::process::exit(EXIT_INTERRUPTED),
        Err(error) => {
            eprintln!("engramd: {error}");
            std::process::exit(1);
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files or `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
