use engram_proto::{Heartbeat, JoinRequest};

use super::*;
use crate::membership::TARGET_SILENCE_MS_MAX;

fn join_request(node: u64, boot_id: u64) -> JoinRequest {
    JoinRequest {
        front_address: format!("node-{node}"),
        shard_addresses: vec![format!("node-{node}-shard-0")],
        memory_limit_bytes: 0,
        boot_id,
        zone: String::new(),
        takes_credentials: false,
    }
}

/// The orchestrator with a membership of two one-shard nodes, performing persists as
/// `service.rs` does (applied to the membership, fed back at once) and handing back
/// every other effect.
struct Harness {
    orchestrator: Orchestrator,
    membership: Membership,
    now_ms: u64,
    nodes: [u64; 2],
}

impl Harness {
    fn new() -> Harness {
        let mut membership = Membership::new();
        let first = membership.join(&join_request(1, 1), 0).unwrap().node_id;
        let second = membership.join(&join_request(2, 2), 0).unwrap().node_id;
        let mut harness = Harness {
            orchestrator: Orchestrator::new(Config::default()),
            membership,
            now_ms: 0,
            nodes: [first, second],
        };
        let effects = harness.orchestrator.reconcile(&harness.membership, 0);
        let effects = harness.settle(effects);
        harness.answer_all(effects, Ok(Answer::Accepted));
        assert!(!harness.orchestrator.is_busy(), "the reconcile finished");
        harness
    }

    fn settle(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        let mut pending: std::collections::VecDeque<Effect> = effects.into();
        let mut rest = Vec::new();
        while let Some(effect) = pending.pop_front() {
            if let Effect::OrderFill { from, to, slots } = &effect {
                self.membership.order_step_fill(*from, *to, slots);
            }
            if let Effect::Persist { token, change } = effect {
                let changed = change.apply(&mut self.membership);
                let event = Event::Persisted {
                    token,
                    result: Ok(changed),
                };
                for next in self
                    .orchestrator
                    .handle(event, &self.membership, self.now_ms)
                    .into_iter()
                    .rev()
                {
                    pending.push_front(next);
                }
            } else {
                rest.push(effect);
            }
        }
        rest
    }

    fn feed(&mut self, event: Event) -> Vec<Effect> {
        let effects = self.orchestrator.handle(event, &self.membership, self.now_ms);
        self.settle(effects)
    }

