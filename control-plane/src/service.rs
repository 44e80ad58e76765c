//! The `engram-control` process: serves the control protocol (join, heartbeat, map,
//! status, rebalance, drain) and drives the migration orchestrator
//! ([`crate::orchestrator`], sans-I/O) over real links: it performs the orchestrator's
//! effects (calls to shard ports, state-file writes, timers, map broadcasts) and feeds
//! their results back as events.
//!
//! The commit point of a migration is the write of the new map to the state file: a
//! control plane that restarts finds either the old map (and aborts every migration the
//! nodes still hold) or the new one (and installs it, which commits).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::membership::Membership;
use crate::orchestrator::{balance_moves, Answer, Effect, Event, NodeCall, Orchestrator, Report};
pub use crate::orchestrator::{
    MIGRATE_OUT_TIMEOUT_MS, MIGRATION_IDS_RESERVED_PER_WRITE, MIGRATION_SLOTS_PER_STEP, NODE_CALL_TIMEOUT_MS,
};
use crate::planner::{plan_load, LoadPolicy};
use engram_link_tokio::{call_once, fill};
use engram_proto::{
    admit, decode_payload, encode_message, format_slot_ranges, ControlRequest, ControlResponse, ErrorCode, ErrorReply,
    Family, FrameBuffer, FrameBufferSizes, FrameHeader, FrameKind, HelloReply, Identity, MigrateOut, PeerProtocol,
    PeerRequest, PeerResponse, Port, Refusal, Response, FRONT_SHARD_ID,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How often the control plane looks for departed members and hot shards.
pub const HOUSEKEEPING_INTERVAL_MS: u64 = 1_000;
/// How often load-driven rebalancing is considered, by default.
pub const LOAD_CHECK_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Quiet time after a load-driven plan. Slot weights are not known (load is spread
/// evenly over a shard's slots), so a hot key may stay put however many slots move;
/// the pause bounds the churn that would cause to one step per cool-down.
pub const LOAD_REBALANCE_COOLDOWN_MS: u64 = 60_000;
/// Below this many operations per second on its busiest shard a cluster is not worth
/// rebalancing for load.
pub const LOAD_REBALANCE_OPERATIONS_PER_SECOND_MIN: f64 = 20_000.0;
/// Below this much memory on its fullest shard a cluster is not worth rebalancing for
/// memory.
pub const LOAD_REBALANCE_MEMORY_BYTES_MIN: u64 = 64 << 20;

pub struct Settings {
    pub data_dir: PathBuf,
    pub credentials: Vec<u8>,
    pub load_rebalance: bool,
    pub load_check_interval: Duration,
    /// Silence after which a node is declared dead and its slots lost.
    pub liveness_timeout: Duration,
}

/// A look for dead nodes later than this after the previous one means the control
/// plane itself stalled (housekeeping runs every `HOUSEKEEPING_INTERVAL_MS`).
const CONTROL_STALL_MS_MAX: u64 = 3 * HOUSEKEEPING_INTERVAL_MS;

/// Everything the control plane knows, behind one lock held only for in-memory work
/// and the state-file write, never across a network call.
pub struct Controller {
    started: Instant,
    /// Held (locked) for the life of the process.
    _data_lock: std::fs::File,
    settings: Settings,
    inner: Mutex<Inner>,
    /// Answers and timers for the orchestrator, sent by the tasks that wait for them.
    /// Unbounded but small: a step has at most one call and one timer outstanding.
    events: mpsc::UnboundedSender<Event>,
}

/// The receiver [`Controller::orchestrate`] feeds the orchestrator from.
pub type Events = mpsc::UnboundedReceiver<Event>;

struct Inner {
    membership: Membership,
    orchestrator: Orchestrator,
    bytes_moved_total: u64,
    migration_milliseconds_total: u64,
    last_error: String,
    /// When the last look for dead nodes ran, to tell the control plane's own stalls
    /// from its nodes' silence.
    last_liveness_check_ms: u64,
}

const STATE_FILE: &str = "state.bin";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: crate::membership::MembershipError,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("another engram-control is using {path} (its lock file is held)")]
    DataDirInUse { path: PathBuf },
}

