//! The `engram-control` process: serves the control protocol (join, heartbeat, map,
//! status, rebalance, drain) and runs migrations one at a time as the coordinator of
//! their two-phase hand-over (see the server's `migration` module).
//!
//! The commit point of a migration is the write of the new map to the state file: a
//! control plane that restarts finds either the old map (and aborts every migration the
//! nodes still hold) or the new one (and installs it, which commits).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engram_proto::limits::PROTOCOL_VERSION;
use engram_proto::{
    decode_payload, encode_message, format_slot_ranges, Command, ErrorCode, ErrorReply, FrameKind, Hello, HelloReply,
    MigrateOut, MigrationStatus, Request, Response, FRONT_SHARD_ID,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::link::{call_once, read_frame};
use crate::membership::Membership;
use crate::planner::{group_moves, plan_balance, plan_load, LoadPolicy, Move, ShardRef};

/// Slots one migration step moves: a step freezes its slots for the time it takes to
/// copy them, so steps stay small enough that the freeze is short.
pub const MIGRATION_SLOTS_PER_STEP: usize = 128;
/// How long the source may take to copy one step to the target.
pub const MIGRATE_OUT_TIMEOUT_MS: u64 = 120_000;
/// Migration ids reserved with one write of the state file.
pub const MIGRATION_IDS_RESERVED_PER_WRITE: u64 = 1024;
/// Bound on every other call to a node.
pub const NODE_CALL_TIMEOUT_MS: u64 = 5_000;
/// Plans waiting to run at most.
pub const PLANS_QUEUED_MAX: usize = 4;
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

/// How often a running migration checks that its source and target still heartbeat.
const TARGET_WATCH_INTERVAL_MS: u64 = 250;

/// Everything the control plane knows, behind one lock held only for in-memory work
/// and the state-file write, never across a network call.
pub struct Controller {
    started: Instant,
    /// Held (locked) for the life of the process.
    _data_lock: std::fs::File,
    settings: Settings,
    inner: Mutex<Inner>,
    plans: mpsc::Sender<Vec<Move>>,
}

struct Inner {
    membership: Membership,
    /// Reserved migration ids not handed out yet.
    migration_ids: std::ops::Range<u64>,
    migrations: Vec<MigrationStatus>,
    plan_running: bool,
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
    /// receiver its orchestrator runs plans from.
    pub fn open(settings: Settings) -> Result<(Arc<Controller>, mpsc::Receiver<Vec<Move>>), ControlError> {
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
        let (plans, receiver) = mpsc::channel(PLANS_QUEUED_MAX);
        let controller = Arc::new(Controller {
            started: Instant::now(),
            _data_lock: data_lock,
            settings,
            inner: Mutex::new(Inner {
                membership,
                migration_ids: 0..0,
                migrations: Vec::new(),
                // Until `reconcile` has settled what an earlier run left open, no plan
                // may start: it would race the abort of everything uncommitted.
                plan_running: true,
                bytes_moved_total: 0,
                last_liveness_check_ms: 0,
                migration_milliseconds_total: 0,
                last_error: String::new(),
            }),
            plans,
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
        status.migrations = inner.migrations.clone();
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

    async fn handle(self: &Arc<Self>, command: Command) -> Response {
        let now_ms = self.now_ms();
        match command {
            Command::Ping => Response::Pong,
            Command::GetSlotMap => Response::SlotMap(self.lock().membership.map().clone()),
            Command::ClusterJoin(request) => self.join(&request, now_ms),
            Command::ClusterHeartbeat(heartbeat) => self.heartbeat(&heartbeat, now_ms),
            Command::ClusterStatus => Response::ClusterStatus(Box::new(self.status())),
            Command::ClusterRebalance => self.start_plan(None),
            Command::ClusterDrain { node_id } => self.start_plan(Some(node_id)),
            Command::ClusterReclaim(request) => self.reclaim(&request, now_ms),
            other => error_response(
                ErrorCode::InvalidArgument,
                format!("{} is not a control-plane command", other.name()),
            ),
        }
    }

    fn join(self: &Arc<Self>, request: &engram_proto::JoinRequest, now_ms: u64) -> Response {
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
        Response::Joined {
            node_id: joined.node_id,
            map,
            incarnation: joined.incarnation,
            liveness_timeout_ms: self.liveness_timeout_ms(),
        }
    }

    fn reclaim(self: &Arc<Self>, request: &engram_proto::ReclaimRequest, now_ms: u64) -> Response {
        let (slots, epoch) = {
            let mut inner = self.lock();
            if inner.plan_running {
                return error_response(
                    ErrorCode::Busy,
                    "a rebalance (or the start-up reconcile) is running; retry when it has finished",
                );
            }
            match self.change(&mut inner, |membership| membership.reclaim(request, now_ms)) {
                Ok(slots) => (slots, inner.membership.epoch()),
                Err(error) => return error_response(ErrorCode::InvalidArgument, error),
            }
        };
        tracing::warn!(slots = %format_slot_ranges(&slots), count = slots.len(), epoch, "lost slots reclaimed, empty");
        self.broadcast_map();
        Response::Reclaimed {
            slots: slots.len() as u64,
            epoch,
        }
    }

    fn heartbeat(self: &Arc<Self>, heartbeat: &engram_proto::Heartbeat, now_ms: u64) -> Response {
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
        let running: Vec<u64> = inner
            .migrations
            .iter()
            .map(|migration| migration.migration_id)
            .collect();
        let abort_migrations = heartbeat
            .migrations
            .iter()
            .copied()
            .filter(|id| !running.contains(id))
            .collect();
        let answer = Response::HeartbeatAck {
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

    /// Plans an even spread of slots (after marking `drain` as draining) and queues it.
    fn start_plan(self: &Arc<Self>, drain: Option<u64>) -> Response {
        let now_ms = self.now_ms();
        let moves = {
            let mut inner = self.lock();
            if inner.plan_running {
                return error_response(
                    ErrorCode::Busy,
                    "a rebalance (or the start-up reconcile) is running; retry when it has finished",
                );
            }
            if let Some(node_id) = drain {
                if let Err(error) = self.change(&mut inner, |membership| membership.drain(node_id)) {
                    return error_response(ErrorCode::InvalidArgument, error);
                }
            }
            let shards = inner.membership.plan_shards(now_ms);
            match plan_balance(&shards, inner.membership.owners()) {
                Ok(moves) => {
                    let moves = inner.membership.movable(moves);
                    if !moves.is_empty() {
                        inner.plan_running = true;
                        inner.last_error.clear();
                    }
                    moves
                }
                Err(error) => return error_response(ErrorCode::InvalidArgument, error.to_string()),
            }
        };
        let slots_to_move = moves.len() as u64;
        if !moves.is_empty() && self.plans.try_send(moves).is_err() {
            self.lock().plan_running = false;
            return error_response(ErrorCode::Busy, "plans_queued_max plans are already queued");
        }
        Response::RebalanceStarted { slots_to_move }
    }

    /// Runs plans as they come, one migration step at a time.
    pub async fn orchestrate(self: Arc<Self>, mut plans: mpsc::Receiver<Vec<Move>>) {
        while let Some(moves) = plans.recv().await {
            let started = Instant::now();
            let total = moves.len();
            let mut moved = 0usize;
            let mut failure = None;
            'plan: for (from, to, slots) in group_moves(&moves) {
                for step in slots.chunks(MIGRATION_SLOTS_PER_STEP) {
                    match self.migrate(from, to, step).await {
                        Ok(()) => moved += step.len(),
                        // Nothing can be copied off a dead node; the rest of the plan
                        // does not depend on it.
                        Err(StepError::SourceDead(reason)) => {
                            tracing::warn!(%reason, "skipping moves off a dead node");
                            failure = Some(reason);
                            continue 'plan;
                        }
                        Err(StepError::Failed(reason)) => {
                            failure = Some(reason);
                            break 'plan;
                        }
                    }
                }
            }
            let mut inner = self.lock();
            inner.plan_running = false;
            match failure {
                Some(reason) => {
                    tracing::warn!(moved, total, %reason, "plan stopped early");
                    inner.last_error = reason;
                }
                None => {
                    tracing::info!(
                        moved,
                        total,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "plan finished"
                    );
                    inner.last_error.clear();
                }
            }
        }
    }

    /// One two-phase migration step of `slots` from `from` to `to`.
    async fn migrate(self: &Arc<Self>, from: ShardRef, to: ShardRef, slots: &[u32]) -> Result<(), StepError> {
        let now_ms = self.now_ms();
        let (migration_id, source, target) = {
            let mut inner = self.lock();
            if !inner.membership.is_responsive(from.node_id, now_ms) {
                return Err(StepError::SourceDead(format!(
                    "node {} is silent: its slots cannot be copied off it",
                    from.node_id
                )));
            }
            if !inner.membership.is_responsive(to.node_id, now_ms) {
                return Err(StepError::Failed(format!("node {} is silent", to.node_id)));
            }
            let (Some(source), Some(target)) = (
                inner.membership.shard_address(from).map(str::to_string),
                inner.membership.shard_address(to).map(str::to_string),
            ) else {
                return Err(StepError::Failed("a shard of the plan left the cluster".into()));
            };
            // Reserved (persisted) before use, so ids never repeat across restarts and a
            // late batch of an old migration can never pass for one of a new migration.
            if inner.migration_ids.is_empty() {
                inner.migration_ids = self
                    .change(&mut inner, |membership| {
                        Ok(membership.reserve_migration_ids(MIGRATION_IDS_RESERVED_PER_WRITE))
                    })
                    .map_err(StepError::Failed)?;
            }
            let migration_id = inner
                .migration_ids
                .next()
                .ok_or_else(|| StepError::Failed("no migration id".into()))?;
            inner.migrations.push(MigrationStatus {
                migration_id,
                source: source.clone(),
                target: target.clone(),
                slots: slots.len() as u32,
            });
            (migration_id, source, target)
        };
        let started = Instant::now();
        let outcome = self
            .prepare_and_commit(migration_id, &source, &target, [from, to], slots)
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        {
            let mut inner = self.lock();
            inner
                .migrations
                .retain(|migration| migration.migration_id != migration_id);
            if let Ok(bytes) = outcome {
                inner.bytes_moved_total += bytes;
                inner.migration_milliseconds_total += elapsed_ms;
            }
        }
        match outcome {
            Ok(bytes) => {
                crate::metrics::record_migration("committed", slots.len() as u64, bytes);
                Ok(())
            }
            Err(reason) => {
                crate::metrics::record_migration("aborted", 0, 0);
                // Best effort: a node that misses the abort still learns it on the next
                // control-plane start, which aborts every uncommitted migration.
                let credentials = &self.settings.credentials;
                let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
                let map_epoch = self.epoch();
                for address in [&source, &target] {
                    let abort = Command::MigrateAbort {
                        migration_id,
                        map_epoch,
                    };
                    if let Err(error) = call_once(address, credentials, abort, timeout).await {
                        tracing::warn!(migration_id, %address, %error, "abort not delivered");
                    }
                }
                Err(StepError::Failed(format!(
                    "migration {migration_id} of {} slots from {source} to {target} aborted: {reason}",
                    slots.len()
                )))
            }
        }
    }

    async fn prepare_and_commit(
        self: &Arc<Self>,
        migration_id: u64,
        source: &str,
        target: &str,
        [from, to]: [ShardRef; 2],
        slots: &[u32],
    ) -> Result<u64, String> {
        let credentials = &self.settings.credentials;
        let order = Command::MigrateOut(MigrateOut {
            migration_id,
            slots: slots.to_vec(),
            target_address: target.to_string(),
        });
        let started = Instant::now();
        let prepare = call_once(
            source,
            credentials,
            order,
            Duration::from_millis(MIGRATE_OUT_TIMEOUT_MS),
        );
        let prepared = tokio::select! {
            prepared = prepare => prepared.map_err(|error| error.to_string())?,
            silent = self.until_silent([from.node_id, to.node_id]) => return Err(silent),
        };
        let (entries, bytes) = match prepared {
            Response::MigrationPrepared { entries, bytes } => (entries, bytes),
            Response::Error(reply) => return Err(reply.message),
            other => return Err(format!("the source answered {}", other.name())),
        };
        // The commit point: once the new map is on disk, the target owns the slots.
        let map = {
            let mut inner = self.lock();
            if !inner.membership.is_responsive(to.node_id, self.now_ms()) {
                return Err(format!("target node {} went silent before the commit", to.node_id));
            }
            self.change(&mut inner, |membership| Ok(membership.commit_move(slots, to).clone()))?
        };
        let elapsed = started.elapsed();
        tracing::info!(
            migration_id,
            slots = slots.len(),
            entries,
            bytes,
            elapsed_ms = elapsed.as_millis() as u64,
            epoch = map.epoch,
            %source,
            %target,
            "migration committed"
        );
        let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
        for address in [source, target] {
            if let Err(error) = call_once(address, credentials, Command::InstallMap(map.clone()), timeout).await {
                // The node fetches the map with its next heartbeat instead.
                tracing::warn!(%address, %error, "map not installed; the node will fetch it");
            }
        }
        self.broadcast_map();
        Ok(bytes)
    }

    /// Returns (with the reason) once one of `nodes` has been silent for longer than
    /// a migration's source or target may be: a migration towards a paused node is
    /// aborted rather than left freezing its slots at the source until the copy times
    /// out, and one from a paused node rather than waited for.
    async fn until_silent(&self, nodes: [u64; 2]) -> String {
        loop {
            tokio::time::sleep(Duration::from_millis(TARGET_WATCH_INTERVAL_MS)).await;
            let now_ms = self.now_ms();
            let inner = self.lock();
            if let Some(node_id) = nodes
                .iter()
                .find(|&&node_id| !inner.membership.is_responsive(node_id, now_ms))
            {
                return format!("node {node_id} went silent during the copy");
            }
        }
    }

    /// Sends the current map to every member's front port in the background; members
    /// that miss it catch up through their heartbeats.
    fn broadcast_map(self: &Arc<Self>) {
        let (map, addresses) = {
            let inner = self.lock();
            let addresses: Vec<String> = inner
                .membership
                .members()
                .iter()
                .map(|member| member.front_address.clone())
                .collect();
            (inner.membership.map().clone(), addresses)
        };
        let credentials = self.settings.credentials.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
            for address in addresses {
                let _ = call_once(&address, &credentials, Command::InstallMap(map.clone()), timeout).await;
            }
        });
    }

    /// After a start: installs the persisted map on every member, then aborts every
    /// migration it did not commit (a previous control plane may have died mid-way).
    pub async fn reconcile(self: Arc<Self>) {
        let (map, members) = {
            let inner = self.lock();
            (inner.membership.map().clone(), inner.membership.members().to_vec())
        };
        let credentials = &self.settings.credentials;
        let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
        for member in members {
            for address in &member.shard_addresses {
                // The abort only after the shard holds the persisted map: a shard behind
                // it might otherwise unfreeze slots whose migration committed. (It would
                // refuse anyway: the abort names the epoch it was decided under.)
                let settled = match call_once(address, credentials, Command::InstallMap(map.clone()), timeout).await {
                    Ok(_) => {
                        let abort = Command::MigrateAbort {
                            migration_id: 0,
                            map_epoch: map.epoch,
                        };
                        call_once(address, credentials, abort, timeout).await.map(drop)
                    }
                    Err(error) => Err(error),
                };
                if let Err(error) = settled {
                    // Its heartbeats settle it once it is back.
                    tracing::info!(%address, %error, "could not reconcile a shard (down?)");
                }
            }
        }
        self.lock().plan_running = false;
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
                if !inner.plan_running && inner.membership.clone().forget_departed(now_ms) {
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

    /// Queues a plan moving slots off a shard far busier than the rest; returns whether
    /// it did.
    fn consider_load(self: &Arc<Self>, now_ms: u64) -> bool {
        let moves = {
            let mut inner = self.lock();
            if inner.plan_running {
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
            inner.plan_running = true;
            moves
        };
        tracing::info!(slots = moves.len(), "moving slots off a hot shard");
        if self.plans.try_send(moves).is_err() {
            self.lock().plan_running = false;
            return false;
        }
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

/// Why a migration step did not happen.
enum StepError {
    /// The source is dead: its slots stay where they are; the plan goes on without them.
    SourceDead(String),
    /// The step was aborted; the plan stops here.
    Failed(String),
}

fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        code: code.as_u16(),
        message: message.into(),
        map_epoch: 0,
    })
}

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

async fn serve_connection(controller: Arc<Controller>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    let mut greeted = false;
    loop {
        let (header, payload) = match read_frame(&mut stream, &mut buffer).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => {
                let answer = error_response(error.code(), error.to_string());
                let _ = encode_message(FrameKind::Response, 0, 0, &answer, &mut out);
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        out.clear();
        let answer = if !greeted {
            match accept_hello(&controller, header.kind, &payload) {
                Ok(reply) => {
                    greeted = true;
                    let _ = encode_message(FrameKind::HelloReply, header.request_id, 0, &reply, &mut out);
                    None
                }
                Err(refusal) => {
                    let _ = encode_message(FrameKind::Response, header.request_id, 0, &refusal, &mut out);
                    let _ = stream.write_all(&out).await;
                    return;
                }
            }
        } else if header.kind != FrameKind::Request {
            Some(error_response(ErrorCode::Malformed, "expected a request frame"))
        } else {
            match decode_payload::<Request>(&payload) {
                Ok(request) => Some(controller.handle(request.command).await),
                Err(error) => Some(error_response(error.code(), error.to_string())),
            }
        };
        if let Some(answer) = answer {
            let epoch = controller.epoch();
            if encode_message(FrameKind::Response, header.request_id, epoch, &answer, &mut out).is_err() {
                return;
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn accept_hello(controller: &Controller, kind: FrameKind, payload: &[u8]) -> Result<HelloReply, Response> {
    if kind != FrameKind::Hello {
        return Err(error_response(
            ErrorCode::HandshakeRequired,
            "the first frame must be a Hello",
        ));
    }
    let hello = decode_payload::<Hello>(payload).map_err(|error| error_response(error.code(), error.to_string()))?;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(error_response(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {} is not {PROTOCOL_VERSION}", hello.protocol_version),
        ));
    }
    let expected = &controller.settings.credentials;
    let matches = expected.len() == hello.credentials.len()
        && expected
            .iter()
            .zip(&hello.credentials)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0;
    if !expected.is_empty() && !matches {
        return Err(error_response(ErrorCode::Unauthorized, "credentials refused"));
    }
    Ok(HelloReply {
        node_id: 0,
        shard_id: FRONT_SHARD_ID,
        shard_count: 0,
        map_epoch: controller.epoch(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    })
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
