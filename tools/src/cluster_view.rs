//! `engram cluster …`: talks to engram-control's leader through [`engram_client::admin`],
//! and shows the cluster (with its control plane: [`crate::control_plane_view`]) as a
//! table or JSON; returns lost slots to service (`reclaim`); checks that one
//! control-plane process answers (`ping`).

use std::io::Write;
use std::time::{Duration, Instant};

use engram_client::admin::{
    Admin, AdminError, ClusterStatus, MigrationStatus, NodeStatus, ProcessRole, ReclaimRequest,
};
use engram_client::ClientTls;
use engram_proto::LOST_SHARD_INDEX;
use serde::Serialize;

use crate::cli::{format_slots, merge_ranges, ClusterCommand, SlotList};
use crate::control_plane_view::ControlPlaneView;
use crate::failure::Failure;

/// How often `rebalance`/`drain` look at the control plane while they wait.
const WAIT_POLL_MS: u64 = 200;
/// Longest `rebalance`/`drain` wait for the moves to finish.
const WAIT_MS_MAX: u64 = 600_000;

pub async fn run(
    command: ClusterCommand,
    credentials: &[u8],
    timeout: Duration,
    tls: Option<ClientTls>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let secured = |admin: Admin| match &tls {
        Some(tls) => admin.tls(tls.clone()),
        None => admin,
    };
    let admin = |control| secured(Admin::with_addresses(control).credentials(credentials).timeout(timeout));
    match command {
        ClusterCommand::Status { control, json } => show_status(&admin(control), json, out).await?,
        ClusterCommand::Ping { control } => {
            let started = Instant::now();
            secured(Admin::new(control).credentials(credentials).timeout(timeout))
                .ping()
                .await?;
            writeln!(out, "PONG {:.3} ms", started.elapsed().as_secs_f64() * 1_000.0)?;
        }
        ClusterCommand::Rebalance { control, no_wait } => {
            let admin = admin(control);
            let before = admin.status().await?.slots_moved_total;
            let slots_to_move = admin.rebalance().await?;
            report_started(&admin, (before, slots_to_move), no_wait, out).await?;
        }
        ClusterCommand::Drain { node, control, no_wait } => {
            let admin = admin(control);
            let before = admin.status().await?.slots_moved_total;
            let slots_to_move = admin.drain(node).await?;
            report_started(&admin, (before, slots_to_move), no_wait, out).await?;
        }
        ClusterCommand::Reclaim { slots, node, control } => {
            let request = ReclaimRequest {
                node_id: node.unwrap_or(0),
                slots: slots.map_or_else(Vec::new, |SlotList(slots)| slots),
            };
            let reclaimed = admin(control).reclaim(request).await?;
            writeln!(out, "{}", reclaimed_text(reclaimed.slots, reclaimed.epoch))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Asks every control address for the status (which tells what each is), then the
/// leader where it keeps the state. Without a leader, shows the control plane alone and
/// fails.
async fn show_status(admin: &Admin, json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let processes = admin.processes().await;
    let leader_status = processes.iter().find_map(|process| match &process.role {
        ProcessRole::Leader(status) => Some(status),
        _ => None,
    });
    let Some(status) = leader_status else {
        let control_plane = ControlPlaneView::new(&processes, None);
        match json {
            true => {
                let alone = serde_json::json!({ "control_plane": &control_plane });
                writeln!(out, "{}", serde_json::to_string_pretty(&alone)?)?;
            }
            false => out.write_all(control_plane.to_table().as_bytes())?,
        }
        out.flush()?;
        let attempts = control_plane.each_role();
        return Err(Failure::Admin(AdminError::NoLeader { attempts }));
    };
    let store = match admin.control_plane().await {
        Ok(plane) => Some(plane.store),
        // An engram-control older than the request answers it with an error.
        Err(AdminError::Server { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    let view = ClusterView::new(status, ControlPlaneView::new(&processes, store));
    match json {
        true => writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?,
        false => out.write_all(view.to_table().as_bytes())?,
    }
    Ok(())
}

/// What `cluster reclaim` reports: how many slots serve again, and that they hold nothing.
fn reclaimed_text(slots: u64, epoch: u64) -> String {
    if slots == 0 {
        format!("nothing reclaimed: no lost slot matched (map epoch {epoch})")
    } else {
        format!("reclaimed {slots} slots (map epoch {epoch}); they are empty")
    }
}

/// Reports the moves a rebalance or drain started and, unless told not to, waits until
/// `slots_moved_total` has grown past `before` by all of them.
async fn report_started(
    admin: &Admin,
    (before, slots_to_move): (u64, u64),
    no_wait: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    writeln!(out, "moving {slots_to_move} slots")?;
    if no_wait || slots_to_move == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
        let now = admin.status().await?;
        let moved = now.slots_moved_total.saturating_sub(before);
        if now.migrations.is_empty() && !now.last_error.is_empty() {
            return Err(Failure::Usage(format!("rebalance stopped: {}", now.last_error)));
        }
        if now.migrations.is_empty() && moved >= slots_to_move {
            writeln!(out, "done: epoch {}", now.map.epoch)?;
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::Usage(format!(
                "rebalance still running after {WAIT_MS_MAX} ms (wait_ms_max)"
            )));
        }
    }
}

/// What `engram cluster status` shows: the control plane's processes and store, the wire
/// status less its map (thousands of ranges at worst, which nobody reads), plus the map's
/// epoch and its lost slots as merged ranges, which the table and scripts read.
#[derive(Serialize)]
pub struct ClusterView<'a> {
    pub control_plane: ControlPlaneView,
    pub epoch: u64,
    pub nodes: &'a [NodeStatus],
    pub migrations: &'a [MigrationStatus],
    pub migrations_completed: u64,
    pub slots_moved_total: u64,
    pub bytes_moved_total: u64,
    pub migration_milliseconds_total: u64,
    pub last_error: &'a str,
    /// Slots no shard serves because their data is gone, as merged ranges.
    pub lost_ranges: Vec<SlotRangeView>,
    /// How many slots `lost_ranges` covers.
    pub slots_lost: u64,
    /// Backups each slot gets.
    pub replicas: u32,
    pub under_replicated_slots: u32,
    pub slots_filling: u32,
    pub failovers_total: u64,
}

/// Slots `start..=end`.
#[derive(Serialize)]
pub struct SlotRangeView {
    pub start: u32,
    pub end: u32,
}

impl<'a> ClusterView<'a> {
    pub fn new(status: &'a ClusterStatus, control_plane: ControlPlaneView) -> Self {
        let lost = lost_ranges(status);
        ClusterView {
            control_plane,
            epoch: status.map.epoch,
            nodes: &status.nodes,
            migrations: &status.migrations,
            migrations_completed: status.migrations_completed,
            slots_moved_total: status.slots_moved_total,
            bytes_moved_total: status.bytes_moved_total,
            migration_milliseconds_total: status.migration_milliseconds_total,
            last_error: &status.last_error,
            slots_lost: lost.iter().map(|range| u64::from(range.end - range.start) + 1).sum(),
            lost_ranges: lost,
            replicas: status.replicas,
            under_replicated_slots: status.under_replicated_slots,
            slots_filling: status.slots_filling,
            failovers_total: status.failovers_total,
        }
    }
}

/// The map's lost ranges, adjacent ones merged.
fn lost_ranges(status: &ClusterStatus) -> Vec<SlotRangeView> {
    let lost = status
        .map
        .ranges
        .iter()
        .filter(|range| range.shard_index == LOST_SHARD_INDEX);
    merge_ranges(lost.map(|range| (range.start, range.end)))
        .into_iter()
        .map(|(start, end)| SlotRangeView { start, end })
        .collect()
}

impl ClusterView<'_> {
    pub fn to_table(&self) -> String {
        let mut text = self.control_plane.to_table();
        text.push_str(&format!(
            "map epoch {}   migrations completed {}   slots moved {}\n",
            self.epoch, self.migrations_completed, self.slots_moved_total
        ));
        text.push_str(&format!(
            "replicas {}   under-replicated slots {}   slots filling {}   failovers {}\n",
            self.replicas, self.under_replicated_slots, self.slots_filling, self.failovers_total
        ));
        text.push_str(&format!(
            "{:>6} {:<22} {:<6} {:>5} {:>6} {:<10} {:>5} {:<22} {:>6} {:>7} {:>10} {:>12} {:>10}\n",
            "node",
            "address",
            "state",
            "inc",
            "lost",
            "zone",
            "shard",
            "shard address",
            "slots",
            "backups",
            "keys",
            "memory",
            "ops/s"
        ));
        for node in self.nodes {
            let state = match (node.alive, node.draining) {
                (false, _) => "dead",
                (true, true) => "drain",
                (true, false) => "up",
            };
            // A dash, so that the columns of a node without a zone still split on spaces.
            let zone = if node.zone.is_empty() { "-" } else { &node.zone };
            for shard in &node.shards {
                text.push_str(&format!(
                    "{:>6} {:<22} {:<6} {:>5} {:>6} {:<10} {:>5} {:<22} {:>6} {:>7} {:>10} {:>12} {:>10}\n",
                    node.node_id,
                    node.front_address,
                    state,
                    node.incarnation,
                    node.slots_lost,
                    zone,
                    shard.shard_id,
                    shard.address,
                    shard.slots,
                    shard.backup_slots,
                    shard.keys,
                    shard.memory_used_bytes,
                    shard.operations_per_second
                ));
            }
        }
        for migration in self.migrations {
            text.push_str(&format!(
                "migrating: #{} {} slots {} -> {}\n",
                migration.migration_id, migration.slots, migration.source, migration.target
            ));
        }
        if !self.lost_ranges.is_empty() {
            text.push_str(&self.lost_line());
        }
        if !self.last_error.is_empty() {
            text.push_str(&format!("last error: {}\n", self.last_error));
        }
        text
    }

    /// The lost slots, in the syntax `engram cluster reclaim` takes, and what they mean.
    fn lost_line(&self) -> String {
        let ranges = format_slots(self.lost_ranges.iter().map(|range| (range.start, range.end)));
        format!(
            "lost slots: {ranges} ({} slots): their data is gone; they fail with SlotLost until \
             `engram cluster reclaim` returns them, empty\n",
            self.slots_lost
        )
    }
}

#[cfg(test)]
mod tests {
    use engram_proto::{ShardAddress, ShardStatus, SlotMap, SlotRange};

    use super::*;

    /// Node 1 alive at incarnation 4; node 2 dead, its slots 8192-16383 lost (in two
    /// adjacent ranges, as a map may hold them) and slot 100 too.
    fn sample() -> ClusterStatus {
        let range = |start, end, shard_index| SlotRange {
            start,
            end,
            shard_index,
        };
        let node = |node_id, alive, incarnation, slots_lost, zone: &str| NodeStatus {
            node_id,
            front_address: format!("10.0.0.{node_id}:7400"),
            alive,
            draining: false,
            map_epoch: 12,
            shards: vec![ShardStatus {
                shard_id: 0,
                address: format!("10.0.0.{node_id}:7401"),
                slots: 0,
                backup_slots: 0,
                keys: 0,
                memory_used_bytes: 0,
                operations_total: 0,
                operations_per_second: 0,
            }],
            incarnation,
            slots_lost,
            zone: zone.into(),
        };
        ClusterStatus {
            map: SlotMap {
                epoch: 12,
                shards: vec![ShardAddress {
                    node_id: 1,
                    shard_id: 0,
                    address: "10.0.0.1:7401".into(),
                    incarnation: 0,
                }],
                ranges: vec![
                    range(0, 99, 0),
                    range(100, 100, LOST_SHARD_INDEX),
                    range(101, 8191, 0),
                    range(8192, 9999, LOST_SHARD_INDEX),
                    range(10000, 16383, LOST_SHARD_INDEX),
                ],
                version_floor: 0,
                backups: Vec::new(),
            },
            nodes: vec![node(1, true, 4, 0, "rack-a"), node(2, false, 2, 8193, "")],
            migrations: Vec::new(),
            migrations_completed: 0,
            slots_moved_total: 0,
            bytes_moved_total: 0,
            migration_milliseconds_total: 0,
            last_error: String::new(),
            replicas: 1,
            under_replicated_slots: 8193,
            slots_filling: 0,
            failovers_total: 3,
        }
    }

    #[test]
    fn the_table_shows_incarnations_lost_counts_zones_and_the_lost_ranges() {
        let table = ClusterView::new(&sample(), crate::control_plane_view::tests::sample()).to_table();
        assert!(table.starts_with("control plane: leader 10.0.0.1:7300;"), "{table}");
        let header = table.lines().find(|line| line.contains("shard address")).unwrap();
        assert!(
            header.contains("inc") && header.contains("lost") && header.contains("zone"),
            "{table}"
        );
        let dead = table.lines().find(|line| line.contains("10.0.0.2:7400")).unwrap();
        let columns: Vec<&str> = dead.split_whitespace().collect();
        assert_eq!(
            &columns[..7],
            ["2", "10.0.0.2:7400", "dead", "2", "8193", "-", "0"],
            "{table}"
        );
        let live = table.lines().find(|line| line.contains("10.0.0.1:7400")).unwrap();
        let columns: Vec<&str> = live.split_whitespace().collect();
        assert_eq!(
            &columns[..7],
            ["1", "10.0.0.1:7400", "up", "4", "0", "rack-a", "0"],
            "{table}"
        );
        assert!(table.contains("lost slots: 100,8192-16383 (8193 slots)"), "{table}");
        assert!(
            table.contains("replicas 1   under-replicated slots 8193   slots filling 0   failovers 3"),
            "{table}"
        );
        assert!(table.contains("engram cluster reclaim"), "{table}");
        let mut healthy = sample();
        healthy.map.ranges = vec![SlotRange {
            start: 0,
            end: 16383,
            shard_index: 0,
        }];
        assert!(!ClusterView::new(&healthy, crate::control_plane_view::tests::sample())
            .to_table()
            .contains("lost slots"));
    }

    #[test]
    fn the_json_view_has_the_same_fields() {
        let mut status = sample();
        status.migrations.push(MigrationStatus {
            migration_id: 5,
            source: "10.0.0.1:7401".into(),
            target: "10.0.0.3:7401".into(),
            slots: 64,
        });
        let json = serde_json::to_value(ClusterView::new(&status, crate::control_plane_view::tests::sample())).unwrap();
        assert_eq!(json["slots_lost"], 8193);
        assert_eq!(
            json["lost_ranges"],
            serde_json::json!([{"start": 100, "end": 100}, {"start": 8192, "end": 16383}])
        );
        assert_eq!(json["epoch"], 12);
        assert_eq!(json["nodes"][0]["address"], "10.0.0.1:7400");
        assert_eq!(json["nodes"][0]["incarnation"], 4);
        assert_eq!(json["nodes"][1]["slots_lost"], 8193);
        assert_eq!(json["nodes"][0]["zone"], "rack-a");
        assert_eq!(json["nodes"][1]["zone"], "");
        assert_eq!(json["migrations"][0]["slots"], 64);
        // The names scripts and the docker test read, and nothing of the map beyond its epoch.
        let names = [
            (
                &json,
                &[
                    "control_plane",
                    "epoch",
                    "nodes",
                    "migrations",
                    "migrations_completed",
                    "slots_moved_total",
                    "bytes_moved_total",
                    "migration_milliseconds_total",
                    "last_error",
                    "lost_ranges",
                    "slots_lost",
                    "replicas",
                    "under_replicated_slots",
                    "slots_filling",
                    "failovers_total",
                ][..],
            ),
            (
                &json["nodes"][0],
                &[
                    "node_id",
                    "address",
                    "alive",
                    "draining",
                    "map_epoch",
                    "incarnation",
                    "slots_lost",
                    "zone",
                    "shards",
                ],
            ),
            (
                &json["nodes"][0]["shards"][0],
                &[
                    "shard_id",
                    "address",
                    "slots",
                    "backup_slots",
                    "keys",
                    "memory_used_bytes",
                    "operations_total",
                    "operations_per_second",
                ],
            ),
            (&json["migrations"][0], &["migration_id", "source", "target", "slots"]),
        ];
        for (object, expected) in names {
            let mut expected = expected.to_vec();
            expected.sort_unstable();
            let mut found: Vec<&str> = object
                .as_object()
                .expect("an object")
                .keys()
                .map(String::as_str)
                .collect();
            found.sort_unstable();
            assert_eq!(found, expected, "{object}");
        }
    }

    #[test]
    fn reclaim_reports_how_many_slots_came_back_empty() {
        assert_eq!(
            reclaimed_text(5461, 12),
            "reclaimed 5461 slots (map epoch 12); they are empty"
        );
        assert!(reclaimed_text(0, 12).starts_with("nothing reclaimed"));
    }
}
