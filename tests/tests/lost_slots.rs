//! Lost, not empty; dead nodes fail fast. A cluster of an `engram-control` and three
//! `engramd` nodes on loopback holds a few hundred keys, a lock and a semaphore; one node
//! is killed with SIGKILL. What must hold:
//! - the dead node's keys fail fast: every call fails with an unreachable (connection)
//!   error, never by waiting out the client's 30 s call timeout, until the control plane
//!   declares the node dead, and from then on with `SlotLost`;
//! - the other nodes' keys answer correctly throughout;
//! - the node restarted on the same address (same ports, empty memory) does not serve its
//!   old slots empty: they keep answering `SlotLost`, through any client and through the
//!   restarted node itself, and `engram cluster status` shows the node's new incarnation
//!   and its lost slots; the CLI exits 3 on them;
//! - `engram cluster reclaim --node N` returns the slots to service, empty, and the
//!   fences, versions and permit ids handed out there afterwards are above every one
//!   handed out before the kill, so a stale compare-and-set or fence cannot win.
//!
//! Two paths lead to lost slots: the control plane declaring a silent node dead
//! (`--liveness-timeout-ms`), and the node rejoining as a new process before that; each
//! has its test (the second reclaims half of the slots with the wire command
//! `ClusterReclaim` and the rest with `engram cluster reclaim RANGES`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use engram_client::{Client, Error, SetOutcome};
use engram_proto::ReclaimRequest;
use engram_tests::cluster::{cluster_cli, wait_for_members};
use engram_tests::server::run_cli;
use engram_tests::victim::{
    check_elsewhere, check_fence_above, check_lost, is_unreachable, seed, until_served, until_slot_lost, Cluster,
    Seeded, CALL_TIMEOUT, HEARTBEATS_SETTLE, LEASE, OWNER, SEMAPHORE_CAPACITY, SETTLE_LIMIT,
};
use engram_tests::{if_version, read_stored, run_async, EngramServer};

/// The restarted node answers SlotLost itself for its old slots: a client that sends
/// everything to its front port, and the CLI (exit code 3, not 1 for "missing").
async fn check_lost_at(node: &EngramServer, seeded: &Seeded, when: &str) {
    let front_only = node.front_only_client(CALL_TIMEOUT).await;
    for key in &seeded.on_victim {
        let bytes = front_only.bytes(key.clone());
        until_slot_lost(&format!("{when}: get {key} at the restarted node"), async || {
            bytes.get().await
        })
        .await;
    }
    let key = seeded.on_victim[0].clone();
    let front = node.front().to_string();
    let output = tokio::task::spawn_blocking(move || {
        run_cli(&["--addr", &front, "--front-only", "--timeout-ms", "10000", "get", &key])
    })
    .await
    .expect("CLI task");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{when}: `engram get` of a lost key exits 3 (1 would mean it was served as missing); stdout {:?}, stderr {stderr:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.to_lowercase().contains("lost"),
        "{when}: the CLI says the slot is lost: {stderr:?}"
    );
}

/// The node's incarnation moved on, its slots are lost in the map and in its status.
async fn check_status_lost(cluster: &Cluster, victim_slots: &BTreeSet<u32>, old_incarnation: u64, when: &str) {
    let (status, node) = cluster.victim_status().await;
    assert_ne!(
        node.incarnation, old_incarnation,
        "{when}: the restarted process kept the incarnation of the killed one: {node:?}"
    );
    assert_eq!(
        node.slots_lost as usize,
        victim_slots.len(),
        "{when}: slots_lost of the restarted node: {node:?}"
    );
    let lost: BTreeSet<u32> = status.map.lost_slots().into_iter().collect();
    assert_eq!(
        &lost, victim_slots,
        "{when}: the lost slots in the map are not exactly the slots the killed node owned"
    );
    assert!(
        node.shards.iter().all(|shard| shard.slots == 0),
        "{when}: the restarted node serves slots: {node:?}"
    );
}

/// How the operator returns the lost slots to service.
enum Reclaim {
    /// `engram cluster reclaim --node N`.
    CliNode,
    /// Half of the slots with the wire command `ClusterReclaim` listing them (no node),
    /// the other half with `engram cluster reclaim RANGES` (`a-b,c,...`).
    WireThenCliRanges,
}