impl Controller {
    /// Loads the persisted state (or starts empty) and returns the controller and the
    /// receiver of its orchestrator's events (for [`Controller::orchestrate`]).
    pub fn open(settings: Settings) -> Result<(Arc<Controller>, Events), ControlError> {
        std::fs::create_dir_all(&settings.data_dir).map_err(|source| ControlError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
        // Two control planes on one state file would each commit migrations the other
        // does not know of; the lock makes the second one refuse to start.
        let lock_path = settings.data_dir.join(LOCK_FILE);
        let data_lock = std::fs::File::create(&lock_path).map_err(|source| ControlError::DataDir {
            path: lock_path.clone(),
            source,
        })?;
        if data_lock.try_lock().is_err() {
            return Err(ControlError::DataDirInUse {
                path: settings.data_dir.clone(),
            });
        }
        let path = settings.data_dir.join(STATE_FILE);
        let mut membership = match std::fs::read(&path) {
            Ok(bytes) => Membership::decode(&bytes).map_err(|source| ControlError::State {
                path: path.clone(),
                source,
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Membership::new(),
            Err(source) => return Err(ControlError::DataDir { path, source }),
        };
        membership.set_liveness_timeout_ms(settings.liveness_timeout.as_millis() as u64);
        let (events, receiver) = mpsc::unbounded_channel();
        let controller = Arc::new(Controller {
            started: Instant::now(),
            _data_lock: data_lock,
            settings,
            inner: Mutex::new(Inner {
                membership,
                // Until `reconcile` has settled what an earlier run left open, no plan
                // may start: it would race the abort of everything uncommitted.
                orchestrator: Orchestrator::new(crate::orchestrator::Config::default()),
                bytes_moved_total: 0,
                last_liveness_check_ms: 0,
                migration_milliseconds_total: 0,
                last_error: String::new(),
            }),
            events,
        });
        Ok((controller, receiver))
    }

    fn liveness_timeout_ms(&self) -> u64 {
        self.settings.liveness_timeout.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is made whole before the guard drops, so a poisoned lock still
        // guards consistent state.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn epoch(&self) -> u64 {
        self.lock().membership.epoch()
    }

    pub fn members(&self) -> usize {
        self.lock().membership.members().len()
    }

    pub fn gauges(&self) -> crate::metrics::Gauges {
        let inner = self.lock();
        crate::metrics::Gauges {
            members: inner.membership.members().len(),
            map_epoch: inner.membership.epoch(),
            slots_lost: inner.membership.lost_count(),
        }
    }

    pub fn status(&self) -> engram_proto::ClusterStatus {
        let inner = self.lock();
        let mut status = inner.membership.status(self.now_ms());
        status.migrations = inner.orchestrator.migrations();
        status.bytes_moved_total = inner.bytes_moved_total;
        status.migration_milliseconds_total = inner.migration_milliseconds_total;
        status.last_error = inner.last_error.clone();
        status
    }

    /// Writes the state file atomically (temporary file, fsync, rename, fsync of the
    /// directory), so a crash leaves the old state or the new one, never a torn one.
    fn persist(&self, membership: &Membership) -> std::io::Result<()> {
        let bytes = membership.encode().map_err(std::io::Error::other)?;
        persist_to(&self.settings.data_dir, &bytes)
    }

    /// Applies `change` to a copy of the membership, persists the copy, and only then
    /// makes it current: a failed write leaves memory as it was on disk.
    fn change<T>(
        &self,
        inner: &mut Inner,
        change: impl FnOnce(&mut Membership) -> Result<T, crate::membership::MembershipError>,
    ) -> Result<T, String> {
        let mut next = inner.membership.clone();
        let value = change(&mut next).map_err(|error| error.to_string())?;
        self.persist(&next)
            .map_err(|error| format!("cannot persist the state: {error}"))?;
        inner.membership = next;
        Ok(value)
    }

    async fn handle(self: &Arc<Self>, command: ControlRequest) -> ControlResponse {
        let now_ms = self.now_ms();
        match command {
            ControlRequest::Ping => ControlResponse::Pong,
            ControlRequest::GetSlotMap => ControlResponse::SlotMap(self.lock().membership.map().clone()),
            ControlRequest::Join(request) => self.join(&request, now_ms),
            ControlRequest::Heartbeat(heartbeat) => self.heartbeat(&heartbeat, now_ms),
            ControlRequest::Status => ControlResponse::Status(Box::new(self.status())),
            ControlRequest::Rebalance => self.start_plan(None),
            ControlRequest::Drain { node_id } => self.start_plan(Some(node_id)),
            ControlRequest::Reclaim(request) => self.reclaim(&request, now_ms),
        }
    }

    fn join(self: &Arc<Self>, request: &engram_proto::JoinRequest, now_ms: u64) -> ControlResponse {
        let (joined, map) = {
            let mut inner = self.lock();
            match self.change(&mut inner, |membership| membership.join(request, now_ms)) {
                Ok(joined) => (joined, inner.membership.map().clone()),
                Err(error) => return error_response(ErrorCode::InvalidArgument, error),
            }
        };
        tracing::info!(
            node_id = joined.node_id,
            incarnation = joined.incarnation,
            front = %request.front_address,
            epoch = map.epoch,
            "node joined"
        );
        if !joined.lost.is_empty() {
            tracing::warn!(
                node_id = joined.node_id,
                slots = %format_slot_ranges(&joined.lost),
                count = joined.lost.len(),
                "node restarted with empty memory: the slots it owned are lost until `engram cluster reclaim`"
            );
            self.broadcast_map();
        }
        ControlResponse::Joined {
            node_id: joined.node_id,
            map,
            incarnation: joined.incarnation,
            liveness_timeout_ms: self.liveness_timeout_ms(),
        }
    }

    fn reclaim(self: &Arc<Self>, request: &engram_proto::ReclaimRequest, now_ms: u64) -> ControlResponse {
        let (slots, epoch) = {
            let mut inner = self.lock();
            if inner.orchestrator.is_busy() {
                return error_response(
                    ErrorCode::Busy,
                    crate::orchestrator::OrchestratorError::Busy.to_string(),
                );
            }
            match self.change(&mut inner, |membership| membership.reclaim(request, now_ms)) {
                Ok(slots) => (slots, inner.membership.epoch()),
                Err(error) => return error_response(ErrorCode::InvalidArgument, error),
            }
        };
        tracing::warn!(slots = %format_slot_ranges(&slots), count = slots.len(), epoch, "lost slots reclaimed, empty");
        self.broadcast_map();
        ControlResponse::Reclaimed {
            slots: slots.len() as u64,
            epoch,
        }
    }

    fn heartbeat(self: &Arc<Self>, heartbeat: &engram_proto::Heartbeat, now_ms: u64) -> ControlResponse {
        let mut inner = self.lock();
        if let Err(error) = inner.membership.heartbeat(heartbeat, now_ms) {
            return error_response(ErrorCode::InvalidArgument, error.to_string());
        }
        let restored = self.restore_if_back(&mut inner, heartbeat);
        if heartbeat.map_epoch > inner.membership.epoch() {
            let reported = heartbeat.map_epoch;
            if let Err(error) = self.change(&mut inner, |membership| {
                membership.raise_epoch_past(reported);
                Ok(())
            }) {
                return error_response(ErrorCode::Internal, error);
            }
            tracing::warn!(
                node_id = heartbeat.node_id,
                reported,
                epoch = inner.membership.epoch(),
                "a node knew a newer map than the state file; moved the epoch past it"
            );
        }
        // A migration the node holds open that no step here is running was decided
        // already (its map says how) or belongs to an earlier run of the control plane:
        // either way the node may let go of it.
        let abort_migrations = inner.orchestrator.abort_migrations(&heartbeat.migrations);
        let answer = ControlResponse::HeartbeatAck {
            map_epoch: inner.membership.epoch(),
            abort_migrations,
            liveness_timeout_ms: self.liveness_timeout_ms(),
        };
        // The broadcast takes the lock itself.
        drop(inner);
        if restored {
            self.broadcast_map();
        }
        answer
    }

    /// Gives a node declared dead its lost slots back when it beats again as the same
    /// process; returns whether it did.
    fn restore_if_back(&self, inner: &mut Inner, heartbeat: &engram_proto::Heartbeat) -> bool {
        let (node_id, incarnation) = (heartbeat.node_id, heartbeat.incarnation);
        if !inner.membership.restorable(node_id, incarnation) {
            return false;
        }
        match self.change(inner, |membership| Ok(membership.restore(node_id, incarnation))) {
            Ok(restored) => {
                tracing::warn!(
                    node_id,
                    slots = %format_slot_ranges(&restored),
                    count = restored.len(),
                    "a node declared dead is back with the same process: its slots are served again"
                );
                true
            }
            Err(error) => {
                tracing::warn!(node_id, %error, "cannot restore the slots of a node that is back");
                false
            }
        }
    }

    /// Plans an even spread of slots (after marking `drain` as draining) and starts it.
    fn start_plan(self: &Arc<Self>, drain: Option<u64>) -> ControlResponse {
        let now_ms = self.now_ms();
        let (slots_to_move, io) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.orchestrator.is_busy() {
                return error_response(
                    ErrorCode::Busy,
                    crate::orchestrator::OrchestratorError::Busy.to_string(),
                );
            }
            if let Some(node_id) = drain {
                if let Err(error) = self.change(inner, |membership| membership.drain(node_id)) {
                    return error_response(ErrorCode::InvalidArgument, error);
                }
            }
            let moves = match balance_moves(&inner.membership, now_ms) {
                Ok(moves) => moves,
                Err(error) => return error_response(ErrorCode::InvalidArgument, error.to_string()),
            };
            if moves.is_empty() {
                return ControlResponse::RebalanceStarted { slots_to_move: 0 };
            }
            inner.last_error.clear();
            let slots_to_move = moves.len() as u64;
            match inner.orchestrator.start_plan(moves, &inner.membership, now_ms) {
                Ok(effects) => (slots_to_move, self.settle_effects(inner, effects)),
                Err(error) => return error_response(ErrorCode::Busy, error.to_string()),
            }
        };
        self.perform(io);
        ControlResponse::RebalanceStarted { slots_to_move }
    }

    /// Feeds the orchestrator the answers and timers of the effects it asked for, for
    /// the life of the process.
    pub async fn orchestrate(self: Arc<Self>, mut events: Events) {
        while let Some(event) = events.recv().await {
            let io = {
                let mut guard = self.lock();
                let inner = &mut *guard;
                let now_ms = self.now_ms();
                let effects = inner.orchestrator.handle(event, &inner.membership, now_ms);
                self.settle_effects(inner, effects)
            };
            self.perform(io);
        }
    }

    /// Performs, under the lock, the effects that touch the state (persists, whose
    /// results are fed back at once, so a check and the commit it guards happen under
    /// one hold of the lock, and reports); returns the rest, to perform once the lock
    /// is released.
    fn settle_effects(&self, inner: &mut Inner, effects: Vec<Effect>) -> Vec<Effect> {
        let mut pending = VecDeque::from(effects);
        let mut io = Vec::new();
        while let Some(effect) = pending.pop_front() {
            match effect {
                Effect::Persist { token, change } => {
                    let result = self.change(inner, |membership| Ok(change.apply(membership)));
                    let event = Event::Persisted { token, result };
                    let now_ms = self.now_ms();
                    let next = inner.orchestrator.handle(event, &inner.membership, now_ms);
                    for effect in next.into_iter().rev() {
                        pending.push_front(effect);
                    }
                }
                Effect::Report(report) => report_to(inner, report),
                other => io.push(other),
            }
        }
        io
    }

    /// Calls, timers and broadcasts, each in a task of its own that feeds its result
    /// back through `events`.
    fn perform(self: &Arc<Self>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Call {
                    token,
                    address,
                    call,
                    timeout_ms,
                } => {
                    let credentials = self.settings.credentials.clone();
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        let timeout = Duration::from_millis(timeout_ms);
                        let identity = Identity::node(&credentials);
                        let result = call_once::<PeerProtocol>(&address, identity, &command_of(call), timeout)
                            .await
                            .map(answer_of)
                            .map_err(|error| error.to_string());
                        let _ = events.send(Event::Answered { token, result });
                    });
                }
                Effect::ArmTimer { token, at_ms } => {
                    let events = self.events.clone();
                    let at = self.started + Duration::from_millis(at_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let _ = events.send(Event::TimerFired { token });
                    });
                }
                Effect::BroadcastMap => self.broadcast_map(),
                Effect::Persist { .. } | Effect::Report(_) => {
                    unreachable!("settle_effects performs persists and reports")
                }
            }
        }
    }

    /// Sends the current map to every member's first shard port in the background; members
    /// that miss it catch up through their heartbeats.
    fn broadcast_map(self: &Arc<Self>) {
        let (map, addresses) = {
            let inner = self.lock();
            let addresses: Vec<String> = inner
                .membership
                .members()
                .iter()
                // Any shard port installs the node's map for all its shards; the front
                // port serves clients only.
                .filter_map(|member| member.shard_addresses.first().cloned())
                .collect();
            (inner.membership.map().clone(), addresses)
        };
        let credentials = self.settings.credentials.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
            let install = PeerRequest::InstallMap(map);
            for address in addresses {
                let _ = call_once::<PeerProtocol>(&address, Identity::node(&credentials), &install, timeout).await;
            }
        });
    }

    /// After a start: installs the persisted map on every member, then aborts every
    /// migration it did not commit (a previous control plane may have died mid-way).
    /// Returns once the first call is under way; plans wait until it has finished.
    pub async fn reconcile(self: Arc<Self>) {
        let io = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let now_ms = self.now_ms();
            let effects = inner.orchestrator.reconcile(&inner.membership, now_ms);
            self.settle_effects(inner, effects)
        };
        self.perform(io);
    }

    /// Forgets drained members that left, and moves slots off shards far busier than
    /// the rest.
    pub async fn housekeeping(self: Arc<Self>) {
        let mut last_load_check = Instant::now();
        let mut last_load_plan: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(HOUSEKEEPING_INTERVAL_MS)).await;
            let now_ms = self.now_ms();
            self.declare_dead();
            {
                let mut inner = self.lock();
                if !inner.orchestrator.is_busy() && inner.membership.clone().forget_departed(now_ms) {
                    match self.change(&mut inner, |membership| Ok(membership.forget_departed(now_ms))) {
                        Ok(_) => tracing::info!(epoch = inner.membership.epoch(), "forgot drained nodes that left"),
                        Err(error) => tracing::warn!(%error, "cannot forget departed nodes"),
                    }
                }
            }
            if self.settings.load_rebalance && last_load_check.elapsed() >= self.settings.load_check_interval {
                last_load_check = Instant::now();
                let cooling = last_load_plan
                    .is_some_and(|planned| planned.elapsed() < Duration::from_millis(LOAD_REBALANCE_COOLDOWN_MS));
                if !cooling && self.consider_load(now_ms) {
                    last_load_plan = Some(Instant::now());
                }
            }
        }
    }

    /// Declares silent members dead and loses their slots, saying so.
    fn declare_dead(self: &Arc<Self>) {
        let dead = {
            let mut inner = self.lock();
            // Read after the lock: heartbeats may have queued behind whoever held it.
            let now_ms = self.now_ms();
            let since_last_check_ms = now_ms.saturating_sub(inner.last_liveness_check_ms);
            inner.last_liveness_check_ms = now_ms;
            if since_last_check_ms > CONTROL_STALL_MS_MAX {
                // This process did not run (a pause, a starved machine, a long hold of
                // the lock): the silence it sees is its own, not its nodes'.
                tracing::warn!(
                    stalled_ms = since_last_check_ms,
                    "the control plane stalled; every node gets a full liveness timeout again"
                );
                inner.membership.hear_from_everyone(now_ms);
                return;
            }
            if !inner.membership.has_dead_to_declare(now_ms) {
                return;
            }
            match self.change(&mut inner, |membership| Ok(membership.declare_dead(now_ms))) {
                Ok(dead) => dead,
                Err(error) => {
                    tracing::warn!(%error, "cannot record dead nodes");
                    return;
                }
            }
        };
        for (node_id, lost) in &dead {
            tracing::warn!(
                node_id,
                slots = %format_slot_ranges(lost),
                count = lost.len(),
                "node declared dead: the slots it owned are lost until it comes back or `engram cluster reclaim`"
            );
        }
        self.broadcast_map();
    }

    /// Starts a plan moving slots off a shard far busier than the rest; returns whether
    /// it did.
    fn consider_load(self: &Arc<Self>, now_ms: u64) -> bool {
        let io = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.orchestrator.is_busy() {
                return false;
            }
            let shards = inner.membership.plan_shards(now_ms);
            let busiest = shards
                .iter()
                .map(|shard| shard.operations_per_second)
                .fold(0.0, f64::max);
            let fullest = shards.iter().map(|shard| shard.memory_bytes).max().unwrap_or(0);
            if busiest < LOAD_REBALANCE_OPERATIONS_PER_SECOND_MIN && fullest < LOAD_REBALANCE_MEMORY_BYTES_MIN {
                return false;
            }
            let policy = LoadPolicy {
                hot_ratio: 1.5,
                moves_max: MIGRATION_SLOTS_PER_STEP,
            };
            let moves = inner
                .membership
                .movable(plan_load(&shards, inner.membership.owners(), &|_| 1.0, &policy));
            if moves.is_empty() {
                return false;
            }
            tracing::info!(slots = moves.len(), "moving slots off a hot shard");
            match inner.orchestrator.start_plan(moves, &inner.membership, now_ms) {
                Ok(effects) => self.settle_effects(inner, effects),
                Err(_) => return false,
            }
        };
        self.perform(io);
        true
    }
}

