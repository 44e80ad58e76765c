//! Command-line and environment configuration of `engramd`. Every flag is also settable
//! through an `ENGRAM_*` environment variable. [`NodeSettings`] is the part an
//! in-process node takes: the rest says which sockets to open and how to log.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};
use engram_proto::limits::{CREDENTIALS_BYTES_MAX, ZONE_BYTES_MAX};
use engram_proto::ControlAddresses;
use engram_tls::TlsFlags;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `engramd` is told. The flags that say which sockets to open and how to log
/// are the binary's; what the node does once it has its sockets is [`NodeSettings`], which
/// an in-process node (`node::start`) takes alone.
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

    #[command(flatten)]
    pub node: NodeSettings,

    /// Port of the Redis-protocol door (RESP2/RESP3, for redis-py, node-redis, redis-cli),
    /// on the --bind address; 0 picks a free one (printed on the ready line). Off unless
    /// given: it is a second way in, whose clients get no exactly-once retries.
    #[arg(long, env = "ENGRAM_RESP_PORT")]
    pub resp_port: Option<u16>,

    /// Port serving Prometheus metrics at GET /metrics, on the --bind address (0: off).
    #[arg(long, env = "ENGRAM_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,

    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "ENGRAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How a node runs, whatever sockets it was given. The default is a node alone, with
/// no memory limit and no authentication, that parks idle cores at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct NodeSettings {
    /// Memory the whole node may use for data (e.g. 512MiB, 4GiB, or bytes), split
    /// evenly across shards. Over it, writes get OutOfMemory; reads and deletes work.
    #[arg(long, env = "ENGRAM_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,

    /// One token every client must present in the handshake, with every right in every
    /// namespace (default: no authentication). For tenants and roles, --credentials-file.
    #[arg(long, env = "ENGRAM_AUTH_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub auth_token: Option<String>,

    /// Credentials file: per line a name, the SHA-256 of its token, its rights (read,
    /// write, coordinate, admin, node) and namespaces (`engram token` prints such a
    /// line). Read again on SIGHUP; open connections follow it at their next request.
    #[arg(
        long,
        env = "ENGRAM_CREDENTIALS_FILE",
        value_name = "FILE",
        conflicts_with = "auth_token"
    )]
    pub credentials_file: Option<PathBuf>,

    /// Token this node presents on its own links (its join and heartbeats, forwarding,
    /// migration, replication), of a credential with the node right; needed with
    /// --credentials-file and --control. With --control and neither --credentials-file
    /// nor --auth-token, the node admits by the control plane's credentials and follows
    /// their changes. (With --auth-token, links present that token.)
    #[arg(long, env = "ENGRAM_NODE_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub node_token: Option<String>,

    /// Token a scrape of --metrics-port must carry (`Authorization: Bearer TOKEN`);
    /// default: metrics answer anyone who reaches the port.
    #[arg(long, env = "ENGRAM_METRICS_TOKEN", hide_env_values = true, value_parser = engram_metrics_http::parse_token)]
    pub metrics_token: Option<String>,

    /// Most connections the node serves at once, on all its ports; past it a new one is
    /// refused with an error and closed (default: the descriptor limit, less
    /// DESCRIPTORS_RESERVED for listeners, links to other nodes and files).
    #[arg(long, env = "ENGRAM_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,

    /// How long a new connection has to complete its handshake (a native Hello, or a
    /// Redis AUTH when a token is set) before it is closed (default:
    /// HANDSHAKE_TIMEOUT_MS_DEFAULT, 10 s).
    #[arg(long, env = "ENGRAM_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,

    /// Close a connection that sent nothing for this long while none of its requests
    /// waits (a lock or barrier wait keeps it open); 0 or absent: never, as Redis's
    /// `timeout 0`. A client reconnects on its next call.
    #[arg(long, env = "ENGRAM_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Node id reported to clients (default: random).
    #[arg(long, env = "ENGRAM_NODE_ID")]
    pub node_id: Option<u64>,

    /// Keep an idle core polling this many microseconds before it parks, and each
    /// connection polling its socket as long after each answer: lower latency for a
    /// busy core's worth of CPU while idle. 0 (default) parks at once.
    #[arg(long, env = "ENGRAM_SPIN_US", default_value_t = 0)]
    pub spin_us: u64,

    /// Join the cluster run by engram-control at these addresses (`HOST:PORT`,
    /// comma-separated: every process of an etcd-backed control plane; the join and the
    /// heartbeats go to whichever leads). Default: run alone, serving every slot, with the
    /// embedded control plane.
    #[arg(long, env = "ENGRAM_CONTROL", value_name = "ADDRESSES", value_parser = ControlAddresses::parse)]
    pub control: Option<ControlAddresses>,
    /// Host clients and other nodes reach this node at, when it differs from --bind
    /// (required in a cluster when --bind is 0.0.0.0 or ::).
    #[arg(long, env = "ENGRAM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Failure domain this node runs in (a rack, an availability zone), told to the
    /// control plane when joining, which keeps a slot's backups in zones other than its
    /// owner's where it can. Default: none.
    #[arg(long, env = "ENGRAM_ZONE", value_name = "LABEL", value_parser = parse_zone)]
    pub zone: Option<String>,

    /// TLS on every port and link (off unless a certificate is given).
    #[command(flatten)]
    pub tls: TlsFlags,
}

