//! Per-task statistics (an HDR histogram each, merged only at the end, so the hot path
//! shares nothing), the summary of a run, and its JSON and human renderings.

use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks; slower requests are recorded as this.
pub const LATENCY_NANOSECONDS_MAX: u64 = 60 * 1_000_000_000;
/// Precision of the histogram: 3 digits keeps every percentile within 0.1%.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
const NANOSECONDS_PER_MICROSECOND: f64 = 1_000.0;

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
}

impl Default for LaneStats {
    fn default() -> Self {
        LaneStats {
            histogram: Histogram::new_with_bounds(1, LATENCY_NANOSECONDS_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            requests: 0,
            errors: 0,
            misses: 0,
            first_error: None,
        }
    }
}

impl LaneStats {
    /// A successful request. Only successes enter the histogram: an error reply is a
    /// different (usually much shorter) path and would flatter the percentiles.
    pub fn record_success(&mut self, latency: Duration, missed: bool) {
        self.requests += 1;
        self.misses += u64::from(missed);
        let nanoseconds = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(nanoseconds.max(1));
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
    }
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
    /// The open-loop rate asked for; `None` for a closed loop.
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
}

impl Summary {
    pub fn write_human(&self, out: &mut impl Write) -> io::Result<()> {
        let mut shape = format!(
            "{} {}, {} connections, pipeline {}, {} keys ({}), {}-byte values",
            self.target, self.workload, self.connections, self.pipeline, self.keys, self.key_pattern, self.value_bytes
        );
        if let Some(ratio) = &self.ratio {
            shape.push_str(&format!(", ratio {ratio}"));
        }
        if let Some(rate) = self.rate {
            shape.push_str(&format!(", open loop at {rate:.0} ops/s"));
        }
        writeln!(out, "{shape}")?;
        writeln!(
            out,
            "{} requests in {:.3} s: {:.0} ops/s, {} errors, {} misses",
            self.requests, self.duration_secs, self.ops_per_sec, self.errors, self.misses
        )?;
        let latency = &self.latency_us;
        writeln!(
            out,
            "latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}",
            latency.p50, latency.p90, latency.p99, latency.p999, latency.p9999, latency.max
        )?;
        if let Some(error) = &self.first_error {
            writeln!(out, "first error: {error}")?;
        }
        Ok(())
    }
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
