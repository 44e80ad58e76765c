//! One shard: an executor pinned to a core, owning a [`Store`] and serving its
//! own port, its share of front-port connections, and requests forwarded by peers.
//!
//! A shard's data is touched only by its own thread. Other shards reach it through the
//! bounded channel mesh, so a full queue slows the sender down instead of growing.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_proto::{DataRequest, ErrorCode, ErrorReply, Gate, Gatekeeper, NodeInfo, PeerResponse, Response, SlotMap};
use engram_tls::{ClientTls, ServerTls};
use futures::channel::oneshot;

use crate::cluster::{NodeMap, Owner, Routing};
use crate::metrics::{ObjectKind, ShardMetrics};
use crate::notify::LocalNotify;
use crate::outbox::{Destination, Outbox};
use crate::refusal::{RefusalLog, Refused};
use crate::runtime::{self, MeshReceivers, MeshSenders, TaskHandle, Tasks};
use crate::shutdown::Shutdown;
use crate::stats::{NodeStats, ShardStats};
use crate::store::{Completion, Origin, Outcome, Store, WaiterId};

mod clock;
mod hand_over;
mod migration;
mod replication;

use clock::StoreClock;
use migration::Outgoing;
/// The target's bookkeeping of migrations coming in, sans-I/O: the seeded simulation
/// runs the same admission rules as the shard.
pub use migration::{Incoming, MIGRATION_BATCH_BYTES_MAX, MIGRATION_PEER_TIMEOUT_MS};
use replication::Replication;
pub use replication::{REPLICATION_PEER_TIMEOUT_MS, REPLICATION_RETRY_MS};

/// Depth of each shard-to-shard request queue.
pub const FORWARD_QUEUE_DEPTH: usize = 1024;
/// Longest a shard's timekeeper sleeps: how often it expires keys, forgets idle client
/// sessions and publishes figures when no wait or lease is due sooner.
pub const MAINTENANCE_INTERVAL_MS: u64 = 100;
/// Keys one maintenance step may expire before it yields to requests.
pub const EXPIRE_KEYS_PER_STEP_MAX: usize = 2_000;

/// A request handed to the shard that owns its slot.
pub struct Forwarded {
    pub client_id: u64,
    /// Checked again by the owner: the map or a migration may have moved the slot
    /// since the forwarding shard looked.
    pub slot: u32,
    pub request: DataRequest,
    pub reply: oneshot::Sender<Response>,
}

/// The shard a front-port request goes to.
pub enum Target {
    /// A shard of this node (possibly this one).
    Local(usize),
    /// Another node's shard, at `routing.address(index)`, reached through the front
    /// connection's proxy link.
    Remote { routing: Rc<Routing>, index: u32 },
}

/// What every shard shares with its connections.
pub struct Shard {
    shard_id: usize,
    store: RefCell<Store>,
    node_map: Arc<NodeMap>,
    /// Built from `node_map`; rebuilt when the node's epoch moves.
    routing: RefCell<Rc<Routing>>,
    /// The migration taking slots off this shard, whose slots are frozen meanwhile.
    outgoing: RefCell<Option<Outgoing>>,
    /// Migrations bringing slots to this shard, held but not served until a map gives
    /// them their slots.
    incoming: RefCell<Incoming>,
    /// Slots this shard served that a map marked lost, whose data it still holds.
    stranded: RefCell<std::collections::BTreeSet<u32>>,
    node: Arc<NodeStats>,
    gatekeeper: Arc<Gatekeeper>,
    link_credentials: Vec<u8>,
    /// How long a connection polls its socket before waiting for readiness
    /// (`--spin-us`); zero: it waits at once.
    read_spin: Duration,
    admission: Admission,
    tls: Option<ServerTls>,
    peer_tls: Option<ClientTls>,
    refusals: RefusalLog,
    peers: MeshSenders<Forwarded>,
    metrics: ShardMetrics,
    operations: Cell<u64>,
    /// Where each parked request's answer goes.
    destinations: RefCell<foldhash::HashMap<WaiterId, Destination>>,
    /// The deadline the timekeeper sleeps until, and how to wake it for an earlier one.
    timekeeper_deadline_ms: Cell<u64>,
    timekeeper: LocalNotify,
    store_clock: StoreClock,
    /// Its streams to backups, the answers they hold back, and what it backs up.
    replication: RefCell<Replication>,
    /// Every task the shard and its connections start, which its stop outwaits.
    tasks: Tasks,
}

