//! A model node process (as `engramd --control`): joins before it serves, beats every
//! `HEARTBEAT_INTERVAL_MS` and fetches a newer map, settles the migrations the control
//! plane no longer runs, serves only on a map checked lately, and runs the shard side
//! of migration on its shards. A crash loses all of it; the restart is a new process.

use std::collections::BTreeMap;

use engram_control::orchestrator::{Answer, NodeCall};
use engram_proto::limits::incarnation_version_floor;
use engram_proto::{ErrorCode, Heartbeat, JoinRequest, MigrateIn, PeerResponse, Response, ShardLoad, SlotMap};

use crate::net::{endpoint_of, front_address, shard_address, Action, Endpoint, Reply, Request, Timer};
use crate::shard::{error, Routing, Shard, Shipment, MIGRATION_PEER_TIMEOUT_MS};
use crate::Bug;
use engram_proto::{CounterCommand, DataCommand};

/// As `engram_server::node`'s.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
const CONTROL_CALL_TIMEOUT_MS: u64 = 1_000;
const JOIN_RETRY_MS: u64 = 200;

enum Pending {
    Join,
    Heartbeat,
    /// The map fetch of a heartbeat whose answer named a newer epoch.
    FetchMap {
        control_epoch: u64,
        abort_migrations: Vec<u64>,
    },
    /// A batch of `shipment` on its way to the target; `caller` awaits the outcome.
    Batch {
        shard: u16,
        shipment: Box<Shipment>,
        caller: Caller,
    },
}

/// Who made a call, and under which call id: where its answer goes.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub endpoint: Endpoint,
    pub generation: u64,
    pub call: u64,
}

impl Caller {
    fn answer(self, reply: Reply) -> Action {
        Action::Answer {
            to: self.endpoint,
            to_generation: self.generation,
            call: self.call,
            reply,
        }
    }
}

pub struct Node {
    pub index: usize,
    pub generation: u64,
    boot_id: u64,
    /// Sim time this process started: its clock (`now_ms` of its stores) counts from it.
    started_at: u64,
    pub node_id: u64,
    pub incarnation: u64,
    pub routing: Option<Routing>,
    pub shards: Vec<Shard>,
    /// Node time up to which shards may serve on the map without checking it again.
    checked_until_ms: u64,
    liveness_timeout_ms: u64,
    next_call: u64,
    pending: BTreeMap<u64, Pending>,
}

impl Node {
    /// A process starting: it sends its join at once.
    pub fn start(
        index: usize,
        shard_count: u16,
        generation: u64,
        boot_id: u64,
        now: u64,
        bug: Option<Bug>,
    ) -> (Node, Vec<Action>) {
        let shards = (0..shard_count)
            .map(|shard| Shard::new(shard, boot_id ^ u64::from(shard), bug))
            .collect();
        let mut node = Node {
            index,
            generation,
            boot_id,
            started_at: now,
            node_id: 0,
            incarnation: 0,
            routing: None,
            shards,
            checked_until_ms: 0,
            liveness_timeout_ms: 0,
            next_call: 0,
            pending: BTreeMap::new(),
        };
        let mut actions = Vec::new();
        node.send_join(&mut actions);
        (node, actions)
    }

    fn clock(&self, now: u64) -> u64 {
        now - self.started_at
    }

    fn call(&mut self, to: Endpoint, request: Request, timeout_ms: u64, pending: Pending, actions: &mut Vec<Action>) {
        self.next_call += 1;
        let call = self.next_call;
        self.pending.insert(call, pending);
        actions.push(Action::Call { to, call, request });
        actions.push(Action::Timer {
            after_ms: timeout_ms,
            timer: Timer::CallTimeout(call),
        });
    }

    fn send_join(&mut self, actions: &mut Vec<Action>) {
        let request = JoinRequest {
            front_address: front_address(self.index),
            shard_addresses: (0..self.shards.len() as u16)
                .map(|shard| shard_address(self.index, shard))
                .collect(),
            memory_limit_bytes: 0,
            boot_id: self.boot_id,
            zone: String::new(),
            takes_credentials: false,
        };
        let join = Request::Join(request);
        self.call(Endpoint::Control, join, CONTROL_CALL_TIMEOUT_MS, Pending::Join, actions);
    }

