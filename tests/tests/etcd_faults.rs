//! The etcd-backed control plane under faults, with real processes: a real etcd
//! (`tests/src/etcd.rs`), three `engram-control --etcd` processes and three `engramd`
//! nodes, each node given every control address, serving the elastic-cluster load
//! (`tests/src/load.rs`: counters, a lock with fences and an outside witness, a barrier).
//!
//! - `kill -9` of the leader while a drain's migrations are open: a standby takes over,
//!   the open step is settled (every slot answers again), the drain is re-issued through
//!   the CLI given every address and completes, and the load loses and doubles nothing.
//! - The leader paused (SIGSTOP) past its lease in the middle of a drain, while a standby
//!   takes over and changes the map; once it runs again (SIGCONT) it answers nothing as
//!   the leader, etcd holds nothing it wrote after the pause, it stands by (its metrics
//!   say so), and every node installed one map per epoch, each one a map etcd accepted.
//! - etcd down for 10 s: the nodes serve the load throughout on the maps they hold, and
//!   once etcd is back a leader leads with the same map and members, and a drain works.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engram_client::admin::Admin;
use engram_control::leadership::LEASE_TTL_MS;
use engram_control::service::MIGRATION_SLOTS_PER_STEP;
use engram_proto::link::blocking::BlockingLink;
use engram_proto::{
    ClusterStatus, ControlAddresses, ControlProtocol, ControlRequest, ControlResponse, Heartbeat, Identity, ShardLoad,
};
use engram_tests::cluster::{node_slot_count, one_map_per_epoch, shard_of_node, start_node_at};
use engram_tests::control::ControlPlane;
use engram_tests::elastic::{connect, key_per_slot, slots_not_answering};
use engram_tests::etcd::Etcd;
use engram_tests::etcd_control::{
    all_but, ask, beating_to, cli_ok, every_address, first_leader, members_of, settled, start_controls,
    start_controls_with_metrics, state_in_etcd, states_written, Answer, ELECTION_LIMIT,
};
use engram_tests::load::{Load, SharedKeys};
use engram_tests::{http_get, run_async, unique_key, EngramServer};

/// Bound on each test's body.
const TEST_LIMIT: Duration = Duration::from_secs(150);
/// How long etcd stays down in the outage test.
const OUTAGE: Duration = Duration::from_secs(10);
/// Bound on one read of every slot: a slot frozen by a step nobody settled never answers.
const SLOT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on waiting for what a takeover settles (the new leader's reconcile, the nodes'
/// heartbeats) to show.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// etcd, three control processes on it and three nodes given every control address.
struct Cluster {
    etcd: Etcd,
    prefix: String,
    controls: Vec<ControlPlane>,
    nodes: Vec<EngramServer>,
}

impl Cluster {
    fn start(name: &str, controls: fn(&Etcd, &str, usize) -> Vec<ControlPlane>) -> Cluster {
        let etcd = Etcd::start();
        let prefix = format!("/engram/{}", unique_key(name));
        let controls = controls(&etcd, &prefix, 3);
        let every = every_address(&controls);
        let nodes = (0..3).map(|_| start_node_at(&every)).collect();
        Cluster {
            etcd,
            prefix,
            controls,
            nodes,
        }
    }

    fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(EngramServer::node_id).collect()
    }

    fn every_address(&self) -> String {
        every_address(&self.controls)
    }

    /// An administration handle given every control address: it follows the leader.
    fn admin(&self) -> Admin {
        let addresses = ControlAddresses::parse(&self.every_address()).expect("valid addresses");
        Admin::with_addresses(addresses).timeout(Duration::from_secs(10))
    }

    /// Waits for a leader and the nodes beating to it, and spreads the slots (the first
    /// node to join took them all) through the CLI given every address; returns the
    /// leader's index.
    async fn spread(&self) -> usize {
        let (leader, _) = settled(&self.controls.iter().collect::<Vec<_>>()).await;
        beating_to(&self.controls[leader], &self.node_ids()).await;
        cli_ok(&self.every_address(), &["rebalance"]).await;
        let status = beating_to(&self.controls[leader], &self.node_ids()).await;
        for node in &self.nodes {
            assert!(node_slot_count(&status, node.node_id()) > 0, "{:?}", status.nodes);
        }
        leader
    }

    /// Starts the load through the first node, its shared objects on `node_id`'s shard.
    async fn load_on(&self, status: &ClusterStatus, node_id: u64) -> (engram_client::Client, SharedKeys, Load) {
        let client = connect(&self.nodes[0]).await;
        let keys = SharedKeys::on_shard(&status.map, shard_of_node(&status.map, node_id));
        let load = Load::start(&client, &keys);
        load.wait_for_writes(1_000).await;
        (client, keys, load)
    }
}

