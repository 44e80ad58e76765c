//! A model of etcd as the election and the state writes use it: one linearizable store
//! with a revision counter, the leader key (deleted with its lease), the state key,
//! leases that expire exactly their TTL after the grant or keep-alive etcd handled last,
//! and the conditional transactions of `engram-control`'s campaign and state writes. It
//! also keeps the checks that need etcd's view: which process's lease holds the leader
//! key when a write is accepted, and that accepted epochs only grow.

use std::collections::BTreeMap;

use engram_control::leadership::{Campaign, Candidate, Holder, LEASE_TTL_MS};

/// A process and its incarnation (a restart is another owner).
pub type Owner = (usize, u64);

struct Lease {
    owner: Owner,
    expires_at: u64,
}

struct LeaderKey {
    candidate: Candidate,
    lease: i64,
    create_revision: i64,
}

/// A state write etcd accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub writer: Owner,
    pub epoch: u64,
    pub revision: i64,
    pub at: u64,
}

#[derive(Default)]
pub struct Etcd {
    revision: i64,
    leader: Option<LeaderKey>,
    /// The state's epoch and mod revision.
    state: Option<(u64, i64)>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    pub accepted: Vec<Accepted>,
    pub refused: u64,
    /// The first invariant an accepted write broke.
    pub violation: Option<String>,
}

impl Etcd {
    /// Expires the leases whose time has come; returns whether the leader key went
    /// (its watchers hear of it).
    pub fn expire(&mut self, now: u64) -> bool {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.expires_at <= now)
            .map(|(&id, _)| id)
            .collect();
        let mut deleted = false;
        for id in expired {
            deleted |= self.revoke(id);
        }
        deleted
    }

    /// Removes a lease and the key it holds; returns whether the leader key went.
    pub fn revoke(&mut self, lease: i64) -> bool {
        self.leases.remove(&lease);
        if self.leader.as_ref().is_some_and(|key| key.lease == lease) {
            self.revision += 1;
            self.leader = None;
            return true;
        }
        false
    }

    /// Grant and conditional put in one: the driver's two calls, with the lease starting
    /// when etcd handles them.
    pub fn campaign(&mut self, owner: Owner, candidate: Candidate, now: u64) -> Campaign {
        self.next_lease += 1;
        let lease = self.next_lease;
        if self.leader.is_some() {
            return Campaign::Lost { holder: self.holder() };
        }
        self.leases.insert(
            lease,
            Lease {
                owner,
                expires_at: now + LEASE_TTL_MS,
            },
        );
        self.revision += 1;
        self.leader = Some(LeaderKey {
            candidate,
            lease,
            create_revision: self.revision,
        });
        Campaign::Won {
            lease,
            key_revision: self.revision,
        }
    }

    /// Whether the lease lives on (renewed for a whole TTL from now).
    pub fn keep_alive(&mut self, lease: i64, now: u64) -> bool {
        match self.leases.get_mut(&lease) {
            Some(held) => {
                held.expires_at = now + LEASE_TTL_MS;
                true
            }
            None => false,
        }
    }

    pub fn holder(&self) -> Option<Holder> {
        self.leader.as_ref().map(|key| Holder {
            candidate: key.candidate.clone(),
            lease: key.lease,
            create_revision: key.create_revision,
        })
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The state's epoch (0 when none) and mod revision (0 when none).
    pub fn state(&self) -> (u64, i64) {
        self.state.unwrap_or((0, 0))
    }

    /// The owner whose lease holds the leader key now.
    pub fn key_owner(&self) -> Option<Owner> {
        let key = self.leader.as_ref()?;
        self.leases.get(&key.lease).map(|lease| lease.owner)
    }

    /// A state write: put `epoch` if the state's mod revision is `state_revision` and,
    /// when given, the leader key's create revision is `key_revision`.
    pub fn write(
        &mut self,
        writer: Owner,
        state_revision: i64,
        key_revision: Option<i64>,
        epoch: u64,
        now: u64,
    ) -> Option<i64> {
        let state_matches = self.state().1 == state_revision;
        let key_matches =
            key_revision.is_none_or(|revision| self.leader.as_ref().map_or(0, |key| key.create_revision) == revision);
        if !(state_matches && key_matches) {
            self.refused += 1;
            return None;
        }
        self.revision += 1;
        if self.violation.is_none() {
            if self.key_owner() != Some(writer) {
                self.violation = Some(format!(
                    "etcd accepted epoch {epoch} at revision {} from {writer:?}, but the leader key was held by {:?}",
                    self.revision,
                    self.key_owner()
                ));
            } else if epoch <= self.state().0 {
                self.violation = Some(format!(
                    "etcd accepted epoch {epoch} after epoch {} (not strictly increasing)",
                    self.state().0
                ));
            }
        }
        self.state = Some((epoch, self.revision));
        self.accepted.push(Accepted {
            writer,
            epoch,
            revision: self.revision,
            at: now,
        });
        Some(self.revision)
    }
}
