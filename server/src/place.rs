//! Where a node stands before it serves: alone, owning every slot under the embedded
//! control plane's map, or a member of a cluster, joined through its control plane (whose
//! heartbeat then runs: `heartbeat.rs`). Also the floor its shards draw versions from.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engram_proto::control_addresses::Outcome;
use engram_proto::limits::incarnation_version_floor;
use engram_proto::link::{CallError, LinkError};
use engram_proto::{
    embedded_map, ControlAddresses, ControlProtocol, ControlRequest, ControlResponse, ErrorCode, JoinRequest,
    ShardAddress, SharedCredentials, SlotMap,
};

use crate::config::NodeSettings;
use crate::error::ServerError;
use crate::heartbeat::{Membership, CONTROL_CALL_TIMEOUT_MS};
use crate::peering::Peering;
use crate::shutdown::Shutdown;

/// How long a starting node keeps trying to reach the control plane.
pub const JOIN_TIMEOUT_MS: u64 = 30_000;
/// How long a starting node waits between tries to reach the control plane.
pub const JOIN_RETRY_INTERVAL_MS: u64 = 200;

/// Where a node stands: alone with its embedded map, or a member of a cluster.
pub struct NodePlace {
    pub node_id: u64,
    pub map: SlotMap,
    /// As clients and other nodes reach them.
    pub shard_addresses: Vec<String>,
    pub version_floor: u64,
    /// What the heartbeat needs; `None` for a node that runs alone.
    pub membership: Option<Membership>,
    /// The credentials the control plane handed over with the join, if it has any.
    pub credentials: Option<SharedCredentials>,
}

/// Builds the embedded map of a node that runs alone, or joins the control plane; a
/// join gives up once `shutdown` is triggered.
pub fn place_node(
    settings: &NodeSettings,
    front_address: SocketAddr,
    shard_addresses: Vec<String>,
    peering: &Peering,
    shutdown: &Shutdown,
) -> Result<NodePlace, ServerError> {
    match &settings.control {
        None => Ok(place_alone(settings.node_id, shard_addresses)),
        Some(control) => join(settings, control, front_address, shard_addresses, peering, shutdown),
    }
}

/// A node that runs alone serves every slot, under the embedded control plane's map.
fn place_alone(node_id: Option<u64>, shard_addresses: Vec<String>) -> NodePlace {
    let node_id = node_id.unwrap_or_else(random_u64);
    let shards = shard_addresses
        .iter()
        .enumerate()
        .map(|(shard_id, address)| ShardAddress {
            node_id,
            shard_id: shard_id as u16,
            address: address.clone(),
            incarnation: 0,
        })
        .collect();
    NodePlace {
        node_id,
        map: embedded_map(shards),
        shard_addresses,
        version_floor: standalone_version_floor(),
        membership: None,
        credentials: None,
    }
}

/// Joins the cluster whose control plane is at `control` (through whichever of its
/// processes leads), announcing the addresses clients and other nodes reach this node's
/// ports at: the front port's host, or `--advertise`.
fn join(
    settings: &NodeSettings,
    control: &ControlAddresses,
    front_address: SocketAddr,
    shard_addresses: Vec<String>,
    peering: &Peering,
    shutdown: &Shutdown,
) -> Result<NodePlace, ServerError> {
    let bind = front_address.ip();
    let host = match &settings.advertise {
        Some(host) => host.clone(),
        None if bind.is_unspecified() => return Err(ServerError::AdvertiseRequired(bind)),
        None => bind.to_string(),
    };
    let advertised = |address: &str| {
        let port = address.rsplit_once(':').map_or("0", |(_, port)| port);
        format!("{host}:{port}")
    };
    let shard_count = shard_addresses.len() as u64;
    let request = JoinRequest {
        front_address: advertised(&front_address.to_string()),
        shard_addresses: shard_addresses.iter().map(|address| advertised(address)).collect(),
        memory_limit_bytes: settings.memory_limit.map_or(0, |limit| limit / shard_count),
        boot_id: random_u64(),
        zone: settings.zone.clone().unwrap_or_default(),
        takes_credentials: settings.takes_control_credentials(),
    };
    let (joined, control) = join_cluster(control.clone(), peering, &request, shutdown)?;
    tracing::info!(control = %control.first(), node_id = joined.node_id, incarnation = joined.incarnation, epoch = joined.map.epoch, zone = %request.zone, "joined the cluster");
    Ok(NodePlace {
        node_id: joined.node_id,
        map: joined.map,
        shard_addresses: request.shard_addresses,
        version_floor: incarnation_version_floor(joined.incarnation),
        membership: Some(Membership {
            control,
            peering: peering.clone(),
            incarnation: joined.incarnation,
            liveness_timeout_ms: joined.liveness_timeout_ms,
        }),
        credentials: joined.credentials,
    })
}

/// The floor of a node that runs alone: nanoseconds since the Unix epoch at start. A
/// shard draws far fewer than one version per nanosecond (each costs a request, which
/// takes well over a hundred), so its counter stays below the wall clock, and a later
/// start begins above everything an earlier one drew, as long as the wall clock is not
/// set back across a restart by more than the earlier process ran ahead of it
/// (ARCHITECTURE.md argues it).
fn standalone_version_floor() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX >> 1)
}

