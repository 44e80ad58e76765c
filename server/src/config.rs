//! Command-line and environment configuration of `engramd`. Every flag is also settable
//! through an `ENGRAM_*` environment variable.

use std::net::IpAddr;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "engramd",
    version,
    about = "Engram data node: thread-per-core shards on io_uring"
)]
pub struct Config {
    /// Shards to run, one per core (default: every core of the machine).
    #[arg(long, env = "ENGRAM_CORES")]
    pub cores: Option<usize>,

    /// Address to listen on.
    #[arg(long, env = "ENGRAM_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Front port, which forwards every key to its shard; shard N listens on port+1+N.
    /// 0 picks free ports for all of them (printed on the ready line).
    #[arg(long, env = "ENGRAM_PORT", default_value_t = 7400)]
    pub port: u16,

    /// Memory the whole node may use for data (e.g. 512MiB, 4GiB, or bytes), split
    /// evenly across shards. Over it, writes get OutOfMemory; reads and deletes work.
    #[arg(long, env = "ENGRAM_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,

    /// Token clients must present in the handshake (default: no authentication).
    #[arg(long, env = "ENGRAM_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Node id reported to clients (default: random).
    #[arg(long, env = "ENGRAM_NODE_ID")]
    pub node_id: Option<u64>,

    /// Keep an idle core polling this many microseconds before it parks, and each
    /// connection polling its socket as long after each answer: lower latency for a
    /// busy core's worth of CPU while idle. 0 (default) parks at once.
    #[arg(long, env = "ENGRAM_SPIN_US", default_value_t = 0)]
    pub spin_us: u64,

    /// Port serving Prometheus metrics at GET /metrics, on the --bind address (0: off).
    #[arg(long, env = "ENGRAM_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,

    /// Join the cluster run by the engram-control at this address (default: run alone,
    /// serving every slot, with the embedded control plane).
    #[arg(long, env = "ENGRAM_CONTROL")]
    pub control: Option<String>,
    /// Host clients and other nodes reach this node at, when it differs from --bind
    /// (required in a cluster when --bind is 0.0.0.0 or ::).
    #[arg(long, env = "ENGRAM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "ENGRAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parses `123`, `64KiB`, `512MiB`, `4GiB`, `1TiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512MiB"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB)")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("3mb"), Ok(3_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5XB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
