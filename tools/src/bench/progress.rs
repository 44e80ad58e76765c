//! The progress bar, shown only when stderr is a terminal (the caller decides): it reads
//! the per-task counters a few times a second and touches nothing on the hot path.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bench::lane::ProgressCounters;
use crate::bench::settings::Settings;

/// How often the bar is redrawn.
const REDRAW_INTERVAL: Duration = Duration::from_millis(200);

pub struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    pub fn start(counters: Arc<ProgressCounters>, settings: &Settings, measure_from: Instant) -> Progress {
        let started = Instant::now();
        // A timed run shows time (warmup included), a counted run shows requests.
        let (length, by_time) = match settings.duration {
            Some(duration) => ((settings.warmup + duration).as_millis() as u64, true),
            None => (settings.load.requests.unwrap_or(0), false),
        };
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {msg}") {
            bar.set_style(style);
        }
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(REDRAW_INTERVAL);
            loop {
                interval.tick().await;
                let requests = counters.total();
                let now = Instant::now();
                ticker_bar.set_position(if by_time {
                    now.duration_since(started).as_millis() as u64
                } else {
                    requests
                });
                let measured = now.saturating_duration_since(measure_from).as_secs_f64();
                ticker_bar.set_message(if measured > 0.0 {
                    format!("{requests} requests, {:.0} ops/s", requests as f64 / measured)
                } else {
                    "warming up".to_owned()
                });
            }
        });
        Progress { bar, ticker }
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
