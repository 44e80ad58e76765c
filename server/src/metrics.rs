//! Prometheus metrics of engramd, served on `--metrics-port` by
//! [`engram_metrics_http`].
//!
//! Counting sits on the request path of a microsecond server, so each shard resolves its
//! label children once ([`ShardMetrics`]) and counts through a table indexed by object
//! kind and result: no label string is formatted or hashed per request, and each child is
//! written by one shard only, so its atomics are never contended. Gauges (memory, keys,
//! connections, slots, parked requests) are copied from the figures the shards publish
//! (`stats.rs`) when scraped, as [`ShardGauges`], so they cost nothing between scrapes.

use std::cell::{OnceCell, RefCell};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use crate::refusal::Refused;
use engram_metrics_http::{Access, Responder};
use engram_proto::{Command, ErrorCode, Response};
use prometheus::local::LocalHistogram;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::error::ServerError;
use crate::store::WaiterId;
use engram_proto::DataCommand;

/// Upper bounds of the request duration buckets: an answer from memory takes a few
/// microseconds, so the resolution is there, with a tail to catch stalls.
pub const REQUEST_DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.025,
    0.1,
    1.0,
];

/// The kind of object a command works on: the `object` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Bytes,
    Counter,
    Lock,
    Semaphore,
    Barrier,
    Latch,
    Future,
    Map,
    Queue,
    /// What any key answers (its kind, its expiry).
    Key,
    /// Commands on no object (ping, info, slot map).
    Other,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 11] = [
        ObjectKind::Bytes,
        ObjectKind::Counter,
        ObjectKind::Lock,
        ObjectKind::Semaphore,
        ObjectKind::Barrier,
        ObjectKind::Latch,
        ObjectKind::Future,
        ObjectKind::Map,
        ObjectKind::Queue,
        ObjectKind::Key,
        ObjectKind::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Bytes => "bytes",
            ObjectKind::Counter => "counter",
            ObjectKind::Lock => "lock",
            ObjectKind::Semaphore => "semaphore",
            ObjectKind::Barrier => "barrier",
            ObjectKind::Latch => "latch",
            ObjectKind::Future => "future",
            ObjectKind::Map => "map",
            ObjectKind::Queue => "queue",
            ObjectKind::Key => "key",
            ObjectKind::Other => "other",
        }
    }

    pub fn of(command: &Command) -> ObjectKind {
        match command {
            Command::Data(data) => ObjectKind::of_data(data),
            Command::Admin(_) => ObjectKind::Other,
        }
    }

    pub fn of_data(command: &DataCommand) -> ObjectKind {
        match command {
            DataCommand::Bytes(_) => ObjectKind::Bytes,
            DataCommand::Counter(_) => ObjectKind::Counter,
            DataCommand::Lock(_) => ObjectKind::Lock,
            DataCommand::Semaphore(_) => ObjectKind::Semaphore,
            DataCommand::Barrier(_) => ObjectKind::Barrier,
            DataCommand::Latch(_) => ObjectKind::Latch,
            DataCommand::Future(_) => ObjectKind::Future,
            DataCommand::Map(_) => ObjectKind::Map,
            DataCommand::Queue(_) => ObjectKind::Queue,
            DataCommand::Key(_) => ObjectKind::Key,
        }
    }
}

/// Results: `ok`, then one per error code in [`ErrorCode::ALL`] order, then `unknown`
/// for a code this build does not list.
const RESULT_COUNT: usize = 1 + ErrorCode::ALL.len() + 1;
const RESULT_OK: usize = 0;
const RESULT_UNKNOWN: usize = RESULT_COUNT - 1;
/// Error codes below this are looked up in a table; the protocol's codes are far below.
const ERROR_CODE_TABLE_SIZE: usize = 256;

/// Result index of each error code number, built at compile time so a request's result
/// costs one array read.
const RESULT_OF_ERROR_CODE: [u8; ERROR_CODE_TABLE_SIZE] = {
    let mut table = [RESULT_UNKNOWN as u8; ERROR_CODE_TABLE_SIZE];
    let mut index = 0;
    while index < ErrorCode::ALL.len() {
        let code = ErrorCode::ALL[index] as u16 as usize;
        if code < ERROR_CODE_TABLE_SIZE {
            table[code] = (index + 1) as u8;
        }
        index += 1;
    }
    table
};
const _: () = assert!(RESULT_COUNT <= u8::MAX as usize);

fn result_label(result: usize) -> &'static str {
    match result {
        RESULT_OK => "ok",
        RESULT_UNKNOWN => "unknown",
        error => ErrorCode::ALL[error - 1].name(),
    }
}