    /// Answers with `answer` every call among `effects` but a `MigrateOut` or a
    /// `HandOver` (a next step's), and the calls those answers lead to; returns every other effect.
    fn answer_all(&mut self, effects: Vec<Effect>, answer: Result<Answer, String>) -> Vec<Effect> {
        let mut pending: std::collections::VecDeque<Effect> = effects.into();
        let mut rest = Vec::new();
        while let Some(effect) = pending.pop_front() {
            match effect {
                Effect::Call { token, call, .. }
                    if !matches!(call, NodeCall::MigrateOut { .. } | NodeCall::HandOver { .. }) =>
                {
                    let result = answer.clone();
                    pending.extend(self.feed(Event::Answered { token, result }));
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn beat(&mut self, node_id: u64) {
        let heartbeat = Heartbeat {
            node_id,
            map_epoch: self.membership.epoch(),
            shards: Vec::new(),
            migrations: Vec::new(),
            incarnation: self.membership.member(node_id).unwrap().incarnation,
            in_sync: Vec::new(),
        };
        self.membership.heartbeat(&heartbeat, self.now_ms).unwrap();
    }

    /// A plan moving `slots` from the first node's shard to the second's.
    fn start(&mut self, slots: std::ops::Range<u32>) -> Vec<Effect> {
        let [from, to] = self.nodes.map(|node_id| ShardRef { node_id, shard_id: 0 });
        let moves = slots.map(|slot| Move { slot, from, to }).collect();
        let effects = self
            .orchestrator
            .start_plan(moves, &self.membership, self.now_ms)
            .unwrap();
        self.settle(effects)
    }
}

fn call_of(effects: &[Effect]) -> (Token, String, NodeCall) {
    effects
        .iter()
        .find_map(|effect| match effect {
            Effect::Call {
                token, address, call, ..
            } => Some((*token, address.clone(), call.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no call among {effects:?}"))
}

fn timer_of(effects: &[Effect]) -> Token {
    effects
        .iter()
        .find_map(|effect| match effect {
            Effect::ArmTimer { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no timer among {effects:?}"))
}

fn plan_failure(effects: &[Effect]) -> Option<Option<String>> {
    effects.iter().find_map(|effect| match effect {
        Effect::Report(Report::PlanEnded { failure, .. }) => Some(failure.clone()),
        _ => None,
    })
}

#[test]
fn a_step_prepares_then_commits_installs_on_source_and_target_and_broadcasts() {
    let mut harness = Harness::new();
    let epoch = harness.membership.epoch();
    let effects = harness.start(100..110);
    let (prepare, source, call) = call_of(&effects);
    assert_eq!(source, "node-1-shard-0");
    let NodeCall::MigrateOut {
        migration_id,
        slots,
        target_address,
    } = call
    else {
        panic!("{call:?}")
    };
    assert_eq!((slots.len(), target_address.as_str()), (10, "node-2-shard-0"));
    assert_eq!(harness.orchestrator.migrations()[0].migration_id, migration_id);
    assert_eq!(harness.orchestrator.abort_migrations(&[migration_id, 999]), vec![999]);
    assert_eq!(
        harness.membership.epoch(),
        epoch,
        "nothing committed before the source prepared"
    );

    let prepared = Ok(Answer::Prepared { entries: 3, bytes: 300 });
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: prepared,
    });
    let owner = harness.membership.owners()[105];
    assert_eq!(owner.node_id, harness.nodes[1], "committed once prepared");
    let (install, address, call) = call_of(&effects);
    assert_eq!(address, "node-1-shard-0", "the source installs first");
    assert!(matches!(call, NodeCall::InstallMap(map) if map.epoch == harness.membership.epoch()));
    let effects = harness.feed(Event::Answered {
        token: install,
        result: Err("unreachable".into()),
    });
    assert!(matches!(
        &effects[..],
        [Effect::Report(Report::MapNotInstalled { .. }), Effect::Call { address, .. }] if address == "node-2-shard-0"
    ));
    let effects = harness.answer_all(effects, Ok(Answer::Accepted));
    assert!(effects.contains(&Effect::BroadcastMap));
    assert_eq!(plan_failure(&effects), Some(None));
    assert!(!harness.orchestrator.is_busy());
    assert!(harness.orchestrator.migrations().is_empty());
}

/// The harness with one backup per slot, the second node's shard backing up `slots`.
fn backed_up_by_target(slots: std::ops::Range<u32>) -> (Harness, ShardRef, ShardRef) {
    let mut harness = Harness::new();
    let [source, target] = harness.nodes.map(|node_id| ShardRef { node_id, shard_id: 0 });
    harness.membership.set_replicas(1).unwrap();
    let backed_up: Vec<(u32, ShardRef)> = slots.map(|slot| (slot, target)).collect();
    assert_eq!(harness.membership.commit_backups(&backed_up), backed_up.len());
    (harness, source, target)
}

#[test]
fn a_target_that_backs_up_every_slot_gets_them_by_hand_over_and_the_source_backs_them_up_instead() {
    let (mut harness, source, target) = backed_up_by_target(100..110);
    let epoch = harness.membership.epoch();
    let effects = harness.start(100..110);
    let (prepare, address, call) = call_of(&effects);
    assert_eq!(address, "node-1-shard-0");
    let NodeCall::HandOver {
        migration_id,
        slots,
        target: process,
    } = call
    else {
        panic!("{call:?}")
    };
    assert_eq!(slots.len(), 10);
    assert_eq!(
        (process.node_id, process.shard_id, process.incarnation),
        (
            target.node_id,
            0,
            harness.membership.member(target.node_id).unwrap().incarnation
        )
    );
    assert_eq!(harness.orchestrator.migrations()[0].migration_id, migration_id);
    assert_eq!(harness.membership.epoch(), epoch, "no map before the source prepared");
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: Ok(Answer::Prepared { entries: 4, bytes: 0 }),
    });
    assert_eq!(harness.membership.owners()[105], target);
    assert_eq!(
        harness.membership.backups()[105],
        [source],
        "the source's frozen copy backs the slots up"
    );
    let effects = harness.answer_all(effects, Ok(Answer::Accepted));
    assert!(effects.contains(&Effect::BroadcastMap));
    assert_eq!(plan_failure(&effects), Some(None));
}

#[test]
fn a_plan_cuts_its_steps_into_hand_overs_fills_and_copies() {
    let (mut harness, _, target) = backed_up_by_target(100..105);
    let effects = harness.start(100..110);
    let (prepare, _, call) = call_of(&effects);
    assert!(
        matches!(&call, NodeCall::HandOver { slots, .. } if *slots == [100, 101, 102, 103, 104]),
        "{call:?}"
    );
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: Ok(Answer::Prepared { entries: 0, bytes: 0 }),
    });
    let effects = harness.answer_all(effects, Ok(Answer::Accepted));
    assert_eq!(harness.membership.owners()[102], target);
    assert!(
        effects.iter().any(|effect| matches!(
            effect,
            Effect::OrderFill { slots, .. } if *slots == [105, 106, 107, 108, 109]
        )),
        "the slots the target does not back up are filled first: {effects:?}"
    );
    assert!(effects.iter().all(|effect| !matches!(effect, Effect::Call { .. })));

    let mut copying = Harness::new();
    copying.orchestrator.config.fill_before_move = false;
    copying.membership.set_replicas(1).unwrap();
    let (_, _, call) = call_of(&copying.start(105..110));
    assert!(
        matches!(&call, NodeCall::MigrateOut { slots, .. } if slots.len() == 5),
        "without fills, a copy: {call:?}"
    );
}

/// The source's heartbeat reporting `to` in sync for `slots` (at the current map), as
/// its shard does once the fill's snapshot and the writes since are applied.
fn report_in_sync(harness: &mut Harness, from: ShardRef, to: ShardRef, slots: (u32, u32)) {
    let heartbeat = Heartbeat {
        node_id: from.node_id,
        map_epoch: harness.membership.epoch(),
        shards: Vec::new(),
        migrations: Vec::new(),
        incarnation: harness.membership.member(from.node_id).unwrap().incarnation,
        in_sync: vec![engram_proto::InSyncReport {
            shard_id: from.shard_id,
            map_epoch: harness.membership.epoch(),
            backup: engram_proto::ShardProcessRef {
                node_id: to.node_id,
                shard_id: to.shard_id,
                incarnation: harness.membership.member(to.node_id).unwrap().incarnation,
            },
            slots: vec![slots],
        }],
    };
    let ready = harness.membership.in_sync_backups(&heartbeat);
    harness.membership.commit_backups(&ready);
}

#[test]
fn a_target_without_a_copy_is_filled_while_the_slots_are_served_then_handed_over() {
    let mut harness = Harness::new();
    harness.membership.set_replicas(1).unwrap();
    let [source, target] = harness.nodes.map(|node_id| ShardRef { node_id, shard_id: 0 });
    let effects = harness.start(100..110);
    assert!(effects.contains(&Effect::OrderFill {
        from: source,
        to: target,
        slots: (100..110).collect(),
    }));
    assert!(
        effects.iter().all(|effect| !matches!(effect, Effect::Call { .. })),
        "nothing frozen while the fill runs: {effects:?}"
    );
    assert_eq!(harness.membership.fills_for(source.node_id).len(), 1);
    harness.now_ms += 300;
    harness.beat(source.node_id);
    harness.beat(target.node_id);
    let effects = harness.feed(Event::TimerFired {
        token: timer_of(&effects),
    });
    assert!(effects.iter().all(|effect| !matches!(effect, Effect::Call { .. })));

    report_in_sync(&mut harness, source, target, (100, 109));
    assert!(harness.membership.backs_up(target, 105), "named once in sync");
    let effects = harness.feed(Event::TimerFired {
        token: timer_of(&effects),
    });
    assert!(
        effects.iter().all(|effect| !matches!(effect, Effect::Call { .. })),
        "not before the source has the map naming the target: {effects:?}"
    );
    harness.beat(source.node_id);
    let effects = harness.feed(Event::TimerFired {
        token: timer_of(&effects),
    });
    let (prepare, address, call) = call_of(&effects);
    assert_eq!(address, "node-1-shard-0");
    assert!(
        matches!(&call, NodeCall::HandOver { slots, .. } if slots.len() == 10),
        "{call:?}"
    );
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: Ok(Answer::Prepared { entries: 0, bytes: 0 }),
    });
    assert_eq!(harness.membership.owners()[105], target);
    assert_eq!(harness.membership.backups()[105], [source]);
    let effects = harness.answer_all(effects, Ok(Answer::Accepted));
    assert_eq!(plan_failure(&effects), Some(None));
}

#[test]
fn a_fill_that_never_gets_in_sync_ends_the_plan_with_nothing_frozen() {
    let mut harness = Harness::new();
    harness.membership.set_replicas(1).unwrap();
    let mut effects = harness.start(100..110);
    let mut waited = 0;
    while plan_failure(&effects).is_none() {
        assert!(effects.iter().all(|effect| !matches!(effect, Effect::Call { .. })));
        harness.now_ms += 1_000;
        for node_id in harness.nodes {
            harness.beat(node_id);
        }
        effects = harness.feed(Event::TimerFired {
            token: timer_of(&effects),
        });
        waited += 1;
        assert!(waited < 1_000, "the fill is waited for forever");
    }
    let failure = plan_failure(&effects).flatten().unwrap_or_default();
    assert!(failure.contains("was not in sync within"), "{failure}");
    assert_eq!(harness.membership.owners()[105].node_id, harness.nodes[0]);
}

#[test]
fn a_hand_over_onto_a_target_that_stopped_backing_up_the_slots_aborts() {
    let (mut harness, _, target) = backed_up_by_target(100..110);
    let effects = harness.start(100..110);
    let (prepare, _, _) = call_of(&effects);
    // The replica setting lowered meanwhile: the target may have dropped its copy.
    harness.membership.set_replicas(0).unwrap();
    harness.membership.trim_backups();
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: Ok(Answer::Prepared { entries: 0, bytes: 0 }),
    });
    assert_ne!(harness.membership.owners()[105], target, "no commit");
    assert!(
        matches!(&effects[0], Effect::Report(Report::StepAborted { reason, .. }) if reason.contains("no longer backs up")),
        "{effects:?}"
    );
}

#[test]
fn a_step_whose_source_failed_over_during_the_copy_aborts_instead_of_committing() {
    let mut harness = Harness::new();
    harness.orchestrator.config.fill_before_move = false;
    let third = harness.membership.join(&join_request(3, 3), 0).unwrap().node_id;
    harness.membership.set_replicas(1).unwrap();
    let backup = ShardRef {
        node_id: third,
        shard_id: 0,
    };
    let backed_up: Vec<(u32, ShardRef)> = (100..110).map(|slot| (slot, backup)).collect();
    assert_eq!(harness.membership.commit_backups(&backed_up), 10);
    let effects = harness.start(100..110);
    let (prepare, _, _) = call_of(&effects);
    // The source falls silent past the liveness timeout: its slots go to their backup,
    // which serves writes the source's copy will never have.
    harness.now_ms = crate::membership::LIVENESS_TIMEOUT_MS + 1;
    harness.beat(harness.nodes[1]);
    harness.beat(third);
    assert!(!harness.membership.declare_dead(harness.now_ms).is_empty());
    assert_eq!(harness.membership.owners()[105], backup);
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: Ok(Answer::Prepared { entries: 3, bytes: 300 }),
    });
    assert_eq!(harness.membership.owners()[105], backup, "no commit over the promotion");
    assert!(
        matches!(&effects[0], Effect::Report(Report::StepAborted { reason, .. }) if reason.contains("left node")),
        "{effects:?}"
    );
}

