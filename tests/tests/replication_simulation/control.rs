//! The control plane as the configuration manager of replica groups: it hears
//! heartbeats, declares a node dead after `LIVENESS_MS` of silence (never before the
//! node's lease has ended), promotes a backup for each group the dead node led, drops
//! it from every group it backed up, and restores the replica count by ordering a
//! primary to fill a new backup, which joins the group once its primary reports it in
//! sync. It also moves groups by hand-over: the primary freezes a group until its
//! in-sync backup applied every change, then a new map swaps the two. Its own state is
//! one reliable store here: the leadership simulation covers losing it.

use crate::model::{Body, Endpoint, Message, Process, SimMap, GROUPS, NODES, REPLICAS};
use crate::node::{LEASE_MS, LIVENESS_MS};
use crate::Bug;

/// How long a hand-over may wait for its primary to prepare before it is given up.
const HAND_OVER_TIMEOUT_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
struct HandOverRun {
    id: u64,
    group: usize,
    from: Process,
    to: Process,
    started_at: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Member {
    incarnation: u64,
    last_heard: u64,
    dead: bool,
}

pub struct Control {
    pub map: SimMap,
    /// Silence after which a node is declared dead.
    liveness_ms: u64,
    members: [Member; NODES],
    /// Per group: the backup being filled, if any.
    repairs: [Option<Process>; GROUPS],
    pub failovers: u64,
    pub repairs_done: u64,
    hand_over: Option<HandOverRun>,
    next_hand_over_id: u64,
    pub hand_overs_done: u64,
    /// A group left without any copy.
    pub lost_groups: Vec<usize>,
}

impl Control {
    /// Every node started as incarnation 1 at time 0; group `g` led by node `g`, backed
    /// up by the next node.
    pub fn new(map: SimMap, bug: Option<Bug>) -> Control {
        Control {
            map,
            liveness_ms: if bug == Some(Bug::EarlyPromotion) {
                LEASE_MS / 2
            } else {
                LIVENESS_MS
            },
            members: [Member {
                incarnation: 1,
                last_heard: 0,
                dead: false,
            }; NODES],
            repairs: [None; GROUPS],
            failovers: 0,
            repairs_done: 0,
            hand_over: None,
            next_hand_over_id: 1,
            hand_overs_done: 0,
            lost_groups: Vec::new(),
        }
    }

    pub fn receive(&mut self, now: u64, from: Endpoint, body: Body, out: &mut Vec<Message>, trace: &mut Vec<String>) {
        match (from, body) {
            (
                Endpoint::Node(node),
                Body::Heartbeat {
                    incarnation,
                    sent_at,
                    hand_over,
                },
            ) => {
                let member = self.members[node];
                if incarnation < member.incarnation {
                    return; // A process already replaced.
                }
                if incarnation > member.incarnation {
                    trace.push(format!("control: node {node} restarted as incarnation {incarnation}"));
                    self.remove_roles(node, trace);
                }
                self.members[node] = Member {
                    incarnation,
                    last_heard: now,
                    dead: false,
                };
                let process = Process { node, incarnation };
                if let Some((id, true)) = hand_over {
                    self.commit_hand_over(id, process, trace);
                }
                let running = self.hand_over.map(|run| run.id);
                let abort_hand_over = hand_over.map(|(id, _)| id).filter(|&id| running != Some(id));
                let repairs = (0..GROUPS)
                    .filter(|group| self.map.primary[*group] == Some(process))
                    .filter_map(|group| self.repairs[group].map(|backup| (group, backup)))
                    .collect();
                out.push(Message {
                    from: Endpoint::Control,
                    to: Endpoint::Node(node),
                    body: Body::HeartbeatAck {
                        incarnation,
                        sent_at,
                        map: self.map.clone(),
                        repairs,
                        abort_hand_over,
                    },
                });
            }
            (
                _,
                Body::InSync {
                    primary,
                    backup,
                    groups,
                },
            ) => self.in_sync(primary, backup, &groups, trace),
            (Endpoint::Client(client), Body::GetMap) => out.push(Message {
                from: Endpoint::Control,
                to: Endpoint::Client(client),
                body: Body::Map(self.map.clone()),
            }),
            _ => {}
        }
    }

    /// Declares the silent dead, then orders the repairs that are missing.
    pub fn tick(&mut self, now: u64, trace: &mut Vec<String>) {
        for node in 0..NODES {
            let member = self.members[node];
            if !member.dead && member.last_heard + self.liveness_ms < now {
                trace.push(format!("control: node {node} declared dead"));
                self.members[node].dead = true;
                self.remove_roles(node, trace);
            }
        }
        self.plan_repairs(now, trace);
        if self
            .hand_over
            .is_some_and(|run| run.started_at + HAND_OVER_TIMEOUT_MS < now)
        {
            trace.push(format!("control: hand-over {:?} given up", self.hand_over));
            self.hand_over = None;
        }
    }

    /// Starts handing `group` over to its first backup, when the cluster is whole and no
    /// other hand-over runs: the order for its primary.
    pub fn start_hand_over(&mut self, group: usize, now: u64, trace: &mut Vec<String>) -> Option<Message> {
        if self.hand_over.is_some() || !self.healthy(now) {
            return None;
        }
        let from = self.map.primary[group]?;
        let to = *self.map.backups[group].first()?;
        let id = self.next_hand_over_id;
        self.next_hand_over_id += 1;
        trace.push(format!(
            "control: hand-over {id} of group {group} from {from:?} to {to:?}"
        ));
        self.hand_over = Some(HandOverRun {
            id,
            group,
            from,
            to,
            started_at: now,
        });
        Some(Message {
            from: Endpoint::Control,
            to: Endpoint::Node(from.node),
            body: Body::HandOver { id, group, to },
        })
    }