/// A set of `bytes` if still at `old`, a version from before the kill.
async fn stale_set(bytes: &engram_client::Bytes, old: u64) -> SetOutcome {
    bytes
        .set_with("stale", if_version(old))
        .await
        .expect("stale set after the reclaim")
}

/// Reclaims the victim's lost slots (`how`); then they serve, empty, and what is handed
/// out there is above everything handed out before the kill.
async fn reclaim_and_check(cluster: &Cluster, client: &Client, seeded: &Seeded, how: Reclaim) {
    let epoch_before = cluster.control.status().await.map.epoch;
    match how {
        Reclaim::CliNode => {
            let output = cluster_cli(&cluster.control, &["reclaim", "--node", &cluster.victim_id.to_string()]).await;
            eprintln!("engram cluster reclaim --node: {output}");
        }
        Reclaim::WireThenCliRanges => {
            let lost = cluster.control.status().await.map.lost_slots();
            let (wire, cli) = lost.split_at(lost.len() / 2);
            let request = ReclaimRequest {
                node_id: 0,
                slots: wire.to_vec(),
            };
            let reclaimed = cluster
                .control
                .admin()
                .reclaim(request)
                .await
                .expect("ClusterReclaim call");
            let status = cluster.control.status().await;
            assert_eq!(
                reclaimed.slots,
                wire.len() as u64,
                "slots reclaimed by the wire command"
            );
            assert!(
                reclaimed.epoch > epoch_before,
                "the reclaim's epoch {} is not new",
                reclaimed.epoch
            );
            assert!(status.map.epoch >= reclaimed.epoch);
            let still_lost: Vec<u32> = status.map.lost_slots();
            assert_eq!(
                still_lost, cli,
                "after reclaiming half of the slots, the other half is still lost"
            );
            let (_, node) = cluster.victim_status().await;
            assert_eq!(node.slots_lost as usize, cli.len(), "{node:?}");
            let output = cluster_cli(&cluster.control, &["reclaim", &engram_proto::format_slot_ranges(cli)]).await;
            eprintln!("engram cluster reclaim RANGES: {output}");
        }
    }
    let (status, node) = cluster.victim_status().await;
    assert!(
        status.map.lost_slots().is_empty(),
        "slots still lost after the reclaim: {:?}",
        status.map.lost_slots()
    );
    assert_eq!(node.slots_lost, 0, "{node:?}");
    assert!(status.map.epoch > epoch_before, "the reclaim did not publish a new map");

    // Empty: nothing of the old data came back.
    for key in &seeded.on_victim {
        let bytes = client.bytes(key.clone());
        let found = until_served(&format!("get {key} after the reclaim"), async || bytes.get().await).await;
        assert_eq!(found, None, "{key} came back after the reclaim: its data was lost");
    }
    let old_top = seeded.highest_victim_version();
    for key in &seeded.on_victim {
        let (_, old) = seeded.values[key];
        let bytes = client.bytes(key.clone());
        // A writer that read the key before the kill must not overwrite it now.
        let stale = stale_set(&bytes, old).await;
        assert_eq!(
            stale,
            SetOutcome::Conflict { current_version: 0 },
            "a set of the reclaimed, empty {key} if at its version {old} from before the kill was not refused"
        );
        let version = bytes.set("reborn").await.expect("set after the reclaim");
        assert!(
            version > old_top,
            "{key}: version {version} after the reclaim is not above {old_top}, the highest the lost node \
             handed out for these keys (this key had {old})"
        );
        let stale = stale_set(&bytes, old).await;
        assert_eq!(
            stale,
            SetOutcome::Conflict {
                current_version: version
            },
            "{key}: a set if at version {old} from before the kill overwrote the new value"
        );
    }
    check_fence_above(client, seeded, "after the reclaim").await;
    let permit = client
        .semaphore(seeded.semaphore.clone(), SEMAPHORE_CAPACITY)
        .acquire(OWNER, 1, LEASE, Duration::ZERO)
        .await
        .expect("acquire a permit after the reclaim");
    assert!(
        permit.id() > *seeded.permits.iter().max().unwrap(),
        "permit id {} after the reclaim is not above the ids from before the kill {:?}",
        permit.id(),
        seeded.permits
    );
    permit.release().await.expect("release");
    check_elsewhere(client, seeded, "after the reclaim").await;
}

