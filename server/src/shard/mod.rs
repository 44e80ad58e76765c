//! One shard: an executor pinned to a core, owning a [`Store`] and serving its
//! own port, its share of front-port connections, and requests forwarded by peers.
//!
//! A shard's data is touched only by its own thread. Other shards reach it through the
//! bounded channel mesh, so a full queue slows the sender down instead of growing.

use std::cell::{Cell, RefCell};
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_proto::{ErrorCode, ErrorReply, Request, Response};
use futures::channel::oneshot;

use crate::cluster::{NodeMap, Owner, Routing};
use crate::connection;
use crate::events::{NodeEvent, NodeEvents};
use crate::metrics::ShardMetrics;
use crate::notify::LocalNotify;
use crate::outbox::{Destination, Outbox};
use crate::runtime::{self, MeshBuilder, MeshReceivers, MeshSenders, TcpListener};
use crate::stats::NodeStats;
use crate::store::{Outcome, Store, WaiterId};

mod migration;

use migration::{Incoming, Outgoing};

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
    pub request: Request,
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
    pub shard_id: usize,
    pub store: RefCell<Store>,
    pub node_map: Arc<NodeMap>,
    /// Built from `node_map`; rebuilt when the node's epoch moves.
    routing: RefCell<Rc<Routing>>,
    /// The migration taking slots off this shard, whose slots are frozen meanwhile.
    pub(crate) outgoing: RefCell<Option<Outgoing>>,
    /// Migrations bringing slots to this shard, held but not served until a map gives
    /// them their slots.
    pub(crate) incoming: RefCell<Incoming>,
    /// Slots this shard served that a map marked lost, whose data it still holds.
    pub(crate) stranded: RefCell<std::collections::BTreeSet<u32>>,
    pub node: Arc<NodeStats>,
    pub auth_token: Option<Vec<u8>>,
    /// How long a connection polls its socket before waiting for readiness
    /// (`--spin-us`); zero: it waits at once.
    pub read_spin: Duration,
    pub peers: MeshSenders<Forwarded>,
    pub metrics: ShardMetrics,
    operations: Cell<u64>,
    /// Where each parked request's answer goes.
    destinations: RefCell<foldhash::HashMap<WaiterId, Destination>>,
    /// The deadline the timekeeper sleeps until, and how to wake it for an earlier one.
    timekeeper_deadline_ms: Cell<u64>,
    timekeeper: LocalNotify,
    store_clock: StoreClock,
}

/// The store's time: milliseconds since the node started, never earlier than a time
/// it already gave. A read's requests all run at the time of that read, and a
/// connection that paused mid-read (a full forward queue, a large answer being
/// written) must not take the store back in time.
struct StoreClock {
    started: Instant,
    latest_ms: Cell<u64>,
}

impl StoreClock {
    fn new(started: Instant) -> StoreClock {
        StoreClock {
            started,
            latest_ms: Cell::new(0),
        }
    }

    /// The latest time given out.
    fn latest(&self) -> u64 {
        self.latest_ms.get()
    }

    fn ms_at(&self, instant: Instant) -> u64 {
        let ms = instant.saturating_duration_since(self.started).as_millis() as u64;
        let ms = ms.max(self.latest_ms.get());
        self.latest_ms.set(ms);
        ms
    }
}