/// A failure before the rename leaves the old state in force, and is an ordinary error.
/// Once the rename happened, the new state may or may not survive a crash: the process
/// cannot tell which state will be read at the next start, so it stops, and that start
/// (`reconcile`) settles whichever it finds.
fn persist_to(data_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let path = data_dir.join(STATE_FILE);
    let temporary = data_dir.join(format!("{STATE_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    let synced = std::fs::File::open(data_dir).and_then(|directory| directory.sync_all());
    if let Err(error) = synced {
        tracing::error!(%error, path = %path.display(), "state file renamed but not synced; stopping so the next start settles it");
        std::process::exit(1);
    }
    Ok(())
}

/// Logs and counts what the orchestrator reports, and keeps the figures and the last
/// error `engram cluster status` shows.
fn report_to(inner: &mut Inner, report: Report) {
    match report {
        Report::Committed {
            migration_id,
            slots,
            entries,
            bytes,
            elapsed_ms,
            epoch,
            source,
            target,
        } => tracing::info!(
            migration_id,
            slots,
            entries,
            bytes,
            elapsed_ms,
            epoch,
            %source,
            %target,
            "migration committed"
        ),
        Report::MapNotInstalled { address, error } => {
            tracing::warn!(%address, %error, "map not installed; the node will fetch it");
        }
        Report::StepMoved {
            slots,
            bytes,
            elapsed_ms,
        } => {
            inner.bytes_moved_total += bytes;
            inner.migration_milliseconds_total += elapsed_ms;
            crate::metrics::record_migration("committed", slots as u64, bytes);
        }
        Report::StepAborted { migration_id, reason } => {
            tracing::debug!(migration_id, %reason, "migration aborting");
            crate::metrics::record_migration("aborted", 0, 0);
        }
        Report::AbortNotDelivered {
            migration_id,
            address,
            error,
        } => tracing::warn!(migration_id, %address, %error, "abort not delivered"),
        Report::SkippingDeadSource { reason } => tracing::warn!(%reason, "skipping moves off a dead node"),
        Report::PlanEnded {
            moved,
            total,
            elapsed_ms,
            failure,
        } => match failure {
            Some(reason) => {
                tracing::warn!(moved, total, %reason, "plan stopped early");
                inner.last_error = reason;
            }
            None => {
                tracing::info!(moved, total, elapsed_ms, "plan finished");
                inner.last_error.clear();
            }
        },
        Report::NotReconciled { address, error } => {
            tracing::info!(%address, %error, "could not reconcile a shard (down?)");
        }
    }
}

/// The wire command of a call the orchestrator asked for.
fn command_of(call: NodeCall) -> PeerRequest {
    match call {
        NodeCall::MigrateOut {
            migration_id,
            slots,
            target_address,
        } => PeerRequest::MigrateOut(MigrateOut {
            migration_id,
            slots,
            target_address,
        }),
        NodeCall::InstallMap(map) => PeerRequest::InstallMap(map),
        NodeCall::MigrateAbort {
            migration_id,
            map_epoch,
        } => PeerRequest::MigrateAbort {
            migration_id,
            map_epoch,
        },
    }
}

/// A node's wire answer, as the orchestrator takes it.
fn answer_of(response: PeerResponse) -> Answer {
    match response {
        PeerResponse::MigrationPrepared { entries, bytes } => Answer::Prepared { entries, bytes },
        PeerResponse::Accepted => Answer::Accepted,
        PeerResponse::Error(reply) => Answer::Refused { message: reply.message },
    }
}

fn error_reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code: code.as_u16(),
        message: message.into(),
        map_epoch: 0,
    }
}

