//! A cluster that speaks TLS on every link, mutual TLS everywhere (one CA signs every
//! process's certificate and is every process's client CA): nodes join the control plane
//! and beat to it, a front port forwards to the other node, every write is replicated to
//! a backup, and a rebalance moves slots between nodes, all over TLS; an operator
//! without a certificate is turned away.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use engram_client::admin::Admin;
use engram_client::{Client, ClientTls};
use engram_tests::cluster::{node_slot_count, wait_until};
use engram_tests::control::{cli_at, ControlPlane};
use engram_tests::processes::Scratch;
use engram_tests::server::{describe, next_loopback};
use engram_tests::{EngramServer, ServerOptions};
use engram_tls::test_ca::TestCa;
use engram_tls::ServerTlsFiles;

const KEYS: usize = 200;
/// Bounds every wait for the cluster to settle (joins, a rebalance).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

fn node(ca: &TestCa, control: &str, bind: Ipv4Addr, name: &str) -> EngramServer {
    let issued = ca.issue(name, &[&bind.to_string()]);
    let files = ServerTlsFiles {
        cert: issued.cert,
        key: issued.key,
        client_ca: Some(ca.ca_path()),
    };
    EngramServer::start(
        ServerOptions::default()
            .cores(1)
            .bind(bind)
            .control(control)
            .tls(files)
            .tls_ca(ca.ca_path()),
    )
}

fn operator_tls(ca: &TestCa) -> ClientTls {
    let operator = ca.issue("operator", &["operator"]);
    ClientTls::with_identity(&ca.ca_path(), &operator.cert, &operator.key).unwrap()
}

fn control_plane(ca: &TestCa, scratch: &Path) -> ControlPlane {
    let host = next_loopback();
    let issued = ca.issue("control", &[&host.to_string()]);
    let path = |path: &Path| path.display().to_string();
    let (cert, key, ca_path) = (path(&issued.cert), path(&issued.key), path(&ca.ca_path()));
    ControlPlane::start_with(
        host,
        scratch.join("control"),
        &[
            "--replicas",
            "1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca_path,
            "--tls-client-ca",
            &ca_path,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_joins_forwards_replicates_and_rebalances_over_mutual_tls() {
    let scratch = Scratch::new("tls-cluster");
    let ca = TestCa::new(scratch.path(), "cluster");
    let control = control_plane(&ca, scratch.path());
    let admin = Admin::new(control.address())
        .tls(operator_tls(&ca))
        .timeout(Duration::from_secs(10));
    let first = node(&ca, control.address(), next_loopback(), "node-a");
    let second = node(&ca, control.address(), next_loopback(), "node-b");
    wait_until("two live members", SETTLE_LIMIT, async || {
        admin
            .status()
            .await
            .is_ok_and(|status| status.nodes.iter().filter(|node| node.alive).count() == 2)
    })
    .await;

    let function = ca.issue("function", &["function"]);
    let client_tls = ClientTls::with_identity(&ca.ca_path(), &function.cert, &function.key).unwrap();
    let connect = |node: &EngramServer, direct: bool| {
        Client::builder(format!("tls://{}", node.front()))
            .tls(client_tls.clone())
            .direct(direct)
            .timeout(Duration::from_secs(20))
            .connect()
    };
    // Front-only through the second node: every key the first node owns is forwarded.
    let through_second = connect(&second, false).await.unwrap();
    for index in 0..KEYS {
        through_second
            .counter(format!("tls-{index}").as_str())
            .add(index as i64 + 1)
            .await
            .unwrap();
    }

    let moved_before = admin.status().await.unwrap().slots_moved_total;
    admin.rebalance().await.unwrap();
    wait_until("a rebalance onto both nodes", SETTLE_LIMIT, async || {
        let Ok(status) = admin.status().await else { return false };
        status.slots_moved_total > moved_before
            && status.migrations.is_empty()
            && node_slot_count(&status, first.node_id()) > 0
            && node_slot_count(&status, second.node_id()) > 0
    })
    .await;

    let direct = connect(&first, true).await.unwrap();
    for index in 0..KEYS {
        let value = direct.counter(format!("tls-{index}").as_str()).get().await.unwrap();
        assert_eq!(value, index as i64 + 1, "counter tls-{index} after the rebalance");
    }
    let status = admin.status().await.unwrap();
    let backed_up = status.map.backups.iter().any(|range| !range.shard_indices.is_empty());
    assert!(backed_up, "no slot has a backup: {:?}", status.map.backups);

    // The CLI as an operator with a certificate, and without one.
    let ca_path = ca.ca_path().display().to_string();
    let operator = ca.issue("cli", &["cli"]);
    let (cert, key) = (operator.cert.display().to_string(), operator.key.display().to_string());
    let with_certificate = cli_at(
        control.address(),
        &["status", "--tls-ca", &ca_path, "--tls-cert", &cert, "--tls-key", &key],
    )
    .await;
    assert!(with_certificate.status.success(), "{}", describe(&with_certificate));
    let plain = cli_at(control.address(), &["status"]).await;
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("TLS"),
        "{}",
        describe(&plain)
    );
    let anonymous = Admin::new(control.address())
        .tls(ClientTls::trusting(&ca.ca_path()).unwrap())
        .timeout(Duration::from_secs(10));
    assert!(
        anonymous.status().await.is_err(),
        "an operator without a certificate was served"
    );
}
