//! Which of several `engram-control` processes leads, as a sans-I/O state machine: it
//! never touches etcd, a socket or a clock. The driver (`election.rs` over etcd, or the
//! simulation) feeds it [`Input`]s with the process's monotonic time and performs the
//! [`Output`]s it returns.
//!
//! Election: a process campaigns by granting itself an etcd lease of [`LEASE_TTL_MS`]
//! and putting `{prefix}/leader` (its [`Candidate`]) under that lease, only if the key
//! does not exist. The one whose put took leads; the key's create revision names its
//! term, and every state write it makes is conditioned on the key still having that
//! create revision, so etcd itself refuses the writes of a deposed leader. The leader
//! renews its lease every [`KEEP_ALIVE_INTERVAL_MS`]. Standbys watch the key (and read
//! it every [`OBSERVE_INTERVAL_MS`], in case a watch event was lost) and campaign when it
//! is gone.
//!
//! The lease bound: etcd keeps a lease alive at least [`LEASE_TTL_MS`] after it handled
//! the grant or keep-alive, which is after this process sent it. So, measured from when
//! the last keep-alive that succeeded was *sent*, the lease cannot have lapsed for
//! [`LEASE_TTL_MS`] less [`CLOCK_DRIFT_MARGIN_MS`] (the two clocks may run at slightly
//! different rates). A leader that has not renewed by then steps down by itself, whether
//! or not etcd can be reached; a process that was paused past it (its clock jumped)
//! steps down on the first input it gets, before anything else.
//!
//! Invariant: at any instant, at most one process believes it leads within its lease
//! bound (another lease cannot hold the key before this one lapsed, and no lease lapses
//! before its bound).

/// The lease a leader holds the leader key with; etcd counts it in whole seconds.
pub const LEASE_TTL_MS: u64 = 5_000;
/// How often the leader renews its lease: several tries fit in one lease.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
/// How much earlier than the lease's end the leader gives up: etcd's clock and this
/// process's may run at slightly different rates (5% of the lease).
pub const CLOCK_DRIFT_MARGIN_MS: u64 = 250;
/// How often every process reads the leader key, besides watching it.
pub const OBSERVE_INTERVAL_MS: u64 = 1_000;
/// How long a process waits after a failed campaign or a step-down before it
/// campaigns again.
pub const CAMPAIGN_BACKOFF_MS: u64 = 500;
/// How long a campaign or a keep-alive may go unanswered before it counts as failed.
pub const ETCD_CALL_TIMEOUT_MS: u64 = 1_000;

/// Who a process is, as the leader key holds it: an id unique to the process, and the
/// address its control port is reached at (what standbys answer `NotLeader` with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub address: String,
}

impl Candidate {
    /// The leader key's value: `address id`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.address, self.id).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Candidate> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (address, id) = text.split_once(' ')?;
        Some(Candidate {
            id: id.to_string(),
            address: address.to_string(),
        })
    }
}

/// The leader key as read: who holds it, under which lease, since which revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub candidate: Candidate,
    pub lease: i64,
    pub create_revision: i64,
}

/// How a campaign ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// The put took: this process holds the key under `lease` since `key_revision`.
    Won { lease: i64, key_revision: i64 },
    /// Someone holds the key (the driver revoked the lease it granted for the try).
    Lost { holder: Option<Holder> },
    /// No answer, or an error: nothing is known.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed; the driver ticks often (every 100 ms or so).
    Tick,
    Campaigned {
        attempt: u64,
        outcome: Campaign,
    },
    /// A keep-alive was answered: `alive` false when etcd no longer knows the lease.
    KeptAlive {
        attempt: u64,
        alive: bool,
    },
    /// A keep-alive got no answer, or an error.
    KeepAliveFailed {
        attempt: u64,
    },
    /// The leader key as etcd had it at `revision` (a watch event or a read).
    Observed {
        holder: Option<Holder>,
        revision: i64,
    },
    /// etcd refused a state write (or its outcome is unknown): this process may not be
    /// the leader any more, or its copy of the state is stale.
    WriteRefused,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// Not renewed before the lease could have lapsed.
    LeaseMayHaveLapsed,
    /// etcd answered that the lease is gone.
    LeaseGone,
    /// The leader key is gone or someone else's.
    Deposed,
    WriteRefused,
}

