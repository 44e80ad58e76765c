//! Several `engram-control --etcd` processes on one [`Etcd`]: starting them, asking each
//! what it is (leader, standby, unreachable), waiting until one leads and every other
//! names it, waiting until nodes beat to the leader, and reading what etcd holds (the
//! state now, and every state ever written, from etcd's history).

use std::time::{Duration, Instant};

use engram_client::admin::{AdminError, ClusterStatus};
use engram_control::membership::Membership;
use engram_control::state::Keys;

use crate::control::{cli_at, ControlPlane};
use crate::etcd::Etcd;
use crate::server::{free_port, next_loopback};

/// Longest an election may take: a lapsed lease (5 s) and a campaign, with room for a
/// loaded machine.
pub const ELECTION_LIMIT: Duration = Duration::from_secs(30);

/// What one control-plane process says when asked for the cluster's status.
pub enum Answer {
    Leads(Box<ClusterStatus>),
    Standby(Option<String>),
    Unreachable,
}

pub async fn ask(control: &ControlPlane) -> Answer {
    match control.admin().status().await {
        Ok(status) => Answer::Leads(Box::new(status)),
        Err(AdminError::NotLeader { leader, .. }) => Answer::Standby(leader),
        Err(_) => Answer::Unreachable,
    }
}

/// Waits until exactly one of `controls` leads and every other one names it as the
/// leader; returns the leader's index and status.
pub async fn settled(controls: &[&ControlPlane]) -> (usize, ClusterStatus) {
    let deadline = Instant::now() + ELECTION_LIMIT;
    loop {
        let mut leaders = Vec::new();
        let mut named = Vec::new();
        for (index, control) in controls.iter().enumerate() {
            match ask(control).await {
                Answer::Leads(status) => leaders.push((index, *status)),
                Answer::Standby(leader) => named.push(leader),
                Answer::Unreachable => {}
            }
        }
        if leaders.len() == 1 && named.len() == controls.len() - 1 {
            let (index, status) = leaders.pop().expect("one leader");
            let address = controls[index].address();
            if named.iter().all(|leader| leader.as_deref() == Some(address)) {
                return (index, status);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no single leader named by every standby within {ELECTION_LIMIT:?} ({} lead)",
            leaders.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until one of `controls` answers as the leader (however the others answer);
/// returns its index and status. Polls often: what it waits for may be timed.
pub async fn first_leader(controls: &[&ControlPlane]) -> (usize, ClusterStatus) {
    let deadline = Instant::now() + ELECTION_LIMIT;
    loop {
        for (index, control) in controls.iter().enumerate() {
            if let Answer::Leads(status) = ask(control).await {
                return (index, *status);
            }
        }
        assert!(
            Instant::now() < deadline,
            "none of {} processes led within {ELECTION_LIMIT:?}",
            controls.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every member as (node id, front address, incarnation).
pub fn members_of(status: &ClusterStatus) -> Vec<(u64, String, u64)> {
    status
        .nodes
        .iter()
        .map(|node| (node.node_id, node.front_address.clone(), node.incarnation))
        .collect()
}

/// `count` control processes on `etcd` under `prefix`, each on a loopback address of its
/// own.
pub fn start_controls(etcd: &Etcd, prefix: &str, count: usize) -> Vec<ControlPlane> {
    (0..count)
        .map(|_| ControlPlane::start_etcd(next_loopback(), &etcd.endpoint(), prefix, &[]))
        .collect()
}

/// As [`start_controls`], each serving metrics (see [`ControlPlane::metrics_address`]).
pub fn start_controls_with_metrics(etcd: &Etcd, prefix: &str, count: usize) -> Vec<ControlPlane> {
    (0..count)
        .map(|_| {
            let host = next_loopback();
            let port = free_port(host).to_string();
            ControlPlane::start_etcd(host, &etcd.endpoint(), prefix, &["--metrics-port", &port])
        })
        .collect()
}

/// Every address of `controls`, comma-separated, as `--control` takes them.
pub fn every_address(controls: &[ControlPlane]) -> String {
    controls.iter().map(ControlPlane::address).collect::<Vec<_>>().join(",")
}

/// `controls` but the one at `index`.
pub fn all_but(controls: &[ControlPlane], index: usize) -> Vec<&ControlPlane> {
    controls
        .iter()
        .enumerate()
        .filter(|(other, _)| *other != index)
        .map(|(_, control)| control)
        .collect()
}

/// Waits until `control` reports every node of `nodes` alive and holding the control
/// plane's map (the epoch a node reports comes from its heartbeats only, so this shows
/// they reach `control`); returns that status.
pub async fn beating_to(control: &ControlPlane, nodes: &[u64]) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = control.status().await;
        let current = |node_id: &u64| {
            status
                .nodes
                .iter()
                .any(|node| node.node_id == *node_id && node.alive && node.map_epoch == status.map.epoch)
        };
        if nodes.iter().all(current) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {nodes:?} never all beat to {} with epoch {}: {:?}",
            control.address(),
            status.map.epoch,
            status.nodes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `engram cluster <arguments> --control <control>`, insisting it succeeds.
pub async fn cli_ok(control: &str, arguments: &[&str]) -> String {
    let output = cli_at(control, arguments).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "engram cluster {arguments:?} --control {control} exited {:?}: {stdout}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn etcd_client(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd")
}

/// The state etcd holds under `prefix`, decoded.
pub async fn state_in_etcd(etcd: &Etcd, prefix: &str) -> Membership {
    let read = etcd_client(etcd)
        .await
        .get(Keys::under(prefix).state, None)
        .await
        .expect("read the state");
    let kv = read.kvs().first().expect("a state is stored");
    Membership::decode(kv.value()).expect("the stored state decodes")
}

/// Every state etcd ever accepted under `prefix`, oldest first, decoded: the state key's
/// history, read with a watch from revision 1 (nothing compacts the tests' etcd).
pub async fn states_written(etcd: &Etcd, prefix: &str) -> Vec<Membership> {
    let mut client = etcd_client(etcd).await;
    let key = Keys::under(prefix).state;
    let now = client
        .get(key.as_str(), None)
        .await
        .expect("read the state")
        .kvs()
        .first()
        .map_or(0, |kv| kv.mod_revision());
    let options = etcd_client::WatchOptions::new().with_start_revision(1);
    let mut stream = client
        .watch(key.as_str(), Some(options))
        .await
        .expect("watch the state");
    let mut states = Vec::new();
    let mut seen = 0;
    while seen < now {
        let message = tokio::time::timeout(crate::STEP_TIMEOUT, stream.message())
            .await
            .expect("etcd sends the state's history")
            .expect("the watch stream")
            .expect("the watch goes on");
        for event in message.events() {
            let kv = event.kv().expect("a put carries its value");
            seen = kv.mod_revision();
            states.push(Membership::decode(kv.value()).expect("every stored state decodes"));
        }
    }
    states
}
