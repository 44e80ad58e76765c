//! The `engram` command line.

use clap::{Parser, Subcommand};

use crate::failure::EXIT_CODES_HELP;

/// Engram command-line client.
#[derive(Debug, Parser)]
#[command(name = "engram", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Node to contact (its front port, or any shard port).
    #[arg(
        long,
        global = true,
        env = "ENGRAM_ADDR",
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT"
    )]
    pub addr: String,

    /// Namespace (tenant) of the keys.
    #[arg(long, global = true, env = "ENGRAM_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Timeout of each call, retries included, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "ENGRAM_TIMEOUT_MS",
        default_value_t = 5_000,
        value_name = "MS"
    )]
    pub timeout_ms: u64,

    /// Credentials sent in the handshake (empty: none).
    #[arg(
        long,
        global = true,
        env = "ENGRAM_CREDENTIALS",
        default_value = "",
        hide_env_values = true
    )]
    pub credentials: String,

    /// Send every request to --addr instead of routing keys to their shard's port.
    #[arg(long, global = true, env = "ENGRAM_FRONT_ONLY")]
    pub front_only: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Round trip to the node; prints PONG and the round-trip time.
    Ping,
    /// Writes a value; prints its new version.
    Set {
        key: String,
        value: String,
        /// Expire the key this many milliseconds after the write.
        #[arg(long, env = "ENGRAM_TTL_MS", value_name = "MS")]
        ttl_ms: Option<u64>,
        /// Write only if the key does not exist (exit code 2 otherwise).
        #[arg(long, env = "ENGRAM_IF_ABSENT", conflicts_with = "if_version")]
        if_absent: bool,
        /// Write only if the key is at this version (exit code 2 otherwise).
        #[arg(long, env = "ENGRAM_IF_VERSION", value_name = "VERSION")]
        if_version: Option<u64>,
    },
    /// Prints a value followed by a newline; exit code 1 when the key does not exist.
    Get { key: String },
    /// Deletes a key; prints 1 if it existed, 0 otherwise.
    Del { key: String },
    /// Adds DELTA (default 1, may be negative) to a counter; prints the new value.
    #[command(allow_negative_numbers = true)]
    Incr {
        key: String,
        #[arg(default_value_t = 1)]
        delta: i64,
    },
    /// Counter operations.
    #[command(subcommand)]
    Counter(CounterCommand),
    /// Node and per-shard statistics.
    Info {
        /// Print JSON instead of a table.
        #[arg(long, env = "ENGRAM_JSON")]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CounterCommand {
    /// Prints the counter's value (0 when it does not exist).
    Get { key: String },
    /// Sets the counter; prints the value.
    #[command(allow_negative_numbers = true)]
    Set { key: String, value: i64 },
    /// Sets the counter to NEW if it holds EXPECTED; prints the current value, exit code
    /// 2 when it was not swapped.
    #[command(allow_negative_numbers = true)]
    Cas { key: String, expected: i64, new: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("engram").chain(arguments.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_numbers_are_values_not_flags() {
        let cli = parse(&["incr", "jobs", "-5"]).unwrap();
        assert!(matches!(cli.command, Command::Incr { delta: -5, .. }));
        let cli = parse(&["counter", "cas", "k", "-1", "-2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Counter(CounterCommand::Cas {
                expected: -1,
                new: -2,
                ..
            })
        ));
        let cli = parse(&["incr", "jobs"]).unwrap();
        assert!(matches!(cli.command, Command::Incr { delta: 1, .. }));
    }

    #[test]
    fn global_flags_go_anywhere_and_conditions_conflict() {
        let cli = parse(&["get", "k", "--addr", "10.0.0.1:7400", "--timeout-ms", "10"]).unwrap();
        assert_eq!((cli.addr.as_str(), cli.timeout_ms), ("10.0.0.1:7400", 10));
        assert!(parse(&["set", "k", "v", "--if-absent", "--if-version", "3"]).is_err());
        let cli = parse(&["set", "k", "v", "--ttl-ms", "100", "--if-version", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Set {
                ttl_ms: Some(100),
                if_version: Some(3),
                if_absent: false,
                ..
            }
        ));
    }
}
