//! The `engram-control` process: serves the control protocol (join, heartbeat, map,
//! status, rebalance, drain) and drives the migration orchestrator
//! ([`crate::orchestrator`], sans-I/O) over real links: it performs the orchestrator's
//! effects (calls to shard ports, state-file writes, timers, map broadcasts) and feeds
//! their results back as events.
//!
//! The commit point of a migration is the write of the new map to the state store (a
//! file, or etcd): a control plane that restarts or takes over finds either the old map
//! (and aborts every migration the nodes still hold) or the new one (and installs it,
//! which commits).
//!
//! With etcd, several processes run and one leads (`crate::election`): the others are
//! standbys that answer every control request but `Ping` with `NotLeader`, naming the
//! leader they know of. A standby that becomes leader reads the state, hears from every
//! member afresh (a whole liveness timeout before it declares anyone dead) and runs the
//! reconcile; a leader whose write etcd refuses stands by at once. The leader also says
//! where the state lives, and with etcd how each endpoint answers (`ControlPlane`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engram_link_tokio::call_once;
use engram_proto::{
    format_slot_ranges, ControlPlaneStatus, ControlRequest, ControlResponse, ErrorCode, ErrorReply, Gatekeeper,
    HandOver, Identity, MigrateOut, PeerProtocol, PeerRequest, PeerResponse, StateStoreStatus,
};
use engram_tls::ClientTls;
use tokio::sync::mpsc;

use crate::membership::Membership;
use crate::orchestrator::{balance_moves, Answer, Effect, Event, NodeCall, Orchestrator, Report};
pub use crate::orchestrator::{
    MIGRATE_OUT_TIMEOUT_MS, MIGRATION_IDS_RESERVED_PER_WRITE, MIGRATION_SLOTS_PER_STEP, NODE_CALL_TIMEOUT_MS,
};
use crate::planner::{plan_load, LoadPolicy};
use crate::state::{EtcdHealth, EtcdTerm, SaveError, StateError, StateFile, StateStore};

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
    /// Who may connect: nodes with the node right, operators with admin.
    pub gatekeeper: Arc<Gatekeeper>,
    /// What this process's calls to nodes present (`--node-token`).
    pub link_credentials: Vec<u8>,
    /// What calls to nodes connect with, when the cluster speaks TLS.
    pub peer_tls: Option<ClientTls>,
    pub load_rebalance: bool,
    pub load_check_interval: Duration,
    /// Silence after which a node is declared dead and its slots go to their backups.
    pub liveness_timeout: Duration,
    /// Backups each slot gets (`--replicas`).
    pub replicas: usize,
}

/// A look for dead nodes later than this after the previous one means the control
/// plane itself stalled (housekeeping runs every `HOUSEKEEPING_INTERVAL_MS`).
const CONTROL_STALL_MS_MAX: u64 = 3 * HOUSEKEEPING_INTERVAL_MS;

/// Everything the control plane knows, behind one lock held only for in-memory work
/// and the state-file write, never across a network call.
pub struct Controller {
    started: Instant,
    settings: Settings,
    /// Where the state lives, for `engram cluster status`.
    store: StoreView,
    /// Set when a save may or may not have taken effect: from then on nothing changes,
    /// and the process is told to stop (see [`Controller::halted`]).
    halt: tokio::sync::watch::Sender<Option<String>>,
    inner: Mutex<Inner>,
    /// Answers and timers for the orchestrator, sent by the tasks that wait for them,
    /// with the term they belong to. Unbounded but small: a step has at most one call
    /// and one timer outstanding.
    events: mpsc::UnboundedSender<(u64, Event)>,
    /// Told when a save deposed this process (etcd refused it, or its outcome is
    /// unknown), for the election to step down and campaign again.
    deposed: tokio::sync::Notify,
}

/// The receiver [`Controller::orchestrate`] feeds the orchestrator from.
pub type Events = mpsc::UnboundedReceiver<(u64, Event)>;

