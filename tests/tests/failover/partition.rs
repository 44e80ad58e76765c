//! A primary cut off from the control plane stops serving within its lease; the rest goes on.

use super::*;

/// Pause between two increments a [`DirectProbe`] sends.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// What the increments sent straight to one shard port got.
#[derive(Default)]
struct DirectLog {
    /// (sent, answered) of each served increment.
    served: Vec<(Instant, Instant)>,
    /// (answered, code, message) of each refusal.
    refused: Vec<(Instant, ErrorCode, String)>,
    /// Increments whose connection closed before they were answered: applied or not,
    /// nobody knows.
    unknown: u64,
}

impl DirectLog {
    fn refused_since(&self, since: Instant, codes: &[ErrorCode]) -> Option<&(Instant, ErrorCode, String)> {
        self.refused
            .iter()
            .find(|(at, code, _)| *at >= since && codes.contains(code))
    }
}

/// `counter add 1` of one key sent to one shard port every [`PROBE_INTERVAL`], as a
/// client that routed there would: the shard serves it or refuses it itself, nothing
/// forwards it. Runs on a thread of its own (the raw connection blocks).
struct DirectProbe {
    log: Arc<Mutex<DirectLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirectProbe {
    /// `client_ids` numbers the probe's connections (a new one after each close), apart
    /// from every other probe's.
    fn start(address: SocketAddr, key: &str, client_ids: u64) -> DirectProbe {
        let log = Arc::new(Mutex::new(DirectLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (logged, stopped, key) = (log.clone(), stop.clone(), key.to_string());
        let thread = std::thread::spawn(move || {
            let mut connections = 0;
            let mut connection: Option<RawConnection> = None;
            let mut request_id = 0;
            while !stopped.load(Relaxed) {
                let open = connection.get_or_insert_with(|| {
                    connections += 1;
                    RawConnection::handshaken(address, client_ids + connections)
                });
                request_id += 1;
                let add = CounterCommand::Add {
                    key: key.clone().into_bytes(),
                    delta: 1,
                };
                let sent = Instant::now();
                let answer = ask_directly(open, request_id, Command::from(add));
                let answered = Instant::now();
                let mut log = logged.lock().unwrap();
                match answer {
                    Direct::Served(_) => log.served.push((sent, answered)),
                    Direct::Refused { code, message } => log.refused.push((answered, code, message)),
                    Direct::Closed => {
                        log.unknown += 1;
                        connection = None;
                    }
                }
                drop(log);
                std::thread::sleep(PROBE_INTERVAL);
            }
        });
        DirectProbe {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, DirectLog> {
        self.log.lock().unwrap()
    }

    /// Waits until `done` holds for the log; fails the test, naming `what`, after `limit`.
    async fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&DirectLog) -> bool) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.log()) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline && !self.thread.as_ref().is_some_and(|thread| thread.is_finished()),
                "{what}: not within {limit:?} (or the probe ended)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stop(mut self) -> DirectLog {
        self.stop.store(true, Relaxed);
        let thread = self.thread.take().expect("a running probe");
        if let Err(panic) = tokio::task::block_in_place(|| thread.join()) {
            std::panic::resume_unwind(panic);
        }
        std::mem::take(&mut *self.log())
    }
}

impl Drop for DirectProbe {
    /// A test that failed leaves its probe behind: it must not go on probing the nodes
    /// the cluster's drop stops.
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Pause between two rounds of a [`BackgroundWriter`].
const BACKGROUND_PAUSE: Duration = Duration::from_millis(10);

/// Increments of keys on the nodes that stay connected, one key after the other
/// through a client, counting what was acknowledged and what failed.
struct BackgroundWriter {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(BTreeMap<String, i64>, Vec<String>, Duration)>,
}

impl BackgroundWriter {
    fn start(client: &engram_client::Client, keys: Vec<String>) -> BackgroundWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let (client, stopped, counted) = (client.clone(), stop.clone(), acknowledged.clone());
        let task = tokio::spawn(async move {
            let mut counts: BTreeMap<String, i64> = keys.iter().map(|key| (key.clone(), 0)).collect();
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            while !stopped.load(Relaxed) {
                for key in &keys {
                    let asked = Instant::now();
                    match client.counter(key.clone()).add(1).await {
                        Ok(_) => {
                            *counts.get_mut(key).expect("a key of the writer") += 1;
                            counted.fetch_add(1, Relaxed);
                        }
                        Err(error) => failures.push(format!("increment of {key}: {error}")),
                    }
                    slowest = slowest.max(asked.elapsed());
                }
                tokio::time::sleep(BACKGROUND_PAUSE).await;
            }
            (counts, failures, slowest)
        });
        BackgroundWriter {
            stop,
            acknowledged,
            task,
        }
    }

    fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Relaxed)
    }

    /// Stops the writer and checks that nothing failed and every counter holds exactly
    /// its acknowledged increments; returns the slowest increment.
    async fn stop_and_check(self, client: &engram_client::Client) -> Duration {
        self.stop.store(true, Relaxed);
        let (counts, failures, slowest) = self.task.await.expect("background writer");
        assert!(
            failures.is_empty(),
            "writes to keys of the nodes still connected failed:\n{}",
            failures.join("\n")
        );
        for (key, acknowledged) in counts {
            let value = client
                .counter(key.clone())
                .get()
                .await
                .expect("read a background counter");
            assert_eq!(
                value, acknowledged,
                "counter {key} holds {value} after {acknowledged} acknowledged increments"
            );
        }
        slowest
    }
}

#[test]
fn a_primary_cut_off_from_the_control_plane_stops_serving_within_its_lease_and_the_rest_goes_on() {
    /// Bound on each wait for the cluster to get somewhere (not a requirement on speed).
    const SETTLE_LIMIT: Duration = Duration::from_secs(30);
    /// Increments through the client before the cut and after the promotion.
    const INCREMENTS: i64 = 20;
    /// Increments each probe must have got served before it counts as serving.
    const PROBES_SERVED: usize = 5;
    /// Keys of the background writer on each node that stays connected.
    const BACKGROUND_KEYS_PER_NODE: usize = 3;
    /// Old slots of the cut-off node checked for a redirect after it rejoined.
    const OLD_SLOTS_CHECKED: usize = 64;
    let groups = ProcessGroups {
        control: Some(test_group(0)),
        nodes: vec![None, Some(test_group(1)), None],
    };
    let cluster = FailoverCluster::start_in_groups("failover-cut-off", &groups, REPLICAS, LIVENESS_TIMEOUT_MS);
    let victim = cluster.nodes[1].server();
    let (victim_id, victim_address) = (victim.node_id(), victim.shards()[0]);
    let control_address: SocketAddr = cluster.control.address().parse().expect("the control plane's address");
    let (SocketAddr::V4(control_address), Some(control_group), Some(victim_group)) =
        (control_address, groups.control, groups.nodes[1])
    else {
        unreachable!("the control plane listens on IPv4 loopback, and both have groups")
    };
    let control_side = Side {
        group: control_group,
        address: *control_address.ip(),
    };
    let victim_side = Side {
        group: victim_group,
        address: victim.bind(),
    };
    run_async(Duration::from_secs(90), async {
        let spread = cluster.spread().await;
        let incarnation = spread
            .nodes
            .iter()
            .find(|node| node.node_id == victim_id)
            .expect("the node to cut off is a member")
            .incarnation;
        let victim_shard = shard_of_node(&spread.map, victim_id);
        let old_slots = owned_slots(&spread.map, victim_id);
        assert!(
            !old_slots.is_empty(),
            "the node to cut off owns no slot after the spread"
        );
        let key = key_on_shard(&spread.map, b"default", victim_shard, "cut-off-counter");
        let slot = slot_of(&key);
        let backup = match spread.map.backups_of(slot) {
            [index] => spread.map.shards[*index as usize].clone(),
            other => panic!("slot {slot} of {key} has backups {other:?}, not one"),
        };
        let backup_address: SocketAddr = backup.address.parse().expect("the backup's address");
        let others: Vec<String> = (0..spread.map.shards.len())
            .filter(|&shard| shard != victim_shard)
            .flat_map(|shard| {
                let map = &spread.map;
                (0..BACKGROUND_KEYS_PER_NODE)
                    .map(move |n| key_on_shard(map, b"default", shard, &format!("cut-off-other-{shard}-{n}")))
            })
            .collect();

        // Seeded at the first node, which stays connected.
        let client = cluster.client().await;
        let counter = client.counter(key.clone());
        let mut acknowledged = 0;
        for _ in 0..INCREMENTS {
            counter.add(1).await.expect("increment before the cut");
            acknowledged += 1;
        }
        let writer = BackgroundWriter::start(&cluster.client().await, others);
        let victim_probe = DirectProbe::start(victim_address, &key, 1_000);
        let backup_probe = DirectProbe::start(backup_address, &key, 1_000_000);
        victim_probe
            .wait_for("the node to cut off serves the probe", SETTLE_LIMIT, |log| {
                log.served.len() >= PROBES_SERVED
            })
            .await;

        let cut = Cut::between(victim_side, control_side);
        let cut_at = Instant::now();
        let written_at_cut = writer.acknowledged();
        let stopped_at = victim_probe
            .wait_for("the cut-off node refuses the probe", SETTLE_LIMIT, |log| {
                log.refused_since(cut_at, &[ErrorCode::TryAgain]).is_some()
            })
            .await;
        // It no longer serves the key; its backup takes over once the control plane
        // has declared it dead, and the client's write waits for that.
        let asked = Instant::now();
        tokio::time::timeout(SETTLE_LIMIT, counter.add(1))
            .await
            .unwrap_or_else(|_| panic!("a write to the cut-off node's key was not answered within {SETTLE_LIMIT:?}"))
            .expect("a write to the cut-off node's key through a client seeded at a connected node");
        acknowledged += 1;
        let client_write_took = asked.elapsed();
        let promoted = wait_for_status(
            &cluster.control,
            "the cut-off node is declared dead and its backup promoted",
            SETTLE_LIMIT,
            |status| {
                let owner = status.map.owner_table()[slot as usize];
                let dead = status.nodes.iter().any(|node| node.node_id == victim_id && !node.alive);
                dead && owner != engram_proto::LOST_SHARD_INDEX
                    && status.map.shards[owner as usize].node_id == backup.node_id
            },
        )
        .await;
        let promoted_seen_at = Instant::now();
        assert!(
            engram_tests::failover::lost_in(&promoted).is_none(),
            "slots were lost instead of promoted: {:?}",
            engram_tests::failover::lost_in(&promoted)
        );
        for _ in 0..INCREMENTS {
            counter.add(1).await.expect("increment after the promotion");
            acknowledged += 1;
        }
        backup_probe
            .wait_for("the promoted backup serves the probe", SETTLE_LIMIT, |log| {
                log.served.len() >= PROBES_SERVED
            })
            .await;
        let written_during_cut = writer.acknowledged() - written_at_cut;

        drop(cut);
        let healed_at = Instant::now();
        let rejoined = wait_for_status(
            &cluster.control,
            "the cut-off node is alive again",
            SETTLE_LIMIT,
            |status| status.nodes.iter().any(|node| node.node_id == victim_id && node.alive),
        )
        .await;
        let rejoined_at = Instant::now();
        let member = rejoined
            .nodes
            .iter()
            .find(|node| node.node_id == victim_id)
            .expect("member");
        assert_eq!(
            member.incarnation, incarnation,
            "the cut-off node came back as another incarnation"
        );
        let redirected_at = victim_probe
            .wait_for("the rejoined node redirects the probe", SETTLE_LIMIT, |log| {
                log.refused_since(healed_at, &[ErrorCode::Moved, ErrorCode::WrongShard])
                    .is_some()
            })
            .await;
        let redundant = wait_for_redundancy(&cluster.control, REPLICAS, REDUNDANCY_LIMIT).await;
        let redundant_at = Instant::now();
        let victim_log = victim_probe.stop();
        let backup_log = backup_probe.stop();

        // (1) The cut-off node served nothing once its backup could: every increment it
        // answered was answered before the backup was first asked one it served.
        let last_served = victim_log.served.last().expect("the cut-off node served the probe").1;
        let first_promoted = backup_log.served.first().expect("the backup served the probe").0;
        assert!(
            last_served < first_promoted,
            "the cut-off node served an increment {:?} after the cut, {:?} after its promoted backup \
             was first asked one it served ({:?} after the cut)",
            last_served - cut_at,
            last_served - first_promoted,
            first_promoted - cut_at
        );
        let refusals: Vec<&(Instant, ErrorCode, String)> = victim_log
            .refused
            .iter()
            .filter(|(_, code, _)| !matches!(code, ErrorCode::TryAgain | ErrorCode::Moved | ErrorCode::WrongShard))
            .collect();
        assert!(
            refusals.is_empty(),
            "the cut-off node refused with neither TryAgain nor a redirect: {refusals:?}"
        );
        let (_, _, redirect) = victim_log
            .refused_since(healed_at, &[ErrorCode::Moved, ErrorCode::WrongShard])
            .expect("a redirect after the heal");
        assert!(
            redirect.contains(&backup.address),
            "the rejoined node's redirect does not name the promoted backup {}: {redirect}",
            backup.address
        );

        // (2) The nodes still connected served throughout.
        assert!(
            written_during_cut > 0,
            "the background writer got nothing acknowledged while the node was cut off"
        );
        let slowest_background = writer.stop_and_check(&client).await;

        // (3) Every acknowledged increment is there, the probes' served ones included.
        let served_directly = (victim_log.served.len() + backup_log.served.len()) as i64;
        let unknown = (victim_log.unknown + backup_log.unknown) as i64;
        let expected = acknowledged + served_directly;
        let value = counter.get().await.expect("read the counter");
        assert!(
            (expected..=expected + unknown).contains(&value),
            "the counter holds {value}, but {acknowledged} increments were acknowledged through the client \
             and {served_directly} served directly ({unknown} unanswered)"
        );

        // (4) The rejoined node was given none of its old slots back, and serves none.
        let owners = redundant.map.owner_table();
        let probes = key_per_slot();
        let step = old_slots.len().div_ceil(OLD_SLOTS_CHECKED);
        let mut connection = tokio::task::block_in_place(|| RawConnection::handshaken(victim_address, 99));
        for (round, &old) in old_slots.iter().step_by(step).enumerate() {
            let owner = &redundant.map.shards[owners[old as usize] as usize];
            assert_ne!(
                owner.node_id, victim_id,
                "slot {old} went back to the node that was cut off"
            );
            let get = CounterCommand::Get {
                key: probes[old as usize].clone().into_bytes(),
            };
            match tokio::task::block_in_place(|| ask_directly(&mut connection, round as u64 + 1, Command::from(get))) {
                Direct::Refused {
                    code: ErrorCode::Moved | ErrorCode::WrongShard,
                    ..
                } => {}
                other => panic!("the rejoined node answered a read of its old slot {old} with {other:?}"),
            }
        }

        println!(
            "cut-off node {victim_id} (lease {} ms): last served {:?} after the cut, refused from {:?}; declared dead and \
             promoted (seen in the status) {:?} after the cut; the promoted backup first served {:?} after the cut; \
             the client's write took {:?}; {written_during_cut} background increments during the cut, the \
             slowest took {slowest_background:?}; healed after {:?}: alive again {:?} later, redirecting {:?} \
             later, fully backed up {:?} later; counter {value} ({unknown} unanswered probes)",
            engram_server::heartbeat::map_check_grace_ms(LIVENESS_TIMEOUT_MS),
            last_served.saturating_duration_since(cut_at),
            stopped_at - cut_at,
            promoted_seen_at - cut_at,
            first_promoted - cut_at,
            client_write_took,
            healed_at - cut_at,
            rejoined_at - healed_at,
            redirected_at - healed_at,
            redundant_at - healed_at,
        );
    });
}
