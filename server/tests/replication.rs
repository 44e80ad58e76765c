//! Two nodes in the test's process, given maps by hand (as the control plane installs
//! them): one leads every slot and the other backs it up. A write is answered only once
//! the backup applied it, so the backup, promoted by the next map, holds every answered
//! write; with the backup gone, writes wait until a map drops it.

use std::net::TcpListener;
use std::time::Duration;

use engram_client::blocking;
use engram_proto::limits::SLOT_COUNT;
use engram_proto::link::blocking::BlockingLink;
use engram_proto::{
    BackupRange, ErrorCode, Identity, MigrateIn, PeerProtocol, PeerRequest, PeerResponse, ShardAddress, SlotMap,
    SlotRange,
};
use engram_server::config::NodeSettings;
use engram_server::node::{self, NodeListeners, RunningNode, Shutdown};

/// Calls that must answer; generous, for a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A call that must not be answered: long enough for a batch to reach a live backup
/// many times over.
const UNANSWERED_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Far above the embedded map's, so the maps below are newer.
const FIRST_EPOCH: u64 = 100;

fn start(node_id: u64, shutdown: &Shutdown) -> RunningNode {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    let listeners = NodeListeners {
        front: bind(),
        shards: vec![bind()],
        metrics: None,
        resp: None,
    };
    let settings = NodeSettings {
        node_id: Some(node_id),
        ..NodeSettings::default()
    };
    node::start(settings, listeners, shutdown.clone()).expect("the node starts")
}

fn shard_address(node: &RunningNode) -> ShardAddress {
    ShardAddress {
        node_id: node.node_id(),
        shard_id: 0,
        address: node.shard_addresses()[0].clone(),
        // Nodes alone run incarnation 0.
        incarnation: 0,
    }
}

/// Every slot led by `shards[owner]`, backed up by `shards[backup]` if given.
fn map(epoch: u64, shards: Vec<ShardAddress>, owner: u32, backup: Option<u32>) -> SlotMap {
    SlotMap {
        epoch,
        shards,
        ranges: vec![SlotRange {
            start: 0,
            end: SLOT_COUNT - 1,
            shard_index: owner,
        }],
        version_floor: 0,
        backups: backup
            .map(|backup| BackupRange {
                start: 0,
                end: SLOT_COUNT - 1,
                shard_indices: vec![backup],
            })
            .into_iter()
            .collect(),
    }
}

fn install(node: &RunningNode, map: &SlotMap) {
    for address in node.shard_addresses() {
        let mut link = BlockingLink::<PeerProtocol>::connect(address, Identity::node(&[]), CALL_TIMEOUT)
            .expect("a peer link to the shard");
        let answer = link
            .call(PeerRequest::InstallMap(map.clone()))
            .expect("the shard answers");
        assert_eq!(answer, PeerResponse::Accepted, "map of epoch {} installed", map.epoch);
    }
}

/// A primary and its backup, both serving under a map that says so.
fn replicated_pair(shutdown: &Shutdown) -> (RunningNode, RunningNode, Vec<ShardAddress>) {
    let primary = start(1, shutdown);
    let backup = start(2, shutdown);
    let shards = vec![shard_address(&primary), shard_address(&backup)];
    let replicated = map(FIRST_EPOCH, shards.clone(), 0, Some(1));
    install(&backup, &replicated);
    install(&primary, &replicated);
    (primary, backup, shards)
}

fn client(node: &RunningNode, timeout: Duration) -> blocking::Client {
    let builder = engram_client::Client::builder(node.front_address().to_string()).timeout(timeout);
    blocking::Client::connect(builder).expect("client connects")
}

#[test]
fn every_answered_write_is_at_the_backup_that_the_next_map_promotes() {
    let shutdown = Shutdown::new();
    let (primary, backup, shards) = replicated_pair(&shutdown);

    let writer = client(&primary, CALL_TIMEOUT);
    let hits = writer.counter("hits");
    for expected in 1..=200 {
        assert_eq!(hits.incr().expect("incr"), expected);
    }
    writer.bytes("greeting").set("hello").expect("set");
    let lock = writer.lock("job");
    let guard = lock
        .acquire("worker-1", Duration::from_secs(60), Duration::from_secs(1))
        .expect("acquire a free lock");
    let fence = guard.fence();
    std::mem::forget(guard);
    let queue = writer.queue("tasks");
    for item in ["a", "b", "c"] {
        queue.push_back(item).expect("push");
    }
    assert_eq!(queue.pop_front(None).expect("pop").as_deref(), Some(&b"a"[..]));
    drop(writer);

    primary.stop().expect("the primary stops");
    install(&backup, &map(FIRST_EPOCH + 1, shards, 1, None));
    let reader = client(&backup, CALL_TIMEOUT);
    assert_eq!(reader.counter("hits").get().expect("get"), 200);
    let greeting = reader.bytes("greeting").get().expect("get").expect("the value set");
    assert_eq!(greeting.value, b"hello".to_vec());
    let holder = reader.lock("job").holder().expect("holder").expect("still held");
    assert_eq!((holder.owner.as_slice(), holder.fence), (&b"worker-1"[..], fence));
    let next = reader
        .lock("job")
        .try_acquire("worker-2", Duration::from_secs(60))
        .expect("try acquire");
    assert!(next.is_none(), "the promoted copy still holds the lock for worker-1");
    let queue = reader.queue("tasks");
    assert_eq!(queue.pop_front(None).expect("pop").as_deref(), Some(&b"b"[..]));
    assert_eq!(queue.pop_front(None).expect("pop").as_deref(), Some(&b"c"[..]));
    backup.stop().expect("the backup stops");
}

#[test]
fn with_its_backup_gone_a_write_waits_until_a_map_drops_the_backup() {
    let shutdown = Shutdown::new();
    let (primary, backup, shards) = replicated_pair(&shutdown);
    let writer = client(&primary, CALL_TIMEOUT);
    assert_eq!(writer.counter("hits").incr().expect("incr"), 1);

    backup.stop().expect("the backup stops");
    let impatient = client(&primary, UNANSWERED_TIMEOUT);
    let unanswered = impatient.counter("hits").incr();
    assert!(
        unanswered.is_err(),
        "a write no backup applied is not answered: {unanswered:?}"
    );

    install(&primary, &map(FIRST_EPOCH + 1, shards, 0, None));
    // The unanswered increment was applied at the primary: it is there, and counted once.
    assert_eq!(writer.counter("hits").incr().expect("incr"), 3);
    primary.stop().expect("the primary stops");
}

#[test]
fn a_backup_refuses_to_take_its_slots_in_a_migration_which_would_drop_its_copy() {
    let shutdown = Shutdown::new();
    let (primary, backup, _) = replicated_pair(&shutdown);
    let mut link =
        BlockingLink::<PeerProtocol>::connect(&backup.shard_addresses()[0], Identity::node(&[]), CALL_TIMEOUT)
            .expect("a peer link to the backup");
    let order = MigrateIn {
        migration_id: 1,
        slots: vec![7],
        batch: Vec::new(),
        batch_index: 0,
        age_ms: 0,
    };
    match link.call(PeerRequest::MigrateIn(order)).expect("the backup answers") {
        PeerResponse::Error(reply) => {
            assert_eq!(reply.code, ErrorCode::InvalidArgument.as_u16(), "{reply}");
            assert!(reply.message.contains("backs it up"), "{reply}");
        }
        other => panic!("a backup took its own slots in a migration: {other:?}"),
    }
    primary.stop().expect("the primary stops");
    backup.stop().expect("the backup stops");
}