/// An error answer to a request of the control family.
fn error_response(code: ErrorCode, message: impl Into<String>) -> ControlResponse {
    ControlResponse::Error(error_reply(code, message))
}

/// What engram-control is to a Hello.
const PORT: Port<'static> = Port {
    name: "engram-control",
    families: &[Family::Control],
};

/// Accepts connections forever, one task each.
pub async fn serve(controller: Arc<Controller>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(controller.clone(), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers a connection's frames in order, one at a time, until it closes or breaks
/// the protocol (which is answered with an error under request id 0 before closing).
async fn serve_connection(controller: Arc<Controller>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut input = FrameBuffer::new(FrameBufferSizes::LINK);
    let mut out = Vec::new();
    let mut greeted = false;
    loop {
        loop {
            let (header, payload) = match input.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    let refusal = Refusal {
                        code: error.code(),
                        message: error.to_string(),
                    };
                    let _ = encode_refusal(greeted, 0, refusal, &mut out);
                    let _ = stream.write_all(&out).await;
                    return;
                }
            };
            out.clear();
            let answered = match greeted {
                false => greet(&controller, &header, payload, &mut out),
                true => answer(&controller, &header, payload, &mut out).await,
            };
            greeted = true;
            if stream.write_all(&out).await.is_err() || !answered {
                return;
            }
        }
        if !matches!(fill(&mut stream, &mut input).await, Ok(read) if read > 0) {
            return;
        }
    }
}

