//! The `engram` command line. The coordination objects' subcommands are in
//! [`coordination`].

mod coordination;
mod slots;

use clap::{ArgGroup, Parser, Subcommand};

pub use coordination::{
    BarrierCommand, FutureCommand, LatchCommand, LockCommand, MapCommand, QueueCommand, SemaphoreCommand,
};
pub use slots::{format_slots, merge_ranges, parse_slots, SlotList};

use engram_proto::credentials::Namespaces;
use engram_proto::{ControlAddresses, Rights};

use crate::failure::EXIT_CODES_HELP;
use crate::tls_args::TlsArgs;

/// Where `engram cluster` looks for engram-control when --control is not given.
pub const CONTROL_DEFAULT: &str = "127.0.0.1:7300";

/// Call timeout when --timeout-ms is not given.
pub const TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Engram command-line client.
#[derive(Debug, Parser)]
#[command(name = "engram", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Node to contact (its front port, or any shard port); tls://HOST:PORT over TLS
    /// (with --tls-ca).
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

    /// Timeout of each call, retries included, in milliseconds [default: 5000; capped at
    /// 60000]. For barrier wait, latch wait, future get and queue pop it is also how long
    /// to wait at the server (at most 900000, 15 minutes: wait_ms_max); the call gets that
    /// long on top.
    #[arg(long, global = true, env = "ENGRAM_TIMEOUT_MS", value_name = "MS")]
    pub timeout_ms: Option<u64>,

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

    #[command(flatten)]
    pub tls: TlsArgs,

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
    /// Fenced, leased locks: acquire, release, renew, holder.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Semaphores of leased permits: acquire, release, renew, available.
    #[command(subcommand, name = "sem", alias = "semaphore")]
    Semaphore(SemaphoreCommand),
    /// Cyclic barriers: wait.
    #[command(subcommand)]
    Barrier(BarrierCommand),
    /// Count-down latches: set, count-down, count, wait.
    #[command(subcommand)]
    Latch(LatchCommand),
    /// Write-once values: set, get.
    #[command(subcommand)]
    Future(FutureCommand),
    /// Double-ended queues: push, pop (blocking with --timeout-ms), len.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Maps of fields to values: set, get, del, all, incr.
    #[command(subcommand)]
    Map(MapCommand),
    /// Node and per-shard statistics.
    Info {
        /// Print JSON instead of a table.
        #[arg(long, env = "ENGRAM_JSON")]
        json: bool,
    },
    /// The cluster, through its control plane: status, rebalance, drain, reclaim.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Makes a random token for a credentials file (--credentials-file of engramd and
    /// engram-control): prints the file's line for it, which holds only its SHA-256, on
    /// stdout, and the token, for its holder, on stderr. Contacts nothing.
    Token {
        /// The credential's name, shown in logs and refusals.
        #[arg(value_parser = parse_credential_name)]
        name: String,
        /// Its rights, comma-separated: read, write, coordinate, admin, node, or all.
        #[arg(long, default_value = "read,write,coordinate", value_parser = Rights::parse)]
        rights: Rights,
        /// The namespaces it may use, comma-separated, or * for every one.
        #[arg(long, default_value = "default", value_parser = parse_namespaces)]
        namespaces: String,
    },
}

/// Checks a credential's name as a credentials file would.
fn parse_credential_name(text: &str) -> Result<String, String> {
    engram_proto::credentials::check_name(text).map(|()| text.to_string())
}

