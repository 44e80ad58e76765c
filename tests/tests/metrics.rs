//! Prometheus metrics: `engramd --metrics-port` serves every family in the text format,
//! and the operation counters move by exactly the operations a client did.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use engram_tests::server::next_loopback;
use engram_tests::{run_async, unique_key, EngramServer, ServerOptions, STEP_TIMEOUT};

const FAMILIES: [(&str, &str); 11] = [
    ("engram_operations_total", "counter"),
    ("engram_request_duration_seconds", "histogram"),
    ("engram_memory_used_bytes", "gauge"),
    ("engram_memory_limit_bytes", "gauge"),
    ("engram_keys", "gauge"),
    ("engram_connections", "gauge"),
    ("engram_slots_owned", "gauge"),
    ("engram_migrations_total", "counter"),
    ("engram_parked_requests", "gauge"),
    ("engram_build_info", "gauge"),
    ("engram_connections_refused_total", "counter"),
];
const COUNTER_ADDS: usize = 37;

/// A port free on `bind` right now. The address is this test's own loopback address, so
/// nothing else is likely to take the port before engramd binds it.
fn free_port(bind: Ipv4Addr) -> u16 {
    let listener = TcpListener::bind((bind, 0)).expect("bind a probe listener");
    listener.local_addr().expect("probe address").port()
}

/// `GET path` over plain TCP: (status line, head, body).
fn http_get(address: SocketAddr, path: &str) -> (String, String, String) {
    engram_tests::http_get(address, path, STEP_TIMEOUT)
}

/// One sample line: its family's metric name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Exposition {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn parse(text: &str) -> Exposition {
    let mut exposition = Exposition {
        help: BTreeMap::new(),
        types: BTreeMap::new(),
        samples: Vec::new(),
    };
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            exposition.help.insert(name.to_string(), help.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            exposition.types.insert(name.to_string(), kind.to_string());
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    (key.to_string(), value.trim_end_matches('"').to_string())
                })
                .collect();
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().unwrap_or_else(|_| panic!("numeric value in {line:?}")),
            };
            exposition.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    exposition
}

impl Exposition {
    /// Sum over shards of the samples named `name` whose labels include `wanted`.
    fn sum(&self, name: &str, wanted: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                wanted
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|sample| sample.value)
            .sum()
    }
}

fn scrape(address: SocketAddr) -> Exposition {
    let (status, head, body) = http_get(address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(&body)
}

#[test]
fn metrics_count_every_answered_operation() {
    let bind = next_loopback();
    let metrics_address = SocketAddr::from((bind, free_port(bind)));
    let server = EngramServer::start(
        ServerOptions::default()
            .cores(2)
            .bind(bind)
            .metrics_port(metrics_address.port()),
    );

    let before = scrape(metrics_address);
    for (family, kind) in FAMILIES {
        assert!(before.help.contains_key(family), "no HELP for {family}");
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "TYPE of {family}"
        );
        assert!(
            before.samples.iter().any(|sample| sample.name.starts_with(family)),
            "no sample of {family}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(before.sum("engram_build_info", &[("version", version)]), 1.0);
    let counter_ok = [("object", "counter"), ("result", "ok")];
    let adds_before = before.sum("engram_operations_total", &counter_ok);

    let counter_key = unique_key("metrics-counter");
    let bytes_key = unique_key("metrics-bytes");
    run_async(Duration::from_secs(60), async {
        let client = server.client().await;
        let counter = client.counter(counter_key.as_str());
        for _ in 0..COUNTER_ADDS {
            counter.add(2).await.expect("counter add");
        }
        client.bytes(bytes_key.as_str()).set("value").await.expect("bytes set");
        // A counter operation on a bytes key: counted under the counter object with the
        // error's name.
        let wrong = client.counter(bytes_key.as_str()).add(1).await;
        assert!(wrong.is_err(), "adding to a bytes key must fail");
    });

    let after = scrape(metrics_address);
    assert_eq!(
        after.sum("engram_operations_total", &counter_ok) - adds_before,
        COUNTER_ADDS as f64,
        "counter operations counted"
    );
    assert_eq!(
        after.sum(
            "engram_operations_total",
            &[("object", "counter"), ("result", "WrongType")]
        ),
        1.0
    );
    assert!(after.sum("engram_operations_total", &[("object", "bytes"), ("result", "ok")]) >= 1.0);
    assert!(after.sum("engram_request_duration_seconds_count", &[]) >= (COUNTER_ADDS + 2) as f64);
    assert!(after.sum("engram_keys", &[]) >= 2.0);
    assert!(after.sum("engram_memory_used_bytes", &[]) > 0.0);
    assert_eq!(after.sum("engram_parked_requests", &[]), 0.0);
    for shard in ["0", "1"] {
        assert_eq!(
            after
                .samples
                .iter()
                .filter(|sample| sample.name == "engram_keys" && sample.labels["shard"] == shard)
                .count(),
            1,
            "one engram_keys sample for shard {shard}"
        );
    }

    let (status, _, _) = http_get(metrics_address, "/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let mut garbage = TcpStream::connect(metrics_address).unwrap();
    garbage.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    drop(garbage);
    scrape(metrics_address);
}

#[test]
fn metrics_are_off_by_default() {
    let bind = next_loopback();
    let port = free_port(bind);
    let _server = EngramServer::start(ServerOptions::default().cores(1).bind(bind));
    assert!(
        TcpStream::connect((bind, port)).is_err(),
        "nothing listens without --metrics-port"
    );
}
