//! The `engram-bench` command line: every flag of the load and of the echo server is also
//! an `ENGRAM_BENCH_*` variable; `report`'s, which the scripts in `tools/` pass, are not.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::bench::keys::KeyPattern;
use crate::bench::workload::{Ratio, Workload};
use crate::tls_args::TlsArgs;

/// Most connections one run opens; past this the tool, not the server, is measured.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Deepest pipeline (requests in flight per connection); bounds every per-connection
/// buffer and the number of tasks per Engram connection.
pub const PIPELINE_DEPTH_MAX: usize = 1_024;
/// Largest value written; RESP and Engram both take more, but a load generator that
/// allocates per-connection buffers of this size times the pipeline must stop somewhere.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most tokio worker threads.
pub const THREADS_MAX: usize = 256;
/// Run length when neither `--duration` nor `--requests` is given.
pub const DURATION_SECONDS_DEFAULT: f64 = 10.0;

/// Load generator for Engram, Redis and a raw TCP echo (the latency floor): one load
/// shape, measured the same way against each.
#[derive(Debug, Parser)]
#[command(
    name = "engram-bench",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct BenchCli {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A TCP echo server (one task per connection): the target of `tcp-echo://`, for
    /// measuring the loopback round-trip floor. Prints `echo-server listening on ADDR`.
    EchoServer {
        #[arg(
            long,
            env = "ENGRAM_BENCH_LISTEN",
            default_value = "127.0.0.1:0",
            value_name = "HOST:PORT"
        )]
        listen: String,
        /// After each echo, poll the connection this many microseconds (non-blocking
        /// reads) before waiting for readiness: the floor of a spinning server.
        #[arg(long, env = "ENGRAM_BENCH_SPIN_US", default_value_t = 0, value_name = "US")]
        spin_us: u64,
    },
    /// The statistics of a run of a script in tools/ (medians over its rounds, per-round
    /// ratios, CPU and memory figures), from the raw results it left in its work directory.
    #[command(subcommand)]
    Report(ReportCommand),
}

