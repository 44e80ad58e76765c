//! The election's driver over etcd: it runs the [`Leadership`] state machine on this
//! process's monotonic clock, performs its outputs with `etcd-client` (lease grants,
//! the conditional put of the leader key, keep-alives, reads and a watch of the key,
//! revokes), feeds the results back, and tells the [`Controller`] when it leads, stands
//! by, and who leads.
//!
//! On becoming leader it reads the state key (after taking the leader key, so no earlier
//! leader can write past what it reads: their writes are conditioned on a leader key
//! that is no longer theirs) and hands it, with the revisions its writes are conditioned
//! on, to [`Controller::take_over`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::mpsc;

use crate::leadership::{
    Campaign, Candidate, Holder, Input, Leadership, Output, ETCD_CALL_TIMEOUT_MS, LEASE_TTL_MS, OBSERVE_INTERVAL_MS,
};
use crate::service::Controller;
use crate::state::{EtcdTerm, EtcdWriter, Keys, StateError};

/// How often the driver feeds the time to the state machine: well under the margin
/// between its lease bound and the lease's end.
pub const ELECTION_TICK_MS: u64 = 100;
/// Results of etcd calls queued for the state machine at most (a few calls are ever in
/// flight: one campaign or keep-alive, one read, the watch).
const INPUTS_QUEUED_MAX: usize = 64;

pub struct ElectionSettings {
    pub endpoints: Vec<String>,
    pub keys: Keys,
    pub me: Candidate,
}

/// Runs the election for the life of the process.
pub async fn run(
    controller: Arc<Controller>,
    settings: ElectionSettings,
    writer: EtcdWriter,
) -> Result<(), StateError> {
    let client = Client::connect(&settings.endpoints, None)
        .await
        .map_err(|error| StateError::Etcd {
            endpoints: settings.endpoints.join(","),
            reason: error.to_string(),
        })?;
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut machine = Leadership::new(settings.me.clone(), now_ms());
    let (results, mut inputs) = mpsc::channel::<Input>(INPUTS_QUEUED_MAX);
    tokio::spawn(watch_leader(
        client.clone(),
        settings.keys.leader.clone(),
        results.clone(),
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(ELECTION_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let driver = Driver {
        client,
        controller,
        keys: settings.keys,
        me: settings.me,
        writer,
        results,
    };
    loop {
        let mut input = tokio::select! {
            _ = tick.tick() => Input::Tick,
            Some(input) = inputs.recv() => input,
            () = driver.controller.deposed() => Input::WriteRefused,
        };
        loop {
            let mut next = None;
            let outputs = machine.handle(input, now_ms());
            // Before the outputs are performed: a leader's requests are answered within
            // its bound only (a standby's bound is already past).
            let bound = machine
                .lease_bound()
                .map_or_else(Instant::now, |bound| started + Duration::from_millis(bound));
            driver.controller.bound_lease(bound);
            for output in outputs {
                if let Some(follow_up) = driver.perform(output).await {
                    next = Some(follow_up);
                }
            }
            match next {
                Some(follow_up) => input = follow_up,
                None => break,
            }
        }
    }
}

struct Driver {
    client: Client,
    controller: Arc<Controller>,
    keys: Keys,
    me: Candidate,
    writer: EtcdWriter,
    results: mpsc::Sender<Input>,
}

impl Driver {
    /// Performs one output; returns an input to feed at once, if any.
    async fn perform(&self, output: Output) -> Option<Input> {
        match output {
            Output::Campaign { attempt } => {
                let (client, keys, me, results) = (
                    self.client.clone(),
                    self.keys.clone(),
                    self.me.clone(),
                    self.results.clone(),
                );
                tokio::spawn(async move {
                    let outcome = bounded(campaign(client, &keys, &me)).await.unwrap_or(Campaign::Failed);
                    let _ = results.send(Input::Campaigned { attempt, outcome }).await;
                });
            }
            Output::KeepAlive { attempt, lease } => {
                let (mut client, results) = (self.client.clone(), self.results.clone());
                tokio::spawn(async move {
                    let input = match bounded(client.lease_keep_alive(lease)).await {
                        Some(Ok(_)) => Input::KeptAlive { attempt, alive: true },
                        Some(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                            Input::KeptAlive { attempt, alive: false }
                        }
                        Some(Err(_)) | None => Input::KeepAliveFailed { attempt },
                    };
                    let _ = results.send(input).await;
                });
            }
            Output::Observe => {
                let (mut client, key, results) = (self.client.clone(), self.keys.leader.clone(), self.results.clone());
                tokio::spawn(async move {
                    if let Some(Ok(response)) = bounded(client.get(key, None)).await {
                        let revision = response.header().map_or(0, |header| header.revision());
                        let holder = response.kvs().first().and_then(holder_of);
                        let _ = results.send(Input::Observed { holder, revision }).await;
                    }
                });
            }
            Output::BecomeLeader { key_revision, .. } => return self.take_over(key_revision).await,
            Output::StepDown { lease, reason } => {
                self.controller.step_down(reason.describe());
                self.revoke(lease);
            }
            Output::Revoke { lease } => self.revoke(lease),
            Output::Follow { leader } => {
                match &leader {
                    Some(leader) if leader.id != self.me.id => {
                        tracing::info!(leader = %leader.address, "standing by: another control plane leads");
                    }
                    Some(_) => {}
                    None => tracing::info!("no control plane leads; campaigning"),
                }
                self.controller.follow(leader.map(|leader| leader.address));
            }
        }
        None
    }

    /// Reads the state and hands it to the controller; a failure to read (or a state
    /// that does not decode) gives the leadership up again.
    async fn take_over(&self, key_revision: i64) -> Option<Input> {
        let mut client = self.client.clone();
        let read = match bounded(client.get(self.keys.state.as_str(), None)).await {
            Some(Ok(response)) => response,
            Some(Err(error)) => {
                tracing::warn!(%error, "won the election but cannot read the state; giving it up");
                return Some(Input::WriteRefused);
            }
            None => {
                tracing::warn!("won the election but the state read timed out; giving it up");
                return Some(Input::WriteRefused);
            }
        };
        let (saved, state_revision) = match read.kvs().first() {
            Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision()),
            None => (None, 0),
        };
        let term = EtcdTerm::new(self.writer.clone(), self.keys.clone(), key_revision, state_revision);
        match self.controller.take_over(term, saved) {
            Ok(()) => {
                tracing::info!(key_revision, state_revision, "won the election");
                None
            }
            Err(error) => {
                tracing::error!(%error, "won the election but cannot use the state; giving it up");
                Some(Input::WriteRefused)
            }
        }
    }

    fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        tokio::spawn(async move {
            // Best effort: an unrevoked lease lapses by itself within its TTL.
            let _ = bounded(client.lease_revoke(lease)).await;
        });
    }
}

/// `call`, or `None` when it takes longer than [`ETCD_CALL_TIMEOUT_MS`].
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(ETCD_CALL_TIMEOUT_MS), call)
        .await
        .ok()
}