/// Checks a namespace list as a credentials file would, keeping its text.
fn parse_namespaces(text: &str) -> Result<String, String> {
    Namespaces::parse(text).map(|_| text.to_string())
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The control-plane processes (leader, standby, unreachable) and where the state lives
    /// (with etcd, each endpoint's health); nodes (with their incarnation and lost slots),
    /// shards, slots per shard, map epoch, load, migrations in progress and the slots that
    /// are lost.
    Status {
        /// Addresses of engram-control, comma-separated: every process of an etcd-backed
        /// control plane (each one's role is shown; the status comes from the leader).
        #[arg(long, env = "ENGRAM_CONTROL", default_value = CONTROL_DEFAULT, value_name = "ADDRESSES", value_parser = ControlAddresses::parse)]
        control: ControlAddresses,
        /// Print JSON instead of a table.
        #[arg(long, env = "ENGRAM_JSON")]
        json: bool,
    },
    /// Checks that the engram-control at --control answers, leader or standby; prints
    /// PONG and the round-trip time (a health check of one process).
    Ping {
        /// Address of engram-control.
        #[arg(long, env = "ENGRAM_CONTROL", default_value = "127.0.0.1:7300")]
        control: String,
    },
    /// Spread slots evenly over the live shards, moving as few as possible.
    Rebalance {
        /// Addresses of engram-control, comma-separated; the command goes to the leader.
        #[arg(long, env = "ENGRAM_CONTROL", default_value = CONTROL_DEFAULT, value_name = "ADDRESSES", value_parser = ControlAddresses::parse)]
        control: ControlAddresses,
        /// Return at once instead of waiting for the moves to finish.
        #[arg(long, env = "ENGRAM_NO_WAIT")]
        no_wait: bool,
    },
    /// Move every slot off NODE (a node id from `cluster status`) so it can be removed.
    Drain {
        node: u64,
        /// Addresses of engram-control, comma-separated; the command goes to the leader.
        #[arg(long, env = "ENGRAM_CONTROL", default_value = CONTROL_DEFAULT, value_name = "ADDRESSES", value_parser = ControlAddresses::parse)]
        control: ControlAddresses,
        /// Return at once instead of waiting for the moves to finish.
        #[arg(long, env = "ENGRAM_NO_WAIT")]
        no_wait: bool,
    },
    /// Return lost slots to service, empty.
    ///
    /// A slot is lost when its node died or restarted with empty memory: its data is
    /// gone, and every operation on its keys fails (SlotLost, exit code 3) rather than
    /// finding them missing, until it is reclaimed. Names SLOTS (e.g. `0-5460,9000`),
    /// every lost slot of --node, or both; the control plane refuses slots that are not
    /// lost. Prints how many slots came back.
    #[command(group(ArgGroup::new("lost").required(true).multiple(true).args(["slots", "node"])))]
    Reclaim {
        /// Slots and inclusive ranges of slots, comma-separated (0-16383).
        #[arg(value_name = "SLOTS", value_parser = parse_slots)]
        slots: Option<SlotList>,
        /// Every lost slot this node (an id from `cluster status`) owned.
        #[arg(long, value_name = "NODE", value_parser = clap::value_parser!(u64).range(1..))]
        node: Option<u64>,
        /// Addresses of engram-control, comma-separated; the command goes to the leader.
        #[arg(long, env = "ENGRAM_CONTROL", default_value = CONTROL_DEFAULT, value_name = "ADDRESSES", value_parser = ControlAddresses::parse)]
        control: ControlAddresses,
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
    fn reclaim_takes_slots_a_node_or_both_but_not_nothing() {
        let cli = parse(&["cluster", "reclaim", "0-2,9000"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Reclaim { slots: Some(ref slots), node: None, .. })
                if slots.0 == [0, 1, 2, 9000]
        ));
        let cli = parse(&["cluster", "reclaim", "--node", "3", "--control", "10.0.0.1:7300"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Reclaim { slots: None, node: Some(3), ref control })
                if control.listed() == ["10.0.0.1:7300"]
        ));
        let cli = parse(&["cluster", "reclaim", "7", "--node", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Reclaim {
                slots: Some(_),
                node: Some(3),
                ..
            })
        ));
        assert!(parse(&["cluster", "reclaim"]).is_err(), "nothing named");
        assert!(
            parse(&["cluster", "reclaim", "--node", "0"]).is_err(),
            "node ids start at 1"
        );
        let error = parse(&["cluster", "reclaim", "16384"]).unwrap_err();
        assert!(error.to_string().contains("out of range"), "{error}");
    }

    #[test]
    fn cluster_commands_take_several_control_addresses() {
        let cli = parse(&[
            "cluster",
            "status",
            "--control",
            "10.0.0.1:7300,10.0.0.2:7300",
            "--json",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Status { ref control, json: true })
                if control.listed() == ["10.0.0.1:7300", "10.0.0.2:7300"]
        ));
        let cli = parse(&["cluster", "rebalance"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Rebalance { ref control, .. }) if control.listed() == [CONTROL_DEFAULT]
        ));
        let error = parse(&["cluster", "drain", "2", "--control", "10.0.0.1:7300,"]).unwrap_err();
        assert!(error.to_string().contains("blank"), "{error}");
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
        assert_eq!((cli.addr.as_str(), cli.timeout_ms), ("10.0.0.1:7400", Some(10)));
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

    #[test]
    fn lock_commands_take_owner_lease_wait_and_token() {
        let cli = parse(&[
            "lock",
            "acquire",
            "db",
            "--owner",
            "w1",
            "--lease-ms",
            "5000",
            "--wait-ms",
            "200",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Lock(LockCommand::Acquire { ref name, ref owner, lease_ms: 5_000, wait_ms: 200 })
                if name == "db" && owner == "w1"
        ));
        let cli = parse(&["lock", "acquire", "db", "--owner", "w1", "--lease-ms", "5000"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lock(LockCommand::Acquire { wait_ms: 0, .. })
        ));
        assert!(
            parse(&["lock", "acquire", "db", "--lease-ms", "5000"]).is_err(),
            "owner is required"
        );
        let cli = parse(&["lock", "release", "db", "--owner", "w1", "--token", "42"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lock(LockCommand::Release { token: 42, .. })
        ));
        let cli = parse(&[
            "lock",
            "renew",
            "db",
            "--owner",
            "w1",
            "--token",
            "42",
            "--lease-ms",
            "9",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Lock(LockCommand::Renew {
                token: 42,
                lease_ms: 9,
                ..
            })
        ));
        assert!(matches!(
            parse(&["lock", "holder", "db"]).unwrap().command,
            Command::Lock(LockCommand::Holder { .. })
        ));
    }

    #[test]
    fn semaphore_commands_are_sem_and_default_to_one_permit() {
        let arguments = [
            "sem",
            "acquire",
            "pool",
            "--capacity",
            "4",
            "--owner",
            "w",
            "--lease-ms",
            "100",
        ];
        let cli = parse(&arguments).unwrap();
        assert!(matches!(
            cli.command,
            Command::Semaphore(SemaphoreCommand::Acquire {
                capacity: 4,
                permits: 1,
                lease_ms: 100,
                wait_ms: 0,
                ..
            })
        ));
        let cli = parse(&["semaphore", "release", "pool", "--capacity", "4", "--permit", "17"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Semaphore(SemaphoreCommand::Release {
                capacity: 4,
                permit: 17,
                ..
            })
        ));
        assert!(parse(&["sem", "available", "pool"]).is_err(), "capacity is required");
    }

    #[test]
    fn waits_take_the_global_timeout_and_values_parse() {
        let cli = parse(&["barrier", "wait", "phase", "--parties", "3", "--timeout-ms", "800"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Barrier(BarrierCommand::Wait { parties: 3, .. })
        ));
        assert_eq!(cli.timeout_ms, Some(800));
        let cli = parse(&["queue", "pop", "q", "--back"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Queue(QueueCommand::Pop { back: true, .. })
        ));
        assert_eq!(cli.timeout_ms, None);
        let cli = parse(&["queue", "push", "q", "v", "--front"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Queue(QueueCommand::Push { front: true, .. })
        ));
        let cli = parse(&["latch", "count-down", "ready"]).unwrap();
        assert!(matches!(cli.command, Command::Latch(LatchCommand::CountDown { .. })));
        let cli = parse(&["latch", "set", "ready", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Latch(LatchCommand::Set { count: 3, .. })
        ));
        let cli = parse(&["future", "set", "result", "42"]).unwrap();
        assert!(matches!(cli.command, Command::Future(FutureCommand::Set { ref value, .. }) if value == "42"));
        let cli = parse(&["map", "incr", "h", "f", "-3"]).unwrap();
        assert!(matches!(cli.command, Command::Map(MapCommand::Incr { delta: -3, .. })));
        let cli = parse(&["map", "incr", "h", "f"]).unwrap();
        assert!(matches!(cli.command, Command::Map(MapCommand::Incr { delta: 1, .. })));
        let cli = parse(&["map", "all", "h"]).unwrap();
        assert!(matches!(cli.command, Command::Map(MapCommand::All { .. })));
    }
}