    /// Whether shard `shard` applies requests for `slot` now.
    pub fn serves(&self, shard: u16, slot: u32, now: u64) -> bool {
        let Some(routing) = &self.routing else { return false };
        self.clock(now) <= self.checked_until_ms && self.shards[shard as usize].serves(slot, routing)
    }

    /// Applies a request at shard `shard` as it stands, bypassing routing (the end
    /// checks read counters this way).
    pub fn read(&mut self, shard: u16, request: &engram_proto::DataRequest, now: u64) -> Response {
        let now_ms = self.clock(now);
        match self.shards[shard as usize].store.apply(0, request, now_ms) {
            engram_server::store::Outcome::Ready(response) => response,
            engram_server::store::Outcome::Parked(_) => error(ErrorCode::Internal, "a read parked"),
        }
    }

    /// Installs `map` if it is newer; every shard then commits what it decides.
    fn install(&mut self, map: SlotMap, now: u64) -> Result<(), String> {
        map.validate()?;
        if self
            .routing
            .as_ref()
            .is_some_and(|routing| map.epoch <= routing.epoch())
        {
            return Ok(());
        }
        let routing = Routing::new(map, self.node_id);
        let now_ms = self.clock(now);
        for shard in &mut self.shards {
            shard.on_new_map(self.routing.as_ref(), &routing, now_ms);
        }
        self.routing = Some(routing);
        Ok(())
    }

    fn mark_checked(&mut self, now: u64) {
        let grace = self.liveness_timeout_ms.saturating_sub(CONTROL_CALL_TIMEOUT_MS) / 2;
        self.checked_until_ms = self.clock(now) + grace;
    }

    pub fn timer(&mut self, timer: Timer, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match timer {
            Timer::Join => self.send_join(&mut actions),
            Timer::Heartbeat => self.beat(&mut actions),
            Timer::CallTimeout(call) => {
                if let Some(pending) = self.pending.remove(&call) {
                    self.failed(pending, "timed out".into(), now, &mut actions);
                }
            }
            _ => {}
        }
        actions
    }

    fn beat(&mut self, actions: &mut Vec<Action>) {
        let migrations = self.shards.iter().flat_map(Shard::open_migrations).collect();
        let heartbeat = Heartbeat {
            node_id: self.node_id,
            map_epoch: self.routing.as_ref().map_or(0, Routing::epoch),
            shards: self
                .shards
                .iter()
                .map(|shard| ShardLoad {
                    keys: shard.store.stats().keys,
                    memory_used_bytes: shard.store.stats().memory_used_bytes,
                    operations_total: 0,
                })
                .collect(),
            migrations,
            incarnation: self.incarnation,
            in_sync: Vec::new(),
        };
        let request = Request::Heartbeat(heartbeat);
        self.call(
            Endpoint::Control,
            request,
            CONTROL_CALL_TIMEOUT_MS,
            Pending::Heartbeat,
            actions,
        );
    }

    fn next_beat(actions: &mut Vec<Action>) {
        actions.push(Action::Timer {
            after_ms: HEARTBEAT_INTERVAL_MS,
            timer: Timer::Heartbeat,
        });
    }

    /// A call that got no answer (timed out, refused, broke).
    fn failed(&mut self, pending: Pending, reason: String, now: u64, actions: &mut Vec<Action>) {
        match pending {
            Pending::Join => actions.push(Action::Timer {
                after_ms: JOIN_RETRY_MS,
                timer: Timer::Join,
            }),
            // A control plane that is down moves nothing meanwhile: the map stays good.
            Pending::Heartbeat | Pending::FetchMap { .. } => {
                self.mark_checked(now);
                Self::next_beat(actions);
            }
            Pending::Batch {
                shard,
                shipment,
                caller,
            } => self.ship_failed(shard, &shipment, caller, reason, actions),
        }
    }

    /// An answer to one of this process's calls.
    pub fn answered(&mut self, call: u64, reply: Reply, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(pending) = self.pending.remove(&call) else {
            return actions;
        };
        if let Reply::LinkError(reason) = reply {
            self.failed(pending, reason, now, &mut actions);
            return actions;
        }
        match pending {
            Pending::Join => self.joined(reply, now, &mut actions),
            Pending::Heartbeat => self.heartbeat_answered(reply, now, &mut actions),
            Pending::FetchMap {
                control_epoch,
                abort_migrations,
            } => {
                if let Reply::SlotMap(map) = reply {
                    let _ = self.install(map, now);
                }
                self.after_exchange(control_epoch, &abort_migrations, now);
                Self::next_beat(&mut actions);
            }
            Pending::Batch {
                shard,
                shipment,
                caller,
            } => self.batch_answered(shard, shipment, caller, reply, now, &mut actions),
        }
        actions
    }

