//! Per-task statistics (an HDR histogram each, plus one per reported operation of the
//! lock and barrier workloads, merged only at the end, so the hot path shares nothing),
//! the summary of a run, and its JSON and human renderings.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::bench::workload::Operation;

/// Highest latency the histogram tracks; slower requests are recorded as this.
pub const LATENCY_NANOSECONDS_MAX: u64 = 60 * 1_000_000_000;
/// Precision of the histogram: 3 digits keeps every percentile within 0.1%.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
const NANOSECONDS_PER_MICROSECOND: f64 = 1_000.0;

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NANOSECONDS_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let nanoseconds = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanoseconds.max(1));
}

/// What one load task saw. Latencies are in nanoseconds.
#[derive(Debug)]
pub struct LaneStats {
    pub histogram: Histogram<u64>,
    /// Completed requests, errors included.
    pub requests: u64,
    pub errors: u64,
    /// GETs of a key that did not exist (successes).
    pub misses: u64,
    /// The first error's text, to say what went wrong without allocating per error.
    pub first_error: Option<String>,
    /// The operations reported one by one (lock and barrier workloads); their requests
    /// are also in the figures above.
    pub operations: Vec<OperationStats>,
}

/// One reported operation of a task. Latencies are in nanoseconds.
#[derive(Debug)]
pub struct OperationStats {
    pub operation: Operation,
    pub histogram: Histogram<u64>,
    /// Completed operations, errors included.
    pub requests: u64,
    pub errors: u64,
}

impl OperationStats {
    fn new(operation: Operation) -> OperationStats {
        OperationStats {
            operation,
            histogram: latency_histogram(),
            requests: 0,
            errors: 0,
        }
    }
}

impl Default for LaneStats {
    fn default() -> Self {
        LaneStats {
            histogram: latency_histogram(),
            requests: 0,
            errors: 0,
            misses: 0,
            first_error: None,
            operations: Vec::new(),
        }
    }
}

impl LaneStats {
    /// Statistics that also keep a histogram per operation of `operations`.
    pub fn reporting(operations: &[Operation]) -> LaneStats {
        LaneStats {
            operations: operations.iter().copied().map(OperationStats::new).collect(),
            ..LaneStats::default()
        }
    }

    /// A successful request. Only successes enter the histogram: an error reply is a
    /// different (usually much shorter) path and would flatter the percentiles.
    pub fn record_success(&mut self, latency: Duration, missed: bool) {
        self.requests += 1;
        self.misses += u64::from(missed);
        record_latency(&mut self.histogram, latency);
    }

    /// A successful `operation`: in the overall figures and in its own, if reported.
    pub fn record_operation_success(&mut self, operation: Operation, latency: Duration) {
        self.record_success(latency, false);
        if let Some(reported) = self.operation_mut(operation) {
            reported.requests += 1;
            record_latency(&mut reported.histogram, latency);
        }
    }

    /// A failed `operation`: in the overall figures and in its own, if reported.
    pub fn record_operation_error(&mut self, operation: Operation, describe: impl FnOnce() -> String) {
        self.record_error(describe);
        if let Some(reported) = self.operation_mut(operation) {
            reported.requests += 1;
            reported.errors += 1;
        }
    }

    fn operation_mut(&mut self, operation: Operation) -> Option<&mut OperationStats> {
        self.operations
            .iter_mut()
            .find(|reported| reported.operation == operation)
    }

    /// A request answered with an error; `describe` runs only for the first one.
    pub fn record_error(&mut self, describe: impl FnOnce() -> String) {
        self.requests += 1;
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(describe());
        }
    }

    pub fn merge(&mut self, other: &LaneStats) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds always merge");
        self.requests += other.requests;
        self.errors += other.errors;
        self.misses += other.misses;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        for theirs in &other.operations {
            if self.operation_mut(theirs.operation).is_none() {
                self.operations.push(OperationStats::new(theirs.operation));
            }
            let ours = self.operation_mut(theirs.operation).expect("just added");
            ours.histogram
                .add(&theirs.histogram)
                .expect("histograms with the same bounds always merge");
            ours.requests += theirs.requests;
            ours.errors += theirs.errors;
        }
    }

    /// The figures of each reported operation, by name, for [`Summary::operations`].
    pub fn operation_summaries(&self) -> BTreeMap<String, OperationSummary> {
        self.operations
            .iter()
            .map(|reported| {
                let summary = OperationSummary {
                    count: reported.requests,
                    errors: reported.errors,
                    latency_us: Percentiles::of(&reported.histogram),
                };
                (reported.operation.name().to_owned(), summary)
            })
            .collect()
    }
}