/// Polls `control` until it shows migrations open (a drain or rebalance it runs), and
/// returns that status; fails if the moves end first.
async fn migrations_open(control: &ControlPlane) -> ClusterStatus {
    let admin = control.admin();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = admin.status().await.expect("the leader answers");
        if !status.migrations.is_empty() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no migration open within 20 s: {:?}",
            status.nodes
        );
    }
}

/// Waits until every slot answers a read within [`SLOT_READ_TIMEOUT`]: no step is left
/// with its slots frozen.
async fn every_slot_answers(client: &engram_client::Client) {
    let keys = key_per_slot();
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let (silent, error) = slots_not_answering(client, &keys, SLOT_READ_TIMEOUT).await;
        if silent.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} slots still do not answer ({}): {error:?}",
            silent.len(),
            engram_proto::format_slot_ranges(&silent)
        );
    }
}

/// Runs `engram cluster <arguments>` given every address until it succeeds: right
/// after a takeover the new leader may still be settling what its predecessor left
/// open (`Busy`).
async fn cli_until_done(every: &str, arguments: &[&str]) -> String {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let output = engram_tests::control::cli_at(every, arguments).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return stdout;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            Instant::now() < deadline,
            "engram cluster {arguments:?} kept failing: {stdout}{stderr}"
        );
        println!("engram cluster {arguments:?} failed, trying again: {}", stderr.trim());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn a_standby_takes_over_a_drain_whose_leader_is_killed_and_the_load_loses_nothing() {
    let mut cluster = Cluster::start("kill-mid-drain", start_controls);
    run_async(TEST_LIMIT, async {
        let leader = cluster.spread().await;
        let spread = cluster.controls[leader].status().await;
        let leaving = cluster.nodes[2].node_id();
        // The shared objects live on the node that drains, so they move under the load.
        let (client, keys, load) = cluster.load_on(&spread, leaving).await;

        let slots = cluster.admin().drain(leaving).await.expect("the drain starts");
        assert!(slots > 4 * MIGRATION_SLOTS_PER_STEP as u64, "{slots} slots to move");
        let open = migrations_open(&cluster.controls[leader]).await;
        cluster.controls[leader].kill();
        let killed = Instant::now();
        let rest = all_but(&cluster.controls, leader);
        let (new, taken) = first_leader(&rest).await;
        println!(
            "killed the leader with migration {:?} open at epoch {}; a standby led {:.1} s later at epoch {}",
            open.migrations,
            open.map.epoch,
            killed.elapsed().as_secs_f64(),
            taken.map.epoch
        );
        assert!(taken.map.epoch >= open.map.epoch, "the new leader lost a committed map");
        // The open step committed only if the killed leader wrote its map first.
        println!(
            "the open step was {} by the time a standby led",
            if taken.map.epoch == open.map.epoch {
                "not committed: the new leader's reconcile aborts it"
            } else {
                "committed (or a later one): the new leader's reconcile installs it"
            }
        );
        // The open step was finished or aborted: no slot stays frozen.
        every_slot_answers(&client).await;
        let settled_status = rest[new].status().await;
        assert!(
            settled_status.migrations.is_empty(),
            "the new leader runs moves nobody asked it for: {:?}",
            settled_status.migrations
        );
        assert!(
            settled_status
                .nodes
                .iter()
                .any(|node| node.node_id == leaving && node.draining),
            "the drain was not kept: {:?}",
            settled_status.nodes
        );

        // The drain again, through the CLI given every address (the dead one among them).
        let output = cli_until_done(&cluster.every_address(), &["drain", &leaving.to_string()]).await;
        assert!(output.contains("done"), "{output}");
        let drained = beating_to(rest[new], &cluster.node_ids()).await;
        assert_eq!(node_slot_count(&drained, leaving), 0, "{:?}", drained.nodes);
        assert!(drained.migrations.is_empty(), "{:?}", drained.migrations);
        println!(
            "the drain completed at epoch {} ({} slots moved in all)",
            drained.map.epoch, drained.slots_moved_total
        );

        load.stop_and_check(&client, &keys).await;
        let map = &drained.map;
        for key in [&keys.lock, &keys.guarded, &keys.barrier] {
            let owner = engram_tests::routing::owner_of(map, b"default", key.as_bytes());
            assert_ne!(
                map.shards[owner].node_id, leaving,
                "{key} did not move off the drained node"
            );
        }
        let nodes: Vec<&EngramServer> = cluster.nodes.iter().collect();
        one_map_per_epoch(&nodes);
    });
}