    fn joined(&mut self, reply: Reply, now: u64, actions: &mut Vec<Action>) {
        let Reply::Joined {
            node_id,
            map,
            incarnation,
            liveness_timeout_ms,
        } = reply
        else {
            actions.push(Action::Timer {
                after_ms: JOIN_RETRY_MS,
                timer: Timer::Join,
            });
            return;
        };
        self.node_id = node_id;
        self.incarnation = incarnation;
        self.liveness_timeout_ms = liveness_timeout_ms;
        for shard in &mut self.shards {
            shard.store.raise_version_floor(incarnation_version_floor(incarnation));
        }
        let _ = self.install(map, now);
        self.mark_checked(now);
        actions.push(Action::Trace(format!(
            "n{} joined as node {node_id} inc {incarnation}",
            self.index
        )));
        Self::next_beat(actions);
    }

    fn heartbeat_answered(&mut self, reply: Reply, now: u64, actions: &mut Vec<Action>) {
        let Reply::HeartbeatAck {
            map_epoch,
            abort_migrations,
            liveness_timeout_ms,
        } = reply
        else {
            // A refused beat does not count as a check: a replaced process stops serving.
            Self::next_beat(actions);
            return;
        };
        self.liveness_timeout_ms = liveness_timeout_ms;
        if map_epoch > self.routing.as_ref().map_or(0, Routing::epoch) {
            let fetch = Pending::FetchMap {
                control_epoch: map_epoch,
                abort_migrations,
            };
            self.call(
                Endpoint::Control,
                Request::GetSlotMap,
                CONTROL_CALL_TIMEOUT_MS,
                fetch,
                actions,
            );
            return;
        }
        self.after_exchange(map_epoch, &abort_migrations, now);
        Self::next_beat(actions);
    }

    /// The end of an exchange with the control plane: the map counts as checked if it
    /// is the control plane's, and the migrations it no longer runs are aborted (each
    /// shard refuses while its map is older than the control plane's).
    fn after_exchange(&mut self, control_epoch: u64, abort_migrations: &[u64], now: u64) {
        let Some(epoch) = self.routing.as_ref().map(Routing::epoch) else {
            return;
        };
        if control_epoch <= epoch {
            self.mark_checked(now);
        }
        let now_ms = self.clock(now);
        let Some(routing) = &self.routing else { return };
        for shard in &mut self.shards {
            for &migration_id in abort_migrations {
                shard.migrate_abort(migration_id, control_epoch, routing, now_ms);
            }
        }
    }

    /// A request to the front port or a shard's port.
    pub fn request(&mut self, at: Endpoint, caller: Caller, request: Request, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let reply = match (at, request) {
            (_, Request::GetSlotMap) => Some(match &self.routing {
                Some(routing) => Reply::SlotMap(routing.map.clone()),
                None => Reply::LinkError("not serving yet".into()),
            }),
            (_, Request::InstallMap(map)) | (_, Request::Node(NodeCall::InstallMap(map))) => {
                Some(Reply::Node(self.install_answer(map, now)))
            }
            (Endpoint::Shard(_, shard), request) => self.shard_request(shard, caller, request, now, &mut actions),
            _ => Some(Reply::LinkError("not a front-port command".into())),
        };
        actions.extend(reply.map(|reply| caller.answer(reply)));
        actions
    }

    fn install_answer(&mut self, map: SlotMap, now: u64) -> Answer {
        match self.install(map, now) {
            Ok(()) => Answer::Accepted,
            Err(reason) => Answer::Refused { message: reason },
        }
    }