#[test]
fn a_dead_nodes_slots_fail_fast_then_answer_lost_until_reclaimed_and_never_serve_empty() {
    let mut cluster = Cluster::start("lost-slots-dead", 3_000);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        let (_, before) = cluster.victim_status().await;
        assert_eq!(before.slots_lost, 0);
        let old_incarnation = before.incarnation;

        cluster.kill_victim();
        // (a) and (b): until the control plane declares the node dead, its keys fail as
        // unreachable; then SlotLost. The other keys answer all along.
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut unreachable = 0;
        let mut calls = 0;
        loop {
            let key = &seeded.on_victim[calls % seeded.on_victim.len()];
            match client.bytes(key.clone()).get().await {
                Err(error) if error.is_slot_lost() => break,
                Err(error) if is_unreachable(&error) => unreachable += 1,
                Err(error @ Error::Timeout { .. }) => panic!(
                    "get {key} of the killed node waited out the whole {CALL_TIMEOUT:?} call timeout instead of \
                     failing fast: {error}"
                ),
                Err(error) => {
                    panic!("get {key} of the killed node failed with {error:?}: neither unreachable nor SlotLost")
                }
                Ok(found) => panic!("get {key} of the killed node answered {found:?}"),
            }
            let live = &seeded.elsewhere[calls % seeded.elsewhere.len()];
            let what = format!("get {live} (on a live node) while the victim is dead");
            let stored = read_stored(&client, live.clone(), &what).await;
            assert_eq!(stored.value, seeded.values[live].0, "{live} changed");
            calls += 1;
            assert!(
                Instant::now() < deadline,
                "no SlotLost within {SETTLE_LIMIT:?} of the kill ({calls} calls, all unreachable)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("SlotLost after {calls} calls that failed as unreachable ({unreachable})");
        let (status, node) = cluster.victim_status().await;
        assert!(!node.alive, "the killed node is still alive: {node:?}");
        assert_eq!(node.slots_lost as usize, victim_slots.len(), "{node:?}");
        let lost: BTreeSet<u32> = status.map.lost_slots().into_iter().collect();
        assert_eq!(lost, victim_slots, "the lost slots are exactly the dead node's");
        check_lost(&client, &seeded, "after the node was declared dead").await;

        // (c) The node comes back on the same address, empty: its slots stay lost.
        let restarted_id = cluster.restart_victim().node_id();
        assert_eq!(restarted_id, cluster.victim_id, "the node rejoined under another id");
        wait_for_members(&cluster.control, 3, SETTLE_LIMIT).await;
        tokio::time::sleep(HEARTBEATS_SETTLE).await;
        check_status_lost(&cluster, &victim_slots, old_incarnation, "after the restart").await;
        check_lost(&client, &seeded, "after the restart").await;
        check_lost_at(cluster.victim.as_ref().unwrap(), &seeded, "after the restart").await;

        // (d) An operator returns them to service, empty.
        reclaim_and_check(&cluster, &client, &seeded, Reclaim::CliNode).await;
    });
}

#[test]
fn a_node_restarted_before_it_is_declared_dead_does_not_serve_its_old_slots_empty() {
    // The liveness timeout is far away: only the rejoin of a new process loses the slots.
    let mut cluster = Cluster::start("lost-slots-restart", 60_000);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        let (_, before) = cluster.victim_status().await;
        let old_incarnation = before.incarnation;

        cluster.kill_victim();
        let restarted_id = cluster.restart_victim().node_id();
        assert_eq!(restarted_id, cluster.victim_id, "the node rejoined under another id");
        // The restarted node's very first answers: it must not serve its old slots empty.
        check_lost_at(cluster.victim.as_ref().unwrap(), &seeded, "right after the restart").await;
        check_status_lost(&cluster, &victim_slots, old_incarnation, "right after the restart").await;
        let unreachable = check_lost(&client, &seeded, "after the restart").await;
        eprintln!("{unreachable} unreachable answers before SlotLost");

        // Its heartbeats (same address, a new process) do not bring the slots back.
        tokio::time::sleep(HEARTBEATS_SETTLE).await;
        check_status_lost(
            &cluster,
            &victim_slots,
            old_incarnation,
            "a few heartbeats after the restart",
        )
        .await;
        let (_, node) = cluster.victim_status().await;
        assert!(node.alive, "{node:?}");
        check_lost(&client, &seeded, "a few heartbeats after the restart").await;

        reclaim_and_check(&cluster, &client, &seeded, Reclaim::WireThenCliRanges).await;
    });
}
