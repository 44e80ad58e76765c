//! The flags of one run, checked against each other and the limits, and resolved into
//! what the runner needs.

use std::time::Duration;

use crate::bench::cli::{
    LoadArgs, Target, CONNECTIONS_MAX, DURATION_SECONDS_DEFAULT, PIPELINE_DEPTH_MAX, THREADS_MAX, VALUE_BYTES_MAX,
};
use crate::bench::error::BenchError;
use crate::bench::workload::Workload;
use engram_client::ClientTls;

/// Most load tasks of one run. An Engram connection running the lock or barrier workload
/// runs one task per request in flight, so this bounds connections x pipeline.
pub const LANES_MAX: usize = 65_536;

/// Flags checked and resolved into what the run needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub load: LoadArgs,
    pub target: Target,
    /// How an `engrams://` target's certificate is checked.
    pub tls: Option<ClientTls>,
    pub seed: u64,
    /// Names this run's barrier (`barrier:{run_id}`), so runs never share a generation.
    pub run_id: u64,
    pub warmup: Duration,
    /// `None`: stop after `load.requests`.
    pub duration: Option<Duration>,
}

impl Settings {
    pub fn new(load: LoadArgs) -> Result<Settings, BenchError> {
        let usage = |message: String| Err(BenchError::Usage(message));
        let Some(target) = load.target.clone() else {
            return usage("--target is required".into());
        };
        if !(1..=CONNECTIONS_MAX).contains(&load.connections) {
            return usage(format!("--connections must be 1..={CONNECTIONS_MAX} (connections_max)"));
        }
        if !(1..=PIPELINE_DEPTH_MAX).contains(&load.pipeline) {
            return usage(format!(
                "--pipeline must be 1..={PIPELINE_DEPTH_MAX} (pipeline_depth_max)"
            ));
        }
        if !(1..=THREADS_MAX).contains(&load.threads) {
            return usage(format!("--threads must be 1..={THREADS_MAX} (threads_max)"));
        }
        if load.value_bytes > VALUE_BYTES_MAX {
            return usage(format!(
                "--value-bytes must be at most {VALUE_BYTES_MAX} (value_bytes_max)"
            ));
        }
        if load.workload.is_engram_only() && !matches!(target, Target::Engram { .. }) {
            return Err(BenchError::EngramOnly {
                workload: load.workload.name(),
                target: target.to_string(),
            });
        }
        if load.workload == Workload::Barrier && load.rate.is_some() {
            return usage("--rate does not apply to --workload barrier: its slowest party paces every wait".into());
        }
        if matches!(target, Target::Engram { .. }) && load.connections * load.pipeline > LANES_MAX {
            return usage(format!(
                "--connections x --pipeline must be at most {LANES_MAX} (lanes_max) against Engram"
            ));
        }
        if let Target::TcpEcho { .. } = target {
            if load.pipeline != 1 {
                return usage("tcp-echo:// is ping-pong: --pipeline must be 1".into());
            }
            if load.value_bytes == 0 {
                return usage("tcp-echo:// needs --value-bytes of at least 1".into());
            }
        }
        if load.client_spin_us > 0 && matches!(target, Target::Redis { .. }) {
            return usage("--client-spin-us applies to engram:// and tcp-echo:// only".into());
        }
        let tls = load.tls.client_tls().map_err(BenchError::Usage)?;
        match (&target, &tls) {
            (Target::Engram { tls: true, .. }, None) => {
                return usage("an engrams:// target needs --tls-ca, the CA of the node's certificate".into())
            }
            (Target::Engram { tls: false, .. } | Target::Redis { .. } | Target::TcpEcho { .. }, Some(_)) => {
                return usage("--tls-ca goes with an engrams:// target".into())
            }
            _ => {}
        }
        if load.front_only && !matches!(target, Target::Engram { .. }) {
            return usage("--front-only applies to engram:// only".into());
        }
        if Duration::from_micros(load.client_spin_us) > engram_client::SPIN_MAX {
            return usage(format!(
                "--client-spin-us must be at most {} (the client's spin_max)",
                engram_client::SPIN_MAX.as_micros()
            ));
        }
        if load.requests == Some(0) {
            return usage("--requests must be positive".into());
        }
        let seconds = |flag: &str, value: f64, zero_allowed: bool| {
            if value.is_finite() && (value > 0.0 || (zero_allowed && value == 0.0)) {
                Duration::try_from_secs_f64(value).map_err(|error| BenchError::Usage(format!("{flag}: {error}")))
            } else {
                Err(BenchError::Usage(format!(
                    "{flag} must be a positive number of seconds"
                )))
            }
        };
        let warmup = seconds("--warmup", load.warmup, true)?;
        let duration = match (load.duration, load.requests) {
            (_, Some(_)) => None,
            (duration, None) => Some(seconds(
                "--duration",
                duration.unwrap_or(DURATION_SECONDS_DEFAULT),
                false,
            )?),
        };
        if let Some(rate) = load.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return usage("--rate must be a positive number of requests per second".into());
            }
        }
        Ok(Settings {
            seed: load.seed.unwrap_or_else(rand::random),
            run_id: rand::random(),
            target,
            tls,
            warmup,
            duration,
            load,
        })
    }

    /// Connections x the tasks each runs.
    pub fn lanes(&self) -> usize {
        self.load.connections * self.tasks_per_connection()
    }

    /// Every driver pipelines key-value requests inside one task (Engram with its
    /// client's batches); the lock and barrier workloads pipeline by running concurrent
    /// calls on one client, one task per request in flight.
    pub fn tasks_per_connection(&self) -> usize {
        match self.target {
            Target::Engram { .. } if self.load.workload.is_engram_only() => self.load.pipeline,
            Target::Engram { .. } | Target::Redis { .. } | Target::TcpEcho { .. } => 1,
        }
    }

    pub fn pipeline_per_task(&self) -> usize {
        self.load.pipeline / self.tasks_per_connection()
    }

    pub fn workload_name(&self) -> &'static str {
        match self.target {
            Target::TcpEcho { .. } => "echo",
            _ => self.load.workload.name(),
        }
    }
}
