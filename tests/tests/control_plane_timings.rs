//! Measurements of the control plane, not checks: ignored by default, run on purpose
//! (README, "Benchmarks"):
//!
//! ```text
//! cargo nextest run -p engram-tests --test control_plane_timings --run-ignored ignored-only --no-capture
//! ```
//!
//! - takeover: three `engram-control --etcd` processes; the leader is killed (`kill -9`)
//!   and the time until one of the others answers a status request as the leader is
//!   measured, `ENGRAM_TAKEOVER_KILLS` times (default 10; the killed process is started
//!   again each time, so three always run);
//! - map commit: a save of the state as a migration's commit point writes it (the slots
//!   spread over the nodes in migration steps, one more slot moved per save), of three
//!   one-shard nodes and of a hundred four-shard nodes, `ENGRAM_COMMITS` times each
//!   (default 200) into etcd (the conditional transaction of a leader's term) and into
//!   the state file (write, fsync, rename, fsync of the directory).
//!
//! Each prints its figures (median, 90th percentile, maximum); nothing is asserted of
//! them.

use std::time::{Duration, Instant};

use engram_control::membership::Membership;
use engram_control::orchestrator::balance_moves;
use engram_control::service::MIGRATION_SLOTS_PER_STEP;
use engram_control::state::{EtcdTerm, EtcdWriter, Keys, StateFile};
use engram_proto::JoinRequest;
use engram_tests::etcd::Etcd;
use engram_tests::etcd_control::{all_but, first_leader, settled, start_controls};
use engram_tests::processes::Scratch;
use engram_tests::{run_async, unique_key};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

fn count_from(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// `label: median, p90, max` of `samples`, in milliseconds.
fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |quantile: f64| samples[((samples.len() - 1) as f64 * quantile).round() as usize];
    let ms = |duration: Duration| duration.as_secs_f64() * 1_000.0;
    println!(
        "{label}: {} samples, median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(samples[samples.len() - 1])
    );
}

#[test]
#[ignore = "a measurement: run with --run-ignored ignored-only --no-capture"]
fn takeover_after_kill_9_of_the_leader() {
    let kills = count_from("ENGRAM_TAKEOVER_KILLS", 10);
    let etcd = Etcd::start();
    let prefix = format!("/engram/{}", unique_key("takeover-timing"));
    let mut controls = start_controls(&etcd, &prefix, 3);
    let mut samples = Vec::new();
    for kill in 0..kills {
        let (leader, _) = run_async(Duration::from_secs(60), settled(&controls.iter().collect::<Vec<_>>()));
        controls[leader].kill();
        let killed = Instant::now();
        run_async(Duration::from_secs(60), first_leader(&all_but(&controls, leader)));
        let took = killed.elapsed();
        println!("kill {}: a standby led after {:.2} s", kill + 1, took.as_secs_f64());
        samples.push(took);
        controls[leader].restart();
    }
    report("takeover after kill -9 of the leader", &mut samples);
}

/// `nodes` nodes of `shards` shards each, whose slots were spread over them in
/// migration steps, as a rebalance leaves them.
fn spread_state(nodes: u8, shards: u16) -> Membership {
    let mut membership = Membership::new();
    for host in 1..=nodes {
        let request = JoinRequest {
            front_address: format!("10.0.0.{host}:7400"),
            shard_addresses: (0..shards)
                .map(|shard| format!("10.0.0.{host}:{}", 7401 + shard))
                .collect(),
            memory_limit_bytes: 0,
            boot_id: u64::from(host),
            zone: String::new(),
            takes_credentials: false,
        };
        membership.join(&request, 0).expect("join");
    }
    let moves = balance_moves(&membership, 0).expect("a plan");
    for step in moves.chunk_by(|a, b| a.to == b.to) {
        for chunk in step.chunks(MIGRATION_SLOTS_PER_STEP) {
            let slots: Vec<u32> = chunk.iter().map(|step| step.slot).collect();
            membership.commit_move(&slots, chunk[0].to);
        }
    }
    membership
}

/// Takes the leader key under a new lease, as a campaign does; returns its create
/// revision.
async fn take_leader_key(client: &mut Client, keys: &Keys) -> i64 {
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let txn = Txn::new()
        .when([Compare::create_revision(keys.leader.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            keys.leader.as_str(),
            "bench",
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let answer = client.txn(txn).await.expect("campaign");
    assert!(answer.succeeded(), "the leader key was free");
    answer.header().expect("a header").revision()
}

#[test]
#[ignore = "a measurement: run with --run-ignored ignored-only --no-capture"]
fn map_commit_latency_in_etcd_and_in_the_state_file() {
    let commits = count_from("ENGRAM_COMMITS", 200);
    let etcd = Etcd::start();
    let scratch = Scratch::new("commit-timing");
    // The tests' cluster, and a large one.
    for (nodes, shards) in [(3, 1), (100, 4)] {
        let mut state = spread_state(nodes, shards);
        println!(
            "state of {} members of {shards} shards: map epoch {}, {} ranges, {} bytes encoded",
            state.members().len(),
            state.epoch(),
            state.map().ranges.len(),
            state.encode().expect("encode").len()
        );
        // Each save is of the state with one more map change, as a commit writes it:
        // slot 0 moving back and forth between two shards.
        let first = state.owners()[0];
        let other = *state
            .owners()
            .iter()
            .find(|&&owner| owner != first)
            .expect("two owners");
        let mut next_state = || {
            let to = if state.owners()[0] == first { other } else { first };
            state.commit_move(&[0], to);
            state.encode().expect("encode")
        };

        let (file, _) = StateFile::open(&scratch.path().join(format!("{nodes}"))).expect("state file");
        let mut samples = Vec::new();
        for _ in 0..commits {
            let bytes = next_state();
            let started = Instant::now();
            file.save(&bytes).expect("save to the file");
            samples.push(started.elapsed());
        }
        report("  map commit into the state file", &mut samples);

        let keys = Keys::under(&format!("/engram/{}", unique_key("commit-timing")));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut client = runtime
            .block_on(Client::connect([etcd.endpoint()], None))
            .expect("connect");
        let key_revision = runtime.block_on(take_leader_key(&mut client, &keys));
        let writer = EtcdWriter::start(&[etcd.endpoint()]).expect("writer");
        let mut term = EtcdTerm::new(writer, keys, key_revision, 0);
        let mut samples = Vec::new();
        for _ in 0..commits {
            let bytes = next_state();
            let started = Instant::now();
            term.save(&bytes).expect("save to etcd");
            samples.push(started.elapsed());
        }
        report("  map commit into etcd", &mut samples);
    }
}