/// What the control plane answered a join.
struct Joined {
    node_id: u64,
    map: SlotMap,
    incarnation: u64,
    liveness_timeout_ms: u64,
    credentials: Option<SharedCredentials>,
}

/// Registers with the control plane's leader, retrying until `JOIN_TIMEOUT_MS`: a node
/// may start before its control plane (as containers do), or during an election. Each
/// try is a round over the control addresses that follows standbys to the leader they
/// name. Retries carry the same boot id, so a join whose answer was lost is not taken
/// for a restart, whichever process answers the retry. A node told to stop meanwhile
/// stops trying. Returns the addresses with the leader that answered.
fn join_cluster(
    mut addresses: ControlAddresses,
    peering: &Peering,
    request: &JoinRequest,
    shutdown: &Shutdown,
) -> Result<(Joined, ControlAddresses), ServerError> {
    let deadline = Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
    loop {
        if shutdown.is_triggered() {
            return Err(ServerError::StoppedBeforeServing);
        }
        let mut round = addresses.round();
        let mut reasons = Vec::new();
        let mut joined = None;
        // A refusal of the credentials is final only when every address refuses them: a
        // standby still on an older credentials file must not stop the node.
        let (mut asked, mut refusals) = (0, Vec::new());
        while let Some(address) = round.address().map(str::to_owned) {
            let (outcome, answer) = join_once(&address, peering, request);
            asked += 1;
            match answer {
                Ok(answer) => joined = Some(answer),
                Err(JoinFailure::Refused(reason)) => {
                    tracing::warn!(%address, %reason, "the control plane refused this node's credentials");
                    reasons.push(format!("{address}: {reason}"));
                    refusals.push((address, reason));
                }
                Err(JoinFailure::Retry(reason)) => reasons.push(format!("{address}: {reason}")),
            }
            round.record(outcome);
        }
        addresses = round.finish();
        if let Some(joined) = joined {
            return Ok((joined, addresses));
        }
        if refusals.len() == asked {
            if let Some((address, reason)) = refusals.pop() {
                return Err(ServerError::JoinRefused { address, reason });
            }
        }
        let reason = reasons.join("; ");
        if Instant::now() >= deadline {
            return Err(ServerError::Join {
                control: addresses.describe(),
                reason,
                join_timeout_ms: JOIN_TIMEOUT_MS,
            });
        }
        tracing::debug!(control = %addresses.describe(), %reason, "join attempt failed; retrying");
        std::thread::sleep(Duration::from_millis(JOIN_RETRY_INTERVAL_MS));
    }
}

/// Why a join got no answer.
enum JoinFailure {
    /// The control plane refused the node's credentials: no retry can change that.
    Refused(String),
    /// Anything else, which a later attempt may not meet.
    Retry(String),
}

impl From<String> for JoinFailure {
    fn from(reason: String) -> JoinFailure {
        JoinFailure::Retry(reason)
    }
}

/// One join sent to `address`: what the address turned out to be, and the answer or why
/// there is none.
fn join_once(address: &str, peering: &Peering, request: &JoinRequest) -> (Outcome, Result<Joined, JoinFailure>) {
    let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
    let attempt = peering
        .connect::<ControlProtocol>(address, timeout)
        .and_then(|mut link| link.call(ControlRequest::Join(request.clone())));
    if let Err(CallError::Link {
        source: LinkError::Refused(reply),
        ..
    }) = &attempt
    {
        if matches!(
            ErrorCode::from_u16(reply.code),
            Some(ErrorCode::Unauthorized | ErrorCode::Forbidden)
        ) {
            return (Outcome::Leader, Err(JoinFailure::Refused(reply.message.clone())));
        }
    }
    let answer = match attempt {
        Ok(ControlResponse::Joined {
            node_id,
            map,
            incarnation,
            liveness_timeout_ms,
            credentials,
        }) => match map.validate() {
            Ok(()) => Ok(Joined {
                node_id,
                map,
                incarnation,
                liveness_timeout_ms,
                credentials,
            }),
            Err(reason) => Err(format!("the control plane sent an invalid map: {reason}").into()),
        },
        Ok(ControlResponse::NotLeader { leader }) => {
            let reason = match &leader {
                Some(leader) => format!("a standby; the leader is at {leader}"),
                None => "a standby; no leader is known yet".to_string(),
            };
            return (Outcome::NotLeader { leader }, Err(reason.into()));
        }
        Ok(ControlResponse::Error(reply)) if reply.code == ErrorCode::Forbidden.as_u16() => {
            Err(JoinFailure::Refused(reply.message))
        }
        Ok(ControlResponse::Error(reply)) => Err(format!("refused: {}", reply.message).into()),
        Ok(other) => Err(format!("unexpected answer {}", other.name()).into()),
        Err(error) => return (Outcome::Unreachable, Err(error.to_string().into())),
    };
    (Outcome::Leader, answer)
}

/// A value nobody can predict, for ids and seeds.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; hashing the time through it
    // yields an unpredictable value without another dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    hasher.finish()
}