/// A heartbeat of `node` as its heartbeat thread would send it, holding migration
/// `migration_id` open: a leader answers it with that migration to abort, since it runs
/// no such migration.
fn heartbeat_of(status: &ClusterStatus, node_id: u64, migration_id: u64) -> ControlRequest {
    let member = status
        .nodes
        .iter()
        .find(|node| node.node_id == node_id)
        .expect("a member");
    ControlRequest::Heartbeat(Heartbeat {
        node_id,
        map_epoch: member.map_epoch,
        shards: vec![
            ShardLoad {
                keys: 0,
                memory_used_bytes: 0,
                operations_total: 0,
            };
            member.shards.len()
        ],
        migrations: vec![migration_id],
        incarnation: member.incarnation,
        in_sync: Vec::new(),
    })
}

/// `engram_control_is_leader` as `control` exports it.
fn is_leader_metric(control: &ControlPlane) -> u64 {
    let address = control.metrics_address().expect("started with --metrics-port");
    let (_, _, body) = http_get(address, "/metrics", Duration::from_secs(5));
    body.lines()
        .find_map(|line| line.strip_prefix("engram_control_is_leader ")?.trim().parse().ok())
        .expect("engram_control_is_leader is exported")
}

#[test]
fn a_leader_paused_past_its_lease_leads_nothing_once_it_runs_again_and_nodes_install_one_map_per_epoch() {
    let mut cluster = Cluster::start("paused-mid-drain", start_controls_with_metrics);
    run_async(TEST_LIMIT, async {
        let old = cluster.spread().await;
        let before = cluster.controls[old].status().await;
        // A node's heartbeat link to the leader, open before the pause: what it sends
        // while the leader is stopped is handled as soon as it runs again.
        let old_address = cluster.controls[old].address().to_string();
        let mut probe = tokio::task::spawn_blocking(move || {
            BlockingLink::<ControlProtocol>::connect(&old_address, Identity::node(b""), Duration::from_secs(60))
                .expect("a link to the leader")
        })
        .await
        .expect("connect task");

        let leaving = cluster.nodes[2].node_id();
        cluster.admin().drain(leaving).await.expect("the drain starts");
        let open = migrations_open(&cluster.controls[old]).await;
        cluster.controls[old].pause();
        let paused = Instant::now();
        let rest = all_but(&cluster.controls, old);
        let (new, taken) = first_leader(&rest).await;
        let new = rest[new];
        println!(
            "paused the leader with migration {:?} open; a standby led {:.1} s later",
            open.migrations,
            paused.elapsed().as_secs_f64()
        );
        assert!(
            paused.elapsed() >= Duration::from_millis(LEASE_TTL_MS / 2),
            "taken over before the paused leader's lease could lapse"
        );

        // The new leader changes the map: a fourth node joins (given every address, the
        // paused one last), and the drain goes on with slots for it too.
        let mut addresses: Vec<&str> = cluster.controls.iter().map(ControlPlane::address).collect();
        addresses.rotate_left(old + 1);
        cluster.nodes.push(start_node_at(&addresses.join(",")));
        let ids = cluster.node_ids();
        beating_to(new, &ids).await;
        cli_until_done(new.address(), &["rebalance"]).await;
        let changed = beating_to(new, &ids).await;
        assert!(changed.map.epoch > taken.map.epoch + 1, "the new leader changed no map");

        // Sent while the old leader is stopped, answered once it runs: a heartbeat holding
        // a migration open, which a leader would tell the node to abort.
        let request = heartbeat_of(&before, cluster.nodes[0].node_id(), u64::MAX / 2);
        let asked = tokio::task::spawn_blocking(move || probe.call(request));
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.controls[old].resume();
        let answer = asked.await.expect("probe task").expect("the old leader answers");
        assert!(
            matches!(answer, ControlResponse::NotLeader { .. }),
            "a leader paused past its lease answered a heartbeat as the leader: {answer:?}"
        );

        // It stands by, naming the new leader, and says so in its metrics.
        let all: Vec<&ControlPlane> = cluster.controls.iter().collect();
        let (leader, status) = settled(&all).await;
        assert_eq!(
            cluster.controls[leader].address(),
            new.address(),
            "the old leader leads again"
        );
        assert_eq!(members_of(&status), members_of(&changed));
        assert_eq!(status.map, changed.map);
        let metrics: Vec<u64> = cluster.controls.iter().map(is_leader_metric).collect();
        let expected: Vec<u64> = (0..3).map(|index| u64::from(index == leader)).collect();
        assert_eq!(metrics, expected, "engram_control_is_leader per process");
        let log = cluster.controls[old].stderr_text();
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

        // etcd holds the new leader's state, and each map it ever accepted is the only
        // one of its epoch; every node installed one map per epoch, each one of those.
        let stored = state_in_etcd(&cluster.etcd, &cluster.prefix).await;
        assert_eq!(stored.epoch(), status.map.epoch);
        assert_eq!(stored.map(), &status.map);
        let mut accepted = BTreeMap::<u64, u64>::new();
        let mut epoch = 0;
        for state in states_written(&cluster.etcd, &cluster.prefix).await {
            assert!(
                state.epoch() >= epoch,
                "etcd accepted epoch {} after {epoch}",
                state.epoch()
            );
            epoch = state.epoch();
            let digest = *accepted.entry(epoch).or_insert_with(|| state.map().digest());
            assert_eq!(digest, state.map().digest(), "etcd accepted two maps of epoch {epoch}");
        }
        let nodes: Vec<&EngramServer> = cluster.nodes.iter().collect();
        let installed = one_map_per_epoch(&nodes);
        for (epoch, digest) in &installed {
            let stored = accepted.get(epoch).map(|digest| format!("{digest:016x}"));
            assert_eq!(
                stored.as_ref(),
                Some(digest),
                "nodes installed a map of epoch {epoch} that etcd never accepted"
            );
        }
        assert_eq!(installed.keys().last(), Some(&status.map.epoch), "{installed:?}");
        println!(
            "{} maps accepted by etcd, epochs {:?}; nodes installed {} of them",
            accepted.len(),
            accepted.keys().collect::<Vec<_>>(),
            installed.len()
        );
    });
}

