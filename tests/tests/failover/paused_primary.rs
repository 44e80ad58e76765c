//! A paused (SIGSTOP) primary of a lock's slot is replaced and, resumed, serves nobody.

use super::*;

/// Asks the old primary's shard port, over `connection`, who holds `lock` and to grant
/// it to a third owner at once: both must be refused (`TryAgain` while it has not
/// checked its map since the pause, then `Moved` to the slot's new owner, or
/// `WrongShard`), never served. Returns the holder query's answer.
fn refused_by_old_primary(connection: &mut RawConnection, round: u64, lock: &str) -> Direct {
    let holder = ask_directly(
        connection,
        2 * round + 1,
        Command::from(LockCommand::Holder { key: lock.into() }),
    );
    let grant = ask_directly(
        connection,
        2 * round + 2,
        Command::from(LockCommand::Acquire {
            key: lock.into(),
            owner: b"stale-holder".to_vec(),
            lease_ms: 10_000,
            wait_ms: 0,
        }),
    );
    for (what, answer) in [("holder", &holder), ("try-acquire", &grant)] {
        match answer {
            Direct::Served(response) => panic!(
                "the replaced primary served a {what} of {lock} sent to its shard port after it resumed: {response:?}"
            ),
            Direct::Refused { code, message } => assert!(
                matches!(code, ErrorCode::TryAgain | ErrorCode::Moved | ErrorCode::WrongShard),
                "the replaced primary refused a {what} of {lock} with {code:?} ({message}), \
                 neither TryAgain nor a redirect"
            ),
            Direct::Closed => {}
        }
    }
    holder
}

#[test]
fn a_paused_primary_of_a_lock_slot_is_replaced_and_redirects_after_resuming() {
    /// Longer than it takes to declare the paused node dead and promote its backup, so
    /// the backup takes over a lease that still runs.
    const LEASE: Duration = Duration::from_secs(25);
    /// Bound on each wait for the cluster to get somewhere (not a requirement on speed).
    const SETTLE_LIMIT: Duration = Duration::from_secs(45);
    let cluster = FailoverCluster::start("failover-paused-primary", 3, REPLICAS, LIVENESS_TIMEOUT_MS);
    let victim = cluster.nodes[1].server();
    let (victim_id, pid) = (victim.node_id(), victim.pid());
    let shard_address = victim.shards()[0];
    let resume = Resume(pid);
    run_async(Duration::from_secs(180), async {
        let spread = cluster.spread().await;
        let client = cluster.client().await;
        let victim_shard = shard_of_node(&spread.map, victim_id);
        let lock_key = key_on_shard(&spread.map, b"default", victim_shard, "failover-lock");
        let slot = slot_of(&lock_key);
        let backups = spread.map.backups_of(slot).to_vec();
        assert!(!backups.is_empty(), "slot {slot} of {lock_key} has no backup");

        let lock = client.lock(lock_key.clone());
        let asked = Instant::now();
        let old = lock
            .acquire("old-holder", LEASE, Duration::ZERO)
            .await
            .expect("acquire the lock on the primary");
        // A connection of a client that routed here before the pause.
        let mut stale = tokio::task::block_in_place(|| RawConnection::handshaken(shard_address, 7));

        stop_process(pid);
        let promoted = wait_for_status(
            &cluster.control,
            "the paused primary's backup is promoted",
            SETTLE_LIMIT,
            |status| {
                let owner = status.map.owner_table()[slot as usize];
                owner != engram_proto::LOST_SHARD_INDEX && status.map.shards[owner as usize].node_id != victim_id
            },
        )
        .await;
        assert!(
            engram_tests::failover::lost_in(&promoted).is_none(),
            "slots were lost instead of promoted: {:?}",
            engram_tests::failover::lost_in(&promoted)
        );
        let owner = promoted.map.owner_table()[slot as usize] as usize;
        let new_owner = promoted.map.shards[owner].clone();
        assert!(
            backups
                .iter()
                .any(|&index| spread.map.shards[index as usize].node_id == new_owner.node_id),
            "slot {slot} went to {new_owner:?}, not to its backup {backups:?}"
        );

        // The client that took the lock still routes to the paused node, which would
        // hold its calls unanswered; one that starts from a live node's new map is sent
        // to the promoted backup.
        wait_for_node_epoch(cluster.nodes[0].server(), promoted.map.epoch, SETTLE_LIMIT).await;
        let client = cluster.client().await;
        let lock = client.lock(lock_key.clone());
        // The lock came along: its holder, its fence and a lease still running.
        let holder = lock.holder().await.expect("holder at the promoted backup");
        if asked.elapsed() < LEASE {
            let holder = holder.expect("the old holder's lease still runs at the promoted backup");
            assert_eq!(
                (holder.owner.as_slice(), holder.fence),
                (b"old-holder".as_slice(), old.fence()),
                "the promoted backup names another holder"
            );
        }
        let new = lock
            .acquire("new-holder", LEASE, LEASE + SETTLE_LIMIT)
            .await
            .expect("a new holder acquires once the old lease ended");
        assert!(
            asked.elapsed() >= LEASE,
            "the new holder got the lock {:?} after the old one asked for its {LEASE:?} lease",
            asked.elapsed()
        );
        assert!(
            new.fence() > old.fence(),
            "fence {} after failover is not above the old holder's {}",
            new.fence(),
            old.fence()
        );
        let stale_release = lock.release_with("old-holder", old.fence()).await;
        assert!(
            matches!(&stale_release, Err(error) if error.is_server(ErrorCode::NotHolder)),
            "releasing with the old holder's fence answered {stale_release:?}, not NotHolder"
        );

        resume_process(pid);
        // Every answer of the old primary refuses; once it has the new map, it names the
        // slot's new owner.
        tokio::task::block_in_place(|| refused_by_old_primary(&mut stale, 0, &lock_key));
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut round = 1;
        let moved = loop {
            let mut fresh = tokio::task::block_in_place(|| RawConnection::handshaken(shard_address, 8 + round));
            match tokio::task::block_in_place(|| refused_by_old_primary(&mut fresh, round, &lock_key)) {
                Direct::Refused {
                    code: ErrorCode::Moved | ErrorCode::WrongShard,
                    message,
                } => break message,
                other => assert!(
                    Instant::now() < deadline,
                    "the resumed old primary still answers {other:?} {SETTLE_LIMIT:?} after it resumed"
                ),
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            moved.contains(&new_owner.address),
            "the old primary's redirect does not name the new owner {}: {moved}",
            new_owner.address
        );
        let status = cluster.control.status().await;
        let owner = status.map.owner_table()[slot as usize];
        assert_ne!(
            status.map.shards[owner as usize].node_id, victim_id,
            "the resumed node got the slot back from its promoted backup"
        );
        let holder = lock.holder().await.expect("holder after the resume");
        assert_eq!(
            holder.map(|holder| (holder.owner, holder.fence)),
            Some((b"new-holder".to_vec(), new.fence())),
            "the lock's holder after the old primary resumed"
        );
        new.release().await.expect("release");
    });
    drop(resume);
}
