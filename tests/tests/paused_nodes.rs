//! Paused, not dead. A cluster of an `engram-control` and three `engramd` nodes on
//! loopback holds a few hundred keys, a lock and a semaphore; one node is paused (SIGSTOP)
//! past the liveness timeout. It is declared dead, but it is the same process when it
//! resumes:
//! - if nobody reclaimed its slots, it gets them back, data and all;
//! - if an operator reclaimed them meanwhile (they went to the live nodes, empty, and were
//!   written there), it must not get them back, and calls that reached it before the
//!   reclaim, answered once it resumes, must not be answered from its stranded copy: no
//!   old value read, no write acknowledged that the slots' new owner does not have.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use engram_proto::{ClusterStatus, NodeStatus};
use engram_tests::cluster::{cluster_cli, wait_for_node_epoch};
use engram_tests::server::{resume_process, stop_process, Resume};
use engram_tests::victim::{
    check_elsewhere, check_fence_above, check_lost, seed, slots_of, until_served, Cluster, CALL_TIMEOUT,
    HEARTBEATS_SETTLE, SETTLE_LIMIT,
};
use engram_tests::{run_async, total_keys};

/// Liveness timeout of the tests that pause the victim: short, but above the few seconds
/// the control plane itself may stall on this busy 2-core machine (a stall longer than
/// the timeout holds up the live nodes' heartbeats and gets them declared dead too).
const PAUSED_LIVENESS_TIMEOUT_MS: u64 = 5_000;

/// Polls `cluster status` until `done` holds for it and the victim's entry.
async fn wait_for_victim(
    cluster: &Cluster,
    what: &str,
    done: impl Fn(&ClusterStatus, &NodeStatus) -> bool,
) -> (ClusterStatus, NodeStatus) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let (status, node) = cluster.victim_status().await;
        if done(&status, &node) {
            return (status, node);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE_LIMIT:?}: {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_paused_node_declared_dead_gets_its_slots_back_with_its_data_when_it_resumes() {
    let cluster = Cluster::start("lost-slots-paused", PAUSED_LIVENESS_TIMEOUT_MS);
    let pid = cluster.victim.as_ref().unwrap().pid();
    let resume = Resume(pid);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        let (_, before) = cluster.victim_status().await;

        // Paused, not dead: the process keeps its memory and its sockets (the kernel
        // still accepts connections), but answers nothing and sends no heartbeat.
        stop_process(pid);
        let (lost, _) = wait_for_victim(&cluster, "the paused node is declared dead", |_, node| {
            !node.alive && node.slots_lost as usize == victim_slots.len()
        })
        .await;
        let lost_slots: BTreeSet<u32> = lost.map.lost_slots().into_iter().collect();
        assert_eq!(lost_slots, victim_slots, "the lost slots are exactly the paused node's");
        // A client that starts now learns the map with the lost slots, so it fails at
        // once instead of waiting for the paused node.
        wait_for_node_epoch(&cluster.others[0], lost.map.epoch, SETTLE_LIMIT).await;
        let fresh = cluster.client().await;
        check_lost(&fresh, &seeded, "while the node is paused").await;

        // The same process comes back: its slots return, with their data.
        resume_process(pid);
        let (status, node) = wait_for_victim(&cluster, "the resumed node gets its slots back", |status, node| {
            node.alive && node.slots_lost == 0 && status.map.lost_slots().is_empty()
        })
        .await;
        assert_eq!(
            node.incarnation, before.incarnation,
            "the resumed process is the same incarnation: {node:?}"
        );
        assert_eq!(
            slots_of(&status.map, cluster.victim_id),
            victim_slots,
            "the resumed node owns exactly its old slots again"
        );
        for (name, client) in [
            ("the old client", &client),
            ("a client started during the pause", &fresh),
        ] {
            for key in &seeded.on_victim {
                let bytes = client.bytes(key.clone());
                let stored = until_served(&format!("{name}: get {key} after the resume"), async || {
                    bytes.get().await
                })
                .await
                .unwrap_or_else(|| panic!("{name}: {key} is missing after the resume: its data was kept"));
                assert_eq!(
                    (&stored.value, stored.version),
                    (&seeded.values[key].0, seeded.values[key].1),
                    "{name}: {key} changed over the pause"
                );
            }
            check_elsewhere(client, &seeded, "after the resume").await;
        }
        check_fence_above(&client, &seeded, "after the resume").await;
    });
    drop(resume);
}