/// Waits until none of `controls` leads.
async fn nobody_leads(controls: &[&ControlPlane]) {
    let deadline = Instant::now() + ELECTION_LIMIT;
    loop {
        let mut leading = 0;
        for control in controls {
            if let Answer::Leads(_) = ask(control).await {
                leading += 1;
            }
        }
        if leading == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "a process still leads with etcd down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn nodes_serve_through_an_etcd_outage_and_the_control_plane_resumes_with_every_map_change() {
    let mut cluster = Cluster::start("etcd-outage", start_controls);
    run_async(TEST_LIMIT, async {
        let leader = cluster.spread().await;
        let before = cluster.controls[leader].status().await;
        let stored = state_in_etcd(&cluster.etcd, &cluster.prefix).await;
        assert_eq!(stored.map(), &before.map, "the last map change is not in etcd");
        let (client, keys, load) = cluster.load_on(&before, cluster.nodes[1].node_id()).await;

        cluster.etcd.stop();
        let stopped = Instant::now();
        let at_stop = load.progress();
        let all: Vec<&ControlPlane> = cluster.controls.iter().collect();
        nobody_leads(&all).await;
        println!("nobody led {:.1} s after etcd stopped", stopped.elapsed().as_secs_f64());
        // The outage lasts its whole length, whatever the load does meanwhile.
        tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
        let at_restart = load.progress();
        assert_eq!(load.failures(), 0, "operations failed while etcd was down (see stderr)");
        println!("acknowledged when etcd stopped: {at_stop:?}; when it restarted: {at_restart:?}");
        assert!(
            at_restart.writes > at_stop.writes,
            "no write was acknowledged during the outage"
        );
        assert!(
            at_restart.reads > at_stop.reads,
            "no read was answered during the outage"
        );
        assert!(
            at_restart.critical_sections > at_stop.critical_sections,
            "no lock round completed during the outage"
        );

        cluster.etcd.restart();
        let restarted = Instant::now();
        let (leader, after) = settled(&all).await;
        println!(
            "a leader led {:.1} s after etcd restarted",
            restarted.elapsed().as_secs_f64()
        );
        assert_eq!(after.map, before.map, "the leader after the outage has another map");
        assert_eq!(members_of(&after), members_of(&before));
        let ids = cluster.node_ids();
        beating_to(all[leader], &ids).await;

        // A change after the outage: the third node drains, through the CLI. It takes at
        // once: the leader's first write after etcd's restart is not lost to a connection
        // the restart broke.
        let output = cli_ok(&cluster.every_address(), &["drain", &ids[2].to_string()]).await;
        assert!(output.contains("done"), "{output}");
        let drained = beating_to(all[leader], &ids).await;
        assert_eq!(node_slot_count(&drained, ids[2]), 0, "{:?}", drained.nodes);
        assert!(drained.map.epoch > before.map.epoch);
        assert_eq!(state_in_etcd(&cluster.etcd, &cluster.prefix).await.map(), &drained.map);

        load.stop_and_check(&client, &keys).await;
        let nodes: Vec<&EngramServer> = cluster.nodes.iter().collect();
        one_map_per_epoch(&nodes);
    });
}
