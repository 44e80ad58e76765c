//! The control plane with its state and leadership in a real etcd (`tests/src/etcd.rs`):
//! several `engram-control --etcd` processes, one leads and the others answer
//! `NotLeader` naming it; a killed leader is replaced by a standby with the same map and
//! members; a leader paused past its lease is replaced, and what it tries once it runs
//! again does not reach etcd; with etcd down nobody leads, and once it is back one does,
//! with the same state. And etcd's own refusal of a deposed leader's write, and of
//! a write from a stale copy, at the level of the state store. Nodes and the CLI given
//! every control address (`--control A,B,C`) join, beat and act through whichever leads,
//! before and after a `kill -9` of the leader, and `engram cluster status` names each
//! process's role and etcd's health.

use std::time::{Duration, Instant};

use engram_control::leadership::LEASE_TTL_MS;
use engram_control::state::{EtcdTerm, EtcdWriter, Keys, SaveError};
use engram_tests::cluster::{node_slot_count, start_node, start_node_at};
use engram_tests::control::ControlPlane;
use engram_tests::etcd::Etcd;
use engram_tests::etcd_control::{
    ask, beating_to, cli_ok, members_of, settled, start_controls, state_in_etcd, Answer, ELECTION_LIMIT,
};
use engram_tests::{run_async, unique_key};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

#[test]
fn standbys_name_the_leader_and_one_takes_over_with_its_map_when_it_is_killed() {
    let etcd = Etcd::start();
    let prefix = format!("/engram/{}", unique_key("takeover"));
    let mut controls = start_controls(&etcd, &prefix, 3);
    let (leader, node) = run_async(Duration::from_secs(60), async {
        let (leader, _) = settled(&controls.iter().collect::<Vec<_>>()).await;
        // A health check pings each process: standbys answer it themselves.
        for control in &controls {
            control
                .admin()
                .ping()
                .await
                .expect("every process, standby or leader, answers a ping");
        }
        let node = start_node(&controls[leader]);
        engram_tests::cluster::wait_for_members(&controls[leader], 1, Duration::from_secs(20)).await;
        (leader, node)
    });
    let before = run_async(Duration::from_secs(20), controls[leader].status());

    controls[leader].kill();
    let killed = Instant::now();
    let rest: Vec<&ControlPlane> = controls
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, control)| control)
        .collect();
    let (_, after) = run_async(Duration::from_secs(60), settled(&rest));
    println!(
        "takeover after kill -9: {:.1} s (lease {} ms)",
        killed.elapsed().as_secs_f64(),
        LEASE_TTL_MS
    );
    assert_eq!(after.map, before.map, "the new leader has another map");
    assert_eq!(
        members_of(&after),
        members_of(&before),
        "the new leader has other members"
    );
    assert_eq!(members_of(&after).len(), 1);
    drop(node);
}