/// What a shard is set up with, apart from its queues to the node's other shards.
pub struct ShardSetup {
    pub shard_id: usize,
    pub node_map: Arc<NodeMap>,
    pub node: Arc<NodeStats>,
    pub memory_limit_bytes: u64,
    pub hash_seed: u64,
    /// Every version, fence and permit id this shard draws is above this.
    pub version_floor: u64,
    /// The node process's incarnation (0 for a node alone), which maps name copies by.
    pub incarnation: u64,
    /// Who may connect, shared by the node's shards and replaced whole on a reload.
    pub gatekeeper: Arc<Gatekeeper>,
    /// What this node's own links present (`--node-token`).
    pub link_credentials: Vec<u8>,
    /// How long a connection polls its socket before waiting for readiness
    /// (`--spin-us`); zero: it waits at once.
    pub read_spin: Duration,
    pub admission: Admission,
    /// The node's TLS certificate, when its ports speak TLS.
    pub tls: Option<ServerTls>,
    /// What the shard's links to other nodes connect with, when the cluster speaks TLS.
    pub peer_tls: Option<ClientTls>,
}

/// What the node lets strangers hold: connections at once, and time to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Connections the whole node serves at once (`--max-connections`).
    pub max_connections: u64,
    /// How long a connection may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// How long a connection may stay idle (nothing read, nothing waiting) before it is
    /// closed (`--idle-timeout-ms`); `None`: forever.
    pub idle_timeout: Option<Duration>,
}

/// What became of a request submitted to its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Answered at once.
    Answered,
    /// Waiting at the shard; its answer goes to its destination when it stops waiting.
    Parked,
}

impl Shard {
    /// A shard that routes with the node's current map, its figures published.
    pub fn new(setup: ShardSetup, peers: MeshSenders<Forwarded>) -> Shard {
        let routing = Routing::for_shard(setup.node_map.current(), setup.node.node_id, setup.shard_id as u16);
        let mut store = Store::new(setup.memory_limit_bytes, setup.hash_seed);
        store.raise_version_floor(setup.version_floor.max(routing.map.version_floor));
        let metrics = setup.node.metrics.shard(setup.shard_id);
        let node_id = setup.node.node_id;
        let store_clock = StoreClock::new(setup.node.started);
        let shard = Shard {
            shard_id: setup.shard_id,
            store: RefCell::new(store),
            node_map: setup.node_map,
            routing: RefCell::new(Rc::new(routing)),
            outgoing: RefCell::new(None),
            incoming: RefCell::default(),
            stranded: RefCell::default(),
            node: setup.node,
            gatekeeper: setup.gatekeeper,
            link_credentials: setup.link_credentials,
            read_spin: setup.read_spin,
            admission: setup.admission,
            tls: setup.tls,
            peer_tls: setup.peer_tls,
            refusals: RefusalLog::default(),
            peers,
            metrics,
            operations: Cell::new(0),
            destinations: RefCell::default(),
            timekeeper_deadline_ms: Cell::new(0),
            timekeeper: LocalNotify::default(),
            store_clock,
            replication: RefCell::new(Replication::new(crate::replication::ShardProcess {
                node_id,
                shard_id: setup.shard_id as u16,
                incarnation: setup.incarnation,
            })),
            tasks: Tasks::default(),
        };
        // A join retried with the same boot id may already lead slots with backups.
        let routing = shard.routing();
        shard.configure_replication(&routing);
        shard.publish_slots_owned(&routing);
        shard.publish_stats();
        shard
    }