impl NodeSettings {
    /// Whether the node admits by the control plane's credentials: it names a control
    /// plane and its own token, and neither a credentials file nor a shared token.
    pub fn takes_control_credentials(&self) -> bool {
        self.control.is_some()
            && self.node_token.is_some()
            && self.credentials_file.is_none()
            && self.auth_token.is_none()
    }

    /// What this node's own Hellos carry: --node-token, else the shared --auth-token.
    pub fn link_credentials(&self) -> Vec<u8> {
        self.node_token
            .as_ref()
            .or(self.auth_token.as_ref())
            .cloned()
            .unwrap_or_default()
            .into_bytes()
    }
}

/// Default of `--handshake-timeout-ms`: a client on a slow network completes a Hello
/// in far less, and a stranger holds its connection no longer.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Descriptors kept out of `--max-connections`'s default: listeners, links to other
/// nodes and the control plane, and files.
pub const DESCRIPTORS_RESERVED: u64 = 256;

/// Fewest connections the default allows, whatever the descriptor limit says.
pub const MAX_CONNECTIONS_DEFAULT_MIN: u64 = 64;

/// The default connection limit: the process's descriptor limit less the reserve.
pub fn default_max_connections() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, and nothing else.
    let descriptors = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    descriptors
        .saturating_sub(DESCRIPTORS_RESERVED)
        .max(MAX_CONNECTIONS_DEFAULT_MIN)
}