impl StepDownReason {
    pub fn describe(self) -> &'static str {
        match self {
            StepDownReason::LeaseMayHaveLapsed => "the lease was not renewed before it could have lapsed",
            StepDownReason::LeaseGone => "etcd no longer knows the lease",
            StepDownReason::Deposed => "the leader key is gone or held by another process",
            StepDownReason::WriteRefused => "etcd refused a state write (or its outcome is unknown)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Grant a lease of [`LEASE_TTL_MS`] and put the leader key under it if it does not
    /// exist; answer [`Input::Campaigned`] with the same attempt.
    Campaign { attempt: u64 },
    /// Renew `lease`; answer [`Input::KeptAlive`] or [`Input::KeepAliveFailed`].
    KeepAlive { attempt: u64, lease: i64 },
    /// Read the leader key; answer [`Input::Observed`].
    Observe,
    /// This process leads from now on: read the state and take over.
    BecomeLeader { lease: i64, key_revision: i64 },
    /// This process no longer leads: stop acting as leader, then revoke `lease`.
    StepDown { lease: i64, reason: StepDownReason },
    /// Revoke a lease this process holds the key with but does not lead under (a
    /// campaign it had given up on took after all).
    Revoke { lease: i64 },
    /// Who leads, as far as this process knows, changed: what standbys answer.
    Follow { leader: Option<Candidate> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Following {
        leader: Option<Holder>,
        /// When to campaign; `None` while a leader is known.
        campaign_at: Option<u64>,
    },
    Campaigning {
        attempt: u64,
        sent_at: u64,
    },
    Leading {
        lease: i64,
        key_revision: i64,
        /// When the last keep-alive (or the grant) that succeeded was sent.
        renewed_sent_at: u64,
        /// The keep-alive in flight: attempt and when it was sent.
        keep_alive: Option<(u64, u64)>,
        next_keep_alive_at: u64,
    },
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Leadership {
    me: Candidate,
    role: Role,
    next_attempt: u64,
    next_observe_at: u64,
}

impl Leadership {
    /// A process that has just started: it campaigns at once.
    pub fn new(me: Candidate, now_ms: u64) -> Leadership {
        Leadership {
            me,
            role: Role::Following {
                leader: None,
                campaign_at: Some(now_ms),
            },
            next_attempt: 0,
            next_observe_at: now_ms,
        }
    }

    pub fn me(&self) -> &Candidate {
        &self.me
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leading { .. })
    }

    /// While leading: the time (this process's clock) by which it steps down unless it
    /// renews its lease.
    pub fn lease_bound(&self) -> Option<u64> {
        match self.role {
            Role::Leading { renewed_sent_at, .. } => Some(bound_of(renewed_sent_at)),
            _ => None,
        }
    }

    /// The leader key's create revision while leading: the term writes are conditioned on.
    pub fn key_revision(&self) -> Option<i64> {
        match self.role {
            Role::Leading { key_revision, .. } => Some(key_revision),
            _ => None,
        }
    }

    /// The leader as this process knows it: itself while leading.
    pub fn leader(&self) -> Option<&Candidate> {
        match &self.role {
            Role::Leading { .. } => Some(&self.me),
            Role::Following { leader, .. } => leader.as_ref().map(|holder| &holder.candidate),
            Role::Campaigning { .. } => None,
        }
    }

    /// Feeds one input at `now_ms`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Output> {
        let mut outputs = Vec::new();
        // Before anything else: a leader past its bound (it was paused, or etcd was out
        // of reach) is no leader, whatever the input says.
        if self.lease_bound().is_some_and(|bound| now_ms >= bound) {
            self.step_down(StepDownReason::LeaseMayHaveLapsed, now_ms, &mut outputs);
        }
        match input {
            Input::Tick => self.tick(now_ms, &mut outputs),
            Input::Campaigned { attempt, outcome } => self.campaigned(attempt, outcome, now_ms, &mut outputs),
            Input::KeptAlive { attempt, alive } => self.kept_alive(attempt, alive, now_ms, &mut outputs),
            Input::KeepAliveFailed { attempt } => {
                if let Role::Leading {
                    keep_alive,
                    next_keep_alive_at,
                    ..
                } = &mut self.role
                {
                    if keep_alive.is_some_and(|(sent, _)| sent == attempt) {
                        *keep_alive = None;
                        *next_keep_alive_at = now_ms;
                    }
                }
            }
            Input::Observed { holder, revision } => self.observed(holder, revision, now_ms, &mut outputs),
            Input::WriteRefused => {
                if self.is_leader() {
                    self.step_down(StepDownReason::WriteRefused, now_ms, &mut outputs);
                }
            }
        }
        outputs
    }

    fn attempt(&mut self) -> u64 {
        self.next_attempt += 1;
        self.next_attempt
    }

    fn tick(&mut self, now_ms: u64, outputs: &mut Vec<Output>) {
        if now_ms >= self.next_observe_at {
            self.next_observe_at = now_ms + OBSERVE_INTERVAL_MS;
            outputs.push(Output::Observe);
        }
        match self.role {
            Role::Following {
                campaign_at: Some(at), ..
            } if now_ms >= at => self.campaign(now_ms, outputs),
            Role::Campaigning { sent_at, .. } if now_ms >= sent_at + ETCD_CALL_TIMEOUT_MS => {
                // Given up on; should it take after all, its late answer revokes it.
                self.role = Role::Following {
                    leader: None,
                    campaign_at: Some(now_ms + CAMPAIGN_BACKOFF_MS),
                };
            }
            Role::Leading {
                lease,
                ref mut keep_alive,
                next_keep_alive_at,
                ..
            } => {
                if keep_alive.is_some_and(|(_, sent_at)| now_ms >= sent_at + ETCD_CALL_TIMEOUT_MS) {
                    *keep_alive = None;
                }
                if keep_alive.is_none() && now_ms >= next_keep_alive_at {
                    self.next_attempt += 1;
                    let attempt = self.next_attempt;
                    if let Role::Leading { keep_alive, .. } = &mut self.role {
                        *keep_alive = Some((attempt, now_ms));
                    }
                    outputs.push(Output::KeepAlive { attempt, lease });
                }
            }
            _ => {}
        }
    }

    fn campaign(&mut self, now_ms: u64, outputs: &mut Vec<Output>) {
        let attempt = self.attempt();
        self.role = Role::Campaigning {
            attempt,
            sent_at: now_ms,
        };
        outputs.push(Output::Campaign { attempt });
    }

    fn campaigned(&mut self, attempt: u64, outcome: Campaign, now_ms: u64, outputs: &mut Vec<Output>) {
        let sent_at = match self.role {
            Role::Campaigning {
                attempt: current,
                sent_at,
            } if current == attempt => sent_at,
            _ => {
                // An answer to a campaign given up on: a win holds the key for nobody.
                if let Campaign::Won { lease, .. } = outcome {
                    outputs.push(Output::Revoke { lease });
                }
                return;
            }
        };
        match outcome {
            Campaign::Won { lease, key_revision } if now_ms < bound_of(sent_at) => {
                self.role = Role::Leading {
                    lease,
                    key_revision,
                    renewed_sent_at: sent_at,
                    keep_alive: None,
                    next_keep_alive_at: sent_at + KEEP_ALIVE_INTERVAL_MS,
                };
                outputs.push(Output::BecomeLeader { lease, key_revision });
                outputs.push(Output::Follow {
                    leader: Some(self.me.clone()),
                });
            }
            Campaign::Won { lease, .. } => {
                // Won so late that the lease may have lapsed already.
                outputs.push(Output::Revoke { lease });
                self.follow(None, Some(now_ms + CAMPAIGN_BACKOFF_MS), outputs);
            }
            Campaign::Lost { holder } => self.follow_holder(holder, now_ms, outputs),
            Campaign::Failed => self.follow(None, Some(now_ms + CAMPAIGN_BACKOFF_MS), outputs),
        }
    }

    fn kept_alive(&mut self, attempt: u64, alive: bool, now_ms: u64, outputs: &mut Vec<Output>) {
        let Role::Leading {
            keep_alive,
            renewed_sent_at,
            next_keep_alive_at,
            ..
        } = &mut self.role
        else {
            return;
        };
        let Some((current, sent_at)) = *keep_alive else {
            return;
        };
        if current != attempt {
            return;
        }
        *keep_alive = None;
        if !alive {
            self.step_down(StepDownReason::LeaseGone, now_ms, outputs);
            return;
        }
        *renewed_sent_at = (*renewed_sent_at).max(sent_at);
        *next_keep_alive_at = sent_at + KEEP_ALIVE_INTERVAL_MS;
    }

    fn observed(&mut self, holder: Option<Holder>, revision: i64, now_ms: u64, outputs: &mut Vec<Output>) {
        match &self.role {
            Role::Leading {
                lease, key_revision, ..
            } => {
                let mine = holder
                    .as_ref()
                    .is_some_and(|holder| holder.lease == *lease && holder.create_revision == *key_revision);
                // A read from before this term says nothing about it.
                if !mine && revision >= *key_revision {
                    self.step_down(StepDownReason::Deposed, now_ms, outputs);
                }
            }
            Role::Following { .. } => self.follow_holder(holder, now_ms, outputs),
            Role::Campaigning { .. } => {}
        }
    }

    /// Follows what the key says: campaigns when nobody holds it, or when it is held
    /// under a lease of this very process that it does not lead with (revoked first).
    fn follow_holder(&mut self, holder: Option<Holder>, now_ms: u64, outputs: &mut Vec<Output>) {
        match holder {
            Some(holder) if holder.candidate.id == self.me.id => {
                outputs.push(Output::Revoke { lease: holder.lease });
                self.follow(None, Some(now_ms + CAMPAIGN_BACKOFF_MS), outputs);
            }
            Some(holder) => self.follow(Some(holder), None, outputs),
            None => {
                let campaign_at = match self.role {
                    Role::Following {
                        campaign_at: Some(at), ..
                    } => at.min(now_ms),
                    _ => now_ms,
                };
                self.follow(None, Some(campaign_at), outputs);
            }
        }
    }

    fn follow(&mut self, leader: Option<Holder>, campaign_at: Option<u64>, outputs: &mut Vec<Output>) {
        let before = self.leader().cloned();
        let after = leader.as_ref().map(|holder| holder.candidate.clone());
        self.role = Role::Following { leader, campaign_at };
        if before != after {
            outputs.push(Output::Follow { leader: after });
        }
    }

    fn step_down(&mut self, reason: StepDownReason, now_ms: u64, outputs: &mut Vec<Output>) {
        let Role::Leading { lease, .. } = self.role else {
            return;
        };
        outputs.push(Output::StepDown { lease, reason });
        self.role = Role::Following {
            leader: None,
            campaign_at: Some(now_ms + CAMPAIGN_BACKOFF_MS),
        };
        outputs.push(Output::Follow { leader: None });
    }
}

/// The lease bound of a lease last renewed by a keep-alive sent at `renewed_sent_at`.
fn bound_of(renewed_sent_at: u64) -> u64 {
    renewed_sent_at + LEASE_TTL_MS - CLOCK_DRIFT_MARGIN_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str) -> Candidate {
        Candidate {
            id: id.into(),
            address: format!("127.0.0.1:{}", 7300 + id.len()),
        }
    }