fn result_of(response: &Response) -> usize {
    match response {
        Response::Error(reply) => RESULT_OF_ERROR_CODE
            .get(usize::from(reply.code))
            .map_or(RESULT_UNKNOWN, |&result| usize::from(result)),
        _ => RESULT_OK,
    }
}

/// Directions and results of slot migrations, seen from this node: every combination is
/// a series from the start, so `rate()` sees the first migration.
pub const MIGRATION_DIRECTIONS: [&str; 2] = ["in", "out"];
pub const MIGRATION_RESULTS: [&str; 3] = ["committed", "failed", "aborted"];

/// The migrations family, every direction and result a series from the start.
fn migration_family() -> IntCounterVec {
    let family = IntCounterVec::new(
        Opts::new(
            "engram_migrations_total",
            "Slot migrations this node took part in, by direction (in, out) and result.",
        ),
        &["direction", "result"],
    )
    .expect("valid counter");
    for direction in MIGRATION_DIRECTIONS {
        for result in MIGRATION_RESULTS {
            family.with_label_values(&[direction, result]);
        }
    }
    family
}

/// The node's registry and metric families; shared by all shards and the scrape thread.
/// Each node has its own, and nothing is registered process-wide, so nodes that share a
/// process (in-process tests) count apart.
pub struct NodeMetrics {
    registry: Registry,
    operations: IntCounterVec,
    migrations: IntCounterVec,
    request_duration: HistogramVec,
    memory_used: IntGaugeVec,
    memory_limit: IntGaugeVec,
    keys: IntGaugeVec,
    connections: IntGaugeVec,
    slots_owned: IntGaugeVec,
    parked_requests: IntGaugeVec,
    held_answers: IntGaugeVec,
    replica_streams: IntGaugeVec,
    replication_lag: IntGaugeVec,
    connections_refused: IntCounterVec,
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let registry = Registry::new();
        let shard_gauge = |name: &str, help: &str| {
            let family = IntGaugeVec::new(Opts::new(name, help), &["shard"]).expect("valid gauge");
            registry.register(Box::new(family.clone())).expect("unique metric name");
            family
        };
        let memory_used = shard_gauge("engram_memory_used_bytes", "Memory a shard's data uses.");
        let memory_limit = shard_gauge(
            "engram_memory_limit_bytes",
            "Memory a shard's data may use (0: unlimited); over it, writes get OutOfMemory.",
        );
        let keys = shard_gauge("engram_keys", "Keys a shard holds, coordination objects included.");
        let connections = shard_gauge("engram_connections", "Client connections a shard serves.");
        let slots_owned = shard_gauge("engram_slots_owned", "Slots of the slot map a shard owns.");
        let parked_requests = shard_gauge(
            "engram_parked_requests",
            "Requests waiting at a shard (lock and semaphore acquires, barrier and latch waits, pops).",
        );
        let held_answers = shard_gauge(
            "engram_replication_held_answers",
            "Answers a primary shard holds until its backups applied what decided them.",
        );
        let replica_streams = shard_gauge(
            "engram_replication_streams",
            "Backup shards a primary shard streams its slots' changes to.",
        );
        let replication_lag = shard_gauge(
            "engram_replication_lag_batches",
            "Batches a primary shard sent to its slowest backup that are not applied there yet.",
        );
        let operations = IntCounterVec::new(
            Opts::new(
                "engram_operations_total",
                "Requests answered, by shard, object kind and result (ok or the error code's name).",
            ),
            &["shard", "object", "result"],
        )
        .expect("valid counter");
        registry
            .register(Box::new(operations.clone()))
            .expect("unique metric name");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "engram_request_duration_seconds",
                "Time from the socket read that brought a keyed request to the end of handling that read (the request's answer is ready by then), for requests that did not wait.",
            )
            .buckets(REQUEST_DURATION_BUCKETS_SECONDS.to_vec()),
            &["shard"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("unique metric name");
        let migrations = migration_family();
        registry
            .register(Box::new(migrations.clone()))
            .expect("unique metric name");
        let build_info = IntGaugeVec::new(
            Opts::new("engram_build_info", "Always 1; the labels tell the engramd build."),
            &["version"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric name");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "engram_connections_refused_total",
                "Connections turned away before they were served, by shard and reason \
                 (max_connections, handshake_timeout, bad_hello, unauthorized, forbidden, revoked, \
                 plain_at_tls_port, tls_handshake).",
            ),
            &["shard", "reason"],
        )
        .expect("valid counter");
        registry
            .register(Box::new(connections_refused.clone()))
            .expect("unique metric name");
        NodeMetrics {
            registry,
            operations,
            migrations,
            request_duration,
            memory_used,
            memory_limit,
            keys,
            connections,
            slots_owned,
            parked_requests,
            held_answers,
            replica_streams,
            replication_lag,
            connections_refused,
        }
    }

    /// Counts a finished slot migration: `direction` one of [`MIGRATION_DIRECTIONS`],
    /// `result` one of [`MIGRATION_RESULTS`]. Migrations are rare, so resolving the labels
    /// here costs nothing that matters.
    pub fn record_migration(&self, direction: &str, result: &str) {
        debug_assert!(
            MIGRATION_DIRECTIONS.contains(&direction),
            "unknown direction {direction}"
        );
        debug_assert!(MIGRATION_RESULTS.contains(&result), "unknown result {result}");
        self.migrations.with_label_values(&[direction, result]).inc();
    }

    /// The counting handles of one shard; called once, on the shard's thread.
    pub fn shard(&self, shard_id: usize) -> ShardMetrics {
        let shard = shard_id.to_string();
        let operations: Box<[OnceCell<IntCounter>]> = (0..ObjectKind::ALL.len() * RESULT_COUNT)
            .map(|_| OnceCell::new())
            .collect();
        // Successes exist from the start for every object, so dashboards see zero rather
        // than nothing; error series appear with their first occurrence.
        for object in ObjectKind::ALL {
            let counter = self
                .operations
                .with_label_values(&[shard.as_str(), object.label(), result_label(RESULT_OK)]);
            let _ = operations[operation_index(object, RESULT_OK)].set(counter);
        }
        // Zero from the start, so a dashboard sees no refusals rather than nothing.
        for reason in Refused::ALL {
            self.connections_refused
                .with_label_values(&[shard.as_str(), reason.label()]);
        }
        ShardMetrics {
            shard,
            connections_refused: self.connections_refused.clone(),
            operations_family: self.operations.clone(),
            operations,
            request_duration: self.request_duration.with_label_values(&[shard_id.to_string()]).local(),
            parked: RefCell::default(),
        }
    }

    /// The text exposition of every family, gauges refreshed from each shard's figures
    /// (in shard order).
    pub fn render(&self, shards: impl IntoIterator<Item = ShardGauges>) -> Vec<u8> {
        for (shard_id, figures) in shards.into_iter().enumerate() {
            let shard = [shard_id.to_string()];
            let gauge = |family: &IntGaugeVec, value: u64| {
                family
                    .with_label_values(&shard)
                    .set(i64::try_from(value).unwrap_or(i64::MAX))
            };
            gauge(&self.memory_used, figures.memory_used_bytes);
            // u64::MAX is the store's "unlimited"; 0 says so, as INFO does.
            let limit = figures.memory_limit_bytes;
            gauge(&self.memory_limit, if limit == u64::MAX { 0 } else { limit });
            gauge(&self.keys, figures.keys);
            gauge(&self.connections, figures.connections);
            gauge(&self.slots_owned, figures.slots_owned);
            gauge(&self.parked_requests, figures.parked_requests);
            gauge(&self.held_answers, figures.held_answers);
            gauge(&self.replica_streams, figures.replica_streams);
            gauge(&self.replication_lag, figures.replication_lag_batches);
        }
        engram_metrics_http::render_registry(&self.registry)
    }
}

