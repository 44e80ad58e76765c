//! The client: routing by slot, the retrying call path, and node-level commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use engram_proto::limits::{IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, KEY_BYTES_MAX, WAIT_MS_MAX};
use engram_proto::{Command, NodeInfo, Request, Response, SlotHasher, SlotMap};
use tokio::runtime::Handle;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::backoff::retry_delay_after;
use crate::config::{cap_timeout, Config};
use crate::connection::{Connection, Handshake, SentBatch};
use crate::error::{ConnectionError, Error};
use crate::limits::UNREACHABLE_ATTEMPTS_MAX;
use crate::operations::{Operation, OperationIds};
use crate::pending::Reply;
use crate::pool::Pool;
use crate::route::Route;
use engram_proto::AdminCommand;

/// A handle on an Engram cluster. Build it once and clone it freely: clones share the
/// slot map, the connections and the operation-id sequence.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    hasher: SlotHasher,
    operations: OperationIds,
    pool: Pool,
    /// `None` until a map was fetched (or always, when not direct): calls then go to the
    /// seed address.
    route: RwLock<Option<Arc<Route>>>,
    /// Serializes map refreshes so a burst of `WrongShard` answers fetches the map once.
    refreshing: tokio::sync::Mutex<()>,
    /// Map refreshes finished (whatever they found), counted under `refreshing`, so a
    /// caller that waited for the lock can tell that a whole refresh ran after it asked.
    refreshes: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("address", &self.inner.config.seed_address)
            .field("namespace", &String::from_utf8_lossy(&self.inner.config.namespace))
            .field("client_id", &self.client_id())
            .field("map_epoch", &self.map_epoch())
            .finish()
    }
}

impl Client {
    pub(crate) async fn start(config: Config, handshake: Handshake, runtime: Handle) -> Result<Client, Error> {
        let client = Client {
            inner: Arc::new(Inner {
                hasher: SlotHasher::new(&config.namespace),
                operations: OperationIds::default(),
                pool: Pool::new(handshake, runtime),
                route: RwLock::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                refreshes: AtomicU64::new(0),
                config,
            }),
        };
        let deadline = Instant::now() + client.inner.config.timeout;
        let seed = client.inner.config.seed_address.clone();
        // Connecting is tried once, so a wrong address or a stopped server is reported
        // at once rather than after a full timeout of retries.
        match timeout_at(deadline, client.inner.pool.get(&seed)).await {
            Ok(connection) => drop(connection?),
            Err(_) => return Err(client.timed_out(client.inner.config.timeout, None)),
        }
        if client.inner.config.direct {
            // Without a map every call goes to the seed, which still works through a
            // front port; the map is fetched again on the first WrongShard.
            let _ = timeout_at(deadline, client.refresh_map(0, Refresh::Stale)).await;
        }
        Ok(client)
    }

    /// The random id this client announces; with an operation id it names a mutation.
    pub fn client_id(&self) -> u64 {
        self.inner.pool.handshake().client_id
    }

    /// The client's default call timeout.
    pub fn default_timeout(&self) -> Duration {
        self.inner.config.timeout
    }

    /// Epoch of the slot map the client routes with; 0 when it has none.
    pub fn map_epoch(&self) -> u64 {
        self.route().map_or(0, |route| route.epoch())
    }