/// Where the state lives, as the leader reports it.
enum StoreView {
    /// The state file (`--data`).
    File(PathBuf),
    /// etcd (`--etcd`), whose endpoints are probed when asked.
    Etcd(EtcdHealth),
}

/// Whether this process acts on the state.
enum Role {
    /// It owns the state store: the file, or an etcd term of its leadership.
    Leading(StateStore),
    /// Another process leads (at this address, when known); the membership here is
    /// whatever was current when this process last led, and nothing acts on it.
    Standby { leader: Option<String> },
}

/// Effects to perform once the lock is released, with the term they belong to.
struct Pending {
    term: u64,
    effects: Vec<Effect>,
}

struct Inner {
    role: Role,
    /// With etcd, the instant past which this process may no longer lead (its lease may
    /// have lapsed), as the election last computed it; `None` with a state file. Requests
    /// are not answered as the leader past it, even before the election has stepped down.
    lease_bound: Option<Instant>,
    /// Bumped whenever leadership is taken or lost, so answers and timers of an earlier
    /// term are not fed to this term's orchestrator.
    term: u64,
    membership: Membership,
    orchestrator: Orchestrator,
    bytes_moved_total: u64,
    migration_milliseconds_total: u64,
    last_error: String,
    /// When the last look for dead nodes ran, to tell the control plane's own stalls
    /// from its nodes' silence.
    last_liveness_check_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    StateFile(#[from] StateError),
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: crate::membership::MembershipError,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("stopped: {reason}")]
    Halted { reason: String },
}

impl Controller {
    /// Locks the data directory, loads the state file (or starts empty), and returns the
    /// controller, leading, and the receiver of its orchestrator's events (for
    /// [`Controller::orchestrate`]).
    pub fn open(settings: Settings, data_dir: &Path) -> Result<(Arc<Controller>, Events), ControlError> {
        let (state_file, saved) = StateFile::open(data_dir)?;
        let mut membership = match saved {
            Some(bytes) => Membership::decode(&bytes).map_err(|source| ControlError::State {
                path: state_file.path(),
                source,
            })?,
            None => Membership::new(),
        };
        apply_settings(&settings, &mut membership);
        start_fill_generations(&mut membership);
        let store = StoreView::File(state_file.path());
        Ok(Controller::new(
            settings,
            store,
            Role::Leading(StateStore::File(state_file)),
            membership,
        ))
    }

    /// A controller with its state in etcd, which stands by until the election makes it
    /// lead ([`Controller::take_over`]); `etcd` probes the endpoints for status answers.
    pub fn standby(settings: Settings, etcd: EtcdHealth) -> (Arc<Controller>, Events) {
        Controller::new(
            settings,
            StoreView::Etcd(etcd),
            Role::Standby { leader: None },
            Membership::new(),
        )
    }

