//! Credentials kept in etcd: every control-plane process reads them from
//! `PREFIX/credentials` and follows its changes, and nodes started with `--node-token`
//! alone admit by whatever the control plane admits by. One `put` revokes a tenant on
//! every process (open connections end at their next request) and admits a new one;
//! a put that does not parse, or that would lock the nodes out, changes nothing; a
//! control plane that lists no credentials cannot start such a node.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engram_client::admin::{Admin, AdminError};
use engram_client::{Client, Error, ErrorCode, ServerCode};
use engram_control::state::Keys;
use engram_proto::credentials::credential_line;
use engram_proto::{Right, Rights};
use engram_tests::binaries;
use engram_tests::cluster::wait_until;
use engram_tests::control::ControlPlane;
use engram_tests::etcd::Etcd;
use engram_tests::processes::Scratch;
use engram_tests::server::{next_loopback, scrub_environment};
use engram_tests::{EngramServer, ServerOptions};

const TENANT: &str = "tenant-token-4c1e9a7f2b0d";
const NEWCOMER: &str = "newcomer-token-6f2d0b8e4a1c";
const OPS: &str = "ops-token-1b7e3d9f5c2a";
const NEW_OPS: &str = "new-ops-token-8d4a2c6e0f3b";
const THIRD: &str = "third-token-0e5b7d1f3a9c";
const NODES: &str = "nodes-token-3a9c5e1b7d0f";
const PREFIX: &str = "/engram/credentials-test";
/// Bounds every wait for a change to reach the processes (a watch event, then a
/// heartbeat: well under a second each).
const FOLLOW_LIMIT: Duration = Duration::from_secs(60);

fn nodes_line() -> String {
    credential_line("nodes", NODES.as_bytes(), Rights::NONE.with(Right::Node), "*")
}

fn first_credentials() -> String {
    [
        credential_line("tenant", TENANT.as_bytes(), Rights::DATA, "app"),
        credential_line("ops", OPS.as_bytes(), Rights::NONE.with(Right::Admin), "*"),
        nodes_line(),
    ]
    .join("\n")
}

/// The tenant and the operator revoked, a newcomer and a new operator admitted.
fn second_credentials() -> String {
    [
        credential_line("newcomer", NEWCOMER.as_bytes(), Rights::DATA, "app"),
        credential_line("new-ops", NEW_OPS.as_bytes(), Rights::NONE.with(Right::Admin), "*"),
        nodes_line(),
    ]
    .join("\n")
}

async fn put(etcd: &Etcd, value: &str) {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    client
        .put(Keys::under(PREFIX).credentials, value, None)
        .await
        .expect("put the credentials");
}

async fn delete(etcd: &Etcd) {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    client
        .delete(Keys::under(PREFIX).credentials, None)
        .await
        .expect("delete the credentials");
}

fn control_plane(etcd: &Etcd) -> ControlPlane {
    ControlPlane::start_etcd(
        next_loopback(),
        &etcd.endpoint(),
        PREFIX,
        &["--credentials-etcd", "--node-token", NODES],
    )
}

/// One process's own answer, as its gate admits `token` (a standby answers a ping too).
async fn ping(address: &str, token: &str) -> Result<(), AdminError> {
    Admin::new(address)
        .follow_leader(false)
        .credentials(token.as_bytes().to_vec())
        .timeout(Duration::from_secs(10))
        .ping()
        .await
}