#[test]
fn a_step_whose_target_restarted_during_the_copy_aborts_instead_of_committing() {
    let mut harness = Harness::new();
    let effects = harness.start(100..110);
    let (prepare, _, _) = call_of(&effects);
    // The target's process died after taking the copy; its next process joins (and so
    // answers heartbeats) before the source's answer arrives.
    harness.now_ms = 100;
    harness.membership.join(&join_request(2, 77), 100).unwrap();
    let epoch = harness.membership.epoch();
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: Ok(Answer::Prepared { entries: 3, bytes: 300 }),
    });
    assert_eq!(harness.membership.epoch(), epoch, "no commit to the empty new process");
    assert!(
        matches!(&effects[0], Effect::Report(Report::StepAborted { reason, .. }) if reason.contains("target node") && reason.contains("restarted")),
        "{effects:?}"
    );
    let (_, address, call) = call_of(&effects);
    assert_eq!(address, "node-1-shard-0", "the source unfreezes first");
    assert!(matches!(call, NodeCall::MigrateAbort { map_epoch, .. } if map_epoch == epoch));
    let effects = harness.answer_all(effects, Ok(Answer::Accepted));
    assert!(plan_failure(&effects)
        .flatten()
        .is_some_and(|failure| failure.contains("aborted")));
    assert!(!harness.orchestrator.is_busy());
}