#[test]
fn a_leader_paused_past_its_lease_is_replaced_and_cannot_write_once_it_runs_again() {
    let etcd = Etcd::start();
    let prefix = format!("/engram/{}", unique_key("paused"));
    let controls = start_controls(&etcd, &prefix, 2);
    let all: Vec<&ControlPlane> = controls.iter().collect();
    run_async(Duration::from_secs(120), async {
        let (old, _) = settled(&all).await;
        let new = 1 - old;
        let first = start_node(&controls[old]);
        engram_tests::cluster::wait_for_members(&controls[old], 1, Duration::from_secs(20)).await;

        controls[old].pause();
        let paused = Instant::now();
        // The standby takes over once the paused leader's lease lapsed.
        let deadline = Instant::now() + ELECTION_LIMIT;
        let taken = loop {
            if let Answer::Leads(status) = ask(&controls[new]).await {
                break *status;
            }
            assert!(Instant::now() < deadline, "the standby never took over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("takeover from a paused leader: {:.1} s", paused.elapsed().as_secs_f64());
        assert!(
            paused.elapsed() >= Duration::from_millis(LEASE_TTL_MS / 2),
            "taken over before the paused leader's lease could lapse"
        );
        assert_eq!(members_of(&taken).len(), 1, "the new leader read the old one's state");
        // The new leader changes the state: a second node joins it.
        let second = start_node(&controls[new]);
        engram_tests::cluster::wait_for_members(&controls[new], 2, Duration::from_secs(20)).await;
        let changed = controls[new].status().await;

        // A write asked of the old leader while it is stopped, handled once it runs:
        // draining the first node (a state change).
        let (admin, node_id) = (controls[old].admin(), first.node_id());
        let drain = tokio::spawn(async move { admin.drain(node_id).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        controls[old].resume();
        let drained = drain.await.expect("the drain call does not panic");
        assert!(drained.is_err(), "the deposed leader accepted a drain: {drained:?}");

        // It stands by, naming the new leader; etcd holds the new leader's state.
        let (leader, status) = settled(&all).await;
        assert_eq!(leader, new, "the old leader leads again");
        assert_eq!(members_of(&status), members_of(&changed));
        let stored = state_in_etcd(&etcd, &prefix).await;
        assert_eq!(stored.members().len(), 2, "etcd lost the new leader's join");
        assert!(
            stored.members().iter().all(|member| !member.draining),
            "the deposed leader's drain reached etcd"
        );
        assert_eq!(stored.epoch(), status.map.epoch);
        let log = controls[old].stderr_text();
        assert!(
            log.contains("stepped down"),
            "the old leader never said it stepped down:\n{log}"
        );
        println!(
            "the old leader stepped down {}",
            if log.contains("a state write was refused") {
                "when etcd refused its write"
            } else {
                "on its lease bound, before writing"
            }
        );
        drop((first, second));
    });
}

/// Puts the leader key under a new lease; returns the lease and the key's create revision.
async fn take_leader_key(client: &mut Client, keys: &Keys, value: &str) -> (i64, i64) {
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let txn = Txn::new()
        .when([Compare::create_revision(keys.leader.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            keys.leader.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let answer = client.txn(txn).await.expect("campaign");
    assert!(answer.succeeded(), "the leader key was free");
    (lease, answer.header().expect("a header").revision())
}

#[test]
fn etcd_refuses_the_write_of_a_deposed_leader_and_of_a_stale_copy() {
    let etcd = Etcd::start();
    let keys = Keys::under(&format!("/engram/{}", unique_key("refusal")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime
        .block_on(Client::connect([etcd.endpoint()], None))
        .expect("connect");
    let writer = EtcdWriter::start(&[etcd.endpoint()]).expect("writer");

    let (lease_a, key_a) = runtime.block_on(take_leader_key(&mut client, &keys, "a"));
    let mut term_a = EtcdTerm::new(writer.clone(), keys.clone(), key_a, 0);
    term_a.save(b"from a").expect("the leader writes");
    // A's lease ends (as if it lapsed); B takes the key and reads the state.
    runtime.block_on(client.lease_revoke(lease_a)).expect("revoke");
    let (_, key_b) = runtime.block_on(take_leader_key(&mut client, &keys, "b"));
    let read = runtime.block_on(client.get(keys.state.as_str(), None)).expect("read");
    let state_revision = read.kvs()[0].mod_revision();
    let mut term_b = EtcdTerm::new(writer.clone(), keys.clone(), key_b, state_revision);
    let mut stale_b = EtcdTerm::new(writer, keys.clone(), key_b, state_revision);

    assert!(
        matches!(term_a.save(b"deposed"), Err(SaveError::Refused { .. })),
        "the deposed leader's write was not refused"
    );
    term_b.save(b"from b").expect("the new leader writes");
    assert!(
        matches!(stale_b.save(b"stale"), Err(SaveError::Refused { .. })),
        "a write from a stale copy was not refused"
    );
    let read = runtime.block_on(client.get(keys.state.as_str(), None)).expect("read");
    assert_eq!(read.kvs()[0].value(), b"from b");
}

#[test]
fn a_leader_writes_its_first_state_after_an_etcd_restart() {
    let mut etcd = Etcd::start();
    let keys = Keys::under(&format!("/engram/{}", unique_key("restart-write")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime
        .block_on(Client::connect([etcd.endpoint()], None))
        .expect("connect");
    let writer = EtcdWriter::start(&[etcd.endpoint()]).expect("writer");
    let (_, key_revision) = runtime.block_on(take_leader_key(&mut client, &keys, "a"));
    let mut term = EtcdTerm::new(writer, keys.clone(), key_revision, 0);
    term.save(b"before").expect("the leader writes");

    // The writer's connection broke with etcd; its lease and key survive the restart.
    etcd.restart();
    term.save(b"after")
        .expect("the first write after the restart is not lost to the broken connection");
    let mut client = runtime
        .block_on(Client::connect([etcd.endpoint()], None))
        .expect("connect again");
    let read = runtime.block_on(client.get(keys.state.as_str(), None)).expect("read");
    assert_eq!(read.kvs()[0].value(), b"after");
}

#[test]
fn while_etcd_is_down_nobody_leads_and_once_it_is_back_one_leads_with_the_same_state() {
    let mut etcd = Etcd::start();
    let prefix = format!("/engram/{}", unique_key("outage"));
    let controls = start_controls(&etcd, &prefix, 2);
    let all: Vec<&ControlPlane> = controls.iter().collect();
    let (leader, node) = run_async(Duration::from_secs(60), async {
        let (leader, _) = settled(&all).await;
        let node = start_node(&controls[leader]);
        engram_tests::cluster::wait_for_members(&controls[leader], 1, Duration::from_secs(20)).await;
        (leader, node)
    });
    let before = run_async(Duration::from_secs(20), controls[leader].status());

    etcd.stop();
    let stopped = Instant::now();
    run_async(Duration::from_secs(60), async {
        // The leader cannot renew its lease: it steps down by itself, and nobody leads.
        let deadline = Instant::now() + ELECTION_LIMIT;
        loop {
            let mut leading = 0;
            for control in &all {
                if let Answer::Leads(_) = ask(control).await {
                    leading += 1;
                }
            }
            if leading == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "a process still leads with etcd down");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    println!(
        "the leader stood by {:.1} s after etcd went down (lease {} ms)",
        stopped.elapsed().as_secs_f64(),
        LEASE_TTL_MS
    );

    etcd.restart();
    let (_, after) = run_async(Duration::from_secs(60), settled(&all));
    assert_eq!(after.map, before.map, "the leader after the outage has another map");
    assert_eq!(members_of(&after), members_of(&before));
    drop(node);
}

#[test]
fn nodes_and_the_cli_given_every_control_address_follow_the_leader_through_a_takeover() {
    let etcd = Etcd::start();
    let prefix = format!("/engram/{}", unique_key("follow"));
    let mut controls = start_controls(&etcd, &prefix, 3);
    let (leader, nodes) = run_async(Duration::from_secs(60), async {
        let (leader, _) = settled(&controls.iter().collect::<Vec<_>>()).await;
        // The leader last, so a join that reaches it followed a standby there.
        let mut order: Vec<&str> = controls.iter().map(ControlPlane::address).collect();
        order.rotate_left(leader + 1);
        let nodes = [start_node_at(&order.join(",")), start_node_at(&order.join(","))];
        let ids = nodes.each_ref().map(|node| node.node_id());
        beating_to(&controls[leader], &ids).await;
        (leader, nodes)
    });
    let node_ids = nodes.each_ref().map(|node| node.node_id());
    let every_address = controls.iter().map(ControlPlane::address).collect::<Vec<_>>().join(",");

    controls[leader].kill();
    let rest: Vec<&ControlPlane> = controls
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, control)| control)
        .collect();
    run_async(Duration::from_secs(120), async {
        let (new, _) = settled(&rest).await;
        let new = rest[new];
        // Both nodes' heartbeats found the new leader.
        let before = beating_to(new, &node_ids).await;
        assert_eq!(members_of(&before).len(), 2);

        // A third node given every address (the dead one among them) joins through the
        // new leader, and a rebalance through the CLI, given every address, reaches it.
        let third = start_node_at(&every_address);
        beating_to(new, &[third.node_id()]).await;
        cli_ok(&every_address, &["rebalance"]).await;
        let all = [node_ids[0], node_ids[1], third.node_id()];
        let after = beating_to(new, &all).await;
        assert!(after.map.epoch > before.map.epoch, "the rebalance changed no map");
        assert!(
            node_slot_count(&after, third.node_id()) > 0,
            "the third node got no slots: {:?}",
            after.nodes
        );

        // The CLI names each process's role, the leader, and etcd's health.
        let json: serde_json::Value =
            serde_json::from_str(&cli_ok(&every_address, &["status", "--json"]).await).expect("status is JSON");
        let plane = &json["control_plane"];
        assert_eq!(plane["leader"], new.address(), "{json:#}");
        for (index, control) in controls.iter().enumerate() {
            let process = plane["processes"]
                .as_array()
                .expect("processes")
                .iter()
                .find(|process| process["address"] == control.address())
                .unwrap_or_else(|| panic!("{} is not listed: {json:#}", control.address()));
            let expected = match index {
                _ if index == leader => "unreachable",
                _ if control.address() == new.address() => "leader",
                _ => "standby",
            };
            assert_eq!(process["role"], expected, "{process:#}");
            if expected == "standby" {
                assert_eq!(process["names_leader"], new.address(), "{process:#}");
            }
        }
        assert_eq!(plane["store"]["kind"], "etcd", "{json:#}");
        assert_eq!(plane["store"]["prefix"], prefix.as_str(), "{json:#}");
        let endpoints = plane["store"]["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), 1, "{json:#}");
        assert_eq!(endpoints[0]["endpoint"], etcd.endpoint().as_str());
        assert_eq!(endpoints[0]["healthy"], true, "{json:#}");
        assert_eq!(endpoints[0]["raft_leader"], true, "{json:#}");
        assert_eq!(json["nodes"].as_array().expect("nodes").len(), 3);
        let table = cli_ok(&every_address, &["status"]).await;
        println!("{table}");
        assert!(
            table.starts_with(&format!("control plane: leader {};", new.address())),
            "{table}"
        );
        drop(third);
    });
    drop(nodes);
}