    /// Round trip to the seed node.
    pub async fn ping(&self) -> Result<(), Error> {
        match self.call(None, Command::from(AdminCommand::Ping), false).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Node and per-shard statistics of the seed node.
    pub async fn info(&self) -> Result<NodeInfo, Error> {
        match self.call(None, Command::from(AdminCommand::Info), false).await? {
            Response::Info(info) => Ok(info),
            other => Err(unexpected("info", &other)),
        }
    }

    /// Fetches the seed node's slot map; when it is newer than the client's, the client
    /// routes with it from now on.
    pub async fn slot_map(&self) -> Result<SlotMap, Error> {
        match self.call(None, Command::from(AdminCommand::GetSlotMap), false).await? {
            Response::SlotMap(map) => {
                if self.inner.config.direct {
                    self.install(Route::new(map.clone(), &self.inner.config.seed_address)?);
                }
                Ok(map)
            }
            other => Err(unexpected("get_slot_map", &other)),
        }
    }

    /// Sends `command` with the client's default timeout; see [`Client::call_with`].
    pub async fn call(&self, key: Option<&[u8]>, command: Command, mutation: bool) -> Result<Response, Error> {
        self.call_with(key, command, mutation, None).await
    }

    /// Sends `command` to the owner of `key` (the seed node when `None`) and returns its
    /// response; a `Response::Error` comes back as [`Error::Server`] (or
    /// [`Error::SlotLost`], naming the key's slot). Retryable failures are retried with
    /// backoff until `timeout` (the client default when `None`), and a `mutation` keeps
    /// one operation id across its retries so the server applies it once (a retried
    /// blocking operation re-attaches to the same parked wait).
    ///
    /// Two failures end a call early, as nothing would come of waiting: a key whose
    /// slot is lost (the server says so, or the client's map does even after a refresh)
    /// fails at once with [`Error::SlotLost`], and an address that refuses
    /// `UNREACHABLE_ATTEMPTS_MAX` connections in a row (with a map refresh between them)
    /// fails with [`Error::Unreachable`], unless the map names a backup for the key's
    /// slot: then the call waits, within its timeout, for the backup to take over.
    ///
    /// A blocking command may be parked at the server for [`Command::wait_ms`], so its
    /// call gets that long on top of `timeout`: the server answers `Timeout` for the wait
    /// before the client gives up on the call.
    pub async fn call_with(
        &self,
        key: Option<&[u8]>,
        command: Command,
        mutation: bool,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        let timeout = checked_call_timeout(key, timeout.map_or(self.inner.config.timeout, cap_timeout), &command)?;
        let deadline = Instant::now() + timeout;
        let operation = mutation.then(|| self.inner.operations.begin());
        let mut request = Request {
            op_id: operation.as_ref().map_or(0, |operation| operation.id()),
            completed_below_op_id: 0,
            command,
        };
        self.retry(key, &mut request, deadline, timeout, None).await
    }

    /// Sends `request` until it succeeds, fails for good or `deadline` passes. `failed`
    /// is the retryable error of an attempt already made (a batch's), whose backoff this
    /// then takes first. The caller keeps the request's operation in flight throughout.
    async fn retry(
        &self,
        key: Option<&[u8]>,
        request: &mut Request,
        deadline: Instant,
        timeout: Duration,
        failed: Option<Error>,
    ) -> Result<Response, Error> {
        let mut last_error: Option<Error> = None;
        let mut attempt = 0u32;
        // Failed connection attempts in a row.
        let mut unreachable = 0u32;
        if let Some(error) = failed {
            self.back_off(&error, attempt, deadline).await;
            last_error = Some(error);
            attempt = 1;
        }
        loop {
            if attempt > 0 && Instant::now() >= deadline {
                break;
            }
            let routed_epoch = self.map_epoch();
            let refresh = last_error.as_ref().map_or(Refresh::No, |error| self.refresh_for(error));
            request.completed_below_op_id = self.inner.operations.completed_below();
            let mut error = match self.attempt(key, request, refresh, routed_epoch, deadline).await {
                Ok(response) => return Ok(response),
                // The deadline passed during the attempt.
                Err(Error::Timeout { .. }) => break,
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            unreachable = error.extend_unreachable_run(unreachable);
            // Final, like a timeout: a mutation sent before the address went away may or
            // may not have been applied. Not while the map names a backup for the slot
            // (the control plane promotes it once the node is declared dead: worth
            // waiting for, up to the deadline), nor once the map moved on since the
            // attempt was routed (a promoted slot has no backup until one is filled).
            let map_moved = self.map_epoch() != routed_epoch;
            if unreachable >= UNREACHABLE_ATTEMPTS_MAX && !map_moved && !self.has_backup(key) {
                return Err(error);
            }
            self.back_off(&error, attempt, deadline).await;
            last_error = Some(error);
            attempt = attempt.saturating_add(1);
        }
        Err(self.timed_out(timeout, last_error))
    }

    /// Waits before the retry that follows attempt `attempt`'s retryable `error`.
    async fn back_off(&self, error: &Error, attempt: u32, deadline: Instant) {
        // A stale map is the common case during a migration and the refresh already
        // costs a round trip, so the first retry after one goes out at once.
        let immediate = attempt == 0 && self.refresh_for(error) != Refresh::No;
        if !immediate {
            sleep_until(deadline.min(Instant::now() + retry_delay_after(error, attempt))).await;
        }
    }

    /// Sends `commands` (each with whether it is a mutation) as a batch with the client's
    /// default timeout; see [`Client::batch_with`].
    pub async fn batch(&self, commands: Vec<(Command, bool)>) -> Vec<Result<Response, Error>> {
        self.batch_with(commands, None).await
    }

    /// Sends several commands at once and returns their results in the same order, each
    /// as [`Client::call_with`] would. Each command goes to the owner of its key (the seed
    /// node when it has none); the commands for one connection are encoded into one
    /// buffer, written together and awaited together in the calling task, under one
    /// deadline for the whole batch. Mutations get operation ids as single calls do, so a
    /// retried one is still applied once. An entry that fails with a retryable error
    /// (a stale map, `TryAgain`, a lost connection...) is retried on its own through the
    /// single-call path, within the same deadline.
    ///
    /// A connection takes at most `IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX` of the batch at
    /// a time; larger batches go out in rounds.
    pub async fn batch_with(
        &self,
        commands: Vec<(Command, bool)>,
        timeout: Option<Duration>,
    ) -> Vec<Result<Response, Error>> {
        let base = timeout.map_or(self.inner.config.timeout, cap_timeout);
        let (timeout, mut results) = batch_timeout(&commands, base);
        let deadline = Instant::now() + timeout;
        // The operations stay in flight (and their ids unacknowledged) until every entry,
        // retried ones included, has its answer.
        let (mut requests, operations) = self.batch_requests(commands);
        // Entries that still need the single-call path, with the error that sent them there
        // (`None`: the batch could not be sent, so they start afresh).
        let mut retries: Vec<(usize, Option<Error>)> = Vec::new();
        let pending: Vec<usize> = (0..requests.len()).filter(|&index| results[index].is_none()).collect();
        let mut in_flight = Vec::new();
        let sent = timeout_at(
            deadline,
            self.send_batch(&requests, &pending, &mut in_flight, &mut results, &mut retries),
        )
        .await;
        if sent.is_err() {
            self.settle_after_deadline(timeout, &pending, in_flight, &mut results, &mut retries);
        }
        if !retries.is_empty() {
            self.retry_singly(&mut requests, retries, deadline, timeout, &mut results)
                .await;
        }
        drop(operations);
        results
            .into_iter()
            .zip(&requests)
            .map(|(result, request)| match result {
                // Retried entries (their command taken) got their slot on that path.
                Some(Err(error)) => Err(self.with_slot_of(error, request.command.key())),
                Some(result) => result,
                None => Err(self.timed_out(timeout, None)),
            })
            .collect()
    }

    /// Each command as a request; mutations get an operation id.
    fn batch_requests(&self, commands: Vec<(Command, bool)>) -> (Vec<Request>, Vec<Option<Operation>>) {
        let mut operations: Vec<Option<Operation>> = Vec::with_capacity(commands.len());
        let mut requests: Vec<Request> = Vec::with_capacity(commands.len());
        for (command, mutation) in commands {
            let operation = mutation.then(|| self.inner.operations.begin());
            requests.push(Request {
                op_id: operation.as_ref().map_or(0, |operation| operation.id()),
                completed_below_op_id: 0,
                command,
            });
            operations.push(operation);
        }
        let completed_below = self.inner.operations.completed_below();
        for request in &mut requests {
            request.completed_below_op_id = completed_below;
        }
        (requests, operations)
    }

    /// The deadline passed with answers missing: the answers already in count, entries
    /// bound for the single-call path stay there, the others time out.
    fn settle_after_deadline(
        &self,
        timeout: Duration,
        pending: &[usize],
        mut in_flight: Vec<InFlight>,
        results: &mut [Option<Result<Response, Error>>],
        retries: &mut Vec<(usize, Option<Error>)>,
    ) {
        for (chunk, connection, mut sent) in in_flight.drain(..) {
            for (index, reply) in chunk.into_iter().zip(sent.answered()) {
                if let Some(reply) = reply {
                    sort_reply(index, reply, &connection, results, retries);
                }
            }
        }
        let mut retrying = vec![false; results.len()];
        for (index, _) in retries.iter() {
            retrying[*index] = true;
        }
        for &index in pending {
            if results[index].is_none() && !retrying[index] {
                results[index] = Some(Err(self.timed_out(timeout, None)));
            }
        }
    }

    /// Each retried entry takes the single-call path on its own, concurrently with the
    /// others, under the batch's deadline.
    async fn retry_singly(
        &self,
        requests: &mut [Request],
        retries: Vec<(usize, Option<Error>)>,
        deadline: Instant,
        timeout: Duration,
        results: &mut [Option<Result<Response, Error>>],
    ) {
        let mut retried: Vec<(usize, Request, Option<Error>)> = Vec::with_capacity(retries.len());
        for (index, failed) in retries {
            let request = Request {
                op_id: requests[index].op_id,
                completed_below_op_id: 0,
                command: std::mem::replace(&mut requests[index].command, Command::from(AdminCommand::Ping)),
            };
            retried.push((index, request, failed));
        }
        let outcomes = futures::future::join_all(retried.into_iter().map(|(index, mut request, failed)| async move {
            let key = request.command.key().map(<[u8]>::to_vec);
            let result = self
                .retry(key.as_deref(), &mut request, deadline, timeout, failed)
                .await;
            (index, result)
        }))
        .await;
        for (index, result) in outcomes {
            results[index] = Some(result);
        }
    }

    /// The batched pass: groups the `pending` entries by the connection their key routes
    /// to and sends them in rounds, each round at most the in-flight places free on each
    /// connection (never more than the in-flight limit): every group's share of a round is
    /// written before any answer is awaited, so the shards work in parallel. Answers land
    /// in `results`; entries to retry in `retries`.
    async fn send_batch(
        &self,
        requests: &[Request],
        pending: &[usize],
        in_flight: &mut Vec<InFlight>,
        results: &mut [Option<Result<Response, Error>>],
        retries: &mut Vec<(usize, Option<Error>)>,
    ) {
        let route = self.route();
        let map_epoch = route.as_ref().map_or(0, |route| route.epoch());
        let seed = self.inner.config.seed_address.as_str();
        // Few addresses (one per shard), so a list beats a map.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for &index in pending {
            let Some(address) = self.batch_address(requests[index].command.key(), route.as_deref(), seed) else {
                // A lost slot: the single-call path refreshes the map and reports it.
                retries.push((index, None));
                continue;
            };
            match groups.iter_mut().find(|(known, _)| *known == address) {
                Some((_, members)) => members.push(index),
                None => groups.push((address, vec![index])),
            }
        }
        let mut connections = Vec::with_capacity(groups.len());
        for (address, members) in &groups {
            match self.inner.pool.get(address).await {
                Ok(connection) => connections.push(Some(connection)),
                Err(_) => {
                    // The single-call path reports (or retries) each entry on its own.
                    retries.extend(members.iter().map(|&index| (index, None)));
                    connections.push(None);
                }
            }
        }
        let mut batch: Vec<&Request> = Vec::new();
        // How many of each group's entries went out so far.
        let mut sent_of: Vec<usize> = vec![0; groups.len()];
        while groups
            .iter()
            .zip(&connections)
            .zip(&sent_of)
            .any(|(((_, members), connection), &sent)| connection.is_some() && sent < members.len())
        {
            for (((_, members), connection), sent) in groups.iter().zip(&connections).zip(&mut sent_of) {
                let Some(connection) = connection else { continue };
                let wanted = (members.len() - *sent).min(IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX);
                if wanted == 0 {
                    continue;
                }
                // Waiting for places while holding some on another connection could
                // deadlock with a batch doing the opposite, so collect first.
                let reservation = match connection.try_reserve(wanted) {
                    Some(reservation) => reservation,
                    None => {
                        collect(in_flight, results, retries).await;
                        match connection.reserve(wanted).await {
                            Ok(reservation) => reservation,
                            Err(_) => {
                                retries.extend(members[*sent..].iter().map(|&index| (index, None)));
                                *sent = members.len();
                                continue;
                            }
                        }
                    }
                };
                let chunk = &members[*sent..*sent + reservation.count()];
                *sent += chunk.len();
                batch.clear();
                batch.extend(chunk.iter().map(|&index| &requests[index]));
                match connection.send_batch(reservation, &batch, map_epoch).await {
                    Ok(going) => in_flight.push((chunk.to_vec(), Arc::clone(connection), going)),
                    // Nothing of this chunk was sent (the connection failed, or a frame
                    // could not be encoded): each entry takes the single-call path.
                    Err(_) => retries.extend(chunk.iter().map(|&index| (index, None))),
                }
            }
            collect(in_flight, results, retries).await;
        }
    }

    /// Where a batch sends `key`'s command: its owner, or `seed` without a key or a
    /// map; `None` when the map marks the key's slot lost.
    fn batch_address<'a>(&self, key: Option<&[u8]>, route: Option<&'a Route>, seed: &'a str) -> Option<&'a str> {
        let (Some(key), Some(route)) = (key, route) else {
            return Some(seed);
        };
        let slot = self.inner.hasher.slot(key);
        match route.address_of_slot(slot) {
            None if route.is_lost(slot) => None,
            address => Some(address.unwrap_or(seed)),
        }
    }

    /// `error`, naming `key`'s slot when it is a server's `SlotLost` answer.
    fn with_slot_of(&self, error: Error, key: Option<&[u8]>) -> Error {
        match key {
            Some(key) if error.is_slot_lost() => error.at_slot(self.inner.hasher.slot(key)),
            _ => error,
        }
    }

    fn timed_out(&self, after: Duration, last_error: Option<Error>) -> Error {
        Error::Timeout {
            after,
            last_error: last_error.map(Box::new),
        }
    }

    /// Whether a failure calls for a map refresh before the retry (routing directly): the
    /// server said the map is stale, or a shard stopped answering or refused a
    /// connection, which is how a dead node looks from here (a newer map may have moved
    /// its slots or marked them lost), or a shard answered `TryAgain`, which is also how
    /// a node cut off from the control plane answers once its lease ran out: only a
    /// newer map, from another node, names the backup promoted in its place.
    fn refresh_for(&self, error: &Error) -> Refresh {
        if !self.inner.config.direct {
            Refresh::No
        } else if matches!(error, Error::Server { map_epoch, .. } if (1..self.map_epoch()).contains(map_epoch)) {
            // The server routes with an older map than ours (it has not installed the
            // one that moved the slot to it yet, or it is cut off): a light check with
            // the seed, never a hunt through every node, a paused one included.
            Refresh::Check
        } else if error.needs_map_refresh() {
            Refresh::Stale
        } else if matches!(error, Error::Connection { .. } | Error::Unreachable { .. })
            || error.is_server(engram_proto::ErrorCode::TryAgain)
        {
            Refresh::Check
        } else {
            Refresh::No
        }
    }

    /// One try of `request`, bounded by `deadline`: [`Error::Timeout`] when it passes.
    /// The common path (a connection is open, a place in flight is free) sets no timer:
    /// the connection's reaper bounds the wait for the answer.
    async fn attempt(
        &self,
        key: Option<&[u8]>,
        request: &Request,
        refresh: Refresh,
        routed_epoch: u64,
        deadline: Instant,
    ) -> Result<Response, Error> {
        if refresh != Refresh::No {
            // A failed refresh leaves the old map in place; the send below then reports
            // the error that matters for this call.
            self.refresh_until(routed_epoch, refresh, deadline).await?;
        }
        let mut route = self.route();
        let slot = key.filter(|_| route.is_some()).map(|key| self.inner.hasher.slot(key));
        if let (Some(slot), Some(current)) = (slot, &route) {
            if current.is_lost(slot) {
                let epoch = current.epoch();
                // Boxed, like the connect below: rare paths, whose futures would
                // otherwise make every call's future larger (and costlier to move).
                route = Some(Box::pin(self.route_past_lost(slot, epoch, refresh != Refresh::No, deadline)).await?);
            }
        }
        let address = match (slot, &route) {
            (Some(slot), Some(route)) => route.address_of_slot(slot).unwrap_or(&self.inner.config.seed_address),
            _ => &self.inner.config.seed_address,
        };
        let map_epoch = route.as_ref().map_or(0, |route| route.epoch());
        let connection = match self.inner.pool.open_connection(address) {
            Some(connection) => connection,
            None => Box::pin(timeout_at(deadline, self.inner.pool.get(address)))
                .await
                .map_err(|_| Error::deadline_passed())?
                .map_err(Error::unreachable)?,
        };
        match connection.call(request, map_epoch, deadline).await? {
            Response::Error(reply) => Err(self.with_slot_of(Error::from_reply(reply), key)),
            response => Ok(response),
        }
    }

    /// Refreshes the map unless it moved past `stale_epoch` (see [`Client::refresh_map`]),
    /// giving up at `deadline` ([`Error::Timeout`]); a failed refresh is not an error.
    async fn refresh_until(&self, stale_epoch: u64, refresh: Refresh, deadline: Instant) -> Result<(), Error> {
        // Boxed: a rare path, whose future would otherwise make every call's larger.
        match Box::pin(timeout_at(deadline, self.refresh_map(stale_epoch, refresh))).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::deadline_passed()),
        }
    }

    /// The route to send `slot`'s request with, when the map at `epoch` marks the slot
    /// lost. An operator may have reclaimed it since, so the map is fetched once more,
    /// unless this attempt just did (`refreshed`); a slot still lost fails the call at
    /// once with [`Error::SlotLost`], nothing sent, since no retry can bring its data
    /// back.
    async fn route_past_lost(
        &self,
        slot: u32,
        epoch: u64,
        refreshed: bool,
        deadline: Instant,
    ) -> Result<Arc<Route>, Error> {
        if !refreshed {
            // Out of time or not, the map at hand is the best account of the slot.
            let _ = self.refresh_until(epoch, Refresh::Check, deadline).await;
        }
        match self.route() {
            Some(route) if !route.is_lost(slot) => Ok(route),
            route => Err(Error::slot_lost_in_map(
                slot,
                route.map_or(epoch, |route| route.epoch()),
            )),
        }
    }

    /// Whether the map names a backup for `key`'s slot.
    fn has_backup(&self, key: Option<&[u8]>) -> bool {
        let (Some(key), Some(route)) = (key, self.route()) else {
            return false;
        };
        !route.map.backups_of(self.inner.hasher.slot(key)).is_empty()
    }

    fn route(&self) -> Option<Arc<Route>> {
        // The lock is only held to clone an Arc, so poisoning cannot leave a torn value.
        self.inner
            .route
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fetches the map unless someone already replaced the one at `stale_epoch`. A
    /// [`Refresh::Check`] is also skipped when a whole refresh ran after this caller
    /// asked: callers that pile up behind one (as calls on a lost slot or a dead node
    /// do) share the next one instead of queueing a fetch each.
    async fn refresh_map(&self, stale_epoch: u64, refresh: Refresh) -> Result<(), Error> {
        if !self.inner.config.direct {
            return Ok(());
        }
        let asked = self.inner.refreshes.load(Ordering::Acquire);
        let _refreshing = self.inner.refreshing.lock().await;
        // Refreshes run one at a time: the one running when this caller asked ends as
        // `asked + 1`; any later one started after it asked.
        let shared = refresh == Refresh::Check && self.inner.refreshes.load(Ordering::Acquire) >= asked + 2;
        if shared || self.map_epoch() > stale_epoch {
            return Ok(());
        }
        let fetched = self.fetch_newer_map(stale_epoch, refresh).await;
        self.inner.refreshes.fetch_add(1, Ordering::Release);
        fetched
    }

    /// Installs a map newer than `stale_epoch`. Asks the seed first, then every shard of
    /// the current map, so one dead node does not leave the client without a map; a
    /// [`Refresh::Check`] stops at the first node that serves a map.
    async fn fetch_newer_map(&self, stale_epoch: u64, refresh: Refresh) -> Result<(), Error> {
        let seed = &self.inner.config.seed_address;
        let mut candidates = vec![seed.clone()];
        if let Some(route) = self.route() {
            candidates.extend(route.addresses().iter().filter(|address| *address != seed).cloned());
        }
        let mut last_error = None;
        for address in candidates {
            match self.fetch_map(&address).await {
                // A node that has not yet heard of the change that sent the client here
                // (a migration just committed) knows no better map: ask the next one.
                Ok(route) if route.epoch() <= stale_epoch => {
                    last_error = Some(Error::Config(format!(
                        "{address} serves map epoch {}, no newer than {stale_epoch}",
                        route.epoch()
                    )));
                    if refresh == Refresh::Check {
                        break;
                    }
                }
                Ok(route) => {
                    self.install(route);
                    return Ok(());
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Config("no address to fetch the slot map from".into())))
    }

    async fn fetch_map(&self, address: &str) -> Result<Route, Error> {
        let request = Request {
            op_id: 0,
            completed_below_op_id: self.inner.operations.completed_below(),
            command: Command::from(AdminCommand::GetSlotMap),
        };
        let connection = self.inner.pool.get(address).await?;
        // Callers bound the whole refresh; this only keeps a single call from
        // outliving the client's own timeout.
        let deadline = Instant::now() + self.inner.config.timeout;
        match connection.call(&request, self.map_epoch(), deadline).await? {
            Response::SlotMap(map) => Route::new(map, address),
            Response::Error(reply) => Err(Error::from_reply(reply)),
            other => Err(unexpected("get_slot_map", &other)),
        }
    }

    /// Routes with `route` from now on, unless the client already has a newer map (an
    /// answer from a lagging node must not move the client backwards).
    fn install(&self, route: Route) {
        let mut current = self
            .inner
            .route
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.as_ref().is_some_and(|current| current.epoch() >= route.epoch()) {
            return;
        }
        let seed = &self.inner.config.seed_address;
        self.inner
            .pool
            .retain(|address| address == seed || route.addresses().iter().any(|known| known == address));
        *current = Some(Arc::new(route));
    }
}

/// Whether an attempt refreshes the map first, and how hard it looks for a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresh {
    No,
    /// A server said the map is stale: ask node after node until one serves a newer map
    /// (a node may not have heard of the change that sent the client here yet).
    Stale,
    /// The map may well be current (it marks the slot lost, or the slot's node refuses
    /// connections): the first node that serves a map settles it, so a call on a lost
    /// slot costs one fetch, not one per node of the cluster.
    Check,
}

