//! A cluster node's heartbeat: a thread of its own that reports liveness and load to the
//! control plane's leader, installs the control plane's newer maps, tells the shards how
//! long the map they hold is good to serve on, settles migrations the control plane no
//! longer runs, and keeps credentials taken from the control plane in step with its own.
//!
//! Each beat is a round over the control addresses ([`ControlAddresses`]): it goes to the
//! leader last learned, follows a standby's `NotLeader` to the leader it names, and moves
//! down the list past standbys that know no leader and addresses that do not answer.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use engram_proto::control_addresses::Outcome;
use engram_proto::link::CallError;
use engram_proto::{
    ControlAddresses, ControlRequest, ControlResponse, Heartbeat, PeerProtocol, PeerRequest, ShardLoad,
};

use crate::cluster::NodeMap;
use crate::error::ServerError;
use crate::given_credentials::GivenCredentials;
use crate::peering::{ControlLink, Peering};
use crate::shutdown::Shutdown;
use crate::stats::NodeStats;
use crate::throttle::Throttle;

/// How often a cluster node reports to the control plane.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Bound on each control-plane exchange, so a stalled control plane cannot stall the
/// heartbeat thread (or a join) for long.
pub const CONTROL_CALL_TIMEOUT_MS: u64 = 1_000;

/// How long shards may serve on a map after it was last checked with the control
/// plane, given its liveness timeout. The control plane declares a node dead once it
/// has heard nothing for the timeout, counted from the last heartbeat it received,
/// which the node sent at most `CONTROL_CALL_TIMEOUT_MS` before the exchange ended;
/// half of what is left keeps the node's own deadline well ahead of that, on clocks
/// that only run at about the same rate.
pub fn map_check_grace_ms(liveness_timeout_ms: u64) -> u64 {
    liveness_timeout_ms.saturating_sub(CONTROL_CALL_TIMEOUT_MS) / 2
}

/// Reports liveness and load to the control plane and fetches the map when the control
/// plane's is newer. The node keeps serving with the map it has while no control-plane
/// leader is reachable.
pub struct Heartbeater {
    control: ControlAddresses,
    peering: Peering,
    node: Arc<NodeStats>,
    node_map: Arc<NodeMap>,
    shutdown: Shutdown,
    refusal_logged: Throttle,
    incarnation: u64,
    /// The control plane's, from its last answer.
    liveness_timeout_ms: Cell<u64>,
    /// For a node that takes its credentials from the control plane.
    credentials: Option<GivenCredentials>,
}

/// The link to the leader, kept from one beat to the next.
struct KeptLink {
    address: String,
    link: ControlLink,
}

/// What a beat's control-plane process turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Beat {
    /// The leader: it acknowledged (or refused) the beat.
    Answered,
    /// A standby, naming the leader it knows of.
    NotLeader(Option<String>),
}

/// How often a heartbeat refusal is logged while it lasts.
const REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;

/// Who a heartbeat speaks for and to.
pub struct Membership {
    /// The control plane's addresses, with the leader the join reached.
    pub control: ControlAddresses,
    /// How the node reaches the control plane and its own shards.
    pub peering: Peering,
    /// This process's incarnation, as its join gave it.
    pub incarnation: u64,
    /// The control plane's, as its join gave it.
    pub liveness_timeout_ms: u64,
}

impl Heartbeater {
    pub fn new(
        membership: Membership,
        node: Arc<NodeStats>,
        node_map: Arc<NodeMap>,
        credentials: Option<GivenCredentials>,
        shutdown: Shutdown,
    ) -> Heartbeater {
        Heartbeater {
            control: membership.control,
            peering: membership.peering,
            node,
            node_map,
            shutdown,
            refusal_logged: Throttle::new(REFUSAL_LOG_INTERVAL_MS),
            incarnation: membership.incarnation,
            liveness_timeout_ms: Cell::new(membership.liveness_timeout_ms),
            credentials,
        }
    }