fn refusal_code(error: &AdminError) -> Option<ServerCode> {
    match error {
        AdminError::Refused { source, .. } => source.code(),
        AdminError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

async fn connect(node: &EngramServer, token: &str) -> Result<Client, Error> {
    node.client_builder()
        .credentials(token.as_bytes().to_vec())
        .namespace("app")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// Waits until `text` shows in what `stderr` returns.
async fn wait_for_log(what: &str, text: &str, stderr: impl Fn() -> String) {
    let deadline = Instant::now() + FOLLOW_LIMIT;
    while !stderr().contains(text) {
        assert!(Instant::now() < deadline, "{what}: no `{text}` in {}", stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_in_etcd_changes_who_may_connect_to_every_process() {
    let mut etcd = Etcd::start();
    put(&etcd, &first_credentials()).await;
    let controls = [control_plane(&etcd), control_plane(&etcd)];
    let addresses = format!("{},{}", controls[0].address(), controls[1].address());
    let node = EngramServer::start(
        ServerOptions::default()
            .cores(1)
            .bind(next_loopback())
            .control(&addresses)
            .node_token(NODES),
    );
    let operator = |token: &str| {
        Admin::new(controls[0].address())
            .credentials(token.as_bytes().to_vec())
            .timeout(Duration::from_secs(10))
    };
    wait_until("the node is a live member", FOLLOW_LIMIT, async || {
        operator(OPS)
            .status()
            .await
            .is_ok_and(|status| status.nodes.iter().any(|member| member.alive))
    })
    .await;

    // The node admits by the control plane's credentials: the tenant in its namespace,
    // nobody else; the tenant may not administer the control plane.
    let tenant = connect(&node, TENANT).await.expect("the tenant connects to the node");
    tenant.counter("visits").add(1).await.unwrap();
    let stranger = connect(&node, NEWCOMER).await.expect_err("a stranger connected");
    assert_eq!(
        stranger.code(),
        Some(ServerCode::Known(ErrorCode::Unauthorized)),
        "{stranger}"
    );
    let administering = operator(TENANT).status().await.expect_err("a data token administers");
    assert_eq!(
        refusal_code(&administering),
        Some(ServerCode::Known(ErrorCode::Forbidden)),
        "{administering}"
    );

    // One put: the tenant and the operator revoked, a newcomer admitted, everywhere.
    put(&etcd, &second_credentials()).await;
    wait_until("the newcomer admitted by the node", FOLLOW_LIMIT, async || {
        connect(&node, NEWCOMER).await.is_ok()
    })
    .await;
    for control in &controls {
        wait_until(
            "the new operator admitted by each control plane",
            FOLLOW_LIMIT,
            async || ping(control.address(), NEW_OPS).await.is_ok(),
        )
        .await;
        let revoked = ping(control.address(), OPS)
            .await
            .expect_err("a revoked operator pinged");
        assert_eq!(
            refusal_code(&revoked),
            Some(ServerCode::Known(ErrorCode::Unauthorized)),
            "{revoked}"
        );
    }
    let ended = tenant
        .counter("visits")
        .add(1)
        .await
        .expect_err("the revoked tenant's open connection went on");
    // The server ends it saying "credentials revoked"; the client's retry of the add on
    // a new connection is then refused at its handshake.
    assert_eq!(
        ended.code(),
        Some(ServerCode::Known(ErrorCode::Unauthorized)),
        "{ended}"
    );
    let refused = connect(&node, TENANT).await.expect_err("the revoked tenant connected");
    assert_eq!(
        refused.code(),
        Some(ServerCode::Known(ErrorCode::Unauthorized)),
        "{refused}"
    );
    let newcomer = connect(&node, NEWCOMER).await.unwrap();
    assert_eq!(
        newcomer.counter("visits").get().await.unwrap(),
        1,
        "the data went with the tenant"
    );

    // Text that does not parse, credentials that would refuse the nodes' token, and a
    // delete: each process says why it keeps what it has, and nothing changes.
    let broken = format!("{}\nintruder sha256:xyz read *\n", second_credentials());
    put(&etcd, &broken).await;
    for control in &controls {
        wait_for_log("a broken put", "credentials in etcd refused", || control.stderr_text()).await;
        assert!(
            control.stderr_text().contains(":4: `sha256:xyz`"),
            "{}",
            control.stderr_text()
        );
    }
    let without_nodes = credential_line("tenant", TENANT.as_bytes(), Rights::DATA, "app");
    put(&etcd, &without_nodes).await;
    for control in &controls {
        wait_for_log("a put without the nodes", "do not admit --node-token", || {
            control.stderr_text()
        })
        .await;
    }
    delete(&etcd).await;
    for control in &controls {
        wait_for_log("a delete", "the credentials key was deleted", || control.stderr_text()).await;
    }
    // The refused puts changed nothing anywhere, even on the node, which heartbeats
    // meanwhile.
    assert_eq!(newcomer.counter("visits").add(1).await.unwrap(), 2);
    assert!(
        connect(&node, TENANT).await.is_err(),
        "a refused put admitted the tenant"
    );
    assert!(
        operator(NEW_OPS).status().await.is_ok(),
        "a refused put revoked the operator"
    );

    // etcd goes down and comes back (every watch breaks, the leader steps down): a put
    // afterwards still reaches every process.
    tokio::task::block_in_place(|| etcd.restart());
    let third = format!(
        "{}\n{}",
        second_credentials(),
        credential_line("third", THIRD.as_bytes(), Rights::DATA, "app")
    );
    put(&etcd, &third).await;
    wait_until("the third tenant admitted by the node", FOLLOW_LIMIT, async || {
        connect(&node, THIRD).await.is_ok()
    })
    .await;
    for control in &controls {
        wait_until("each control plane follows again", FOLLOW_LIMIT, async || {
            control
                .stderr_text()
                .matches("credentials changed in etcd; installed")
                .count()
                == 2
        })
        .await;
    }
    // The control planes never installed what they refused, so the node was never handed
    // it: two changes installed, the second put's and the third's.
    let log = node.stderr_text();
    assert_eq!(
        log.matches("the control plane's credentials changed; installed")
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("the control plane's credentials refused"), "{log}");
    assert!(connect(&node, TENANT).await.is_err(), "the revoked tenant came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_a_file_control_plane_credentials_and_follows_its_reload() {
    let scratch = Scratch::new("credentials-given");
    let path = scratch.path().join("credentials");
    std::fs::write(&path, first_credentials()).unwrap();
    let control = ControlPlane::start_with(
        next_loopback(),
        scratch.path().join("control"),
        &["--credentials-file", &path.display().to_string(), "--node-token", NODES],
    );
    let node = EngramServer::start(
        ServerOptions::default()
            .cores(1)
            .bind(next_loopback())
            .control(control.address())
            .node_token(NODES),
    );
    let tenant = connect(&node, TENANT).await.expect("the tenant connects to the node");
    tenant.counter("visits").add(1).await.unwrap();
    assert!(connect(&node, NEWCOMER).await.is_err(), "a stranger connected");

    std::fs::write(&path, second_credentials()).unwrap();
    // SAFETY: kill(2) on the pid of the control plane this test started.
    assert_eq!(
        unsafe { libc::kill(control.pid().expect("running") as i32, libc::SIGHUP) },
        0
    );
    wait_until("the newcomer admitted by the node", FOLLOW_LIMIT, async || {
        connect(&node, NEWCOMER).await.is_ok()
    })
    .await;
    let ended = tenant
        .counter("visits")
        .add(1)
        .await
        .expect_err("the revoked tenant went on");
    assert_eq!(
        ended.code(),
        Some(ServerCode::Known(ErrorCode::Unauthorized)),
        "{ended}"
    );
}

#[test]
fn a_node_with_its_token_alone_needs_a_control_plane_that_lists_credentials() {
    let scratch = Scratch::new("credentials-none-given");
    let control = ControlPlane::start(next_loopback(), scratch.path().join("control"));
    let options = ServerOptions::default()
        .cores(1)
        .bind(next_loopback())
        .control(control.address())
        .node_token(NODES);
    let Err(refused) = EngramServer::try_start(options) else {
        panic!("a node started with a node token and nothing to admit by");
    };
    assert!(
        refused.stderr.contains("refused this node's credentials")
            && refused.stderr.contains("this control plane shares no credentials"),
        "{refused}"
    );
    // Without --control there is no control plane to take them from.
    let alone = ServerOptions::default().cores(1).node_token(NODES);
    let Err(refused) = EngramServer::try_start(alone) else {
        panic!("a node started alone with a node token and no credentials");
    };
    assert!(
        refused.stderr.contains("--node-token needs --credentials-file"),
        "{refused}"
    );
}

#[test]
fn a_control_plane_will_not_start_on_credentials_in_etcd_that_do_not_parse() {
    let etcd = Etcd::start();
    engram_tests::run_async(Duration::from_secs(60), put(&etcd, "ops sha256:xyz admin *\n"));
    let mut command = Command::new(binaries::engram_control());
    scrub_environment(&mut command);
    let mut child = command
        .args(["--listen", &format!("{}:0", next_loopback())])
        .args(["--etcd", &etcd.endpoint(), "--etcd-prefix", PREFIX])
        .args(["--credentials-etcd", "--node-token", NODES])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run engram-control");
    let deadline = Instant::now() + FOLLOW_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for engram-control") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("engram-control went on with credentials that do not parse");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped stderr"), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("etcd key {PREFIX}/credentials:1: `sha256:xyz`")),
        "{stderr}"
    );
}