/// A batch sent on one connection: the indices of its entries, in order.
type InFlight = (Vec<usize>, Arc<Connection>, SentBatch);

/// Awaits the answers of every batch in `in_flight` (they were all sent already, so this
/// waits for the slowest) and sorts them into `results` and `retries`.
async fn collect(
    in_flight: &mut Vec<InFlight>,
    results: &mut [Option<Result<Response, Error>>],
    retries: &mut Vec<(usize, Option<Error>)>,
) {
    while !in_flight.is_empty() {
        // Complete before it leaves the list, so a timeout meanwhile still finds it.
        in_flight[0].2.complete().await;
        let (chunk, connection, mut sent) = in_flight.remove(0);
        for (index, reply) in chunk.into_iter().zip(sent.answered()) {
            let reply = reply.unwrap_or(Err(ConnectionError::Closed));
            sort_reply(index, reply, &connection, results, retries);
        }
    }
}

/// Files one batch entry's reply: a result, or a retry for a retryable error.
fn sort_reply(
    index: usize,
    reply: Reply,
    connection: &Connection,
    results: &mut [Option<Result<Response, Error>>],
    retries: &mut Vec<(usize, Option<Error>)>,
) {
    let result = match reply {
        Ok(Response::Error(reply)) => Err(Error::from_reply(reply)),
        Ok(response) => Ok(response),
        Err(source) => Err(connection.failed(source)),
    };
    match result {
        Err(error) if error.is_retryable() => retries.push((index, Some(error))),
        result => results[index] = Some(result),
    }
}