#[test]
fn a_target_silent_during_the_copy_aborts_the_step_at_the_next_watch() {
    let mut harness = Harness::new();
    let effects = harness.start(100..110);
    let watch = timer_of(&effects);
    harness.now_ms = 250;
    harness.beat(harness.nodes[0]);
    harness.beat(harness.nodes[1]);
    let effects = harness.feed(Event::TimerFired { token: watch });
    assert!(effects.iter().all(|effect| !matches!(effect, Effect::Report(_))));
    let watch = timer_of(&effects);
    harness.now_ms = 250 + TARGET_SILENCE_MS_MAX + 1;
    harness.beat(harness.nodes[0]);
    let effects = harness.feed(Event::TimerFired { token: watch });
    assert!(
        matches!(&effects[0], Effect::Report(Report::StepAborted { reason, .. }) if reason.contains("went silent")),
        "{effects:?}"
    );
    let effects = harness.answer_all(effects, Ok(Answer::Accepted));
    assert!(plan_failure(&effects).flatten().is_some());
}

#[test]
fn a_refused_prepare_or_a_failed_commit_aborts_and_stale_events_change_nothing() {
    let mut harness = Harness::new();
    let effects = harness.start(100..110);
    let (prepare, _, _) = call_of(&effects);
    assert!(harness
        .feed(Event::Answered {
            token: Token(9_999),
            result: Ok(Answer::Prepared { entries: 0, bytes: 0 }),
        })
        .is_empty());
    assert!(harness.feed(Event::TimerFired { token: Token(9_998) }).is_empty());
    let refused = Ok(Answer::Refused {
        message: "target refused a batch".into(),
    });
    let effects = harness.feed(Event::Answered {
        token: prepare,
        result: refused,
    });
    assert!(
        matches!(&effects[0], Effect::Report(Report::StepAborted { reason, .. }) if reason == "target refused a batch")
    );
    assert!(
        harness.orchestrator.migrations().is_empty(),
        "an aborting step is not running"
    );
    let effects = harness.answer_all(effects, Err("down".into()));
    let undelivered = effects
        .iter()
        .filter(|effect| matches!(effect, Effect::Report(Report::AbortNotDelivered { .. })))
        .count();
    assert_eq!(undelivered, 2);

    // A commit the state file refused is no commit either.
    let effects = harness.start(200..210);
    let (prepare, _, _) = call_of(&effects);
    let effects = harness.orchestrator.handle(
        Event::Answered {
            token: prepare,
            result: Ok(Answer::Prepared { entries: 0, bytes: 0 }),
        },
        &harness.membership,
        harness.now_ms,
    );
    let Some(Effect::Persist { token, .. }) = effects.last().cloned() else {
        panic!("{effects:?}")
    };
    let effects = harness.feed(Event::Persisted {
        token,
        result: Err("cannot persist the state: disk full".into()),
    });
    assert!(matches!(&effects[0], Effect::Report(Report::StepAborted { reason, .. }) if reason.contains("disk full")));
}