/// One operation's figures in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationSummary {
    /// Completed operations, errors included.
    pub count: u64,
    pub errors: u64,
    /// Of the successful operations.
    pub latency_us: Percentiles,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let at = |quantile: f64| microseconds(histogram.value_at_quantile(quantile));
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            p9999: at(0.9999),
            max: microseconds(histogram.max()),
        }
    }
}

fn microseconds(nanoseconds: u64) -> f64 {
    nanoseconds as f64 / NANOSECONDS_PER_MICROSECOND
}

/// The result of a run, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub workload: String,
    /// SET:GET, for the mixed workload only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<String>,
    pub connections: usize,
    pub pipeline: usize,
    pub threads: usize,
    pub keys: u64,
    pub key_pattern: String,
    pub value_bytes: usize,
    /// The open-loop rate asked for (for lock: acquires per second); `None` for a
    /// closed loop.
    pub rate: Option<f64>,
    pub ops_per_sec: f64,
    pub latency_us: Percentiles,
    pub requests: u64,
    pub errors: u64,
    pub misses: u64,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Each reported operation (`lock_acquire` and `lock_release`, or `barrier_wait`),
    /// whose requests are also in the overall figures above.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, OperationSummary>,
}

impl Summary {
    pub fn write_human(&self, out: &mut impl Write) -> io::Result<()> {
        let mut shape = format!(
            "{} {}, {} connections, pipeline {}",
            self.target, self.workload, self.connections, self.pipeline
        );
        match self.workload.as_str() {
            "lock" => shape.push_str(&format!(", {} locks ({})", self.keys, self.key_pattern)),
            "barrier" => shape.push_str(&format!(", {} parties", self.connections * self.pipeline)),
            _ => shape.push_str(&format!(
                ", {} keys ({}), {}-byte values",
                self.keys, self.key_pattern, self.value_bytes
            )),
        }
        if let Some(ratio) = &self.ratio {
            shape.push_str(&format!(", ratio {ratio}"));
        }
        match self.rate {
            Some(rate) if self.workload == "lock" => shape.push_str(&format!(", open loop at {rate:.0} acquires/s")),
            Some(rate) => shape.push_str(&format!(", open loop at {rate:.0} ops/s")),
            None => {}
        }
        writeln!(out, "{shape}")?;
        writeln!(
            out,
            "{} requests in {:.3} s: {:.0} ops/s, {} errors, {} misses",
            self.requests, self.duration_secs, self.ops_per_sec, self.errors, self.misses
        )?;
        write_percentiles(out, "latency us", &self.latency_us)?;
        for (name, operation) in &self.operations {
            writeln!(out, "{name}: {} ops, {} errors", operation.count, operation.errors)?;
            write_percentiles(out, "  latency us", &operation.latency_us)?;
        }
        if let Some(error) = &self.first_error {
            writeln!(out, "first error: {error}")?;
        }
        Ok(())
    }
}