/// An auth token: at most `CREDENTIALS_BYTES_MAX` bytes, as a Hello may carry.
pub fn parse_token(text: &str) -> Result<String, String> {
    if text.len() > CREDENTIALS_BYTES_MAX {
        return Err(format!(
            "a token is at most credentials_bytes_max ({CREDENTIALS_BYTES_MAX}) bytes, not {}",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// A zone label: at most `ZONE_BYTES_MAX` bytes, refused at start rather than by the
/// control plane's join.
pub fn parse_zone(text: &str) -> Result<String, String> {
    if text.len() > ZONE_BYTES_MAX {
        return Err(format!(
            "a zone is at most zone_bytes_max ({ZONE_BYTES_MAX}) bytes, not {}",
            text.len()
        ));
    }
    Ok(text.to_string())
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
    fn node_settings_come_from_their_flags_and_default_to_no_flags() {
        let config = Config::try_parse_from(["engramd"]).expect("no flags");
        assert_eq!(config.node, NodeSettings::default());
        let config = Config::try_parse_from([
            "engramd",
            "--memory-limit",
            "1MiB",
            "--auth-token",
            "secret",
            "--node-id",
            "7",
            "--spin-us",
            "20",
            "--control",
            "10.0.0.1:7300,10.0.0.2:7300",
            "--advertise",
            "node-a",
            "--zone",
            "rack-7",
            "--max-connections",
            "500",
            "--handshake-timeout-ms",
            "3000",
            "--metrics-token",
            "scrape",
            "--idle-timeout-ms",
            "60000",
            "--tls-cert",
            "node.pem",
            "--tls-key",
            "node-key.pem",
            "--tls-client-ca",
            "clients-ca.pem",
            "--tls-ca",
            "peers-ca.pem",
        ])
        .expect("every node flag");
        assert_eq!(
            config.node,
            NodeSettings {
                memory_limit: Some(1 << 20),
                auth_token: Some("secret".into()),
                credentials_file: None,
                node_token: None,
                node_id: Some(7),
                spin_us: 20,
                control: Some(ControlAddresses::parse("10.0.0.1:7300,10.0.0.2:7300").unwrap()),
                advertise: Some("node-a".into()),
                zone: Some("rack-7".into()),
                max_connections: Some(500),
                handshake_timeout_ms: Some(3000),
                metrics_token: Some("scrape".into()),
                idle_timeout_ms: Some(60_000),
                tls: TlsFlags {
                    tls_cert: Some("node.pem".into()),
                    tls_key: Some("node-key.pem".into()),
                    tls_client_ca: Some("clients-ca.pem".into()),
                    tls_ca: Some("peers-ca.pem".into()),
                },
            }
        );
    }

    #[test]
    fn a_credentials_file_replaces_the_shared_token() {
        let config = Config::try_parse_from(["engramd", "--credentials-file", "creds", "--node-token", "n"]).unwrap();
        assert_eq!(config.node.credentials_file, Some(PathBuf::from("creds")));
        assert_eq!(config.node.link_credentials(), b"n");
        let both = ["engramd", "--credentials-file", "creds", "--auth-token", "t"];
        assert!(
            Config::try_parse_from(both).is_err(),
            "a file and a shared token at once"
        );
        let shared = Config::try_parse_from(["engramd", "--auth-token", "t"]).unwrap();
        assert_eq!(shared.node.link_credentials(), b"t", "links present the shared token");
    }

    #[test]
    fn a_certificate_needs_its_key_and_cas_need_a_certificate() {
        for flags in [
            &["engramd", "--tls-cert", "node.pem"][..],
            &["engramd", "--tls-key", "node-key.pem"],
            &["engramd", "--tls-client-ca", "clients-ca.pem"],
            &["engramd", "--tls-ca", "peers-ca.pem"],
        ] {
            let error = Config::try_parse_from(flags).unwrap_err();
            assert!(error.to_string().contains("required"), "{error}");
        }
    }

    #[test]
    fn a_token_longer_than_a_hello_carries_is_refused_at_start() {
        let long = "t".repeat(engram_proto::limits::CREDENTIALS_BYTES_MAX + 1);
        let error = Config::try_parse_from(["engramd", "--auth-token", &long]).unwrap_err();
        assert!(error.to_string().contains("credentials_bytes_max"), "{error}");
    }

    #[test]
    fn a_bad_control_list_is_refused_when_parsed() {
        let error = Config::try_parse_from(["engramd", "--control", "10.0.0.1:7300,"]).unwrap_err();
        assert!(error.to_string().contains("blank"), "{error}");
    }

    #[test]
    fn a_zone_longer_than_its_limit_is_refused_when_parsed() {
        let long = "z".repeat(ZONE_BYTES_MAX + 1);
        let error = Config::try_parse_from(["engramd", "--zone", long.as_str()]).unwrap_err();
        assert!(error.to_string().contains("zone_bytes_max"), "{error}");
        let longest = "z".repeat(ZONE_BYTES_MAX);
        let config = Config::try_parse_from(["engramd", "--zone", longest.as_str()]).unwrap();
        assert_eq!(config.node.zone, Some(longest));
    }

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
