//! A cluster whose processes all read one credentials file: nodes join with a token of
//! the node right (and forward, replicate and migrate with it), operators administer
//! with admin, a tenant's data token is refused administration, and a node whose token
//! lacks the node right stops at once saying why, instead of retrying in silence.

use std::path::Path;
use std::time::Duration;

use engram_client::admin::{Admin, AdminError};
use engram_client::{Client, ErrorCode, ServerCode};
use engram_proto::credentials::credential_line;
use engram_proto::{Right, Rights};
use engram_tests::cluster::{node_slot_count, wait_until};
use engram_tests::control::ControlPlane;
use engram_tests::processes::Scratch;
use engram_tests::resp::{Reply, RespConnection};
use engram_tests::server::next_loopback;
use engram_tests::{EngramServer, ServerOptions};

const TENANT: &str = "tenant-token-2d8f6a0c4e1b";
const NEIGHBOUR: &str = "neighbour-token-8b3a1f9c2e7d";
const OPS: &str = "ops-token-7a1e5c9b3d0f";
const NODES: &str = "nodes-token-5e0b8d2f6a4c";
const KEYS: usize = 100;
/// Bounds every wait for the cluster to settle (joins, a rebalance).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

fn write_credentials(dir: &Path) -> std::path::PathBuf {
    let lines = [
        credential_line("tenant", TENANT.as_bytes(), Rights::DATA, "app"),
        credential_line("neighbour", NEIGHBOUR.as_bytes(), Rights::DATA, "next-door"),
        credential_line("ops", OPS.as_bytes(), Rights::NONE.with(Right::Admin), "*"),
        credential_line("nodes", NODES.as_bytes(), Rights::NONE.with(Right::Node), "*"),
    ];
    let path = dir.join("credentials");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn node(control: &str, credentials: &Path, node_token: &str) -> ServerOptions {
    ServerOptions::default()
        .cores(1)
        .bind(next_loopback())
        .control(control)
        .credentials_file(credentials.to_path_buf(), node_token)
}

fn refusal_code(error: &AdminError) -> Option<ServerCode> {
    match error {
        AdminError::Refused { source, .. } => source.code(),
        AdminError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_with_the_node_right_and_only_operators_administer() {
    let scratch = Scratch::new("credentials-cluster");
    let credentials = write_credentials(scratch.path());
    let path = credentials.display().to_string();
    let control = ControlPlane::start_with(
        next_loopback(),
        scratch.path().join("control"),
        &["--replicas", "1", "--credentials-file", &path, "--node-token", NODES],
    );
    let admin = |token: &str| {
        Admin::new(control.address())
            .credentials(token.as_bytes().to_vec())
            .timeout(Duration::from_secs(10))
    };
    let first = EngramServer::start(node(control.address(), &credentials, NODES));
    let second = EngramServer::start(node(control.address(), &credentials, NODES).resp());
    wait_until("two live members", SETTLE_LIMIT, async || {
        admin(OPS)
            .status()
            .await
            .is_ok_and(|status| status.nodes.iter().filter(|node| node.alive).count() == 2)
    })
    .await;

    let tenant_admin = admin(TENANT).status().await.expect_err("a data token administers");
    assert_eq!(
        refusal_code(&tenant_admin),
        Some(ServerCode::Known(ErrorCode::Forbidden)),
        "{tenant_admin}"
    );
    let rebalance = admin(TENANT).rebalance().await.expect_err("a data token rebalances");
    assert_eq!(
        refusal_code(&rebalance),
        Some(ServerCode::Known(ErrorCode::Forbidden)),
        "{rebalance}"
    );
    let stranger = admin("").status().await.expect_err("no token administers");
    assert_eq!(
        refusal_code(&stranger),
        Some(ServerCode::Known(ErrorCode::Unauthorized)),
        "{stranger}"
    );
    let node_admin = admin(NODES).status().await.expect_err("a node token administers");
    assert_eq!(
        refusal_code(&node_admin),
        Some(ServerCode::Known(ErrorCode::Forbidden)),
        "{node_admin}"
    );

    // The second node's door forwards every key to the first, which owns every slot
    // until the rebalance. A connection that AUTHs into another namespace after a
    // forwarded command writes in the new one, not through links of the old one.
    let status = admin(OPS).status().await.unwrap();
    assert_eq!(
        node_slot_count(&status, second.node_id()),
        0,
        "the second node owns slots before a rebalance"
    );
    let door = second.resp().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut redis = RespConnection::connect(door);
        assert_eq!(redis.command(&["AUTH", "app", TENANT]), Reply::ok());
        assert_eq!(redis.command(&["GET", "switch"]), Reply::Nil);
        assert_eq!(redis.command(&["AUTH", "next-door", NEIGHBOUR]), Reply::ok());
        assert_eq!(redis.command(&["SET", "switch", "neighbour's"]), Reply::ok());
        assert_eq!(redis.command(&["AUTH", "app", TENANT]), Reply::ok());
        assert_eq!(
            redis.command(&["GET", "switch"]),
            Reply::Nil,
            "the neighbour wrote into app"
        );
        assert_eq!(redis.command(&["AUTH", "next-door", NEIGHBOUR]), Reply::ok());
        assert_eq!(redis.command(&["GET", "switch"]), Reply::bulk("neighbour's"));
    })
    .await
    .unwrap();

    // Front-only through the second node: each key the first node owns is forwarded
    // with the second node's token, in the tenant's namespace.
    let through_second = Client::builder(second.front().to_string())
        .credentials(TENANT.as_bytes().to_vec())
        .namespace("app")
        .direct(false)
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    for index in 0..KEYS {
        let counter = through_second.counter(format!("c-{index}").as_str());
        counter.add(index as i64 + 1).await.unwrap();
    }
    let moved_before = admin(OPS).status().await.unwrap().slots_moved_total;
    admin(OPS).rebalance().await.unwrap();
    wait_until("a rebalance onto both nodes", SETTLE_LIMIT, async || {
        let Ok(status) = admin(OPS).status().await else {
            return false;
        };
        status.slots_moved_total > moved_before
            && status.migrations.is_empty()
            && node_slot_count(&status, first.node_id()) > 0
            && node_slot_count(&status, second.node_id()) > 0
    })
    .await;
    let direct = Client::builder(first.front().to_string())
        .credentials(TENANT.as_bytes().to_vec())
        .namespace("app")
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    for index in 0..KEYS {
        let value = direct.counter(format!("c-{index}").as_str()).get().await.unwrap();
        assert_eq!(value, index as i64 + 1, "counter c-{index} after the rebalance");
    }
    let status = admin(OPS).status().await.unwrap();
    assert!(
        status.map.backups.iter().any(|range| !range.shard_indices.is_empty()),
        "no slot has a backup: {:?}",
        status.map.backups
    );

    // A node whose own file makes a tenant's token a node's (a file out of step with the
    // control plane's) stops at once, naming the control plane's refusal (the error of
    // a join retried until its timeout says "could not join" instead).
    let out_of_step = scratch.path().join("out-of-step");
    std::fs::create_dir_all(&out_of_step).unwrap();
    let line = credential_line("tenant", TENANT.as_bytes(), Rights::NONE.with(Right::Node), "*");
    std::fs::write(out_of_step.join("credentials"), line).unwrap();
    let out_of_step = out_of_step.join("credentials");
    let Err(refused) = EngramServer::try_start(node(control.address(), &out_of_step, TENANT)) else {
        panic!("a node joined with a data token");
    };
    assert!(
        refused.stderr.contains("refused this node's credentials") && refused.stderr.contains("lacks the node right"),
        "{refused}"
    );
}
