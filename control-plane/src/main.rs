//! `engram-control`: the cluster's control plane process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use engram_control::election::{self, ElectionSettings};
use engram_control::etcd_credentials::{self, CredentialsKey};
use engram_control::leadership::Candidate;
use engram_control::service::{self, Controller, Events, Settings};
use engram_control::state::{EtcdHealth, EtcdWriter, Keys, StateError};
use engram_proto::Gatekeeper;
use engram_tls::{ClientTls, ServerTls, TlsFlags};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "engram-control",
    version,
    about = "Engram control plane: membership, slot map, rebalancing"
)]
struct Arguments {
    /// Address nodes, clients and the CLI reach the control plane at.
    #[arg(long, env = "ENGRAM_LISTEN", default_value = "127.0.0.1:7300")]
    listen: String,
    /// Directory of the state file (members and the slot map), kept across restarts:
    /// one process, for development. Exclusive with --etcd.
    #[arg(
        long,
        env = "ENGRAM_DATA",
        default_value = "engram-control-data",
        conflicts_with = "etcd"
    )]
    data: PathBuf,
    /// Keep the state in etcd at these endpoints (`http://HOST:PORT`, comma-separated)
    /// instead of a file: several engram-control processes run, one leads, any can die.
    #[arg(long, env = "ENGRAM_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The etcd key prefix of this cluster's control plane (its state and leader keys).
    #[arg(long, env = "ENGRAM_ETCD_PREFIX", default_value = engram_control::state::etcd::ETCD_PREFIX_DEFAULT, requires = "etcd")]
    etcd_prefix: String,
    /// The address other processes reach this one's --listen at, as standbys name the
    /// leader (default: the address --listen bound).
    #[arg(long, env = "ENGRAM_ADVERTISE")]
    advertise: Option<String>,
    /// One token for the handshake, from nodes and the CLI and towards nodes, with every
    /// right. For roles, --credentials-file and --node-token.
    #[arg(long, env = "ENGRAM_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Credentials file (the nodes' format): nodes join with a credential of the node
    /// right, operators (`engram cluster`) need admin. Read again on SIGHUP.
    #[arg(
        long,
        env = "ENGRAM_CREDENTIALS_FILE",
        value_name = "FILE",
        conflicts_with = "auth_token"
    )]
    credentials_file: Option<PathBuf>,
    /// Take the credentials (the file's format) from the etcd key `PREFIX/credentials`
    /// and follow its changes: `etcdctl put /engram/default/credentials "$(cat FILE)"`
    /// changes them for every control-plane process and every node started with
    /// --node-token alone. A put that does not parse is refused, the previous ones stay.
    #[arg(
        long,
        env = "ENGRAM_CREDENTIALS_ETCD",
        requires = "etcd",
        conflicts_with_all = ["auth_token", "credentials_file"]
    )]
    credentials_etcd: bool,
    /// Token this process presents to nodes (maps, migration orders), of a credential
    /// with the node right; required with --credentials-file and --credentials-etcd.
    /// (With --auth-token, that token is presented.)
    #[arg(long, env = "ENGRAM_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// Serve Prometheus metrics on this port of the --listen host (0: off), over TLS
    /// when the control plane serves it.
    #[arg(long, env = "ENGRAM_METRICS_PORT", default_value_t = 0)]
    metrics_port: u16,
    /// Token a scrape must carry (`Authorization: Bearer TOKEN`); default: none needed.
    #[arg(long, env = "ENGRAM_METRICS_TOKEN", hide_env_values = true, value_parser = engram_metrics_http::parse_token)]
    metrics_token: Option<String>,
    /// Most connections served at once (nodes hold one or two each, operators a few);
    /// past it a new one is closed at once.
    #[arg(long, env = "ENGRAM_MAX_CONNECTIONS", default_value_t = engram_control::port::CONNECTIONS_MAX_DEFAULT)]
    max_connections: usize,
    /// Do not move slots off shards that are far busier or fuller than the rest.
    #[arg(long, env = "ENGRAM_NO_LOAD_REBALANCE")]
    no_load_rebalance: bool,
    /// How often to look for shards far busier or fuller than the rest, in milliseconds.
    #[arg(long, env = "ENGRAM_LOAD_CHECK_INTERVAL_MS", default_value_t = service::LOAD_CHECK_INTERVAL_MS_DEFAULT)]
    load_check_interval_ms: u64,
    /// Silence after which a node is declared dead, in ms: its backups take over the
    /// slots it owned; slots without one are lost (until it comes back as the same
    /// process, or `engram cluster reclaim`).
    #[arg(long, env = "ENGRAM_LIVENESS_TIMEOUT_MS", default_value_t = engram_control::membership::LIVENESS_TIMEOUT_MS)]
    liveness_timeout_ms: u64,
    /// Backups of every slot, each on another node (in another zone where there is
    /// one): a write is acknowledged once every backup applied it, and a node's death
    /// costs a pause, not data. 0 keeps none.
    #[arg(
        long,
        env = "ENGRAM_REPLICAS",
        default_value_t = engram_control::replicas::REPLICAS_DEFAULT,
        value_parser = clap::value_parser!(u8).range(0..=engram_control::replicas::REPLICAS_MAX as i64)
    )]
    replicas: u8,
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "ENGRAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// TLS on the listening port and on the calls to nodes (off unless a certificate is
    /// given; then --tls-ca is needed, for the nodes' certificates).
    #[command(flatten)]
    tls: TlsFlags,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files or `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match arguments.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("engram-control: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(arguments)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engram-control: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(arguments: Arguments) -> Result<(), Box<dyn std::error::Error>> {
    check_liveness_timeout(&arguments)?;
    let tls = arguments.tls.server()?;
    let peer_tls = arguments.tls.peers()?;
    if tls.is_some() && peer_tls.is_none() {
        return Err(
            "--tls-cert needs --tls-ca: the CA of the nodes' certificates, which the control plane calls over TLS"
                .into(),
        );
    }
    let (gatekeeper, followed) = gatekeeper_from_flags(&arguments).await?;
    let (controller, events) = open_controller(&arguments, gatekeeper.clone(), peer_tls)?;
    let listener = tokio::net::TcpListener::bind(&arguments.listen)
        .await
        .map_err(|source| service::ControlError::Listen {
            address: arguments.listen.clone(),
            source,
        })?;
    let address = listener.local_addr()?;
    let metrics_address = serve_metrics(&arguments, address, &controller, tls.clone())?;
    tokio::spawn(controller.clone().orchestrate(events));
    tokio::spawn(controller.clone().housekeeping());
    let election = match arguments.etcd.is_empty() {
        true => {
            tokio::spawn(controller.clone().reconcile());
            tracing::info!(%address, data = %arguments.data.display(), epoch = controller.epoch(), ?metrics_address, "engram-control serving");
            println!("engram-control ready listen={address} epoch={}", controller.epoch());
            None
        }
        false => Some(stand_for_election(&arguments, address, &controller, metrics_address)?),
    };
    if let Some(Followed { source, revision }) = followed {
        tokio::spawn(etcd_credentials::follow(source, gatekeeper.clone(), revision));
    }
    tokio::spawn(reload_on_hangup(tls.clone(), gatekeeper));
    let serving = tokio::spawn(engram_control::port::serve(
        controller.clone(),
        listener,
        tls,
        arguments.max_connections.max(1),
    ));
    let election = async move {
        match election {
            Some(election) => election.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = serving => {}
        ended = election => {
            return Err(match ended {
                Ok(Err(error)) => error.into(),
                _ => "the election ended".into(),
            });
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
        halted = controller.halted() => return Err(halted.into()),
    }
    tracing::info!("engram-control stopped");
    Ok(())
}

fn check_liveness_timeout(arguments: &Arguments) -> Result<(), Box<dyn std::error::Error>> {
    if arguments.liveness_timeout_ms < engram_control::membership::LIVENESS_TIMEOUT_MS_MIN {
        return Err(format!(
            "--liveness-timeout-ms {} is below liveness_timeout_ms_min ({})",
            arguments.liveness_timeout_ms,
            engram_control::membership::LIVENESS_TIMEOUT_MS_MIN
        )
        .into());
    }
    Ok(())
}

/// The controller: leading on its state file, or standing by for an etcd election.
fn open_controller(
    arguments: &Arguments,
    gatekeeper: Arc<Gatekeeper>,
    peer_tls: Option<ClientTls>,
) -> Result<(Arc<Controller>, Events), Box<dyn std::error::Error>> {
    let link_credentials = arguments.node_token.as_ref().or(arguments.auth_token.as_ref());
    let settings = Settings {
        gatekeeper,
        link_credentials: link_credentials.cloned().unwrap_or_default().into_bytes(),
        peer_tls,
        load_rebalance: !arguments.no_load_rebalance,
        load_check_interval: std::time::Duration::from_millis(arguments.load_check_interval_ms.max(1)),
        liveness_timeout: std::time::Duration::from_millis(arguments.liveness_timeout_ms),
        replicas: usize::from(arguments.replicas),
    };
    Ok(match arguments.etcd.is_empty() {
        true => Controller::open(settings, &arguments.data)?,
        false => Controller::standby(settings, EtcdHealth::new(&arguments.etcd_prefix, &arguments.etcd)),
    })
}

/// Serves `/metrics` on `--metrics-port` (none when 0), on the listening address's IP;
/// the address it bound.
fn serve_metrics(
    arguments: &Arguments,
    address: SocketAddr,
    controller: &Arc<Controller>,
    tls: Option<ServerTls>,
) -> Result<Option<SocketAddr>, Box<dyn std::error::Error>> {
    if arguments.metrics_port == 0 {
        return Ok(None);
    }
    let metrics_listener = engram_metrics_http::bind(SocketAddr::new(address.ip(), arguments.metrics_port))?;
    let bound = metrics_listener.local_addr()?;
    let reader = controller.clone();
    let access = engram_metrics_http::Access {
        tls,
        token: arguments.metrics_token.clone().map(String::into_bytes),
    };
    engram_metrics_http::spawn(
        metrics_listener,
        move || engram_control::metrics::render(reader.gauges()),
        access,
    )?;
    Ok(Some(bound))
}

/// Starts this process's candidacy in the etcd election; the task ends only with an
/// error.
fn stand_for_election(
    arguments: &Arguments,
    address: SocketAddr,
    controller: &Arc<Controller>,
    metrics_address: Option<SocketAddr>,
) -> Result<JoinHandle<Result<(), StateError>>, Box<dyn std::error::Error>> {
    let me = Candidate {
        id: process_id(),
        address: arguments.advertise.clone().unwrap_or_else(|| address.to_string()),
    };
    let writer = EtcdWriter::start(&arguments.etcd)?;
    let settings = ElectionSettings {
        endpoints: arguments.etcd.clone(),
        keys: Keys::under(&arguments.etcd_prefix),
        me: me.clone(),
    };
    tracing::info!(%address, etcd = %arguments.etcd.join(","), prefix = %arguments.etcd_prefix, id = %me.id, ?metrics_address, "engram-control serving as a standby until elected");
    println!(
        "engram-control ready listen={address} id={} etcd_prefix={}",
        me.id, arguments.etcd_prefix
    );
    Ok(tokio::spawn(election::run(controller.clone(), settings, writer)))
}

/// Credentials read from etcd, to follow from the revision they were read at.
struct Followed {
    source: CredentialsKey,
    revision: i64,
}

/// Checks that the flags name a node token exactly when they name credentials, which
/// this process presents to the nodes.
fn checked_node_token(arguments: &Arguments) -> Result<Option<&[u8]>, &'static str> {
    let lists_credentials = arguments.credentials_file.is_some() || arguments.credentials_etcd;
    match (&arguments.node_token, lists_credentials) {
        (Some(_), false) => Err("--node-token needs --credentials-file or --credentials-etcd: \
             with --auth-token alone, that token is presented"),
        (None, true) => Err(
            "--credentials-file and --credentials-etcd need --node-token: the token of a \
             credential with the node right, which this process presents to the nodes",
        ),
        (token, _) => Ok(token.as_deref().map(str::as_bytes)),
    }
}

/// Who may connect: the credentials file's or etcd's credentials, else the shared token,
/// else anyone; with credentials from etcd, where to follow them from.
async fn gatekeeper_from_flags(
    arguments: &Arguments,
) -> Result<(Arc<Gatekeeper>, Option<Followed>), Box<dyn std::error::Error>> {
    let node_token = checked_node_token(arguments)?;
    if arguments.credentials_etcd {
        let source = CredentialsKey {
            endpoints: arguments.etcd.clone(),
            key: Keys::under(&arguments.etcd_prefix).credentials,
            node_token: node_token.unwrap_or_default().to_vec(),
        };
        let (gatekeeper, revision) = etcd_credentials::load(&source).await?;
        tracing::info!(key = %source.key, revision, "credentials read from etcd; following their changes");
        return Ok((Arc::new(gatekeeper), Some(Followed { source, revision })));
    }
    let gatekeeper = Gatekeeper::new(
        arguments.credentials_file.as_deref(),
        arguments.auth_token.as_deref().map(str::as_bytes),
    )?;
    if let Some(node_token) = node_token {
        let admitted = gatekeeper.gate().admit_node(node_token);
        admitted.map_err(|denial| format!("--node-token is not admitted by --credentials-file as a node: {denial}"))?;
    }
    Ok((Arc::new(gatekeeper), None))
}

/// An id for this process that no other process of the cluster shares: its pid and its
/// start time in nanoseconds.
fn process_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

/// SIGHUP reads the TLS certificate and key and the credentials file again, for
/// connections accepted afterwards.
async fn reload_on_hangup(tls: Option<ServerTls>, gatekeeper: Arc<Gatekeeper>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.as_ref().map(ServerTls::reload) {
            None => {}
            Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
            Some(Err(error)) => tracing::error!(%error, "TLS reload failed; the previous certificate still serves"),
        }
        match gatekeeper.reload() {
            Ok(None) => {}
            Ok(Some(listed)) => tracing::info!(listed, "credentials reloaded"),
            Err(error) => tracing::error!(%error, "credentials reload failed; the previous credentials still admit"),
        }
    }
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