    fn new(settings: Settings, store: StoreView, role: Role, membership: Membership) -> (Arc<Controller>, Events) {
        let (events, receiver) = mpsc::unbounded_channel();
        let controller = Arc::new(Controller {
            started: Instant::now(),
            settings,
            store,
            halt: tokio::sync::watch::Sender::new(None),
            inner: Mutex::new(Inner {
                role,
                lease_bound: None,
                term: 1,
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
            deposed: tokio::sync::Notify::new(),
        });
        (controller, receiver)
    }

    /// Makes this process the leader of `term`, with the state it read right after it
    /// took the leader key: every member counts as just heard from (a whole liveness
    /// timeout before anyone is declared dead), and the reconcile settles whatever the
    /// previous leader left open before any plan runs.
    pub fn take_over(self: &Arc<Self>, term: EtcdTerm, saved: Option<Vec<u8>>) -> Result<(), ControlError> {
        let mut membership = match saved {
            Some(bytes) => Membership::decode(&bytes).map_err(|source| ControlError::State {
                path: PathBuf::from(&term.keys().state),
                source,
            })?,
            None => Membership::new(),
        };
        apply_settings(&self.settings, &mut membership);
        start_fill_generations(&mut membership);
        {
            let mut inner = self.lock();
            let now_ms = self.now_ms();
            membership.hear_from_everyone(now_ms);
            inner.membership = membership;
            inner.orchestrator = Orchestrator::new(crate::orchestrator::Config::default());
            inner.role = Role::Leading(StateStore::Etcd(term));
            inner.term += 1;
            inner.last_liveness_check_ms = now_ms;
            tracing::info!(
                epoch = inner.membership.epoch(),
                members = inner.membership.members().len(),
                "leading: took over the state; reconciling what the previous leader left open"
            );
        }
        tokio::spawn(self.clone().reconcile());
        Ok(())
    }

    /// Stops acting as leader (the election lost the lease, or etcd refused a write);
    /// requests are answered `NotLeader` from now on.
    pub fn step_down(&self, reason: &str) {
        let mut inner = self.lock();
        if matches!(inner.role, Role::Leading(_)) {
            tracing::warn!(
                reason,
                epoch = inner.membership.epoch(),
                "stepped down: no longer leading"
            );
        }
        stand_by(&mut inner);
    }

    /// Who leads, as the election knows it: what a standby answers.
    pub fn follow(&self, leader: Option<String>) {
        if let Role::Standby { leader: known } = &mut self.lock().role {
            *known = leader;
        }
    }

    /// Whether this process leads now.
    pub fn is_leading(&self) -> bool {
        self.lock().leads(Instant::now())
    }

    /// The election's lease bound (see [`Inner::lease_bound`]): set before every change
    /// of role the election makes, so a process that was paused past it (its election
    /// has not run yet) answers no request as the leader.
    pub fn bound_lease(&self, bound: Instant) {
        self.lock().lease_bound = Some(bound);
    }

    /// Resolves when a save deposed this process (see [`SaveError::deposes`]).
    pub async fn deposed(&self) {
        self.deposed.notified().await;
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

    /// Who may connect, as `--credentials-file` or `--auth-token` say.
    pub fn gate(&self) -> Arc<engram_proto::Gate> {
        self.settings.gatekeeper.gate()
    }

    /// How many credentials reloads took effect (read before [`Controller::gate`]).
    pub fn gate_generation(&self) -> u64 {
        self.settings.gatekeeper.generation()
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
            under_replicated_slots: inner.membership.under_replicated(),
            slots_filling: inner.membership.slots_filling(),
            failovers_total: inner.membership.failovers_total(),
            leading: inner.leads(Instant::now()),
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

    /// Where the state lives; with etcd, how each endpoint answers now (asked outside
    /// the lock, each within `ETCD_HEALTH_TIMEOUT_MS`).
    pub async fn control_plane_status(&self) -> ControlPlaneStatus {
        let store = match &self.store {
            StoreView::File(path) => StateStoreStatus::File {
                path: path.display().to_string(),
            },
            StoreView::Etcd(etcd) => etcd.probe().await,
        };
        ControlPlaneStatus { store }
    }

    /// Resolves once a save's outcome became unknown; the process must then stop, and
    /// its next start settles whichever state it finds.
    pub async fn halted(&self) -> ControlError {
        let mut halt = self.halt.subscribe();
        // The sender lives as long as `self`, so the wait ends only with a reason.
        let reason = match halt.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => unreachable!("the controller holds its halt sender"),
        };
        ControlError::Halted { reason }
    }

    /// Applies `change` to a copy of the membership, saves the copy, and only then
    /// makes it current: a failed write leaves memory as it was on disk.
    fn change<T>(
        &self,
        inner: &mut Inner,
        change: impl FnOnce(&mut Membership) -> Result<T, crate::membership::MembershipError>,
    ) -> Result<T, String> {
        if let Some(reason) = self.halt.borrow().as_ref() {
            return Err(format!("the control plane is stopping: {reason}"));
        }
        let Role::Leading(store) = &mut inner.role else {
            return Err("this control plane no longer leads".to_string());
        };
        let mut next = inner.membership.clone();
        let value = change(&mut next).map_err(|error| error.to_string())?;
        let bytes = next
            .encode()
            .map_err(|error| format!("cannot encode the state: {error}"))?;
        match store.save(&bytes) {
            Ok(()) => {}
            Err(error @ SaveError::Unsynced { .. }) => {
                tracing::error!(%error, "stopping so that the next start settles the state");
                self.halt.send_replace(Some(error.to_string()));
                return Err(error.to_string());
            }
            Err(error) if error.deposes() => {
                tracing::warn!(%error, "stepped down: a state write was refused");
                stand_by(inner);
                self.deposed.notify_one();
                return Err(error.to_string());
            }
            Err(error) => return Err(error.to_string()),
        }
        inner.membership = next;
        Ok(value)
    }

    pub(crate) async fn handle(self: &Arc<Self>, command: ControlRequest) -> ControlResponse {
        let now_ms = self.now_ms();
        if !matches!(command, ControlRequest::Ping) {
            let inner = self.lock();
            match &inner.role {
                Role::Standby { leader } => return ControlResponse::NotLeader { leader: leader.clone() },
                // Past its lease bound (it was paused, say) another process may lead, and
                // not everything a leader answers goes through etcd: a heartbeat's answer
                // tells the node which migrations to abort. The election steps down at
                // its next input; until then, this process leads nothing.
                Role::Leading(_) if !inner.leads(Instant::now()) => {
                    tracing::info!("past the lease bound: answering as a standby until the election steps down");
                    return ControlResponse::NotLeader { leader: None };
                }
                Role::Leading(_) => {}
            }
        }
        match command {
            ControlRequest::Ping => ControlResponse::Pong,
            ControlRequest::GetSlotMap => ControlResponse::SlotMap(self.lock().membership.map().clone()),
            ControlRequest::Join(request) => self.join(&request, now_ms),
            ControlRequest::Heartbeat(heartbeat) => self.heartbeat(&heartbeat, now_ms),
            ControlRequest::Status => ControlResponse::Status(Box::new(self.status())),
            ControlRequest::Rebalance => self.start_plan(None),
            ControlRequest::Drain { node_id } => self.start_plan(Some(node_id)),
            ControlRequest::Reclaim(request) => self.reclaim(&request, now_ms),
            ControlRequest::ControlPlane => ControlResponse::ControlPlane(Box::new(self.control_plane_status().await)),
            ControlRequest::GetCredentials => self.credentials(),
        }
    }

    fn join(self: &Arc<Self>, request: &engram_proto::JoinRequest, now_ms: u64) -> ControlResponse {
        // Refused before the node becomes a member: it could not serve.
        let credentials = match (request.takes_credentials, self.settings.gatekeeper.shared()) {
            (false, _) => None,
            (true, None) => return error_response(ErrorCode::Forbidden, NO_SHARED_CREDENTIALS),
            (true, shared) => shared,
        };
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
        if !joined.failure.is_empty() {
            log_failure(joined.node_id, "node restarted with empty memory", &joined.failure);
            self.broadcast_map();
        }
        ControlResponse::Joined {
            node_id: joined.node_id,
            map,
            incarnation: joined.incarnation,
            liveness_timeout_ms: self.liveness_timeout_ms(),
            credentials,
        }
    }

    /// The credentials this process admits by, for a node that takes its own from it.
    fn credentials(&self) -> ControlResponse {
        match self.settings.gatekeeper.shared() {
            Some(credentials) => ControlResponse::Credentials(credentials),
            None => error_response(ErrorCode::InvalidArgument, NO_SHARED_CREDENTIALS),
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
        let backups_named = self.name_backups_in_sync(&mut inner, heartbeat);
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
            fills: inner.membership.fills_for(heartbeat.node_id),
            credentials_digest: self.settings.gatekeeper.shared_digest(),
        };
        // The broadcast takes the lock itself.
        drop(inner);
        if restored || backups_named {
            self.broadcast_map();
        }
        answer
    }

    /// Names in the map the backups a heartbeat reports in sync; returns whether any.
    fn name_backups_in_sync(&self, inner: &mut Inner, heartbeat: &engram_proto::Heartbeat) -> bool {
        let ready = inner.membership.in_sync_backups(heartbeat);
        if ready.is_empty() {
            return false;
        }
        match self.change(inner, |membership| Ok(membership.commit_backups(&ready))) {
            Ok(named) => {
                tracing::info!(
                    primary = heartbeat.node_id,
                    slots = named,
                    epoch = inner.membership.epoch(),
                    "backups in sync named in the map"
                );
                named > 0
            }
            Err(error) => {
                tracing::warn!(%error, "cannot name backups in sync");
                false
            }
        }
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
        let (slots_to_move, pending) = {
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
            // Withdrawn before the first step: a fill towards a move's target would
            // stream into slots that target is importing.
            inner.membership.plan_fills_none();
            match inner.orchestrator.start_plan(moves, &inner.membership, now_ms) {
                Ok(effects) => (slots_to_move, self.settle_effects(inner, effects)),
                Err(error) => return error_response(ErrorCode::Busy, error.to_string()),
            }
        };
        self.perform(pending);
        ControlResponse::RebalanceStarted { slots_to_move }
    }

    /// Feeds the orchestrator the answers and timers of the effects it asked for, for
    /// the life of the process.
    pub async fn orchestrate(self: Arc<Self>, mut events: Events) {
        while let Some((term, event)) = events.recv().await {
            let pending = {
                let mut guard = self.lock();
                let inner = &mut *guard;
                if term != inner.term {
                    // An answer or timer of an earlier term (this process led, stood
                    // by, and leads again): that orchestrator is gone.
                    continue;
                }
                let now_ms = self.now_ms();
                let effects = inner.orchestrator.handle(event, &inner.membership, now_ms);
                self.settle_effects(inner, effects)
            };
            self.perform(pending);
        }
    }

    /// Performs, under the lock, the effects that touch the state (persists, whose
    /// results are fed back at once, so a check and the commit it guards happen under
    /// one hold of the lock, and reports); returns the rest, to perform once the lock
    /// is released.
    fn settle_effects(&self, inner: &mut Inner, effects: Vec<Effect>) -> Pending {
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
                Effect::OrderFill { from, to, slots } => inner.membership.order_step_fill(from, to, &slots),
                other => io.push(other),
            }
        }
        if !matches!(inner.role, Role::Leading(_)) {
            // A save deposed this process meanwhile: what its orchestrator asked for
            // is the next leader's to decide.
            io.clear();
        }
        Pending {
            term: inner.term,
            effects: io,
        }
    }

    /// Calls, timers and broadcasts, each in a task of its own that feeds its result
    /// back through `events`.
    fn perform(self: &Arc<Self>, pending: Pending) {
        let term = pending.term;
        for effect in pending.effects {
            match effect {
                Effect::Call {
                    token,
                    address,
                    call,
                    timeout_ms,
                } => {
                    let credentials = self.settings.link_credentials.clone();
                    let tls = self.settings.peer_tls.clone();
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        let timeout = Duration::from_millis(timeout_ms);
                        let identity = Identity::node(&credentials);
                        let command = command_of(call);
                        let result = call_once::<PeerProtocol>(&address, identity, &command, timeout, tls.as_ref())
                            .await
                            .map(answer_of)
                            .map_err(|error| error.to_string());
                        let _ = events.send((term, Event::Answered { token, result }));
                    });
                }
                Effect::ArmTimer { token, at_ms } => {
                    let events = self.events.clone();
                    let at = self.started + Duration::from_millis(at_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let _ = events.send((term, Event::TimerFired { token }));
                    });
                }
                Effect::BroadcastMap => self.broadcast_map(),
                Effect::Persist { .. } | Effect::Report(_) | Effect::OrderFill { .. } => {
                    unreachable!("settle_effects performs persists, reports and fill orders")
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
        let credentials = self.settings.link_credentials.clone();
        let tls = self.settings.peer_tls.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
            let install = PeerRequest::InstallMap(map);
            let identity = Identity::node(&credentials);
            for address in addresses {
                let _ = call_once::<PeerProtocol>(&address, identity, &install, timeout, tls.as_ref()).await;
            }
        });
    }

    /// After a start: installs the persisted map on every member, then aborts every
    /// migration it did not commit (a previous control plane may have died mid-way).
    /// Returns once the first call is under way; plans wait until it has finished.
    pub async fn reconcile(self: Arc<Self>) {
        let pending = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let now_ms = self.now_ms();
            let effects = inner.orchestrator.reconcile(&inner.membership, now_ms);
            self.settle_effects(inner, effects)
        };
        self.perform(pending);
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
            self.plan_replicas();
            {
                let mut inner = self.lock();
                let leading = matches!(inner.role, Role::Leading(_));
                if leading && !inner.orchestrator.is_busy() && inner.membership.clone().forget_departed(now_ms) {
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

    /// Trims backups beyond the setting and plans the fills that restore each slot's
    /// backups. Neither while a plan moves slots: its steps order the only fills (those
    /// of the housekeeping were withdrawn at its start), and a step's fill and
    /// hand-over leave a slot one backup beyond the setting until the plan ends.
    fn plan_replicas(self: &Arc<Self>) {
        let mut inner = self.lock();
        if !matches!(inner.role, Role::Leading(_)) || inner.orchestrator.is_busy() {
            return;
        }
        let now_ms = self.now_ms();
        if inner.membership.has_excess_backups() {
            match self.change(&mut inner, |membership| {
                membership.trim_backups();
                Ok(())
            }) {
                Ok(()) => tracing::info!(epoch = inner.membership.epoch(), "backups beyond the setting dropped"),
                Err(error) => tracing::warn!(%error, "cannot drop backups beyond the setting"),
            }
        }
        let planned = inner.membership.plan_fills(now_ms);
        if let Err(error) = planned {
            tracing::warn!(%error, "cannot place backups");
        }
    }

    /// Declares silent members dead and loses their slots, saying so.
    fn declare_dead(self: &Arc<Self>) {
        let dead = {
            let mut inner = self.lock();
            if !matches!(inner.role, Role::Leading(_)) {
                return;
            }
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
        for (node_id, failure) in &dead {
            log_failure(*node_id, "node declared dead", failure);
        }
        self.broadcast_map();
    }

    /// Starts a plan moving slots off a shard far busier than the rest; returns whether
    /// it did.
    fn consider_load(self: &Arc<Self>, now_ms: u64) -> bool {
        let pending = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.orchestrator.is_busy() || !matches!(inner.role, Role::Leading(_)) {
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
            inner.membership.plan_fills_none();
            match inner.orchestrator.start_plan(moves, &inner.membership, now_ms) {
                Ok(effects) => self.settle_effects(inner, effects),
                Err(_) => return false,
            }
        };
        self.perform(pending);
        true
    }
}

impl Inner {
    /// Whether this process leads at `now`: it holds the state store, within its lease
    /// bound when it has one.
    fn leads(&self, now: Instant) -> bool {
        matches!(self.role, Role::Leading(_)) && self.lease_bound.is_none_or(|bound| now < bound)
    }
}

/// Stands by: nothing acts on the state any more, and whatever the orchestrator was
/// running is left to the next leader's reconcile.
/// What the membership takes from the settings, whether it was read from a file or
/// from etcd.
fn apply_settings(settings: &Settings, membership: &mut Membership) {
    membership.set_liveness_timeout_ms(settings.liveness_timeout.as_millis() as u64);
    // `main` bounds the flag to what the placement takes.
    if let Err(error) = membership.set_replicas(settings.replicas) {
        tracing::error!(%error, "keeping no backups");
    }
}

/// Starts this leader's fill generations at a value no earlier leader can have used:
/// the wall clock's nanoseconds.
fn start_fill_generations(membership: &mut Membership) {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    membership.start_fill_generations(base);
}

/// Says what a node's end did to its slots: promoted backups, lost slots, copies gone.
fn log_failure(node_id: u64, what: &str, failure: &crate::membership::NodeFailure) {
    if !failure.promoted.is_empty() {
        tracing::warn!(
            node_id,
            slots = %format_slot_ranges(&failure.promoted),
            count = failure.promoted.len(),
            "{what}: its backups took over the slots it owned"
        );
    }
    if !failure.lost.is_empty() {
        tracing::warn!(
            node_id,
            slots = %format_slot_ranges(&failure.lost),
            count = failure.lost.len(),
            "{what}: slots with no other copy are lost until it comes back or `engram cluster reclaim`"
        );
    }
    if failure.backups_dropped > 0 {
        tracing::warn!(
            node_id,
            slots = failure.backups_dropped,
            "{what}: the slots it backed up have one copy fewer until new backups are filled"
        );
    }
}

fn stand_by(inner: &mut Inner) {
    if matches!(inner.role, Role::Leading(_)) {
        inner.role = Role::Standby { leader: None };
    }
    inner.term += 1;
    inner.orchestrator = Orchestrator::new(crate::orchestrator::Config::default());
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
        NodeCall::HandOver {
            migration_id,
            slots,
            target,
        } => PeerRequest::HandOver(HandOver {
            migration_id,
            slots,
            target,
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
        // The control plane sends no batches, so no shard answers it with this.
        PeerResponse::Replicated(_) => Answer::Refused {
            message: "a shard answered with a replication answer".into(),
        },
    }
}

pub(crate) fn error_reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code: code.as_u16(),
        message: message.into(),
        map_epoch: 0,
    }
}

/// Why a node that takes its credentials from the control plane cannot have them.
const NO_SHARED_CREDENTIALS: &str = "this control plane shares no credentials (it has no --credentials-file or \
     --credentials-etcd), so a node with --node-token alone has none to admit by";

/// An error answer to a request of the control family.
pub(crate) fn error_response(code: ErrorCode, message: impl Into<String>) -> ControlResponse {
    ControlResponse::Error(error_reply(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading_on_a_file(test: &str) -> (Arc<Controller>, PathBuf) {
        let data_dir = std::env::temp_dir().join(format!("engram-control-{test}-{}", std::process::id()));
        let settings = Settings {
            gatekeeper: Arc::new(Gatekeeper::open()),
            link_credentials: Vec::new(),
            peer_tls: None,
            load_rebalance: false,
            load_check_interval: Duration::from_millis(LOAD_CHECK_INTERVAL_MS_DEFAULT),
            replicas: 0,
            liveness_timeout: Duration::from_millis(crate::membership::LIVENESS_TIMEOUT_MS),
        };
        let (controller, _events) = Controller::open(settings, &data_dir).expect("a fresh data directory");
        (controller, data_dir)
    }

    /// A process paused past its lease bound may be served a request before its election
    /// runs again and steps down; it answers as a standby, since a heartbeat's answer
    /// (migrations to abort) never passes etcd's conditions.
    #[tokio::test]
    async fn past_its_lease_bound_a_leader_answers_as_a_standby_before_the_election_steps_down() {
        let (controller, data_dir) = leading_on_a_file("lease-bound");
        let heartbeat = |migrations| {
            ControlRequest::Heartbeat(engram_proto::Heartbeat {
                node_id: 1,
                map_epoch: 0,
                shards: Vec::new(),
                migrations,
                incarnation: 0,
                in_sync: Vec::new(),
            })
        };
        controller.bound_lease(Instant::now() + Duration::from_secs(60));
        assert!(controller.is_leading());
        assert!(matches!(
            controller.handle(ControlRequest::Status).await,
            ControlResponse::Status(_)
        ));

        controller.bound_lease(Instant::now());
        assert!(!controller.is_leading());
        assert!(!controller.gauges().leading, "engram_control_is_leader says it leads");
        for request in [ControlRequest::Status, heartbeat(vec![7]), ControlRequest::Rebalance] {
            let answer = controller.handle(request).await;
            assert_eq!(answer, ControlResponse::NotLeader { leader: None });
        }
        assert_eq!(controller.handle(ControlRequest::Ping).await, ControlResponse::Pong);
        drop(controller);
        let _ = std::fs::remove_dir_all(data_dir);
    }
}