    /// Runs `future` on this shard's executor as one of its tasks, which its stop
    /// outwaits; `None`, and `future` dropped unrun, once the shard is stopping.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) -> Option<TaskHandle> {
        self.tasks.spawn(future)
    }

    /// The shard's tasks, for what starts tasks on its behalf (a connection's proxy
    /// links) and for the shard's stop.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// This shard's id within the node.
    pub fn id(&self) -> usize {
        self.shard_id
    }

    pub fn node_id(&self) -> u64 {
        self.node.node_id
    }

    /// Shards of this node.
    pub fn shard_count(&self) -> usize {
        self.node.shards.len()
    }

    /// The node's figures, for INFO.
    pub fn node_info(&self) -> NodeInfo {
        self.node.info(self.map_epoch())
    }

    /// The map this shard routes with.
    pub fn slot_map(&self) -> SlotMap {
        (*self.routing().map).clone()
    }

    /// Who may connect now: a handshake takes it once.
    pub fn gate(&self) -> Arc<Gate> {
        self.gatekeeper.gate()
    }

    /// How many credentials reloads took effect; read before [`Shard::gate`], a
    /// connection's grant is current while this has not moved.
    pub fn gate_generation(&self) -> u64 {
        self.gatekeeper.generation()
    }

    /// What this node's links to other nodes present in their Hellos.
    pub fn link_credentials(&self) -> &[u8] {
        &self.link_credentials
    }

    /// How long a connection polls its socket before waiting for readiness; zero: it
    /// waits at once.
    pub fn read_spin(&self) -> Duration {
        self.read_spin
    }

    /// What the node lets strangers hold.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// What the shard's ports accept TLS with, when they speak it.
    pub fn server_tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// What the shard's links to other nodes connect with, when the cluster speaks TLS.
    pub fn peer_tls(&self) -> Option<&ClientTls> {
        self.peer_tls.as_ref()
    }

    /// Whether the node may take one more connection: it serves fewer than
    /// `--max-connections` on all its shards (read without a lock, so shards accepting at
    /// the same moment may each take one past it).
    pub fn has_room_for_a_connection(&self) -> bool {
        let open: u64 = self
            .node
            .shards
            .iter()
            .map(|shard| shard.connections.load(Relaxed))
            .sum();
        open < self.admission.max_connections
    }

    /// Counts and logs a connection turned away because the node is full; the words
    /// its refusal says it in.
    pub fn refused_for_room(&self, peer: Option<std::net::SocketAddr>) -> String {
        let max_connections = self.admission.max_connections;
        let detail = format!("the node serves max_connections ({max_connections}) connections");
        self.refused(Refused::MaxConnections, peer, &detail);
        detail
    }

    /// Counts and logs (rate-limited) a connection turned away.
    pub fn refused(&self, reason: Refused, peer: Option<std::net::SocketAddr>, detail: &str) {
        self.metrics.refused(reason);
        self.refusals.note(self.shard_id, reason, peer, detail);
    }

    pub fn connection_opened(&self) {
        self.own_stats().connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.own_stats().connections.fetch_sub(1, Relaxed);
    }

    fn own_stats(&self) -> &ShardStats {
        &self.node.shards[self.shard_id]
    }

    /// Hands a request to the local shard `owner`, waiting while its queue is full;
    /// `false` when that shard takes no more.
    pub async fn forward(&self, owner: usize, forwarded: Forwarded) -> bool {
        runtime::send_to_peer(&self.peers, owner, forwarded).await
    }

    /// Counts a request answered without the store (a node command, a refusal).
    pub fn answered_here(&self, object: ObjectKind, response: &Response) {
        self.metrics.answered(object, response);
    }

    /// Counts the `requests` of one socket read (or one forwarded request) that was
    /// received at `received`; `timed` of them were answered by the store at once.
    pub fn read_handled(&self, requests: usize, timed: usize, received: Instant) {
        if timed > 0 {
            self.metrics.answered_within(timed, received.elapsed());
        }
        self.operations.set(self.operations.get() + requests as u64);
    }

    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The store's time at `instant`; see [`StoreClock`].
    fn ms_at(&self, instant: Instant) -> u64 {
        self.store_clock.ms_at(instant)
    }

    /// Moves the store's clock to `received`, the time of a read about to be served,
    /// before any of its requests is admitted: admission checks the map is fresh at
    /// that time, and a read after a pause must not be judged by the time of the last
    /// read before it.
    pub fn advance_clock(&self, received: Instant) {
        self.ms_at(received);
    }

    /// The epoch this shard routes with. Free of side effects (unlike [`Shard::routing`]),
    /// so it is safe anywhere, even while the store is borrowed.
    pub fn map_epoch(&self) -> u64 {
        self.routing.borrow().epoch()
    }

    /// The routing for the node's current map, rebuilt first if the map changed.
    pub fn routing(&self) -> Rc<Routing> {
        let current = self.routing.borrow().clone();
        if current.epoch() == self.node_map.epoch() {
            return current;
        }
        let routing = Rc::new(Routing::for_shard(
            self.node_map.current(),
            self.node.node_id,
            self.shard_id as u16,
        ));
        *self.routing.borrow_mut() = routing.clone();
        self.on_new_map(&current, &routing);
        routing
    }

    /// Refuses (`TryAgain`) to serve on a map that was not checked with the control
    /// plane lately: this node was paused (SIGSTOP, a frozen VM) long enough to be
    /// declared dead, and its slots may have been reclaimed elsewhere while it slept.
    /// The time compared is that of the read being served, taken after the pause; the
    /// heartbeat thread installs any newer map before it marks the map checked.
    fn check_map_fresh(&self) -> Result<(), Response> {
        let checked_until_ms = self.node_map.checked_until_ms();
        if self.store_clock.latest() <= checked_until_ms {
            return Ok(());
        }
        Err(self.error(
            ErrorCode::TryAgain,
            format!(
                "node {} has not checked its map with the control plane since {checked_until_ms} ms \
                 after its start (it was paused?); retry shortly",
                self.node.node_id
            ),
        ))
    }

    /// Whether this shard may apply a request for `slot` now: `Ok` with the local shard
    /// that owns it, or the error that sends the client elsewhere (another node's
    /// shard, or wait: the slot is frozen while it migrates).
    pub fn admit(&self, slot: u32) -> Result<usize, Response> {
        self.check_map_fresh()?;
        let routing = self.routing();
        self.check_not_deposed(routing.epoch())?;
        match routing.owner(slot) {
            Owner::Remote(index) => Err(self.error(
                ErrorCode::Moved,
                format!(
                    "slot {slot} is served by {} under map epoch {}",
                    routing.address(index),
                    routing.epoch()
                ),
            )),
            Owner::Lost => Err(self.error(
                ErrorCode::SlotLost,
                format!(
                    "slot {slot} is lost: the node that owned it died or restarted with empty memory \
                     (map epoch {}); `engram cluster reclaim` returns it to service, empty",
                    routing.epoch()
                ),
            )),
            Owner::Local(owner) if owner as usize == self.shard_id && self.is_frozen(slot) => {
                Err(self.error(ErrorCode::TryAgain, format!("slot {slot} is migrating; retry shortly")))
            }
            Owner::Local(owner) => Ok(owner as usize),
        }
    }

    /// [`Shard::admit`] for the front port, which forwards a slot of another node's shard
    /// to it instead of sending the client there. Lost and frozen slots are refused as
    /// everywhere.
    pub fn admit_front(&self, slot: u32) -> Result<Target, Response> {
        let routing = self.routing();
        match routing.owner(slot) {
            Owner::Remote(index) => {
                self.check_map_fresh()?;
                Ok(Target::Remote { routing, index })
            }
            _ => self.admit(slot).map(Target::Local),
        }
    }

    /// Makes the slots `routing` gives this shard visible to metrics.
    fn publish_slots_owned(&self, routing: &Routing) {
        self.own_stats()
            .publish_slots_owned(routing.slots_of(self.shard_id as u16));
    }

    /// Starts loading the table entries of `stored_keys` (namespace prefix included)
    /// into the cache, ahead of the requests that will look them up; a key another shard
    /// owns costs its hash, a probe of this shard's table and a wasted prefetch.
    pub fn prefetch_keys<'k>(&self, stored_keys: impl Iterator<Item = &'k [u8]>) {
        self.store.borrow().prefetch(stored_keys);
    }

    /// Makes the shard's figures visible to INFO on any shard.
    pub fn publish_stats(&self) {
        let own = self.own_stats();
        let stats = self.store.borrow().stats();
        own.keys.store(stats.keys, Relaxed);
        own.memory_used_bytes.store(stats.memory_used_bytes, Relaxed);
        own.memory_limit_bytes.store(stats.memory_limit_bytes, Relaxed);
        own.operations_total.store(self.operations.get(), Relaxed);
        own.parked_requests.store(stats.parked_requests, Relaxed);
        self.publish_replication(own);
    }

    /// Applies a request whose slot this shard owns; its answer goes to `destination`
    /// now, or when the request stops waiting. Answers of other requests that this one
    /// unblocked (a release granting a waiting acquire) are delivered too. `received`:
    /// when the request reached the shard, which is the store's time for it.
    pub fn submit(
        &self,
        client_id: u64,
        request: &DataRequest,
        destination: Destination,
        received: Instant,
    ) -> Submitted {
        let now_ms = self.ms_at(received);
        let outcome = self.store.borrow_mut().apply(client_id, request, now_ms);
        let command = &request.command;
        if command.is_mutation() {
            let origin = Origin::of(client_id, request);
            for changed in command.keys() {
                self.note_change(changed, origin);
            }
        }
        // A pop of several keys changed the key it popped from: its answer waits for
        // that key's change to reach the backups.
        let key = match &outcome {
            Outcome::Ready(Response::Popped { key_index, .. }) => command.keys().nth(*key_index as usize),
            _ => Some(command.key()),
        };
        let mut submitted = match outcome {
            Outcome::Ready(_) => Submitted::Answered,
            Outcome::Parked(_) => Submitted::Parked,
        };
        match outcome {
            // An immediate answer needs no revert if its asker is gone (the client's
            // retry finds the operation record); its buffers go back to the store for
            // the next read. One whose key has a change in flight to the backups waits
            // for it.
            Outcome::Ready(response) => {
                self.metrics.answered(ObjectKind::of_data(command), &response);
                match self.hold_answer(key, destination, self.stamp(response)) {
                    Some((destination, response)) => {
                        if let Some(spent) = destination.deliver_immediate(response) {
                            self.store.borrow_mut().recycle(spent);
                        }
                    }
                    None => submitted = Submitted::Parked,
                }
            }
            Outcome::Parked(waiter) => {
                self.metrics.parked(waiter, ObjectKind::of_data(command));
                // A retry re-attaches to its parked request; the earlier asker is told.
                if let Some(earlier) = self.destinations.borrow_mut().insert(waiter, destination) {
                    let superseded = "superseded by a retry of the same operation";
                    let _ = earlier.deliver(self.error(ErrorCode::TryAgain, superseded), true);
                }
            }
        }
        self.deliver_completions();
        self.rearm_timekeeper();
        submitted
    }

    /// Delivers the answers of parked requests. One whose asker is gone is taken back
    /// by the store (a popped value returns to its queue, a grant is released), which
    /// can complete further requests, hence the loop.
    /// Ends by waking the replication links, which ship what the requests and the
    /// completions changed.
    fn deliver_completions(&self) {
        loop {
            let completions = self.store.borrow_mut().take_completions();
            if completions.is_empty() {
                self.kick_replication();
                return;
            }
            for mut completion in completions {
                let destination = self.destinations.borrow_mut().remove(&completion.waiter);
                self.metrics.completed(completion.waiter, &completion.response);
                self.note_change(completion.key(), completion.origin());
                completion.response = self.stamp(std::mem::replace(&mut completion.response, Response::Pong));
                let Some(destination) = destination else {
                    self.take_back(completion);
                    continue;
                };
                let Some((destination, mut completion)) = self.hold_completion(destination, completion) else {
                    continue;
                };
                let response = std::mem::replace(&mut completion.response, Response::Pong);
                if let Err(response) = destination.deliver(response, true) {
                    completion.response = response;
                    self.take_back(completion);
                }
            }
        }
    }

    /// An answer whose asker is gone: the store gives back what it took (a popped
    /// value, a grant), which changes the key again.
    fn take_back(&self, completion: Completion) {
        let key: Box<[u8]> = completion.key().into();
        let now_ms = self.now_ms();
        self.store.borrow_mut().undeliverable(completion, now_ms);
        self.note_change(&key, None);
    }

    /// A connection closed: its parked requests are withdrawn, so they are granted
    /// nothing (no lock held by a dead asker, no queue item swallowed).
    pub fn forget_connection(&self, outbox: &Rc<Outbox>) {
        let waiters: Vec<WaiterId> = self
            .destinations
            .borrow()
            .iter()
            .filter(|(_, destination)| destination.is_for(outbox))
            .map(|(waiter, _)| *waiter)
            .collect();
        if waiters.is_empty() {
            return;
        }
        let now_ms = self.now_ms();
        for waiter in waiters {
            self.destinations.borrow_mut().remove(&waiter);
            self.metrics.withdrawn(waiter);
            self.store.borrow_mut().cancel(waiter, now_ms);
        }
        self.deliver_completions();
        self.rearm_timekeeper();
    }

    /// Wakes the timekeeper when something became due sooner than it planned to wake.
    fn rearm_timekeeper(&self) {
        let next = self.store.borrow().next_deadline_ms();
        if next.is_some_and(|next| next < self.timekeeper_deadline_ms.get()) {
            self.timekeeper.notify();
        }
    }

    fn stamp(&self, mut response: Response) -> Response {
        if let Response::Error(reply) = &mut response {
            reply.map_epoch = self.map_epoch();
        }
        response
    }

    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(self.error_reply(code, message))
    }

    /// A refusal of a peer's request (a map, a migration order or batch).
    pub fn peer_error(&self, code: ErrorCode, message: impl Into<String>) -> PeerResponse {
        PeerResponse::Error(self.error_reply(code, message))
    }

    pub fn error_reply(&self, code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code: code.as_u16(),
            message: message.into(),
            map_epoch: self.map_epoch(),
        }
    }

    /// Serves the requests the node's other shards forward here, each queue by a task
    /// of its own, which the shard's stop cancels.
    pub fn serve_peers(self: &Rc<Self>, mut receivers: MeshReceivers<Forwarded>) -> Vec<TaskHandle> {
        let mut tasks = Vec::new();
        for (_, receiver) in receivers.streams() {
            let shard = self.clone();
            tasks.extend(self.spawn(async move {
                while let Some(forwarded) = receiver.recv().await {
                    shard.serve_forwarded(forwarded);
                }
            }));
        }
        tasks
    }

    fn serve_forwarded(&self, forwarded: Forwarded) {
        // Advances the store's clock, which admit reads: this shard may have served no
        // read of its own since a pause.
        let received = Instant::now();
        self.advance_clock(received);
        let mut timed = 0;
        match self.admit(forwarded.slot) {
            Ok(owner) if owner == self.shard_id => {
                let destination = Destination::Forwarded(forwarded.reply);
                let submitted = self.submit(forwarded.client_id, &forwarded.request, destination, received);
                if submitted == Submitted::Answered {
                    timed = 1;
                }
            }
            Ok(owner) => {
                let message = format!("slot {} moved to shard {owner} of this node", forwarded.slot);
                let _ = forwarded.reply.send(self.error(ErrorCode::WrongShard, message));
            }
            Err(refusal) => {
                let _ = forwarded.reply.send(refusal);
            }
        }
        self.read_handled(1, timed, received);
    }

    /// Sleeps until the store's next deadline (a wait's timeout, a lease's end, a key's
    /// expiry) or the maintenance interval, whichever is sooner, and is woken early when
    /// a sooner deadline appears; returns once `shutdown` is triggered. Nothing polls: an
    /// idle shard with no deadlines wakes ten times a second to expire keys and publish
    /// figures.
    pub async fn keep_time(&self, shutdown: &Shutdown) {
        while !shutdown.is_triggered() {
            // Picks up a map installed elsewhere even when no request comes, so a
            // committed migration releases its frozen copy promptly.
            self.routing();
            self.follow_fill_orders();
            let now_ms = self.now_ms();
            let planned = now_ms + MAINTENANCE_INTERVAL_MS;
            let wake_ms = self
                .store
                .borrow()
                .next_deadline_ms()
                .map_or(planned, |due| due.clamp(now_ms, planned));
            self.timekeeper_deadline_ms.set(wake_ms);
            if wake_ms > now_ms {
                let sleep = runtime::sleep(Duration::from_millis(wake_ms - now_ms));
                futures::future::select(std::pin::pin!(sleep), std::pin::pin!(self.timekeeper.notified())).await;
            }
            self.expire_due().await;
            self.publish_stats();
        }
    }

    /// Expires what is due, in steps that yield to requests in between.
    async fn expire_due(&self) {
        loop {
            let now_ms = self.now_ms();
            let removed = self.store.borrow_mut().expire_due(now_ms, EXPIRE_KEYS_PER_STEP_MAX);
            self.deliver_completions();
            if removed < EXPIRE_KEYS_PER_STEP_MAX {
                return;
            }
            runtime::yield_if_needed().await;
        }
    }
}
