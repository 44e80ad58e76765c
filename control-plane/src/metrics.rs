//! The control plane's Prometheus families. Counters live in a process-wide registry;
//! gauges (members, epoch, leadership) are read from the controller at scrape time.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

struct Families {
    registry: Registry,
    migrations: IntCounterVec,
    slots_moved: IntCounter,
    bytes_moved: IntCounter,
    members: IntGauge,
    map_epoch: IntGauge,
    slots_lost: IntGauge,
    under_replicated: IntGauge,
    slots_filling: IntGauge,
    failovers: IntGauge,
    is_leader: IntGauge,
    connections_refused: IntCounterVec,
}

/// Why a connection to the control plane's port was turned away: the `reason` label of
/// `engram_connections_refused_total`, as on a node (which adds a shard label).
pub const REFUSAL_REASONS: [&str; 8] = [
    "max_connections",
    "handshake_timeout",
    "bad_hello",
    "unauthorized",
    "forbidden",
    "revoked",
    "plain_at_tls_port",
    "tls_handshake",
];

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let registry = Registry::new();
        let connections_refused = counter_vec(
            &registry,
            "engram_connections_refused_total",
            "Connections turned away before they were served, by reason.",
            "reason",
        );
        // Zero from the start, so a dashboard sees no refusals rather than nothing.
        for reason in REFUSAL_REASONS {
            connections_refused.with_label_values(&[reason]);
        }
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("engram_build_info", "Build of this process; the value is always 1."),
                &["version", "process"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "engram-control"])
            .set(1);
        Families {
            migrations: counter_vec(
                &registry,
                "engram_migrations_total",
                "Migration steps the control plane ran, by result.",
                "result",
            ),
            slots_moved: counter(
                &registry,
                "engram_slots_moved_total",
                "Slots whose ownership moved between shards.",
            ),
            bytes_moved: counter(
                &registry,
                "engram_migrated_bytes_total",
                "Encoded state shipped by committed migrations.",
            ),
            members: gauge(
                &registry,
                "engram_cluster_members",
                "Nodes that are members of the cluster.",
            ),
            map_epoch: gauge(&registry, "engram_map_epoch", "Epoch of the control plane's slot map."),
            slots_lost: gauge(
                &registry,
                "engram_slots_lost",
                "Slots whose every copy is gone: they answer SlotLost until reclaimed.",
            ),
            under_replicated: gauge(
                &registry,
                "engram_slots_under_replicated",
                "Served slots with fewer backups in the map than the replicas setting.",
            ),
            slots_filling: gauge(
                &registry,
                "engram_slots_filling",
                "Slots being copied to a new backup right now.",
            ),
            // A gauge read from the persisted state, so it survives a change of leader;
            // it only ever grows, like a counter.
            failovers: gauge(
                &registry,
                "engram_failovers_total",
                "Slots whose backup was promoted because their owner died, since the cluster began.",
            ),
            // Per process, so that summing it over the control plane counts its leaders:
            // anything but 1 for longer than an election is worth an alert.
            is_leader: gauge(
                &registry,
                "engram_control_is_leader",
                "1 while this control-plane process leads, 0 while it stands by.",
            ),
            connections_refused,
            registry,
        }
    })
}

/// Registers `collector` in `registry` and hands it back. Registration only fails on a
/// duplicate or malformed name, which are fixed here.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("unique metric names");
    collector
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

/// Counts a connection turned away for `reason`, one of [`REFUSAL_REASONS`].
pub fn record_refused(reason: &str) {
    debug_assert!(REFUSAL_REASONS.contains(&reason), "unknown refusal reason {reason}");
    families().connections_refused.with_label_values(&[reason]).inc();
}

pub fn record_migration(result: &str, slots: u64, bytes: u64) {
    let families = families();
    families.migrations.with_label_values(&[result]).inc();
    families.slots_moved.inc_by(slots);
    families.bytes_moved.inc_by(bytes);
}

/// The gauges read from the controller at scrape time.
pub struct Gauges {
    pub members: usize,
    pub map_epoch: u64,
    pub slots_lost: usize,
    pub under_replicated_slots: u32,
    pub slots_filling: u32,
    pub failovers_total: u64,
    /// Always true for a process on a state file, the only one there is.
    pub leading: bool,
}

/// The exposition text, with the gauges set first.
pub fn render(gauges: Gauges) -> Vec<u8> {
    let families = families();
    families.members.set(gauges.members as i64);
    families.map_epoch.set(gauges.map_epoch as i64);
    families.slots_lost.set(gauges.slots_lost as i64);
    families.under_replicated.set(i64::from(gauges.under_replicated_slots));
    families.slots_filling.set(i64::from(gauges.slots_filling));
    families.failovers.set(gauges.failovers_total as i64);
    families.is_leader.set(i64::from(gauges.leading));
    engram_metrics_http::render_registry(&families.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(leading: bool) -> String {
        let gauges = Gauges {
            members: 3,
            map_epoch: 7,
            slots_lost: 0,
            under_replicated_slots: 0,
            slots_filling: 0,
            failovers_total: 0,
            leading,
        };
        String::from_utf8(render(gauges)).expect("the exposition is text")
    }

    /// A standby and a leader tell themselves apart in their own metrics, which is what
    /// the compose test and an alert on the sum over the control plane read.
    #[test]
    fn is_leader_follows_the_role_at_each_scrape() {
        assert!(rendered(true).lines().any(|line| line == "engram_control_is_leader 1"));
        assert!(rendered(false).lines().any(|line| line == "engram_control_is_leader 0"));
        assert!(rendered(false).lines().any(|line| line == "engram_map_epoch 7"));
    }
}