#[test]
fn nothing_runs_before_the_reconcile_which_installs_then_aborts_shard_by_shard() {
    let mut membership = Membership::new();
    membership.join(&join_request(1, 1), 0).unwrap();
    membership.join(&join_request(2, 2), 0).unwrap();
    let mut orchestrator = Orchestrator::new(Config::default());
    assert!(orchestrator.is_busy());
    assert_eq!(
        orchestrator.start_plan(Vec::new(), &membership, 0),
        Err(OrchestratorError::Busy)
    );
    let effects = orchestrator.reconcile(&membership, 0);
    let (install, address, call) = call_of(&effects);
    assert_eq!(address, "node-1-shard-0");
    assert!(matches!(call, NodeCall::InstallMap(map) if map.epoch == membership.epoch()));
    let effects = orchestrator.handle(
        Event::Answered {
            token: install,
            result: Ok(Answer::Accepted),
        },
        &membership,
        0,
    );
    let (abort, address, call) = call_of(&effects);
    assert_eq!(address, "node-1-shard-0");
    assert_eq!(
        call,
        NodeCall::MigrateAbort {
            migration_id: 0,
            map_epoch: membership.epoch()
        }
    );
    let effects = orchestrator.handle(
        Event::Answered {
            token: abort,
            result: Ok(Answer::Accepted),
        },
        &membership,
        0,
    );
    let (install, address, _) = call_of(&effects);
    assert_eq!(address, "node-2-shard-0");
    // A shard that cannot be reached gets no abort: its heartbeats settle it.
    let effects = orchestrator.handle(
        Event::Answered {
            token: install,
            result: Err("refused".into()),
        },
        &membership,
        0,
    );
    assert!(matches!(&effects[..], [Effect::Report(Report::NotReconciled { .. })]));
    assert!(!orchestrator.is_busy());
}