impl Shard {
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The store's time at `instant`; see [`StoreClock`].
    pub(crate) fn ms_at(&self, instant: Instant) -> u64 {
        self.store_clock.ms_at(instant)
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
        let routing = Rc::new(Routing::new(self.node_map.current(), self.node.node_id));
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

    pub fn count_operations(&self, count: u64) {
        self.operations.set(self.operations.get() + count);
    }

    /// Makes the shard's figures visible to INFO on any shard.
    pub fn publish_stats(&self) {
        let own = &self.node.shards[self.shard_id];
        let stats = self.store.borrow().stats();
        own.keys.store(stats.keys, Relaxed);
        own.memory_used_bytes.store(stats.memory_used_bytes, Relaxed);
        own.memory_limit_bytes.store(stats.memory_limit_bytes, Relaxed);
        own.operations_total.store(self.operations.get(), Relaxed);
        own.parked_requests.store(stats.parked_requests, Relaxed);
    }

    /// Applies a request whose slot this shard owns; its answer goes to `destination`
    /// now, or when the request stops waiting. Answers of other requests that this one
    /// unblocked (a release granting a waiting acquire) are delivered too. `received`:
    /// when the request reached the shard, which is the store's time for it. Returns
    /// whether it was answered at once (a parked request is not timed).
    pub fn submit(&self, client_id: u64, request: &Request, destination: Destination, received: Instant) -> bool {
        let now_ms = self.ms_at(received);
        let outcome = self.store.borrow_mut().apply(client_id, request, now_ms);
        let answered = matches!(outcome, Outcome::Ready(_));
        match outcome {
            // An immediate answer needs no revert if its asker is gone (the client's
            // retry finds the operation record); its buffers go back to the store for
            // the next read.
            Outcome::Ready(response) => {
                self.metrics.answered(&request.command, &response);
                if let Some(spent) = destination.deliver_immediate(self.stamp(response)) {
                    self.store.borrow_mut().recycle(spent);
                }
            }
            Outcome::Parked(waiter) => {
                self.metrics.parked(waiter, &request.command);
                // A retry re-attaches to its parked request; the earlier asker is told.
                if let Some(earlier) = self.destinations.borrow_mut().insert(waiter, destination) {
                    let superseded = "superseded by a retry of the same operation";
                    let _ = earlier.deliver(self.error(ErrorCode::TryAgain, superseded), true);
                }
            }
        }
        self.deliver_completions();
        self.rearm_timekeeper();
        answered
    }

    /// Delivers the answers of parked requests. One whose asker is gone is taken back
    /// by the store (a popped value returns to its queue, a grant is released), which
    /// can complete further requests, hence the loop.
    pub(crate) fn deliver_completions(&self) {
        loop {
            let completions = self.store.borrow_mut().take_completions();
            if completions.is_empty() {
                return;
            }
            for mut completion in completions {
                let destination = self.destinations.borrow_mut().remove(&completion.waiter);
                self.metrics.completed(completion.waiter, &completion.response);
                let response = self.stamp(std::mem::replace(&mut completion.response, Response::Pong));
                let undelivered = match destination {
                    Some(destination) => destination.deliver(response, true).err(),
                    None => Some(response),
                };
                if let Some(response) = undelivered {
                    completion.response = response;
                    let now_ms = self.now_ms();
                    self.store.borrow_mut().undeliverable(completion, now_ms);
                }
            }
        }
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
        Response::Error(ErrorReply {
            code: code.as_u16(),
            message: message.into(),
            map_epoch: self.map_epoch(),
        })
    }
}

/// Everything a shard thread needs to start; all of it is `Send`.
pub struct ShardLaunch {
    pub shard_id: usize,
    pub shard_listener: StdListener,
    pub front_listener: StdListener,
    pub node_map: Arc<NodeMap>,
    pub node: Arc<NodeStats>,
    pub memory_limit_bytes: u64,
    pub auth_token: Option<Vec<u8>>,
    pub read_spin: Duration,
    pub hash_seed: u64,
    /// Every version, fence and permit id this shard draws is above this.
    pub version_floor: u64,
    pub mesh: MeshBuilder<Forwarded>,
    pub shutdown: Arc<AtomicBool>,
}

/// The shard's main future: serves until `shutdown` is set, then returns, which drops
/// its listeners and connections.
pub async fn run(launch: ShardLaunch, events: NodeEvents) {
    let (peers, receivers) = match launch.mesh.join().await {
        Ok(mesh) => mesh,
        Err(error) => {
            tracing::error!(shard = launch.shard_id, %error, "could not join the shard mesh");
            return;
        }
    };
    let routing = Routing::new(launch.node_map.current(), launch.node.node_id);
    let mut store = Store::new(launch.memory_limit_bytes, launch.hash_seed);
    store.raise_version_floor(launch.version_floor.max(routing.map.version_floor));
    let metrics = launch.node.metrics.shard(launch.shard_id);
    let store_clock = StoreClock::new(launch.node.started);
    let shard = Rc::new(Shard {
        shard_id: launch.shard_id,
        store: RefCell::new(store),
        node_map: launch.node_map,
        routing: RefCell::new(Rc::new(routing)),
        outgoing: RefCell::new(None),
        incoming: RefCell::default(),
        stranded: RefCell::default(),
        node: launch.node,
        auth_token: launch.auth_token,
        read_spin: launch.read_spin,
        peers,
        metrics,
        operations: Cell::new(0),
        destinations: RefCell::default(),
        timekeeper_deadline_ms: Cell::new(0),
        timekeeper: LocalNotify::default(),
        store_clock,
    });
    {
        let routing = shard.routing();
        shard.node.shards[shard.shard_id].publish_slots_owned(routing.slots_of(shard.shard_id as u16));
    }
    shard.publish_stats();
    serve_peers(&shard, receivers);
    let shard_listener = runtime::adopt_listener(launch.shard_listener);
    let front_listener = runtime::adopt_listener(launch.front_listener);
    runtime::spawn_detached(accept_loop(shard.clone(), shard_listener, false));
    runtime::spawn_detached(accept_loop(shard.clone(), front_listener, true));
    events.send(NodeEvent::ShardStarted { shard: shard.shard_id });
    keep_time(&shard, &launch.shutdown).await;
    tracing::debug!(shard = shard.shard_id, "shard stopped");
}

fn serve_peers(shard: &Rc<Shard>, mut receivers: MeshReceivers<Forwarded>) {
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        runtime::spawn_detached(async move {
            while let Some(forwarded) = receiver.recv().await {
                // Advances the store's clock, which admit reads: this shard may have
                // served no read of its own since a pause.
                let received = Instant::now();
                shard.ms_at(received);
                match shard.admit(forwarded.slot) {
                    Ok(owner) if owner == shard.shard_id => {
                        let destination = Destination::Forwarded(forwarded.reply);
                        if shard.submit(forwarded.client_id, &forwarded.request, destination, received) {
                            shard.metrics.answered_within(1, received.elapsed());
                        }
                    }
                    Ok(owner) => {
                        let message = format!("slot {} moved to shard {owner} of this node", forwarded.slot);
                        let _ = forwarded.reply.send(shard.error(ErrorCode::WrongShard, message));
                    }
                    Err(refusal) => {
                        let _ = forwarded.reply.send(refusal);
                    }
                }
                shard.count_operations(1);
            }
        });
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, front: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                runtime::spawn_detached(connection::serve(shard.clone(), stream, front));
            }
            Err(error) => {
                // Out of file descriptors and the like: keep serving existing
                // connections and try again shortly rather than spinning.
                tracing::warn!(shard = shard.shard_id, %error, "accept failed");
                runtime::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Sleeps until the store's next deadline (a wait's timeout, a lease's end, a key's
/// expiry) or the maintenance interval, whichever is sooner, and is woken early when a
/// sooner deadline appears. Nothing polls: an idle shard with no deadlines wakes ten
/// times a second to expire keys and publish figures.
async fn keep_time(shard: &Rc<Shard>, shutdown: &AtomicBool) {
    while !shutdown.load(Relaxed) {
        // Picks up a map installed elsewhere even when no request comes, so a committed
        // migration releases its frozen copy promptly.
        shard.routing();
        let now_ms = shard.now_ms();
        let planned = now_ms + MAINTENANCE_INTERVAL_MS;
        let wake_ms = shard
            .store
            .borrow()
            .next_deadline_ms()
            .map_or(planned, |due| due.clamp(now_ms, planned));
        shard.timekeeper_deadline_ms.set(wake_ms);
        if wake_ms > now_ms {
            let sleep = runtime::sleep(Duration::from_millis(wake_ms - now_ms));
            futures::future::select(std::pin::pin!(sleep), std::pin::pin!(shard.timekeeper.notified())).await;
        }
        loop {
            let now_ms = shard.now_ms();
            let removed = shard.store.borrow_mut().expire_due(now_ms, EXPIRE_KEYS_PER_STEP_MAX);
            shard.deliver_completions();
            if removed < EXPIRE_KEYS_PER_STEP_MAX {
                break;
            }
            runtime::yield_if_needed().await;
        }
        shard.publish_stats();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_clock_never_goes_back() {
        let started = Instant::now();
        let clock = StoreClock::new(started);
        assert_eq!(clock.ms_at(started + Duration::from_millis(5)), 5);
        // A read taken earlier but handled later (its connection paused) gets the
        // store's latest time, not its own.
        assert_eq!(clock.ms_at(started + Duration::from_millis(3)), 5);
        assert_eq!(clock.ms_at(started + Duration::from_millis(9)), 9);
        assert_eq!(clock.ms_at(started), 9);
        let fresh = StoreClock::new(started + Duration::from_millis(1));
        assert_eq!(
            fresh.ms_at(started),
            0,
            "an instant before the start reads as the start"
        );
    }
}