    /// The primary prepared hand-over `id`: commit it if source and target still hold
    /// their roles, in the processes it began with (else it is given up).
    fn commit_hand_over(&mut self, id: u64, from: Process, trace: &mut Vec<String>) {
        let Some(run) = self.hand_over.filter(|run| run.id == id && run.from == from) else {
            return;
        };
        self.hand_over = None;
        let group = run.group;
        let roles_held = self.map.primary[group] == Some(run.from)
            && self.map.backups[group].contains(&run.to)
            && self.live(run.from)
            && self.live(run.to);
        if !roles_held {
            trace.push(format!("control: hand-over {id} given up: roles changed"));
            return;
        }
        self.map.primary[group] = Some(run.to);
        for backup in self.map.backups[group].iter_mut().filter(|backup| **backup == run.to) {
            *backup = run.from;
        }
        self.map.epoch += 1;
        self.hand_overs_done += 1;
        trace.push(format!(
            "control: group {group} handed over to {:?} (epoch {})",
            run.to, self.map.epoch
        ));
    }

    fn live(&self, process: Process) -> bool {
        let member = self.members[process.node];
        !member.dead && member.incarnation == process.incarnation
    }

    /// The node's current process is gone (dead or replaced): promote a live backup for
    /// every group it led, and drop it from every group it backed up.
    fn remove_roles(&mut self, node: usize, trace: &mut Vec<String>) {
        if self
            .hand_over
            .is_some_and(|run| run.from.node == node || run.to.node == node)
        {
            self.hand_over = None;
        }
        let mut changed = false;
        for group in 0..GROUPS {
            let backups_before = self.map.backups[group].len();
            self.map.backups[group].retain(|backup| backup.node != node);
            changed |= self.map.backups[group].len() != backups_before;
            if self.repairs[group].is_some_and(|backup| backup.node == node) {
                self.repairs[group] = None;
            }
            if self.map.primary[group].is_some_and(|primary| primary.node == node) {
                changed = true;
                self.repairs[group] = None;
                let promoted = self.map.backups[group].iter().position(|backup| self.live(*backup));
                match promoted {
                    Some(index) => {
                        let backup = self.map.backups[group].remove(index);
                        trace.push(format!("control: group {group} fails over to {backup:?}"));
                        self.map.primary[group] = Some(backup);
                        self.failovers += 1;
                    }
                    None => {
                        trace.push(format!("control: group {group} lost every copy"));
                        self.map.primary[group] = None;
                        self.lost_groups.push(group);
                    }
                }
            }
        }
        if changed {
            self.map.epoch += 1;
        }
    }

    /// Orders a fill for each group short of `REPLICAS` backups, to the live node with
    /// the fewest copies that holds none of the group.
    fn plan_repairs(&mut self, now: u64, trace: &mut Vec<String>) {
        for group in 0..GROUPS {
            let Some(primary) = self.map.primary[group] else {
                continue;
            };
            if self.map.backups[group].len() >= REPLICAS || self.repairs[group].is_some() {
                continue;
            }
            let candidate = (0..NODES)
                .filter(|node| *node != primary.node)
                .filter(|node| self.map.backups[group].iter().all(|backup| backup.node != *node))
                .filter(|node| {
                    let member = self.members[*node];
                    // Heard from lately: a node about to be declared dead is no target.
                    !member.dead && member.last_heard + self.liveness_ms / 2 >= now
                })
                .min_by_key(|node| (self.copies(*node), *node));
            if let Some(node) = candidate {
                let backup = Process {
                    node,
                    incarnation: self.members[node].incarnation,
                };
                trace.push(format!("control: group {group} to be filled on {backup:?}"));
                self.repairs[group] = Some(backup);
            }
        }
    }

    fn copies(&self, node: usize) -> usize {
        (0..GROUPS)
            .map(|group| {
                usize::from(self.map.primary[group].is_some_and(|primary| primary.node == node))
                    + self.map.backups[group]
                        .iter()
                        .filter(|backup| backup.node == node)
                        .count()
            })
            .sum()
    }

    fn in_sync(&mut self, primary: Process, backup: Process, groups: &[usize], trace: &mut Vec<String>) {
        let mut changed = false;
        for &group in groups {
            if self.map.primary[group] == Some(primary) && self.repairs[group] == Some(backup) && self.live(backup) {
                trace.push(format!("control: group {group} backed up again by {backup:?}"));
                self.map.backups[group].push(backup);
                self.repairs[group] = None;
                self.repairs_done += 1;
                changed = true;
            }
        }
        if changed {
            self.map.epoch += 1;
        }
    }

    /// Whether the control plane knows `process` as its node's current process: until a
    /// restarted node's first heartbeat arrives, it still counts on the copies the
    /// previous process held.
    pub fn knows(&self, process: Process) -> bool {
        self.members[process.node].incarnation == process.incarnation
    }

    /// Every group has a primary and its full count of backups, and every node was heard
    /// from lately: one that a healed cut left near its liveness timeout may still be
    /// declared dead, and a fault then would be a second one at once.
    pub fn healthy(&self, now: u64) -> bool {
        (0..GROUPS).all(|group| self.map.primary[group].is_some() && self.map.backups[group].len() >= REPLICAS)
            && self
                .members
                .iter()
                .all(|member| !member.dead && member.last_heard + self.liveness_ms / 2 >= now)
    }
}