    fn shard_request(
        &mut self,
        shard: u16,
        caller: Caller,
        request: Request,
        now: u64,
        actions: &mut Vec<Action>,
    ) -> Option<Reply> {
        let now_ms = self.clock(now);
        let fresh = now_ms <= self.checked_until_ms;
        let routing = self.routing.as_ref()?;
        let target = self.shards.get_mut(shard as usize)?;
        let answer = |response: PeerResponse| Some(Reply::Node(answer_of(response)));
        match request {
            Request::Data { client_id, request } if fresh => {
                let request = with_namespace(request);
                Some(Reply::Data(target.serve(client_id, &request, routing, now_ms)))
            }
            Request::Data { .. } => Some(Reply::Data(error(ErrorCode::TryAgain, "map not checked lately"))),
            Request::MigrateIn(order) => answer(target.migrate_in(&order, routing, now_ms)),
            Request::Node(NodeCall::MigrateAbort {
                migration_id,
                map_epoch,
            }) => answer(target.migrate_abort(migration_id, map_epoch, routing, now_ms)),
            Request::Node(NodeCall::MigrateOut {
                migration_id,
                slots,
                target_address,
            }) => match target.migrate_out(migration_id, &slots, &target_address, routing, now_ms) {
                Ok(shipment) => {
                    self.ship(shard, Box::new(shipment), caller, now, actions);
                    None
                }
                Err(refusal) => answer(refusal),
            },
            _ => Some(Reply::LinkError("not a shard command".into())),
        }
    }

    /// Sends the next batch of `shipment`, or finishes it.
    fn ship(&mut self, shard: u16, mut shipment: Box<Shipment>, caller: Caller, now: u64, actions: &mut Vec<Action>) {
        let Some(batch) = shipment.batches.pop_front() else {
            let failure = (shipment.next_index == 0).then(|| "the export produced no batch".to_string());
            let response = self.shards[shard as usize].shipped(&shipment, failure);
            actions.push(caller.answer(Reply::Node(answer_of(response))));
            return;
        };
        let Some(target) = endpoint_of(&shipment.target_address) else {
            self.ship_failed(shard, &shipment, caller, "no such target".into(), actions);
            return;
        };
        let order = MigrateIn {
            migration_id: shipment.migration_id,
            slots: shipment.slots.clone(),
            batch,
            batch_index: shipment.next_index,
            age_ms: self.clock(now).saturating_sub(shipment.exported_at_ms),
        };
        shipment.next_index += 1;
        let pending = Pending::Batch {
            shard,
            shipment,
            caller,
        };
        self.call(
            target,
            Request::MigrateIn(order),
            MIGRATION_PEER_TIMEOUT_MS,
            pending,
            actions,
        );
    }

    fn batch_answered(
        &mut self,
        shard: u16,
        shipment: Box<Shipment>,
        caller: Caller,
        reply: Reply,
        now: u64,
        actions: &mut Vec<Action>,
    ) {
        let reason = match reply {
            Reply::Node(Answer::Accepted) => return self.ship(shard, shipment, caller, now, actions),
            Reply::Node(Answer::Refused { message }) => format!("target refused a batch: {message}"),
            other => format!("target answered {other:?}"),
        };
        self.ship_failed(shard, &shipment, caller, reason, actions);
    }

    fn ship_failed(
        &mut self,
        shard: u16,
        shipment: &Shipment,
        caller: Caller,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        let response = self.shards[shard as usize].shipped(shipment, Some(reason));
        actions.push(caller.answer(Reply::Node(answer_of(response))));
    }
}

/// The namespace every model client uses.
pub const NAMESPACE: &[u8] = b"sim";

/// `key` as the store keeps it: `[len][namespace]` in front, as a connection does.
pub fn stored_key(key: &[u8]) -> Vec<u8> {
    let mut stored = vec![NAMESPACE.len() as u8];
    stored.extend_from_slice(NAMESPACE);
    stored.extend_from_slice(key);
    stored
}

fn with_namespace(mut request: engram_proto::DataRequest) -> engram_proto::DataRequest {
    if let DataCommand::Counter(CounterCommand::Add { key, .. }) | DataCommand::Counter(CounterCommand::Get { key }) =
        &mut request.command
    {
        *key = stored_key(key);
    }
    request
}

/// A shard's wire answer, as the control plane's driver turns it into the orchestrator's.
pub fn answer_of(response: PeerResponse) -> Answer {
    match response {
        PeerResponse::MigrationPrepared { entries, bytes } => Answer::Prepared { entries, bytes },
        PeerResponse::Accepted => Answer::Accepted,
        PeerResponse::Error(reply) => Answer::Refused { message: reply.message },
        PeerResponse::Replicated(_) => Answer::Refused {
            message: "a model shard answered with a replication answer".into(),
        },
    }
}