    /// Beats on a thread of its own until `shutdown` is triggered.
    pub fn start(self) -> Result<(), ServerError> {
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || self.run())
            .map_err(ServerError::Thread)?;
        Ok(())
    }

    fn run(mut self) {
        let mut link: Option<KeptLink> = None;
        let mut reachable = true;
        let mut leader: Option<String> = self.control.leader().map(str::to_owned);
        while !self.shutdown.is_triggered() {
            std::thread::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
            match self.beat_round(&mut link) {
                Ok(answered) => {
                    if !reachable {
                        tracing::info!(control = %answered, "control plane reachable again");
                    }
                    if leader.as_deref() != Some(answered.as_str()) {
                        tracing::info!(control = %answered, "following the control-plane leader");
                        leader = Some(answered);
                    }
                    reachable = true;
                }
                Err(reasons) => {
                    if reachable {
                        tracing::warn!(control = %self.control.describe(), reasons = %reasons, "no control-plane leader reachable; serving with the current map");
                    }
                    reachable = false;
                    // A control plane that is down, or electing a leader, moves nothing
                    // meanwhile: the map stays good to serve on. (One that is up but cut
                    // off from this node may declare it dead: ARCHITECTURE.md's departures
                    // say what that costs.) Not with replicas: a leader this node cannot
                    // reach may be promoting its backups, so its lease must run out.
                    if self.node_map.current().backups.is_empty() {
                        self.mark_checked();
                    }
                }
            }
        }
    }

    /// One beat: a round over the control addresses until the leader answers. Returns
    /// the leader's address, or what each address tried did.
    fn beat_round(&mut self, link: &mut Option<KeptLink>) -> Result<String, String> {
        let mut round = self.control.clone().round();
        let mut reasons = Vec::new();
        let mut answered = None;
        while let Some(address) = round.address().map(str::to_owned) {
            let outcome = match self.beat_at(&address, link) {
                Ok(Beat::NotLeader(leader)) => {
                    let named = leader.as_deref().unwrap_or("no leader known");
                    reasons.push(format!("{address}: a standby ({named})"));
                    Outcome::NotLeader { leader }
                }
                Ok(Beat::Answered) => {
                    answered = Some(address.clone());
                    Outcome::Leader
                }
                Err(error) => {
                    reasons.push(format!("{address}: {error}"));
                    Outcome::Unreachable
                }
            };
            round.record(outcome);
        }
        self.control = round.finish();
        answered.ok_or_else(|| reasons.join("; "))
    }

    /// One beat at `address`, on the link kept from the previous beat when it goes
    /// there. A link is kept only to the leader.
    fn beat_at(&self, address: &str, link: &mut Option<KeptLink>) -> Result<Beat, CallError> {
        let kept = link.take().filter(|kept| kept.address == address);
        let (beat, used) = match kept {
            // A link kept across a pause may have been closed at the other end: its
            // failure says nothing about the control plane, so a new link tries.
            Some(mut kept) => match self.beat(address, &mut kept.link) {
                Ok(beat) => (beat, kept.link),
                Err(_) => self.connect_and_beat(address)?,
            },
            None => self.connect_and_beat(address)?,
        };
        if beat == Beat::Answered {
            *link = Some(KeptLink {
                address: address.to_string(),
                link: used,
            });
        }
        Ok(beat)
    }

    fn connect_and_beat(&self, address: &str) -> Result<(Beat, ControlLink), CallError> {
        let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
        let mut link = self.peering.connect(address, timeout)?;
        let beat = self.beat(address, &mut link)?;
        Ok((beat, link))
    }

    /// Tells the shards the map was checked just now (see [`map_check_grace_ms`]).
    fn mark_checked(&self) {
        let now_ms = self.node.started.elapsed().as_millis() as u64;
        self.node_map
            .mark_checked(now_ms + map_check_grace_ms(self.liveness_timeout_ms.get()));
    }

    /// One exchange: report, and install the control plane's map if it is newer (and
    /// its credentials, for a node that takes them from it, if they changed). The
    /// map counts as checked only once it is installed; a refused beat (this process
    /// was replaced by a restart, or the control plane lost its state) does not count,
    /// so the shards stop serving on it, and neither does a standby's answer.
    fn beat(&self, address: &str, link: &mut ControlLink) -> Result<Beat, CallError> {
        let (control_epoch, abort_migrations, credentials_digest) =
            match link.call(ControlRequest::Heartbeat(self.report()))? {
                ControlResponse::HeartbeatAck {
                    map_epoch,
                    abort_migrations,
                    liveness_timeout_ms,
                    fills,
                    credentials_digest,
                } => {
                    self.liveness_timeout_ms.set(liveness_timeout_ms);
                    self.node_map.set_fills(fills);
                    (map_epoch, abort_migrations, credentials_digest)
                }
                ControlResponse::Error(reply) => {
                    self.refused(address, &reply.message);
                    return Ok(Beat::Answered);
                }
                ControlResponse::NotLeader { leader } => return Ok(Beat::NotLeader(leader)),
                _ => return Ok(Beat::Answered),
            };
        if control_epoch > self.node_map.epoch() {
            self.fetch_map(link)?;
        }
        if control_epoch <= self.node_map.epoch() {
            self.mark_checked();
        }
        if !abort_migrations.is_empty() {
            self.settle(&abort_migrations, control_epoch);
        }
        if let Some(credentials) = &self.credentials {
            credentials.follow(credentials_digest, link);
        }
        Ok(Beat::Answered)
    }

    /// What a beat reports: each shard's load, and the migrations the shards hold open.
    fn report(&self) -> Heartbeat {
        let shards = self
            .node
            .shards
            .iter()
            .map(|shard| ShardLoad {
                keys: shard.keys.load(Relaxed),
                memory_used_bytes: shard.memory_used_bytes.load(Relaxed),
                operations_total: shard.operations_total.load(Relaxed),
            })
            .collect();
        let mut migrations: Vec<u64> = Vec::new();
        let mut in_sync = Vec::new();
        for shard in &self.node.shards {
            migrations.extend(
                shard
                    .migrations
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .iter(),
            );
            in_sync.extend(
                shard
                    .in_sync
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .iter()
                    .cloned(),
            );
        }
        Heartbeat {
            node_id: self.node.node_id,
            map_epoch: self.node_map.epoch(),
            shards,
            migrations,
            incarnation: self.incarnation,
            in_sync,
        }
    }

    /// A control plane that lost its state refuses every beat; says so now and then,
    /// not twice a second.
    fn refused(&self, control: &str, message: &str) {
        if self.refusal_logged.allows() {
            tracing::warn!(%control, %message, "heartbeat refused");
        }
    }

    /// Installs the control plane's map, which is newer than the node's.
    fn fetch_map(&self, link: &mut ControlLink) -> Result<(), CallError> {
        if let ControlResponse::SlotMap(map) = link.call(ControlRequest::GetSlotMap)? {
            let epoch = map.epoch;
            match self.node_map.install(map) {
                // The install logs the map it installed.
                Ok(_) => {}
                Err(reason) => tracing::warn!(epoch, %reason, "the control plane sent an invalid map"),
            }
        }
        Ok(())
    }

    /// Aborts migrations the control plane no longer runs, on every shard (an id unknown
    /// to a shard is a no-op there). The map was installed first, and each shard refuses
    /// the abort until it routes with `map_epoch`, so a migration the map committed is
    /// committed by the map, not undone by the abort.
    fn settle(&self, migration_ids: &[u64], map_epoch: u64) {
        let timeout = Duration::from_millis(CONTROL_CALL_TIMEOUT_MS);
        for address in &self.node.shard_addresses {
            let link = self.peering.connect::<PeerProtocol>(address, timeout);
            let Ok(mut link) = link else { continue };
            for &migration_id in migration_ids {
                let abort = PeerRequest::MigrateAbort {
                    migration_id,
                    map_epoch,
                };
                if let Err(error) = link.call(abort) {
                    tracing::debug!(%address, migration_id, %error, "could not settle a migration; the next heartbeat retries");
                }
            }
        }
        tracing::info!(?migration_ids, "settled migrations the control plane no longer runs");
    }
}