/// One shard's gauges, as a scrape reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardGauges {
    pub memory_used_bytes: u64,
    /// `u64::MAX`: unlimited.
    pub memory_limit_bytes: u64,
    pub keys: u64,
    pub connections: u64,
    pub slots_owned: u64,
    pub parked_requests: u64,
    pub held_answers: u64,
    pub replica_streams: u64,
    pub replication_lag_batches: u64,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics::new()
    }
}

fn operation_index(object: ObjectKind, result: usize) -> usize {
    object as usize * RESULT_COUNT + result
}

/// One shard's counting handles. Not `Sync`: only its shard's thread counts through it.
pub struct ShardMetrics {
    shard: String,
    connections_refused: IntCounterVec,
    operations_family: IntCounterVec,
    /// `[object][result]`, flattened; a child is resolved on its first use.
    operations: Box<[OnceCell<IntCounter>]>,
    request_duration: LocalHistogram,
    /// The object kind of each parked request, for counting its answer when it comes.
    parked: RefCell<foldhash::HashMap<WaiterId, ObjectKind>>,
}

impl ShardMetrics {
    fn count(&self, object: ObjectKind, response: &Response) {
        let result = result_of(response);
        self.operations[operation_index(object, result)]
            .get_or_init(|| {
                self.operations_family
                    .with_label_values(&[self.shard.as_str(), object.label(), result_label(result)])
            })
            .inc();
    }

