//! What one load task needs besides its connection: its request source, when to stop,
//! when to send (open loop) and which requests count (after warmup).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::bench::error::BenchError;
use crate::bench::stats::LaneStats;
use crate::bench::timer::PreciseTimer;
use crate::bench::workload::{Coordination, RequestSource};

/// When a load task stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// No new request at or after this time.
    Deadline(Instant),
    /// After this many measured (post-warmup) requests.
    Requests(u64),
    /// When the request source runs dry (prefill).
    SourceExhausted,
}

/// The plan of one load task.
#[derive(Debug)]
pub struct LanePlan {
    pub source: RequestSource,
    /// Requests per batch: written together and then awaited together.
    pub pipeline: usize,
    /// Requests meant to be sent before this are warmup: not recorded.
    pub measure_from: Instant,
    pub stop: Stop,
    /// `Some` for an open loop.
    pub pacer: Option<Pacer>,
    pub progress: ProgressSlot,
    /// The lock owner or the barrier of the lock and barrier workloads.
    pub coordination: Coordination,
}

impl LanePlan {
    /// How many requests the next batch may hold; 0 means the task is done.
    pub fn next_batch_size(&self, now: Instant, stats: &LaneStats) -> usize {
        let mut size = self.pipeline as u64;
        if let Some(remaining) = self.source.remaining() {
            size = size.min(remaining);
        }
        match self.stop {
            Stop::Deadline(deadline) if now >= deadline => 0,
            // During warmup nothing counts, so the budget does not shrink the batch yet.
            Stop::Requests(budget) if now >= self.measure_from => {
                size.min(budget.saturating_sub(stats.requests)) as usize
            }
            _ => size as usize,
        }
    }

    /// Waits for the batch's send time in an open loop and returns the time latency
    /// counts from: the intended send time (open loop) or now (closed loop).
    pub async fn send_time(&mut self, now: Instant) -> Instant {
        match &mut self.pacer {
            Some(pacer) => pacer.next_send().await,
            None => now,
        }
    }

    /// Whether a request meant to go out at `intended` is measured (not warmup).
    pub fn measures(&self, intended: Instant) -> bool {
        intended >= self.measure_from
    }
}

/// An open-loop timeline: the k-th batch is due at `start + k * interval`, whatever
/// happened to the previous ones.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    interval_seconds: f64,
    sent: u64,
    timer: PreciseTimer,
}

impl Pacer {
    /// Lane `lane` of `lanes` starts `lane / lanes` of an interval late, so the lanes
    /// together send evenly rather than in bursts.
    /// Must run inside a tokio runtime (the timer registers with its reactor).
    pub fn new(start: Instant, interval_seconds: f64, lane: usize, lanes: usize) -> Result<Pacer, BenchError> {
        assert!(interval_seconds > 0.0 && interval_seconds.is_finite() && lane < lanes);
        let offset = Duration::from_secs_f64(interval_seconds * lane as f64 / lanes as f64);
        Ok(Pacer {
            start: start + offset,
            interval_seconds,
            sent: 0,
            timer: PreciseTimer::new()?,
        })
    }

    /// The next intended send time, after waiting for it. A late lane gets a time in
    /// the past at once, and its latency then includes the wait: that is the point.
    pub async fn next_send(&mut self) -> Instant {
        let intended = self.start + Duration::from_secs_f64(self.sent as f64 * self.interval_seconds);
        self.sent += 1;
        let now = Instant::now();
        if intended > now {
            self.timer.sleep(intended - now).await;
        }
        intended
    }
}

/// One counter per load task on its own cache line, written only by that task, read by
/// the progress display: no shared write on the hot path.
#[repr(align(128))]
#[derive(Debug, Default)]
struct PaddedCounter(AtomicU64);

#[derive(Debug)]
pub struct ProgressCounters {
    counters: Box<[PaddedCounter]>,
}

impl ProgressCounters {
    pub fn new(lanes: usize) -> Arc<ProgressCounters> {
        Arc::new(ProgressCounters {
            counters: (0..lanes).map(|_| PaddedCounter::default()).collect(),
        })
    }

    /// Measured requests so far, over all tasks.
    pub fn total(&self) -> u64 {
        self.counters
            .iter()
            .map(|counter| counter.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// A load task's own progress counter.
#[derive(Debug, Clone)]
pub struct ProgressSlot {
    counters: Arc<ProgressCounters>,
    lane: usize,
}

impl ProgressSlot {
    pub fn new(counters: Arc<ProgressCounters>, lane: usize) -> ProgressSlot {
        assert!(lane < counters.counters.len());
        ProgressSlot { counters, lane }
    }

    pub fn add(&self, requests: u64) {
        self.counters.counters[self.lane]
            .0
            .fetch_add(requests, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::{Coordination, RequestSource};

    fn plan(stop: Stop, measure_from: Instant, source: RequestSource) -> LanePlan {
        LanePlan {
            source,
            pipeline: 16,
            measure_from,
            stop,
            pacer: None,
            progress: ProgressSlot::new(ProgressCounters::new(1), 0),
            coordination: Coordination::None,
        }
    }

    #[test]
    fn batches_shrink_to_the_budget_and_the_source() {
        let now = Instant::now();
        let mut stats = LaneStats::default();
        let budget = plan(Stop::Requests(20), now, RequestSource::prefill(0, u64::MAX));
        assert_eq!(budget.next_batch_size(now, &stats), 16);
        stats.requests = 15;
        assert_eq!(budget.next_batch_size(now, &stats), 5);
        stats.requests = 20;
        assert_eq!(budget.next_batch_size(now, &stats), 0);
        let warming = plan(
            Stop::Requests(20),
            now + Duration::from_secs(60),
            RequestSource::prefill(0, 100),
        );
        assert_eq!(
            warming.next_batch_size(now, &stats),
            16,
            "warmup does not spend the budget"
        );
        let prefill = plan(Stop::SourceExhausted, now, RequestSource::prefill(0, 3));
        assert_eq!(prefill.next_batch_size(now, &stats), 3);
        let deadline = plan(Stop::Deadline(now), now, RequestSource::prefill(0, 3));
        assert_eq!(deadline.next_batch_size(now, &stats), 0);
        assert!(deadline.measures(now) && !deadline.measures(now - Duration::from_millis(1)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pacer_keeps_a_fixed_timeline_even_when_late() {
        let start = Instant::now() - Duration::from_secs(1);
        let mut pacer = Pacer::new(start, 0.001, 1, 2).unwrap();
        let first = pacer.next_send().await;
        let second = pacer.next_send().await;
        assert_eq!(first, start + Duration::from_micros(500));
        assert_eq!(second - first, Duration::from_millis(1));
        let mut on_time = Pacer::new(Instant::now(), 0.000_2, 0, 1).unwrap();
        let mut previous = on_time.next_send().await;
        for _ in 0..5 {
            let intended = on_time.next_send().await;
            assert_eq!(intended - previous, Duration::from_micros(200));
            assert!(Instant::now() >= intended, "the pacer never sends early");
            previous = intended;
        }
    }

    #[test]
    fn progress_sums_every_slot() {
        let counters = ProgressCounters::new(3);
        ProgressSlot::new(counters.clone(), 0).add(2);
        ProgressSlot::new(counters.clone(), 2).add(5);
        assert_eq!(counters.total(), 7);
    }
}