/// Encodes the answer to the first frame: a HelloReply, or the refusal; `false` when the
/// connection ends with it.
fn greet(controller: &Controller, header: &FrameHeader, payload: &[u8], out: &mut Vec<u8>) -> bool {
    let credentials = &controller.settings.credentials;
    let expected = (!credentials.is_empty()).then_some(&credentials[..]);
    match admit(header.kind, payload, &PORT, expected) {
        Ok(_) => {
            let reply = HelloReply {
                node_id: 0,
                shard_id: FRONT_SHARD_ID,
                shard_count: 0,
                map_epoch: controller.epoch(),
                server_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            encode_message(FrameKind::HelloReply, header.request_id, 0, &reply, out).is_ok()
        }
        Err(refusal) => {
            let _ = encode_refusal(false, header.request_id, refusal, out);
            false
        }
    }
}

/// Encodes the answer to a request of an admitted connection.
async fn answer(controller: &Arc<Controller>, header: &FrameHeader, payload: &[u8], out: &mut Vec<u8>) -> bool {
    let answer = if header.kind != FrameKind::Request {
        error_response(ErrorCode::Malformed, "expected a request frame")
    } else {
        match decode_payload::<ControlRequest>(payload) {
            Ok(request) => controller.handle(request).await,
            Err(error) => error_response(error.code(), error.to_string()),
        }
    };
    let epoch = controller.epoch();
    encode_message(FrameKind::Response, header.request_id, epoch, &answer, out).is_ok()
}

/// A refusal in the family the connection speaks: a client-family error until the Hello
/// is accepted, since no family is agreed before that.
fn encode_refusal(
    greeted: bool,
    request_id: u64,
    refusal: Refusal,
    out: &mut Vec<u8>,
) -> Result<(), engram_proto::ProtocolError> {
    let reply = error_reply(refusal.code, refusal.message);
    match greeted {
        true => encode_message(FrameKind::Response, request_id, 0, &ControlResponse::Error(reply), out),
        false => encode_message(FrameKind::Response, request_id, 0, &Response::Error(reply), out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(data_dir: PathBuf) -> Settings {
        Settings {
            data_dir,
            credentials: Vec::new(),
            load_rebalance: false,
            load_check_interval: Duration::from_millis(LOAD_CHECK_INTERVAL_MS_DEFAULT),
            liveness_timeout: Duration::from_millis(crate::membership::LIVENESS_TIMEOUT_MS),
        }
    }

    #[test]
    fn a_second_control_plane_on_the_same_data_dir_refuses_to_start() {
        let data_dir = std::env::temp_dir().join(format!("engram-control-lock-{}", std::process::id()));
        let (first, _plans) = Controller::open(settings(data_dir.clone())).expect("first opens");
        assert!(matches!(
            Controller::open(settings(data_dir.clone())),
            Err(ControlError::DataDirInUse { .. })
        ));
        drop(first);
        drop(_plans);
        Controller::open(settings(data_dir.clone())).expect("opens once the first is gone");
        let _ = std::fs::remove_dir_all(data_dir);
    }
}