    /// A request answered without waiting at the shard. Its duration is recorded by
    /// [`ShardMetrics::answered_within`] for the whole read it arrived in.
    #[inline]
    pub fn answered(&self, object: ObjectKind, response: &Response) {
        self.count(object, response);
    }

    /// `count` keyed requests that arrived in one socket read were answered within
    /// `elapsed` of that read. Their answers are written when the read is handled (or
    /// earlier, when they fill `ANSWER_BATCH_BYTES_MAX`), so this bounds each one's time
    /// at the shard, queueing behind the read's earlier requests included; and timing a
    /// read instead of each request keeps two clock reads per request off a pipelined
    /// batch.
    pub fn answered_within(&self, count: usize, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // Observed locally and flushed once: four atomic updates for the read instead
        // of four per request, and the figures still current when the read is done.
        for _ in 0..count {
            self.request_duration.observe(seconds);
        }
        self.request_duration.flush();
    }

    /// A request parked; its answer is counted by [`ShardMetrics::completed`]. Its wait
    /// is the client's choice, so it stays out of the duration histogram.
    pub fn parked(&self, waiter: WaiterId, object: ObjectKind) {
        self.parked.borrow_mut().insert(waiter, object);
    }

    /// The answer of a parked request.
    pub fn completed(&self, waiter: WaiterId, response: &Response) {
        let object = self.parked.borrow_mut().remove(&waiter).unwrap_or(ObjectKind::Other);
        self.count(object, response);
    }

    /// A connection turned away; rare, so its labels are resolved here.
    pub fn refused(&self, reason: Refused) {
        self.connections_refused
            .with_label_values(&[self.shard.as_str(), reason.label()])
            .inc();
    }

    /// A parked request withdrawn unanswered (its connection closed).
    pub fn withdrawn(&self, waiter: WaiterId) {
        self.parked.borrow_mut().remove(&waiter);
    }
}