    fn holder(id: &str, lease: i64, create_revision: i64) -> Holder {
        Holder {
            candidate: candidate(id),
            lease,
            create_revision,
        }
    }

    /// A process that won its first campaign at time 0 with lease 7 at revision 10.
    fn leader() -> Leadership {
        let mut machine = Leadership::new(candidate("a"), 0);
        let outputs = machine.handle(Input::Tick, 0);
        assert!(outputs.contains(&Output::Campaign { attempt: 1 }), "{outputs:?}");
        let won = Campaign::Won {
            lease: 7,
            key_revision: 10,
        };
        let outputs = machine.handle(
            Input::Campaigned {
                attempt: 1,
                outcome: won,
            },
            5,
        );
        assert_eq!(
            outputs[0],
            Output::BecomeLeader {
                lease: 7,
                key_revision: 10
            }
        );
        machine
    }

    #[test]
    fn the_leader_key_value_round_trips() {
        let me = candidate("abc");
        assert_eq!(Candidate::decode(&me.encode()), Some(me));
        assert_eq!(Candidate::decode(b"no-space"), None);
    }

    #[test]
    fn a_leader_renews_every_interval_and_its_bound_counts_from_the_send() {
        let mut machine = leader();
        assert_eq!(machine.lease_bound(), Some(LEASE_TTL_MS - CLOCK_DRIFT_MARGIN_MS));
        assert!(!machine
            .handle(Input::Tick, 500)
            .iter()
            .any(|o| matches!(o, Output::KeepAlive { .. })));
        let outputs = machine.handle(Input::Tick, KEEP_ALIVE_INTERVAL_MS);
        let Some(&Output::KeepAlive { attempt, lease: 7 }) =
            outputs.iter().find(|o| matches!(o, Output::KeepAlive { .. }))
        else {
            panic!("no keep-alive: {outputs:?}");
        };
        // Answered much later: the bound counts from the send, not the answer.
        machine.handle(Input::KeptAlive { attempt, alive: true }, 1_900);
        assert_eq!(
            machine.lease_bound(),
            Some(KEEP_ALIVE_INTERVAL_MS + LEASE_TTL_MS - CLOCK_DRIFT_MARGIN_MS)
        );
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_its_lease_could_lapse() {
        let mut machine = leader();
        let mut now = 0;
        let mut stepped = None;
        while now < 2 * LEASE_TTL_MS && stepped.is_none() {
            // Ticks finer than the margin, so the first one at the bound is the bound.
            now += 50;
            for output in machine.handle(Input::Tick, now) {
                match output {
                    Output::KeepAlive { attempt, .. } => {
                        machine.handle(Input::KeepAliveFailed { attempt }, now);
                    }
                    Output::StepDown { reason, .. } => stepped = Some((now, reason)),
                    _ => {}
                }
            }
        }
        assert_eq!(
            stepped,
            Some((LEASE_TTL_MS - CLOCK_DRIFT_MARGIN_MS, StepDownReason::LeaseMayHaveLapsed))
        );
        assert!(!machine.is_leader());
    }

    #[test]
    fn a_paused_leader_steps_down_on_its_first_input_before_acting_on_it() {
        let mut machine = leader();
        // Its clock jumped past the bound while it was stopped; a refused write is the
        // first thing it hears, yet the lapse is what it reports.
        let outputs = machine.handle(Input::WriteRefused, LEASE_TTL_MS);
        assert_eq!(
            outputs[0],
            Output::StepDown {
                lease: 7,
                reason: StepDownReason::LeaseMayHaveLapsed
            }
        );
        assert!(!outputs.iter().any(|o| matches!(o, Output::KeepAlive { .. })));
    }

    #[test]
    fn a_refused_write_or_a_gone_lease_or_another_holder_deposes_the_leader() {
        let mut machine = leader();
        let outputs = machine.handle(Input::WriteRefused, 100);
        assert!(outputs.contains(&Output::StepDown {
            lease: 7,
            reason: StepDownReason::WriteRefused
        }));

        let mut machine = leader();
        let outputs = machine.handle(Input::Tick, KEEP_ALIVE_INTERVAL_MS);
        let Some(&Output::KeepAlive { attempt, .. }) = outputs.iter().find(|o| matches!(o, Output::KeepAlive { .. }))
        else {
            panic!("no keep-alive");
        };
        let outputs = machine.handle(Input::KeptAlive { attempt, alive: false }, 1_100);
        assert!(outputs.contains(&Output::StepDown {
            lease: 7,
            reason: StepDownReason::LeaseGone
        }));

        let mut machine = leader();
        // A read from before the term is ignored; one after it that names another
        // holder deposes.
        let stale = machine.handle(
            Input::Observed {
                holder: None,
                revision: 9,
            },
            100,
        );
        assert!(stale.is_empty(), "{stale:?}");
        let outputs = machine.handle(
            Input::Observed {
                holder: Some(holder("b", 8, 12)),
                revision: 12,
            },
            100,
        );
        assert!(outputs.contains(&Output::StepDown {
            lease: 7,
            reason: StepDownReason::Deposed
        }));
    }

    #[test]
    fn a_standby_follows_the_holder_and_campaigns_once_the_key_is_gone() {
        let mut machine = Leadership::new(candidate("b"), 0);
        machine.handle(Input::Tick, 0);
        let outputs = machine.handle(
            Input::Campaigned {
                attempt: 1,
                outcome: Campaign::Lost {
                    holder: Some(holder("a", 7, 10)),
                },
            },
            3,
        );
        assert_eq!(
            outputs,
            vec![Output::Follow {
                leader: Some(candidate("a"))
            }]
        );
        assert_eq!(machine.leader(), Some(&candidate("a")));
        // While the key is held, no campaign.
        assert!(!machine
            .handle(Input::Tick, 2_000)
            .iter()
            .any(|o| matches!(o, Output::Campaign { .. })));
        let outputs = machine.handle(
            Input::Observed {
                holder: None,
                revision: 20,
            },
            2_100,
        );
        assert_eq!(outputs, vec![Output::Follow { leader: None }]);
        assert!(machine
            .handle(Input::Tick, 2_100)
            .iter()
            .any(|o| matches!(o, Output::Campaign { .. })));
    }

    #[test]
    fn a_win_that_comes_too_late_or_for_an_abandoned_campaign_is_revoked() {
        let mut machine = Leadership::new(candidate("a"), 0);
        machine.handle(Input::Tick, 0);
        // The campaign is given up on after the call timeout...
        machine.handle(Input::Tick, ETCD_CALL_TIMEOUT_MS);
        // ...and its win, arriving later, holds the key for nobody.
        let outputs = machine.handle(
            Input::Campaigned {
                attempt: 1,
                outcome: Campaign::Won {
                    lease: 3,
                    key_revision: 4,
                },
            },
            ETCD_CALL_TIMEOUT_MS + 10,
        );
        assert_eq!(outputs, vec![Output::Revoke { lease: 3 }]);
        assert!(!machine.is_leader());
        // The key held under an own lease it does not lead with: revoke, campaign again.
        let outputs = machine.handle(
            Input::Observed {
                holder: Some(holder("a", 3, 4)),
                revision: 4,
            },
            ETCD_CALL_TIMEOUT_MS + 20,
        );
        assert!(outputs.contains(&Output::Revoke { lease: 3 }), "{outputs:?}");
    }
}