/// Which script's work directory to report on.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// tools/compare.sh: prints the table of Engram against Redis and the loopback floor.
    Compare {
        /// The script's work directory.
        dir: PathBuf,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// tools/calibrate.sh: prints the table of engram-bench against redis-benchmark.
    Calibrate {
        /// The script's work directory.
        dir: PathBuf,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// tools/cluster-bench.sh: prints the rebalance's speed and the latency around it.
    Rebalance {
        /// The script's output directory.
        dir: PathBuf,
    },
}

/// The load to generate.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// What to load: engram://HOST:PORT, redis://HOST:PORT or tcp-echo://HOST:PORT.
    #[arg(long, env = "ENGRAM_BENCH_TARGET", required = true, value_name = "URL")]
    pub target: Option<Target>,

    /// Operation mix. lock and barrier (engram:// only) also report each operation
    /// (lock_acquire and lock_release, barrier_wait) with its own latency percentiles.
    #[arg(long, env = "ENGRAM_BENCH_WORKLOAD", value_enum, default_value_t = Workload::Get)]
    pub workload: Workload,

    /// SET:GET ratio of the mixed workload (as memtier's --ratio).
    #[arg(long, env = "ENGRAM_BENCH_RATIO", default_value = "1:10", value_name = "SET:GET")]
    pub ratio: Ratio,

    /// Size of the key space: keys are `key:0` .. `key:N-1` (`counter:I` for incr,
    /// locks `lock:I` for lock: 1 makes every task contend for one lock).
    #[arg(long, env = "ENGRAM_BENCH_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// How each request picks its key.
    #[arg(long, env = "ENGRAM_BENCH_KEY_PATTERN", value_enum, default_value_t = KeyPattern::Uniform)]
    pub key_pattern: KeyPattern,

    /// Size of every written value.
    #[arg(long, env = "ENGRAM_BENCH_VALUE_BYTES", default_value_t = 32, value_name = "N")]
    pub value_bytes: usize,

    /// Connections (for Engram: clients, each with one connection per shard).
    #[arg(long, env = "ENGRAM_BENCH_CONNECTIONS", default_value_t = 50, value_name = "N")]
    pub connections: usize,

    /// Requests in flight per connection.
    #[arg(long, env = "ENGRAM_BENCH_PIPELINE", default_value_t = 1, value_name = "N")]
    pub pipeline: usize,

    /// Tokio worker threads of the load (1: a current-thread runtime, the cheapest when
    /// the load is pinned to one core).
    #[arg(long, env = "ENGRAM_BENCH_THREADS", default_value_t = 1, value_name = "N")]
    pub threads: usize,

    /// Measured run length in seconds (default 10 unless --requests is given).
    #[arg(
        long,
        env = "ENGRAM_BENCH_DURATION",
        value_name = "SECS",
        conflicts_with = "requests"
    )]
    pub duration: Option<f64>,

    /// Measured requests in total, spread evenly over the connections (for barrier,
    /// rounded up to whole generations).
    #[arg(long, env = "ENGRAM_BENCH_REQUESTS", value_name = "N")]
    pub requests: Option<u64>,

    /// Seconds of load before measuring starts; excluded from every figure.
    #[arg(long, env = "ENGRAM_BENCH_WARMUP", default_value_t = 0.0, value_name = "SECS")]
    pub warmup: f64,

    /// Open loop at this many requests per second in total: requests go out on a fixed
    /// timeline and latency counts from the intended send time, so a stall is charged
    /// to every request it delayed (no coordinated omission). For lock it paces the
    /// acquires (each release follows its acquire at once); barrier refuses it.
    #[arg(long, env = "ENGRAM_BENCH_RATE", value_name = "OPS")]
    pub rate: Option<f64>,

    /// Write every key once before measuring, so GETs hit (get and mixed only; the
    /// other workloads ignore it).
    #[arg(long, env = "ENGRAM_BENCH_PREFILL")]
    pub prefill: bool,

    /// engram:// and tcp-echo://: each request polls for its answer this many
    /// microseconds before parking (for Engram the client's `ClientBuilder::spin`), for
    /// the lowest latency at the price of a busy load core. Pair with `engramd --spin-us`.
    #[arg(long, env = "ENGRAM_BENCH_CLIENT_SPIN_US", default_value_t = 0, value_name = "US")]
    pub client_spin_us: u64,

    /// Engram only: send every request to the target address (a node's front port,
    /// which forwards each to its owner) instead of routing it to its shard's port.
    #[arg(long, env = "ENGRAM_BENCH_FRONT_ONLY")]
    pub front_only: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Also write the results as JSON to this file.
    #[arg(long, env = "ENGRAM_BENCH_JSON", value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Seed of the key choices, to replay a run (default: random, printed in the JSON).
    #[arg(long, env = "ENGRAM_BENCH_SEED")]
    pub seed: Option<u64>,
}

/// The system under load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `engram://`, or `engrams://` over TLS (with --tls-ca).
    Engram {
        address: String,
        tls: bool,
    },
    Redis {
        address: String,
    },
    TcpEcho {
        address: String,
    },
}