/// Serves `/metrics` on `listener` from a thread of its own, each scrape answered with
/// what `render` gives, until the returned responder is stopped; with the address served.
pub fn serve_http(
    listener: StdListener,
    render: impl Fn() -> Vec<u8> + Send + 'static,
    access: Access,
) -> Result<(SocketAddr, Responder), ServerError> {
    let unknown_address = SocketAddr::from(([0, 0, 0, 0], 0));
    let address = listener.local_addr().map_err(|source| ServerError::Bind {
        address: unknown_address,
        source,
    })?;
    let bind_error = |source| ServerError::Bind { address, source };
    // The responder's thread blocks in accept; a listener bound non-blocking would make
    // it retry on a timer instead.
    listener.set_nonblocking(false).map_err(bind_error)?;
    let responder = engram_metrics_http::spawn(listener, render, access).map_err(bind_error)?;
    Ok((address, responder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_proto::{AdminCommand, ErrorReply};
    use engram_proto::{BarrierCommand, CounterCommand, KeyCommand, MapCommand};

    #[test]
    fn every_error_code_has_its_own_result() {
        for (index, code) in ErrorCode::ALL.into_iter().enumerate() {
            let response = Response::Error(ErrorReply {
                code: code.as_u16(),
                message: String::new(),
                map_epoch: 0,
            });
            assert_eq!(result_of(&response), index + 1);
            assert_eq!(result_label(result_of(&response)), code.name());
        }
        let unknown = Response::Error(ErrorReply {
            code: 9_999,
            message: String::new(),
            map_epoch: 0,
        });
        assert_eq!(result_label(result_of(&unknown)), "unknown");
        assert_eq!(result_label(result_of(&Response::Pong)), "ok");
    }

    /// A command counts under its object's label, whichever of the object's commands it
    /// is (commands added later are not left under "other").
    #[test]
    fn every_command_counts_under_its_object() {
        let put = Command::from(MapCommand::Put {
            key: b"m".to_vec(),
            field: b"f".to_vec(),
            value: b"v".to_vec(),
        });
        assert_eq!(ObjectKind::of(&put), ObjectKind::Map);
        let ttl = Command::from(KeyCommand::Ttl { key: b"k".to_vec() });
        assert_eq!(ObjectKind::of(&ttl).label(), "key");
        assert_eq!(
            ObjectKind::of(&Command::from(engram_proto::AdminCommand::Ping)),
            ObjectKind::Other
        );
    }

    #[test]
    fn counts_reach_the_exposition() {
        let metrics = NodeMetrics::new();
        let shard = metrics.shard(3);
        let add = Command::from(CounterCommand::Add {
            key: b"jobs".to_vec(),
            delta: 1,
        });
        shard.answered(ObjectKind::of(&add), &Response::Counter { value: 1 });
        shard.answered_within(1, Duration::from_micros(3));
        // A read of three requests: each is observed, and the read's flush publishes them.
        shard.answered_within(3, Duration::from_micros(20));
        shard.answered(
            ObjectKind::of(&add),
            &Response::Error(ErrorReply {
                code: ErrorCode::Overflow.as_u16(),
                message: String::new(),
                map_epoch: 0,
            }),
        );
        shard.parked(
            7,
            ObjectKind::of(&Command::from(BarrierCommand::Wait {
                key: b"phase".to_vec(),
                parties: 2,
                timeout_ms: 10,
            })),
        );
        shard.completed(
            7,
            &Response::BarrierPassed {
                generation: 0,
                arrival_index: 0,
            },
        );
        metrics.record_migration("out", "committed");
        let text = String::from_utf8(metrics.registry_text()).unwrap();
        for expected in [
            "engram_operations_total{object=\"counter\",result=\"ok\",shard=\"3\"} 1\n",
            "engram_operations_total{object=\"counter\",result=\"Overflow\",shard=\"3\"} 1\n",
            "engram_operations_total{object=\"barrier\",result=\"ok\",shard=\"3\"} 1\n",
            "engram_operations_total{object=\"lock\",result=\"ok\",shard=\"3\"} 0\n",
            "engram_request_duration_seconds_count{shard=\"3\"} 4\n",
            "engram_request_duration_seconds_bucket{shard=\"3\",le=\"0.000005\"} 1\n",
            "engram_request_duration_seconds_bucket{shard=\"3\",le=\"0.00001\"} 1\n",
            "engram_request_duration_seconds_bucket{shard=\"3\",le=\"0.000025\"} 4\n",
            "engram_migrations_total{direction=\"in\",result=\"aborted\"} 0\n",
            "engram_build_info{version=\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn nodes_in_one_process_count_apart() {
        let (first, second) = (NodeMetrics::new(), NodeMetrics::new());
        first.record_migration("in", "committed");
        first
            .shard(0)
            .answered(ObjectKind::of(&Command::from(AdminCommand::Ping)), &Response::Pong);
        let first_text = String::from_utf8(first.registry_text()).unwrap();
        let second_text = String::from_utf8(second.registry_text()).unwrap();
        for (text, count) in [(&first_text, 1), (&second_text, 0)] {
            let migrations = format!("engram_migrations_total{{direction=\"in\",result=\"committed\"}} {count}\n");
            assert!(text.contains(&migrations), "missing {migrations:?} in\n{text}");
        }
        let pinged = "engram_operations_total{object=\"other\",result=\"ok\",shard=\"0\"} 1\n";
        assert!(first_text.contains(pinged), "{first_text}");
        assert!(!second_text.contains(pinged), "{second_text}");
    }

    #[test]
    fn gauges_show_each_shards_figures_and_unlimited_as_zero() {
        let metrics = NodeMetrics::new();
        let first = ShardGauges {
            memory_used_bytes: 10,
            memory_limit_bytes: u64::MAX,
            keys: 2,
            connections: 1,
            slots_owned: 300,
            parked_requests: 4,
            held_answers: 5,
            replica_streams: 2,
            replication_lag_batches: 3,
        };
        let second = ShardGauges {
            memory_limit_bytes: 4_096,
            ..ShardGauges::default()
        };
        let text = String::from_utf8(metrics.render([first, second])).unwrap();
        for expected in [
            "engram_memory_used_bytes{shard=\"0\"} 10\n",
            "engram_memory_limit_bytes{shard=\"0\"} 0\n",
            "engram_memory_limit_bytes{shard=\"1\"} 4096\n",
            "engram_keys{shard=\"0\"} 2\n",
            "engram_connections{shard=\"0\"} 1\n",
            "engram_slots_owned{shard=\"0\"} 300\n",
            "engram_parked_requests{shard=\"0\"} 4\n",
            "engram_replication_held_answers{shard=\"0\"} 5\n",
            "engram_replication_streams{shard=\"0\"} 2\n",
            "engram_replication_lag_batches{shard=\"0\"} 3\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    impl NodeMetrics {
        fn registry_text(&self) -> Vec<u8> {
            engram_metrics_http::render_registry(&self.registry)
        }
    }
}