/// Grants a lease and puts the leader key under it if nobody holds the key.
async fn campaign(mut client: Client, keys: &Keys, me: &Candidate) -> Campaign {
    let Ok(grant) = client.lease_grant((LEASE_TTL_MS / 1000) as i64, None).await else {
        return Campaign::Failed;
    };
    let lease = grant.id();
    let txn = Txn::new()
        .when([Compare::create_revision(keys.leader.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            keys.leader.as_str(),
            me.encode(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(keys.leader.as_str(), None)]);
    let response = match client.txn(txn).await {
        Ok(response) => response,
        Err(_) => {
            let _ = client.lease_revoke(lease).await;
            return Campaign::Failed;
        }
    };
    if response.succeeded() {
        let key_revision = response.header().map_or(0, |header| header.revision());
        return Campaign::Won { lease, key_revision };
    }
    let _ = client.lease_revoke(lease).await;
    let holder = response.op_responses().into_iter().find_map(|answer| match answer {
        TxnOpResponse::Get(get) => get.kvs().first().and_then(holder_of),
        _ => None,
    });
    Campaign::Lost { holder }
}

fn holder_of(kv: &KeyValue) -> Option<Holder> {
    Some(Holder {
        candidate: Candidate::decode(kv.value())?,
        lease: kv.lease(),
        create_revision: kv.create_revision(),
    })
}

/// Feeds every change of the leader key to the state machine, re-watching after a
/// broken stream (the periodic reads cover the gap).
async fn watch_leader(mut client: Client, key: String, results: mpsc::Sender<Input>) {
    loop {
        if let Ok(mut stream) = client.watch(key.as_str(), None).await {
            while let Ok(Some(response)) = stream.message().await {
                let revision = response.header().map_or(0, |header| header.revision());
                for event in response.events() {
                    let holder = match event.event_type() {
                        EventType::Put => event.kv().and_then(holder_of),
                        EventType::Delete => None,
                    };
                    if results.send(Input::Observed { holder, revision }).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(OBSERVE_INTERVAL_MS)).await;
    }
}