/// Stale calls of a client that still routes with the map from before the pause: they
/// wait in the paused node's socket buffers while its slots are reclaimed elsewhere and
/// written there, and are handled when it resumes. The resumed node must not answer them
/// from its stranded copy: no read returns the old data, and no write is acknowledged
/// that the slots' new owner does not have.
#[test]
fn a_paused_node_whose_slots_were_reclaimed_meanwhile_never_serves_its_stranded_copy() {
    const STALE_READS: usize = 20;
    const STALE_WRITES: usize = 10;
    let cluster = Cluster::start("lost-slots-stranded", PAUSED_LIVENESS_TIMEOUT_MS);
    let victim = cluster.victim.as_ref().unwrap();
    let pid = victim.pid();
    let resume = Resume(pid);
    run_async(Duration::from_secs(110), async {
        let client = cluster.client().await;
        let (seeded, victim_slots) = seed(&cluster, &client).await;
        assert!(
            seeded.on_victim.len() > STALE_READS + STALE_WRITES,
            "only {} keys on the victim",
            seeded.on_victim.len()
        );
        let (read_keys, rest) = seeded.on_victim.split_at(STALE_READS);
        let (write_keys, untouched) = rest.split_at(STALE_WRITES);

        stop_process(pid);
        wait_for_victim(&cluster, "the paused node is declared dead", |_, node| {
            !node.alive && node.slots_lost as usize == victim_slots.len()
        })
        .await;
        // The old client never heard of the loss: it sends to the paused node.
        let stale_reads: Vec<_> = read_keys
            .iter()
            .map(|key| {
                let bytes = client.bytes(key.clone());
                (key.clone(), tokio::spawn(async move { bytes.get().await }))
            })
            .collect();
        let stale_writes: Vec<_> = write_keys
            .iter()
            .map(|key| {
                let bytes = client.bytes(key.clone());
                let value = format!("stale-write-{key}").into_bytes();
                (key.clone(), tokio::spawn(async move { bytes.set(value).await }))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // The operator gives the slots up for lost: they go to the live nodes, empty.
        cluster_cli(&cluster.control, &["reclaim", "--node", &cluster.victim_id.to_string()]).await;
        let (reclaimed, node) = cluster.victim_status().await;
        assert!(
            reclaimed.map.lost_slots().is_empty(),
            "{:?}",
            reclaimed.map.lost_slots()
        );
        assert_eq!(node.slots_lost, 0, "{node:?}");
        assert!(
            slots_of(&reclaimed.map, cluster.victim_id).is_empty(),
            "the reclaim gave slots to the paused node"
        );
        wait_for_node_epoch(&cluster.others[0], reclaimed.map.epoch, SETTLE_LIMIT).await;
        let fresh = cluster.client().await;
        let old_top = seeded.highest_victim_version();
        let mut expected: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for key in read_keys {
            let value = format!("new-{key}").into_bytes();
            let bytes = fresh.bytes(key.clone());
            let version = until_served(&format!("set {key} after the reclaim"), async || {
                bytes.set(value.clone()).await
            })
            .await;
            assert!(
                version > old_top,
                "{key}: version {version} after the reclaim, {old_top} before"
            );
            expected.insert(key.clone(), Some(value));
        }
        for key in untouched {
            let bytes = fresh.bytes(key.clone());
            let found = until_served(&format!("get {key} after the reclaim"), async || bytes.get().await).await;
            assert_eq!(found, None, "{key} came back after the reclaim");
            expected.insert(key.clone(), None);
        }

        // The paused process runs on and handles the stale calls.
        resume_process(pid);
        // Every stale call is judged before the test fails, so a failure lists them all.
        let mut violations = Vec::new();
        for (key, task) in stale_reads {
            let answer = task.await.expect("stale read task");
            eprintln!("stale read of {key}: {answer:?}");
            if let Ok(Some(stored)) = &answer {
                if stored.value == seeded.values[&key].0 {
                    violations.push(format!(
                        "read of {key} answered from the stranded copy: {:?} version {} (rewritten as {:?} \
                         at the slot's new owner)",
                        String::from_utf8_lossy(&stored.value),
                        stored.version,
                        expected[&key].as_ref().map(|value| String::from_utf8_lossy(value))
                    ));
                } else if Some(&stored.value) != expected[&key].as_ref() {
                    violations.push(format!("read of {key} answered {stored:?}, never written"));
                }
            }
        }
        let mut acknowledged = BTreeMap::new();
        for (key, task) in stale_writes {
            let answer = task.await.expect("stale write task");
            eprintln!("stale write of {key}: {answer:?}");
            if let Ok(version) = answer {
                acknowledged.insert(key, version);
            }
        }
        for key in write_keys {
            let bytes = fresh.bytes(key.clone());
            let found = until_served(&format!("get {key} after the resume"), async || bytes.get().await).await;
            let stale_value = format!("stale-write-{key}").into_bytes();
            let found_pair = found.as_ref().map(|stored| (&stored.value, stored.version));
            match acknowledged.get(key) {
                Some(version) if found_pair != Some((&stale_value, *version)) => violations.push(format!(
                    "write of {key} acknowledged (version {version}) but the slot's owner has {found:?}"
                )),
                None if found.as_ref().is_some_and(|stored| stored.value != stale_value) => {
                    violations.push(format!("{key} after an unacknowledged write: {found:?}"))
                }
                _ => {}
            }
            expected.insert(key.clone(), found.map(|stored| stored.value));
        }
        assert!(
            violations.is_empty(),
            "calls sent to the paused node before its slots were reclaimed elsewhere (and {} keys rewritten \
             there) were answered from its stranded copy once it resumed:\n{}",
            read_keys.len(),
            violations.join("\n")
        );

        wait_for_victim(&cluster, "the resumed node is alive", |_, node| node.alive).await;
        tokio::time::sleep(HEARTBEATS_SETTLE).await;
        let (status, node) = cluster.victim_status().await;
        assert!(status.map.lost_slots().is_empty());
        assert_eq!(node.slots_lost, 0, "{node:?}");
        assert!(
            slots_of(&status.map, cluster.victim_id).is_empty(),
            "the resumed node got back slots that were reclaimed elsewhere"
        );
        // Through every way in: the same answers, never the stranded copy.
        let at_victim = victim.front_only_client(CALL_TIMEOUT).await;
        for (name, client) in [
            ("the old client", &client),
            ("a client started after the reclaim", &fresh),
            ("the resumed node's front port", &at_victim),
        ] {
            for (key, value) in &expected {
                let bytes = client.bytes(key.clone());
                let found = until_served(&format!("{name}: get {key}"), async || bytes.get().await).await;
                assert_eq!(
                    found.map(|stored| stored.value).as_ref(),
                    value.as_ref(),
                    "{name}: {key} after the resume (before the kill it was {:?})",
                    String::from_utf8_lossy(&seeded.values[key].0)
                );
            }
            check_elsewhere(client, &seeded, name).await;
        }
        // The stranded copy goes once the resumed node has seen the slots are elsewhere
        // (its front port already answered for them above with the new owners' data).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let held = total_keys(&victim.front_only_client(CALL_TIMEOUT).await).await;
            if held == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resumed node still holds {held} keys of slots reclaimed elsewhere, 15 s after it owns none"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    drop(resume);
}