#[test]
fn moves_off_a_silent_source_are_skipped_and_the_rest_of_the_plan_runs() {
    let mut harness = Harness::new();
    harness.now_ms = TARGET_SILENCE_MS_MAX + 1;
    harness.beat(harness.nodes[1]);
    let effects = harness.start(100..110);
    assert!(matches!(
        &effects[..],
        [
            Effect::Report(Report::SkippingDeadSource { .. }),
            Effect::Report(Report::PlanEnded { moved: 0, .. })
        ]
    ));
    assert!(!harness.orchestrator.is_busy());
}

#[test]
fn a_plan_runs_in_steps_of_slots_per_step() {
    let mut harness = Harness::new();
    harness.orchestrator.config.slots_per_step = 4;
    let mut effects = harness.start(100..110);
    let mut steps = Vec::new();
    while let Some((token, slots)) = effects.iter().find_map(|effect| match effect {
        Effect::Call {
            token,
            call: NodeCall::MigrateOut { slots, .. },
            ..
        } => Some((*token, slots.len())),
        _ => None,
    }) {
        steps.push(slots);
        let answered = harness.feed(Event::Answered {
            token,
            result: Ok(Answer::Prepared { entries: 0, bytes: 0 }),
        });
        effects = harness.answer_all(answered, Ok(Answer::Accepted));
    }
    assert_eq!(steps, [4, 4, 2]);
    assert_eq!(plan_failure(&effects), Some(None));
    assert!((100..110).all(|slot| harness.membership.owners()[slot].node_id == harness.nodes[1]));
}