impl Target {
    pub fn address(&self) -> &str {
        match self {
            Target::Engram { address, .. } | Target::Redis { address } | Target::TcpEcho { address } => address,
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Engram { tls: false, .. } => "engram",
            Target::Engram { tls: true, .. } => "engrams",
            Target::Redis { .. } => "redis",
            Target::TcpEcho { .. } => "tcp-echo",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}://{}", self.scheme(), self.address())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        let (scheme, address) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not SCHEME://HOST:PORT"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{address:?} is not HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{address:?} is not HOST:PORT"));
        }
        let address = address.to_owned();
        match scheme {
            "engram" => Ok(Target::Engram { address, tls: false }),
            "engrams" => Ok(Target::Engram { address, tls: true }),
            "redis" => Ok(Target::Redis { address }),
            "tcp-echo" => Ok(Target::TcpEcho { address }),
            other => Err(format!(
                "unknown scheme {other:?}: use engram, engrams (TLS), redis or tcp-echo"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    fn parse(arguments: &[&str]) -> Result<BenchCli, clap::Error> {
        BenchCli::try_parse_from(std::iter::once("engram-bench").chain(arguments.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        BenchCli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_spec() {
        let cli = parse(&["--target", "redis://127.0.0.1:6379"]).unwrap();
        let load = cli.load;
        assert_eq!(
            load.target,
            Some(Target::Redis {
                address: "127.0.0.1:6379".into()
            })
        );
        assert_eq!(load.workload, Workload::Get);
        assert_eq!(load.ratio, Ratio { sets: 1, gets: 10 });
        assert_eq!(
            (load.keys, load.value_bytes, load.connections, load.pipeline),
            (100_000, 32, 50, 1)
        );
        assert_eq!(load.key_pattern, KeyPattern::Uniform);
        assert_eq!((load.duration, load.requests, load.rate), (None, None, None));
        assert!(!load.prefill);
        assert!(cli.command.is_none());
    }

    #[test]
    fn every_flag_parses() {
        let cli = parse(&[
            "--target",
            "engram://10.0.0.1:7400",
            "--workload",
            "mixed",
            "--ratio",
            "2:5",
            "--keys",
            "10",
            "--key-pattern",
            "gaussian",
            "--value-bytes",
            "100",
            "--connections",
            "4",
            "--pipeline",
            "16",
            "--threads",
            "2",
            "--requests",
            "1000",
            "--warmup",
            "0.5",
            "--rate",
            "5000",
            "--prefill",
            "--json",
            "out.json",
            "--seed",
            "7",
            "--client-spin-us",
            "20",
        ])
        .unwrap();
        let load = cli.load;
        assert_eq!(load.target.unwrap().to_string(), "engram://10.0.0.1:7400");
        let tls = parse(&["--target", "engrams://10.0.0.1:7400", "--tls-ca", "ca.pem"]).unwrap();
        assert_eq!(tls.load.target.unwrap().to_string(), "engrams://10.0.0.1:7400");
        assert_eq!(tls.load.tls.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(load.workload, Workload::Mixed);
        assert_eq!(load.ratio, Ratio { sets: 2, gets: 5 });
        assert_eq!(load.key_pattern, KeyPattern::Gaussian);
        assert_eq!(
            (load.keys, load.value_bytes, load.connections, load.pipeline),
            (10, 100, 4, 16)
        );
        assert_eq!((load.threads, load.requests, load.warmup), (2, Some(1000), 0.5));
        assert_eq!((load.rate, load.seed, load.client_spin_us), (Some(5000.0), Some(7), 20));
        assert!(load.prefill);
        assert_eq!(load.json.unwrap(), PathBuf::from("out.json"));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse(&[]).is_err(), "a target is required");
        assert!(parse(&["--target", "http://h:1"]).is_err());
        assert!(parse(&["--target", "redis://nohost"]).is_err());
        assert!(parse(&["--target", "redis://:1"]).is_err());
        assert!(parse(&["--target", "redis://h:99999"]).is_err());
        assert!(parse(&["--target", "redis://h:1", "--keys", "0"]).is_err());
        assert!(parse(&["--target", "redis://h:1", "--ratio", "1-10"]).is_err());
        assert!(parse(&["--target", "redis://h:1", "--workload", "scan"]).is_err());
        assert!(parse(&["--target", "redis://h:1", "--duration", "1", "--requests", "5"]).is_err());
    }

    #[test]
    fn coordination_workloads_parse() {
        let lock = parse(&["--target", "engram://h:1", "--workload", "lock", "--keys", "1"]).unwrap();
        assert_eq!((lock.load.workload, lock.load.keys), (Workload::Lock, 1));
        let barrier = parse(&["--target", "engram://h:1", "--workload", "barrier"]).unwrap();
        assert_eq!(barrier.load.workload, Workload::Barrier);
    }

    #[test]
    fn report_needs_no_target() {
        let cli = parse(&["report", "compare", "/tmp/w", "--json", "out.json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(BenchCommand::Report(ReportCommand::Compare { dir, json: Some(json) }))
                if dir == Path::new("/tmp/w") && json == Path::new("out.json")
        ));
        let cli = parse(&["report", "rebalance", "/tmp/w"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(BenchCommand::Report(ReportCommand::Rebalance { .. }))
        ));
        assert!(parse(&["report", "calibrate"]).is_err(), "the directory is required");
        assert!(parse(&["report", "histogram", "/tmp/w"]).is_err());
    }

    #[test]
    fn echo_server_needs_no_target() {
        let cli = parse(&["echo-server", "--listen", "127.0.0.1:9000"]).unwrap();
        assert!(
            matches!(cli.command, Some(BenchCommand::EchoServer { listen, spin_us: 0 }) if listen == "127.0.0.1:9000")
        );
    }
}