fn write_percentiles(out: &mut impl Write, label: &str, latency: &Percentiles) -> io::Result<()> {
    writeln!(
        out,
        "{label}: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}",
        latency.p50, latency.p90, latency.p99, latency.p999, latency.p9999, latency.max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(latency_us: Percentiles) -> Summary {
        Summary {
            target: "redis://127.0.0.1:6379".into(),
            workload: "get".into(),
            ratio: None,
            connections: 50,
            pipeline: 1,
            threads: 1,
            keys: 100,
            key_pattern: "uniform".into(),
            value_bytes: 32,
            rate: None,
            ops_per_sec: 1000.0,
            latency_us,
            requests: 1000,
            errors: 0,
            misses: 3,
            duration_secs: 1.0,
            warmup_secs: 0.0,
            seed: 1,
            first_error: None,
            operations: BTreeMap::new(),
        }
    }

    #[test]
    fn percentiles_come_from_the_merged_histograms() {
        let mut first = LaneStats::default();
        let mut second = LaneStats::default();
        for microsecond in 1..=100u64 {
            first.record_success(Duration::from_micros(microsecond), false);
        }
        second.record_success(Duration::from_millis(5), true);
        second.record_error(|| "ERR first".into());
        second.record_error(|| unreachable!("only the first error is described"));
        first.merge(&second);
        assert_eq!((first.requests, first.errors, first.misses), (103, 2, 1));
        assert_eq!(first.first_error.as_deref(), Some("ERR first"));
        let percentiles = Percentiles::of(&first.histogram);
        assert!((percentiles.p50 - 51.0).abs() < 0.1, "{percentiles:?}");
        assert!((percentiles.p90 - 91.0).abs() < 0.1, "{percentiles:?}");
        assert!((percentiles.max - 5_000.0).abs() < 5.0, "{percentiles:?}");
        assert!(percentiles.p50 <= percentiles.p90 && percentiles.p9999 <= percentiles.max);
    }

    #[test]
    fn latencies_past_the_bound_saturate() {
        let mut stats = LaneStats::default();
        stats.record_success(Duration::from_secs(3_600), false);
        stats.record_success(Duration::ZERO, false);
        assert_eq!(stats.requests, 2);
        assert!(stats.histogram.max() >= LATENCY_NANOSECONDS_MAX);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut stats = LaneStats::default();
        stats.record_success(Duration::from_micros(10), false);
        let json = serde_json::to_value(summary(Percentiles::of(&stats.histogram))).unwrap();
        for field in [
            "target",
            "workload",
            "connections",
            "pipeline",
            "ops_per_sec",
            "latency_us",
            "errors",
            "misses",
            "requests",
            "duration_secs",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        let latency = json["latency_us"].as_object().unwrap();
        let fields: Vec<&str> = latency.keys().map(String::as_str).collect();
        assert_eq!(fields.len(), 6);
        for field in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(latency[field].as_f64().unwrap() > 9.0, "{field}");
        }
        assert!(json.get("ratio").is_none() && json.get("first_error").is_none());
    }

    fn lock_stats() -> LaneStats {
        let mut first = LaneStats::reporting(&[Operation::LockAcquire, Operation::LockRelease]);
        let mut second = LaneStats::reporting(&[Operation::LockAcquire, Operation::LockRelease]);
        for microsecond in 1..=10u64 {
            first.record_operation_success(Operation::LockAcquire, Duration::from_micros(100 * microsecond));
            second.record_operation_success(Operation::LockRelease, Duration::from_micros(microsecond));
        }
        second.record_operation_error(Operation::LockAcquire, || "Timeout".into());
        // The run's merge starts from empty statistics.
        let mut merged = LaneStats::default();
        merged.merge(&first);
        merged.merge(&second);
        merged
    }

    #[test]
    fn operations_are_counted_apart_and_together() {
        let merged = lock_stats();
        assert_eq!((merged.requests, merged.errors), (21, 1));
        let operations = merged.operation_summaries();
        let acquire = &operations["lock_acquire"];
        let release = &operations["lock_release"];
        assert_eq!((acquire.count, acquire.errors), (11, 1));
        assert_eq!((release.count, release.errors), (10, 0));
        assert!((acquire.latency_us.max - 1_000.0).abs() < 1.0, "{acquire:?}");
        assert!((release.latency_us.max - 10.0).abs() < 0.1, "{release:?}");
        assert!(Percentiles::of(&merged.histogram).max >= acquire.latency_us.max);
    }

    #[test]
    fn json_reports_each_operation() {
        let merged = lock_stats();
        let mut with_operations = summary(Percentiles::of(&merged.histogram));
        with_operations.workload = "lock".into();
        with_operations.operations = merged.operation_summaries();
        let json = serde_json::to_value(&with_operations).unwrap();
        assert!(json.get("latency_us").is_some() && json.get("requests").is_some());
        let operations = json["operations"].as_object().unwrap();
        let names: Vec<&str> = operations.keys().map(String::as_str).collect();
        assert_eq!(names, ["lock_acquire", "lock_release"]);
        for (name, operation) in operations {
            assert!(operation["count"].as_u64().unwrap() >= 10, "{name}");
            assert!(operation["errors"].is_u64(), "{name}");
            for field in ["p50", "p90", "p99", "p999", "p9999", "max"] {
                assert!(operation["latency_us"][field].as_f64().unwrap() > 0.0, "{name} {field}");
            }
        }
        let mut text = Vec::new();
        with_operations.write_human(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("lock_acquire: 11 ops, 1 errors"), "{text}");
        assert!(text.contains("lock_release: 10 ops, 0 errors"), "{text}");
        assert!(text.contains("locks (uniform)"), "{text}");
        let plain = serde_json::to_value(summary(Percentiles::of(&merged.histogram))).unwrap();
        assert!(
            plain.get("operations").is_none(),
            "key-value runs have no operations object"
        );
    }

    #[test]
    fn human_output_names_every_percentile() {
        let mut text = Vec::new();
        let zero = Percentiles {
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            p9999: 5.0,
            max: 6.0,
        };
        summary(zero).write_human(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for part in [
            "1000 ops/s",
            "p50 1.0",
            "p90 2.0",
            "p99 3.0",
            "p99.9 4.0",
            "p99.99 5.0",
            "max 6.0",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
    }
}