/// The batch's timeout: the longest any of its commands needs (a wait may need more than
/// `base`), and the results so far: commands whose key or wait is refused at once.
fn batch_timeout(commands: &[(Command, bool)], base: Duration) -> (Duration, Vec<Option<Result<Response, Error>>>) {
    let mut results = Vec::with_capacity(commands.len());
    let mut timeout = base;
    for (command, _) in commands {
        match checked_call_timeout(command.key(), base, command) {
            Ok(needed) => {
                timeout = timeout.max(needed);
                results.push(None);
            }
            Err(error) => results.push(Some(Err(error))),
        }
    }
    (timeout, results)
}

/// The timeout a call of `command` on `key` gets from `base`, or why it cannot be sent:
/// a key past `KEY_BYTES_MAX`, or a wait the timeout cannot cover (see [`call_timeout`]).
fn checked_call_timeout(key: Option<&[u8]>, base: Duration, command: &Command) -> Result<Duration, Error> {
    if let Some(key) = key {
        if key.len() > KEY_BYTES_MAX {
            return Err(Error::KeyTooLarge { length: key.len() });
        }
    }
    call_timeout(base, command)
}

/// How long a call of `command` may take: the call timeout (at most
/// `CALL_TIMEOUT_MS_MAX`) plus the time the command may be parked at the server (at most
/// `WAIT_MS_MAX`). The wait is checked here because the server would refuse a longer
/// one, and it must not stretch the call past what the exactly-once records cover.
fn call_timeout(timeout: Duration, command: &Command) -> Result<Duration, Error> {
    let wait = Duration::from_millis(command.wait_ms());
    if command.wait_ms() > WAIT_MS_MAX {
        return Err(Error::WaitTooLong { wait });
    }
    Ok(timeout + wait)
}

/// The error for a response of the wrong kind for its command.
pub(crate) fn unexpected(command: &'static str, response: &Response) -> Error {
    Error::UnexpectedResponse {
        command,
        response: response_name(response),
    }
}

fn response_name(response: &Response) -> &'static str {
    response.name()
}
